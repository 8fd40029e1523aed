"""Likelihood bounds checked against the exact Markov-chain oracle."""

from __future__ import annotations

import itertools
import math

import pytest
import torch

from tdlib.errors import UserError
from tdlib.evaluate import discrete_bound, loss_by_ratio, nelbo
from tdlib.masking import ORIGINAL_RATIOS
from tdlib.oracle import MarkovChain


@pytest.fixture(scope="module")
def chain() -> MarkovChain:
    return MarkovChain.random(num_states=3, seed=1)


def _ce_table(denoiser, x0: torch.Tensor, mask_id: int, subsets) -> list[float]:
    """sum_{i in M} -log p(x0_i | x0 without M) for each subset M, in one batch."""
    xt = x0.repeat(len(subsets), 1)
    for s, m in enumerate(subsets):
        xt[s, list(m)] = mask_id
    logp = denoiser(xt).log_softmax(-1)  # (S, L, V)
    return [sum(-logp[s, i, x0[i]].item() for i in m) for s, m in enumerate(subsets)]


def _exact_nelbo(denoiser, x0: torch.Tensor, mask_id: int) -> float:
    """sum_k (1/k) E_{|M|=k} sum_{i in M} CE_i, by enumerating every subset."""
    n = x0.numel()
    total = 0.0
    for k in range(1, n + 1):
        subsets = list(itertools.combinations(range(n), k))
        total += sum(_ce_table(denoiser, x0, mask_id, subsets)) / len(subsets) / k
    return total


def _exact_discrete(denoiser, x0: torch.Tensor, mask_id: int, levels: list[float]) -> float:
    """sum_j (1 - t_{j+1}/t_j) E_{M ~ Bernoulli(t_j)} sum_{i in M} CE_i, by enumeration."""
    n = x0.numel()
    subsets = [m for r in range(1, n + 1) for m in itertools.combinations(range(n), r)]
    ce = _ce_table(denoiser, x0, mask_id, subsets)
    total = 0.0
    for t, t_next in zip(levels, levels[1:] + [0.0], strict=True):
        prob = [t ** len(m) * (1 - t) ** (n - len(m)) for m in subsets]
        total += (1 - t_next / t) * sum(p * c for p, c in zip(prob, ce, strict=True))
    return total


def _uniform_denoiser(num_states: int):
    """Uniform over the chain's states, never the mask: CE = log V for every token."""

    def denoiser(xt, attention_mask=None):
        logits = torch.zeros(*xt.shape, num_states + 1, dtype=torch.float64)
        logits[..., -1] = -math.inf
        return logits

    return denoiser


def test_nelbo_is_exactly_tight_for_the_exact_denoiser(chain):
    # With exact conditionals the bound equals -log p(x) for each x, not only on
    # average: sum_k (1/k) E_{|M|=k}[sum_{i in M} CE_i] is the expected loss of
    # revealing the tokens one by one in a uniformly random order, and for the
    # exact denoiser every order is a chain-rule factorisation of p(x).
    x0 = chain.sample(4, 4, generator=torch.Generator().manual_seed(0))
    for row in x0:
        exact = _exact_nelbo(chain, row, chain.mask_id)
        assert exact == pytest.approx(-chain.log_prob(row[None]).item(), abs=1e-10)


def test_nelbo_estimate_matches_exact_nll_within_three_stderr(chain):
    x0 = chain.sample(64, 6, generator=torch.Generator().manual_seed(1))
    scorable = torch.ones_like(x0, dtype=torch.bool)
    out = nelbo(chain, x0, scorable, mask_id=chain.mask_id, num_characters=1000, samples_per_sequence=4, seed=3)
    nll = -chain.log_prob(x0).sum().item()
    stderr_nats = out["nelbo_bits_per_char_stderr"] * math.log(2) * 1000
    assert out["stderr_kind"] == "monte_carlo"
    assert 0 < stderr_nats < 0.1 * nll
    assert abs(out["nelbo_nats"] - nll) < 3 * stderr_nats
    assert out["tokens"] == 64 * 6 and out["sequences"] == 64
    assert out["nats_per_token"] == pytest.approx(out["nelbo_nats"] / (64 * 6))
    assert out["perplexity_bound"] == pytest.approx(math.exp(out["nats_per_token"]))


def test_nelbo_is_unbiased_across_seeds(chain):
    # a wrong (but not uniform) denoiser: the bound is loose, and the estimator's
    # mean must still approach its exact expectation computed by enumeration
    other = MarkovChain.random(num_states=3, seed=7)
    x0 = chain.sample(3, 4, generator=torch.Generator().manual_seed(2))
    scorable = torch.ones_like(x0, dtype=torch.bool)
    exact = sum(_exact_nelbo(other, row, other.mask_id) for row in x0)
    assert exact > -chain.log_prob(x0).sum().item()
    estimates = torch.tensor(
        [nelbo(other, x0, scorable, mask_id=other.mask_id, num_characters=1, seed=s)["nelbo_nats"] for s in range(150)]
    )
    assert abs(estimates.mean().item() - exact) < 4 * estimates.std().item() / math.sqrt(len(estimates))


def test_nelbo_is_deterministic_and_batch_size_free(chain):
    x0 = chain.sample(10, 5, generator=torch.Generator().manual_seed(3))
    scorable = torch.ones_like(x0, dtype=torch.bool)
    a = nelbo(chain, x0, scorable, mask_id=chain.mask_id, num_characters=50, seed=5, batch_size=3)
    b = nelbo(chain, x0, scorable, mask_id=chain.mask_id, num_characters=50, seed=5, batch_size=16)
    assert a == b
    assert a["stderr_kind"] == "across_sequences"


def test_bits_per_char_uses_the_supplied_character_count(chain):
    x0 = chain.sample(8, 5, generator=torch.Generator().manual_seed(4))
    scorable = torch.ones_like(x0, dtype=torch.bool)
    out = nelbo(chain, x0, scorable, mask_id=chain.mask_id, num_characters=120, seed=0)
    assert out["characters"] == 120
    assert out["nelbo_bits_per_char"] == pytest.approx(out["nelbo_nats"] / math.log(2) / 120)
    double = nelbo(chain, x0, scorable, mask_id=chain.mask_id, num_characters=240, seed=0)
    assert double["nelbo_bits_per_char"] == pytest.approx(out["nelbo_bits_per_char"] / 2)
    assert double["nelbo_bits_per_char_stderr"] == pytest.approx(out["nelbo_bits_per_char_stderr"] / 2)


def test_uniform_denoiser_gives_a_larger_bound(chain):
    x0 = chain.sample(16, 6, generator=torch.Generator().manual_seed(5))
    scorable = torch.ones_like(x0, dtype=torch.bool)
    good = nelbo(chain, x0, scorable, mask_id=chain.mask_id, num_characters=100, samples_per_sequence=8)
    bad = nelbo(_uniform_denoiser(3), x0, scorable, mask_id=chain.mask_id, num_characters=100)
    # uniform logits: every masked CE is log 3, so the estimate is n log 3 whatever the draw
    assert bad["nelbo_nats"] == pytest.approx(16 * 6 * math.log(3))
    assert bad["nelbo_bits_per_char"] > good["nelbo_bits_per_char"] + 5 * good["nelbo_bits_per_char_stderr"]


def test_only_scorable_positions_are_masked_and_attention_mask_is_passed(chain):
    x0 = chain.sample(6, 7, generator=torch.Generator().manual_seed(6))
    scorable = torch.ones_like(x0, dtype=torch.bool)
    scorable[:, :2] = False  # a prefix
    scorable[3, 4:] = False  # padding
    scorable[5] = False  # nothing to score
    attention_mask = torch.ones_like(x0)
    attention_mask[3, 4:] = 0
    seen = []

    def spy(xt, am=None):
        seen.append((xt.clone(), am))
        return chain(xt)

    out = nelbo(spy, x0, scorable, mask_id=chain.mask_id, num_characters=10, attention_mask=attention_mask, batch_size=4)
    loss_by_ratio(spy, x0, scorable, mask_id=chain.mask_id, attention_mask=attention_mask, batch_size=4)
    xt = torch.cat([s[0] for s in seen])
    am = torch.cat([s[1] for s in seen])
    assert not (xt == chain.mask_id)[~scorable.repeat(len(seen) // 2, 1)].any()
    assert torch.equal(am, attention_mask.repeat(len(seen) // 2, 1))
    assert out["tokens"] == int(scorable.sum())


def test_loss_by_ratio_uses_fixed_masks(chain):
    x0 = chain.sample(12, 8, generator=torch.Generator().manual_seed(7))
    scorable = torch.ones_like(x0, dtype=torch.bool)
    a = loss_by_ratio(chain, x0, scorable, mask_id=chain.mask_id, seed=1)
    b = loss_by_ratio(chain, x0, scorable, mask_id=chain.mask_id, seed=1, batch_size=5)
    assert a == b
    assert list(a) == list(ORIGINAL_RATIOS)
    c = loss_by_ratio(chain, x0, scorable, mask_id=chain.mask_id, seed=2)
    assert a != c
    # more context makes prediction easier, on average
    assert a[1.0] > a[0.1]


def test_loss_by_ratio_at_full_masking_is_the_unconditional_marginal(chain):
    x0 = chain.sample(5, 4, generator=torch.Generator().manual_seed(8))
    scorable = torch.ones_like(x0, dtype=torch.bool)
    out = loss_by_ratio(chain, x0, scorable, ratios=(1.0,), mask_id=chain.mask_id)
    marg = chain.marginals(torch.full_like(x0, chain.mask_id))  # (B, L, V)
    expected = -marg.gather(-1, x0[..., None]).log().mean().item()
    assert out[1.0] == pytest.approx(expected)


def test_discrete_bound_is_above_the_entropy_on_average_and_tightens_with_more_levels(chain):
    # The discrete chain driven by the exact conditionals is a different model
    # p_K (it reveals tokens in parallel, independently), so NELBO_K(x) >= -log p_K(x)
    # can be below -log p(x) for a given x; only the average over x ~ p is above
    # the entropy (cross-entropy >= entropy). Checked by enumerating all sequences.
    xs = chain.all_sequences(4)
    p = chain.log_prob(xs).exp()
    entropy = -(p * chain.log_prob(xs)).sum().item()

    def expected(levels):
        return sum(pi * _exact_discrete(chain, row, chain.mask_id, levels) for pi, row in zip(p.tolist(), xs, strict=True))

    coarse, fine = expected([1.0, 0.6, 0.3]), expected([1.0 - j / 20 for j in range(20)])
    assert entropy < fine < coarse


def test_discrete_bound_estimator_matches_enumeration(chain):
    x0 = chain.sample(2, 4, generator=torch.Generator().manual_seed(9))
    scorable = torch.ones_like(x0, dtype=torch.bool)
    levels = [1.0, 0.6, 0.3]
    exact = sum(_exact_discrete(chain, row, chain.mask_id, levels) for row in x0)
    estimates = torch.tensor(
        [
            discrete_bound(chain, x0, scorable, levels, mask_id=chain.mask_id, num_characters=1, seed=s)["nelbo_nats"]
            for s in range(150)
        ]
    )
    assert abs(estimates.mean().item() - exact) < 4 * estimates.std().item() / math.sqrt(len(estimates))


def test_discrete_bound_with_one_level_is_the_all_masked_loss(chain):
    x0 = chain.sample(5, 4, generator=torch.Generator().manual_seed(10))
    scorable = torch.ones_like(x0, dtype=torch.bool)
    out = discrete_bound(chain, x0, scorable, (1.0,), mask_id=chain.mask_id, num_characters=40)
    marg = chain.marginals(torch.full_like(x0, chain.mask_id))
    expected = -marg.gather(-1, x0[..., None]).log().sum().item()
    assert out["nelbo_nats"] == pytest.approx(expected)
    assert out["levels"] == [1.0]
    assert out["bits_per_char_by_level"][1.0] == pytest.approx(out["nelbo_bits_per_char"])


def test_discrete_bound_adds_the_all_masked_level_and_reports_loss_by_ratio(chain):
    x0 = chain.sample(6, 5, generator=torch.Generator().manual_seed(11))
    scorable = torch.ones_like(x0, dtype=torch.bool)
    out = discrete_bound(chain, x0, scorable, (0.2, 0.5), mask_id=chain.mask_id, num_characters=30)
    assert out["levels"] == [1.0, 0.5, 0.2]
    assert sum(out["bits_per_char_by_level"].values()) == pytest.approx(out["nelbo_bits_per_char"])
    assert out["loss_by_ratio"] == loss_by_ratio(chain, x0, scorable, (1.0, 0.5, 0.2), mask_id=chain.mask_id)


@pytest.mark.parametrize("ratios", [(), (0.0,), (1.5,), (0.5, 0.5)])
def test_bad_ratios_are_user_errors(chain, ratios):
    x0 = chain.sample(2, 3)
    with pytest.raises(UserError):
        loss_by_ratio(chain, x0, torch.ones_like(x0, dtype=torch.bool), ratios, mask_id=chain.mask_id)


def test_bad_arguments_are_user_errors(chain):
    x0 = chain.sample(2, 3)
    scorable = torch.ones_like(x0, dtype=torch.bool)
    with pytest.raises(UserError):
        nelbo(chain, x0, scorable, mask_id=chain.mask_id, num_characters=0)
    with pytest.raises(UserError):
        nelbo(chain, x0, scorable, mask_id=chain.mask_id, num_characters=5, samples_per_sequence=0)
    with pytest.raises(UserError):
        nelbo(chain, x0, scorable[:, :2], mask_id=chain.mask_id, num_characters=5)


# --- the `tdlib evaluate` command -------------------------------------------------


@pytest.fixture(scope="module")
def checkpoint(scratch, tmp_path_factory):
    """A tiny scratch model saved like a training run's final model, with its training config."""
    from tdlib.model import save_model

    model, tokenizer = scratch
    config = {"dataset": "pydoc", "data_dir": None, "max_length": 32, "example_mode": "packed"}
    return save_model(model, tokenizer, tmp_path_factory.mktemp("run") / "final-model", extra={"training_config.json": config})


def _evaluate(argv: list[str]) -> int:
    import argparse

    from tdlib.cli import evaluate as cli

    parser = argparse.ArgumentParser()
    cli.add_arguments(parser)
    return cli.run(parser.parse_args(argv))


def test_cli_json_reports_the_bound_and_loss_by_ratio(checkpoint, capsys):
    import json

    assert _evaluate(["--checkpoint", str(checkpoint), "--max-characters", "3000", "--json", "--samples", "2"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["dataset"] == "pydoc" and out["max_length"] == 32 and out["mode"] == "packed"  # as trained
    assert list(out["loss_by_ratio"]) == [str(t) for t in ORIGINAL_RATIOS]
    assert out["nelbo_bits_per_char"] > 0 and out["nelbo_bits_per_char_stderr"] > 0
    assert out["stderr_kind"] == "monte_carlo"
    assert 2900 <= out["characters"] <= 3100 and out["tokens"] > 0
    # an untrained model is no better than uniform over its 1000-token vocabulary (up to noise)
    assert out["nats_per_token"] > 0.8 * math.log(1000)


def test_cli_report_is_deterministic(checkpoint, capsys):
    argv = ["--checkpoint", str(checkpoint), "--max-characters", "1500", "--mode", "lines", "--max-length", "24"]
    assert _evaluate(argv) == 0
    first = capsys.readouterr().out
    assert _evaluate(argv) == 0
    second = capsys.readouterr().out
    assert "bits/char" in first and "lines, 24 tokens" in first
    assert first.split("took")[0] == second.split("took")[0]


@pytest.mark.parametrize(
    "flags",
    [["--samples", "0"], ["--max-length", "4000"], ["--max-length", "3"], ["--dataset", "no-such-corpus"], ["--max-characters", "0"]],
)
def test_cli_bad_input_is_a_user_error(checkpoint, flags):
    with pytest.raises(UserError):
        _evaluate(["--checkpoint", str(checkpoint), *flags])


def test_cli_missing_checkpoint_exits_2_with_one_error_line(tmp_path):
    import subprocess
    import sys

    proc = subprocess.run(
        [sys.executable, "-m", "tdlib", "evaluate", "--checkpoint", str(tmp_path / "nothing")],
        capture_output=True, text=True, timeout=120,
    )
    assert proc.returncode == 2
    assert proc.stderr.startswith("error:") and "Traceback" not in proc.stderr
