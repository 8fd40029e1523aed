"""Bad input to every command: exit 2, one `error:` line, no traceback, nothing touched.

Most cases call `tdlib.cli.main` in-process (fast); `test_real_program_behaves_the_same`
runs a few through `python -m tdlib` to show the real program prints the same.
Every error case hashes the files that existed before (a tiny model directory and
a run directory) and checks they are byte-for-byte unchanged afterwards.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tdlib.cli import main

UNICODE_PROMPTS = {
    "emoji": "Party time 🎉😀 ok",
    "hebrew": "שלום עולם",
    "arabic": "مرحبا بالعالم",
    "cjk": "你好，世界",
    "combining": "café naïve e\u0301",
}


@pytest.fixture(scope="session")
def files(scratch, tmp_path_factory) -> dict[str, str]:
    """Paths the cases refer to: a model dir, a run dir, broken models and data files."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import (
        BertConfig,
        BertForMaskedLM,
        GPT2Config,
        GPT2LMHeadModel,
        PreTrainedTokenizerFast,
    )

    from tdlib.model import save_model

    root = tmp_path_factory.mktemp("bad-inputs")
    model, tokenizer = scratch
    trained = {"training_config.json": {"dataset": "pydoc", "max_length": 32, "example_mode": "packed"}}
    ckpt = save_model(model, tokenizer, root / "model", extra=trained)
    run = root / "run"
    for name in ("checkpoint-1", "checkpoint-2", "final-model"):
        save_model(model, tokenizer, run / name, extra=trained)
    (run / "latest").write_text("checkpoint-2\n")
    (run / "metrics.jsonl").write_text(
        json.dumps({"step": 0, "event": "start", "max_steps": 2}) + "\n"
        + "".join(json.dumps({"step": s, "loss": 5.0 - s, "lr": 1e-3, "tokens_per_s": 10.0}) + "\n" for s in (1, 2))
    )
    broken = {
        "broken_metrics": b'{"step": 0}\nnot json at all\n{"step": 1, "loss": 1.0}\n',
        "latin1_metrics": '{"step": 0, "note": "caf\xe9"}\n'.encode("latin-1"),
        "list_metrics": b"[1, 2]\n",
        "stepless_metrics": b'{"loss": 1.0}\n',
        "text_loss_metrics": b'{"step": 1, "loss": "low"}\n',
    }
    for name, content in broken.items():
        (root / name).mkdir()
        (root / name / "metrics.jsonl").write_bytes(content)
    # a causal LM (not a masked LM), saved the Hugging Face way
    gpt2 = GPT2LMHeadModel(GPT2Config(vocab_size=len(tokenizer), n_layer=1, n_embd=16, n_head=2, n_positions=64))
    gpt2.save_pretrained(root / "gpt2")
    tokenizer.save_pretrained(root / "gpt2")
    # a BERT masked LM whose tokenizer has no mask token
    words = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "the", "cat"]
    word_level = Tokenizer(models.WordLevel({w: i for i, w in enumerate(words)}, unk_token="[UNK]"))
    word_level.pre_tokenizer = pre_tokenizers.Whitespace()
    no_mask = PreTrainedTokenizerFast(tokenizer_object=word_level, pad_token="[PAD]", unk_token="[UNK]",
                                      cls_token="[CLS]", sep_token="[SEP]")
    assert no_mask.mask_token_id is None
    bert = BertForMaskedLM(BertConfig(vocab_size=len(words), hidden_size=16, num_hidden_layers=1,
                                      num_attention_heads=2, intermediate_size=32, max_position_embeddings=64))
    bert.save_pretrained(root / "nomask")
    no_mask.save_pretrained(root / "nomask")
    (root / "latin1.txt").write_bytes("caf\xe9 au lait\n".encode("latin-1") * 30)
    (root / "blank.txt").write_text("\n   \n\n")
    return {
        "ckpt": str(ckpt), "run": str(run), "gpt2": str(root / "gpt2"), "nomask": str(root / "nomask"),
        "latin1": str(root / "latin1.txt"), "blank": str(root / "blank.txt"), "missing": str(root / "missing"),
        **{name: str(root / name) for name in broken}, "root": str(root),
        "new": str(root / "new-run"), "huge": "word " * 20_000,  # 100k characters
    }


def tree_hashes(root: str | Path) -> dict[str, str]:
    """sha256 of every file under root, by relative path."""
    root = Path(root)
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


def call(argv: list[str], capsys) -> tuple[int, str, str]:
    """Run the CLI in-process; returns (exit status, stdout, stderr)."""
    try:
        code = main(argv)
    except SystemExit as exc:  # argparse errors
        code = exc.code
    out, err = capsys.readouterr()
    return code, out, err


def assert_one_error_line(code: int, err: str, expect: str) -> None:
    assert code == 2, err
    assert "Traceback" not in err
    lines = err.splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    assert expect.lower() in lines[0].lower(), lines[0]


GENERATE = [
    ("steps-not-int", ["--steps", "abc"], "invalid int value: 'abc'"),
    ("top-p-0", ["--top-p", "0"], "--top-p must be in (0, 1]"),
    ("top-p-1.5", ["--top-p", "1.5"], "--top-p must be in (0, 1]"),
    ("top-p-nan", ["--top-p", "nan"], "--top-p must be in (0, 1]"),
    ("temperature-0", ["--temperature", "0"], "--temperature must be > 0"),
    ("temperature-inf", ["--temperature", "inf"], "--temperature must be > 0"),
    ("top-k-0", ["--top-k", "0"], "--top-k must be at least 1"),
    ("steps-0", ["--steps", "0"], "--steps must be at least 1"),
    ("num-samples-0", ["--num-samples", "0"], "--num-samples must be at least 1"),
    ("max-length-2", ["--max-length", "2"], "--max-length must be at least 3"),
    ("max-length-past-positions", ["--max-length", "100000"], "exceeds the model's 64 positions"),
    ("prefix-100k-chars", ["--prefix", "{huge}"], "shorten the prefix or raise --max-length"),
    ("prefix-longer-than-sequence", ["--prefix", "one two three four five six seven eight", "--max-length", "8"],
     "leaving no room in --max-length 8"),
    ("unknown-schedule", ["--schedule", "quadratic"], "invalid choice: 'quadratic'"),
    ("seed-overflows-int64", ["--seed", str(2**70)], "out of range"),
    ("animation-suffix", ["--animation", "out.txt"], "must end in .html or .gif"),
    ("missing-checkpoint", ["--checkpoint", "{missing}"], "does not exist"),
    ("causal-lm-checkpoint", ["--checkpoint", "{gpt2}"], "is not a masked language model"),
    ("tokenizer-without-mask", ["--checkpoint", "{nomask}"], "has no mask token"),
]
EVALUATE = [
    ("batch-size-0", ["--batch-size", "0"], "--batch-size must be >= 1"),
    ("samples-0", ["--samples", "0"], "--samples must be >= 1"),
    ("max-length-2", ["--max-length", "2"], "--max-length must be at least 4"),
    ("max-length-past-positions", ["--max-length", "100000"], "exceeds the model's 64 positions"),
    ("max-characters-0", ["--max-characters", "0"], "--max-characters must be >= 1"),
    ("split-unknown", ["--split", "dev"], "invalid choice: 'dev'"),
    ("seed-negative", ["--seed", "-1"], "seed -1 is out of range"),
    ("unknown-dataset", ["--dataset", "wikitext-103"], "unknown dataset 'wikitext-103'"),
    ("non-utf8-dataset", ["--dataset", "{latin1}"], "is not UTF-8 text"),
    ("blank-dataset", ["--dataset", "{blank}"], "has no text"),
    ("missing-checkpoint", ["--checkpoint", "{missing}"], "does not exist"),
    ("causal-lm-checkpoint", ["--checkpoint", "{gpt2}"], "is not a masked language model"),
    ("tokenizer-without-mask", ["--checkpoint", "{nomask}"], "has no mask token"),
]
TRAIN = [
    ("steps-not-a-train-flag", ["--steps", "abc"], "unrecognized arguments: --steps abc"),
    ("max-steps-not-int", ["--max-steps", "abc"], "invalid int value: 'abc'"),
    ("max-steps-0", ["--max-steps", "0"], "--max-steps must be >= 1"),
    ("batch-size-0", ["--batch-size", "0"], "--batch-size must be >= 1"),
    ("grad-accum-not-dividing", ["--batch-size", "8", "--grad-accum", "3"], "must be a multiple"),
    ("mask-probs-out-of-range", ["--mask-probs", "0,1.5"], "outside (0, 1]"),
    ("mask-probs-not-numbers", ["--mask-probs", "half,all"], "half"),
    ("max-length-2", ["--max-length", "2"], "--max-length must be at least 8"),
    ("prefix-longer-than-sequence", ["--prefix-length", "40", "--max-length", "32"], "--prefix-length 40"),
    ("learning-rate-0", ["--learning-rate", "0"], "--learning-rate must be > 0"),
    ("learning-rate-nan", ["--learning-rate", "nan"], "--learning-rate must be > 0"),
    ("epochs-0", ["--epochs", "0"], "--epochs must be > 0"),
    ("seed-too-large", ["--seed", str(10**15)], "out of range"),
    ("unknown-preset", ["--preset", "huge"], "invalid choice: 'huge'"),
    ("unknown-dataset", ["--dataset", "wikitext-103"], "unknown dataset 'wikitext-103'"),
    ("non-utf8-dataset", ["--dataset", "{latin1}"], "is not UTF-8 text"),
    ("missing-model-dir", ["--model-name", "{missing}"], "does not exist"),
    ("causal-lm-model", ["--model-name", "{gpt2}"], "is not a masked language model"),
    ("tokenizer-without-mask", ["--model-name", "{nomask}"], "has no mask token"),
    ("max-length-past-positions", ["--model-name", "{ckpt}", "--max-length", "100",
                                   "--output-dir", "{root}/positions-run"], "longer than the model's 64 positions"),
    ("existing-run-without-resume", ["--output-dir", "{run}"], "pass --resume"),
    ("resume-without-trainer-state", ["--output-dir", "{run}", "--resume"], "no complete checkpoint to resume"),
    ("output-dir-under-a-file", ["--output-dir", "{latin1}/run"], "cannot write to --output-dir"),
]
MONITOR = [
    ("missing-run", ["{missing}"], "does not exist"),
    ("interval-0", ["{run}", "--interval", "0"], "--interval must be > 0"),
    ("interval-not-number", ["{run}", "--interval", "soon"], "invalid float value"),
    ("plot-not-png", ["{run}", "--plot", "curves.pdf"], "needs a .png file name"),
    ("corrupt-metrics", ["{broken_metrics}"], "is not valid JSON"),
    ("non-utf8-metrics", ["{latin1_metrics}"], "not UTF-8 text"),
    ("metrics-not-objects", ["{list_metrics}"], "is not a tdlib metrics record"),
    ("metrics-without-step", ["{stepless_metrics}"], "is not a tdlib metrics record"),
    ("metrics-loss-not-a-number", ["{text_loss_metrics}"], "is not a tdlib metrics record"),
]
DEMO = [
    ("num-samples-0", ["--num-samples", "0"], "--num-samples must be at least 1"),
    ("num-samples-not-int", ["--num-samples", "abc"], "invalid int value: 'abc'"),
    ("steps-0", ["--steps", "0"], "--steps must be at least 1"),
    ("max-length-2", ["--max-length", "2"], "--max-length must be at least 3"),
    ("unknown-preset", ["--preset", "seed"], "invalid choice: 'seed'"),
    ("seed-not-int", ["--seed", "abc"], "invalid seed 'abc'"),
]


def _argv(command: str, args: list[str], files: dict[str, str]) -> list[str]:
    args = [a.format(**files) for a in args]
    if command in ("generate", "evaluate") and "--checkpoint" not in args:
        args = ["--checkpoint", files["ckpt"], *args]
    if command == "generate":
        args += ["--steps", "2"] if "--steps" not in args else []
    if command == "train":
        args = ["--preset", "smoke", "--quiet", *args]
        if "--output-dir" not in args:
            args += ["--output-dir", files["new"]]
    if command == "demo":
        args = ["--preset", "smoke", "--quiet", "--output-dir", files["new"], *args]
    return [command, *args]


CASES = [pytest.param(command, args, expect, id=f"{command}-{name}")
         for command, table in (("generate", GENERATE), ("evaluate", EVALUATE), ("train", TRAIN),
                                ("monitor", MONITOR), ("demo", DEMO))
         for name, args, expect in table]


@pytest.mark.parametrize("command, args, expect", CASES)
def test_bad_input_is_one_error_line_and_touches_nothing(files, capsys, command, args, expect):
    before = tree_hashes(files["root"])
    code, out, err = call(_argv(command, args, files), capsys)
    assert_one_error_line(code, err, expect)
    assert tree_hashes(files["root"]) == before  # no file that existed was changed, added or removed
    assert not (Path(files["new"]) / "metrics.jsonl").exists()  # and no training started


def test_empty_prefix_works(files, capsys):
    code, out, err = call(["generate", "--checkpoint", files["ckpt"], "--prefix", "", "--max-length", "12",
                           "--steps", "3", "--json"], capsys)
    assert code == 0, err
    assert len(json.loads(out)["samples"]) == 1


@pytest.mark.parametrize("prompt", UNICODE_PROMPTS.values(), ids=UNICODE_PROMPTS.keys())
def test_unicode_prompt_comes_back_unchanged(files, capsys, prompt):
    code, out, err = call(["generate", "--checkpoint", files["ckpt"], "--prefix", prompt, "--max-length", "64",
                           "--steps", "2", "--num-samples", "2", "--json"], capsys)
    assert code == 0, err
    samples = json.loads(out)["samples"]
    assert len(samples) == 2 and all(s.startswith(prompt) for s in samples), samples


def test_damaged_final_model_falls_back_with_a_warning(files, tmp_path, capsys, caplog):
    import shutil

    run = tmp_path / "run"
    shutil.copytree(files["run"], run)
    (run / "final-model" / "model.safetensors").write_bytes(b"")
    code, out, err = call(["generate", "--checkpoint", str(run), "--max-length", "10", "--steps", "2"], capsys)
    assert code == 0, err
    assert "final-model/model.safetensors is truncated or corrupt" in caplog.text
    assert "using " + str(run / "checkpoint-2") in caplog.text


def test_real_program_behaves_the_same(files):
    """A few cases through `python -m tdlib`, started together to save time."""
    cases = [("generate", GENERATE[2]), ("evaluate", EVALUATE[-1]), ("train", TRAIN[5])]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    procs = [(subprocess.Popen([sys.executable, "-m", "tdlib", *_argv(command, args, files)], env=env,
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True), expect)
             for command, (_, args, expect) in cases]
    for proc, expect in procs:
        out, err = proc.communicate(timeout=300)
        assert_one_error_line(proc.returncode, err, expect)
