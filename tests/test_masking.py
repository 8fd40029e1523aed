"""The forward process and the collator."""

import math

import pytest
import torch

from tdlib.errors import UserError
from tdlib.masking import (
    IGNORE_INDEX,
    MaskingCollator,
    check_ratios,
    mask_tokens,
    parse_ratios,
    protected_positions,
)


@pytest.mark.parametrize("t", [0.1, 0.5, 0.9, 1.0])
def test_mask_fraction_matches_t_within_binomial_error(t):
    g = torch.Generator().manual_seed(0)
    x0 = torch.randint(10, 100, (200, 100))
    _, masked = mask_tokens(x0, t, mask_id=1, generator=g)
    n = masked.numel()
    frac = masked.float().mean().item()
    assert abs(frac - t) <= 4 * math.sqrt(t * (1 - t) / n) + 1e-9


def test_mask_tokens_replaces_with_mask_id_and_keeps_the_rest():
    x0 = torch.randint(10, 100, (8, 50))
    xt, masked = mask_tokens(x0, 0.5, mask_id=3, generator=torch.Generator().manual_seed(1))
    assert torch.all(xt[masked] == 3)
    assert torch.equal(xt[~masked], x0[~masked])


def test_per_row_ratios():
    x0 = torch.randint(10, 100, (2, 4000))
    _, masked = mask_tokens(x0, torch.tensor([0.2, 0.8]), mask_id=1, generator=torch.Generator().manual_seed(0))
    assert masked[0].float().mean().item() == pytest.approx(0.2, abs=0.03)
    assert masked[1].float().mean().item() == pytest.approx(0.8, abs=0.03)


def _batch(tokenizer, texts, length=32):
    enc = tokenizer(texts, padding="max_length", max_length=length, truncation=True, return_tensors="pt")
    return [{"input_ids": i, "attention_mask": a} for i, a in zip(enc["input_ids"], enc["attention_mask"])]


@pytest.mark.parametrize("which", ["bpe_tokenizer", "minilm_tokenizer"])
def test_prefix_special_and_padding_never_masked(which, request):
    tokenizer = request.getfixturevalue(which)
    texts = ["The quick brown fox jumps over the lazy dog.", "A short one.", "Python is a language."]
    examples = _batch(tokenizer, texts)
    collator = MaskingCollator(tokenizer, ratios=[1.0], prefix_length=3, seed=0)
    batch = collator(examples)
    x0 = torch.stack([e["input_ids"] for e in examples])
    am = torch.stack([e["attention_mask"] for e in examples])
    special = torch.isin(x0, torch.tensor(tokenizer.all_special_ids))
    xt = batch["input_ids"]
    # at t = 1 every unprotected token is masked; the protected ones are untouched
    assert torch.equal(xt[special], x0[special])
    assert torch.equal(xt[am == 0], x0[am == 0])
    for row in range(len(texts)):
        content = (~special[row]).nonzero().flatten()
        prefix, rest = content[:3], content[3:]
        assert torch.equal(xt[row, prefix], x0[row, prefix])
        assert torch.all(xt[row, rest] == tokenizer.mask_token_id)
    labels = batch["labels"]
    assert torch.all(labels[xt != tokenizer.mask_token_id] == IGNORE_INDEX)
    assert torch.equal(labels[xt == tokenizer.mask_token_id], x0[xt == tokenizer.mask_token_id])


def test_protected_positions_counts_prefix_in_content_tokens(bpe_tokenizer):
    ids = bpe_tokenizer(["one two three four five six"], return_tensors="pt")["input_ids"]
    prot = protected_positions(ids, bpe_tokenizer, prefix_length=2)
    assert prot[0].tolist()[:3] == [True, True, True]  # <s> and two content tokens
    assert prot[0, 3].item() is False
    assert prot[0, -1].item() is True  # </s>


def test_batch_mode_uses_one_seed_ratio_per_batch(bpe_tokenizer):
    collator = MaskingCollator(bpe_tokenizer, mode="batch", seed=0)
    seen = set()
    for _ in range(50):
        t = collator.draw_t(8)
        assert torch.all(t == t[0])
        seen.add(round(t[0].item(), 3))
    assert seen <= {1.0, 0.9, 0.8, 0.7, 0.6, 0.5, 0.4, 0.3, 0.2, 0.1}
    assert len(seen) >= 5


def test_example_mode_draws_ratio_per_example(bpe_tokenizer):
    t = MaskingCollator(bpe_tokenizer, mode="example", ratios=[0.2, 0.7], seed=0).draw_t(256)
    assert sorted({round(v, 4) for v in t.tolist()}) == [0.2, 0.7]


def test_continuous_mode_is_uniform_on_eps_one(bpe_tokenizer):
    t = MaskingCollator(bpe_tokenizer, mode="continuous", eps=0.01, seed=0).draw_t(20000)
    assert t.min() >= 0.01 and t.max() <= 1.0
    assert t.mean().item() == pytest.approx(0.505, abs=0.01)
    assert len(set(t.tolist())) > 10000


def test_stratified_mode_puts_one_t_in_each_slice_and_stays_uniform(bpe_tokenizer):
    collator = MaskingCollator(bpe_tokenizer, mode="stratified", eps=0.0, seed=0)
    t = collator.draw_t(16)
    assert sorted((t * 16).floor().long().tolist()) == list(range(16))  # one per 1/16 slice
    assert not torch.equal(t, t.sort().values)  # shuffled, so position in the batch says nothing of t
    many = torch.cat([collator.draw_t(16) for _ in range(2000)])
    assert many.mean().item() == pytest.approx(0.5, abs=0.01)  # marginally U(0, 1): the ELBO stays unbiased
    assert (many < 0.1).float().mean().item() == pytest.approx(0.1, abs=0.01)
    batch_means = torch.stack([collator.draw_t(16).mean() for _ in range(500)])
    iid_means = torch.stack([MaskingCollator(bpe_tokenizer, mode="continuous", seed=i).draw_t(16).mean()
                             for i in range(500)])
    assert batch_means.std() < iid_means.std() / 3  # sqrt(B) = 4 times less batch-to-batch variation


def test_collator_returns_ratios_and_is_seeded(bpe_tokenizer):
    examples = _batch(bpe_tokenizer, ["some text to mask here", "and more text"])
    a = MaskingCollator(bpe_tokenizer, seed=3)(examples)
    b = MaskingCollator(bpe_tokenizer, seed=3)(examples)
    assert a["t"].shape == (2,)
    assert torch.equal(a["input_ids"], b["input_ids"])


@pytest.mark.parametrize("bad", [[0.0], [1.5], [-0.1], []])
def test_ratios_outside_zero_one_are_refused(bad):
    with pytest.raises(UserError):
        check_ratios(bad)


def test_parse_ratios():
    assert parse_ratios("1.0, 0.5,0.1") == (1.0, 0.5, 0.1)
    with pytest.raises(UserError):
        parse_ratios("1.0,abc")
