"""Network surgery on a masked LM: its head, its dropout, its frozen layers, its optimizer groups.

A Hugging Face masked LM is a *body* (embeddings and transformer layers, giving
hidden states (B, L, H)) and a *head* (a transform, then an output layer over
the vocabulary, usually tied to the word embeddings). This module splits the
two, runs the head only where it is needed (`masked_logits`), starts a new head
well (`init_output_bias`, `init_head_transform`: a pretrained body such as
MiniLM comes without an MLM head), and sets what trains and how
(`set_dropout`, `freeze_bottom`, `param_groups`). It does not load or save
models (`tdlib.model`) and does not train (`tdlib.train`).
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from tdlib.errors import require

HEAD_INITS = ("random", "unigram", "identity")
HEAD_MODULES = (  # each family's LM head, the modules applied in turn to the body's hidden states (B, L, H)
    ("lm_head",),  # RoBERTa
    ("cls",),  # BERT, DeBERTa-v2 (its default "legacy" head)
    ("predictions",),  # ALBERT
    ("generator_predictions", "generator_lm_head"),  # ELECTRA (the generator)
    ("vocab_transform", "activation", "vocab_layer_norm", "vocab_projector"),  # DistilBERT
    ("head", "decoder"),  # ModernBERT
)


class _HiddenStates(torch.nn.Module):
    """The body of a network that gives its final hidden states by ``hidden(...)`` (`tdlib.convnet`)."""

    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None) -> tuple[torch.Tensor]:
        return (self.model.hidden(input_ids, attention_mask),)  # (B, L, H)


def split_mlm(model) -> tuple[torch.nn.Module, torch.nn.Module] | None:
    """(body, head) of a masked LM: ``body(...)[0]`` gives hidden states, ``head(h)`` logits.

    The head is found by the module names of `HEAD_MODULES`. Returns None for
    architectures not listed there (DeBERTa-v2's non-legacy head, for one, also
    reads the embeddings); callers then fall back to the full forward pass.
    """
    if callable(getattr(model, "hidden", None)) and hasattr(model, "decoder"):
        return _HiddenStates(model), model.decoder
    names = next((names for names in HEAD_MODULES if all(hasattr(model, n) for n in names)), None)
    if names is None:
        return None
    parts = [getattr(model, n) for n in names]
    return model.base_model, parts[0] if len(parts) == 1 else torch.nn.Sequential(*parts)


def head_transform(model) -> Callable[[torch.Tensor], torch.Tensor] | None:
    """The LM head short of its output layer: hidden states (M, H) -> what the output layer reads.

    ``model.get_output_embeddings()`` applied to the result gives the head's logits.
    BERT's head keeps this part as ``cls.predictions.transform``; RoBERTa's is
    dense -> GELU -> LayerNorm inside ``lm_head``. None for other heads.
    """
    predictions = getattr(getattr(model, "cls", None), "predictions", None)
    if predictions is not None and hasattr(predictions, "transform"):
        return predictions.transform
    head = getattr(model, "lm_head", None)
    if head is not None and all(hasattr(head, n) for n in ("dense", "layer_norm", "decoder")):
        return lambda h: head.layer_norm(torch.nn.functional.gelu(head.dense(h)))
    return None


def masked_logits(model, xt: torch.Tensor, attention_mask: torch.Tensor | None, where: torch.Tensor) -> torch.Tensor:
    """Logits only at positions ``where`` (bool, (B, L)): shape (M, V), M = where.sum().

    The LM head over a 30-50k vocabulary costs as much as the whole body of a
    small model, so computing it only where a loss or a sample is needed saves
    most of that cost.
    """
    parts = split_mlm(model)
    if parts is None:
        return model(input_ids=xt, attention_mask=attention_mask).logits[where]
    body, head = parts
    hidden = body(input_ids=xt, attention_mask=attention_mask)[0]  # (B, L, H)
    return head(hidden[where])  # (M, V)


def init_head(model, how: str, token_ids: torch.Tensor, good_turing: bool = False) -> str:
    """Start a new LM head as ``how`` says (see `HEAD_INITS`); returns what could really be done.

    ``token_ids`` are the training text's tokens (flat), for the unigram bias. The
    answer is "random" when the head has neither an output bias nor a square
    transform (GPT-2's), "identity transform" when it has the transform only.
    """
    done = "random"
    if how in ("unigram", "identity") and init_output_bias(model, token_ids, good_turing=good_turing):
        done = "unigram"
    if how == "identity" and init_head_transform(model):
        done = "identity" if done == "unigram" else "identity transform"
    return done


@torch.no_grad()
def init_output_bias(model, token_ids: torch.Tensor, smoothing: float = 0.5, good_turing: bool = False) -> bool:
    """Set the LM head's output bias to the log unigram frequencies of ``token_ids`` (the training tokens).

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
    raw = torch.bincount(token_ids, minlength=bias.numel())[: bias.numel()].double()  # (V,)
    counts = raw + smoothing  # (V,)
    unseen = raw == 0  # (V,)
    if good_turing and unseen.any():
        # n1 / N: the share of the tokens seen once
        share = max(int((raw == 1).sum()), 1) / raw.sum()
        counts[unseen] *= share * counts[~unseen].sum() / ((1 - share) * counts[unseen].sum())
    # log p = log count - log sum(count)
    log_p = counts.log() - counts.sum().log()  # (V,)
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


def set_dropout(model, p: float) -> int:
    """Set every dropout probability of ``model`` to ``p``, in its modules and its saved config.

    Pretrained checkpoints ship with the dropout of their long pre-training (0.1 for BERT-style
    models); a run of a few hundred steps sees its training text once or a few times, so there is
    little to regularise and the noise only slows learning. Returns the number of dropout modules changed.
    """
    require(0.0 <= p < 1.0, f"--dropout must be in [0, 1), got {p}")
    changed = 0
    for module in model.modules():
        if isinstance(module, torch.nn.Dropout):
            module.p = p
            changed += 1
    for key, value in list(model.config.to_dict().items()):  # hidden_dropout_prob, attn_pdrop, ...
        if ("dropout" in key or key.endswith("pdrop")) and isinstance(value, float):
            setattr(model.config, key, p)
    return changed


def freeze_bottom(model, embeddings: bool = True, layers: int = 0) -> int:
    """Stop training the input embeddings and/or the lowest ``layers`` transformer layers.

    Backpropagation then ends above the frozen part, and its weights need no
    gradient and no optimizer state: a cheaper step. The output layer of a
    masked LM is usually tied to the word embeddings, so freezing the
    embeddings freezes that matrix too; the head's transform and output bias
    still train. Returns the number of parameters frozen.
    """
    base = model.base_model
    blocks = next((m for m in base.modules() if isinstance(m, torch.nn.ModuleList)
                   and len(m) == getattr(model.config, "num_hidden_layers", -1)), None)
    depth = len(blocks) if blocks is not None else 0
    require(0 <= layers <= depth, f"--freeze-layers must be in 0 .. {depth} for this model, got {layers}")
    parts = list(blocks[:layers]) if layers else []
    if embeddings:
        parts.append(model.get_input_embeddings())
        parts += [m for name, m in base.named_children() if "embed" in name]  # BERT: word, position, type, norm
    frozen = {id(p): p for part in parts for p in part.parameters()}
    for p in frozen.values():
        p.requires_grad_(False)
    return sum(p.numel() for p in frozen.values())


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
