"""Corpora and training examples.

A corpus is a dict of splits (``train``, ``valid``, ``test``), each a list of
raw text lines, exactly one per row of the source. Three kinds of source:

- ``wikitext-2`` (alias ``wikitext-2-raw-v1``): the original experiment's data set, from local
  ``train.txt``/``valid.txt``/``test.txt`` files with ``data_dir`` or else from
  the Hugging Face hub (``wikitext`` / ``wikitext-2-raw-v1``); ``wikitext-2-v1``
  is the tokenized variant (rare words replaced by ``<unk>``);
- ``pydoc``: the prose of Python's reference manual shipped with CPython
  (``pydoc_data.topics``), split deterministically by topic; always offline.
  Table rules, grammar rules, ``>>>`` sessions and code listings are dropped
  (`prose_lines`), so the text reads as English; ``pydoc-raw`` keeps them;
- ``toy``: the toy language (`tdlib.toylang`), generated: each line is one draw
  of ``num_words`` words from the language's start state, a fixed number of
  lines per split, the same lines on every machine; it comes with its own
  word-level tokenizer (`corpus_tokenizer`);
- a path to a text file or a folder of ``.txt`` files.

Examples are made in one of two ways: ``lines`` (one example per non-empty line,
truncated and padded: the original experiment's way) or ``packed`` (all lines concatenated and
cut into full blocks: no padding, no wasted compute). This module knows nothing
about masking or models beyond calling a tokenizer.
"""

from __future__ import annotations

import re
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from tdlib.errors import UserError, require
from tdlib.pieces import bare

SPLITS = ("train", "valid", "test")  # the splits of every corpus
WIKITEXT = {
    "wikitext-2": "wikitext-2-raw-v1",
    "wikitext-2-raw-v1": "wikitext-2-raw-v1",
    "wikitext-2-v1": "wikitext-2-v1",
}
TOY = "toy"  # the generated corpus of the toy language
PYDOC = {"pydoc": True, "pydoc-raw": False}  # the Python manual: prose only, or every line
TOY_LINES = {"train": 50_000, "valid": 1_000, "test": 1_000}  # default lines per split of the toy corpus
TOY_WORDS = 126  # default words per toy line: one draw fills a canvas of up to 128 tokens
EXAMPLE_MODES = ("lines", "packed")  # one example per line, or full blocks of the joined text
OFFLINE_HINT = (
    "offline alternatives: --preset toy or --preset cpu (no download), --dataset toy or pydoc (built in), "
    "--data-dir DIR holding train.txt/valid.txt/test.txt, or --dataset PATH to your own text"
)


@dataclass
class Examples:
    """Token blocks ready for a collator."""

    input_ids: torch.Tensor  # (N, L) long
    attention_mask: torch.Tensor  # (N, L) long, 0 on padding
    characters: torch.Tensor  # (N,) long: characters of original text each block covers
    num_lines: int  # source lines that contributed

    def __len__(self) -> int:
        return self.input_ids.shape[0]

    @property
    def num_characters(self) -> int:
        """Characters of original text covered by all blocks (for bits per character)."""
        return int(self.characters.sum())

    def subset(self, n: int) -> Examples:
        """The first ``n`` blocks (all of them if there are fewer)."""
        return Examples(self.input_ids[:n], self.attention_mask[:n], self.characters[:n], self.num_lines)

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        return {"input_ids": self.input_ids[i], "attention_mask": self.attention_mask[i]}

    @property
    def num_tokens(self) -> int:
        """Real (non-padding) tokens, special tokens included."""
        return int(self.attention_mask.sum())


def corpus_names() -> list[str]:
    """The built-in corpus names."""
    return [*PYDOC, TOY, *WIKITEXT]


def load_corpus(name_or_path: str = "pydoc", data_dir: str | Path | None = None, *,
                num_lines: int | None = None, num_words: int | None = None) -> dict[str, list[str]]:
    """Load a corpus as ``{split: [line, ...]}``; see the module docstring for names.

    ``num_lines`` (training lines) and ``num_words`` (words per line) size the
    generated toy corpus; other corpora are read as they are.
    """
    name = str(name_or_path)
    require(name == TOY or num_lines is None, "--corpus-size applies to the generated toy corpus only (--dataset toy)")
    if name == TOY:
        return _toy_corpus(num_lines, num_words)
    if name in PYDOC:
        return _pydoc_corpus(prose_only=PYDOC[name])
    if name in WIKITEXT:
        if data_dir is not None:
            folder = Path(data_dir).expanduser()
            if (folder / WIKITEXT[name]).is_dir():  # a parent folder holding both variants
                folder = folder / WIKITEXT[name]
            require(folder.is_dir(), f"--data-dir {folder} is not a folder")
            return _split_files(folder)
        return _wikitext_from_hub(WIKITEXT[name])
    path = Path(name).expanduser()
    if path.is_dir():
        return _split_files(path)
    if path.is_file():
        return _split_lines(_read_lines(path), key=path.name)
    raise UserError(
        f"unknown dataset {name!r}: use one of {', '.join(corpus_names())}, "
        "or a path to a text file or folder"
    )


def _toy_corpus(num_lines: int | None, num_words: int | None) -> dict[str, list[str]]:
    """The toy language's splits: ``num_lines`` training lines of ``num_words`` words (deterministic)."""
    from tdlib.toylang import ToyLanguage

    num_lines = TOY_LINES["train"] if num_lines is None else num_lines
    num_words = TOY_WORDS if num_words is None else num_words
    require(num_lines >= 1, f"--corpus-size must be at least 1 line, got {num_lines}")
    require(num_words >= 1, f"a toy line needs at least 1 word, got {num_words}")
    return ToyLanguage().corpus(num_lines, TOY_LINES["valid"], TOY_LINES["test"], num_words=num_words)


def corpus_tokenizer(name: str, max_length: int = 512):
    """The tokenizer a corpus comes with (the toy language's word-level one), or None: train or load one."""
    if name != TOY:
        return None
    from tdlib.toylang import ToyLanguage

    return ToyLanguage().tokenizer(model_max_length=max_length)


def _read_lines(path: Path) -> list[str]:
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise UserError(f"{path} is not UTF-8 text (byte {exc.start}); convert it first") from None
    except OSError as exc:
        raise UserError(f"cannot read {path}: {exc.strerror}") from None
    return text.split("\n")[:-1] if text.endswith("\n") else text.split("\n")


def _split_files(folder: Path) -> dict[str, list[str]]:
    """A folder with train/valid/test files (``.txt``, ``wiki.*.raw`` or ``wiki.*.tokens``)."""
    splits: dict[str, list[str]] = {}
    for split in SPLITS:
        for candidate in (f"{split}.txt", f"wiki.{split}.raw", f"wiki.{split}.tokens"):
            if (folder / candidate).is_file():
                splits[split] = _read_lines(folder / candidate)
                break
    if splits:
        return splits
    texts = sorted(folder.glob("*.txt"))
    require(bool(texts), f"{folder} holds no train.txt/valid.txt/test.txt and no .txt files")
    lines: list[str] = []
    for p in texts:
        lines.extend(_read_lines(p))
    return _split_lines(lines, key=folder.name)


def _split_lines(lines: list[str], key: str) -> dict[str, list[str]]:
    """Split one text deterministically: contiguous 90 % / 5 % / 5 % by line."""
    require(any(line.strip() for line in lines), f"{key} has no text: it is empty or blank")
    n = len(lines)
    a, b = int(n * 0.9), int(n * 0.95)
    if n < 20:  # too short to split: use everything everywhere, so tiny files still work
        return {split: list(lines) for split in SPLITS}
    return {"train": lines[:a], "valid": lines[a:b], "test": lines[b:]}


def _pydoc_corpus(prose_only: bool = True) -> dict[str, list[str]]:
    """Python's reference manual: each topic goes to a split by a stable hash of its name."""
    from pydoc_data.topics import topics

    splits: dict[str, list[str]] = {s: [] for s in SPLITS}
    for name in sorted(topics):
        bucket = zlib.crc32(name.encode()) % 10
        split = "valid" if bucket == 0 else "test" if bucket == 1 else "train"
        splits[split].extend(prose_lines(topics[name]) if prose_only else topics[name].split("\n"))
    return splits


_RULE = re.compile(r"^\s*([=*\-~^+|].*[=*\-~^+|]|[=*\-~^]+)\s*$")  # table borders and rows, heading underlines
_LIST_ITEM = re.compile(r"^\s*(\d+\.|\*|-)\s")


def prose_lines(text: str) -> list[str]:
    """The prose of a reStructuredText-like manual page, one stripped line per source line.

    A paragraph (lines between blank lines) is dropped when it holds a table or
    heading rule, a grammar rule (``::=``) or a ``>>>`` session, or when it is
    indented under a paragraph that ends with a colon and does not itself read
    as prose (mostly letters and ending with a full stop): a code listing.
    """
    kept: list[str] = []
    previous: list[str] | None = None  # the last paragraph kept
    for block in _paragraphs(text):
        first = block[0].strip()
        if any(_RULE.match(line) for line in block) or first.startswith((">>>", "...")) or "::=" in "".join(block):
            continue
        if previous is not None and _indent(block[0]) > _indent(previous[0]) and previous[-1].rstrip().endswith(":") \
                and not _LIST_ITEM.match(block[0]):
            joined = " ".join(line.strip() for line in block)
            letters = sum(c.isalpha() or c in " .," for c in joined) / len(joined)
            if letters <= 0.85 or not joined.endswith("."):
                continue
        kept.extend(line.strip() for line in block)
        previous = block
    return kept


def _paragraphs(text: str):
    block: list[str] = []
    for line in text.split("\n"):
        if line.strip():
            block.append(line)
        elif block:
            yield block
            block = []
    if block:
        yield block


def _indent(line: str) -> int:
    return len(line) - len(line.lstrip())


def word_token_share(lines: list[str], tokenizer) -> float:
    """Share of a text's tokens that are words or pieces of words (letters only), not symbols or digits."""
    ids = [i for line in lines if line.strip() for i in tokenizer(line, add_special_tokens=False)["input_ids"]]
    require(bool(ids), "no text to count tokens in")
    pieces = tokenizer.convert_ids_to_tokens(ids)
    words = sum(bare(piece).isalpha() for piece in pieces)
    return words / len(pieces)


def _wikitext_from_hub(config: str) -> dict[str, list[str]]:
    try:
        import datasets

        ds = datasets.load_dataset("wikitext", config)
    except Exception as exc:  # any hub/network failure becomes one actionable line
        reason = str(exc).splitlines()[0][:160] if str(exc) else type(exc).__name__
        raise UserError(f"cannot load wikitext/{config} from the Hugging Face hub ({reason}); {OFFLINE_HINT}") from None
    names = {"train": "train", "valid": "validation", "test": "test"}
    return {split: [row.rstrip("\n") for row in ds[hub]["text"]] for split, hub in names.items()}


def get_split(corpus: dict[str, list[str]], split: str) -> list[str]:
    """One split's lines, with a clear error if it is missing or empty."""
    require(split in corpus, f"the corpus has no {split!r} split (it has: {', '.join(corpus)})")
    lines = corpus[split]
    require(any(line.strip() for line in lines), f"the {split!r} split is empty")
    return lines


def boundary_ids(tokenizer) -> tuple[int | None, int | None]:
    """The ids that open and close a sequence: [CLS]/[SEP] for BERT-style, <s>/</s> for RoBERTa-style."""
    start = tokenizer.cls_token_id if tokenizer.cls_token_id is not None else tokenizer.bos_token_id
    end = tokenizer.sep_token_id if tokenizer.sep_token_id is not None else tokenizer.eos_token_id
    return start, end


def _content_tokens(lines: list[str], tokenizer) -> tuple[list[list[int]], list[list[int]]]:
    """Token ids of each non-empty line (no special tokens) and the characters each token covers.

    A token covers the characters from the end of the previous token to its own end,
    so the spaces between words are counted and every character of the line is
    covered exactly once (the last token also takes any trailing characters).
    """
    texts = [line for line in lines if line.strip()]
    enc = tokenizer(texts, add_special_tokens=False, return_offsets_mapping=True, verbose=False)
    ids_per_line, chars_per_line = [], []
    for text, ids, offsets in zip(texts, enc["input_ids"], enc["offset_mapping"], strict=True):
        if not ids:
            continue
        ends = np.array([end for _, end in offsets], dtype=np.int64)
        ends = np.maximum.accumulate(ends)
        ends[-1] = len(text)
        chars = np.diff(np.concatenate([[0], ends]))
        ids_per_line.append(ids)
        chars_per_line.append(chars.tolist())
    return ids_per_line, chars_per_line


def make_examples(lines: list[str], tokenizer, max_length: int = 128, mode: str = "lines") -> Examples:
    """Tokenize lines into (N, max_length) blocks: ``lines`` (pad/truncate) or ``packed`` (full blocks)."""
    require(mode in EXAMPLE_MODES, f"unknown example mode {mode!r}: use one of {', '.join(EXAMPLE_MODES)}")
    require(max_length >= 4, f"max_length must be at least 4, got {max_length}")
    ids_per_line, chars_per_line = _content_tokens(lines, tokenizer)
    require(bool(ids_per_line), "no text to make examples from: every line is empty")
    bos, eos = boundary_ids(tokenizer)
    pad = tokenizer.pad_token_id
    require(None not in (bos, eos, pad), "the tokenizer needs begin, end and padding tokens")
    body = max_length - 2  # room for the begin and end tokens
    if mode == "lines":
        n = len(ids_per_line)
        input_ids = torch.full((n, max_length), pad, dtype=torch.long)
        attention_mask = torch.zeros((n, max_length), dtype=torch.long)
        characters = torch.zeros(n, dtype=torch.long)
        for row, (ids, chars) in enumerate(zip(ids_per_line, chars_per_line, strict=True)):
            ids = ids[:body]
            characters[row] = sum(chars[: len(ids)])
            input_ids[row, : len(ids) + 2] = torch.tensor([bos, *ids, eos])
            attention_mask[row, : len(ids) + 2] = 1
        return Examples(input_ids, attention_mask, characters, n)
    # packed: lines joined by a newline (one character, credited to the next line's first token)
    flat_ids = np.fromiter((i for ids in ids_per_line for i in ids), dtype=np.int64)
    flat_chars = np.concatenate([np.asarray(c, dtype=np.int64) for c in chars_per_line])
    starts = np.cumsum([0] + [len(ids) for ids in ids_per_line[:-1]])
    flat_chars[starts[1:]] += 1
    num_blocks = len(flat_ids) // body
    require(num_blocks > 0, f"the text has {len(flat_ids)} tokens, fewer than one block of {body}")
    blocks = torch.from_numpy(flat_ids[: num_blocks * body].reshape(num_blocks, body))
    input_ids = torch.cat(
        [torch.full((num_blocks, 1), bos), blocks, torch.full((num_blocks, 1), eos)], dim=1
    )
    attention_mask = torch.ones_like(input_ids)
    characters = torch.from_numpy(flat_chars[: num_blocks * body].reshape(num_blocks, body).sum(1))
    return Examples(input_ids, attention_mask, characters, len(ids_per_line))
