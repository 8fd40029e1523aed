"""Read-only and full filesystems: `tdlib train` fails with one `error:` line and exit 2,
before any training work, and a disk that fills up mid-run loses nothing already saved.

"Before any work" is proved, not timed: the corpus and model loaders are replaced by
functions that fail the test if called, so the error must come from the output-dir check.

What is real and what is simulated:
- an output dir under a regular file (ENOTDIR) and under /sys (EPERM/EROFS even for
  root) are real kernel refusals; ``chmod 0o555`` is real only when not root (CI runs
  as root, who may write anyway, so that case then uses the path under a file instead);
- a full disk at start is a real ENOSPC from the kernel: the run's write probe is a
  symlink to /dev/full;
- a disk filling up mid-run is simulated: the safetensors writer is replaced by one that
  raises what safetensors raised on a real 200 kB tmpfs on this machine
  (``SafetensorError: Error while serializing: I/O error: No space left on device (os error 28)``),
  and a metrics write raises OSError(ENOSPC) as Python's ``write`` does on a full disk.
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
from pathlib import Path

import pytest

from tdlib.checkpoint import validate_model_dir
from tdlib.cli import main


def is_writable(folder: Path) -> bool:
    try:
        (folder / ".probe").write_bytes(b"x")
        (folder / ".probe").unlink()
        return True
    except OSError:
        return False


@pytest.fixture
def no_work(monkeypatch):
    """Fail the test if training work (loading the corpus or the model) starts."""
    def started(*args, **kwargs):
        raise AssertionError("training work started before the output directory was checked")

    monkeypatch.setattr("tdlib.train.load_corpus", started)
    monkeypatch.setattr("tdlib.objectives.load_model", started)


def train(capsys, out, *extra) -> tuple[int, str, str]:
    code = main(["train", "--preset", "smoke", "--quiet", "--output-dir", str(out), *extra])
    stdout, stderr = capsys.readouterr()
    return code, stdout, stderr


def unwritable_output_dir(kind: str, tmp_path: Path) -> Path:
    if kind == "chmod-555":
        folder = tmp_path / "read-only"
        folder.mkdir()
        folder.chmod(0o555)
        if not is_writable(folder):
            return folder / "run"
        kind = "under-a-file"  # root ignores permission bits: use a path no one can create
    if kind == "under-a-file":
        (tmp_path / "a-file").write_text("not a folder\n")
        return tmp_path / "a-file" / "run"
    if not Path("/sys/kernel").is_dir():
        pytest.skip("no /sys here")
    return Path("/sys/tdlib-fault-test/run")


@pytest.mark.parametrize("kind", ["chmod-555", "under-a-file", "sysfs"])
def test_unwritable_output_dir_fails_before_any_work(tmp_path, capsys, no_work, kind):
    out = unwritable_output_dir(kind, tmp_path)
    code, stdout, err = train(capsys, out)
    assert code == 2 and "Traceback" not in err
    (line,) = err.splitlines()
    assert line.startswith(f"error: cannot write to --output-dir {out}: ")
    assert not out.exists()


def test_resume_into_a_run_that_became_read_only_touches_nothing(tmp_path, capsys, no_work):
    run = tmp_path / "run"
    (run / "checkpoint-2").mkdir(parents=True)
    (run / "metrics.jsonl").write_text(json.dumps({"step": 2, "loss": 1.0}) + "\n")
    (run / "latest").write_text("checkpoint-2\n")
    before = {p: hashlib.sha256(p.read_bytes()).hexdigest() for p in run.rglob("*") if p.is_file()}
    run.chmod(0o555)
    try:
        if is_writable(run):
            pytest.skip("running as root: permission bits do not stop writes (covered by the other cases)")
        code, stdout, err = train(capsys, run, "--resume")
    finally:
        run.chmod(0o755)
    assert code == 2 and err.startswith(f"error: cannot write to --output-dir {run}: ")
    assert {p: hashlib.sha256(p.read_bytes()).hexdigest() for p in run.rglob("*") if p.is_file()} == before


@pytest.mark.skipif(not os.path.exists("/dev/full"), reason="needs /dev/full")
def test_full_disk_at_start_fails_before_any_work(tmp_path, capsys, no_work):
    out = tmp_path / "run"
    out.mkdir()
    (out / ".write-test").symlink_to("/dev/full")  # the probe's writes get a real ENOSPC
    code, stdout, err = train(capsys, out)
    assert code == 2 and "Traceback" not in err
    (line,) = err.splitlines()
    assert line == f"error: cannot write to --output-dir {out}: No space left on device; choose a writable folder"


def test_disk_full_while_saving_a_checkpoint_keeps_the_last_one_and_resumes(tmp_path, capsys, monkeypatch):
    import transformers.modeling_utils
    from safetensors import SafetensorError

    real_save = transformers.modeling_utils.safe_save_file
    saves = []

    def fills_up(*args, **kwargs):
        saves.append(args[1])
        if len(saves) >= 2:  # the first checkpoint fits, the second does not
            raise SafetensorError("Error while serializing: I/O error: No space left on device (os error 28)")
        return real_save(*args, **kwargs)

    monkeypatch.setattr(transformers.modeling_utils, "safe_save_file", fills_up)
    out = tmp_path / "run"
    steps = ["--max-steps", "6", "--save-steps", "2", "--eval-steps", "100"]
    code, stdout, err = train(capsys, out, *steps)
    assert code == 2 and "Traceback" not in err
    (line,) = err.splitlines()
    assert line.startswith("error: No space left on device") and "--resume" in line
    assert (out / "latest").read_text().strip() == "checkpoint-2"
    assert validate_model_dir(out / "checkpoint-2") is None
    assert sorted(p.name for p in out.iterdir()) == ["checkpoint-2", "latest", "metrics.jsonl"]  # no half-written one

    monkeypatch.setattr(transformers.modeling_utils, "safe_save_file", real_save)  # space was freed
    code, stdout, err = train(capsys, out, *steps, "--resume")
    assert code == 0, err
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records if "loss" in r] == [2, 4, 6]


def test_disk_full_while_logging_metrics_is_an_error_line(tmp_path, capsys, monkeypatch):
    from tdlib.runlog import MetricsLog

    real_write = MetricsLog.write

    def fills_up(self, record):
        if "loss" in record:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(self.path))
        real_write(self, record)

    monkeypatch.setattr(MetricsLog, "write", fills_up)
    code, stdout, err = train(capsys, tmp_path / "run", "--max-steps", "2", "--eval-steps", "100")
    assert code == 2 and "Traceback" not in err
    (line,) = err.splitlines()
    assert line.startswith(f"error: No space left on device ({tmp_path / 'run' / 'metrics.jsonl'}); free some space")
