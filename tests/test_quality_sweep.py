"""The quality-versus-steps sweep: its rows, table and figure, and the bench script that writes them."""

from __future__ import annotations

import importlib.util
import json
import math
from pathlib import Path

import pytest
import torch

from tdlib.errors import UserError
from tdlib.metrics import sample_metrics
from tdlib.plots import quality_vs_steps_figure
from tdlib.strategies import STRATEGIES
from tdlib.sweep import quality_vs_steps, steps_table

BENCH = Path(__file__).resolve().parents[1] / "bench"
SCHEDULES = ("linear", "cosine", "exponential")
SMALL = dict(steps=(2, 4), num_samples=2, max_length=12)


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """One torch thread here: these tiny models gain nothing from two, and on a busy 2-core machine
    each 2-thread region waits for its slowest thread (the sweep ran 10-25x slower)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def reference(bpe_tokenizer):
    """A tiny untrained GPT-2 on the scratch tokenizer, in eval mode (no dropout)."""
    from tdlib.model import build_causal_model

    return build_causal_model(bpe_tokenizer, n_layer=1, n_embd=32, n_head=2, max_length=64).eval(), bpe_tokenizer


@pytest.fixture(scope="module")
def rows(scratch):
    return quality_vs_steps(*scratch, **SMALL)


@pytest.fixture(scope="module")
def rows_ref(scratch, reference):
    return quality_vs_steps(*scratch, **SMALL, strategies=("random", "confidence"), reference=reference)


def test_one_row_per_cell_with_forward_passes_equal_to_steps(rows):
    cells = [(r["strategy"], r["schedule"], r["steps"]) for r in rows]
    assert cells == [(st, sc, s) for st in STRATEGIES for sc in SCHEDULES for s in (2, 4)]
    assert all(r["forward_passes"] == r["steps"] for r in rows)
    assert all(set(sample_metrics(["a b"])) <= set(r) and len(r["texts"]) == 2 for r in rows)
    assert all("generative_perplexity" not in r for r in rows)


def test_same_seed_same_rows_but_for_seconds(scratch, rows):
    again = quality_vs_steps(*scratch, **SMALL)
    strip = [{k: v for k, v in r.items() if k != "seconds"} for r in rows]
    assert [{k: v for k, v in r.items() if k != "seconds"} for r in again] == strip
    # the seed reaches the sampler: another seed writes other texts somewhere in the grid
    other = quality_vs_steps(*scratch, **SMALL, strategies=("random",), seed=1)
    assert [r["texts"] for r in other] != [r["texts"] for r in rows if r["strategy"] == "random"]


def test_steps_beyond_the_generated_positions_are_clipped(scratch):
    # max_length 8 leaves 6 positions between start and end: 64 becomes 6, which is already asked for
    out = quality_vs_steps(*scratch, steps=(64, 4, 6), strategies=("random",), schedules=("linear",),
                           num_samples=1, max_length=8)
    assert [(r["steps"], r["forward_passes"]) for r in out] == [(4, 4), (6, 6)]


def test_generative_perplexity_only_with_a_reference_and_finite(rows_ref):
    assert len(rows_ref) == 2 * 3 * 2
    assert all(math.isfinite(r["generative_perplexity"]) and r["generative_perplexity"] > 1 for r in rows_ref)


def test_bad_options_fail_before_sampling(scratch):
    with pytest.raises(UserError, match="unknown strategy"):
        quality_vs_steps(*scratch, strategies=("random", "nope"))
    with pytest.raises(UserError, match="steps"):
        quality_vs_steps(*scratch, steps=(0, 4))


def test_table_has_every_strategy_schedule_and_step(rows, rows_ref):
    table = steps_table(rows)
    assert "generative_perplexity" not in table  # absent from every row: left out
    for metric in ("unigram_entropy", "distinct_2", "repetition_rate_4", "self_bleu", "seconds"):
        assert f"**{metric}**" in table
    assert "| strategy | schedule | 2 | 4 |" in table
    for strategy in STRATEGIES:
        for schedule in SCHEDULES:
            assert table.count(f"| {strategy} | {schedule} |") == 5  # one line in each of the five tables
    assert "**generative_perplexity**" in steps_table(rows_ref, metrics=("generative_perplexity",))


def test_figure_one_panel_per_present_metric_one_line_per_setting(rows, rows_ref):
    fig = quality_vs_steps_figure(rows, metrics=("generative_perplexity", "unigram_entropy", "distinct_2"))
    assert len(fig.axes) == 2  # no reference: no perplexity panel
    for ax in fig.axes:
        assert len(ax.lines) == len(STRATEGIES) * len(SCHEDULES)
        assert ax.get_xscale() == "log" and "forward passes" in ax.get_xlabel()
    fig = quality_vs_steps_figure(rows_ref)
    assert len(fig.axes) == 2 and len(fig.axes[0].lines) == 2 * 3
    assert "lower = more fluent" in fig.axes[0].get_ylabel()
    fig = quality_vs_steps_figure(rows, metrics=("unigram_entropy",), human={"unigram_entropy": 9.5})
    assert [line.get_ydata()[0] for line in fig.axes[0].lines[-1:]] == [9.5]  # the human-text line
    assert fig.axes[0].get_ylim()[1] >= 9.5


def test_bench_script_writes_table_json_and_plot(scratch, reference, tmp_path, monkeypatch, capsys):
    from tdlib.model import save_model

    checkpoint = save_model(*scratch, tmp_path / "final-model")
    reference[0].save_pretrained(tmp_path / "ar")
    reference[1].save_pretrained(tmp_path / "ar")
    monkeypatch.syspath_prepend(str(BENCH))
    spec = importlib.util.spec_from_file_location("quality_vs_steps_bench", BENCH / "quality_vs_steps.py")
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    out = tmp_path / "out"
    argv = ["--checkpoint", str(checkpoint), "--reference", str(tmp_path / "ar"), "--steps", "2,4",
            "--strategies", "random,resample", "--num-samples", "2", "--max-length", "10", "--out", str(out), "--quiet"]
    assert bench.main(argv) == 0
    printed = dict(line.split(": ", 1) for line in capsys.readouterr().out.splitlines())
    assert printed["cells"] == "12" and "best_cell_random" in printed and "best_generative_perplexity_resample" in printed
    result = json.loads((out / "quality_vs_steps.json").read_text())
    assert len(result["rows"]) == 12 and result["settings"]["steps"] == "2,4"
    human = result["human"]  # the same metrics on as many held-out human texts
    assert human["dataset"] == "pydoc" and len(human["texts"]) == 2
    assert human["unigram_entropy"] == pytest.approx(sample_metrics(human["texts"])["unigram_entropy"])
    assert float(printed["human_generative_perplexity"]) == pytest.approx(human["generative_perplexity"], rel=1e-3)
    table = (out / "quality_vs_steps.md").read_text()
    assert table.startswith("Human text") and "| resample | exponential |" in table
    assert (out / "quality_vs_steps.png").read_bytes()[:4] == b"\x89PNG"
    assert bench.main([*argv[:4], "--steps", "four", "--out", str(out)]) == 2
    assert capsys.readouterr().err.startswith("error: --steps")
