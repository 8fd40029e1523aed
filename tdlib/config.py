"""The settings of a training run: `TrainConfig`, whose defaults are the original experiment, and `PRESETS`.

`preset(name, **overrides)` is a checked `TrainConfig` from a preset. Every
field is a flag of ``tdlib train`` or listed by `tdlib.cli.train` as not one.
This module only holds and checks settings; `tdlib.train` runs them.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from tdlib.data import EXAMPLE_MODES
from tdlib.errors import require
from tdlib.heads import HEAD_INITS
from tdlib.masking import MASKING_MODES, ORIGINAL_RATIOS, check_ratios
from tdlib.objectives import HEAD_VOCABS, OBJECTIVES, WEIGHTINGS


@dataclass
class TrainConfig:
    """Every setting of a training run; the defaults are the original experiment (the `seed` preset)."""

    objective: str = "diffusion"  # "diffusion" (masked) or "causal" (the autoregressive baseline)
    model_name: str = "roberta-base"  # "minilm" (packaged), "scratch", a hub id or a local directory
    dataset: str = "wikitext-2"  # see tdlib.data.load_corpus
    data_dir: str | None = None  # a folder holding the dataset's train.txt/valid.txt/test.txt (else the hub)
    corpus_size: int | None = None  # training lines of a generated corpus (the toy language; None: 50,000)
    example_mode: str = "lines"  # "lines" (one example per line, padded) or "packed" (full blocks)
    max_length: int = 128  # tokens per example, special tokens included
    prefix_length: int = 5  # content tokens at the start never masked (the prompt)
    ratios: tuple[float, ...] = ORIGINAL_RATIOS  # mask ratios for the "batch"/"example" masking modes
    masking: str = "batch"  # one t per "batch" or "example" from ratios, "continuous" t ~ U(eps, 1) or "stratified"
    loss_weighting: str = "uniform"  # "uniform" (plain MLM), "elbo" (1/t) or "count" ((n+1)/m)
    epochs: float = 3.0  # passes over the training examples (3 x 23,767 lines / 16 = 4,458 steps)
    max_steps: int | None = None  # overrides epochs when set
    batch_size: int = 16  # examples per optimizer step (over all processes)
    grad_accum: int = 1  # micro-batches per optimizer step
    learning_rate: float = 5e-5  # AdamW's peak learning rate
    warmup_steps: int = 500  # linear warmup to the peak, then linear decay to 0
    weight_decay: float = 0.01  # AdamW's, on weight matrices only
    max_grad_norm: float = 1.0  # gradients are clipped to this norm
    log_steps: int = 10  # a training record every N steps
    eval_steps: int = 500  # an evaluation record every N steps
    eval_examples: int = 512  # validation examples scored at each evaluation
    save_steps: int = 1000  # a checkpoint every N steps
    save_total_limit: int | None = 2  # checkpoints kept (None: all)
    save_at: tuple[int, ...] = ()  # extra steps to checkpoint at (benchmarks score them afterwards)
    output_dir: str = "runs/default"  # the run directory
    seed: int = 42  # the random seed: data order, masks, dropout, new weights
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
        require(self.objective in OBJECTIVES, f"--objective must be one of {', '.join(OBJECTIVES)}")
        require(self.example_mode in EXAMPLE_MODES, f"unknown example mode {self.example_mode!r}")
        require(self.masking in MASKING_MODES, f"unknown masking mode {self.masking!r}")
        require(self.loss_weighting in WEIGHTINGS, f"--loss-weighting must be one of {', '.join(WEIGHTINGS)}")
        check_ratios(self.ratios)
        require(self.max_length >= 8, f"--max-length must be at least 8, got {self.max_length}")
        require(self.corpus_size is None or self.corpus_size >= 1, f"--corpus-size must be >= 1, got {self.corpus_size}")
        require(self.prefix_length >= 0, f"--prefix-length must be >= 0, got {self.prefix_length}")
        require(
            self.prefix_length <= self.max_length - 3,
            f"--prefix-length {self.prefix_length} leaves nothing to learn in --max-length {self.max_length}",
        )
        require(self.batch_size >= 1, f"--batch-size must be >= 1, got {self.batch_size}")
        require(self.grad_accum >= 1 and self.batch_size % self.grad_accum == 0,
              f"--batch-size {self.batch_size} must be a multiple of the gradient accumulation {self.grad_accum}")
        require(self.learning_rate > 0 and math.isfinite(self.learning_rate), "--learning-rate must be > 0")
        require(self.warmup_steps >= 0, "--warmup-steps must be >= 0")
        require(self.epochs > 0, "--epochs must be > 0")
        require(self.max_steps is None or self.max_steps >= 1, "--max-steps must be >= 1")
        require(self.eval_steps >= 1 and self.save_steps >= 1 and self.log_steps >= 1,
              "--eval-steps, --save-steps and log steps must be >= 1")
        require(self.save_total_limit is None or self.save_total_limit >= 1, "--save-total-limit must be >= 1")
        require(0 <= self.seed < 2**32, f"--seed must be in 0 .. {2**32 - 1}, got {self.seed}")
        require(self.time_budget_s is None or self.time_budget_s >= 0, "--time-budget must be >= 0")
        require(not self.lr_over_time or (self.time_budget_s is not None and 0 < self.time_budget_s < math.inf),
              "--lr-over-time needs a finite --time-budget > 0 to decay over")
        require(not self.save_at_s or self.lr_over_time, "checkpoints by seconds (save_at_s) need --lr-over-time")
        require(all(0 < s for s in self.save_at_s), "save_at_s must be positive seconds")
        require(self.head_init in HEAD_INITS, f"--head-init must be one of {', '.join(HEAD_INITS)}")
        require(self.head_lr_scale > 0 and math.isfinite(self.head_lr_scale), "--head-lr-scale must be > 0")
        require(self.head_vocab in HEAD_VOCABS, f"--head-vocab must be one of {', '.join(HEAD_VOCABS)}")
        require(self.dropout is None or 0.0 <= self.dropout < 1.0, f"--dropout must be in [0, 1), got {self.dropout}")
        require(self.freeze_layers >= 0, f"--freeze-layers must be >= 0, got {self.freeze_layers}")
        return self


PRESETS: dict[str, dict] = {  # each preset lists only where it differs from the TrainConfig defaults
    # the original experiment: roberta-base on WikiText-2 raw, 3 epochs = 4,458 steps at batch 16
    "seed": {},
    # offline, about 10 minutes on a 2-core laptop; settings chosen by measurement (docs/cpu_preset.md)
    "cpu": dict(
        model_name="minilm", dataset="pydoc", example_mode="packed", masking="stratified", loss_weighting="elbo",
        max_steps=560, batch_size=4, learning_rate=2e-4, warmup_steps=28, eval_steps=140, save_steps=140,
        head_init="identity", head_lr_scale=10.0, dropout=0.0,  # docs/cpu_preset.md, rounds 4 (embeddings train) and 6
        eval_examples=32, time_budget_s=900.0,  # a slow laptop stops (and saves) at 15 minutes
    ),
    # the toy language (tdlib.toylang) on 2 cores in about 4 minutes: a small convolutional network learns it to
    # within a few per cent of its true entropy and writes grammatical sentences (docs/toy_preset.md)
    "toy": dict(
        model_name="scratch", dataset="toy", max_length=48, prefix_length=0, masking="stratified",
        loss_weighting="count", max_steps=2000, batch_size=64, learning_rate=3e-3, warmup_steps=50, eval_steps=250,
        save_steps=250, eval_examples=256, time_budget_s=300.0,  # a slow laptop stops (and saves) at 5 minutes
        scratch=dict(architecture="conv", hidden_size=128, num_layers=4, kernel_size=5),
    ),
    # with a network, about 15 minutes on 2 cores: the original experiment's data and a pretrained masked LM that keeps
    # its MLM head (head_init "random" leaves a loaded head as it is); 900 s / 4.20 s per step (measured minimum,
    # bench/model_step_cost.py) = 214 steps, 200 of them leave time for two small evaluations
    "laptop": dict(
        model_name="distilbert/distilroberta-base", example_mode="packed", masking="stratified",
        loss_weighting="elbo", max_steps=200, batch_size=4, warmup_steps=20, eval_steps=100, save_steps=100,
        eval_examples=16, dropout=0.0, time_budget_s=1200.0,  # a slow laptop stops (and saves) at 20 minutes
    ),
    # seconds: tests, CI and notebook smoke runs
    "smoke": dict(
        model_name="scratch", dataset="pydoc", example_mode="packed", max_length=32, prefix_length=2, max_steps=20,
        batch_size=8, learning_rate=2e-3, warmup_steps=2, eval_steps=10, save_steps=10, eval_examples=16,
        log_steps=2, scratch=dict(vocab_size=1000, hidden_size=64, num_layers=2, num_heads=2),
    ),
}


def preset(name: str, **overrides) -> TrainConfig:
    """A TrainConfig from a preset, with keyword overrides (None values are ignored)."""
    require(name in PRESETS, f"unknown preset {name!r}: use one of {', '.join(PRESETS)}")
    values = dict(PRESETS[name])
    values.update({k: v for k, v in overrides.items() if v is not None})
    return TrainConfig(**values).validate()
