"""The DenoisingScrubber and the CompareScrubber in a real JupyterLab, driven by headless Chromium.

Starts JupyterLab on 127.0.0.1 with an empty token in a temporary HOME holding a
tiny notebook of two cells (one scrubber each), runs one cell, presses Play and
checks that the step shown in the page advances: in the single scrubber, and in
both panes of the side-by-side one. A third cell opens the side-by-side scrubber at
its half-way step, in the light theme and in "JupyterLab Dark", and every word it
shows must contrast with its background as WCAG asks of text (a ratio of at least
4.5, from the computed colours). Needs Debian's /usr/bin/chromium and the playwright package
(`apt-get install -y chromium`, `pip install playwright`; never `playwright install`).
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import nbformat
import pytest

pytestmark = pytest.mark.browser

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--headless=new",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-dev-shm-usage",
    "--disable-background-networking",
]
REPO = Path(__file__).resolve().parents[1]

NOTEBOOK_CODE = """\
from types import SimpleNamespace
import torch
from tdlib.widgets import DenoisingScrubber

words = ["<s>", "</s>", "<mask>", "The", "Ġcat", "Ġsat", "Ġon", "Ġthe", "Ġmat", "."]
tokenizer = SimpleNamespace(convert_ids_to_tokens=lambda ids: [words[i] for i in ids],
                            all_special_ids=[0, 1, 2], mask_token_id=2)
final = torch.tensor([[0, 3, 4, 5, 6, 7, 8, 9, 1]])  # (B, L)
order = [None, [3, 6], [2, 5], [4], [7]]  # positions revealed at steps 1..4
tokens = final.expand(5, 1, 9).clone()  # (S+1, B, L)
revealed = torch.zeros(5, 1, 9, dtype=torch.bool)
for s in range(1, 5):
    revealed[s, 0, order[s]] = True
for s in range(5):
    tokens[s][revealed[s + 1:].any(0)] = 2
probs = torch.where(tokens == 2, float("nan"), 0.8)
given = torch.zeros(1, 9, dtype=torch.bool)
given[0, [0, 1, 8]] = True
trajectory = SimpleNamespace(tokens=tokens, revealed=revealed, probs=probs, mask_id=2, given=given)
DenoisingScrubber(trajectory, tokenizer, interval_ms=400)
"""

COMPARE_CODE = """\
from types import SimpleNamespace
import torch
from tdlib.widgets import CompareScrubber

words = ["<s>", "</s>", "<mask>", "The", "Ġcat", "Ġsat", "Ġon", "Ġthe", "Ġmat", ".", "Ġdog", "Ġran"]
tokenizer = SimpleNamespace(convert_ids_to_tokens=lambda ids: [words[i] for i in ids],
                            all_special_ids=[0, 1, 2], mask_token_id=2)


def trajectory(final, order):
    final = torch.tensor([final])  # (B, L)
    steps = len(order)
    tokens = final.expand(steps + 1, 1, final.shape[1]).clone()  # (S+1, B, L)
    revealed = torch.zeros(steps + 1, 1, final.shape[1], dtype=torch.bool)
    for s, positions in enumerate(order, start=1):
        revealed[s, 0, positions] = True
    for s in range(steps + 1):
        tokens[s][revealed[s + 1:].any(0)] = 2
    given = torch.zeros(1, final.shape[1], dtype=torch.bool)
    given[0, [0, final.shape[1] - 1]] = True
    probs = torch.where(tokens == 2, float("nan"), 0.8)
    return SimpleNamespace(tokens=tokens, revealed=revealed, probs=probs, mask_id=2, given=given)


left = trajectory([0, 3, 4, 5, 6, 7, 8, 9, 1], [[1, 4], [2, 5], [3, 6], [7]])
right = trajectory([0, 3, 10, 11, 6, 7, 8, 9, 1], [[7, 2], [1], [3, 4, 5], [6]])
CompareScrubber({"left run": left, "right run": right}, tokenizer, interval_ms=400)
"""

HALFWAY_CODE = COMPARE_CODE.replace("interval_ms=400)", "step=2, interval_ms=400)")  # the half-way step of 4
DARK_THEME = "JupyterLab Dark"

# For each token span under an element: its text colour and background as the page computes them, the
# background composed from the first opaque one up the tree (translucent tints over it), and their WCAG
# contrast ratio (relative luminances L, (L_light + 0.05) / (L_dark + 0.05)).
CONTRAST_JS = """(root) => {
  const parse = (s) => { const v = s.match(/[\\d.]+/g).map(Number); return [v[0], v[1], v[2], v.length > 3 ? v[3] : 1]; };
  const over = (top, below) => [0, 1, 2].map((i) => top[3] * top[i] + (1 - top[3]) * below[i]).concat([1]);
  const lum = (c) => [0.2126, 0.7152, 0.0722].reduce((sum, w, i) => {
    const v = c[i] / 255;
    return sum + w * (v <= 0.04045 ? v / 12.92 : ((v + 0.055) / 1.055) ** 2.4);
  }, 0);
  const background = (element) => {
    const layers = [];
    for (let e = element; e; e = e.parentElement) {
      const c = parse(getComputedStyle(e).backgroundColor);
      if (c[3] > 0) layers.push(c);
      if (c[3] >= 1) return layers.reverse().reduce((below, top) => over(top, below));
    }
    return null;  // no opaque background anywhere up the tree
  };
  return [...root.querySelectorAll('.td-tok')].map((e) => {
    const bg = background(e);
    const fg = bg && over(parse(getComputedStyle(e).color), bg);
    const [light, dark] = bg ? [lum(fg), lum(bg)].sort((a, b) => b - a) : [0, 0];
    return {cls: e.className, text: e.textContent, color: getComputedStyle(e).color, bg: bg && bg.join(','),
            ratio: bg ? (light + 0.05) / (dark + 0.05) : 0};
  });
}"""


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait_for_server(url: str, process: subprocess.Popen, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"JupyterLab exited early with status {process.returncode}")
        try:
            with urllib.request.urlopen(url + "api/status", timeout=2):
                return
        except OSError:
            time.sleep(0.5)
    raise TimeoutError(f"JupyterLab did not answer at {url} within {timeout} s")


@pytest.fixture
def sync_api():
    """playwright's sync API, or a skip saying what is missing."""
    if not CHROMIUM.exists():
        pytest.skip(f"{CHROMIUM} is missing: apt-get install -y chromium")
    return pytest.importorskip(
        "playwright.sync_api", reason="playwright is missing: pip install playwright"
    )


@contextlib.contextmanager
def _jupyterlab(tmp_path: Path, theme: str | None = None):
    """A JupyterLab server on 127.0.0.1 (empty token) whose root holds demo.ipynb (three cells); yields its URL.

    ``theme`` (e.g. "JupyterLab Dark") is set through a user-settings folder, as a learner's choice would be.
    """
    cells = [nbformat.v4.new_code_cell(code) for code in (NOTEBOOK_CODE, COMPARE_CODE, HALFWAY_CODE)]
    notebook = nbformat.v4.new_notebook(cells=cells)
    notebook.metadata["kernelspec"] = {
        "name": "python3",
        "display_name": "Python 3 (ipykernel)",
        "language": "python",
    }
    nbformat.write(notebook, tmp_path / "demo.ipynb")
    settings = tmp_path / ".lab-settings"
    themes = settings / "@jupyterlab" / "apputils-extension" / "themes.jupyterlab-settings"
    themes.parent.mkdir(parents=True)
    themes.write_text(json.dumps({"theme": theme} if theme else {}))
    port = _free_port()
    env = {
        **os.environ,
        "HOME": str(tmp_path),
        "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")])),
    }
    env.pop("JUPYTER_CONFIG_DIR", None)
    command = [
        sys.executable,
        "-m",
        "jupyterlab",
        "--no-browser",
        "--allow-root",
        "--ip=127.0.0.1",
        f"--port={port}",
        "--IdentityProvider.token=",
        "--ServerApp.password=",
        f"--ServerApp.root_dir={tmp_path}",
        f"--LabApp.user_settings_dir={settings}",
        "--LabApp.news_url=None",
        "--LabApp.check_for_updates_class=jupyterlab.NeverCheckForUpdate",
    ]
    log = open(tmp_path / "jupyterlab.log", "wb")  # noqa: SIM115 -- closed after the server stops
    process = subprocess.Popen(command, cwd=tmp_path, env=env, stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}/"
    try:
        _wait_for_server(url, process, timeout=90)
        yield url
    finally:
        process.terminate()
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        log.close()


@pytest.fixture
def jupyterlab(sync_api, tmp_path):
    """JupyterLab in its default (light) theme; yields its URL."""
    with _jupyterlab(tmp_path) as url:
        yield url


@pytest.fixture
def jupyterlab_dark(sync_api, tmp_path):
    """JupyterLab in the "JupyterLab Dark" theme; yields its URL."""
    with _jupyterlab(tmp_path, DARK_THEME) as url:
        yield url


@pytest.fixture
def browser(sync_api):
    """Debian's chromium, driven by playwright; closed after the test."""
    with sync_api.sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        try:
            yield browser
        finally:
            browser.close()


def _open_demo(browser, jupyterlab: str):
    """Open the demo notebook in JupyterLab and wait for its kernel; returns the page."""
    page = browser.new_page()
    page.set_default_timeout(60_000)
    page.goto(jupyterlab + "lab/tree/demo.ipynb")
    # the kernel exists only once the status bar names it; an earlier "Idle" leads to a dialog
    page.get_by_text(re.compile(r"\(ipykernel\) \| Idle")).wait_for()
    return page


def _run_cell(page, index: int) -> None:
    """Run the notebook's code cell ``index`` (Shift+Enter)."""
    page.locator(".jp-Cell .jp-InputArea-editor").nth(index).click()
    page.keyboard.press("Shift+Enter")


def _run_demo_cell(browser, jupyterlab: str, index: int):
    """Open the demo notebook in JupyterLab and run its code cell ``index``; returns the page."""
    page = _open_demo(browser, jupyterlab)
    _run_cell(page, index)
    return page


def test_play_advances_the_scrubber_in_jupyterlab(browser, jupyterlab):
    page = _run_demo_cell(browser, jupyterlab, 0)
    readout = page.locator(".widget-readout").first
    readout.wait_for()
    assert readout.inner_text().strip() == "0"
    frame = page.locator(".widget-html-content .td-frame").first
    assert "step 0 / 4" in frame.inner_text()
    page.locator(".widget-play button").first.click()
    page.wait_for_function(
        "() => [...document.querySelectorAll('.widget-html-content .td-head')]"
        ".some(e => /step [1-4] \\/ 4/.test(e.textContent))"
    )
    assert int(readout.inner_text()) >= 1
    assert (
        page.locator(".jp-OutputArea-output .td-frame").count() >= 1
    )  # the static final frame


# the step headers of the live panes (not the static snapshot) in the second code cell
PANE_HEADS = "document.querySelectorAll('.jp-CodeCell')[1].querySelectorAll('.widget-html-content .td-head')"


def test_play_advances_both_panes_of_the_compare_scrubber(browser, jupyterlab):
    page = _run_demo_cell(browser, jupyterlab, 1)  # the second cell only
    cell = page.locator(".jp-CodeCell").nth(1)
    readout = cell.locator(".widget-readout").first
    readout.wait_for()
    assert readout.inner_text().strip() == "0"
    page.wait_for_function(f"() => {PANE_HEADS}.length === 2")
    panes = cell.locator(".widget-html-content .td-frame")
    assert panes.count() == 2
    before = [panes.nth(i).inner_text() for i in range(2)]
    assert all("step 0 / 4" in text for text in before)
    cell.locator(".widget-play button").first.click()
    page.wait_for_function(
        f"() => [...{PANE_HEADS}].every(e => /step [1-4] \\/ 4/.test(e.textContent))"
    )
    assert int(readout.inner_text()) >= 1
    after = [panes.nth(i).inner_text() for i in range(2)]
    assert after[0] != before[0] and after[1] != before[1]  # both panes moved on
    assert after[0] != after[1]  # two different runs, side by side
    # the static snapshot: both runs side by side in one table
    assert cell.locator(".jp-OutputArea-output table .td-frame").count() == 2


def _halfway_contrasts(page) -> list[dict]:
    """Run the third cell (the side-by-side scrubber at step 2 of 4) and measure every token it shows."""
    _run_cell(page, 2)
    cell = page.locator(".jp-CodeCell").nth(2)
    cell.locator(".jp-OutputArea-output table .td-frame").nth(1).wait_for()  # the static snapshot, shown last
    heads = "document.querySelectorAll('.jp-CodeCell')[2].querySelectorAll('.widget-html-content .td-head')"
    page.wait_for_function(f"() => {heads}.length === 2")
    assert cell.locator(".widget-readout").first.inner_text().strip() == "2"  # the live slider starts half-way too
    assert all("step 2 / 4" in text for text in cell.locator(".widget-html-content .td-head").all_inner_texts())
    return cell.evaluate(CONTRAST_JS)


def _check_contrasts(contrasts: list[dict]) -> None:
    """Every word at least 4.5:1 against its background (WCAG AA text); a mask chip's glyph at least 3:1."""
    kinds = {c["cls"].split()[-1] for c in contrasts}
    assert {"td-new", "td-old", "td-given", "td-mask"} <= kinds, kinds  # revealed now, earlier, given, masked
    assert all(c["bg"] is not None for c in contrasts), "no opaque background up the tree"
    words = [c for c in contrasts if not c["cls"].endswith("td-mask")]
    low = [c for c in words if c["ratio"] < 4.5] + [c for c in contrasts if c["ratio"] < 3.0]
    assert not low, low


def test_words_contrast_with_their_background_in_the_light_theme(browser, jupyterlab):
    page = _open_demo(browser, jupyterlab)
    page.wait_for_function("() => document.body.dataset.jpThemeLight === 'true'")
    _check_contrasts(_halfway_contrasts(page))


def test_words_contrast_with_their_background_in_the_dark_theme(browser, jupyterlab_dark):
    page = _open_demo(browser, jupyterlab_dark)
    page.wait_for_function(f"() => document.body.dataset.jpThemeName === '{DARK_THEME}'")
    assert page.evaluate("document.body.dataset.jpThemeLight") == "false"
    contrasts = _halfway_contrasts(page)
    _check_contrasts(contrasts)
    revealed = [c for c in contrasts if c["cls"].endswith(("td-new", "td-old"))]
    assert all(c["color"] == "rgb(255, 255, 255)" for c in revealed)  # the dark theme's text colour
