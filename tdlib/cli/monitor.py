"""`tdlib monitor RUN_DIR`: progress, speed, ETA and the latest loss per mask ratio of a run.

It only reads ``metrics.jsonl`` (through `tdlib.runlog`); it works while the
run is going (``--follow`` refreshes until the run ends: a final model, a stop
such as SIGTERM, or Ctrl-C) and after it ended (``--plot`` writes the per-ratio
loss curves; only that option imports matplotlib).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from tdlib import runlog
from tdlib.errors import require


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Flags of `tdlib monitor`."""
    parser.add_argument("run_dir", metavar="RUN_DIR", help="a training run directory (holds metrics.jsonl)")
    parser.add_argument("--follow", action="store_true", help="refresh until the run ends (Ctrl-C to stop)")
    parser.add_argument("--interval", type=float, default=5.0, help="seconds between refreshes with --follow")
    parser.add_argument("--plot", metavar="FILE.png", help="write training loss and loss-per-ratio curves")


def _fmt_seconds(seconds: float) -> str:
    seconds = int(max(seconds, 0))
    h, rest = divmod(seconds, 3600)
    m, s = divmod(rest, 60)
    return f"{h}:{m:02d}:{s:02d}" if h else f"{m}:{s:02d}"


def summarize(records: list[dict]) -> str:
    """A few lines describing the state of a run from its metrics records."""
    starts = runlog.events(records, (runlog.START, runlog.RESUME))
    max_steps = starts[-1].get("max_steps") if starts else None
    trains, evals = runlog.train_records(records), runlog.eval_records(records)
    ended = runlog.finished(records)
    step = max((r["step"] for r in records), default=0)
    lines = []
    config = next((r.get("config") or {} for r in runlog.events(records, (runlog.START,))), {})
    budget = config.get("time_budget_s") if config.get("lr_over_time") else None  # a run that ends by the clock
    head = f"step {step}" + (f"/{max_steps} ({100 * step / max_steps:.0f}%)" if max_steps else "")
    if ended:
        last_event = runlog.events(records)[-1]["event"]
        head += "  finished" if last_event == runlog.END else f"  {last_event} (continue with tdlib train --resume)"
    lines.append(head)
    if trains:
        last = trains[-1]
        speed = last.get("tokens_per_s", float("nan"))
        elapsed = last.get("elapsed_s")
        line = f"loss {last['loss']:.4f}  lr {last.get('lr', float('nan')):.2e}  {speed:,.0f} tokens/s"
        if elapsed and last["step"] and max_steps and not ended:
            first = trains[0]
            rate = (last["elapsed_s"] - first.get("elapsed_s", 0)) / max(last["step"] - first["step"], 1)
            line += f"  {rate:.2f} s/step  ETA {_fmt_seconds(rate * (max_steps - step))}"
        elif elapsed and budget and not ended:
            line += (f"  {100 * elapsed / budget:.0f}% of the {_fmt_seconds(budget)} budget"
                     f"  ETA {_fmt_seconds(budget - elapsed)}")
        lines.append(line)
    if evals:
        last = evals[-1]
        lines.append(f"eval at step {last['step']}: NELBO {last['nelbo_bits_per_char']:.3f} bits/char")
        by_ratio = sorted(((float(k), v) for k, v in last["eval_loss_by_ratio"].items()), reverse=True)
        lines.append("  ratio " + " ".join(f"{t:>6.2f}" for t, _ in by_ratio))
        lines.append("  loss  " + " ".join(f"{v:>6.3f}" for _, v in by_ratio))
    nll = [r for r in records if "nll_bits_per_char" in r]
    if nll:
        lines.append(f"eval at step {nll[-1]['step']}: NLL {nll[-1]['nll_bits_per_char']:.3f} bits/char (causal)")
    if len(lines) == 1 and not trains:
        lines.append("no training step logged yet")
    return "\n".join(lines)


NUMBERS = ("loss", "lr", "tokens_per_s", "elapsed_s", "max_steps", "nelbo_bits_per_char", "nll_bits_per_char")


def _is_number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _is_record(r) -> bool:
    """Whether ``r`` has the shape `summarize` reads (a step, numbers where numbers belong)."""
    if not (isinstance(r, dict) and isinstance(r.get("step"), int) and all(_is_number(r[k]) for k in NUMBERS if k in r)):
        return False
    by_ratio = r.get("eval_loss_by_ratio", {})
    try:
        return isinstance(by_ratio, dict) and all(_is_number(v) and float(k) >= 0 for k, v in by_ratio.items())
    except ValueError:
        return False


def read_records(run_dir: Path) -> list[dict]:
    """The run's metrics records; a file that is not tdlib metrics is a `UserError`, not a crash."""
    records = runlog.read_metrics(run_dir)
    for number, record in enumerate(records, start=1):
        require(_is_record(record), f"record {number} of the metrics of {run_dir} is not a tdlib metrics record: "
                                  f"{json.dumps(record)[:80]}")
    return records


def run(args: argparse.Namespace) -> int:
    """Print the summary (repeatedly with --follow) and write the plot if asked."""
    run_dir = Path(args.run_dir)
    require(run_dir.exists(), f"{run_dir} does not exist; pass the --output-dir of a training run")
    require(args.interval > 0, "--interval must be > 0")
    if args.plot:
        require(args.plot.lower().endswith(".png"), f"--plot needs a .png file name, got {args.plot!r}")
    while True:
        if args.follow and not (run_dir / runlog.METRICS_FILE).exists():
            print("waiting for the run to write metrics.jsonl ...", flush=True)
            time.sleep(args.interval)
            continue
        records = read_records(run_dir)
        print(summarize(records), flush=True)
        if not args.follow or runlog.finished(records):
            break
        time.sleep(args.interval)
        print()
    if args.plot:
        from tdlib.plots import run_summary_figure, save_figure  # matplotlib: only for --plot

        save_figure(run_summary_figure(records), args.plot)
        print(f"wrote {args.plot}")
    return 0
