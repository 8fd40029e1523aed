"""The train, monitor and demo commands: happy paths and the errors they must turn into one line."""

from __future__ import annotations

import dataclasses
import json
import subprocess
import sys

import pytest
import torch

from tdlib.cli import build_parser, main
from tdlib.errors import UserError
from tdlib.train import TrainConfig, out_of_memory_advice, preset, train


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("cli") / "run"
    assert main(["train", "--preset", "smoke", "--max-steps", "4", "--eval-steps", "2", "--save-steps", "2",
                 "--head-init", "unigram", "--head-lr-scale", "3", "--head-vocab", "train", "--dropout", "0",
                 "--loss-weighting", "count", "--freeze-embeddings", "--freeze-layers", "1", "--output-dir", str(out),
                 "--quiet"]) == 0
    return out


def test_train_cli_writes_a_run(run_dir, capsys):
    assert (run_dir / "final-model" / "model.safetensors").is_file()
    config = json.loads((run_dir / "final-model" / "training_config.json").read_text())
    assert config["max_steps"] == 4 and config["model_name"] == "scratch"
    assert config["head_init"] == "unigram" and config["head_lr_scale"] == 3.0 and config["dropout"] == 0.0
    assert config["loss_weighting"] == "count" and config["freeze_embeddings"] is True and config["freeze_layers"] == 1
    saved = json.loads((run_dir / "final-model" / "config.json").read_text())
    assert saved["hidden_dropout_prob"] == 0.0 and saved["attention_probs_dropout_prob"] == 0.0
    start = json.loads((run_dir / "metrics.jsonl").read_text().splitlines()[0])
    assert start["head_init"] == "unigram"  # applied: the scratch RoBERTa's head has an output bias
    assert config["head_vocab"] == "train" and 0 < start["head_vocab"] < saved["vocab_size"]


def test_monitor_summarises_and_plots(run_dir, tmp_path, capsys):
    png = tmp_path / "curves.png"
    assert main(["monitor", str(run_dir), "--plot", str(png)]) == 0
    out = capsys.readouterr().out
    assert "step 4/4" in out and "finished" in out and "NELBO" in out
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_train_by_the_clock_ignores_the_step_count_and_monitor_shows_the_budget(tmp_path, capsys, ticking_clock):
    from tdlib.cli.monitor import summarize

    ticking_clock(0.1)
    out = tmp_path / "timed"
    assert main(["train", "--preset", "smoke", "--max-steps", "1", "--time-budget", "4", "--lr-over-time",
                 "--output-dir", str(out), "--quiet"]) == 0
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert records[0]["max_steps"] is None and records[0]["config"]["lr_over_time"] is True
    assert records[-1]["event"] == "end" and records[-1]["step"] > 1  # --max-steps 1 did not stop it
    running = [records[0], {"step": 40, "loss": 3.0, "lr": 1e-3, "tokens_per_s": 900.0, "elapsed_s": 1.0}]
    assert "25% of the 0:04 budget  ETA 0:03" in summarize(running)


@pytest.mark.parametrize(
    "argv, fragment",
    [
        (["train", "--preset", "smoke", "--dataset", "no-such-corpus"], "unknown dataset"),
        (["train", "--preset", "smoke", "--mask-probs", "1.0,1.5"], "outside (0, 1]"),
        (["train", "--preset", "smoke", "--mask-probs", "0"], "outside (0, 1]"),
        (["train", "--preset", "smoke", "--prefix-length", "500"], "prefix-length"),
        (["train", "--preset", "smoke", "--batch-size", "abc"], "invalid int value"),
        (["train", "--preset", "nope"], "invalid choice"),
        (["monitor", "/no/such/run"], "does not exist"),
        (["monitor", ".", "--plot", "x.jpg"], ".png"),
    ],
)
def test_bad_input_is_one_error_line_and_status_2(argv, fragment, capsys, tmp_path):
    argv = [a.replace("OUT", str(tmp_path)) for a in argv] + (
        ["--output-dir", str(tmp_path / "r")] if argv[0] == "train" else [])
    with pytest.raises(SystemExit) as exc:
        raise SystemExit(main(argv))
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith("error:") and err.count("\n") == 1 and fragment in err


def test_empty_dataset_file_is_refused(tmp_path, capsys):
    empty = tmp_path / "empty.txt"
    empty.write_text("")
    assert main(["train", "--preset", "smoke", "--dataset", str(empty), "--output-dir", str(tmp_path / "r")]) == 2
    assert "no text" in capsys.readouterr().err


def test_nan_loss_stops_with_a_clear_message(tmp_path, monkeypatch):
    from tdlib.objectives import MaskedDiffusionLoss

    def nan_forward(self, batch):
        return torch.tensor(float("nan"), requires_grad=True)

    monkeypatch.setattr(MaskedDiffusionLoss, "forward", nan_forward)
    with pytest.raises(UserError, match="loss became nan"):
        train(preset("smoke", output_dir=str(tmp_path / "r"), max_steps=3), progress=False)


def test_out_of_memory_advice_keeps_the_effective_batch():
    advice = out_of_memory_advice(TrainConfig(batch_size=16, grad_accum=1))
    assert "--grad-accum 2" in advice and "--resume" in advice
    assert "--max-length" in out_of_memory_advice(TrainConfig(batch_size=1, grad_accum=1))


def test_python_m_tdlib_is_the_console_program():
    proc = subprocess.run([sys.executable, "-m", "tdlib", "train", "--preset", "smoke", "--epochs", "0"],
                          capture_output=True, text=True)
    assert proc.returncode == 2
    assert proc.stderr.startswith("error:") and "Traceback" not in proc.stderr


@pytest.mark.slow
def test_demo_smoke_trains_then_shows_the_denoising(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "tdlib", "demo", "--preset", "smoke", "--output-dir",
                           str(tmp_path / "demo"), "--quiet", "--num-samples", "2"],
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "--- step 1 /" in proc.stdout and "--- final" in proc.stdout
    # a second run reuses the trained model
    again = subprocess.run([sys.executable, "-m", "tdlib", "demo", "--preset", "smoke", "--output-dir",
                            str(tmp_path / "demo"), "--quiet", "--num-samples", "1"],
                           capture_output=True, text=True, timeout=600)
    assert again.returncode == 0 and "reusing" in again.stdout


def test_every_training_setting_is_a_flag_or_listed_as_not_one():
    from tdlib.cli.train import FLAGS, NOT_FLAGS

    fields = {f.name for f in dataclasses.fields(TrainConfig)}
    assert set(FLAGS) | set(NOT_FLAGS) == fields and not set(FLAGS) & set(NOT_FLAGS)
    args = build_parser().parse_args(["train", "--mask-probs", "1.0,0.5", "--no-lr-over-time", "--time-budget", "9"])
    assert args.ratios == "1.0,0.5" and args.lr_over_time is False and args.time_budget_s == 9.0
    assert build_parser().parse_args(["train", "--mask-ratios", "1.0,0.5"]).ratios == "1.0,0.5"  # the main spelling
