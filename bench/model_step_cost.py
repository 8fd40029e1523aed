"""Seconds per training step of each candidate model for a preset, at batch 4 x 128 tokens on the CPU.

Every model is built with random weights from its published configuration (the
sizes are written out below; nothing is downloaded), so the figures are the
step cost of the real architecture, not of its pretrained weights. One step is
what `tdlib train` does: the LM head at the masked positions only (half of the
128 positions, the mean of stratified t; `tdlib.heads.masked_logits`),
cross-entropy, backward, gradient clipping and fused AdamW, dropout off (as in
the `cpu` and `laptop` presets). The models take turns, one step each per
round, so load from other jobs on a shared machine falls on all of them alike;
the minimum over the rounds is the figure least disturbed by such load, the
median is printed beside it.

    python bench/model_step_cost.py [--repeats 7] [--threads 2] [--only NAME,NAME]
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
import torch.nn.functional as F

from tdlib.heads import masked_logits, param_groups, set_dropout

BATCH, LENGTH = 4, 128  # examples x tokens per step
MASKED = 0.5  # share of positions masked: the mean of t ~ U(0, 1)


def _bert(**sizes):
    from transformers import BertConfig, BertForMaskedLM

    return BertForMaskedLM(BertConfig(**sizes))


def _roberta(**sizes):
    from transformers import RobertaConfig, RobertaForMaskedLM

    return RobertaForMaskedLM(RobertaConfig(vocab_size=50265, max_position_embeddings=514, type_vocab_size=1,
                                            pad_token_id=1, **sizes))


def _distilbert():
    from transformers import DistilBertConfig, DistilBertForMaskedLM

    return DistilBertForMaskedLM(DistilBertConfig(vocab_size=30522, dim=768, n_layers=6, n_heads=12, hidden_dim=3072))


def _albert():
    from transformers import AlbertConfig, AlbertForMaskedLM

    return AlbertForMaskedLM(AlbertConfig(vocab_size=30000, embedding_size=128, hidden_size=768, num_hidden_layers=12,
                                          num_attention_heads=12, intermediate_size=3072))


def _electra_small_generator():
    from transformers import ElectraConfig, ElectraForMaskedLM

    return ElectraForMaskedLM(ElectraConfig(vocab_size=30522, embedding_size=128, hidden_size=256, num_hidden_layers=12,
                                            num_attention_heads=4, intermediate_size=1024))


def _toy_conv():
    from tdlib.convnet import ConvMaskedLM, ConvMaskedLMConfig

    # the toy preset's network (tdlib.train.PRESETS["toy"]) over the toy language's 277 tokens
    return ConvMaskedLM(ConvMaskedLMConfig(vocab_size=277, hidden_size=128, num_hidden_layers=4, kernel_size=5,
                                           max_position_embeddings=LENGTH, pad_token_id=0))


BASE = dict(hidden_size=768, num_hidden_layers=12, num_attention_heads=12, intermediate_size=3072)
CANDIDATES = {  # name -> a function building the model with random weights from its published sizes
    "toy-conv": _toy_conv,
    "electra-small-generator": _electra_small_generator,
    "minilm-l6-h384": lambda: _bert(vocab_size=30522, hidden_size=384, num_hidden_layers=6, num_attention_heads=12,
                                    intermediate_size=1536),
    "albert-base-v2": _albert,
    "distilbert-base-uncased": _distilbert,
    "distilroberta-base": lambda: _roberta(**{**BASE, "num_hidden_layers": 6}),
    "bert-base-uncased": lambda: _bert(vocab_size=30522, **BASE),
    "roberta-base": lambda: _roberta(**BASE),
}


class Stepper:
    """One model, its optimizer and a fixed noised batch; ``step()`` trains once and returns the seconds taken."""

    def __init__(self, model: torch.nn.Module, seed: int = 0):
        self.model = model.train()
        set_dropout(model, 0.0)
        self.optimizer = torch.optim.AdamW(param_groups(model, 0.01), lr=1e-4, fused=True)
        g = torch.Generator().manual_seed(seed)
        vocab = model.get_output_embeddings().weight.shape[0]
        self.x0 = torch.randint(5, vocab, (BATCH, LENGTH), generator=g)  # (B, L)
        self.where = torch.rand(BATCH, LENGTH, generator=g) < MASKED  # (B, L) masked positions
        self.xt = self.x0.masked_fill(self.where, 4)  # (B, L)
        self.attention_mask = torch.ones_like(self.x0)  # (B, L)

    def step(self) -> float:
        """Forward (head at masked positions only), backward, clip, AdamW; seconds."""
        start = time.perf_counter()
        logits = masked_logits(self.model, self.xt, self.attention_mask, self.where)  # (M, V)
        loss = F.cross_entropy(logits.float(), self.x0[self.where])
        loss.backward()
        torch.nn.utils.clip_grad_norm_(self.model.parameters(), 1.0)
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        return time.perf_counter() - start


def measure(names: list[str], repeats: int, warmup: int = 3) -> dict[str, dict]:
    """Per model: parameters and the seconds of each timed step, the models taking turns round by round."""
    torch.manual_seed(0)
    steppers = {name: Stepper(CANDIDATES[name]()) for name in names}
    for stepper in steppers.values():
        for _ in range(warmup):
            stepper.step()
    times: dict[str, list[float]] = {name: [] for name in names}
    for round_ in range(repeats):
        for name, stepper in steppers.items():
            times[name].append(stepper.step())
        print(f"round {round_ + 1}/{repeats}: " + ", ".join(f"{n} {t[-1]:.2f}" for n, t in times.items()), flush=True)
    return {name: {"parameters": sum(p.numel() for p in steppers[name].model.parameters()), "seconds": times[name]}
            for name in names}


def main() -> None:
    """Measure, print a table, then one `name: value` line per figure."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=7, help="timed steps per model (after 3 warm-up steps)")
    parser.add_argument("--threads", type=int, default=2, help="torch threads")
    parser.add_argument("--only", default=",".join(CANDIDATES), help="comma-separated candidate names")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    names = [n for n in args.only.split(",") if n]
    unknown = sorted(set(names) - set(CANDIDATES))
    if unknown:
        parser.error(f"unknown candidates {', '.join(unknown)}: use {', '.join(CANDIDATES)}")
    results = measure(names, args.repeats)
    print(f"\nbatch {BATCH} x {LENGTH} tokens, {args.threads} threads, {args.repeats} steps each (after 3 warm-up)")
    print(f"{'model':26s} {'parameters':>12s} {'min s':>7s} {'median s':>9s}")
    for name, r in results.items():
        print(f"{name:26s} {r['parameters'] / 1e6:11.1f}M {min(r['seconds']):7.3f} {statistics.median(r['seconds']):9.3f}")
    for name, r in results.items():
        print(f"{name}_parameters: {r['parameters']}")
        print(f"{name}_s_per_step_median: {statistics.median(r['seconds']):.3f}")
        print(f"{name}_s_per_step_min: {min(r['seconds']):.3f}")


if __name__ == "__main__":
    main()
