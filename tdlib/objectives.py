"""Training objectives: what the loop minimises, how a batch for it is made, how it is scored.

An objective (`Objective`) bundles what the training loop calls without
knowing which objective it runs:

- ``load_network(config, train_lines, resume_from)``: the network it trains
  and its tokenizer (a static method: it comes before the objective);
- ``collate(examples, seed) -> batch``: a dict of tensors, one row per example;
- ``loss(batch) -> scalar``: a `torch.nn.Module` (so ``accelerate`` can wrap
  it) whose ``model`` is the network;
- ``evaluate(examples, step) -> record``: the metrics record of held-out text.

Two objectives (`OBJECTIVES`): ``diffusion``, the masked diffusion loss
(`MaskedDiffusionLoss`, weighted ``uniform``, ``elbo`` or ``count``, optionally
with the softmax over the training text's tokens only), and ``causal``, the
autoregressive baseline (`CausalLoss`: next-token cross-entropy). This module
does not run the loop (`tdlib.train`; it reads the loop's settings through
`Settings`, without importing them) and does not noise tokens itself
(`tdlib.masking`).
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Protocol

import torch
import torch.nn.functional as F

from tdlib.data import Examples, corpus_tokenizer
from tdlib.evaluate import causal_nll, loss_by_ratio, nelbo, next_token_labels
from tdlib.heads import freeze_bottom, head_transform, masked_logits, split_mlm
from tdlib.masking import (
    IGNORE_INDEX,
    ORIGINAL_RATIOS,
    MaskingCollator,
    content_ids,
    protected_positions,
)
from tdlib.model import as_denoiser, build_causal_model, load_causal, load_model

if TYPE_CHECKING:
    from transformers import PreTrainedModel, PreTrainedTokenizerFast

    Network = tuple[PreTrainedModel, PreTrainedTokenizerFast]  # a model and its tokenizer

WEIGHTINGS = ("uniform", "elbo", "count")  # how the masked CE is weighted (see MaskedDiffusionLoss)
HEAD_VOCABS = ("all", "train")  # the training softmax over every token, or the training text's tokens
EVAL_SEED = 1234  # the masks of every evaluation during training


class Settings(Protocol):
    """The training settings an objective reads; a `tdlib.train.TrainConfig` has them (and more)."""

    model_name: str
    scratch: dict
    causal: dict
    dataset: str
    max_length: int
    prefix_length: int
    ratios: tuple[float, ...]
    masking: str
    loss_weighting: str
    head_vocab: str
    freeze_embeddings: bool
    freeze_layers: int
    batch_size: int
    seed: int


class Objective(Protocol):
    """What the training loop needs of an objective, once built over a network."""

    loss: torch.nn.Module  # loss(batch) -> scalar tensor; loss.model is the network
    head_vocab: int | None  # columns of the training softmax (None: the whole vocabulary)

    def collate(self, examples: list[dict[str, torch.Tensor]], seed: int) -> dict[str, torch.Tensor]:
        """A batch of ``examples`` whose randomness depends on ``seed`` only."""

    def evaluate(self, examples: Examples, step: int) -> dict:
        """The metrics record of held-out ``examples`` at ``step``."""


class MaskedDiffusionLoss(torch.nn.Module):
    """Masked cross-entropy with the LM head run only at masked positions.

    ``uniform``: mean CE over masked tokens (the original experiment's MLM loss).
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
    Heads that `tdlib.heads.head_transform` cannot split keep the whole vocabulary.

    ``forward(batch)`` reads the collator's ``input_ids`` (xt), ``attention_mask``,
    ``labels``, ``t`` and ``scorable``.
    """

    def __init__(self, model, weighting: str, vocab_ids: torch.Tensor | None = None):
        super().__init__()
        self.model = model
        self.weighting = weighting
        self.transform = None if vocab_ids is None else head_transform(model)
        if self.transform is not None:
            index = torch.full((model.get_output_embeddings().weight.shape[0],), -1, dtype=torch.long)  # (V,)
            index[vocab_ids] = torch.arange(len(vocab_ids))  # vocabulary id -> column of the restricted softmax
            self.register_buffer("vocab_ids", vocab_ids.clone(), persistent=False)
            self.register_buffer("vocab_index", index, persistent=False)

    def _logits(self, xt, attention_mask, where, labels) -> tuple[torch.Tensor, torch.Tensor]:
        """Logits (M, V or S) at the masked positions and the column of each label in them (M,)."""
        if self.transform is None:
            return masked_logits(self.model, xt, attention_mask, where), labels[where]
        body, _ = split_mlm(self.model)
        hidden = self.transform(body(input_ids=xt, attention_mask=attention_mask)[0][where])  # (M, H)
        out = self.model.get_output_embeddings()
        bias = None if out.bias is None else out.bias[self.vocab_ids]  # (S,)
        return F.linear(hidden, out.weight[self.vocab_ids], bias), self.vocab_index[labels[where]]  # (M, S), (M,)

    def forward(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """The weighted masked cross-entropy of one noised batch."""
        labels, scorable = batch["labels"], batch["scorable"]  # (B, L), (B, L)
        where = labels != IGNORE_INDEX  # (B, L) masked positions
        logits, targets = self._logits(batch["input_ids"], batch["attention_mask"], where, labels)  # (M, V or S)
        ce = F.cross_entropy(logits.float(), targets, reduction="none")  # (M,)
        if self.weighting == "uniform":
            return ce.sum() / where.sum().clamp(min=1)
        if self.weighting == "count":  # (n + 1) / m per example: unbiased for the NELBO, lower variance
            n, m = scorable.sum(1), where.sum(1)  # (B,)
            weight = ((n + 1) / m.clamp(min=1))[:, None].expand_as(labels)[where]  # (M,)
        else:  # weight 1/t turns the masked CE into an ELBO (per scorable token)
            weight = 1.0 / batch["t"][:, None].expand_as(labels)[where]  # (M,)
        return (ce * weight).sum() / scorable.sum().clamp(min=1)


class CausalLoss(torch.nn.Module):
    """Mean next-token cross-entropy over scorable tokens (content, not special or padding).

    ``forward(batch)`` reads the clean ``input_ids`` (x0), ``attention_mask`` and ``scorable``.
    """

    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """-1/N sum_i log p(x_i | x_<i) over the batch's scorable tokens."""
        x0 = batch["input_ids"]  # (B, L)
        logits = self.model(input_ids=x0, attention_mask=batch["attention_mask"]).logits[:, :-1]  # (B, L-1, V)
        labels = next_token_labels(x0, batch["scorable"])  # (B, L-1)
        return F.cross_entropy(logits.reshape(-1, logits.shape[-1]).float(), labels.reshape(-1))


def load_masked_lm(config: Settings, train_lines: list[str]) -> Network:
    """The masked LM ``config.model_name`` names, on the CPU, and its tokenizer."""
    scratch = {}
    if config.model_name == "scratch":  # the corpus's own tokenizer (the toy language's), else a new BPE
        length = max(config.max_length, 128)
        scratch = {"max_length": length, "tokenizer": corpus_tokenizer(config.dataset, length), **config.scratch}
    return load_model(config.model_name, corpus_lines=train_lines, device="cpu", **scratch)


class MaskedDiffusion:
    """The masked diffusion objective: the collator noises each batch, `MaskedDiffusionLoss` scores it.

    Training can freeze the bottom of a pretrained network and restrict the
    softmax to the training text's tokens (``head_vocab="train"``).
    """

    def __init__(self, model, tokenizer, config: Settings, train_examples: Examples):
        if config.freeze_embeddings or config.freeze_layers:
            freeze_bottom(model, config.freeze_embeddings, config.freeze_layers)
        vocab_ids = torch.unique(content_ids(train_examples, tokenizer)) if config.head_vocab == "train" else None
        self.loss = MaskedDiffusionLoss(model, config.loss_weighting, vocab_ids)
        restricted = getattr(self.loss, "vocab_ids", None)  # registered only where the head could be split
        self.head_vocab = None if restricted is None else len(restricted)  # None: the whole vocabulary
        self.collator = MaskingCollator(tokenizer, config.ratios, mode=config.masking,
                                        prefix_length=config.prefix_length, seed=config.seed)
        self.tokenizer, self.config = tokenizer, config

    @staticmethod
    def load_network(config: Settings, train_lines: list[str], resume_from: Path | None) -> Network:
        """(model, tokenizer): the checkpoint's to resume, else the masked LM the config names."""
        if resume_from is not None:
            return load_model(str(resume_from), device="cpu")
        return load_masked_lm(config, train_lines)

    def collate(self, examples: list[dict[str, torch.Tensor]], seed: int) -> dict[str, torch.Tensor]:
        """A noised batch whose masks depend on ``seed`` only."""
        self.collator.generator.manual_seed(seed)
        return self.collator(examples)

    def evaluate(self, examples: Examples, step: int) -> dict:
        """The evaluation record: loss per ratio on fixed masks and the NELBO in bits per char."""
        model, config, mask_id = self.loss.model, self.config, self.tokenizer.mask_token_id
        denoiser = as_denoiser(model, masked_only=True)
        x0, am = examples.input_ids, examples.attention_mask  # (N, L)
        scorable_prefix = ~protected_positions(x0, self.tokenizer, am, config.prefix_length)  # (N, L)
        scorable_all = ~protected_positions(x0, self.tokenizer, am, 0)  # (N, L)
        ratios = config.ratios if config.masking not in ("continuous", "stratified") else ORIGINAL_RATIOS
        by_ratio = loss_by_ratio(denoiser, x0, scorable_prefix, ratios, mask_id=mask_id, seed=EVAL_SEED,
                                 batch_size=config.batch_size, attention_mask=am)
        bound = nelbo(denoiser, x0, scorable_all, mask_id=mask_id, num_characters=examples.num_characters,
                      seed=EVAL_SEED, batch_size=config.batch_size, attention_mask=am)
        model.train()
        return {
            "step": step,
            "eval_loss_by_ratio": {str(float(t)): v for t, v in by_ratio.items()},
            "nelbo_bits_per_char": bound["nelbo_bits_per_char"],
            "nelbo_bits_per_char_stderr": bound["nelbo_bits_per_char_stderr"],
        }


class CausalBaseline:
    """The autoregressive baseline: a GPT-2-style model trained on clean batches with `CausalLoss`.

    It has the masked model's tokenizer and about its size, and starts from
    scratch (nothing to freeze); its score is the exact NLL in bits per char.
    """

    head_vocab = None  # its softmax always runs over the whole vocabulary

    def __init__(self, model, tokenizer, config: Settings, train_examples: Examples):
        self.loss = CausalLoss(model)
        self.tokenizer, self.config = tokenizer, config

    @staticmethod
    def load_network(config: Settings, train_lines: list[str], resume_from: Path | None) -> Network:
        """(model, tokenizer): the checkpoint's to resume, else a new GPT-2 shaped like the named masked LM."""
        if resume_from is not None:
            return load_causal(resume_from)
        like, tokenizer = load_masked_lm(config, train_lines)  # same tokenizer and size, autoregressive
        model = build_causal_model(tokenizer, like.config, max_length=config.max_length, seed=config.seed,
                                   **config.causal)
        return model, tokenizer

    def collate(self, examples: list[dict[str, torch.Tensor]], seed: int) -> dict[str, torch.Tensor]:
        """Unmasked examples stacked: input_ids (x0), attention_mask, scorable (``seed`` is not needed)."""
        x0 = torch.stack([e["input_ids"] for e in examples])  # (B, L)
        am = torch.stack([e["attention_mask"] for e in examples])  # (B, L)
        return {"input_ids": x0, "attention_mask": am, "scorable": ~protected_positions(x0, self.tokenizer, am, 0)}

    def evaluate(self, examples: Examples, step: int) -> dict:
        """The evaluation record: the exact NLL in bits per char."""
        model = self.loss.model
        x0, am = examples.input_ids, examples.attention_mask  # (N, L)
        scored = causal_nll(model, x0, ~protected_positions(x0, self.tokenizer, am, 0), attention_mask=am,
                            num_characters=examples.num_characters, batch_size=self.config.batch_size)
        model.train()
        return {"step": step, "nll_bits_per_char": scored["nll_bits_per_char"],
                "eval_nats_per_token": scored["nats_per_token"]}


OBJECTIVES = {"diffusion": MaskedDiffusion, "causal": CausalBaseline}  # TrainConfig.objective -> objective
