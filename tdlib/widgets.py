"""Notebook widgets: thin ipywidgets shells over `tdlib.render`, `tdlib.tables` and `tdlib.plots`.

`DenoisingScrubber` plays a recorded trajectory, `CompareScrubber` plays several
side by side on one slider (the exact denoiser next to a network), `LiveLossView`
redraws the loss figures during training or while it follows another process's
run, `ScheduleExplorer`, `SamplingExplorer` and `MaskingExplorer` put sliders on a
schedule, the sampler's filter and the forward process.

A saved notebook keeps no widget state, so every widget also prints a static
snapshot of what it shows (`snapshot()`), under a caption: a reader who opens
the notebook without a kernel sees the picture, not a blank cell.

Each shell only wires controls to a pure renderer: every piece
of HTML comes from `tdlib.render` or `tdlib.tables`, every figure from `tdlib.plots`, so what a
widget shows is tested without a browser and is what the command line shows.

Following LLaDA's demo, a trajectory is recorded first by `tdlib.sample` and only
rendered here: no slider callback ever runs a model. This module does not train,
sample or render on its own; `masked_at_ratio` is `tdlib.masking.mask_tokens`
with a fixed seed.
"""

from __future__ import annotations

import time
from pathlib import Path

import ipywidgets as widgets
import torch
from IPython.display import HTML, display
from matplotlib.figure import Figure

from tdlib import plots, render, runlog, tables
from tdlib.draws import SAMPLINGS
from tdlib.masking import mask_tokens, protected_positions
from tdlib.runlog import FINAL_EVENTS, METRICS_FILE
from tdlib.sample import SamplerConfig, sampler_config
from tdlib.schedules import SCHEDULES

SNAPSHOT_CAPTION = "static snapshot of the widget above (what it shows now; visible without a running kernel)"


def snapshot_html(snapshot: str) -> str:
    """A widget's static HTML snapshot under the caption that says what it is, in the theme's colours."""
    caption = f'<div style="{render.themed(2, "#777")}font-size:85%;margin-top:4px">{SNAPSHOT_CAPTION}</div>'
    return caption + snapshot


def _show(widget, snapshot: str) -> None:
    """Display a live widget and, under it, its static HTML snapshot."""
    display(widget)
    display(HTML(snapshot_html(snapshot)))


# ---------------------------------------------------------------- trajectories


class DenoisingScrubber:
    """Play/scrub through a recorded trajectory; the final frame is also shown as static HTML."""

    def __init__(self, trajectory, tokenizer, *, sample: int | None = None, interval_ms: int = 400):
        self.trajectory = trajectory
        self.tokenizer = tokenizer
        self.sample = sample
        self.num_steps = len(trajectory.tokens) - 1
        self._frames: dict[int, str] = {}
        self.final_html = render.render_final_html(trajectory, tokenizer, sample)
        self.play = widgets.Play(
            value=0, min=0, max=self.num_steps, step=1, interval=interval_ms, description="play"
        )
        self.slider = widgets.IntSlider(
            value=0, min=0, max=self.num_steps, description="step", continuous_update=True
        )
        widgets.jslink((self.play, "value"), (self.slider, "value"))
        self.html = widgets.HTML(self.frame(0))
        self.slider.observe(self._on_step, names="value")
        self.widget = widgets.VBox([widgets.HBox([self.play, self.slider]), self.html])

    def frame(self, step: int) -> str:
        """The HTML of one step (rendered once, then cached)."""
        if step not in self._frames:
            self._frames[step] = render.render_step_html(
                self.trajectory, step, self.tokenizer, self.sample
            )
        return self._frames[step]

    @property
    def step(self) -> int:
        """The step on show."""
        return self.slider.value

    def set_step(self, step: int) -> None:
        """Show `step` (as if the slider were moved)."""
        self.slider.value = step

    def _on_step(self, change: dict) -> None:
        self.html.value = self.frame(change["new"])

    def snapshot(self) -> str:
        """Static HTML: the frame on show."""
        return self.frame(self.step)

    def _ipython_display_(self) -> None:
        display(HTML(self.final_html))
        _show(self.widget, self.snapshot())


class CompareScrubber:
    """Several trajectories (same prompt and seed, different denoisers or samplers) on one play/step slider.

    ``trajectories`` maps a label to a trajectory; ``tokenizers`` is one tokenizer
    for all or a dict by label. A trajectory with fewer steps stays on its last
    frame once the slider passes it.
    """

    def __init__(self, trajectories: dict, tokenizers, *, sample: int = 0, step: int = 0, interval_ms: int = 400):
        self.trajectories = dict(trajectories)
        self.tokenizers = tokenizers if isinstance(tokenizers, dict) else {k: tokenizers for k in self.trajectories}
        self.sample = sample
        self.num_steps = max(len(t.tokens) - 1 for t in self.trajectories.values())
        # the play button starts at `step` too: in the browser the link sets the slider to the button's value
        self.play = widgets.Play(value=step, min=0, max=self.num_steps, step=1, interval=interval_ms, description="play")
        self.slider = widgets.IntSlider(value=step, min=0, max=self.num_steps, description="step")
        widgets.jslink((self.play, "value"), (self.slider, "value"))
        self._frames: dict[int, dict[str, str]] = {}
        self.panes = {label: widgets.HTML() for label in self.trajectories}
        self.slider.observe(self._update, names="value")
        self._update()
        columns = [widgets.VBox([widgets.HTML(f"<b>{label}</b>"), pane], layout=widgets.Layout(width="50%"))
                   for label, pane in self.panes.items()]
        self.widget = widgets.VBox([widgets.HBox([self.play, self.slider]), widgets.HBox(columns)])

    @property
    def step(self) -> int:
        """The step on show."""
        return self.slider.value

    def set_step(self, step: int) -> None:
        """Show `step` in every pane (as if the slider were moved)."""
        self.slider.value = step

    def frames(self, step: int) -> dict[str, str]:
        """Each trajectory's HTML at `step` (its last frame if it has fewer steps), rendered once, then cached."""
        if step not in self._frames:
            self._frames[step] = {
                label: render.render_step_html(t, min(step, len(t.tokens) - 1), self.tokenizers[label], self.sample)
                for label, t in self.trajectories.items()}
        return self._frames[step]

    def _update(self, change: dict | None = None) -> None:
        for label, html in self.frames(self.slider.value).items():
            self.panes[label].value = html

    def snapshot(self) -> str:
        """Static HTML: the panes at the step on show, side by side."""
        cells = "".join(f'<td style="vertical-align:top;width:50%"><b>{label}</b>{html}</td>'
                        for label, html in self.frames(self.step).items())
        return f"<table><tr>{cells}</tr></table>"

    def _ipython_display_(self) -> None:
        _show(self.widget, self.snapshot())


# ---------------------------------------------------------------- training metrics




class LiveLossView:
    """A training callback that shows progress and redraws the loss figures at each evaluation."""

    def __init__(self, *, log_scale: bool = False):
        self.records: list[dict] = []
        self.log_scale = log_scale
        self.status = widgets.HTML("waiting for the first metrics record")
        self.image = widgets.Image(format="png")
        self.widget = widgets.VBox([self.status, self.image])

    def __call__(self, record: dict) -> None:
        """Take one metrics record (as written to metrics.jsonl)."""
        self.records.append(dict(record))
        if "loss" in record:
            speed = (
                f" &middot; {record['tokens_per_s']:.0f} tokens/s"
                if "tokens_per_s" in record
                else ""
            )
            self.status.value = f"step {record['step']} &middot; loss {record['loss']:.4f}{speed}"
        if "eval_loss_by_ratio" in record:
            nelbo = record.get("nelbo_bits_per_char")
            suffix = f" &middot; NELBO {nelbo:.3f} bits/char" if nelbo is not None else ""
            self.status.value = f"step {record['step']} &middot; evaluated{suffix}"
            self.redraw()
        if record.get("event") in FINAL_EVENTS:
            self.status.value = f"step {record['step']} &middot; {record['event']}"
            self.redraw()

    def figure(self) -> Figure:
        """Training loss and eval loss by mask ratio for the records so far."""
        return plots.run_summary_figure(self.records, log_scale=self.log_scale)

    def redraw(self) -> None:
        """Draw the figure into the image widget."""
        self.image.value = plots.figure_png(self.figure())

    @classmethod
    def from_run(cls, run_dir: str | Path, *, log_scale: bool = False) -> LiveLossView:
        """A view filled with the records of a finished (or running) run."""
        view = cls(log_scale=log_scale)
        view.records.extend(runlog.read_metrics(run_dir))
        view.redraw()
        return view

    def follow(self, run_dir: str | Path, *, timeout_s: float = 180.0, poll_s: float = 5.0, process=None) -> str:
        """Watch another process's run: take each new record of its ``metrics.jsonl`` as it is written.

        Returns ``"finished"`` at the run's last record, ``"exited"`` if ``process``
        (a `subprocess.Popen`) ended without one, or ``"timeout"`` after
        ``timeout_s`` seconds; the run goes on training in its own process.
        """
        metrics = Path(run_dir) / METRICS_FILE
        start = time.monotonic()
        while True:
            new = runlog.read_metrics(metrics)[len(self.records):] if metrics.is_file() else []
            for record in new:
                self(record)
            if runlog.finished(self.records):
                return "finished"
            if process is not None and process.poll() is not None and not new:
                return "exited"
            if time.monotonic() - start >= timeout_s:
                self.status.value += " &middot; still training (stopped watching)"
                return "timeout"
            time.sleep(poll_s)

    def snapshot(self) -> str:
        """Static HTML: the status line and the figure of the records so far."""
        if not self.records:
            return self.status.value
        return f"{self.status.value}<br>{plots.figure_html(self.figure())}"

    def _ipython_display_(self) -> None:
        display(self.widget)


# ---------------------------------------------------------------- schedules


class ScheduleExplorer:
    """Pick a schedule, a number of steps and of masked tokens; see the counts per step."""

    def __init__(self, schedule: str = "cosine", num_steps: int = 16, num_masked: int = 64):
        self.schedule = widgets.Dropdown(
            options=list(SCHEDULES), value=schedule, description="schedule"
        )
        self.num_steps = widgets.IntSlider(value=num_steps, min=1, max=64, description="steps")
        self.num_masked = widgets.IntSlider(value=num_masked, min=0, max=256, description="masked")
        self.table = widgets.HTML()
        self.image = widgets.Image(format="png")
        for control in (self.schedule, self.num_steps, self.num_masked):
            control.observe(self._update, names="value")
        self._update()
        controls = widgets.HBox([self.schedule, self.num_steps, self.num_masked])
        self.widget = widgets.VBox([controls, widgets.HBox([self.image, self.table])])

    def _update(self, change: dict | None = None) -> None:
        schedule, steps, masked = self.schedule.value, self.num_steps.value, self.num_masked.value
        self.table.value = tables.schedule_table_html(schedule, steps, masked)
        self.image.value = plots.figure_png(
            plots.schedule_figure([schedule], steps, masked), dpi=70
        )

    def snapshot(self) -> str:
        """Static HTML: the table and the figure on show."""
        figure = plots.schedule_figure([self.schedule.value], self.num_steps.value, self.num_masked.value)
        return plots.figure_html(figure, dpi=70) + self.table.value

    def _ipython_display_(self) -> None:
        _show(self.widget, self.snapshot())


# ---------------------------------------------------------------- sampling


class SamplingExplorer:
    """The sampler's modes over one distribution: see which tokens greedy, top-k or nucleus keep."""

    def __init__(self, logits_or_probs, tokenizer, config: SamplerConfig | None = None, *,
                 kind: str = "auto", num_candidates: int = 12, **options):
        """Sliders start at ``config`` (default: nucleus, top-p 0.9, top-k 10), its fields
        overridden by ``options`` given by name."""
        self.logits = tables.as_logits(logits_or_probs, kind)  # (V,)
        self.tokenizer = tokenizer
        self.num_candidates = num_candidates
        vocab = self.logits.numel()
        start = sampler_config(config or SamplerConfig(sampling="nucleus", top_k=min(10, vocab)),
                               **options)
        self.sampling = widgets.Dropdown(options=list(SAMPLINGS), value=start.sampling,
                                         description="sampling")
        self.temperature = widgets.FloatSlider(value=start.temperature, min=0.05, max=3.0,
                                               step=0.05, description="temperature")
        self.top_k = widgets.IntSlider(value=min(start.top_k, vocab, 100), min=1,
                                       max=min(vocab, 100), description="top-k")
        self.top_p = widgets.FloatSlider(value=start.top_p, min=0.05, max=1.0, step=0.01,
                                         description="top-p")
        self.html = widgets.HTML()
        for control in (self.sampling, self.temperature, self.top_k, self.top_p):
            control.observe(self._update, names="value")
        self._update()
        controls = widgets.HBox([self.sampling, self.temperature, self.top_k, self.top_p])
        self.widget = widgets.VBox([controls, self.html])

    def _update(self, change: dict | None = None) -> None:
        mode = self.sampling.value
        self.temperature.disabled = mode == "greedy"
        self.top_k.disabled = mode != "topk"
        self.top_p.disabled = mode != "nucleus"
        config = SamplerConfig(sampling=mode, temperature=self.temperature.value,
                               top_k=self.top_k.value, top_p=self.top_p.value)
        self.html.value = tables.sampling_table_html(
            self.logits, self.tokenizer, config, num_candidates=self.num_candidates
        )

    def snapshot(self) -> str:
        """Static HTML: the candidate table on show."""
        return self.html.value

    def _ipython_display_(self) -> None:
        _show(self.widget, self.snapshot())


# ---------------------------------------------------------------- masking


def masked_at_ratio(
    x0: torch.Tensor, t: float, mask_id: int, protected: torch.Tensor | None = None, seed: int = 0
) -> tuple[torch.Tensor, torch.Tensor]:
    """`tdlib.masking.mask_tokens` with a freshly seeded generator: the masked set grows with t."""
    # the same uniforms for every t, so the masked sets are nested
    generator = torch.Generator().manual_seed(seed)
    return mask_tokens(x0, t, mask_id, protected, generator)


class MaskingExplorer:
    """A mask-ratio slider over a sentence: the forward process, one fixed random order."""

    def __init__(
        self, text: str, tokenizer, *, ratio: float = 0.5, prefix_length: int = 0, seed: int = 0
    ):
        self.tokenizer = tokenizer
        self.seed = seed
        self.x0 = torch.as_tensor([tokenizer(text)["input_ids"]])  # (1, L)
        self.protected = protected_positions(
            self.x0, tokenizer, prefix_length=prefix_length
        )  # (1, L)
        self.ratio = widgets.FloatSlider(
            value=ratio, min=0.0, max=1.0, step=0.05, description="mask ratio t"
        )
        self.html = widgets.HTML()
        self.ratio.observe(self._update, names="value")
        self._update()
        self.widget = widgets.VBox([self.ratio, self.html])

    def render(self, t: float) -> str:
        """HTML of the sentence masked at ratio `t`."""
        mask_id = self.tokenizer.mask_token_id
        xt, masked = masked_at_ratio(self.x0, t, mask_id, self.protected, self.seed)  # (1, L) each
        return render.masking_html(self.tokenizer, xt[0], masked[0], self.protected[0], t)

    def _update(self, change: dict | None = None) -> None:
        self.html.value = self.render(self.ratio.value)

    def snapshot(self) -> str:
        """Static HTML: the sentence at the ratio on show."""
        return self.html.value

    def _ipython_display_(self) -> None:
        _show(self.widget, self.snapshot())
