"""``oculi compare RUN RUN ...``: finished runs side by side, from their run folders (``read_run``).

One table (data, model, parameters, the held-out scores, training time, images/s), the val curves of
every run overlaid (against epoch and against wall time), and the settings in which the runs differ:
in the terminal (the table) and as ``compare.html``, a self-contained page like report.html. A score a
run did not measure (ECE in runs made before calibration was measured) is "—".
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

from ..errors import OculiError
from ..io import atomic_write_text
from ..metrics import headline_figures
from ..pages import paragraph, table_html
from .build import RunFiles, read_run, training_seconds
from .html import Section, figure_html, render_page

MISSING = "—"
HEADERS = ["run", "data", "model", "parameters", "split", "accuracy", "macro-F1", "log loss", "ECE",
           "training time", "images/s"]
_LINESTYLE = {"features": "--"}  # the head on cached features; every other phase solid


@dataclass
class ComparedRun:
    """A run folder as the comparison shows it: ``name`` tells it apart from the others."""

    name: str
    files: RunFiles
    parameters: int  # all of the model's parameters (trained or frozen)

    @property
    def history(self) -> list[dict]:
        return self.files.history


def load_runs(paths: list[str | Path]) -> list[ComparedRun]:
    """Each run folder, read; one that is not a finished run is a one-line OculiError naming it."""
    from ..runtime.bundle import load_bundle
    files = [read_run(p) for p in paths]
    names = run_names([f.run_dir for f in files])
    runs = []
    for name, f in zip(names, files):
        model, _ = load_bundle(f.run_dir)
        runs.append(ComparedRun(name, f, sum(p.numel() for p in model.parameters())))
    return runs


def run_names(folders: list[Path]) -> list[str]:
    """The folders' names; where two share one, their parents' names too (runs/a/run, runs/b/run)."""
    names = [f.name for f in folders]
    return [f"{f.parent.name}/{f.name}" if names.count(f.name) > 1 else f.name for f in folders]


# ---------------------------------------------------------------- the table

def table_rows(runs: list[ComparedRun]) -> list[list[str]]:
    """One row of HEADERS per run, as text."""
    return [_row(run) for run in runs]


def _row(run: ComparedRun) -> list[str]:
    meta, metrics = run.files.meta, run.files.metrics
    scores = headline_figures(metrics)
    seconds = training_seconds(run.history)
    speed = images_per_second(run.history)
    model = f"{meta['model']['name']} ({meta.get('training', '?')})"
    return [run.name, _data(run.files), model, _count(run.parameters),
            metrics.get("split", MISSING), _fmt(scores["accuracy"], "{:.2%}"), _fmt(scores["macro_f1"], "{:.4f}"),
            _fmt(scores["log_loss"], "{:.4f}"), _fmt(scores["ece"], "{:.4f}"), _fmt(seconds, "{:.1f} s"),
            _fmt(speed, "{:,.0f}")]


def _data(run: RunFiles) -> str:
    """The data set's name, with the filter its images went through (the same images, seen otherwise)."""
    name = run.meta.get("data", run.config.data)
    image_filter = run.meta.get("preprocessing", {}).get("filter")
    return f"{name} + {image_filter}" if image_filter else name


def _count(n: int) -> str:
    """59,130 -> 59.1k; 3,373,570 -> 3.37M: three figures are enough to compare sizes."""
    for size, unit in ((1e9, "G"), (1e6, "M"), (1e3, "k")):
        if n >= size:
            return f"{n / size:.3g}{unit}"
    return str(n)


def _fmt(value, spec: str) -> str:
    return MISSING if value is None else spec.format(value)


def images_per_second(history: list[dict]) -> float | None:
    """Training speed: the median epoch's images per second, over the epochs that trained on images (a
    head on cached feature vectors sees no image; a features-only run has None)."""
    rates = [r["images_per_s"] for r in history if r.get("phase") != "features" and r.get("images_per_s")]
    return float(np.median(rates)) if rates else None


def differing_settings(runs: list[ComparedRun]) -> list[list[str]]:
    """[setting, value in each run] for every setting of config.json in which the runs differ, of those
    that change what a run learns."""
    configs = [run.files.config.to_dict() for run in runs]
    keys = [k for k in configs[0] if k not in _NOT_COMPARED]
    return [[k, *(_setting(c.get(k)) for c in configs)] for k in keys
            if len({repr(c.get(k)) for c in configs}) > 1]


# Where a run writes, what it shows and where it logs: not what it learns.
_NOT_COMPARED = ("out", "progress", "report", "cache", "split_manifest", "log", "mlflow_uri")


def _setting(value) -> str:
    if value is None:
        return MISSING
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


# ---------------------------------------------------------------- the curves

PANELS = [(key, x) for x in ("epoch", "time") for key in ("val_acc", "val_loss")]
_NAMES = {"val_acc": "val accuracy", "val_loss": "val loss"}


def plot_run_curves(runs: list[ComparedRun], key: str = "val_acc", x: str = "epoch") -> Figure:
    """``key`` (val_acc or val_loss) of every run, against its epochs (``x`` "epoch": counted over all its
    phases, the features head's first) or against wall time from its first epoch's start ("time").
    Dashed: a head on cached features."""
    fig = Figure(figsize=(5.2, 4.4), layout="constrained")  # two fit side by side on a laptop's page
    ax = fig.subplots()
    for i, run in enumerate(runs):
        rows = run.history
        xs = np.arange(1, len(rows) + 1) if x == "epoch" else _wall_clock(rows)
        y = np.array([np.nan if r.get(key) is None else float(r[key]) for r in rows])
        for n, segment in enumerate(_phase_segments(rows)):
            ax.plot(xs[segment], y[segment], color=f"C{i % 10}", ls=_LINESTYLE.get(rows[segment[-1]].get("phase"), "-"),
                    marker="o" if len(rows) <= 40 else None, ms=3, label=run.name if n == 0 else None)
    if any(r.get("phase") in _LINESTYLE for run in runs for r in run.history):
        ax.plot([], [], color="gray", ls="--", label="head on cached features")
    ax.set_title(f"{_NAMES[key]} per {'epoch' if x == 'epoch' else 'second of training'}")
    ax.set_ylabel(_NAMES[key])
    ax.set_xlabel("epoch" if x == "epoch" else "wall time from the first epoch's start (s)")
    if x == "epoch":
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.grid(alpha=0.3)
    ax.legend(loc="best", fontsize="small")
    return fig


def _wall_clock(rows: list[dict]) -> np.ndarray:
    """Each epoch's end, in seconds from the first epoch's start (NaN where a row has no time)."""
    if not rows or rows[0].get("time") is None:
        return np.full(len(rows), np.nan)
    start = rows[0]["time"] - rows[0].get("seconds", 0)
    return np.array([np.nan if r.get("time") is None else r["time"] - start for r in rows])


def _phase_segments(rows: list[dict]) -> list[np.ndarray]:
    """Indices of each run of consecutive rows of one phase; a segment after the first starts at the
    previous one's last point, so that the line stays joined."""
    segments, start = [], 0
    for i in range(1, len(rows) + 1):
        if i == len(rows) or rows[i].get("phase") != rows[start].get("phase"):
            segments.append(np.arange(max(start - 1, 0), i))
            start = i
    return segments


def plot_score_time(runs: list[ComparedRun]) -> Figure:
    """Each run's best val accuracy against its training time: one point a run, named (oculi tune's trials)."""
    fig = Figure(figsize=(6.4, 4.4), layout="constrained")
    ax = fig.subplots()
    points = {}
    for run in runs:
        scores = [r["val_acc"] for r in run.history if r.get("val_acc") is not None]
        seconds = training_seconds(run.history)
        if scores and seconds is not None:
            points[run.name] = (seconds, max(scores))
    for i, (name, (seconds, score)) in enumerate(points.items()):
        ax.scatter([seconds], [score], color=f"C{i % 10}")
        # Only the runs no other run beats on both axes are named: a search's dozens of trials at one score
        # would write their names over each other (every name is in the table above).
        if not any(t <= seconds and v >= score and (t, v) != (seconds, score) for t, v in points.values()):
            ax.annotate(name, (seconds, score), fontsize="small", xytext=(4, 4), textcoords="offset points")
    ax.set_title("best val accuracy against training time")
    ax.set_xlabel("training time (s)")
    ax.set_ylabel("best val accuracy")
    ax.grid(alpha=0.3)
    return fig


# ---------------------------------------------------------------- the page

def write_comparison(paths: list[str | Path], out: str | Path = "compare.html") -> tuple[Path, list[list[str]]]:
    """Write the comparison page of the runs at ``paths`` to ``out`` (a folder: compare.html in it); returns
    its path and the table's rows (for the terminal)."""
    if not paths:
        raise OculiError("compare: give the run folders to compare")
    runs = load_runs(paths)
    rows = table_rows(runs)
    out = Path(out).expanduser()
    if out.is_dir():
        out = out / "compare.html"
    try:
        atomic_write_text(out, comparison_page(runs, rows))
    except OSError as err:
        raise OculiError(f"--out {out}: cannot write it ({err.strerror or err})") from None
    return out, rows


def comparison_page(runs: list[ComparedRun], rows: list[list[str]]) -> str:
    sections = [Section("runs", "Runs", _runs_body(rows)), Section("curves", "Curves", _curves_body(runs)),
                Section("score-time", "Score against time",
                        figure_html(plot_score_time(runs), "best val accuracy of every run against its training time")
                        + paragraph(_SCORE_TIME_NOTE))]
    settings = differing_settings(runs)
    body = (table_html(["setting", *(r.name for r in runs)], settings, numeric_from=len(runs) + 1) if settings
            else paragraph("None: every setting in config.json is the same."))
    sections.append(Section("settings", "Settings that differ", body))
    facts = [(f"{row[0]}: {row[4]} accuracy", row[5]) for row in rows[:8]]
    subtitle = ", ".join(run.name for run in runs)
    return render_page(f"oculi: {len(runs)} runs compared", subtitle, facts, sections,
                       footer="Made by oculi. Rebuild with <code>oculi compare RUN RUN ...</code>.")


def _curves_body(runs: list[ComparedRun]) -> str:
    figures = "".join(figure_html(plot_run_curves(runs, key, x), f"{_NAMES[key]} of every run per {x}")
                      for key, x in PANELS)
    dashed = any(r.get("phase") in _LINESTYLE for run in runs for r in run.history)
    return (paragraph("The val split of each run, after each epoch." + (_DASHED_NOTE if dashed else ""))
            + f'<div class="charts">{figures}</div>')


def _runs_body(rows: list[list[str]]) -> str:
    """The table turned a quarter: a column per run, as in the settings below, so that a few runs fit a
    laptop's page (eleven columns would not)."""
    names, *columns = [list(c) for c in zip(*rows)]
    return table_html(["", *names], [[h, *c] for h, c in zip(HEADERS[1:], columns)],
                      numeric_from=len(rows) + 1) + paragraph(_TABLE_NOTE)


_TABLE_NOTE = (
    "Scores on each run's held-out split (test, or val when a run had no test split): accuracy, the mean of "
    "the per-class F1 scores, log loss and the expected calibration error of the probabilities it gives. "
    "Training time runs from the first epoch's start to the last epoch's end: a features run's one pass of "
    "the frozen backbone comes before it. Images/s is the median epoch's training speed on images (a head "
    "trained on cached features sees none). — : the run did not record that figure (runs made before "
    "ECE was measured have none).")
_SCORE_TIME_NOTE = ("Each run's best val accuracy (of its epochs) against its training time: up and left is "
                    "better; the runs no other run beats on both are named. A features run's time leaves out its one pass of "
                    "the frozen backbone.")
_DASHED_NOTE = (" Dashed: the head trained on cached backbone features, before fine-tuning (or alone, in a "
                "features run); its epochs take milliseconds each.")
