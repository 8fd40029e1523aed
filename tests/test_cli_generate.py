"""`tdlib generate`: output formats, animations, and one-line errors for bad input."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from tdlib.cli import main
from tdlib.render import MASK_GLYPH


@pytest.fixture(scope="session")
def checkpoint(scratch, tmp_path_factory):
    """A tiny saved model directory (the session's scratch RoBERTa)."""
    from tdlib.model import save_model

    model, tokenizer = scratch
    return str(save_model(model, tokenizer, tmp_path_factory.mktemp("gen") / "final-model"))


def run_cli(capsys, *argv):
    code = main(["generate", *argv])
    out, err = capsys.readouterr()
    return code, out, err


def test_json_output_has_exactly_the_documented_keys(checkpoint, capsys):
    code, out, err = run_cli(capsys, "--checkpoint", checkpoint, "--prefix", "The class", "--num-samples", "3",
                             "--max-length", "16", "--steps", "5", "--json")
    assert code == 0, err
    result = json.loads(out)
    assert set(result) == {"samples", "steps", "forward_passes", "seconds"}
    assert result["steps"] == result["forward_passes"] == 5
    assert len(result["samples"]) == 3 and all(s.startswith("The class ") for s in result["samples"])
    assert result["seconds"] >= 0


def test_same_seed_same_text(checkpoint, capsys):
    argv = ["--checkpoint", checkpoint, "--max-length", "12", "--steps", "3", "--seed", "7", "--json"]
    first = json.loads(run_cli(capsys, *argv)[1])["samples"]
    assert json.loads(run_cli(capsys, *argv)[1])["samples"] == first


def test_show_steps_prints_every_step_with_masks(checkpoint, scratch, capsys):
    code, out, _ = run_cli(capsys, "--checkpoint", checkpoint, "--prefix", "Hello", "--max-length", "10",
                           "--steps", "4", "--strategy", "resample", "--show-steps")
    assert code == 0
    assert [line for line in out.splitlines() if line.startswith("--- step")] == [
        f"--- step {s} / 4" for s in range(5)
    ]
    lines = out.splitlines()
    num_masks = 8 - len(scratch[1]("Hello", add_special_tokens=False)["input_ids"])
    assert lines[1] == "Hello " + " ".join([MASK_GLYPH] * num_masks)  # step 0: prefix and masks
    assert MASK_GLYPH not in lines[lines.index("--- final") + 1]


def test_terminal_and_html_draw_a_mask_with_the_same_glyph(checkpoint, capsys, tmp_path):
    page = tmp_path / "steps.html"
    code, out, err = run_cli(capsys, "--checkpoint", checkpoint, "--max-length", "10", "--steps", "2",
                             "--show-steps", "--animation", str(page))
    assert code == 0, err
    assert set(out.splitlines()[1].split()) == {MASK_GLYPH}  # step 0, no prefix: every position masked
    line = next(x for x in page.read_text().splitlines() if x.startswith("const frames = "))
    frames = json.loads(line.removeprefix("const frames = ").rstrip(";"))
    assert f'title="masked">{MASK_GLYPH}</span>' in frames[0]  # drawn by the widgets' renderer


def test_generate_imports_no_jupyter_code(checkpoint, tmp_path):
    code = (
        "import sys\n"
        "from tdlib.cli import main\n"
        f"main(['generate', '--checkpoint', {checkpoint!r}, '--max-length', '10', '--steps', '2', '--show-steps',"
        f" '--animation', {str(tmp_path / 'a.html')!r}])\n"
        "print(sorted(m for m in sys.modules if m.split('.')[0] in ('ipywidgets', 'IPython') or m == 'tdlib.widgets'))"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.splitlines()[-1] == "[]"


@pytest.mark.parametrize("suffix", [".html", ".gif"])
def test_animation_files(checkpoint, capsys, tmp_path, suffix):
    path = tmp_path / f"denoise{suffix}"
    code, _, err = run_cli(capsys, "--checkpoint", checkpoint, "--num-samples", "2", "--max-length", "10",
                           "--steps", "3", "--animation", str(path))
    assert code == 0, err
    if suffix == ".html":
        page = path.read_text()
        assert page.count("step 3 / 3") >= 1 and "<script>" in page and "http" not in page.split("<body")[1]
    else:
        from PIL import Image

        with Image.open(path) as image:
            assert image.n_frames == 4  # initial canvas + one frame per step


@pytest.mark.parametrize(
    "flags,message",
    [
        (["--top-p", "0"], "--top-p"),
        (["--top-p", "1.5"], "--top-p"),
        (["--temperature", "0"], "--temperature"),
        (["--temperature", "-1"], "--temperature"),
        (["--top-k", "0"], "--top-k"),
        (["--steps", "0"], "--steps"),
        (["--num-samples", "0"], "--num-samples"),
        (["--max-length", "6", "--prefix", "one two three four five six seven"], "prefix"),
        (["--animation", "out.mp4"], ".html or .gif"),
        (["--max-length", "100"], "positions"),  # the session's tiny model has 64
    ],
)
def test_bad_input_is_one_error_line_and_exit_2(checkpoint, capsys, flags, message):
    code, _, err = run_cli(capsys, "--checkpoint", checkpoint, "--steps", "2", "--max-length", "8", *flags)
    assert code == 2
    assert err.startswith("error:") and message in err and len(err.strip().splitlines()) == 1


def test_unknown_choice_is_an_argparse_error(checkpoint, capsys):
    with pytest.raises(SystemExit) as exc:
        main(["generate", "--checkpoint", checkpoint, "--schedule", "sigmoid"])
    assert exc.value.code == 2 and capsys.readouterr().err.startswith("error:")


def test_missing_and_corrupt_checkpoints(tmp_path, capsys, checkpoint):
    code, _, err = run_cli(capsys, "--checkpoint", str(tmp_path / "nowhere"))
    assert code == 2 and err.startswith("error:")
    corrupt = tmp_path / "corrupt"
    corrupt.mkdir()
    (corrupt / "config.json").write_text("{not json")
    (corrupt / "model.safetensors").write_bytes(b"\x00" * 10)
    code, _, err = run_cli(capsys, "--checkpoint", str(corrupt))
    assert code == 2 and err.startswith("error:") and len(err.strip().splitlines()) == 1


def test_python_dash_m_runs_the_same_command(checkpoint):
    result = subprocess.run(
        [sys.executable, "-m", "tdlib", "generate", "--checkpoint", checkpoint, "--top-p", "0"],
        capture_output=True, text=True, timeout=120,
    )
    assert result.returncode == 2 and result.stderr.startswith("error:") and "--top-p" in result.stderr


@pytest.mark.browser
def test_html_animation_plays_in_chromium(checkpoint, capsys, tmp_path):
    from pathlib import Path

    if not Path("/usr/bin/chromium").exists():
        pytest.skip("/usr/bin/chromium is missing: apt-get install -y chromium")
    sync_api = pytest.importorskip("playwright.sync_api", reason="pip install playwright")
    path = tmp_path / "denoise.html"
    assert run_cli(capsys, "--checkpoint", checkpoint, "--max-length", "10", "--steps", "3",
                   "--animation", str(path))[0] == 0
    flags = ["--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
             "--disable-background-networking"]
    with sync_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path="/usr/bin/chromium", args=flags)
        page = browser.new_page()
        errors: list[str] = []
        page.on("pageerror", lambda e: errors.append(str(e)))
        page.goto(path.as_uri())
        assert page.inner_text("#label") == "step 0 / 3"
        page.click("#play")
        page.wait_for_function("document.getElementById('label').textContent === 'step 3 / 3'", timeout=10_000)
        assert "0 still masked" in page.inner_text("#frame") and page.inner_text("#play") == "play"
        browser.close()
    assert errors == []
