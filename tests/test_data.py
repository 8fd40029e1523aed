"""Corpora and example making."""

import pytest
import torch

from tdlib.data import get_split, load_corpus, make_examples
from tdlib.errors import UserError


def test_pydoc_corpus_is_offline_and_deterministic():
    a, b = load_corpus("pydoc"), load_corpus("pydoc")
    assert a == b
    assert set(a) == {"train", "valid", "test"}
    assert all(any(line.strip() for line in lines) for lines in a.values())
    assert len(a["train"]) > 5 * len(a["valid"])


def test_lines_mode_gives_the_seeds_example_count(minilm_tokenizer, shared_data):
    folder = shared_data / "wikitext-2-v1"
    lines = load_corpus("wikitext-2-v1", data_dir=folder)["train"]
    assert len(lines) == 36718  # one line per hub row, empty rows included
    examples = make_examples(lines[:5000], minilm_tokenizer, max_length=128, mode="lines")
    assert len(examples) == sum(1 for line in lines[:5000] if line.strip())


def test_wikitext_parent_folder_resolves_the_variant(shared_data):
    raw = load_corpus("wikitext-2", data_dir=shared_data)
    assert set(raw) == {"valid"} and len(raw["valid"]) == 3760
    train = load_corpus("wikitext-2-v1", data_dir=shared_data)["train"]
    assert sum(1 for line in train if line.strip()) == 23767  # the seed's training examples


def test_lines_mode_pads_and_truncates(bpe_tokenizer):
    lines = ["short", "", "a much longer line " * 40]
    ex = make_examples(lines, bpe_tokenizer, max_length=16, mode="lines")
    assert ex.input_ids.shape == (2, 16)
    assert ex.attention_mask[0].sum() < 16 and ex.attention_mask[1].sum() == 16
    assert ex.input_ids[0, 0] == bpe_tokenizer.bos_token_id
    assert ex.input_ids[1, -1] == bpe_tokenizer.eos_token_id
    assert torch.all(ex.input_ids[ex.attention_mask == 0] == bpe_tokenizer.pad_token_id)
    assert ex.num_characters < len("short") + len(lines[2])


def test_packed_mode_wastes_no_padding(bpe_tokenizer, pydoc_corpus):
    ex = make_examples(pydoc_corpus["valid"], bpe_tokenizer, max_length=64, mode="packed")
    assert len(ex) > 10
    assert torch.all(ex.attention_mask == 1)
    assert not torch.any(ex.input_ids[:, 1:-1] == bpe_tokenizer.pad_token_id)
    total_chars = sum(len(line) for line in pydoc_corpus["valid"] if line.strip())
    assert 0.8 * total_chars < ex.num_characters <= total_chars + len(pydoc_corpus["valid"])


def test_packed_characters_count_every_character_once(bpe_tokenizer):
    lines = ["alpha beta gamma", "", "delta  epsilon", "zeta"]
    n = sum(len(bpe_tokenizer(line, add_special_tokens=False)["input_ids"]) for line in lines)
    ex = make_examples(lines, bpe_tokenizer, max_length=n + 2, mode="packed")  # exactly one block
    assert len(ex) == 1
    # every character of the non-empty lines, plus the newline between consecutive ones
    assert ex.num_characters == len("alpha beta gamma") + 1 + len("delta  epsilon") + 1 + len("zeta")


def test_local_file_and_folder(tmp_path):
    f = tmp_path / "book.txt"
    f.write_text("\n".join(f"line {i} of a book" for i in range(100)) + "\n")
    corpus = load_corpus(str(f))
    assert len(corpus["train"]) == 90 and len(corpus["valid"]) == 5 and len(corpus["test"]) == 5
    (tmp_path / "splits").mkdir()
    (tmp_path / "splits" / "train.txt").write_text("a\nb\n")
    (tmp_path / "splits" / "valid.txt").write_text("c\n")
    assert load_corpus(str(tmp_path / "splits")) == {"train": ["a", "b"], "valid": ["c"]}
    with pytest.raises(UserError, match="no 'test' split"):
        get_split(load_corpus(str(tmp_path / "splits")), "test")


@pytest.mark.parametrize("content", [b"", b"\n\n  \n"])
def test_empty_file_is_refused(tmp_path, content):
    f = tmp_path / "empty.txt"
    f.write_bytes(content)
    with pytest.raises(UserError, match="no text"):
        load_corpus(str(f))


def test_non_utf8_file_is_refused(tmp_path):
    f = tmp_path / "latin1.txt"
    f.write_bytes("caf\xe9\n".encode("latin-1"))
    with pytest.raises(UserError, match="not UTF-8"):
        load_corpus(str(f))


def test_unknown_corpus_is_refused():
    with pytest.raises(UserError, match="unknown dataset"):
        load_corpus("no-such-corpus")


def test_unreachable_hub_names_offline_alternatives(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    with pytest.raises(UserError, match="offline alternatives"):
        load_corpus("wikitext-2")


def test_the_manuals_prose_drops_tables_sessions_and_code_listings():
    from tdlib.data import prose_lines

    page = "\n".join([
        "The statement is used to wrap a block.", "", "The following code:", "", "   with A() as a:",
        "       SUITE", "", "+-----+-----+", "| a   | b   |", "+=====+=====+", "", ">>> 1 + 1", "2", "",
        "   stmt ::= \"with\" item", "", "1. A numbered step", "   that continues.", "", "Note:", "",
        "   The note is prose, indented.",
    ])
    assert prose_lines(page) == ["The statement is used to wrap a block.", "The following code:",
                                 "1. A numbered step", "that continues.", "Note:", "The note is prose, indented."]


def test_the_pydoc_corpus_is_mostly_words_and_the_raw_manual_is_not(minilm_tokenizer):
    from tdlib.data import word_token_share

    tokenizer = minilm_tokenizer
    prose, raw = load_corpus("pydoc")["valid"], load_corpus("pydoc-raw")["valid"]
    assert len(prose) < len(raw)
    assert word_token_share(prose, tokenizer) > word_token_share(raw, tokenizer) + 0.1
    assert not any(line.startswith(("+--", ">>>", "|")) for line in prose)
