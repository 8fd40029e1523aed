"""A run directory on disk: checkpoints, the `latest` file, the resume state, the metrics log.

What a training run leaves in its ``output_dir`` (the run directory):

- ``checkpoint-STEP/``: a complete Hugging Face model directory (config,
  ``model.safetensors``, tokenizer) plus ``trainer_state.pt`` (optimizer state,
  step, seconds trained) and ``training_config.json``; written under a
  temporary name and renamed, so a kill never leaves a half-written folder that
  looks complete;
- ``latest``: a plain file naming the newest checkpoint (no symlink);
- ``final-model/``: the model at the end;
- ``metrics.jsonl``: one JSON record per line, each with a ``step``; `tdlib.runlog`
  writes and reads it;
- ``.lock``: while a process trains in the run directory, the file it holds
  locked (`hold_run_dir`), naming it.

This module reads and writes the other files: it validates a model directory,
lists and resolves checkpoints, saves and restores the trainer state. It does
not build networks (`tdlib.model`) and does not train (`tdlib.train`).
"""

from __future__ import annotations

import errno
import json
import logging
import os
import shutil
import socket
import struct
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import torch

from tdlib.errors import UserError, require

LATEST_FILE = "latest"  # a run directory's plain file naming its newest checkpoint
STATE_FILE = "trainer_state.pt"  # beside each checkpoint: optimizer state, step and seconds trained
TRAINING_CONFIG_FILE = "training_config.json"  # beside each checkpoint and the final model: the TrainConfig
FINAL_MODEL = "final-model"  # the run directory's model at the end
LOCK_FILE = ".lock"  # locked (flock) by the one process training in the run directory; says who it is
logger = logging.getLogger(__name__)  # without handlers, warnings go to stderr as bare lines


def atomic_write_text(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` under a temporary name, then rename it into place."""
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def write_folder_atomically(directory: str | Path, fill: Callable[[Path], None]) -> Path:
    """Let ``fill(tmp)`` write a folder under a temporary name, then rename it to ``directory``.

    A folder of the same name is replaced only once the new one is complete. A
    full disk is reported as an ``OSError(ENOSPC)`` whatever library noticed it.
    """
    directory = Path(directory)
    directory.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{directory.name}.tmp-", dir=directory.parent))
    try:
        fill(tmp)
        _fsync_files(tmp)
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


def _fsync_files(folder: Path) -> None:
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
    if not _complete_safetensors(weights):
        return f"{weights} is truncated or corrupt"
    if not any((directory / f).is_file() for f in ("tokenizer.json", "vocab.json", "vocab.txt")):
        return f"{directory} has no tokenizer files"
    if (directory / "tokenizer.json").is_file():
        try:
            json.loads((directory / "tokenizer.json").read_bytes())
        except (ValueError, OSError):
            return f"{directory}/tokenizer.json is truncated or corrupt"
    return None


def _complete_safetensors(weights: Path) -> bool:
    """Whether the file's header parses and its tensors end exactly where the file does."""
    size = weights.stat().st_size
    try:
        with open(weights, "rb") as fh:
            header_len = struct.unpack("<Q", fh.read(8))[0]
            require(8 + header_len <= size, "header longer than file")
            header = json.loads(fh.read(header_len))
        end = max((v["data_offsets"][1] for k, v in header.items() if k != "__metadata__"), default=0)
        return 8 + header_len + end == size
    except (struct.error, ValueError, KeyError, TypeError, UserError, UnicodeDecodeError):
        return False


def list_checkpoints(run_dir: str | Path) -> list[Path]:
    """The run's ``checkpoint-STEP`` folders, oldest first (temporary folders excluded)."""
    run_dir = Path(run_dir)
    found = [p for p in run_dir.glob("checkpoint-*") if p.is_dir() and p.name.split("-", 1)[1].isdigit()]
    return sorted(found, key=lambda p: int(p.name.split("-", 1)[1]))


def latest_name(run_dir: Path) -> str | None:
    """The checkpoint the run's `latest` file names, or None when there is no such file."""
    return (run_dir / LATEST_FILE).read_text().strip() if (run_dir / LATEST_FILE).exists() else None


def resolve_checkpoint(path: str | Path) -> Path:
    """The model directory behind ``path``: itself, or a run's final model or newest good checkpoint."""
    path = Path(path).expanduser()
    require(path.exists(), f"checkpoint {path} does not exist; pass a run directory or a model directory")
    if (path / "config.json").exists() or (path / "model.safetensors").exists():
        problem = validate_model_dir(path)
        require(problem is None, f"cannot use checkpoint: {problem}")
        return path
    candidates: list[Path] = []
    if (path / FINAL_MODEL).is_dir():
        candidates.append(path / FINAL_MODEL)
    if (path / LATEST_FILE).is_file():
        candidates.append(path / latest_name(path))
    candidates += list(reversed(list_checkpoints(path)))
    candidates = list(dict.fromkeys(candidates))  # `latest` also names one of the checkpoints
    require(bool(candidates), f"{path} holds no model: no {FINAL_MODEL}/ and no checkpoint-STEP/ folders")
    problems = []
    for candidate in candidates:
        problem = validate_model_dir(candidate)
        if problem is None:
            if problems:  # say what was skipped: a damaged model must not pass silently
                logger.warning("warning: %s; using %s instead", "; ".join(problems), candidate)
            return candidate
        problems.append(problem)
    raise UserError(f"no usable checkpoint in {path}: {'; '.join(problems)}; pass another --checkpoint or train again")


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


@contextmanager
def hold_run_dir(run_dir: Path) -> Iterator[None]:
    """Hold the run directory's lock while the body runs: one training process per run directory.

    The lock is the operating system's (``flock`` on `LOCK_FILE`), so it goes
    with its process however that ends: a run killed with SIGKILL leaves at most
    a stale file, never a held lock. Another process holding it is a `UserError`
    naming that process (its pid, host and start, which the holder writes into
    the file), raised before anything is written. The file is removed on release,
    so a finished run leaves nothing behind. Without ``fcntl`` (Windows) nothing
    is locked.
    """
    try:
        import fcntl
    except ImportError:  # pragma: no cover - not a POSIX system
        yield
        return
    path = run_dir / LOCK_FILE
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
        fd = _lock(path, fcntl)
    except OSError as exc:
        raise UserError(f"cannot write to --output-dir {run_dir}: {exc.strerror}; choose a writable folder") from None
    if fd is None:
        raise UserError(f"{run_dir} is in use: {_holder(path)} is training in it; wait for it to end (or stop it), "
                        f"or choose another --output-dir")
    try:
        since = time.strftime("%Y-%m-%d %H:%M:%S")
        os.write(fd, json.dumps({"pid": os.getpid(), "host": socket.gethostname(), "since": since}).encode())
        yield
    finally:
        path.unlink(missing_ok=True)  # before letting go: whoever locks next locks a new file
        fcntl.flock(fd, fcntl.LOCK_UN)
        os.close(fd)


def run_dir_holder(run_dir: str | Path) -> str | None:
    """Who is training in ``run_dir`` now ("process N on HOST (since ...)"), or None if nobody is."""
    try:
        import fcntl
    except ImportError:  # pragma: no cover - not a POSIX system
        return None
    try:
        fd = os.open(Path(run_dir) / LOCK_FILE, os.O_RDONLY)
    except FileNotFoundError:  # no lock file, or its holder has just let go and removed it
        return None
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)  # granted only when no trainer holds it
    except BlockingIOError:
        return _holder(Path(run_dir) / LOCK_FILE)
    finally:
        os.close(fd)  # closing lets go of a shared lock taken here
    return None


def _lock(path: Path, fcntl) -> int | None:
    """The descriptor of ``path``, locked and emptied; None when another process holds it."""
    while True:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            return None
        try:
            same = os.stat(path).st_ino == os.fstat(fd).st_ino
        except FileNotFoundError:
            same = False
        if same:
            os.ftruncate(fd, 0)
            return fd
        os.close(fd)  # the holder removed the file as we locked it: lock the new one


def _holder(path: Path, wait_s: float = 2.0) -> str:
    """Who holds the lock, as its file says (the holder writes it just after locking)."""
    deadline = time.monotonic() + wait_s
    while True:
        try:
            holder = json.loads(path.read_text())
            return f"process {int(holder['pid'])} on {holder['host']} (since {holder['since']})"
        except (OSError, ValueError, KeyError, TypeError):
            if time.monotonic() > deadline:
                return "another process"
            time.sleep(0.05)


def check_output_dir(out: Path, resume: bool) -> None:
    """Make sure ``out`` is writable, and that it holds no run unless resuming."""
    try:
        out.mkdir(parents=True, exist_ok=True)
        probe = out / ".write-test"
        probe.write_bytes(b"\0" * 4096)
        probe.unlink()
    except OSError as exc:
        raise UserError(f"cannot write to --output-dir {out}: {exc.strerror}; choose a writable folder") from None
    if not resume and (list_checkpoints(out) or (out / FINAL_MODEL).exists()):
        raise UserError(
            f"{out} already holds a training run; pass --resume to continue it or choose another --output-dir"
        )


def checkpoint_to_resume(run_dir: Path) -> Path | None:
    """The checkpoint a resumed run starts from; None when the run has none yet (a fresh start)."""
    if not (list_checkpoints(run_dir) or (run_dir / LATEST_FILE).exists()):
        return None
    return resolve_checkpoint_for_resume(run_dir)


def resolve_checkpoint_for_resume(run_dir: Path) -> Path:
    """The newest complete checkpoint with a resume state (a damaged newest one is skipped)."""
    candidates = list(reversed(list_checkpoints(run_dir)))
    named = latest_name(run_dir)
    if named and (run_dir / named).is_dir():
        candidates = [run_dir / named] + [c for c in candidates if c.name != named]
    for c in candidates:
        if validate_model_dir(c) is None and (c / STATE_FILE).is_file():
            return c
    raise UserError(f"--resume: {run_dir} has no complete checkpoint to resume from; start without --resume")


def trainer_state(optimizer: torch.optim.Optimizer, step: int, elapsed_s: float) -> dict:
    """What `STATE_FILE` holds: the optimizer's state, the step reached and the seconds trained."""
    return {"optimizer": optimizer.state_dict(), "step": step, "elapsed_s": elapsed_s}


def mark_latest(run_dir: Path, checkpoint: Path, keep: int | None) -> None:
    """Name ``checkpoint`` in the `latest` file and delete all but the newest ``keep`` checkpoints."""
    atomic_write_text(run_dir / LATEST_FILE, checkpoint.name + "\n")
    if keep:
        for old in list_checkpoints(run_dir)[:-keep]:
            shutil.rmtree(old, ignore_errors=True)


def restore_trainer_state(checkpoint: Path, optimizer: torch.optim.Optimizer) -> tuple[int, float]:
    """Load the optimizer state saved beside ``checkpoint``; returns (step, seconds trained)."""
    try:
        state = torch.load(checkpoint / STATE_FILE, weights_only=True)  # tensors only: never runs code
    except Exception as exc:
        raise UserError(
            f"cannot resume from {checkpoint / STATE_FILE}: not a plain saved state ({type(exc).__name__}); "
            f"delete {checkpoint.name} to resume from an earlier checkpoint"
        ) from None
    try:
        optimizer.load_state_dict(state["optimizer"])
    except ValueError:  # other parameters train now than when the checkpoint was saved
        raise UserError(
            f"cannot resume from {checkpoint.name}: it was saved with other trainable parameters; resume with "
            f"the settings it was trained with (--freeze-embeddings, --freeze-layers and --head-lr-scale "
            f"are in {checkpoint / TRAINING_CONFIG_FILE})"
        ) from None
    return int(state["step"]), float(state.get("elapsed_s", 0.0))

