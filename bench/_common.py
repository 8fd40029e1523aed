"""Helpers shared by the training benchmarks: data, the original experiment's collator, FLOPs, timing, output.

Not part of tdlib: these only measure it. Everything here runs offline.
"""

from __future__ import annotations

import random
import statistics
import threading
import time
from pathlib import Path

import torch

from tdlib.data import Examples, load_corpus, make_examples
from tdlib.masking import ORIGINAL_RATIOS

DEFAULT_DATA_DIR = Path(__file__).resolve().parents[2] / "shared" / "data"


def setup_threads(threads: int | None) -> int:
    """Use ``threads`` torch threads (None: torch's default); returns the number in use."""
    if threads:
        torch.set_num_threads(threads)
    return torch.get_num_threads()


def bench_lines(corpus: str, data_dir: str | Path | None, num_lines: int, seed: int = 0) -> list[str] | None:
    """``num_lines`` non-empty training lines drawn at random (fixed seed), or None if the data is absent.

    A random draw over the whole split keeps the padded-line fill (real tokens per
    row) close to that of the full split while tokenizing only what is needed.
    """
    if corpus == "wikitext-2-v1":
        folder = Path(data_dir or DEFAULT_DATA_DIR)
        if not (folder / "wikitext-2-v1" / "train.txt").is_file() and not (folder / "train.txt").is_file():
            return None
        lines = load_corpus("wikitext-2-v1", data_dir=folder)["train"]
    else:
        lines = load_corpus(corpus)["train"]
    lines = [line for line in lines if line.strip()]
    if num_lines >= len(lines):
        return lines
    return random.Random(seed).sample(lines, num_lines)


def make_bench_examples(lines: list[str], tokenizer, max_length: int, mode: str) -> Examples:
    """tdlib examples (``lines`` padded one per line, or ``packed``) from ``lines``."""
    return make_examples(lines, tokenizer, max_length, mode)


class OriginalCollator:
    """The original experiment's collator: `DataCollatorForLanguageModeling` with one mask ratio per batch.

    The ratio is drawn from ``ratios`` for each batch, every chosen token
    becomes ``[MASK]`` (no random or kept tokens), and the first ``prefix_length``
    content tokens of each row are never masked (nor special tokens or padding).
    It also records the real (non-padding) tokens of each batch it makes, in order.
    """

    def __init__(self, tokenizer, ratios=ORIGINAL_RATIOS,
                 prefix_length: int = 5, seed: int = 0):
        from transformers import DataCollatorForLanguageModeling

        class _PerBatchRatio(DataCollatorForLanguageModeling):
            def torch_mask_tokens(inner, inputs, special_tokens_mask=None, offset_mapping=None):
                if special_tokens_mask is None:  # as the parent does: one Python call per row
                    special_tokens_mask = torch.tensor(
                        [tokenizer.get_special_tokens_mask(row, already_has_special_tokens=True)
                         for row in inputs.tolist()], dtype=torch.bool)
                special = special_tokens_mask.bool()
                content_rank = torch.cumsum((~special).long(), dim=1) * (~special).long()  # 1, 2, ... per row
                protected = special | ((content_rank >= 1) & (content_rank <= prefix_length))
                inner.mlm_probability = float(self.rng.choice(ratios))
                return super().torch_mask_tokens(inputs, special_tokens_mask=protected, offset_mapping=offset_mapping)

        self.rng = random.Random(seed)
        self.inner = _PerBatchRatio(tokenizer, mlm=True, mlm_probability=0.15, mask_replace_prob=1.0,
                                    random_replace_prob=0.0, seed=seed)
        self.real_tokens: list[int] = []

    def __call__(self, examples):
        batch = self.inner(examples)
        self.real_tokens.append(int(batch["attention_mask"].sum()))
        return batch


class ListDataset(torch.utils.data.Dataset):
    """Rows of an Examples object in a fixed order (a plain map-style dataset for the Trainer)."""

    def __init__(self, examples: Examples, order: list[int]):
        self.examples, self.order = examples, order

    def __len__(self) -> int:
        return len(self.order)

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        return self.examples[self.order[i]]


def matmul_peak_gflops(n: int = 2048, repeats: int = 5) -> float:
    """Best fp32 GFLOP/s of an n x n by n x n torch.matmul on this machine (2 n^3 FLOPs)."""
    a, b = torch.randn(n, n), torch.randn(n, n)
    torch.matmul(a, b)
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        torch.matmul(a, b)
        best = min(best, time.perf_counter() - start)
    return 2 * n**3 / best / 1e9


def mlm_flop_counts(model) -> dict[str, float]:
    """Parameter counts behind the training FLOPs of a BERT/RoBERTa masked LM.

    ``body``: encoder layers (embeddings excluded: a lookup costs no matmul);
    ``head_per_position``: multiply-adds of the LM head for one position
    (transform dense H x H plus decoder H x V, tied weights counted once as used);
    ``attn_per_position``: multiply-adds of QK^T and AV per position per unit of
    sequence length, summed over layers (n_layers * 2 * H).
    """
    cfg = model.config
    encoder = model.base_model.encoder
    body = sum(p.numel() for p in encoder.parameters())
    hidden, vocab = cfg.hidden_size, cfg.vocab_size
    return {
        "body": float(body),
        "head_per_position": float(hidden * hidden + hidden * vocab),
        "attn_per_position": float(cfg.num_hidden_layers * 2 * hidden),
    }


def train_step_flops(counts: dict[str, float], batch: int, length: int, head_positions: float) -> float:
    """Training FLOPs of one step: 6 x (body params x B*L + attention x B*L*L + head x positions).

    6 = 2 FLOPs per multiply-add x 3 (forward, backward to inputs, backward to
    weights). Padding positions are counted (they are computed); the head counts
    only the positions it runs on (all B*L for a full-vocabulary head).
    """
    positions = batch * length
    return 6 * (counts["body"] * positions + counts["attn_per_position"] * positions * length
                + counts["head_per_position"] * head_positions)


def median(values: list[float]) -> float:
    """The median (0 for an empty list)."""
    return statistics.median(values) if values else 0.0


def print_figures(figures: dict[str, object]) -> None:
    """Print figures as ``name: value`` lines (floats with 4 significant digits)."""
    for name, value in figures.items():
        print(f"{name}: {value:.4g}" if isinstance(value, float) else f"{name}: {value}")


class PeakRSS:
    """Sample this process's resident set size in a thread; ``peak`` is the maximum seen (bytes)."""

    def __init__(self, interval_s: float = 0.002):
        import psutil

        self.process = psutil.Process()
        self.interval_s = interval_s
        self.peak = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, self.process.memory_info().rss)
            time.sleep(self.interval_s)

    def __enter__(self) -> PeakRSS:
        self.peak = self.process.memory_info().rss
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, self.process.memory_info().rss)
