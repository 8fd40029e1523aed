"""The sampler: exactness against the Markov oracle, sampling rules, strategies, text assembly."""

from __future__ import annotations

import math

import pytest
import torch

from tdlib.canvas import generate
from tdlib.errors import UserError
from tdlib.oracle import MarkovChain
from tdlib.pieces import continuation_ids
from tdlib.sample import sample
from tdlib.schedules import SCHEDULES, masked_counts
from tdlib.strategies import ADAPTIVE, REMASKING, STRATEGIES

SENTENCES = [
    "the cat sat on the mat and the dog sat on the log",
    "a quick brown fox jumps over the lazy dog",
    "running and jumping are playing games for the cats",
    "the dogs were barking loudly while the cats were sleeping",
    "interesting things happen when nobody is watching",
] * 4


def wordpiece_tokenizer():
    """A tiny BERT-style WordPiece tokenizer ([CLS] x [SEP], "##" continuations)."""
    from tokenizers import (
        Tokenizer,
        decoders,
        models,
        normalizers,
        pre_tokenizers,
        processors,
        trainers,
    )
    from transformers import PreTrainedTokenizerFast

    specials = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    wp = Tokenizer(models.WordPiece(unk_token="[UNK]"))
    wp.normalizer = normalizers.BertNormalizer(lowercase=True)
    wp.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    wp.decoder = decoders.WordPiece()
    wp.train_from_iterator(SENTENCES, trainers.WordPieceTrainer(vocab_size=120, special_tokens=specials))
    wp.post_processor = processors.BertProcessing(("[SEP]", wp.token_to_id("[SEP]")), ("[CLS]", wp.token_to_id("[CLS]")))
    return PreTrainedTokenizerFast(
        tokenizer_object=wp, unk_token="[UNK]", sep_token="[SEP]", cls_token="[CLS]", pad_token="[PAD]", mask_token="[MASK]"
    )


@pytest.fixture(scope="module")
def wordpiece():
    return wordpiece_tokenizer()


def fixed_denoiser(logits: torch.Tensor, calls: list | None = None):
    """A denoiser that ignores its input and returns the same (L, V) logits for every row."""

    def denoiser(xt, attention_mask=None):
        if calls is not None:
            calls.append(xt.clone())
        return logits.expand(xt.shape[0], -1, -1).clone()  # (B, L, V)

    return denoiser


def empirical_tv(chain: MarkovChain, final: torch.Tensor) -> float:
    """Total variation between the sequences in ``final`` and the chain's exact distribution."""
    num, length = final.shape
    v = chain.num_states
    p = chain.log_prob(chain.all_sequences(length)).exp()  # (V**L,) in cartesian (base-V) order
    index = (final * v ** torch.arange(length - 1, -1, -1)).sum(1)
    empirical = torch.bincount(index, minlength=v**length).double() / num
    return 0.5 * (empirical - p).abs().sum().item()


def tv_threshold(chain: MarkovChain, length: int, num: int, delta: float = 1e-6) -> float:
    """A bound exceeded with probability < delta by the TV of ``num`` exact samples.

    E[TV] <= 1/2 sum_x sqrt(p(1-p)/N) (Jensen on each |p_hat - p|), and one sample
    moves TV by at most 1/N, so McDiarmid gives P(TV > E[TV] + t) <= exp(-2 N t^2).
    """
    p = chain.log_prob(chain.all_sequences(length)).exp()
    return 0.5 * (p * (1 - p) / num).sqrt().sum().item() + math.sqrt(math.log(1 / delta) / (2 * num))


@pytest.mark.parametrize("chain_seed,schedule,block_length", [(0, "linear", None), (1, "cosine", 2)])
def test_ancestral_sampling_with_the_exact_denoiser_reproduces_the_chain(chain_seed, schedule, block_length):
    chain, length, num = MarkovChain.random(num_states=3, seed=chain_seed), 5, 30_000
    x_init = torch.full((num, length), chain.mask_id)
    options = dict(mask_id=chain.mask_id, strategy="random", sampling="nucleus", top_p=1.0, temperature=1.0)
    # one token per step: each draw is from the exact conditional, so the joint is exact
    exact = sample(chain, x_init, num_steps=length, schedule=schedule, block_length=block_length,
                   generator=torch.Generator().manual_seed(1), **options)
    threshold = tv_threshold(chain, length, num)
    assert empirical_tv(chain, exact.final) < threshold
    # a wrong sampler (every position from its own marginal, in one step) must fail the same check
    wrong = sample(chain, x_init, num_steps=1, generator=torch.Generator().manual_seed(1), **options)
    assert empirical_tv(chain, wrong.final) > 3 * threshold


def test_exactness_holds_row_by_row_with_different_numbers_of_masks():
    chain, length, num = MarkovChain.random(num_states=3, seed=2), 5, 20_000
    given = chain.sample(num, length, generator=torch.Generator().manual_seed(0))
    hide = torch.rand(num, length, generator=torch.Generator().manual_seed(1)) < 0.6
    x_init = torch.where(hide, chain.mask_id, given)  # rows with 0..5 masks
    out = sample(chain, x_init, mask_id=chain.mask_id, num_steps=length, strategy="random",
                 sampling="nucleus", top_p=1.0, generator=torch.Generator().manual_seed(2)).final
    assert torch.equal(out[~hide], given[~hide])
    # filling a chain sample's hidden part from the exact conditional gives chain samples again
    assert empirical_tv(chain, out) < tv_threshold(chain, length, num)


def random_logits(length=6, vocab=10, seed=0):
    return torch.randn(length, vocab, generator=torch.Generator().manual_seed(seed)) * 2  # (L, V)


@pytest.mark.parametrize("strategy", STRATEGIES)
def test_greedy_is_deterministic_and_takes_the_argmax(strategy):
    logits = random_logits()
    x_init = torch.full((3, 6), 99)
    runs = [sample(fixed_denoiser(logits), x_init, mask_id=99, num_steps=3, strategy=strategy,
                   sampling="greedy", generator=torch.Generator().manual_seed(s)).final for s in (0, 1)]
    assert torch.equal(runs[0], runs[1])
    assert torch.equal(runs[0], logits.argmax(-1).expand(3, -1))


def test_top_k_never_emits_a_token_outside_the_k_most_likely():
    logits = random_logits(vocab=20)
    num = 4000
    out = sample(fixed_denoiser(logits), torch.full((num, 6), 99), mask_id=99, num_steps=2, strategy="random",
                 sampling="topk", top_k=3, temperature=3.0, generator=torch.Generator().manual_seed(0)).final
    top_logits, allowed = logits.topk(3, dim=-1)  # (L, 3) each
    assert (out[..., None] == allowed).any(-1).all()
    # within the top k, tokens follow softmax(logits / T) renormalised
    expected = torch.softmax(top_logits / 3.0, dim=-1)  # (L, 3)
    observed = (out[..., None] == allowed).double().mean(0)  # (L, 3)
    assert ((observed - expected).abs() < 4 * (expected * (1 - expected) / num).sqrt() + 1e-9).all()


def test_nucleus_keeps_the_token_that_crosses_p():
    probs = torch.tensor([0.5, 0.3, 0.15, 0.05])
    logits = probs.log().expand(4, -1)  # (L, V)
    out = sample(fixed_denoiser(logits), torch.full((500, 4), 9), mask_id=9, num_steps=4, strategy="random",
                 sampling="nucleus", top_p=0.6, generator=torch.Generator().manual_seed(0)).final
    # {0} has mass 0.5 < 0.6; token 1 crosses p, so the nucleus is {0, 1}
    assert set(out.unique().tolist()) == {0, 1}
    share = (out == 0).double().mean().item()
    assert abs(share - 0.5 / 0.8) < 0.05


def test_nucleus_of_a_flat_distribution_holds_many_tokens():
    # 300 equally likely tokens, p = 0.495: the nucleus is 149 tokens (wider than a first top-64 guess)
    out = sample(fixed_denoiser(torch.zeros(10, 300)), torch.full((300, 10), 999), mask_id=999, num_steps=1,
                 strategy="random", sampling="nucleus", top_p=0.495, generator=torch.Generator().manual_seed(0)).final
    assert 130 <= len(out.unique()) <= 149


def test_forbidden_ids_are_never_emitted():
    logits = random_logits(vocab=8)
    logits[:, :3] += 20  # the model loves the forbidden ids
    for sampling in ("greedy", "topk", "nucleus"):
        out = sample(fixed_denoiser(logits), torch.full((50, 6), 99), mask_id=99, num_steps=3,
                     sampling=sampling, top_p=1.0, forbidden_ids=[0, 1, 2],
                     generator=torch.Generator().manual_seed(0)).final
        assert (out >= 3).all()


@pytest.mark.parametrize("strategy", STRATEGIES)
@pytest.mark.parametrize("schedule", SCHEDULES)
@pytest.mark.parametrize("num_steps,block_length", [(1, None), (4, None), (9, None), (6, 3)])
def test_exactly_num_steps_forward_passes_and_a_finished_canvas(strategy, schedule, num_steps, block_length):
    calls: list = []
    x_init = torch.full((2, 9), 99)
    x_init[:, 0], x_init[1, 4] = 7, 5  # a given token, and one row with fewer masks
    traj = sample(fixed_denoiser(random_logits(length=9), calls), x_init, mask_id=99, num_steps=num_steps,
                  schedule=schedule, strategy=strategy, block_length=block_length,
                  generator=torch.Generator().manual_seed(0))
    assert len(calls) == traj.forward_passes == traj.num_steps
    # the adaptive strategies may finish early: the model decides, num_steps bounds
    assert traj.forward_passes <= num_steps if strategy in ADAPTIVE else traj.forward_passes == num_steps
    assert (traj.final != 99).all()
    assert torch.equal(traj.final[traj.given], x_init[traj.given])
    assert torch.equal(traj.tokens[0], x_init)


@pytest.mark.parametrize("strategy", ["random", "confidence", "margin", "entropy"])
def test_masks_follow_the_schedule_per_row_and_revealed_tokens_stay(strategy):
    x_init = torch.full((2, 12), 99)
    x_init[1, :5] = 3  # row 1 has 7 masks, row 0 has 12
    traj = sample(fixed_denoiser(random_logits(length=12)), x_init, mask_id=99, num_steps=5,
                  schedule="cosine", strategy=strategy, generator=torch.Generator().manual_seed(0))
    masks = (traj.tokens == 99).sum(-1).T.tolist()  # (B, S+1)
    assert masks == [masked_counts("cosine", 12, 5), masked_counts("cosine", 7, 5)]
    for s in range(1, 6):
        before, after = traj.tokens[s - 1], traj.tokens[s]
        shown = before != 99
        assert torch.equal(after[shown], before[shown])  # revealed tokens stay fixed
        assert torch.equal(traj.revealed[s], (before == 99) & (after != 99))
        assert torch.isnan(traj.probs[s][after == 99]).all()
        assert (traj.probs[s][traj.revealed[s]] > 0).all()


def test_resample_redraws_and_remasks_to_the_scheduled_count():
    traj = sample(fixed_denoiser(torch.zeros(8, 30)), torch.full((1, 8), 99), mask_id=99, num_steps=4,
                  strategy="resample", sampling="nucleus", top_p=1.0, generator=torch.Generator().manual_seed(0))
    assert (traj.tokens == 99).sum(-1)[:, 0].tolist() == masked_counts("linear", 8, 4)
    # with uniform logits, tokens revealed earlier get redrawn and usually change
    changed = [(traj.tokens[s - 1] != 99) & (traj.tokens[s] != 99) & (traj.tokens[s - 1] != traj.tokens[s])
               for s in range(2, 5)]
    assert any(c.any() for c in changed)


@pytest.mark.parametrize("strategy", ["confidence", "margin", "entropy"])
def test_certain_positions_are_revealed_first(strategy):
    logits = torch.zeros(5, 4)
    logits[3, 2] = 10.0  # position 3 is nearly certain
    logits[1, 0] = 5.0  # position 1 is next
    traj = sample(fixed_denoiser(logits), torch.full((1, 5), 9), mask_id=9, num_steps=5, sampling="greedy",
                  strategy=strategy)
    order = [int(traj.revealed[s, 0].nonzero()) for s in range(1, 6)]
    assert order[:2] == [3, 1]


@pytest.mark.parametrize("strategy,first", [("confidence", 0), ("margin", 1), ("entropy", 0)])
def test_strategies_rank_positions_by_their_own_score(strategy, first):
    probs = torch.tensor([[0.5, 0.5, 1e-9, 1e-9],  # top-1 0.5, margin 0, entropy ln 2
                          [0.45, 0.2, 0.2, 0.15]])  # top-1 0.45, margin 0.25, entropy 1.29
    traj = sample(fixed_denoiser(probs.log()), torch.full((1, 2), 9), mask_id=9, num_steps=2, sampling="greedy",
                  strategy=strategy)
    assert int(traj.revealed[1, 0].nonzero()) == first


def test_block_length_generates_blocks_left_to_right():
    traj = sample(fixed_denoiser(random_logits(length=8)), torch.full((1, 8), 99), mask_id=99, num_steps=4,
                  block_length=4, generator=torch.Generator().manual_seed(0))
    masks = traj.tokens[:, 0] == 99  # (S+1, L)
    assert masks[2, 4:].all() and not masks[2, :4].any()  # first block done after its 2 steps
    assert not masks[4].any()
    with pytest.raises(UserError, match="at least 2 steps"):
        sample(fixed_denoiser(random_logits(length=8)), torch.full((1, 8), 99), mask_id=99, num_steps=1,
               block_length=4)


def test_same_seed_same_output_and_another_seed_differs():
    logits = random_logits(vocab=50) * 0.1

    def run(seed):
        return sample(fixed_denoiser(logits), torch.full((4, 6), 99), mask_id=99, num_steps=3,
                      strategy="random", generator=torch.Generator().manual_seed(seed)).final

    assert torch.equal(run(3), run(3))
    assert not torch.equal(run(3), run(4))


def position_denoiser(denoiser, calls: list):
    """``denoiser`` with the fast path of `as_denoiser(masked_only=True)`: logits (M, V) at ``positions`` only."""

    def fast(xt, attention_mask=None, *, positions):
        calls.append(positions.clone())
        return denoiser(xt, attention_mask)[positions]  # (M, V)

    fast.accepts_positions = True
    return fast


@pytest.mark.parametrize("strategy", STRATEGIES)
@pytest.mark.parametrize("sampling", ["topk", "nucleus"])
def test_the_positions_fast_path_gives_the_same_trajectory(strategy, sampling):
    logits = torch.randn(10, 2000, generator=torch.Generator().manual_seed(0)) * 3  # (L, V)
    x_init = torch.full((3, 10), 1999)
    x_init[1, :3] = 5  # rows with different numbers of masks
    options = dict(mask_id=1999, num_steps=4, strategy=strategy, sampling=sampling, temperature=0.8,
                   forbidden_ids=[1999, 7], forbidden_at={4: [int(logits[4].argmax())]}, block_length=5)
    calls = []
    plain = sample(fixed_denoiser(logits), x_init, generator=torch.Generator().manual_seed(0), **options)
    fast = sample(position_denoiser(fixed_denoiser(logits), calls), x_init,
                  generator=torch.Generator().manual_seed(0), **options)
    for name in ("tokens", "revealed", "probs"):
        assert torch.equal(getattr(plain, name).nan_to_num(-1), getattr(fast, name).nan_to_num(-1)), name
    assert len(calls) == plain.forward_passes and all(not c[1, :3].any() for c in calls)  # never the given ones
    if strategy != "resample" and strategy not in REMASKING:  # positions asked for are masked ones only
        assert all(not (c & (xt != 1999)).any() for c, xt in zip(calls, plain.tokens[:-1], strict=True))


def test_as_denoiser_positions_returns_the_masked_only_rows(scratch):
    from tdlib.model import as_denoiser

    model, tokenizer = scratch
    xt = tokenizer(["def f(x): return x", "import os and sys"], return_tensors="pt", padding=True)["input_ids"]
    xt[:, 2:5] = tokenizer.mask_token_id
    denoiser = as_denoiser(model, masked_only=True)
    full = denoiser(xt)  # (B, L, V)
    positions = xt == tokenizer.mask_token_id
    positions[0, 3] = False
    assert denoiser.accepts_positions and not getattr(as_denoiser(model), "accepts_positions", False)
    assert torch.allclose(denoiser(xt, positions=positions), full[positions], atol=1e-5)
    assert full.shape == (*xt.shape, len(tokenizer))


@pytest.mark.parametrize(
    "options,message",
    [
        (dict(top_p=0.0), "top-p"),
        (dict(top_p=1.5), "top-p"),
        (dict(temperature=0.0), "temperature"),
        (dict(top_k=0), "top-k"),
        (dict(num_steps=0), "steps"),
        (dict(strategy="best"), "strategy"),
        (dict(sampling="beam"), "sampling"),
        (dict(schedule="sigmoid"), "schedule"),
    ],
)
def test_bad_options_are_user_errors(options, message):
    kwargs = dict(mask_id=99, num_steps=2) | options
    with pytest.raises(UserError, match=message):
        sample(fixed_denoiser(random_logits()), torch.full((1, 6), 99), **kwargs)


def glue_loving_denoiser(tokenizer):
    """Logits that strongly prefer word continuations ("##s", BPE pieces without a leading space)."""
    logits = torch.zeros(len(tokenizer))
    logits[continuation_ids(tokenizer)] = 8.0

    def denoiser(xt, attention_mask=None):
        return logits.expand(*xt.shape, -1).clone()  # (B, L, V)

    return denoiser


@pytest.mark.parametrize("kind", ["wordpiece", "bpe", "minilm"])
def test_generated_text_starts_with_the_prefix_and_a_space(kind, wordpiece, bpe_tokenizer, request):
    tokenizer = {"wordpiece": wordpiece, "bpe": bpe_tokenizer}.get(kind) or request.getfixturevalue("minilm_tokenizer")
    prefix = "The cat"
    texts, traj = generate(glue_loving_denoiser(tokenizer), tokenizer, prefix=prefix, num_samples=8,
                           max_length=12, num_steps=4, sampling="topk", top_k=50, seed=0)
    assert len(texts) == 8 and traj.forward_passes == 4
    for text in texts:
        assert text.startswith(prefix + " ") and not text[len(prefix) + 1:].startswith(" ")
        assert len(text) > len(prefix) + 1
    ids = tokenizer(prefix, add_special_tokens=False)["input_ids"]
    canvas = traj.tokens[0, 0].tolist()
    assert canvas[: len(ids) + 2] == [tokenizer.cls_token_id, *ids, tokenizer.mask_token_id]  # no end token after it
    assert canvas[-1] == tokenizer.sep_token_id and len(canvas) == 12
    assert not set(traj.final.flatten().tolist()) & (set(tokenizer.all_special_ids) - {
        tokenizer.cls_token_id, tokenizer.sep_token_id})


@pytest.mark.parametrize("kind", ["wordpiece", "bpe"])
def test_infilling_fills_each_mask_token(kind, wordpiece, bpe_tokenizer):
    tokenizer = wordpiece if kind == "wordpiece" else bpe_tokenizer
    text = f"the cat {tokenizer.mask_token} on the {tokenizer.mask_token}"
    texts, traj = generate(glue_loving_denoiser(tokenizer), tokenizer, prefix=text, num_samples=2, num_steps=2, seed=0)
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    assert traj.tokens.shape[-1] == len(ids) + 2
    assert (traj.tokens[0] == tokenizer.mask_token_id).sum(-1).tolist() == [2, 2]
    assert (traj.final != tokenizer.mask_token_id).all()
    for t in texts:  # masks after a space start new words
        assert t.startswith("the cat ") and tokenizer.mask_token not in t and len(t.split()) == 6


def test_generate_with_a_real_masked_lm_is_reproducible(scratch):
    model, tokenizer = scratch
    options = dict(prefix="The return statement", num_samples=2, max_length=16, num_steps=4, seed=5)
    texts, traj = generate(model, tokenizer, **options)
    again, _ = generate(model, tokenizer, **options)
    assert texts == again and traj.forward_passes == 4
    assert all(t.startswith("The return statement ") for t in texts)


def test_prefix_too_long_and_bad_options_are_user_errors(wordpiece):
    denoiser = glue_loving_denoiser(wordpiece)
    with pytest.raises(UserError, match="max-length"):
        generate(denoiser, wordpiece, prefix="the cat sat on the mat and the dog", max_length=8)
    with pytest.raises(UserError, match="top-p"):
        generate(denoiser, wordpiece, prefix="the cat", top_p=0)
    with pytest.raises(UserError, match="num-samples"):
        generate(denoiser, wordpiece, num_samples=0)


def test_filter_log_probs_is_the_kept_set_of_each_sampling():
    from tdlib.draws import filter_log_probs

    logp = torch.tensor([[0.5, 0.3, 0.15, 0.05]]).log()  # (1, V)

    def kept(**options):
        weights, ids = filter_log_probs(logp, **options)
        return sorted(ids[weights > 0].tolist())

    assert kept(sampling="greedy", top_k=1, top_p=1.0) == [0]
    assert kept(sampling="topk", top_k=3, top_p=1.0) == [0, 1, 2]
    assert kept(sampling="nucleus", top_k=1, top_p=0.6) == [0, 1]  # 0.5 < 0.6, token 1 crosses p
    assert kept(sampling="nucleus", top_k=1, top_p=1.0) == [0, 1, 2, 3]
