"""Loading never runs code from a checkpoint: weights come from safetensors only, other
state through ``torch.load(weights_only=True)``, and never with ``trust_remote_code``.

A planted pickle whose unpickling would write a marker file (``__reduce__`` ->
``exec``) proves it: each test first checks that the bait really fires when
unpickled the unsafe way, then that `generate`, `evaluate` and `train --resume` leave
no marker.
"""

from __future__ import annotations

import ast
import builtins
import json
import shutil
from pathlib import Path

import pytest
import torch

from tdlib.cli import main

REPO = Path(__file__).resolve().parents[1]
SOURCES = [*sorted((REPO / "tdlib").rglob("*.py")), *sorted((REPO / "bench").rglob("*.py"))]
NOTEBOOKS = sorted((REPO / "notebooks").glob("*.ipynb"))


class Bait:
    """Unpickling this writes ``marker``: what a malicious checkpoint would do."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return builtins.exec, (f"open({str(self.marker)!r}, 'w').write('code ran')",)


def plant(path: Path, marker: Path) -> None:
    """Write a pickle at ``path`` that would create ``marker``; check that it really does."""
    torch.save({"optimizer": Bait(marker), "step": 1}, path)
    torch.load(path, weights_only=False)  # the unsafe way, once, on purpose
    assert marker.exists(), "the bait did not fire: the test would prove nothing"
    marker.unlink()


def call(argv: list[str], capsys) -> tuple[int, str, str]:
    code = main(argv)
    out, err = capsys.readouterr()
    return code, out, err


@pytest.fixture(scope="module")
def model_dir(scratch, tmp_path_factory) -> Path:
    from tdlib.model import save_model

    model, tokenizer = scratch
    trained = {"training_config.json": {"dataset": "pydoc", "max_length": 16, "example_mode": "packed"}}
    return save_model(model, tokenizer, tmp_path_factory.mktemp("safe") / "model", extra=trained)


USES = {
    "generate": ["generate", "--max-length", "10", "--steps", "2"],
    "evaluate": ["evaluate", "--max-characters", "300", "--batch-size", "8"],
}


@pytest.mark.parametrize("use", USES)
def test_pickled_weights_beside_safetensors_are_never_read(model_dir, tmp_path, capsys, use):
    ckpt, marker = tmp_path / "model", tmp_path / "marker"
    shutil.copytree(model_dir, ckpt)
    plant(ckpt / "pytorch_model.bin", marker)
    code, out, err = call([*USES[use], "--checkpoint", str(ckpt)], capsys)
    assert code == 0, err
    assert not marker.exists()


@pytest.mark.parametrize("use", USES)
def test_pickled_weights_alone_are_refused(model_dir, tmp_path, capsys, use):
    ckpt, marker = tmp_path / "model", tmp_path / "marker"
    shutil.copytree(model_dir, ckpt)
    (ckpt / "model.safetensors").unlink()
    plant(ckpt / "pytorch_model.bin", marker)
    code, out, err = call([*USES[use], "--checkpoint", str(ckpt)], capsys)
    assert code == 2 and err == f"error: cannot use checkpoint: {ckpt} has no model.safetensors\n"
    assert not marker.exists()


@pytest.mark.parametrize("model_type", ["roberta", "evilbert"], ids=["known-type", "unknown-type"])
def test_custom_code_in_a_checkpoint_is_never_imported(model_dir, tmp_path, capsys, model_type):
    ckpt, marker = tmp_path / "model", tmp_path / "marker"
    shutil.copytree(model_dir, ckpt)
    config = json.loads((ckpt / "config.json").read_text())
    config.update(model_type=model_type, auto_map={"AutoConfig": "evil.EvilConfig",
                                                   "AutoModelForMaskedLM": "evil.EvilModel"})
    (ckpt / "config.json").write_text(json.dumps(config))
    (ckpt / "evil.py").write_text(
        f"open({str(marker)!r}, 'w').write('code ran')\n"
        "from transformers import RobertaConfig as EvilConfig, RobertaForMaskedLM as EvilModel\n"
    )
    code, out, err = call([*USES["generate"], "--checkpoint", str(ckpt)], capsys)
    assert not marker.exists()
    if model_type == "roberta":  # the built-in class is used; the folder's code is ignored
        assert code == 0, err
    else:  # refused at once, without asking whether to run it
        assert code == 2 and err.startswith("error: ") and "custom code" in err and len(err.splitlines()) == 1


@pytest.fixture(scope="module")
def resumable_run(tmp_path_factory) -> Path:
    from tdlib.train import preset, train

    out = tmp_path_factory.mktemp("safe-run") / "run"
    train(preset("smoke", output_dir=str(out), max_steps=2, save_steps=1, eval_steps=100), progress=False)
    shutil.rmtree(out / "final-model")
    return out


def test_resume_never_unpickles_code_from_trainer_state(resumable_run, tmp_path, capsys):
    run, marker = tmp_path / "run", tmp_path / "marker"
    shutil.copytree(resumable_run, run)
    plant(run / "checkpoint-1" / "trainer_state.pt", marker)
    plant(run / "checkpoint-1" / "pytorch_model.bin", marker)
    try:
        main(["train", "--preset", "smoke", "--quiet", "--output-dir", str(run), "--resume",
              "--max-steps", "2", "--save-steps", "1", "--eval-steps", "100"])
    except Exception:  # how it refuses is the next test's business
        pass
    capsys.readouterr()
    assert not marker.exists()


def test_resume_refuses_a_trainer_state_that_is_not_plain_tensors(resumable_run, tmp_path, capsys):
    run, marker = tmp_path / "run", tmp_path / "marker"
    shutil.copytree(resumable_run, run)
    plant(run / "checkpoint-1" / "trainer_state.pt", marker)
    code, out, err = call(["train", "--preset", "smoke", "--quiet", "--output-dir", str(run), "--resume",
                           "--max-steps", "2", "--save-steps", "1", "--eval-steps", "100"], capsys)
    assert code == 2 and err.startswith("error: ") and "trainer_state.pt" in err and len(err.splitlines()) == 1
    assert not marker.exists()


def _calls(tree: ast.AST):
    for node in ast.walk(tree):
        if isinstance(node, ast.Call):
            name = node.func.attr if isinstance(node.func, ast.Attribute) else getattr(node.func, "id", "")
            owner = getattr(node.func, "value", None)
            yield name, getattr(owner, "id", getattr(owner, "attr", "")), {k.arg: k.value for k in node.keywords}


def _code_units():
    for path in SOURCES:
        yield str(path.relative_to(REPO)), path.read_text()
    for path in NOTEBOOKS:
        cells = json.loads(path.read_text())["cells"]
        code = "\n".join("".join(c["source"]) for c in cells if c["cell_type"] == "code")
        code = "\n".join(line for line in code.splitlines() if not line.lstrip().startswith(("%", "!")))
        yield str(path.relative_to(REPO)), code


def _is_const(node, value) -> bool:
    return isinstance(node, ast.Constant) and node.value is value


def test_source_tree_loads_safely():
    """No trust_remote_code other than False; torch.load always weights_only=True; models from safetensors."""
    problems = []
    units = list(_code_units())
    assert any(name.startswith("tdlib/model.py") for name, _ in units)
    for name, code in units:
        assert "trust_remote_code=True" not in code.replace(" ", ""), name
        for func, owner, kwargs in _calls(ast.parse(code)):
            if "trust_remote_code" in kwargs and not _is_const(kwargs["trust_remote_code"], False):
                problems.append(f"{name}: {func}(trust_remote_code=...) is not False")
            if func == "load" and owner == "torch" and not _is_const(kwargs.get("weights_only"), True):
                problems.append(f"{name}: torch.load without weights_only=True")
            if func in ("load", "loads") and owner in ("pickle", "dill", "joblib"):
                problems.append(f"{name}: {owner}.{func} unpickles arbitrary code")
            if (func == "from_pretrained" and "Tokenizer" not in owner and "Config" not in owner
                    and not _is_const(kwargs.get("use_safetensors"), True)):
                problems.append(f"{name}: {owner}.from_pretrained without use_safetensors=True")
    assert not problems, "\n".join(problems)
