"""The training loop: corpus -> examples -> collator -> loop -> checkpoint.

`train(config)` fine-tunes a masked LM to denoise at every mask ratio. It runs
unchanged on a CPU, one GPU (bf16 autocast, fused AdamW) or several processes
under ``accelerate launch``, and it is resumable: the data order, the masks and
dropout at step k depend only on ``(seed, k)``, so a run killed after a
checkpoint and resumed ends with the same weights as one that never stopped.

What it writes to ``output_dir`` (the run directory):

- ``checkpoint-STEP/``: a complete Hugging Face model directory (config,
  ``model.safetensors``, tokenizer) plus ``trainer_state.pt`` (optimizer and
  scheduler) and ``training_config.json``; written aside and renamed;
- ``latest``: a plain file naming the newest checkpoint;
- ``final-model/``: the model at the end;
- ``metrics.jsonl``: one JSON record per line (see `tdlib.plots.read_metrics`).

This module trains; it does not draw (callbacks receive every metrics record,
so `tdlib.widgets.LiveLossView` can draw them) and it does not sample.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import shutil
import signal
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F

from tdlib.causal import CausalLoss, build_causal_model, causal_nll, load_causal
from tdlib.data import Examples, get_split, load_corpus, make_examples
from tdlib.errors import UserError, check
from tdlib.masking import (
    IGNORE_INDEX,
    SEED_RATIOS,
    MaskingCollator,
    check_ratios,
    protected_positions,
)
from tdlib.masking import MODES as MASKING_MODES
from tdlib.model import (
    LATEST_FILE,
    TRAINING_CONFIG_FILE,
    as_denoiser,
    autocast,
    freeze_bottom,
    head_transform,
    list_checkpoints,
    load_model,
    masked_logits,
    max_sequence_length,
    save_model,
    set_dropout,
    split_mlm,
)

WEIGHTINGS = ("uniform", "elbo", "count")
OBJECTIVES = ("diffusion", "causal")
STATE_FILE = "trainer_state.pt"
CONFIG_FILE = TRAINING_CONFIG_FILE
METRICS_FILE = "metrics.jsonl"
HEAD_INITS = ("random", "unigram", "identity")
HEAD_VOCABS = ("all", "train")


@dataclass
class TrainConfig:
    """Every setting of a training run; the presets below fill it for common cases."""

    objective: str = "diffusion"  # "diffusion" (masked) or "causal" (the autoregressive baseline)
    model_name: str = "minilm"  # "minilm", "scratch", a hub id or a local directory
    dataset: str = "pydoc"  # see tdlib.data.load_corpus
    data_dir: str | None = None
    example_mode: str = "packed"  # "lines" (the seed) or "packed"
    max_length: int = 128  # tokens per example, special tokens included
    prefix_length: int = 5  # content tokens at the start never masked (the prompt)
    mask_probs: tuple[float, ...] = SEED_RATIOS  # ratios for the "batch"/"example" modes
    masking: str = "batch"  # "batch" (the seed), "example", "continuous" t ~ U(eps, 1) or "stratified"
    loss_weighting: str = "uniform"  # "uniform" (plain MLM, the seed), "elbo" (1/t) or "count" ((n+1)/m)
    epochs: float = 3.0
    max_steps: int | None = None  # overrides epochs when set
    batch_size: int = 16  # examples per optimizer step (over all processes)
    grad_accum: int = 1  # micro-batches per optimizer step
    learning_rate: float = 5e-5
    warmup_steps: int = 500
    weight_decay: float = 0.01
    max_grad_norm: float = 1.0
    log_steps: int = 10
    eval_steps: int = 500
    eval_examples: int = 256  # validation blocks scored at each evaluation
    save_steps: int = 1000
    save_total_limit: int | None = 2
    save_at: tuple[int, ...] = ()  # extra steps to checkpoint at (benchmarks score them afterwards)
    output_dir: str = "runs/default"
    seed: int = 42
    scratch: dict = field(default_factory=dict)  # options for a "scratch" model (hidden_size, ...)
    causal: dict = field(default_factory=dict)  # sizes of the causal baseline (n_layer, n_embd, n_head)
    time_budget_s: float | None = None  # stop (and save) after this many seconds of training
    # train for time_budget_s seconds with the learning rate decaying to zero over them (the step count, max_steps or
    # epochs, is ignored) and end there normally: equal time for runs whose steps cost differently, and a decayed
    # schedule on any machine (not reproducible step for step: it follows the clock)
    lr_over_time: bool = False
    save_at_s: tuple[float, ...] = ()  # with lr_over_time: checkpoint at the first step past each of these seconds
    # a new LM head's start: "random" (as built), "unigram" (output bias = log unigram frequencies of the train
    # tokens) or "identity" (the unigram bias, and the head's transform starts as a shifted identity map)
    head_init: str = "random"
    head_lr_scale: float = 1.0  # learning-rate multiplier for the LM head's own parameters (not tied embeddings)
    # the masked model's training softmax: over "all" tokens, or ("train") only those in the training text, the only
    # possible labels (a cheaper head; evaluation, sampling and the saved model keep the whole vocabulary)
    head_vocab: str = "all"
    dropout: float | None = None  # None keeps the model's own dropout; 0.0 turns it off for short runs
    # a cheaper step for a pretrained start (the masked model only: the causal baseline starts from scratch)
    freeze_embeddings: bool = False  # keep the input embeddings (and an output layer tied to them) fixed
    freeze_layers: int = 0  # keep the lowest N transformer layers fixed

    def validate(self) -> TrainConfig:
        """Check every value; raise UserError naming the flag to fix."""
        check(self.objective in OBJECTIVES, f"--objective must be one of {', '.join(OBJECTIVES)}")
        check(self.example_mode in ("lines", "packed"), f"unknown example mode {self.example_mode!r}")
        check(self.masking in MASKING_MODES, f"unknown masking mode {self.masking!r}")
        check(self.loss_weighting in WEIGHTINGS, f"--loss-weighting must be one of {', '.join(WEIGHTINGS)}")
        check_ratios(self.mask_probs)
        check(self.max_length >= 8, f"--max-length must be at least 8, got {self.max_length}")
        check(self.prefix_length >= 0, f"--prefix-length must be >= 0, got {self.prefix_length}")
        check(
            self.prefix_length <= self.max_length - 3,
            f"--prefix-length {self.prefix_length} leaves nothing to learn in --max-length {self.max_length}",
        )
        check(self.batch_size >= 1, f"--batch-size must be >= 1, got {self.batch_size}")
        check(self.grad_accum >= 1 and self.batch_size % self.grad_accum == 0,
              f"--batch-size {self.batch_size} must be a multiple of the gradient accumulation {self.grad_accum}")
        check(self.learning_rate > 0 and math.isfinite(self.learning_rate), "--learning-rate must be > 0")
        check(self.warmup_steps >= 0, "--warmup-steps must be >= 0")
        check(self.epochs > 0, "--epochs must be > 0")
        check(self.max_steps is None or self.max_steps >= 1, "--max-steps must be >= 1")
        check(self.eval_steps >= 1 and self.save_steps >= 1 and self.log_steps >= 1,
              "--eval-steps, --save-steps and log steps must be >= 1")
        check(self.save_total_limit is None or self.save_total_limit >= 1, "--save-total-limit must be >= 1")
        check(0 <= self.seed < 2**32, f"--seed must be in 0 .. {2**32 - 1}, got {self.seed}")
        check(self.time_budget_s is None or self.time_budget_s >= 0, "--time-budget must be >= 0")
        check(not self.lr_over_time or (self.time_budget_s is not None and 0 < self.time_budget_s < math.inf),
              "--lr-over-time needs a finite --time-budget > 0 to decay over")
        check(not self.save_at_s or self.lr_over_time, "checkpoints by seconds (save_at_s) need --lr-over-time")
        check(all(0 < s for s in self.save_at_s), "save_at_s must be positive seconds")
        check(self.head_init in HEAD_INITS, f"--head-init must be one of {', '.join(HEAD_INITS)}")
        check(self.head_lr_scale > 0 and math.isfinite(self.head_lr_scale), "--head-lr-scale must be > 0")
        check(self.head_vocab in HEAD_VOCABS, f"--head-vocab must be one of {', '.join(HEAD_VOCABS)}")
        check(self.dropout is None or 0.0 <= self.dropout < 1.0, f"--dropout must be in [0, 1), got {self.dropout}")
        check(self.freeze_layers >= 0, f"--freeze-layers must be >= 0, got {self.freeze_layers}")
        return self


PRESETS: dict[str, dict] = {
    # the original experiment: roberta-base on WikiText-2 raw, 3 epochs = 4,458 steps at batch 16
    "seed": dict(
        model_name="roberta-base", dataset="wikitext-2", example_mode="lines", max_length=128,
        prefix_length=5, mask_probs=SEED_RATIOS, masking="batch", loss_weighting="uniform",
        epochs=3.0, batch_size=16, learning_rate=5e-5, warmup_steps=500, eval_steps=500,
        save_steps=1000, eval_examples=512,
    ),
    # offline, about 10 minutes on a 2-core laptop; settings chosen by measurement (docs/cpu_preset.md)
    "cpu": dict(
        model_name="minilm", dataset="pydoc", example_mode="packed", max_length=128,
        prefix_length=5, masking="stratified", loss_weighting="elbo", max_steps=560,
        batch_size=4, learning_rate=2e-4, warmup_steps=28, eval_steps=140, save_steps=140,
        head_init="identity", head_lr_scale=10.0, dropout=0.0,  # docs/cpu_preset.md, rounds 4 (embeddings train) and 6
        eval_examples=32, log_steps=10, time_budget_s=900.0,  # a slow laptop stops (and saves) at 15 minutes
    ),
    # seconds: tests, CI and notebook smoke runs
    "smoke": dict(
        model_name="scratch", dataset="pydoc", example_mode="packed", max_length=32,
        prefix_length=2, masking="batch", loss_weighting="uniform", max_steps=20, batch_size=8,
        learning_rate=2e-3, warmup_steps=2, eval_steps=10, save_steps=10, eval_examples=16,
        log_steps=2, scratch=dict(vocab_size=1000, hidden_size=64, num_layers=2, num_heads=2),
    ),
}


def preset(name: str, **overrides) -> TrainConfig:
    """A TrainConfig from a preset, with keyword overrides (None values are ignored)."""
    check(name in PRESETS, f"unknown preset {name!r}: use one of {', '.join(PRESETS)}")
    values = dict(PRESETS[name])
    values.update({k: v for k, v in overrides.items() if v is not None})
    return TrainConfig(**values).validate()


def lr_at(step: int, config: TrainConfig, total_steps: int, elapsed_s: float = 0.0) -> float:
    """Learning rate after ``step`` optimizer steps: linear warmup, then linear decay to 0.

    With ``config.lr_over_time`` the decay runs over the clock instead of the
    steps: ``lr * min(warmup factor, 1 - elapsed_s / time_budget_s)``, zero at
    the budget whatever a step costs.
    """
    if config.lr_over_time:
        warm = min((step + 1) / (config.warmup_steps + 1), 1.0)
        return config.learning_rate * min(warm, max(0.0, 1.0 - elapsed_s / config.time_budget_s))
    if step < config.warmup_steps:
        return config.learning_rate * (step + 1) / (config.warmup_steps + 1)
    remaining = max(total_steps - config.warmup_steps, 1)
    return config.learning_rate * max(0.0, (total_steps - step) / remaining)


class MaskedDiffusionLoss(torch.nn.Module):
    """Masked cross-entropy with the LM head run only at masked positions.

    ``uniform``: mean CE over masked tokens (the seed's MLM loss).
    ``elbo``: sum_i CE_i / t over masked tokens, divided by the number of
    scorable tokens, so that its expectation over t ~ U(0, 1) is the NELBO per
    token (an upper bound on -log p(x) / n).
    ``count``: the same bound with the realised count in place of t. An example
    with n scorable tokens of which m are masked contributes
    (n + 1) / m * sum_i CE_i (nothing when m = 0). Under t ~ U(0, 1), m is
    uniform on 0..n, so its expectation is the NELBO as well, but a small t no
    longer multiplies the chance number of masked tokens by a large 1/t.

    With ``vocab_ids`` (the ids that can be labels: the tokens of the training
    text), the softmax runs over those columns of the output layer only, S of V,
    which cuts the head's cost by (V - S) / V; every label must be among them.
    Heads that `tdlib.model.head_transform` cannot split keep the whole vocabulary.
    """

    def __init__(self, model, weighting: str, vocab_ids: torch.Tensor | None = None):
        super().__init__()
        self.model = model
        self.weighting = weighting
        self.transform = None if vocab_ids is None else head_transform(model)
        if self.transform is not None:
            index = torch.full((model.get_output_embeddings().weight.shape[0],), -1, dtype=torch.long)
            index[vocab_ids] = torch.arange(len(vocab_ids))  # vocabulary id -> column of the restricted softmax
            self.register_buffer("vocab_ids", vocab_ids.clone(), persistent=False)
            self.register_buffer("vocab_index", index, persistent=False)

    def _logits(self, input_ids, attention_mask, where, labels) -> tuple[torch.Tensor, torch.Tensor]:
        """Logits (M, V or S) at the masked positions and the column of each label in them (M,)."""
        if self.transform is None:
            return masked_logits(self.model, input_ids, attention_mask, where), labels[where]
        body, _ = split_mlm(self.model)
        hidden = self.transform(body(input_ids=input_ids, attention_mask=attention_mask)[0][where])  # (M, H)
        out = self.model.get_output_embeddings()
        bias = None if out.bias is None else out.bias[self.vocab_ids]
        return F.linear(hidden, out.weight[self.vocab_ids], bias), self.vocab_index[labels[where]]  # (M, S), (M,)

    def forward(self, input_ids, attention_mask, labels, t, scorable):
        where = labels != IGNORE_INDEX  # (B, L) masked positions
        logits, targets = self._logits(input_ids, attention_mask, where, labels)  # (M, V or S), (M,)
        ce = F.cross_entropy(logits.float(), targets, reduction="none")  # (M,)
        if self.weighting == "uniform":
            return ce.sum() / where.sum().clamp(min=1)
        if self.weighting == "count":  # (n + 1) / m per example: unbiased for the NELBO, lower variance
            n, m = scorable.sum(1), where.sum(1)  # (B,)
            weight = ((n + 1) / m.clamp(min=1))[:, None].expand_as(labels)[where]  # (M,)
        else:  # weight 1/t turns the masked CE into an ELBO (per scorable token)
            weight = 1.0 / t[:, None].expand_as(labels)[where]  # (M,)
        return (ce * weight).sum() / scorable.sum().clamp(min=1)


def head_parameters(model) -> list[torch.nn.Parameter]:
    """The LM head's own parameters: its transform and output bias, not weights tied to the input embeddings."""
    parts = split_mlm(model)
    if parts is None:
        return []
    tied = {id(p) for p in model.get_input_embeddings().parameters()}
    return [p for p in parts[1].parameters() if id(p) not in tied]


def param_groups(model, weight_decay: float, head_lr_scale: float = 1.0) -> list[dict]:
    """AdamW groups: no decay on biases and norms; the head's own parameters apart when their lr is scaled."""
    head = {id(p) for p in head_parameters(model)} if head_lr_scale != 1.0 else set()
    groups = []
    for in_head, scale in ((False, 1.0), (True, head_lr_scale)):
        params = [p for p in model.parameters() if p.requires_grad and (id(p) in head) == in_head]
        if params:
            groups += [
                {"params": [p for p in params if p.dim() >= 2], "weight_decay": weight_decay, "lr_scale": scale},
                {"params": [p for p in params if p.dim() < 2], "weight_decay": 0.0, "lr_scale": scale},
            ]
    return groups


def content_ids(examples: Examples, tokenizer) -> torch.Tensor:
    """The token ids (flat) at the positions training may mask and score: no special tokens, no padding."""
    return examples.input_ids[~protected_positions(examples.input_ids, tokenizer, examples.attention_mask)]


@torch.no_grad()
def init_output_bias(
    model, examples: Examples, tokenizer, smoothing: float = 0.5, good_turing: bool = False
) -> bool:
    """Set the LM head's output bias to the log unigram frequencies of the training tokens.

    A new head starts with logits near zero: a uniform guess over the whole
    vocabulary (ln V nats, about 10 for 30k tokens). With this bias its first
    guess is the unigram distribution, so training spends its steps on context.
    Each count gets ``smoothing`` added, so tokens the text never holds are not
    ruled out. With ``good_turing`` those tokens instead share, all together, the
    Good-Turing estimate of an unseen token's probability, n1 / N (n1 tokens of
    the text occur once, N in all; at least 1 / N): for a softmax that never
    scores them (``head_vocab="train"``) this start is all they get.
    Returns False when the head has no output bias (GPT-2's, for one).
    """
    out = model.get_output_embeddings()
    bias = getattr(out, "bias", None) if out is not None else None
    if bias is None:
        return False
    raw = torch.bincount(content_ids(examples, tokenizer), minlength=bias.numel())[: bias.numel()].double()
    counts = raw + smoothing
    unseen = raw == 0
    if good_turing and unseen.any():
        share = max(int((raw == 1).sum()), 1) / raw.sum()  # n1 / N
        counts[unseen] *= share * counts[~unseen].sum() / ((1 - share) * counts[unseen].sum())
    log_p = counts.log() - counts.sum().log()
    bias.copy_((log_p - log_p.mean()).to(bias.dtype))  # softmax ignores a shift; centred to stay small
    return True


@torch.no_grad()
def init_head_transform(model, shift: float = 3.0) -> bool:
    """Start the LM head's transform as a pass-through: its square ``dense`` layer becomes ``h + shift``.

    A BERT or RoBERTa head computes ``LayerNorm(gelu(dense(h))) @ E.T + b`` from the
    body's last hidden state ``h``, with ``E`` the word embeddings it is tied to. A new
    head's ``dense`` is random, so its first guesses ignore what the pretrained body
    already knows. With ``dense(h) = h + shift`` the GELU works where it is nearly the
    identity (MiniLM's last hidden states at masked positions lie almost all within
    +-1, and gelu(x) = x Phi(x) with Phi(2) = 0.977, Phi(4) = 0.99997), and the
    LayerNorm removes the constant shift again, so the head starts as about
    ``LayerNorm(h) @ E.T + b``: it reads the body's features through the pretrained
    embeddings from the first step. Returns False when the head has no such layer
    (GPT-2's is one output layer).
    """
    parts = split_mlm(model)
    if parts is None:
        return False
    dense = next((m for m in parts[1].modules()
                  if isinstance(m, torch.nn.Linear) and m.in_features == m.out_features), None)
    if dense is None:
        return False
    dense.weight.copy_(torch.eye(dense.in_features, dtype=dense.weight.dtype))
    if dense.bias is not None:
        dense.bias.fill_(shift)
    return True


def _set_step_seed(seed: int, step: int) -> None:
    torch.manual_seed(seed * 1_000_003 + step)


def _step_order(num_examples: int, seed: int, epoch: int) -> torch.Tensor:
    """The shuffled example order of an epoch, a function of (seed, epoch) only."""
    return torch.randperm(num_examples, generator=torch.Generator().manual_seed(seed * 7919 + epoch))


def _atomic_write_text(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


class MetricsLog:
    """Append-only metrics.jsonl that drops records past a resume point."""

    def __init__(self, path: Path, resume_step: int | None):
        self.path = path
        if resume_step is not None and path.exists():
            kept = []
            for line in path.read_text().splitlines():
                try:
                    record = json.loads(line)
                except ValueError:
                    continue  # a line cut by a kill
                if record.get("step", 0) <= resume_step and record.get("event") != "end":
                    kept.append(line)
            _atomic_write_text(path, "".join(k + "\n" for k in kept))
        elif resume_step is None and path.exists():
            path.unlink()

    def write(self, record: dict) -> None:
        with open(self.path, "a") as fh:
            fh.write(json.dumps(record) + "\n")
            fh.flush()


@dataclass
class TrainResult:
    """What a finished (or stopped) run leaves behind."""

    output_dir: Path
    final_step: int
    final_model: Path | None
    last_eval: dict | None
    stopped_early: bool = False


def _check_output_dir(out: Path, resume: bool) -> None:
    try:
        out.mkdir(parents=True, exist_ok=True)
        probe = out / ".write-test"
        probe.write_bytes(b"\0" * 4096)
        probe.unlink()
    except OSError as exc:
        raise UserError(f"cannot write to --output-dir {out}: {exc.strerror}; choose a writable folder") from None
    if not resume and (list_checkpoints(out) or (out / "final-model").exists()):
        raise UserError(
            f"{out} already holds a training run; pass --resume to continue it or choose another --output-dir"
        )


def clean_batch(examples: list[dict[str, torch.Tensor]], tokenizer) -> dict[str, torch.Tensor]:
    """Unmasked examples stacked for the causal baseline: input_ids, attention_mask, scorable."""
    x0 = torch.stack([e["input_ids"] for e in examples])  # (B, L)
    am = torch.stack([e["attention_mask"] for e in examples])
    return {"input_ids": x0, "attention_mask": am, "scorable": ~protected_positions(x0, tokenizer, am, 0)}


def evaluate_model(model, tokenizer, examples: Examples, config: TrainConfig, step: int) -> dict:
    """The evaluation record: loss per ratio on fixed masks and the NELBO in bits per char.

    For the causal baseline: its exact NLL in bits per char instead.
    """
    from tdlib.evaluate import loss_by_ratio, nelbo

    if config.objective == "causal":
        x0, am = examples.input_ids, examples.attention_mask
        scored = causal_nll(model, x0, ~protected_positions(x0, tokenizer, am, 0), attention_mask=am,
                            num_characters=examples.num_characters, batch_size=config.batch_size)
        model.train()
        return {"step": step, "nll_bits_per_char": scored["nll_bits_per_char"],
                "eval_nats_per_token": scored["nats_per_token"]}
    denoiser = as_denoiser(model, masked_only=True)
    x0, am = examples.input_ids, examples.attention_mask
    scorable_prefix = ~protected_positions(x0, tokenizer, am, config.prefix_length)
    scorable_all = ~protected_positions(x0, tokenizer, am, 0)
    ratios = config.mask_probs if config.masking not in ("continuous", "stratified") else SEED_RATIOS
    by_ratio = loss_by_ratio(
        denoiser, x0, scorable_prefix, ratios, mask_id=tokenizer.mask_token_id, seed=1234,
        batch_size=config.batch_size, attention_mask=am,
    )
    bound = nelbo(
        denoiser, x0, scorable_all, mask_id=tokenizer.mask_token_id, num_characters=examples.num_characters,
        seed=1234, batch_size=config.batch_size, attention_mask=am,
    )
    model.train()
    return {
        "step": step,
        "eval_loss_by_ratio": {str(float(t)): v for t, v in by_ratio.items()},
        "nelbo_bits_per_char": bound["nelbo_bits_per_char"],
        "nelbo_bits_per_char_stderr": bound["nelbo_bits_per_char_stderr"],
    }


def train(
    config: TrainConfig,
    *,
    resume: bool = False,
    callbacks: Iterable[Callable[[dict], None]] = (),
    progress: bool = True,
) -> TrainResult:
    """Run (or resume) training; every metrics record is also passed to each callback."""
    from accelerate import Accelerator
    from tqdm.auto import tqdm

    config.validate()
    callbacks = list(callbacks)
    out = Path(config.output_dir)
    bf16 = torch.cuda.is_available() and torch.cuda.is_bf16_supported()
    accelerator = Accelerator(mixed_precision="bf16" if bf16 else "no")
    is_main = accelerator.is_main_process
    if is_main:
        _check_output_dir(out, resume)
    accelerator.wait_for_everyone()

    resume_from = None
    if resume and (list_checkpoints(out) or (out / LATEST_FILE).exists()):
        resume_from = resolve_checkpoint_for_resume(out)

    corpus = load_corpus(config.dataset, config.data_dir)
    train_lines = get_split(corpus, "train")
    causal = config.objective == "causal"
    if resume_from is not None:
        model, tokenizer = (load_causal(resume_from) if causal else load_model(str(resume_from), device="cpu"))
    else:
        _set_step_seed(config.seed, -1)
        model, tokenizer = load_model(
            config.model_name, corpus_lines=train_lines, device="cpu",
            **({"max_length": max(config.max_length, 128), **config.scratch} if config.model_name == "scratch" else {}),
        )
        if causal:  # same tokenizer and size, autoregressive
            model = build_causal_model(tokenizer, model.config, max_length=config.max_length, seed=config.seed,
                                       **config.causal)
    check(tokenizer.mask_token_id is not None, "the tokenizer has no mask token")
    limit = max_sequence_length(model)
    check(limit is None or config.max_length <= limit,
          f"--max-length {config.max_length} is longer than the model's {limit} positions; use --max-length {limit} or less")
    train_examples = make_examples(train_lines, tokenizer, config.max_length, config.example_mode)
    valid_lines = corpus.get("valid") or corpus.get("test") or train_lines[-200:]
    eval_examples = make_examples(valid_lines, tokenizer, config.max_length, config.example_mode).subset(
        config.eval_examples
    )

    steps_per_epoch = max(len(train_examples) // config.batch_size, 1)
    total_steps = config.max_steps or max(int(config.epochs * steps_per_epoch), 1)
    if config.lr_over_time:
        total_steps = math.inf  # the clock ends the run
    collator = MaskingCollator(
        tokenizer, config.mask_probs, mode=config.masking, prefix_length=config.prefix_length, seed=config.seed
    )

    head_init = "random"  # recorded below: what was really done (GPT-2's head has no bias and no transform)
    if resume_from is None and config.head_init in ("unigram", "identity"):
        if init_output_bias(model, train_examples, tokenizer, good_turing=config.head_vocab == "train"):
            head_init = "unigram"
        if config.head_init == "identity" and init_head_transform(model):
            head_init = "identity" if head_init == "unigram" else "identity transform"
    if config.dropout is not None:  # after a resume too: the checkpoint's config may predate the option
        set_dropout(model, config.dropout)
    if not causal and (config.freeze_embeddings or config.freeze_layers):  # the causal baseline starts from scratch
        freeze_bottom(model, config.freeze_embeddings, config.freeze_layers)
    model.train()
    groups = param_groups(model, config.weight_decay, config.head_lr_scale)
    # fused AdamW (CUDA, and CPU since torch 2.4): one kernel instead of a loop over tensors
    optimizer = torch.optim.AdamW(groups, lr=config.learning_rate, fused=True)
    vocab_ids = None  # the training softmax's columns: every token, or those the training text holds
    if not causal and config.head_vocab == "train":
        vocab_ids = torch.unique(content_ids(train_examples, tokenizer))
    loss_module = CausalLoss(model) if causal else MaskedDiffusionLoss(model, config.loss_weighting, vocab_ids)
    restricted = getattr(loss_module, "vocab_ids", None)  # registered only where the head could be split
    head_vocab = None if restricted is None else len(restricted)

    start_step, resumed_s = 0, 0.0
    if resume_from is not None:
        try:
            state = torch.load(resume_from / STATE_FILE, weights_only=True)  # tensors only: never runs code
        except Exception as exc:
            raise UserError(
                f"cannot resume from {resume_from / STATE_FILE}: not a plain saved state ({type(exc).__name__}); "
                f"delete {resume_from.name} to resume from an earlier checkpoint"
            ) from None
        try:
            optimizer.load_state_dict(state["optimizer"])
        except ValueError:  # other parameters train now than when the checkpoint was saved
            raise UserError(
                f"cannot resume from {resume_from.name}: it was saved with other trainable parameters; resume with "
                f"the settings it was trained with (--freeze-embeddings, --freeze-layers and --head-lr-scale "
                f"are in {resume_from / CONFIG_FILE})"
            ) from None
        start_step = int(state["step"])
        resumed_s = float(state.get("elapsed_s", 0.0)) if config.lr_over_time else 0.0  # the clock goes on
    loss_module, optimizer = accelerator.prepare(loss_module, optimizer)
    device = accelerator.device
    unwrapped = accelerator.unwrap_model(loss_module).model

    log = MetricsLog(out / METRICS_FILE, start_step if resume_from is not None else None) if is_main else None

    def emit(record: dict) -> None:
        if log is not None:
            log.write(record)
            for cb in callbacks:
                cb(record)

    shown_steps = None if config.lr_over_time else total_steps  # a clock-run has no step count (JSON, progress bar)
    if start_step == 0:
        emit({"step": 0, "event": "start", "max_steps": shown_steps, "config": dataclasses.asdict(config),
              "train_examples": len(train_examples), "eval_examples": len(eval_examples), "head_init": head_init,
              "head_vocab": head_vocab,  # columns of the training softmax; None: the whole vocabulary
              "parameters": sum(p.numel() for p in unwrapped.parameters())})
    elif resume_from is not None:
        emit({"step": start_step, "event": "resume", "max_steps": shown_steps, "from": resume_from.name})

    def save(step: int) -> Path | None:
        accelerator.wait_for_everyone()
        if not is_main:
            return None
        state = {"optimizer": optimizer.state_dict(), "step": step, "elapsed_s": time.perf_counter() - train_start}
        path = save_model(unwrapped, tokenizer, out / f"checkpoint-{step}",
                          extra={STATE_FILE: state, CONFIG_FILE: dataclasses.asdict(config)})
        _atomic_write_text(out / LATEST_FILE, path.name + "\n")
        if config.save_total_limit:
            for old in list_checkpoints(out)[: -config.save_total_limit]:
                shutil.rmtree(old, ignore_errors=True)
        return path

    world, rank = accelerator.num_processes, accelerator.process_index
    micro = config.batch_size // config.grad_accum
    check(micro % world == 0, f"--batch-size {config.batch_size} must split evenly over {world} processes "
                              f"and {config.grad_accum} accumulation steps")
    per_rank = micro // world
    bar = tqdm(total=shown_steps, initial=start_step, disable=not (progress and is_main), desc="train",
               dynamic_ncols=True)
    last_eval = None
    stopped_early = False
    step = start_step
    window_tokens, window_start, train_start = 0, time.perf_counter(), time.perf_counter() - resumed_s
    pending_s = sorted(s for s in config.save_at_s if s > resumed_s)  # checkpoints by the clock still to come
    running_loss = None
    interrupted = {"flag": False}  # set by the SIGTERM handler, on the main process only
    sigterm = False  # the main process's flag as every process read it at the last check

    def on_sigterm(signum, frame):
        interrupted["flag"] = True

    def main_process_says(*values: int) -> list[int]:
        """The main process's values on every process: clocks and signals differ, the loop length must not."""
        if world == 1:
            return list(values)
        from accelerate.utils import broadcast

        return [int(v) for v in broadcast(torch.tensor(values, dtype=torch.int64, device=device)).tolist()]

    def clock_s() -> float:
        """Seconds of training so far by the main process's clock (the same on every process)."""
        return main_process_says(int((time.perf_counter() - train_start) * 1000))[0] / 1000

    old_handler = signal.signal(signal.SIGTERM, on_sigterm) if is_main else None
    try:
        while step < total_steps:
            epoch, within = divmod(step, steps_per_epoch)
            order = _step_order(len(train_examples), config.seed, epoch)
            batch_ids = order[within * config.batch_size : (within + 1) * config.batch_size]
            _set_step_seed(config.seed, step)
            collator.generator.manual_seed(config.seed * 1_000_003 + step)
            examples = [train_examples[int(i)] for i in batch_ids]
            batch = clean_batch(examples, tokenizer) if causal else collator(examples)
            lr = lr_at(step, config, total_steps, clock_s() if config.lr_over_time else 0.0)
            for group in optimizer.param_groups:
                group["lr"] = lr * group.get("lr_scale", 1.0)
            step_loss = 0.0
            for a in range(config.grad_accum):
                start = a * micro + rank * per_rank  # this process's rows of this micro-batch
                part = {k: v[start : start + per_rank] for k, v in batch.items()}
                window_tokens += int(part["attention_mask"].sum()) * world  # counted on the host: no GPU sync
                part = {k: v.to(device, non_blocking=True) for k, v in part.items()}
                with autocast(device):
                    if causal:
                        loss = loss_module(part["input_ids"], part["attention_mask"], part["scorable"])
                    else:
                        loss = loss_module(part["input_ids"], part["attention_mask"], part["labels"], part["t"],
                                           part["scorable"])
                loss = loss / config.grad_accum
                if a < config.grad_accum - 1:
                    with accelerator.no_sync(loss_module):
                        accelerator.backward(loss)
                else:
                    accelerator.backward(loss)
                step_loss += loss.item()
            if not math.isfinite(step_loss):
                raise UserError(
                    f"the loss became {step_loss} at step {step + 1}; lower --learning-rate or resume from "
                    f"the last checkpoint ({(out / LATEST_FILE).read_text().strip() if (out / LATEST_FILE).exists() else 'none yet'})"
                )
            accelerator.clip_grad_norm_(loss_module.parameters(), config.max_grad_norm)
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            step += 1
            running_loss = step_loss if running_loss is None else 0.9 * running_loss + 0.1 * step_loss
            bar.update(1)
            bar.set_postfix(loss=f"{running_loss:.3f}")
            due = []
            if config.lr_over_time:
                now_s = clock_s()
                if now_s >= config.time_budget_s:
                    total_steps = step  # the schedule has run out of time: this was the last step
                due = [s for s in pending_s if now_s >= s]
                pending_s = [s for s in pending_s if now_s < s]

            if step % config.log_steps == 0 or step == total_steps:
                now = time.perf_counter()
                emit({"step": step, "loss": step_loss, "lr": lr,
                      "tokens_per_s": window_tokens / max(now - window_start, 1e-9),
                      "epoch": step / steps_per_epoch, "elapsed_s": now - train_start})
                window_tokens, window_start = 0, now
            if step % config.eval_steps == 0 or step == total_steps:
                if is_main:
                    last_eval = evaluate_model(unwrapped, tokenizer, eval_examples, config, step)
                    emit(last_eval)
                window_start = time.perf_counter()
            if (step % config.save_steps == 0 or step in config.save_at or due) and step < total_steps:
                path = save(step)
                if due and path is not None:
                    emit({"step": step, "event": "checkpoint", "at_s": due, "checkpoint": path.name,
                          "elapsed_s": time.perf_counter() - train_start})
            over = (not config.lr_over_time and config.time_budget_s is not None
                    and time.perf_counter() - train_start > config.time_budget_s)
            over, sigterm = main_process_says(over, interrupted["flag"])  # the handler's flag is never overwritten
            if (sigterm or over) and step < total_steps:  # after the last step: a normal end
                stopped_early = True
                break
    except torch.cuda.OutOfMemoryError:
        bar.close()
        raise UserError(out_of_memory_advice(config)) from None
    except KeyboardInterrupt:
        bar.close()
        if step > start_step:
            path = save(step)
            if path is not None:
                emit({"step": step, "event": "interrupted", "checkpoint": path.name})
        raise
    finally:
        bar.close()
        if old_handler is not None:
            signal.signal(signal.SIGTERM, old_handler)

    if stopped_early:
        save(step)
        emit({"step": step, "event": "stopped", "reason": "SIGTERM" if sigterm else "time budget"})
        if sigterm:
            return TrainResult(out, step, None, last_eval, stopped_early=True)
        if is_main and (last_eval is None or last_eval["step"] != step):  # a budget stop is a normal end
            last_eval = evaluate_model(unwrapped, tokenizer, eval_examples, config, step)
            emit(last_eval)
    final = None
    accelerator.wait_for_everyone()
    if is_main:
        final = save_model(unwrapped, tokenizer, out / "final-model",
                           extra={CONFIG_FILE: dataclasses.asdict(config)})
        emit({"step": step, "event": "end", "final_model": "final-model"})
    return TrainResult(out, step, final, last_eval, stopped_early)


def load_or_train(run_dir: str | Path, preset_name: str = "smoke", **overrides):
    """(model, tokenizer) of ``run_dir``'s final model, in eval mode; trains ``preset_name`` there first if it has none.

    The notebooks use it to open the course model that notebook 02 trained, or a
    tiny `smoke` model (seconds) when that notebook has not run. A run directory
    without a final model (an interrupted run) is replaced by a fresh one.
    """
    from tdlib.model import load_checkpoint

    run_dir = Path(run_dir)
    if not (run_dir / "final-model").is_dir():
        shutil.rmtree(run_dir, ignore_errors=True)
        train(preset(preset_name, output_dir=str(run_dir), **overrides), progress=False)
    return load_checkpoint(run_dir / "final-model")


def out_of_memory_advice(config: TrainConfig) -> str:
    """What to try after the GPU ran out of memory: smaller micro-batches, same effective batch."""
    micro = config.batch_size // config.grad_accum
    accum = next((a for a in range(config.grad_accum + 1, config.batch_size + 1) if config.batch_size % a == 0), None)
    if accum is None:
        return f"out of GPU memory even at 1 example per micro-batch; lower --max-length (now {config.max_length})"
    return (f"out of GPU memory at {micro} examples per micro-batch; keep the batch with --grad-accum {accum} "
            f"({config.batch_size // accum} examples at a time) or try --batch-size {max(config.batch_size // 2, 1)}, "
            "then --resume")


def resolve_checkpoint_for_resume(run_dir: Path) -> Path:
    """The newest complete checkpoint with a resume state (a damaged newest one is skipped)."""
    from tdlib.model import validate_model_dir

    candidates = list(reversed(list_checkpoints(run_dir)))
    named = (run_dir / LATEST_FILE).read_text().strip() if (run_dir / LATEST_FILE).exists() else None
    if named and (run_dir / named).is_dir():
        candidates = [run_dir / named] + [c for c in candidates if c.name != named]
    for c in candidates:
        if validate_model_dir(c) is None and (c / STATE_FILE).is_file():
            return c
    raise UserError(f"--resume: {run_dir} has no complete checkpoint to resume from; start without --resume")
