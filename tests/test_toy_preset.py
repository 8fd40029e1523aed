"""The toy language wired into the library: corpus, tokenizer, the convolutional network, the preset,
the command line, and the exact grades (bound against the truth, exact scores in the sampler sweep)."""

from __future__ import annotations

import json
import re

import pytest
import torch

from tdlib.cli import main
from tdlib.data import get_split, load_corpus, make_examples
from tdlib.errors import UserError
from tdlib.toylang import ToyLanguage


@pytest.fixture(scope="module")
def language() -> ToyLanguage:
    return ToyLanguage()


@pytest.fixture(scope="module")
def toy_run(tmp_path_factory) -> str:
    """A toy-preset run of a few steps on a small corpus (seconds)."""
    out = tmp_path_factory.mktemp("toy") / "run"
    code = main(["train", "--preset", "toy", "--max-steps", "4", "--corpus-size", "300", "--eval-steps", "4",
                 "--batch-size", "16", "--output-dir", str(out)])
    assert code == 0
    return str(out)


def test_the_toy_corpus_is_generated_the_same_every_time(language):
    first = load_corpus("toy", num_lines=20, num_words=12)
    assert load_corpus("toy", num_lines=20, num_words=12) == first
    assert [len(first[s]) for s in ("train", "valid", "test")] == [20, 1000, 1000]
    assert all(len(line.split()) == 12 for line in first["train"])
    assert not set(first["train"]) & set(first["valid"])
    assert language.grammatical_share(first["train"])["share"] == 1.0


@pytest.mark.parametrize("overrides, message", [
    (dict(num_lines=0), "--corpus-size must be at least 1"),
    (dict(num_words=0), "at least 1 word"),
])
def test_a_bad_toy_corpus_size_is_a_user_error(overrides, message):
    with pytest.raises(UserError, match=message):
        load_corpus("toy", **overrides)


def test_corpus_size_applies_to_the_toy_corpus_only():
    with pytest.raises(UserError, match="toy corpus only"):
        load_corpus("pydoc", num_lines=10)


def test_the_convolutional_network_saves_and_reloads_as_a_hugging_face_masked_lm(tmp_path, language):
    from transformers import AutoModelForMaskedLM

    from tdlib.model import build_scratch_model

    model, tokenizer = build_scratch_model([], architecture="conv", tokenizer=language.tokenizer(), hidden_size=32,
                                           num_layers=2, max_length=48)
    assert model.get_output_embeddings().weight is model.get_input_embeddings().weight  # tied
    x = torch.randint(5, len(tokenizer), (2, 12))
    model.save_pretrained(tmp_path)
    again = AutoModelForMaskedLM.from_pretrained(tmp_path)
    assert type(again) is type(model)
    assert torch.equal(again(input_ids=x).logits, model(input_ids=x).logits)


def test_an_unknown_scratch_architecture_is_a_user_error(language):
    from tdlib.model import build_scratch_model

    with pytest.raises(UserError, match="unknown scratch architecture 'lstm'"):
        build_scratch_model([], architecture="lstm", tokenizer=language.tokenizer())


def test_the_convolutional_network_ignores_padding(language):
    from tdlib.convnet import ConvMaskedLM, ConvMaskedLMConfig

    torch.manual_seed(0)
    model = ConvMaskedLM(ConvMaskedLMConfig(vocab_size=language.hmm.vocab_size, hidden_size=16, num_hidden_layers=2))
    x = torch.randint(5, 50, (1, 10))
    padded = torch.cat([x, torch.zeros(1, 6, dtype=torch.long)], dim=1)
    am = torch.cat([torch.ones(1, 10), torch.zeros(1, 6)], dim=1).long()
    other = torch.cat([x, torch.randint(5, 50, (1, 6))], dim=1)  # other tokens under the padding
    a = model(input_ids=padded, attention_mask=am).logits[:, :10]
    b = model(input_ids=other, attention_mask=am).logits[:, :10]
    assert torch.allclose(a, b, atol=1e-6)


def test_the_toy_preset_trains_generates_and_evaluates_from_the_command_line(toy_run, capsys, language):
    capsys.readouterr()
    assert main(["generate", "--checkpoint", toy_run, "--prefix", "the", "--num-samples", "2", "--max-length", "16",
                 "--steps", "7", "--json"]) == 0
    samples = json.loads(capsys.readouterr().out)["samples"]
    assert len(samples) == 2 and all(s.startswith("the ") for s in samples)
    assert all(w in language.vocab for s in samples for w in s.split())  # words of the language, nothing else
    assert main(["evaluate", "--checkpoint", toy_run, "--json", "--max-characters", "3000"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["dataset"] == "toy"
    assert 0 < result["true_bits_per_char"] < result["nelbo_bits_per_char"]  # an untrained model is far off


def test_the_toy_run_saves_the_word_level_tokenizer(toy_run, language):
    from tdlib.model import load_checkpoint

    model, tokenizer = load_checkpoint(f"{toy_run}/final-model")
    assert type(model).__name__ == "ConvMaskedLM"
    assert tokenizer.get_vocab() == language.tokenizer().get_vocab()


def test_the_bound_against_truth_of_the_exact_denoiser_is_one(language):
    from tdlib.evaluate import bound_against_truth

    tokenizer = language.tokenizer()
    lines = get_split(load_corpus("toy", num_lines=1, num_words=14), "valid")[:150]
    examples = make_examples(lines, tokenizer, 16, "lines")
    graded = bound_against_truth(language, language, examples, mask_id=tokenizer.mask_token_id)
    assert graded["true_bits_per_char"] == pytest.approx(language.nll(examples.input_ids,
                                                                      examples.num_characters)["bits_per_char"])
    assert abs(graded["ratio"] - 1) < 4 * graded["nelbo_bits_per_char_stderr"] / graded["true_bits_per_char"]


def test_the_sweep_scores_samples_exactly_with_the_language(language):
    from tdlib.sweep import quality_vs_steps

    tokenizer = language.tokenizer()
    rows = quality_vs_steps(language, tokenizer, steps=(14, 2), strategies=("random",), schedules=("linear",),
                            num_samples=40, max_length=16, sampling="nucleus", top_p=1.0, language=language)
    by_steps = {r["steps"]: r for r in rows}
    assert by_steps[14]["grammatical_share"] == 1.0  # one token per step with the exact denoiser: exact
    assert by_steps[14]["possible_share"] == 1.0
    assert by_steps[2]["grammatical_share"] < 0.9  # seven tokens at a time, drawn independently: not exact
    assert by_steps[14]["true_nll_per_token"] > 0


def test_text_scores_separate_possible_from_impossible_text(language):
    scores = language.score(["the fox runs .", "the foxes runs ."])
    assert scores["grammatical_share"] == 0.5
    assert scores["possible_share"] == 0.5
    logp, words = language.text_log_probs(["the fox runs ."])
    assert scores["true_nll_per_token"] == pytest.approx(float(-logp[0] / words[0]))
    assert all(v != v for v in language.score([]).values())  # no texts: nan scores, not an error
    assert language.score(["the fox [MASK] ."])["possible_share"] == 0.0  # a written mask is not summed out


def test_the_demo_trains_the_toy_preset_and_grades_it_exactly(tmp_path, monkeypatch, capsys):
    from tdlib.cli import demo
    from tdlib.train import PRESETS

    small = dict(PRESETS["toy"], max_steps=3, corpus_size=200, batch_size=16, eval_steps=3, eval_examples=16)
    monkeypatch.setitem(PRESETS, "toy", small)
    monkeypatch.setattr(demo, "SCORED_SAMPLES", 8)
    assert main(["demo", "--output-dir", str(tmp_path / "demo"), "--num-samples", "1", "--quiet"]) == 0
    out = capsys.readouterr().out
    assert "prompt 'the'" in out
    assert "\u25af" in out  # the steps are shown, masks drawn with the one glyph
    assert "the exact answers, on 16 held-out lines" in out
    # two NELBOs of the same lines, each with its masks said, and a line saying why they differ
    assert re.search(r"== NELBO on held-out text: \d\.\d{3} \+- \d\.\d{3} bits/char \(one random mask per sequence\)", out)
    assert f"({demo.GRADING_MASKS} random masks per line)" in out
    assert "took the same lines with one other random mask each" in out
    assert "exact denoiser" in out and "sentences grammatical" in out
    assert "tdlib demo --preset cpu" in out and "tdlib train --preset seed" in out


def test_a_bad_corpus_size_on_the_command_line_is_one_error_line(tmp_path, capsys):
    assert main(["train", "--preset", "toy", "--corpus-size", "0", "--output-dir", str(tmp_path / "x")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: --corpus-size must be >= 1") and err.count("\n") == 1
