"""Each fast path of the sampler equals its plain form: chunked top-k, confidence drawn in rounds, bans in place."""

from __future__ import annotations

import pytest
import torch

from tdlib import draws
from tdlib.sample import SamplerConfig
from tdlib.strategies import Run, _most_confident_in_rounds, most_confident


@pytest.mark.parametrize("k", [1, 2, 50])
@pytest.mark.parametrize("vocab", [30522, 5942])
def test_chunked_topk_matches_torch_topk(k, vocab):
    x = torch.randn(40, vocab, generator=torch.Generator().manual_seed(k))
    x[:, :100] = float("-inf")
    x[3, vocab - 2] = 100.0  # the largest value in the columns past the last whole chunk
    x[5, 32:64] = 50.0 + torch.arange(32.0)  # one chunk holds the row's 32 largest values
    x[7, 130:] = float("-inf")  # 30 finite values: with k = 50 the rest of the top k is -inf, as in plain topk
    values, ids = draws._topk(x, k)
    expected = x.topk(k, dim=-1)
    assert torch.equal(values, expected.values)
    finite = expected.values.isfinite()  # ids of tied values (here the -inf ones) may differ
    assert torch.equal(ids[finite], expected.indices[finite])
    assert torch.equal(x.gather(1, ids), values)


@pytest.mark.parametrize("sampling", ["greedy", "topk", "nucleus"])
def test_confidence_in_rounds_equals_drawing_everywhere(sampling):
    """`_most_confident_in_rounds` reveals what `most_confident` does, with fewer draws."""
    g = torch.Generator().manual_seed(3)
    shape = (6, 40)
    eligible = torch.rand(shape, generator=g) < 0.7  # (B, L) masked positions
    eligible[5] = False
    eligible[5, :2] = True  # a row with 2 masked positions, both to be revealed
    rows, cols = eligible.nonzero(as_tuple=True)
    logits = torch.randn(len(rows), 300, generator=g) * torch.rand(len(rows), 1, generator=g) * 6  # flat to peaked
    logits[::7] = logits[0]  # repeated rows: tied largest probabilities
    logp = torch.log_softmax(logits, -1)
    count = torch.tensor([0, 1, 3, 10, 25, 2]).clamp(max=eligible.sum(1))
    u = draws.uniforms(len(logp), sampling, torch.Generator().manual_seed(0), "cpu")
    drawn_rows = []

    def draw(idx=None):
        idx = torch.arange(len(logp)) if idx is None else idx
        drawn_rows.append(len(idx))
        return draws.draw(logp[idx], None if u is None else u[idx], sampling=sampling, top_k=20, top_p=0.9)

    revealed, tokens, p_token = _most_confident_in_rounds(logp, eligible, rows, cols, count, draw)
    assert sum(drawn_rows) < len(logp)  # fewer draws than positions
    drawn_rows.clear()
    plain, all_tokens, all_p = most_confident(logp, eligible, rows, cols, count, draw)
    assert drawn_rows == [len(logp)]  # one draw everywhere
    assert torch.equal(revealed, plain)
    assert torch.equal(revealed.sum(1), count)
    keep = revealed[rows, cols]
    assert torch.equal(tokens[keep], all_tokens[keep])
    assert torch.equal(p_token[keep], all_p[keep])


@pytest.mark.parametrize("forbidden_at", [None, {1: [0, 2], 3: [5]}])
def test_bans_in_place_equal_the_plain_ban(forbidden_at):
    xt = torch.zeros(2, 5, dtype=torch.long)
    run = Run(None, SamplerConfig(), xt, torch.zeros(2, 5), mask_id=9, forbidden_ids=[9, 7, 9],
              forbidden_at=forbidden_at)
    rows, cols = torch.ones(2, 5, dtype=torch.bool).nonzero(as_tuple=True)
    logits = torch.randn(len(cols), 10, generator=torch.Generator().manual_seed(0))
    plain = run.ban(cols, logits.clone())
    fast = run._ban_in_place(cols, logits.clone())
    assert torch.equal(fast, plain)
    assert plain[:, [7, 9]].isinf().all() and plain.isfinite().sum() == len(cols) * 8 - (3 * 2 if forbidden_at else 0)
