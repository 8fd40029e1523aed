"""The autoregressive baseline: a GPT-2-style model on the same tokenizer and data.

To say whether a diffusion model is good, compare it with the usual way of
modelling text: predict each token from the ones before it. This module builds
a causal LM of about the same size as the masked model, with the same tokenizer,
gives its training loss (next-token cross-entropy) and scores it by its exact
negative log-likelihood in bits per character, the same unit as the diffusion
model's NELBO bound. The training loop (`tdlib.train`, ``objective="causal"``)
trains it with the same schedule and budget. It is a reference, not a sampler:
the course generates with the masked model only.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from tdlib.data import boundary_ids
from tdlib.masking import IGNORE_INDEX

LN2 = math.log(2.0)


def build_causal_model(tokenizer, like=None, *, max_length: int = 128, seed: int = 0, **sizes):
    """A randomly initialised GPT-2 LM over ``tokenizer``'s vocabulary, sized like config ``like``.

    ``sizes`` (``n_layer``, ``n_embd``, ``n_head``) override what is read from ``like``
    (a masked LM's config: its layers, width and heads).
    """
    from transformers import GPT2Config, GPT2LMHeadModel

    shape = {"n_layer": 6, "n_embd": 384, "n_head": 6}
    if like is not None:
        shape = {
            "n_layer": like.num_hidden_layers,
            "n_embd": like.hidden_size,
            "n_head": like.num_attention_heads,
        }
    shape.update(sizes)
    bos, eos = boundary_ids(tokenizer)
    config = GPT2Config(
        vocab_size=len(tokenizer),
        n_positions=max_length,
        bos_token_id=bos,
        eos_token_id=eos,
        pad_token_id=tokenizer.pad_token_id,
        tie_word_embeddings=True,
        **shape,
    )
    torch.manual_seed(seed)
    return GPT2LMHeadModel(config)


def load_causal(directory):
    """Reload a saved causal baseline and its tokenizer (safetensors only, no remote code)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(str(directory), use_safetensors=True, trust_remote_code=False)
    return model, AutoTokenizer.from_pretrained(str(directory), trust_remote_code=False)


def next_token_labels(x0: torch.Tensor, scorable: torch.Tensor) -> torch.Tensor:
    """Targets for positions 0..L-2: the next token where it is scorable, else -100; shape (B, L-1)."""
    return torch.where(scorable[:, 1:], x0[:, 1:], torch.full_like(x0[:, 1:], IGNORE_INDEX))


class CausalLoss(torch.nn.Module):
    """Mean next-token cross-entropy over scorable tokens (content, not special or padding)."""

    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, x0, attention_mask, scorable):
        logits = self.model(input_ids=x0, attention_mask=attention_mask).logits[:, :-1]  # (B, L-1, V)
        labels = next_token_labels(x0, scorable)  # (B, L-1)
        return F.cross_entropy(logits.reshape(-1, logits.shape[-1]).float(), labels.reshape(-1))


@torch.inference_mode()
def causal_nll(model, x0, scorable, *, num_characters: int, attention_mask=None, batch_size: int = 16) -> dict:
    """Exact -log p(x) of the scorable tokens under a causal LM, in bits per character.

    -log p(x) = sum_i -log p(x_i | x_<i), summed over scorable tokens; divided by
    ln 2 and by the characters of the original text, it is comparable with the
    diffusion model's NELBO in bits per character.
    """
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    total, tokens = 0.0, 0
    for lo in range(0, x0.shape[0], batch_size):
        x = x0[lo : lo + batch_size].to(device)
        am = None if attention_mask is None else attention_mask[lo : lo + batch_size].to(device)
        keep = scorable[lo : lo + batch_size].to(device)
        logits = model(input_ids=x, attention_mask=am).logits[:, :-1].float()  # (B, L-1, V)
        labels = next_token_labels(x, keep)
        ce = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), labels.reshape(-1), reduction="sum")
        total += float(ce)
        tokens += int((labels != IGNORE_INDEX).sum())
    model.train(was_training)
    return {
        "nll_bits_per_char": total / LN2 / num_characters,
        "nats_per_token": total / max(tokens, 1),
        "perplexity": math.exp(total / max(tokens, 1)),
        "tokens": tokens,
        "characters": int(num_characters),
    }
