"""Samplers that spread their reveals: the ``dilated`` plan and the ``--min-gap`` spacing rule."""

from __future__ import annotations

import json

import pytest
import torch

from tdlib.canvas import build_canvas, generate
from tdlib.cli import main
from tdlib.errors import UserError
from tdlib.sample import SamplerConfig, sample
from tdlib.schedules import dilated_plan_for
from tdlib.strategies import spaced_top_per_row

MASK = 9  # mask id of the hand-made canvases below (vocabulary 0..9)


def uniform(xt, attention_mask=None):
    """A denoiser with no opinion: every token of 0..8 alike, the mask never."""
    logits = torch.zeros(*xt.shape, 10)
    logits[..., MASK] = float("-inf")
    return logits


def revealed_sets(trajectory, row=0):
    """The columns each pass revealed in ``row``, as sorted lists."""
    return [trajectory.revealed[s, row].nonzero()[:, 0].tolist() for s in range(1, trajectory.num_steps + 1)]


@pytest.mark.parametrize("steps", [1, 3, 5, 12, 20])
def test_dilated_reveals_exactly_its_planned_positions_around_a_prompt(steps):
    canvas = torch.tensor([[0, 1, 2] + [MASK] * 16 + [0]])  # start, a prompt of two, 16 to write, end
    trajectory = sample(uniform, canvas, mask_id=MASK, num_steps=steps, strategy="dilated",
                        generator=torch.Generator().manual_seed(0))
    plan = dilated_plan_for(list(range(3, 19)), steps)
    assert revealed_sets(trajectory) == [sorted(s) for s in plan]
    assert not (trajectory.final == MASK).any()


def test_dilated_reveals_exactly_its_planned_positions_when_infilling_and_in_blocks():
    rows = torch.tensor([[0, MASK, 3, MASK, MASK, 4, MASK, MASK, MASK, 5, MASK, 0],  # infill: gaps differ by row
                         [0, 3, MASK, MASK, MASK, MASK, 4, 4, MASK, MASK, MASK, 0]])
    trajectory = sample(uniform, rows, mask_id=MASK, num_steps=3, strategy="dilated",
                        generator=torch.Generator().manual_seed(1))
    for b in range(2):
        columns = (rows[b] == MASK).nonzero()[:, 0].tolist()
        assert revealed_sets(trajectory, b) == [sorted(s) for s in dilated_plan_for(columns, 3)]
    blocks = sample(uniform, torch.tensor([[0] + [MASK] * 12 + [0]]), mask_id=MASK, num_steps=6,
                    strategy="dilated", block_length=6, generator=torch.Generator().manual_seed(2))
    # two blocks of six columns (the frame joins the first and last), three passes each, each its own plan
    first, second = dilated_plan_for(range(1, 7), 3), dilated_plan_for(range(7, 13), 3)
    assert revealed_sets(blocks) == [sorted(s) for s in first + second]


def _spaced_plain(scores, eligible, count, gap):
    """The rule one row at a time: down the ranking, skip a position closer than ``gap`` to one taken;
    if too few are far enough apart, the best of the rest fill the pass."""
    out = torch.zeros_like(eligible)
    for b in range(scores.shape[0]):
        order = sorted((c for c in range(scores.shape[1]) if eligible[b, c]), key=lambda c: (-float(scores[b, c]), c))
        taken = []
        for c in order:
            if len(taken) < int(count[b]) and all(abs(c - t) >= gap for t in taken):
                taken.append(c)
        taken += [c for c in order if c not in taken][: max(0, int(count[b]) - len(taken))]
        out[b, taken] = True
    return out


def test_the_spacing_rule_equals_its_plain_form():
    g = torch.Generator().manual_seed(0)
    for _ in range(200):
        length = int(torch.randint(1, 24, (1,), generator=g))
        scores = torch.randint(0, 5, (4, length), generator=g).float()  # ties on purpose
        eligible = torch.rand(4, length, generator=g) < 0.7
        count = torch.minimum(torch.randint(0, 8, (4,), generator=g), eligible.sum(1))
        gap = int(torch.randint(0, 6, (1,), generator=g))
        assert torch.equal(spaced_top_per_row(scores, eligible, count, gap),
                           _spaced_plain(scores, eligible, count, gap))


@pytest.mark.parametrize("strategy", ["random", "confidence", "margin", "entropy"])
def test_min_gap_spaces_the_first_pass_and_keeps_the_schedule(strategy):
    from tdlib.toylang import ToyLanguage

    language = ToyLanguage()
    _, trajectory = generate(language, language.tokenizer(), num_samples=20, max_length=42, num_steps=8,
                             strategy=strategy, min_gap=4, sampling="nucleus", top_p=1.0, seed=0)
    first = trajectory.revealed[1]  # (B, L): 5 positions of 40, room for a gap of 4
    for row in first:
        cols = row.nonzero()[:, 0]
        assert len(cols) == 5 and bool((cols.diff() >= 4).all())
    assert trajectory.forward_passes == 8 and not (trajectory.final == language.mask_id).any()


def test_min_gap_zero_or_one_leaves_a_strategy_as_it_is():
    from tdlib.toylang import ToyLanguage

    language = ToyLanguage()
    options = dict(num_samples=8, max_length=20, num_steps=5, strategy="confidence", seed=3)
    plain = generate(language, language.tokenizer(), **options)[0]
    assert generate(language, language.tokenizer(), min_gap=1, **options)[0] == plain
    assert generate(language, language.tokenizer(), min_gap=0, **options)[0] == plain


def test_dilated_keeps_toy_canvases_possible_where_random_order_breaks_them():
    from tdlib.price import possible_share
    from tdlib.toylang import ToyLanguage

    language = ToyLanguage()
    shares = {}
    for strategy in ("random", "dilated"):
        _, trajectory = generate(language, language.tokenizer(), num_samples=60, max_length=48, num_steps=12,
                                 strategy=strategy, sampling="nucleus", top_p=1.0, seed=0)
        shares[strategy] = possible_share(trajectory.final, language)
    assert shares["dilated"] >= 0.95 and shares["random"] < 0.5, shares


def test_bad_gaps_are_refused_in_one_line():
    with pytest.raises(UserError, match="--min-gap must be at least 0"):
        SamplerConfig(min_gap=-1)
    with pytest.raises(UserError, match="spaces the strategies that rank"):
        SamplerConfig(min_gap=3, strategy="threshold")
    from tdlib.toylang import ToyLanguage

    language = ToyLanguage()
    with pytest.raises(UserError, match="wider than the canvas"):
        generate(language, language.tokenizer(), max_length=10, min_gap=9)


@pytest.fixture(scope="module")
def checkpoint(scratch, tmp_path_factory):
    from tdlib.model import save_model

    model, tokenizer = scratch
    return str(save_model(model, tokenizer, tmp_path_factory.mktemp("spread") / "final-model"))


@pytest.mark.parametrize("flags", [["--strategy", "dilated", "--steps", "12"], ["--min-gap", "3"],
                                   ["--strategy", "confidence", "--min-gap", "3", "--steps", "12"]])
def test_the_command_line_spreads_reveals_on_a_checkpoint(checkpoint, capsys, flags):
    code = main(["generate", "--checkpoint", checkpoint, "--max-length", "40", "--num-samples", "2", "--json", *flags])
    out, err = capsys.readouterr()
    assert code == 0, err
    assert len(json.loads(out)["samples"]) == 2


@pytest.mark.parametrize("gap, message", [("-1", "--min-gap must be at least 0"), ("39", "wider than the canvas")])
def test_the_command_line_refuses_a_bad_gap(checkpoint, capsys, gap, message):
    code = main(["generate", "--checkpoint", checkpoint, "--max-length", "40", "--min-gap", gap])
    _, err = capsys.readouterr()
    assert code == 2
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error:") and message in lines[0]


def test_the_first_generated_word_is_never_a_continuation_piece_without_a_prompt(minilm_tokenizer):
    canvas, forbidden_at = build_canvas(minilm_tokenizer, "", 12)
    assert canvas[1] == minilm_tokenizer.mask_token_id
    banned = set(forbidden_at[1])
    assert minilm_tokenizer.convert_tokens_to_ids("##s") in banned
    assert minilm_tokenizer.convert_tokens_to_ids("the") not in banned
