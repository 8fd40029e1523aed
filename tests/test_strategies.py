"""The adaptive and remasking strategies: their rules, their pass counts, and exactness or bias with the oracle."""

from __future__ import annotations

import json
import math

import pytest
import torch
from test_sample import empirical_tv, fixed_denoiser, random_logits, tv_threshold

from tdlib.cli import main
from tdlib.errors import UserError
from tdlib.oracle import MarkovChain
from tdlib.sample import sample
from tdlib.strategies import REMASKING, entropy_bound_count
from tdlib.toylang import ToyLanguage

EXACT = dict(sampling="nucleus", top_p=1.0, temperature=1.0)


@pytest.fixture(scope="module")
def checkpoint(scratch, tmp_path_factory):
    """A tiny saved model directory (the session's scratch RoBERTa)."""
    from tdlib.model import save_model

    model, tokenizer = scratch
    return str(save_model(model, tokenizer, tmp_path_factory.mktemp("strategies") / "final-model"))


def chain_samples(strategy: str, num_steps: int, chain_seed: int = 0, num: int = 30_000, length: int = 5, **knobs):
    """(chain, trajectory) of ``num`` canvases of ``length`` filled by the exact chain denoiser."""
    chain = MarkovChain.random(num_states=3, seed=chain_seed)
    x_init = torch.full((num, length), chain.mask_id)
    trajectory = sample(chain, x_init, mask_id=chain.mask_id, num_steps=num_steps, strategy=strategy,
                        generator=torch.Generator().manual_seed(1), **EXACT, **knobs)
    return chain, trajectory


def mean_log_prob(chain: MarkovChain, final: torch.Tensor) -> tuple[float, float]:
    """Mean log p of the samples under the chain, and its standard error."""
    logp = chain.log_prob(final)  # (N,)
    return float(logp.mean()), float(logp.std() / math.sqrt(len(logp)))


def exact_mean_log_prob(chain: MarkovChain, length: int) -> float:
    """E_p[log p(x)] over every sequence of ``length``: minus the entropy of the chain's first ``length`` tokens."""
    logp = chain.log_prob(chain.all_sequences(length))
    return float((logp.exp() * logp.nan_to_num(neginf=0.0)).sum())


def hidden_steps(trajectory) -> torch.Tensor:
    """Bool (S, B, L): positions shown before step s and masked after it (taken back)."""
    tokens, mask_id = trajectory.tokens, trajectory.mask_id
    return (tokens[:-1] != mask_id) & (tokens[1:] == mask_id)


# ---- threshold (Fast-dLLM) -------------------------------------------------------------------


def test_threshold_reveals_every_confident_position_at_once_and_the_model_decides_the_passes():
    logits = torch.zeros(6, 5)  # (L, V) flat rows: p = 0.2 for every token
    logits[0, 1] = logits[2, 3] = 10.0  # positions 0 and 2: p > 0.99
    calls: list = []
    traj = sample(fixed_denoiser(logits, calls), torch.full((2, 6), 9), mask_id=9, num_steps=6, strategy="threshold",
                  threshold=0.9, sampling="greedy")
    assert traj.revealed[1, 0].nonzero()[:, 0].tolist() == [0, 2]  # both confident positions in the first pass
    # then one flat position per pass (at least one): 1 + 4 passes instead of the 6 allowed
    assert len(calls) == traj.forward_passes == traj.num_steps == 5
    assert traj.passes_per_row.tolist() == [5, 5]
    assert (traj.final != 9).all()


@pytest.mark.parametrize("strategy, knob, same_as", [("threshold", dict(threshold=1.0), "confidence"),
                                                   ("entropy-bound", dict(entropy_bound=0.0), "entropy")])
def test_the_strictest_knob_is_the_ranking_strategy_one_token_per_pass(strategy, knob, same_as):
    """threshold 1 is `confidence` decoding and entropy bound 0 is `entropy` decoding, one token per pass."""
    logits = random_logits(length=8, vocab=12)
    runs = [sample(fixed_denoiser(logits), torch.full((3, 8), 99), mask_id=99, num_steps=8, strategy=name,
                   generator=torch.Generator().manual_seed(4), **knob) for name in (strategy, same_as)]
    assert torch.equal(runs[0].tokens, runs[1].tokens)


def test_threshold_still_finishes_within_num_steps():
    traj = sample(fixed_denoiser(torch.zeros(12, 30)), torch.full((2, 12), 99), mask_id=99, num_steps=3,
                  strategy="threshold", threshold=0.99, generator=torch.Generator().manual_seed(0))
    assert traj.forward_passes == 3 and (traj.final != 99).all()  # nothing is confident: the schedule decides


def test_threshold_decoding_prefers_likely_sequences():
    """Not exact: like `confidence` it ranks by the drawn token's probability, so it favours likely values
    (mean log p above the chain's); lowering the threshold reveals more at once and uses fewer passes."""
    chain, strict = chain_samples("threshold", 5, threshold=1.0)
    _, loose = chain_samples("threshold", 5, threshold=0.5)
    exact = exact_mean_log_prob(chain, 5)
    for traj in (strict, loose):
        mean, stderr = mean_log_prob(chain, traj.final)
        assert mean > exact + 10 * stderr
    assert loose.passes_per_row.double().mean() < strict.passes_per_row.double().mean() == 5


# ---- entropy-bounded (EB-sampler) ------------------------------------------------------------


def test_entropy_bound_count_keeps_the_sum_minus_the_largest_under_the_bound():
    entropy = torch.tensor([[0.5, 0.1, 1.0, 0.2, 9.0], [0.0, 0.0, 0.5, 0.7, 9.0]], dtype=torch.float64)
    masked = torch.tensor([[True, True, True, True, False], [True, True, True, True, True]])
    # row 0, sorted 0.1 0.2 0.5 1.0: sets of 1..4 have sum - max 0, 0.1, 0.3, 0.8
    assert entropy_bound_count(entropy, masked, 0.35).tolist()[0] == 3
    assert entropy_bound_count(entropy, masked, 100.0).tolist()[0] == 4  # never an unmasked position
    # row 1: two certain positions (H = 0) go together even with bound 0
    assert entropy_bound_count(entropy, masked, 0.0).tolist() == [1, 3]


def test_entropy_bound_is_exact_with_one_token_per_pass_and_biased_to_unlikely_text_with_more():
    """One token per pass (bound 0): the position is chosen by its entropy, not by the drawn value, so the exact
    denoiser gives exact samples. A larger bound draws several positions from their own marginals, ignoring
    their dependence: samples get less likely (mean log p below the chain's)."""
    chain, exact = chain_samples("entropy-bound", 5, entropy_bound=0.0)
    assert empirical_tv(chain, exact.final) < tv_threshold(chain, 5, 30_000)
    _, loose = chain_samples("entropy-bound", 5, entropy_bound=1.0)
    assert loose.passes_per_row.double().mean() < 5
    mean, stderr = mean_log_prob(chain, loose.final)
    assert mean < exact_mean_log_prob(chain, 5) - 10 * stderr


# ---- remasking (ReMDM) -------------------------------------------------------------------------


def test_remask_cap_is_exact_when_each_pass_reveals_at_most_one_token():
    """With more passes than positions the linear schedule's busiest step reveals one token, and hiding never
    makes a step reveal more: a hidden token is uniformly random and then the step reveals one random
    position from the exact conditional, which keeps the canvas exactly distributed."""
    chain, traj = chain_samples("remask-cap", 10, remask_eta=0.5)
    assert hidden_steps(traj).any(-1).any(0).double().mean() > 0.5  # most rows took a token back
    assert empirical_tv(chain, traj.final) < tv_threshold(chain, 5, 30_000)
    mean, stderr = mean_log_prob(chain, traj.final)
    assert abs(mean - exact_mean_log_prob(chain, 5)) < 5 * stderr


def test_remask_conf_is_biased_towards_likely_sequences():
    """Not exact: it takes back the tokens that were unlikely when drawn, so the redraws favour likely values
    (mean log p above the chain's)."""
    chain, traj = chain_samples("remask-conf", 20, remask_eta=1.0)
    mean, stderr = mean_log_prob(chain, traj.final)
    assert mean > exact_mean_log_prob(chain, 5) + 10 * stderr


@pytest.mark.parametrize("strategy", REMASKING)
def test_remasking_keeps_the_schedule_and_takes_tokens_back(strategy):
    from tdlib.schedules import masked_counts

    traj = sample(fixed_denoiser(torch.zeros(8, 30)), torch.full((2, 8), 99), mask_id=99, num_steps=16,
                  strategy=strategy, remask_eta=1.0, generator=torch.Generator().manual_seed(0))
    assert (traj.tokens == 99).sum(-1)[:, 0].tolist() == masked_counts("linear", 8, 16)
    assert hidden_steps(traj).any() and (traj.final != 99).all()
    never = sample(fixed_denoiser(torch.zeros(8, 30)), torch.full((2, 8), 99), mask_id=99, num_steps=16,
                   strategy=strategy, remask_eta=0.0, generator=torch.Generator().manual_seed(0))
    assert not hidden_steps(never).any()


def test_remask_cap_with_the_exact_toy_language_writes_only_grammatical_sentences():
    language = ToyLanguage()
    tokenizer = language.tokenizer()
    from tdlib.canvas import generate

    texts, traj = generate(language, tokenizer, num_samples=200, max_length=14, num_steps=24, strategy="remask-cap",
                           remask_eta=0.5, seed=0, **EXACT)
    assert hidden_steps(traj).any()
    assert language.grammatical_share(texts)["share"] == 1.0


# ---- options and the command line ------------------------------------------------------------


@pytest.mark.parametrize("options,message", [(dict(threshold=0.0), "threshold"), (dict(threshold=1.5), "threshold"),
                                             (dict(entropy_bound=-1.0), "entropy-bound"),
                                             (dict(remask_eta=2.0), "remask-eta"), (dict(block_length=0), "block-length")])
def test_bad_knobs_are_user_errors(options, message):
    with pytest.raises(UserError, match=message):
        sample(fixed_denoiser(random_logits()), torch.full((1, 6), 99), mask_id=99, num_steps=2, **options)


@pytest.mark.parametrize("flags,message", [(["--threshold", "0"], "--threshold"),
                                           (["--entropy-bound", "nan"], "--entropy-bound"),
                                           (["--remask-eta", "-0.1"], "--remask-eta"),
                                           (["--block-length", "0"], "--block-length")])
def test_cli_rejects_bad_knobs_with_one_error_line(flags, message, capsys, tmp_path):
    code = main(["generate", "--checkpoint", str(tmp_path), *flags])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and err[0].startswith("error:") and message in err[0]


def test_cli_threshold_reports_the_passes_the_model_decided(checkpoint, capsys):
    argv = ["generate", "--checkpoint", checkpoint, "--max-length", "16", "--steps", "14", "--strategy", "threshold",
            "--threshold", "1e-9", "--sampling", "greedy", "--num-samples", "2", "--json"]
    assert main(argv) == 0
    result = json.loads(capsys.readouterr().out)
    # every drawn token clears a threshold of 1e-9: the whole canvas in one pass of the 14 allowed
    assert result["forward_passes"] == result["steps"] == 1


def test_cli_block_length_generates_blocks_left_to_right(checkpoint, capsys):
    from tdlib.render import MASK_GLYPH

    argv = ["generate", "--checkpoint", checkpoint, "--max-length", "10", "--steps", "4", "--block-length", "4",
            "--strategy", "remask-cap", "--show-steps"]
    assert main(argv) == 0
    lines = capsys.readouterr().out.splitlines()
    after_first_block = lines[lines.index("--- step 2 / 4") + 1]
    assert MASK_GLYPH in after_first_block and not after_first_block.startswith(MASK_GLYPH)
