"""Tests for tdlib.render (pure HTML renderers) and tdlib.widgets (the shells on top), no browser."""

from __future__ import annotations

import json
import re
from types import SimpleNamespace

import pytest
import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers
from transformers import PreTrainedTokenizerFast

from tdlib import plots, render, tables, widgets
from tdlib.errors import UserError
from tdlib.pieces import display_words, token_pieces, tokenizer_style

WORDS = [
    "[PAD]",
    "[UNK]",
    "[CLS]",
    "[SEP]",
    "[MASK]",
    "the",
    "cat",
    "##s",
    "sat",
    "on",
    "mat",
    ".",
    "<b>",
    "dog",
]


@pytest.fixture(scope="module")
def tokenizer():
    """A tiny BERT-style WordPiece tokenizer: [CLS] x [SEP], '##' continuations."""
    backend = Tokenizer(models.WordPiece({w: i for i, w in enumerate(WORDS)}, unk_token="[UNK]"))
    backend.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    backend.decoder = decoders.WordPiece()
    return PreTrainedTokenizerFast(
        tokenizer_object=backend,
        unk_token="[UNK]",
        pad_token="[PAD]",
        cls_token="[CLS]",
        sep_token="[SEP]",
        mask_token="[MASK]",
    )


@pytest.fixture(scope="module")
def bpe_tokenizer():
    """A tiny RoBERTa-style byte-level BPE tokenizer: <s> x </s>, 'Ġ' marks a leading space."""
    vocab = {
        w: i
        for i, w in enumerate(
            [
                "<s>",
                "<pad>",
                "</s>",
                "<unk>",
                "<mask>",
                "The",
                "Ġcat",
                "s",
                "Ġsat",
                "ĠcafÃ©",
                "Ġ<",
                "b",
                ">",
                "Ċ",
            ]
        )
    }
    backend = Tokenizer(models.BPE(vocab, [], unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.decoder = decoders.ByteLevel()
    return PreTrainedTokenizerFast(
        tokenizer_object=backend,
        bos_token="<s>",
        eos_token="</s>",
        unk_token="<unk>",
        pad_token="<pad>",
        mask_token="<mask>",
    )


def ids(tokenizer, text: str) -> list[int]:
    return tokenizer.convert_tokens_to_ids(text.split())


def make_trajectory(
    tokenizer, finals: list[str], reveal_order: list[list[list[int]]], given: list[int]
):
    """A hand-built trajectory: each sample's positions in `reveal_order[b][s-1]` appear at step s."""
    x0 = torch.tensor([ids(tokenizer, f) for f in finals])  # (B, L)
    mask_id = tokenizer.mask_token_id
    num_steps = len(reveal_order[0])
    batch, length = x0.shape
    revealed = torch.zeros(num_steps + 1, batch, length, dtype=torch.bool)
    for b, steps in enumerate(reveal_order):
        for s, positions in enumerate(steps, start=1):
            revealed[s, b, positions] = True
    ever = revealed.any(0)  # (B, L)
    tokens = x0.expand(num_steps + 1, batch, length).clone()
    probs = torch.full(tokens.shape, float("nan"))
    for s in range(num_steps + 1):
        later = revealed[s + 1 :].any(0) if s < num_steps else torch.zeros_like(ever)
        tokens[s][later] = mask_id
        probs[s][ever & ~later] = 0.9
    given_mask = torch.zeros(batch, length, dtype=torch.bool)
    given_mask[:, given] = True
    return SimpleNamespace(
        tokens=tokens, revealed=revealed, probs=probs, mask_id=mask_id, given=given_mask
    )


@pytest.fixture
def trajectory(tokenizer):
    finals = ["[CLS] the cat ##s sat on mat . [SEP]", "[CLS] the dog sat on the mat . [SEP]"]
    order = [[[4, 6], [2, 5], [3, 7]], [[2, 7], [3, 5], [4, 6]]]
    return make_trajectory(tokenizer, finals, order, given=[1])


# ---------------------------------------------------------------- display pieces


def test_display_words_wordpiece():
    pieces = ["[CLS]", "the", "cat", "##s", "sat", ".", "[SEP]", "[PAD]"]
    assert display_words(pieces) == ["the", "cats", "sat."]
    assert display_words(["[CLS]", "the", "[MASK]", "##s"]) == ["the", "[MASK]s"]
    pieces = ["fox", "'", "s", "isn", "'", "t", "<", "simple", ">", ",", "(", "a", ")"]
    assert display_words(pieces, style="wordpiece") == [
        "fox's",
        "isn't",
        "<simple>,",
        "(a)",
    ]


def test_display_words_byte_level_bpe():
    pieces = ["<s>", "The", "Ġcat", "s", "Ġsat", "ĠcafÃ©", "Ġ<", "b", ">", "</s>", "<pad>"]
    assert display_words(pieces) == ["The", "cats", "sat", "café", "<b>"]
    assert display_words(["ĠThe", "Ġ", "qu", "ick", "Ċ", "Ġx"]) == ["The", "quick↵", "x"]


def test_token_pieces_use_the_tokenizer_style(tokenizer, bpe_tokenizer):
    assert tokenizer_style(tokenizer) == "wordpiece"
    assert tokenizer_style(bpe_tokenizer) == "bpe"
    bpe = token_pieces(
        bpe_tokenizer, bpe_tokenizer.convert_tokens_to_ids(["<s>", "The", "s", "<mask>"])
    )
    assert [(p.text, p.joins, p.hidden) for p in bpe] == [
        ("<s>", False, True),
        ("The", True, False),
        ("s", True, False),
        ("<mask>", False, False),
    ]
    wp = token_pieces(tokenizer, ids(tokenizer, "[CLS] cat ##s [MASK]"))
    assert [p.hidden for p in wp] == [True, False, False, False]  # the mask is never hidden


def test_token_pieces_with_a_fake_tokenizer():
    fake = SimpleNamespace(
        convert_ids_to_tokens=lambda ids: [["<s>", "Ġhi", "</s>"][i] for i in ids],
        all_special_ids=[0, 2],
        mask_token_id=None,
    )
    assert [p.text for p in token_pieces(fake, [0, 1, 2]) if not p.hidden] == ["hi"]


# ---------------------------------------------------------------- step renderer


def spans(html: str, cls: str) -> list[str]:
    """The texts of the token spans with class `cls` (the legend left out)."""
    out, marker = [], f'class="td-tok {cls}"'
    for part in html.split('class="td-legend"')[0].split(marker)[1:]:
        out.append(part.split(">", 1)[1].split("</span>", 1)[0])
    return out


def test_step_zero_is_all_masks_except_given(trajectory, tokenizer):
    html = render.render_step_html(trajectory, 0, tokenizer, sample=0)
    assert spans(html, "td-given") == ["the"]
    assert len(spans(html, "td-mask")) == 6
    assert spans(html, "td-new") == [] and spans(html, "td-old") == []
    assert "[CLS]" not in html and "[SEP]" not in html
    assert "step 0 / 3" in html and "td-legend" in html


def test_revealed_at_step_are_marked_and_earlier_are_plain(trajectory, tokenizer):
    html = render.render_step_html(trajectory, 2, tokenizer, sample=0)
    assert spans(html, "td-new") == ["cat", "on"]
    assert spans(html, "td-old") == ["sat", "mat"]
    assert len(spans(html, "td-mask")) == 2
    assert 'title="p=0.90"' in html and "rgba(255,150,30,0.46)" in html  # tinted by probability
    html = render.render_step_html(trajectory, 3, tokenizer, sample=0)
    assert spans(html, "td-new") == ["s", "."]  # '##s' is shown without its '##'
    assert "cat</span><span" in html  # ... and glued onto 'cat'


def _styles(html: str, prop: str) -> list[str]:
    """The values of one CSS property (``color``, ``background``) in the inline styles of ``html``."""
    return re.findall(rf"(?<![-\w]){prop}:([^;'\"]+)", html)


def test_colours_follow_the_jupyterlab_theme(trajectory, tokenizer):
    # text colours are the theme's, with the light look as fallback; backgrounds are translucent tints
    pages = [render.render_step_html(trajectory, s, tokenizer) for s in range(4)]
    pages += [render.render_final_html(trajectory, tokenizer), widgets.MaskingExplorer("the cat sat", tokenizer).snapshot(),
              tables.sampling_table_html(torch.tensor([2.0, 1.0, 0.0, -1.0]), tokenizer, sampling="topk", top_k=2)]
    for page in pages:
        colours = _styles(page, "color")
        assert colours and all(re.fullmatch(r"var\(--jp-content-font-color[0-3],#[0-9a-f]{3,6}\)", c) for c in colours)
    assert "var(--jp-content-font-color1,#222)" in _styles(pages[0], "color")  # the light look kept outside JupyterLab
    tints = [b for page in pages for b in _styles(page, "background") if b != "#4a7ab0"]  # the bars of the sampling table
    assert tints and all(b.startswith("rgba(") for b in tints)
    orange = [float(b.split(",")[-1][:-1]) for b in tints if b.startswith("rgba(255,150,30,")]
    assert orange and max(orange) <= 0.5  # a white (dark theme) text stays readable on the strongest tint
    assert "border-top:1px solid var(--jp-border-color2,#eee)" in pages[0]


def test_all_samples_when_sample_is_none(trajectory, tokenizer):
    html = render.render_step_html(trajectory, 3, tokenizer)
    assert html.count('class="td-sample"') == 2
    assert spans(html, "td-new") == ["s", ".", "on", "mat"]  # sample 0 then sample 1
    assert "sample 1" in html and "showing" not in html
    assert "showing 1 of 2 samples" in render.render_step_html(
        trajectory, 3, tokenizer, max_samples=1
    )


def test_html_is_escaped(tokenizer):
    traj = make_trajectory(tokenizer, ["[CLS] the <b> [SEP]"], [[[2]]], given=[1])
    html = render.render_step_html(traj, 1, tokenizer)
    assert spans(html, "td-new") == ["&lt;b&gt;"]
    assert "<b>" not in html
    assert "&lt;b&gt;" in render.render_final_html(traj, tokenizer)


def test_step_out_of_range(trajectory, tokenizer):
    with pytest.raises(UserError, match="outside 0..3"):
        render.render_step_html(trajectory, 4, tokenizer)
    with pytest.raises(UserError, match="out of range"):
        render.render_step_html(trajectory, 0, tokenizer, sample=5)


def test_render_final_shades_by_reveal_step(trajectory, tokenizer):
    assert render.reveal_steps(trajectory)[0].tolist() == [0, 0, 2, 3, 1, 2, 1, 3, 0]
    html = render.render_final_html(trajectory, tokenizer, sample=0)
    assert spans(html, "td-final") == ["cat", "s", "sat", "on", "mat", "."]
    assert 'title="revealed at step 1, p=0.90"' in html
    assert spans(html, "td-given") == ["the"]
    assert "after 3 steps" in html and spans(html, "td-mask") == []


def test_renders_a_bpe_trajectory(bpe_tokenizer):
    traj = make_trajectory(bpe_tokenizer, ["<s> The Ġcat s Ġsat </s>"], [[[2, 3], [4]]], given=[1])
    html = render.render_step_html(traj, 1, bpe_tokenizer)
    assert spans(html, "td-new") == ["cat", "s"]
    assert "Ġ" not in html and "&lt;s&gt;" not in html


# ---------------------------------------------------------------- widget shells


def test_scrubber_slider_updates_html(trajectory, tokenizer):
    scrubber = widgets.DenoisingScrubber(trajectory, tokenizer, sample=0)
    assert scrubber.slider.max == scrubber.play.max == 3
    start = scrubber.html.value
    assert start == render.render_step_html(trajectory, 0, tokenizer, sample=0)
    scrubber.slider.value = 2
    assert scrubber.html.value == render.render_step_html(trajectory, 2, tokenizer, sample=0)
    scrubber.set_step(3)
    assert scrubber.step == 3 and "step 3 / 3" in scrubber.html.value
    assert scrubber.final_html == render.render_final_html(trajectory, tokenizer, sample=0)
    assert scrubber.widget.children[1] is scrubber.html


def record(step, **fields):
    return {"step": step, **fields}


def test_live_loss_view_redraws_on_eval(tmp_path):
    view = widgets.LiveLossView()
    view(record(0, event="start", config={}, max_steps=20))
    view(record(1, loss=4.0, lr=1e-4, tokens_per_s=1000.0))
    assert "loss 4.0000" in view.status.value and view.image.value == b""
    view(record(10, eval_loss_by_ratio={"1.0": 5.0, "0.5": 3.0}, nelbo_bits_per_char=2.5))
    first = view.image.value
    assert first[:4] == b"\x89PNG" and "2.500 bits/char" in view.status.value
    view(record(20, eval_loss_by_ratio={"1.0": 4.0, "0.5": 2.0}, nelbo_bits_per_char=2.0))
    assert view.image.value != first
    second = view.image.value
    view(record(25, loss=1.0, lr=1e-4))
    assert view.image.value == second  # training records alone do not redraw
    view(record(25, event="end", final_model="final-model"))
    assert "end" in view.status.value and view.image.value != second
    assert len(view.records) == 6
    assert len(view.figure().axes) == 3  # training loss, eval by ratio, colorbar

    (tmp_path / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in view.records))
    assert widgets.LiveLossView.from_run(tmp_path).records == view.records
    assert len(plots.run_figure(tmp_path).axes) == 3


def test_schedule_table_and_explorer():
    html = tables.schedule_table_html("linear", 4, 8)
    assert html.count("<tr class='td-step'>") == 5
    assert (
        "<td style='padding:0 8px;text-align:right;'>2</td>" in html
    )  # linear: 2 revealed per step
    explorer = widgets.ScheduleExplorer(schedule="linear", num_steps=4, num_masked=8)
    assert explorer.table.value == html and explorer.image.value[:4] == b"\x89PNG"
    explorer.num_steps.value = 8
    assert explorer.table.value == tables.schedule_table_html("linear", 8, 8)
    explorer.schedule.value = "cosine"
    assert "cosine: 8 masked tokens, 8 steps" in explorer.table.value


# ---------------------------------------------------------------- sampling


def test_kept_distribution_nucleus_keeps_the_crossing_token():
    probs = torch.tensor([0.5, 0.3, 0.15, 0.05])
    kept_p, kept = tables.kept_distribution(probs.log(), sampling="nucleus", top_p=0.7)
    assert kept.tolist() == [True, True, False, False]  # 0.5 < 0.7, 0.5 + 0.3 crosses it
    assert kept_p.tolist() == pytest.approx([0.625, 0.375, 0, 0])
    assert tables.kept_distribution(probs.log(), sampling="nucleus", top_p=0.5)[1].tolist() == [
        True,
        False,
        False,
        False,
    ]


def test_kept_distribution_top_k_temperature_greedy():
    logits = torch.tensor([2.0, 1.0, 0.0, -1.0])
    assert tables.kept_distribution(logits, top_k=2)[1].tolist() == [True, True, False, False]
    assert tables.kept_distribution(logits, sampling="nucleus", top_p=1.0)[1].all()  # no filter
    hot, _ = tables.kept_distribution(logits, sampling="nucleus", top_p=1.0, temperature=10.0)
    cold, _ = tables.kept_distribution(logits, sampling="nucleus", top_p=1.0, temperature=0.1)
    assert hot.max() < torch.softmax(logits.double(), -1).max() < cold.max()
    greedy, kept = tables.kept_distribution(logits, sampling="greedy")
    assert kept.tolist() == [True, False, False, False] and greedy[0] == 1.0
    with pytest.raises(UserError, match="temperature"):
        tables.kept_distribution(logits, temperature=0.0)


def test_kept_distribution_is_batched():
    logits = torch.tensor([[0.0, 1.0, 2.0], [2.0, 1.0, 0.0]])
    assert tables.kept_distribution(logits, top_k=1)[1].tolist() == [
        [False, False, True],
        [True, False, False],
    ]


def test_kept_set_matches_the_sampler_draws():
    """Every token the sampler draws lies in the kept set, and every kept token gets drawn."""
    from tdlib.sample import sample

    logits = torch.tensor([2.0, 1.5, 1.0, 0.0, -1.0, -3.0])  # (V,) the same at every position

    def denoiser(xt, attention_mask=None):
        return logits.expand(*xt.shape, -1)  # (B, L, V)

    for sampling, top_k, top_p in [
        ("topk", 3, 1.0),
        ("nucleus", 50, 0.6),
        ("nucleus", 50, 0.9),
        ("greedy", 1, 1.0),
    ]:
        options = dict(sampling=sampling, temperature=0.8, top_k=top_k, top_p=top_p)
        _, kept = tables.kept_distribution(logits, **options)
        x = torch.full((1, 4000), 99)
        drawn = sample(denoiser, x, mask_id=99, num_steps=1, strategy="random",
                       generator=torch.Generator().manual_seed(0), **options).final
        assert set(drawn[0].tolist()) == set(kept.nonzero()[:, 0].tolist()), sampling


def test_sampling_table_and_explorer(tokenizer):
    probs = torch.zeros(len(WORDS))
    probs[[5, 6, 12, 13]] = torch.tensor([0.5, 0.3, 0.15, 0.05])
    html = tables.sampling_table_html(
        probs.clamp_min(1e-12).log(), tokenizer, sampling="nucleus", top_p=0.7, num_candidates=4
    )
    assert html.count("class='td-kept'") == 2 and html.count("class='td-dropped'") == 2
    assert "&lt;b&gt;" in html and "<b>" not in html
    explorer = widgets.SamplingExplorer(
        probs, tokenizer, sampling="nucleus", num_candidates=4
    )  # probs detected
    assert (
        explorer.html.value.count("class='td-kept'") == 3
    )  # top-p 0.9: 0.5 + 0.3 + 0.15 crosses it
    explorer.top_p.value = 0.7
    assert explorer.html.value.count("class='td-kept'") == 2
    explorer.sampling.value = "topk"
    assert explorer.top_p.disabled and not explorer.top_k.disabled
    explorer.top_k.value = 1
    assert explorer.html.value.count("class='td-kept'") == 1 and "top-k=1" in explorer.html.value
    explorer.sampling.value = "greedy"
    assert explorer.html.value.count("class='td-kept'") == 1 and "(greedy)" in explorer.html.value
    with pytest.raises(UserError, match="unknown sampling"):
        tables.sampling_table_html(probs, tokenizer, sampling="beam")


def test_renders_a_trajectory_recorded_by_the_sampler(tokenizer):
    from tdlib.sample import sample

    def denoiser(xt, attention_mask=None):
        return torch.randn(
            *xt.shape, len(WORDS), generator=torch.Generator().manual_seed(1)
        )  # (B, L, V)

    x_init = torch.tensor(
        [ids(tokenizer, "[CLS] the [MASK] [MASK] [MASK] [MASK] [MASK] [MASK] [SEP]")] * 2
    )
    traj = sample(
        denoiser,
        x_init,
        mask_id=tokenizer.mask_token_id,
        num_steps=3,
        forbidden_ids=tokenizer.all_special_ids,
        generator=torch.Generator().manual_seed(0),
    )
    scrubber = widgets.DenoisingScrubber(traj, tokenizer)
    masks = []
    for step in range(4):
        scrubber.set_step(step)
        html = scrubber.html.value
        assert len(spans(html, "td-new")) == int(traj.revealed[step].sum())
        masks.append(len(spans(html, "td-mask")))
    assert masks == [12, 8, 4, 0]
    assert spans(scrubber.final_html, "td-given") == ["the", "the"]


# ---------------------------------------------------------------- masking


def test_masked_at_ratio_grows_monotonically():
    x0 = torch.arange(10, 40).unsqueeze(0)  # (1, 30)
    protected = torch.zeros_like(x0, dtype=torch.bool)
    protected[0, :3] = True
    previous = torch.zeros_like(protected)
    for t in [0.0, 0.1, 0.3, 0.5, 0.8, 1.0]:
        xt, masked = widgets.masked_at_ratio(x0, t, mask_id=4, protected=protected, seed=7)
        assert (masked >= previous).all() and not masked[0, :3].any()
        assert (xt[masked] == 4).all() and (xt[~masked] == x0[~masked]).all()
        previous = masked
    assert masked.sum() == 27


def test_masking_explorer(tokenizer):
    explorer = widgets.MaskingExplorer(
        "the cat sat on the mat .", tokenizer, ratio=0.0, prefix_length=1
    )
    assert "0 of 6 maskable" in explorer.html.value and "td-mask" not in explorer.html.value
    explorer.ratio.value = 1.0
    assert "6 of 6 maskable" in explorer.html.value
    assert spans(explorer.html.value, "td-given") == ["the"]
    assert len(spans(explorer.html.value, "td-mask")) == 6


def test_render_tokens_html(tokenizer):
    row = ids(tokenizer, "[CLS] the cat ##s [SEP]")
    html = render.render_tokens_html(
        row, tokenizer, masked=[0, 0, 1, 0, 0], protected=[1, 1, 0, 0, 1]
    )
    assert spans(html, "td-given") == ["the"] and spans(html, "td-old") == ["s"]
    assert len(spans(html, "td-mask")) == 1


# ---------------------------------------------------------------- side by side, following a run, snapshots


def test_compare_scrubber_moves_every_pane_and_holds_a_shorter_trajectory(tokenizer, trajectory):
    short = make_trajectory(tokenizer, ["[CLS] the dog sat on the mat . [SEP]"], [[[2, 3, 4, 5, 6, 7]]], given=[1])
    compare = widgets.CompareScrubber({"long": trajectory, "short": short}, tokenizer, sample=0)
    assert compare.slider.max == compare.play.max == 3
    compare.set_step(2)
    assert compare.panes["long"].value == render.render_step_html(trajectory, 2, tokenizer, sample=0)
    assert compare.panes["short"].value == render.render_step_html(short, 1, tokenizer, sample=0)  # its last frame
    snapshot = compare.snapshot()
    assert "<table>" in snapshot and "<b>long</b>" in snapshot and "<b>short</b>" in snapshot
    assert compare.panes["long"].value in snapshot
    halfway = widgets.CompareScrubber({"long": trajectory}, tokenizer, sample=0, step=2)
    assert halfway.step == halfway.play.value == 2  # in the browser the play button sets the slider: both start there


def test_every_widget_offers_a_static_snapshot(tokenizer, trajectory):
    scrubber = widgets.DenoisingScrubber(trajectory, tokenizer, sample=0)
    scrubber.set_step(2)
    assert scrubber.snapshot() == render.render_step_html(trajectory, 2, tokenizer, sample=0)
    schedule = widgets.ScheduleExplorer(schedule="linear", num_steps=4, num_masked=8)
    assert schedule.snapshot().startswith('<img src="data:image/png;base64,') and schedule.table.value in schedule.snapshot()
    masking = widgets.MaskingExplorer("the cat sat", tokenizer, ratio=1.0)
    assert masking.snapshot() == masking.render(1.0)
    explorer = widgets.SamplingExplorer(torch.tensor([2.0, 1.0, 0.0]), tokenizer, kind="logits")
    assert explorer.snapshot() == explorer.html.value
    view = widgets.LiveLossView()
    assert view.snapshot() == view.status.value  # nothing to draw yet
    view(record(10, eval_loss_by_ratio={"1.0": 5.0, "0.5": 3.0}, nelbo_bits_per_char=2.5))
    assert "data:image/png;base64," in view.snapshot()


def test_follow_takes_records_as_another_process_writes_them(tmp_path, monkeypatch):
    records = [record(0, event="start", config={}, max_steps=20), record(1, loss=4.0, lr=1e-4),
               record(10, eval_loss_by_ratio={"1.0": 5.0}, nelbo_bits_per_char=2.5), record(10, event="end")]
    metrics = tmp_path / "metrics.jsonl"
    written = iter(range(1, len(records) + 1))

    def write_more(seconds):  # each poll the "trainer" writes one more record
        metrics.write_text("".join(json.dumps(r) + "\n" for r in records[: next(written)]))

    monkeypatch.setattr(widgets.time, "sleep", write_more)
    view = widgets.LiveLossView()
    assert view.follow(tmp_path, timeout_s=60, poll_s=0) == "finished"
    assert view.records == records

    unfinished = widgets.LiveLossView()
    metrics.write_text(json.dumps(records[0]) + "\n")
    monkeypatch.setattr(widgets.time, "sleep", lambda seconds: None)
    assert unfinished.follow(tmp_path, timeout_s=0, poll_s=0) == "timeout"
    assert "stopped watching" in unfinished.status.value
    exited = SimpleNamespace(poll=lambda: 1)
    assert widgets.LiveLossView().follow(tmp_path, timeout_s=60, poll_s=0, process=exited) == "exited"
