"""``report.html``: one run on one page, from the files in its run folder.

Everything comes from what the run saved (config.json, model.json and its weights, metrics.jsonl,
test_metrics.json, test_predictions.csv, split.csv, skipped_files.csv), plus the few images the page
shows, read again from the data. So ``oculi report RUN`` rebuilds the same page any time later; when the
data has moved away, the sections that need images say so and the rest is still there.
"""

from __future__ import annotations

import json
from html import escape
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn

from ..check.run import leak_free_words
from ..config import TrainConfig
from ..console import Reporter
from ..data.sources import DataSource, open_configured
from ..data.split import Record, named_record, read_manifest
from ..data.transforms import Augmentation, Preprocessing
from ..errors import OculiError
from ..io import atomic_write_text
from ..models.cut import bottom_children
from ..models.summary import layer_rows
from ..pages import paragraph, table_html
from ..plan import Plan
from ..route import legacy_part, part_words
from ..rundir import RunDir
from .html import Section, figure_html, image_tile, render_page, tiles_html
from .label_sets import (label_set_explain_section, label_set_facts, label_set_metrics_section,
                         label_set_predictions_section)
from .rows import load_rows, sample_rows

SAMPLES_PER_CLASS = 8
MAX_SAMPLE_CLASSES = 20  # rows of the per-class sample grid
GRID_IMAGES = 24  # test images in the right/wrong grid
BAR_IMAGES = 4  # images with a probability chart
MISTAKES = 12  # most confident mistakes shown
MAX_SKIPPED_ROWS = 50
MAX_CHECK_PAIRS = 12  # duplicate pairs drawn in the data check section


@dataclass
class RunFiles:
    """What a finished run folder holds, parsed."""

    run_dir: Path
    config: TrainConfig
    augmentation: Augmentation | None | str  # the plan's; a str says why it is not known
    meta: dict  # model.json
    history: list[dict]  # metrics.jsonl, one row per epoch of every phase
    metrics: dict  # test_metrics.json
    predictions: list[dict]  # test_predictions.csv: path, true, predicted, confidence
    skipped: list[list[str]]  # skipped_files.csv: path, reason
    split: list[tuple[str, str, str]]  # split.csv: path, class, split


def read_run(run_dir: str | Path) -> RunFiles:
    """Parse a finished run folder; a missing or unreadable file is named in a one-line error."""
    run = RunDir(Path(run_dir).expanduser())
    if not run.model_json.is_file():
        raise OculiError(f"{run.path}: not a finished oculi run (no {run.model_json.name})")
    try:
        saved = run.read_config()
        config = TrainConfig.from_dict(saved["config"])
        return RunFiles(run.path, config, _saved_augmentation(saved), run.read_json(run.model_json),
                        run.read_metrics_log(), run.read_json(run.test_metrics), run.read_csv(run.test_predictions),
                        [list(r.values()) for r in run.read_csv(run.skipped)], read_manifest(run.split))
    except (json.JSONDecodeError, KeyError, TypeError) as err:
        raise OculiError(f"{run.path}: a run file is damaged ({type(err).__name__}: {err})") from None


def _saved_augmentation(saved: dict) -> Augmentation | None | str:
    """The augmentation the run's plan recorded (None: none), or why it is not known."""
    if "augmentation" not in saved:
        return (f"Not recorded: this run was made by oculi {saved.get('oculi_version', '?')}, before runs "
                f"saved their augmentation.")
    return Plan.from_dict(saved).augmentation


# ---------------------------------------------------------------- images of the run

def is_multi_label(run: RunFiles) -> bool:
    return run.meta["model"]["head"] == "multilabel"


def split_record(path: str, names: str, split: str, classes: list[str], multi_label: bool) -> Record:
    """The record of a split.csv or test_predictions.csv row: its class, or its label set (names joined by ';')."""
    return named_record(path, names, split, classes, multi_label, "the run's split manifest")


class RunImages:
    """Reads the run's images again, by path, through the bundle's preprocessing (what the model saw)."""

    def __init__(self, run: RunFiles, preprocessing: Preprocessing, source: DataSource | None = None):
        self.preprocessing = preprocessing
        self.unavailable = ""
        if source is None:
            try:
                cfg = run.config
                source = open_configured(cfg, split_manifest=str(RunDir(run.run_dir).split))
            except OculiError as err:
                self.unavailable = f"The images could not be read again ({err}); this section needs them."
        self.source = source
        self.classes = source.classes if source else list(run.meta["classes"])
        self.multi_label = is_multi_label(run)

    def record(self, path: str, class_name: str, split: str) -> Record:
        return split_record(path, class_name, split, self.classes, self.multi_label)

    def load(self, records: list[Record]) -> tuple[torch.Tensor, list[Record]]:
        """Prepared uint8 images [N, C, H, W] of the readable ``records``, and those records."""
        from ..data.loading import load_split
        skipped: list = []
        images = load_split(self.source, records, self.preprocessing, skipped)
        bad = {path for path, _ in skipped}
        return images.images, [r for r in records if r.path not in bad]

    def raw(self, record: Record) -> torch.Tensor:
        """One image as decoded, before preprocessing."""
        return self.source.read(record, channels=self.preprocessing.channels)


# ---------------------------------------------------------------- the page

def write_report(run_dir: str | Path, source: DataSource | None = None, reporter=None) -> Path:
    """Build ``report.html`` in ``run_dir`` (``source``: the run's data, when the caller has it open)."""
    from ..deploy.predict import Classifier
    run = read_run(run_dir)
    classifier = Classifier.load(run.run_dir, device="cpu")
    images = RunImages(run, classifier.preprocessing, source)
    builders = [data_section, check_section, augmentation_section, model_section, training_section, metrics_section,
                trust_section, predictions_section, explain_section]
    if is_multi_label(run):  # label sets: their scores, thresholds and images in place of one class's
        builders = [*builders[:5], label_set_metrics_section, label_set_predictions_section, label_set_explain_section]
    sections = []
    with _bar(reporter, len(builders)) as advance:
        for build in builders:
            section = build(run, classifier, images)
            if section is not None:
                sections.append(section)
            advance(1)
    page = render_page(f"oculi run: {run.run_dir.name}", _subtitle(run), _facts(run), sections)
    path = RunDir(run.run_dir).report
    atomic_write_text(path, page)
    return path


def _bar(reporter, total: int):
    return (reporter or Reporter(quiet=True)).bar("writing report.html", total)


def _subtitle(run: RunFiles) -> str:
    meta = run.meta
    return (f"{meta['model']['name']} on {meta.get('data', run.config.data)}, "
            f"{len(meta['classes'])} classes; oculi {meta.get('oculi_version', '?')}")


def _facts(run: RunFiles) -> list[tuple[str, str]]:
    m = run.metrics
    facts = label_set_facts(m) if is_multi_label(run) else [(f"{m['split']} accuracy", f"{m['accuracy']:.2%}"), (f"top-{m['top_k']} accuracy", f"{m['top_k_accuracy']:.2%}"),
             ("log loss", f"{m['log_loss']:.4f}"), (f"{m['split']} images", f"{m['n']:,}")]
    seconds = training_seconds(run.history)
    if seconds is not None:
        facts.append(("training time", f"{seconds:.0f} s"))
    return facts


def training_seconds(history: list[dict]) -> float | None:
    """From the first epoch's start to the last one's end (None: the rows hold no times)."""
    if not (history and history[-1].get("time") and history[0].get("time")):
        return None
    return history[-1]["time"] - history[0]["time"] + history[0].get("seconds", 0)


# ---------------------------------------------------------------- data

def data_section(run: RunFiles, classifier, images: RunImages) -> Section:
    from ..plots import plot_class_counts
    classes = list(run.meta["classes"])
    # What the run used (split.csv), counted as the data source counts: readable even if the data moved.
    multi = is_multi_label(run)
    used = DataSource(run.config.data, classes, [split_record(p, c, s, classes, multi) for p, c, s in run.split])
    counts = used.class_counts()
    sizes = ", ".join(f"{sum(c.values()):,} {s}" for s, c in counts.items())
    body = [paragraph(f"{run.meta.get('data', run.config.data)}: {len(classes)} classes, {sizes} images "
                      f"(read at {_size(classifier.preprocessing)})."),
            figure_html(plot_class_counts(counts), "bar chart of images per class and split")]
    body.append("<h3>Training images of each class</h3>")
    if images.unavailable:
        body.append(paragraph(images.unavailable))
    else:
        shown = classes[:MAX_SAMPLE_CLASSES]
        records = [images.record(p, c, s) for p, c, s in run.split if s == "train" and c in shown]
        picked = _first_per_class(records, SAMPLES_PER_CLASS)
        pixels, picked = images.load(picked)
        more = f" (the first {len(shown)} of {len(classes)} classes)" if len(classes) > len(shown) else ""
        body.append(paragraph(f"As the model sees them{more}:") + _class_rows(pixels, picked, images.classes))
    body.append("<h3>Skipped files</h3>")
    body.append(_skipped_html(run.skipped))
    return Section("data", "Data", "".join(body))


def check_section(run: RunFiles, classifier, images: RunImages) -> Section | None:
    """The data check of the run's start (check.json): its warnings and the copies it found, each beside
    the image it copies (leaks first)."""
    path = RunDir(run.run_dir).check
    if not path.is_file():
        return None  # a run made before oculi checked its data
    saved = json.loads(path.read_text())
    dropped = " The leaks were left out of val/test (--drop-leaks)." if saved.get("leaks_dropped") else ""
    body = [paragraph(f"{saved['summary']}.{dropped} `oculi check DATA --labels` also looks for label errors.")]
    body += [paragraph(f"Warning: {w['message']}") for w in saved["warnings"]]
    pairs = saved["duplicates"][:MAX_CHECK_PAIRS]
    if pairs and not images.unavailable:
        records = [Record(p, 0, "") for d in pairs for p in (d["path"], d["duplicate_of"])]
        pixels, loaded = images.load(records)
        row = {r.path: i for i, r in enumerate(loaded)}
        tiles = [image_tile(pixels[row[p]], escape(caption)) for d in pairs
                 for p, caption in ((d["path"], f"{d['path']} ({d['kind']}{', leak' * d['leak']})"),
                                    (d["duplicate_of"], f"copied: {d['duplicate_of']}")) if p in row]
        more = f" (the first {len(pairs)} of {len(saved['duplicates'])})" if len(saved["duplicates"]) > len(pairs) else ""
        body.append(paragraph(f"Each copy beside the image it copies{more}:") + tiles_html(tiles))
    return Section("check", "Data check", "".join(body))


def _class_rows(pixels: torch.Tensor, records: list[Record], classes: list[str]) -> str:
    rows = []
    for c in sorted({r.label for r in records}):  # the classes' order, as in every other section
        tiles = [image_tile(pixels[i]) for i, r in enumerate(records) if r.label == c]
        rows.append(f'<div class="class-row"><h3>{escape(classes[c])}</h3>{tiles_html(tiles)}</div>')
    return "".join(rows)


def _size(preprocessing: Preprocessing) -> str:
    h, w = preprocessing.image_size
    colour = "grayscale" if preprocessing.channels == 1 else "RGB"
    return f"{h}x{w} {colour}, {preprocessing.resize}"


def _first_per_class(records: list[Record], n: int) -> list[Record]:
    taken: dict[int, int] = {}
    out = []
    for r in records:
        if taken.get(r.label, 0) < n:
            taken[r.label] = taken.get(r.label, 0) + 1
            out.append(r)
    return out


def _skipped_html(skipped: list[list[str]]) -> str:
    if not skipped:
        return paragraph("No file was skipped: every image was read.")
    more = len(skipped) - MAX_SKIPPED_ROWS
    note = paragraph(f"... and {more} more (all in skipped_files.csv).") if more > 0 else ""
    return (paragraph(f"{len(skipped)} file{'s' * (len(skipped) > 1)} could not be used and were left out:")
            + table_html(["file", "reason"], skipped[:MAX_SKIPPED_ROWS], numeric_from=2) + note)


# ---------------------------------------------------------------- augmentation

def augmentation_section(run: RunFiles, classifier, images: RunImages) -> Section:
    from .augment import preview_figure
    augmentation = run.augmentation
    if isinstance(augmentation, str):
        return Section("augmentation", "Augmentation", paragraph(augmentation))
    if augmentation is None:
        return Section("augmentation", "Augmentation", paragraph("No augmentation (--augment none)."))
    knobs = [[k, v] for k, v in augmentation.to_dict().items() if v not in (0, 0.0, False)]
    body = paragraph(f"Preset '{run.config.augment}', {_where_augmented(run)}:") + table_html(["setting", "value"], knobs)
    if images.unavailable:
        body += paragraph(images.unavailable)
    else:
        preprocessing = Preprocessing(classifier.preprocessing.image_size, classifier.preprocessing.channels,
                                      classifier.preprocessing.resize, filter=classifier.preprocessing.filter)
        # The training images in path order: the same samples whether the data was just scanned or reopened.
        source = images.source
        train = sorted(source.split_records("train"), key=lambda r: r.path)
        view = DataSource(source.name, source.classes, train, source.root, source.arrays)
        fig = preview_figure(view, augmentation, preprocessing, n=13, images=2, seed=run.config.seed)
        body += figure_html(fig, "augmented versions of sample images", "Each sample (outlined) and 13 random "
                            "augmented versions of it.", photos=True)
    return Section("augmentation", "Augmentation", body)


def _where_augmented(run: RunFiles) -> str:
    """What the preset was applied to: every batch, or (trained on cached inputs) only extra cached views."""
    cfg, part = run.config, _kept_part(run)
    n = (cfg.feature_views or 1) - 1
    views = f"the {n} augmented view{'s' * (n > 1)} of each training image" if n else None
    if part == "top":
        aug = run.augmentation if not isinstance(run.augmentation, str) else None
        moves = [w for w, on in (("mirrored", aug is not None and aug.flip),
                                 ("cropped", aug is not None and (aug.translate > 0 or aug.affine))) if on]
        drawn = f"drawn each epoch from the plain image and {views}, " if views else ""
        maps = f"each map {' and '.join(moves)} at random" if moves else "the maps neither mirrored nor cropped"
        return f"but the top stages trained on cached activations, {drawn}{maps}"
    if part == "features":
        return f"but the model trained on cached features; {f'it made {views}' if views else 'with 1 view it was not used'}"
    return "applied on the fly to every training batch"


def _kept_part(run: RunFiles) -> str:
    """The part of the run's route whose weights it kept (oculi.route), as model.json says it."""
    kept = run.meta.get("kept") or {}
    return kept.get("part") or legacy_part(run.meta.get("training"), run.config.unfreeze_stages)


# ---------------------------------------------------------------- model

def model_section(run: RunFiles, classifier, images: RunImages) -> Section:
    model, meta = classifier.model, run.meta
    part, stages = _kept_part(run), run.config.unfreeze_stages
    frozen = _frozen_parameters(model, part, stages)
    total = sum(p.numel() for p in model.parameters())
    c, (h, w) = classifier.preprocessing.channels, classifier.preprocessing.image_size
    facts = [["architecture", meta["model"]["name"]], ["weights", meta.get("weights_source", "?")],
             ["trained", part_words(part, stages)],
             ["input", f"{c}x{h}x{w}"], ["head", f"{meta['model']['head']} ({meta['model'].get('classifier', 'linear')})"],
             ["parameters", f"{total:,}"], ["trained parameters", f"{total - sum(frozen.values()):,}"],
             ["frozen parameters", f"{sum(frozen.values()):,}"]]
    rows = layer_rows(model, (1, c, h, w), frozen)
    body = table_html(None, facts, numeric_from=2) + "<h3>Layers</h3>" + table_html(
        ["layer", "type", "output", "parameters", "frozen"], rows, numeric_from=3)
    return Section("model", "Model", body)


def _frozen_parameters(model: nn.Module, part: str, stages: int | None = None) -> dict[str, int]:
    """{parameter name: size} of what training did not change: the backbone of a features-only model, the
    frozen stages of a top-stages fine-tuning, and fixed layers (fast-cnn's whitening)."""
    bottom = _bottom_parameters(model, stages) if part == "top" else set()
    return {name: p.numel() for name, p in model.named_parameters()
            if not p.requires_grad or name in bottom or (part == "features" and name.startswith("backbone."))}


def _bottom_parameters(model: nn.Module, stages: int) -> set[str]:
    """Names of the parameters below the cut of a model that fine-tuned its last ``stages`` stages."""
    bottom, _ = bottom_children(model.backbone, stages)
    return {f"backbone.{name}.{p}" for name, module in bottom for p, _ in module.named_parameters()}


# ---------------------------------------------------------------- training

def training_section(run: RunFiles, classifier, images: RunImages) -> Section:
    from ..plots import plot_curves
    history, baseline = split_phases(run.history)
    best = run.meta.get("metrics", {}).get("best_epoch")
    body = _kept_paragraph(run.meta.get("kept"))
    body += '<div class="charts">' + "".join(
        figure_html(plot_curves(history, best, baseline, panels=(panel,)), f"training curve: {panel} per epoch")
        for panel in ("acc", "loss")) + "</div>"
    columns = ["epoch", "phase", "train_loss", "train_acc", "val_loss", "val_acc", "lr", "seconds", "kept"]
    rows = [[_cell(r.get(k)) for k in columns] for r in run.history]
    body += f"<details><summary>Every epoch ({len(rows)})</summary>{table_html(columns, rows, numeric_from=2)}</details>"
    settings = [[k, _cell(v)] for k, v in run.config.to_dict().items() if k not in ("progress",)]
    body += f"<details><summary>Settings (config.json)</summary>{table_html(['setting', 'value'], settings, 2)}</details>"
    return Section("training", "Training", body)


def split_phases(rows: list[dict]) -> tuple[list[dict], dict | None]:
    """(the rows to draw, the features head's kept val row when fine-tuning followed it, else None)."""
    features = [r for r in rows if r.get("phase") == "features"]
    rest = [r for r in rows if r.get("phase") != "features"]
    if features and rest:
        marked = [r for r in features if r.get("kept")] or [r for r in features if "kept" in r][-1:]
        return rest, marked[0] if marked else max(features, key=lambda r: r.get("val_acc") or 0)
    return rows, None


def _kept_paragraph(kept: dict | None) -> str:
    """What the run kept and why, with its val figures (runs from before it was recorded: nothing)."""
    if not kept:
        return ""
    val = ("" if kept.get("val_accuracy") is None else
           f" Its val accuracy is {kept['val_accuracy']:.2%} on {kept['val_images']:,} images (log loss "
           f"{kept['val_loss']:.4f}), as `oculi evaluate` on the val images measures it.")
    why = f" How it was chosen: {kept['decision']}." if kept.get("decision") else ""
    return paragraph(f"Kept: {kept['words']}.{val}{why}")


def _cell(value) -> str:
    if value is None:
        return ""
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


# ---------------------------------------------------------------- test metrics

def metrics_section(run: RunFiles, classifier, images: RunImages) -> Section:
    from ..metrics import metrics_table_rows
    from ..plots import plot_confusion_matrix
    m = run.metrics
    body = paragraph(f"On the {m['n']:,} {m['split']} images, never used for training"
                     + (" or for choosing the epoch." if m["split"] == "test" else " (there is no test split)."))
    clean = m.get("leak_free")
    if clean:
        body += paragraph(f"Leaks: {leak_free_words(m, clean)}.")
    if run.config.select_by == "macro-f1":
        body += _recall_first(m)
    body += table_html(["class", "precision", "recall", "f1", "support"], metrics_table_rows(m))
    body += figure_html(plot_confusion_matrix(np.array(m["confusion_matrix"]), list(m["classes"])), "confusion matrix")
    return Section("metrics", f"Metrics on the {m['split']} set", body)


def _recall_first(m: dict) -> str:
    """For imbalanced data, where accuracy hides a neglected class: each class's recall, lowest first."""
    rows = sorted(m["per_class"], key=lambda c: c["recall"])
    return (paragraph(f"The classes are imbalanced, so the epoch was chosen by val macro-F1 and what counts is "
                      f"each class's recall (the share of its images found): lowest {rows[0]['class']} "
                      f"{rows[0]['recall']:.1%}, macro-average {m['macro_avg']['recall']:.1%}, against an "
                      f"accuracy of {m['accuracy']:.1%}.")
            + table_html(["class", "recall", "support"],
                         [[c["class"], f"{c['recall']:.3f}", str(c["support"])] for c in rows]))


# ---------------------------------------------------------------- trust

def trust_section(run: RunFiles, classifier, images: RunImages) -> Section | None:
    """Calibration before and after temperature scaling (a reliability diagram) and the abstain threshold."""
    from ..plots import plot_reliability
    c, split = run.metrics.get("calibration"), run.metrics.get("split")
    if c is None:
        return None  # a run from before calibration
    same = " (the very images measured below, so the 'after' figures are optimistic)" if split == "val" else ""
    check = c.get("check") or {"applied": bool(c["fitted_on"])}
    if c["fitted_on"] and check.get("why"):
        fitted = f"{check['why']}{same}" + (
            "" if check["applied"] else ", so the network's own probabilities (T = 1) are kept")
    elif c["fitted_on"]:
        fitted = f"fitted on the val images{same}"
    else:
        fitted = "not fitted (no val images, or --calibrate off), so the probabilities are the network's own"
    body = paragraph(f"Temperature scaling (Guo et al. 2017) divides the logits by T = {c['temperature']:.3f}, "
                     f"{fitted}. It never changes the predicted class; it makes the confidence mean what it says. "
                     f"On the {split} images: expected calibration error {c['before']['ece']:.4f} before, "
                     f"{c['after']['ece']:.4f} after; log loss {c['before']['log_loss']:.4f} before, "
                     f"{c['after']['log_loss']:.4f} after.")
    body += figure_html(plot_reliability({"before": c["before"], f"after (T = {c['temperature']:.2f})": c["after"]}),
                        "reliability diagram before and after temperature scaling",
                        "Each bar: the accuracy of the images whose confidence falls in its bin; the dashed "
                        "diagonal is a model whose confidence is exactly its accuracy.")
    a = run.metrics.get("abstain") or {}
    if a.get("threshold") is not None:
        right = "" if a["selective_accuracy"] is None else f", {a['selective_accuracy']:.2%} of them right"
        body += paragraph(f"Below a confidence of {a['threshold']:.4f} the model answers \"unknown\": it answers "
                          f"{a['answered']} of the {a['total']} {split} images ({a['coverage']:.1%}){right}.")
    return Section("trust", "Trust the answers", body)


# ---------------------------------------------------------------- predictions

def predictions_section(run: RunFiles, classifier, images: RunImages) -> Section:
    from ..plots import plot_probability_bars
    title = f"Predictions on the {run.metrics['split']} set"
    if images.unavailable:
        return Section("predictions", title, paragraph(images.unavailable))
    rows = sample_rows(run.predictions, GRID_IMAGES, run.config.seed)
    pixels, records, rows = load_rows(images, rows, run.metrics["split"])
    right = sum(r["true"] == r["predicted"] for r in rows)
    body = paragraph(f"{len(rows)} images drawn at random: {right} right (green), {len(rows) - right} wrong (red). "
                     "Each reads: true class, → predicted class and its probability.")
    body += _prediction_tiles(pixels, rows)
    few = _right_and_wrong(rows, BAR_IMAGES)
    probs = classifier.prepared_probs(pixels[few])  # calibrated, as the tiles above and `oculi predict` give them
    charts = "".join(figure_html(plot_probability_bars(pixels[i:i + 1], p[None], [records[i].label], images.classes),
                                 f"class probabilities of a {rows[i]['true']} image", photos=True)
                     for i, p in zip(few, probs))
    body += ("<h3>Class probabilities</h3>" + paragraph("The most probable classes of a few images: the true class "
             "green, a wrong first guess red.") + f'<div class="charts">{charts}</div>')
    body += "<h3>Most confident mistakes</h3>" + _mistakes_html(run, images)
    return Section("predictions", title, body)


def _count(n: int, noun: str) -> str:
    return f"{n:,} {noun}{'s' * (n != 1)}"


def _right_and_wrong(rows: list[dict], n: int) -> list[int]:
    """Indices of up to ``n`` rows: half wrong ones when there are any, the rest right ones."""
    wrong = [i for i, r in enumerate(rows) if r["true"] != r["predicted"]][: n // 2]
    right = [i for i, r in enumerate(rows) if r["true"] == r["predicted"]][: n - len(wrong)]
    return sorted(wrong + right)


def _prediction_tiles(pixels: torch.Tensor, rows: list[dict]) -> str:
    """Each image titled true class, then the prediction and its probability; framed green or red."""
    tiles = [image_tile(pixels[i], f"{escape(r['true'])}<br>→ {escape(r['predicted'])} {float(r['confidence']):.0%}",
                        "right" if r["true"] == r["predicted"] else "wrong") for i, r in enumerate(rows)]
    return tiles_html(tiles)


def _mistakes_html(run: RunFiles, images: RunImages) -> str:
    wrong = sorted((r for r in run.predictions if r["true"] != r["predicted"]), key=lambda r: -float(r["confidence"]))
    if not wrong:
        return paragraph("None: every image was classified right.")
    pixels, _, rows = load_rows(images, wrong[:MISTAKES], run.metrics["split"])
    return (paragraph(f"The {_count(len(rows), 'wrong prediction')} made with the highest probability, of "
                      f"{_count(len(wrong), 'mistake')} in all: often a mislabelled image or a class pair the "
                      "model confuses.") + _prediction_tiles(pixels, rows))


# ---------------------------------------------------------------- explanation

def explain_section(run: RunFiles, classifier, images: RunImages) -> Section:
    """Feature maps and Grad-CAM of the first test image of the prediction grid."""
    from ..deploy.explain import explain_image
    from .explain_plots import plot_feature_maps, plot_grad_cam
    title = "What the model looks at"
    if images.unavailable:
        return Section("explain", title, paragraph(images.unavailable))
    rows = sample_rows(run.predictions, GRID_IMAGES, run.config.seed)
    record = images.record(rows[0]["path"], rows[0]["true"], run.metrics["split"])
    try:
        e = explain_image(classifier, images.raw(record))
    except OculiError as err:  # a dense-only network; an image file that changed since the run
        return Section("explain", title, paragraph(str(err)))
    body = (paragraph(f"One {run.metrics['split']} image of class '{rows[0]['true']}', predicted "
                      f"'{e.classes[e.predicted]}' ({e.probs[e.predicted]:.1%}).")
            + "<p><code>oculi explain RUN IMAGE</code> draws the same for any image.</p>")
    body += "<h3>Grad-CAM</h3>" + figure_html(plot_grad_cam(e.image, e.cam, e.title), "Grad-CAM heat map",
                                              "Where the evidence for the class lies: red is where a change "
                                              "in the stage's features moves the class score most. "
                                              + e.stage_note, photos=True)
    body += "<h3>Feature maps</h3>" + figure_html(plot_feature_maps(e.maps), "feature maps of each stage",
                                                  "The most active channels of each convolutional stage, "
                                                  "each scaled to its own range: early stages respond to "
                                                  "edges and colours, later ones to larger parts.", photos=True)
    return Section("explain", title, body)
