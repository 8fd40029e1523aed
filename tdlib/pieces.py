"""Tokenizer pieces: how each tokenizer marks where a word starts, in one place.

Three conventions meet in this course:

- WordPiece (BERT, MiniLM): a piece that continues a word starts with ``##``;
- byte-level BPE (GPT-2, RoBERTa): a piece that starts a word starts with ``Ġ`` (a
  space), a newline is ``Ċ``, and every byte is written as a printable stand-in;
- SentencePiece: a piece that starts a word starts with ``▁``.

From these rules: `continuation_ids` (the ids the sampler bans where a new word must
start), `display_pieces` and `display_words` (the text a reader sees, for
`tdlib.render`), `candidate_label` (a piece with its marks made visible) and `bare`
(a piece without its marks, for `tdlib.data.word_token_share`). No model, no screen.
"""

from __future__ import annotations

from collections.abc import Collection, Sequence
from dataclasses import dataclass
from functools import lru_cache
from typing import TYPE_CHECKING

from tdlib.errors import require

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase

CONTINUES = "##"  # WordPiece: this piece continues the word before it
BPE_SPACE = "Ġ"  # byte-level BPE: this piece starts a word (a space before it)
BPE_NEWLINE = "Ċ"  # byte-level BPE: a newline
SENTENCEPIECE_SPACE = "▁"  # SentencePiece: this piece starts a word
HIDDEN_TOKENS = frozenset({"[CLS]", "[SEP]", "[PAD]", "<s>", "</s>", "<pad>"})
MASK_TOKENS = frozenset({"[MASK]", "<mask>"})
# WordPiece splits punctuation off; glue it back on: closers to the word before, openers to
# the word after, an apostrophe to both ("isn ' t" -> "isn't")
CLOSERS = frozenset(".,!?;:)]}%>")
OPENERS = frozenset("([{<$")
APOSTROPHES = frozenset({"'", "\u2019"})


def continuation_ids(tokenizer: PreTrainedTokenizerBase) -> list[int]:
    """Ids of pieces that continue a word ("##ing" in WordPiece, no leading "Ġ" in BPE)."""
    vocab = tokenizer.get_vocab()
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is not None and type(backend.model).__name__ == "WordPiece":
        prefix = backend.model.continuing_subword_prefix
        return sorted(i for t, i in vocab.items() if t.startswith(prefix))
    counts = {m: sum(t.startswith(m) for t in vocab) for m in (BPE_SPACE, SENTENCEPIECE_SPACE)}
    marker = max(counts, key=counts.get)
    if counts[marker] == 0:
        return sorted(i for t, i in vocab.items() if t.startswith(CONTINUES))
    special = set(tokenizer.all_special_ids)
    return sorted(i for t, i in vocab.items() if not t.startswith(marker) and i not in special)


def bare(piece: str) -> str:
    """The piece without its word marks ("##", "Ġ", "▁")."""
    return piece.lstrip("#" + BPE_SPACE + SENTENCEPIECE_SPACE)


def candidate_label(piece: str) -> str:
    """The piece with its byte-level BPE marks made visible: ␣ word start, ↵ newline."""
    return piece.replace(BPE_SPACE, "\u2423").replace(BPE_NEWLINE, "\u21b5")


def tokenizer_style(tokenizer: PreTrainedTokenizerBase) -> str:
    """'bpe' for a byte-level BPE tokenizer, 'wordpiece' for WordPiece, else 'auto'."""
    backend = getattr(tokenizer, "backend_tokenizer", None)
    decoder = repr(getattr(backend, "decoder", None))
    if "ByteLevel" in decoder:
        return "bpe"
    if "WordPiece" in decoder:
        return "wordpiece"
    return "auto"


def _guess_style(pieces: Sequence[str]) -> str:
    return "bpe" if any(p.startswith((BPE_SPACE, BPE_NEWLINE)) for p in pieces) else "wordpiece"


@lru_cache(maxsize=1)
def _byte_decoder() -> dict[str, int]:
    """GPT-2's byte-level alphabet, reversed: printable stand-in character -> byte."""
    printable = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1))
    printable += list(range(ord("®"), ord("ÿ") + 1))
    codes = printable[:]
    extra = 0
    for b in range(256):
        if b not in printable:
            printable.append(b)
            codes.append(256 + extra)
            extra += 1
    return {chr(c): b for b, c in zip(printable, codes, strict=True)}


def _bpe_text(piece: str) -> str:
    decoder = _byte_decoder()
    if not all(ch in decoder for ch in piece):
        return piece
    return bytes(decoder[ch] for ch in piece).decode("utf-8", errors="replace")


@dataclass(frozen=True)
class Piece:
    """One token as displayed: its text, whether it glues onto the previous token, hidden or not."""

    text: str
    joins: bool
    hidden: bool


def display_pieces(
    pieces: Sequence[str], special_tokens: Collection[str] = HIDDEN_TOKENS, style: str = "auto"
) -> list[Piece]:
    """Turn tokenizer pieces into display pieces: WordPiece ("##") or byte-level BPE ("Ġ")."""
    require(style in ("auto", "wordpiece", "bpe"), f"unknown token style {style!r}")
    if style == "auto":
        style = _guess_style(pieces)
    shown = []
    glue_next = False
    for piece in pieces:
        if piece in special_tokens:
            shown.append(Piece(piece, joins=False, hidden=True))
        elif piece in MASK_TOKENS:
            shown.append(Piece(piece, joins=False, hidden=False))
        elif style == "bpe":
            text = _bpe_text(piece).replace("\n", "\u21b5")  # ↵ for a newline
            shown.append(Piece(text.lstrip(" "), joins=not text.startswith(" "), hidden=False))
        elif piece.startswith(CONTINUES):
            shown.append(Piece(piece[len(CONTINUES):], joins=True, hidden=False))
        else:
            joins = glue_next or piece in CLOSERS or piece in APOSTROPHES
            shown.append(Piece(piece, joins=joins, hidden=False))
        glue_next = style == "wordpiece" and (piece in OPENERS or piece in APOSTROPHES)
    return shown


def display_words(
    pieces: Sequence[str], special_tokens: Collection[str] = HIDDEN_TOKENS, style: str = "auto"
) -> list[str]:
    """Join tokenizer pieces into the words a reader sees, dropping special tokens."""
    words: list[str] = []
    for piece in display_pieces(pieces, special_tokens, style):
        if piece.hidden:
            continue
        if piece.joins and words:
            words[-1] += piece.text
        else:
            words.append(piece.text)
    return words


def _special_pieces(tokenizer) -> frozenset[str]:
    mask_id = getattr(tokenizer, "mask_token_id", None)
    ids = [i for i in getattr(tokenizer, "all_special_ids", ()) if i != mask_id]
    return frozenset(tokenizer.convert_ids_to_tokens(ids)) if ids else HIDDEN_TOKENS


def token_pieces(tokenizer: PreTrainedTokenizerBase, ids: Sequence[int]) -> list[Piece]:
    """Display pieces for a row of token ids, special tokens (but not the mask) hidden."""
    pieces = tokenizer.convert_ids_to_tokens([int(i) for i in ids])
    return display_pieces(pieces, _special_pieces(tokenizer), tokenizer_style(tokenizer))
