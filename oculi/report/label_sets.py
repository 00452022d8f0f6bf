"""The sections of a multi-label run's report.html (a sigmoid a class, label sets): its scores per class with
each class's threshold, the precision-recall curves and the labels' co-occurrence, the images with their true
and predicted sets, and Grad-CAM for each label of one image. ``report.build`` uses these in place of the
confusion matrix, calibration and one-class prediction sections."""

from __future__ import annotations

from html import escape

import numpy as np

from ..data.split import LABEL_SEP
from ..errors import OculiError
from ..pages import paragraph, table_html
from .html import Section, figure_html, image_tile, tiles_html
from .rows import load_rows, sample_rows

GRID_IMAGES = 24
MISTAKES = 12


def label_set_facts(m: dict) -> list[tuple[str, str]]:
    return [(f"{m['split']} mAP", f"{m['mAP']:.2%}"), ("macro-F1", f"{m['macro_avg']['f1']:.3f}"),
            ("every label right", f"{m['subset_accuracy']:.2%}"), (f"{m['split']} images", f"{m['n']:,}")]


def label_set_metrics_section(run, classifier, images) -> Section:
    """mAP and the set scores, the per-class table (AP, precision, recall, F1 at its threshold), the PR
    curves and the co-occurrence matrix."""
    from ..plots import plot_co_occurrence
    m = run.metrics
    never = " or for choosing the epoch and thresholds." if m["split"] == "test" else " (there is no test split)."
    body = paragraph(
        f"On the {m['n']:,} {m['split']} images, never used for training{never} Each image can carry several "
        f"labels ({m['labels_per_image']['true']:.2f} on average; the model gives "
        f"{m['labels_per_image']['predicted']:.2f}). mAP (the mean over classes of the area under each one's "
        f"precision-recall curve, threshold-free) {m['mAP']:.2%}, micro {m['micro_mAP']:.2%}; at the thresholds: "
        f"macro-F1 {m['macro_avg']['f1']:.3f}, micro-F1 {m['micro_avg']['f1']:.3f}, every label of an image right "
        f"on {m['subset_accuracy']:.2%}, Hamming loss {m['hamming_loss']:.4f} (the share of image-label pairs "
        f"wrong).")
    body += paragraph(threshold_words(m.get("thresholds") or {}))
    body += paragraph(calibration_words(m.get("calibration"), m["split"]))
    rows = [[c["class"], "-" if c["ap"] is None else f"{c['ap']:.3f}", f"{c['threshold']:.2f}",
             f"{c['precision']:.3f}", f"{c['recall']:.3f}", f"{c['f1']:.3f}", str(c["support"])]
            for c in m["per_class"]]
    body += table_html(["class", "AP", "threshold", "precision", "recall", "f1", "support"], rows)
    body += _pr_figure(run) + figure_html(plot_co_occurrence(m["co_occurrence"], list(m["classes"])),
                             "label co-occurrence matrix",
                             f"How many {m['split']} images carry both labels; the diagonal: images with each.")
    return Section("metrics", f"Metrics on the {m['split']} set", body)


def threshold_words(chosen: dict) -> str:
    rows = chosen.get("classes") or []
    if not rows:
        return "Every class answers at probability 0.5 (no val images to choose thresholds on)."
    if chosen.get("target_precision") is not None:
        return precision_threshold_words(chosen)
    moved = [r for r in rows if r["applied"]]
    detail = "; ".join(f"{r['class']} {r['threshold']:.2f} (F1 {r['f1_checked']:.3f} against {r['f1_at_half']:.3f} "
                       f"at 0.5, p = {r['p_value']:.2g})" for r in moved)
    return (f"A class is answered when its probability reaches its threshold: 0.5, unless the F1-optimal one "
            f"(fitted on {chosen['fitted_on']}) is significantly better on {chosen['checked_on']}. "
            + (f"Moved: {detail}." if moved else "None moved: no class's fitted threshold beat 0.5 by more than "
               "the val images can resolve."))


def precision_threshold_words(chosen: dict) -> str:
    """How --target-precision set each class's threshold, and the precision held where it was not fitted."""
    target = chosen["target_precision"]

    def held(r: dict) -> str:
        if r["fitted"] is None:
            return f"{r['class']} 0.50 (no threshold reaches it)"
        shown = "no answer" if r["precision_checked"] is None else f"{r['precision_checked']:.1%}"
        return f"{r['class']} {r['threshold']:.2f} ({shown}{'' if r['target_met'] else ', short of the target'})"
    return (f"Each class answers at the lowest threshold whose answers were right {target:.0%} of the time on "
            f"{chosen['fitted_on']} (--target-precision); the precision each held on {chosen['checked_on']}: "
            + "; ".join(held(r) for r in chosen["classes"]) + ".")


def calibration_words(c: dict | None, split: str) -> str:
    """What each class's temperature did, from test_metrics.json's ``calibration`` (a run from before it: none)."""
    if not c:
        return "Probabilities are the raw sigmoids (this run chose no temperatures)."
    if not c.get("classes"):
        return f"Probabilities are the raw sigmoids ({c.get('why', 'not calibrated')})."
    applied = [r for r in c["classes"] if r["applied"]]
    detail = "; ".join(f"{r['class']} T = {r['temperature']:.2f}" for r in applied[:8])
    return (f"Each class's sigmoid may take its own temperature, fitted on logits that chose nothing and kept "
            f"only when val images it was not fitted on confirm a lower log loss: {len(applied)} of "
            f"{len(c['classes'])} classes kept one" + (f" ({detail})" if applied else "")
            + f". {split.capitalize()} log loss "
            f"(mean binary cross-entropy) {c['log_loss_before']:.4f} raw, {c['log_loss_after']:.4f} as answered. "
            f"The thresholds were chosen after, on the calibrated probabilities.")


def _pr_figure(run) -> str:
    """The precision-recall curves, drawn again from test_predictions.csv (every class's probability)."""
    from ..plots import plot_pr_curves
    classes, rows = list(run.metrics["classes"]), run.predictions
    targets = np.array([[c in _names(r["true"]) for c in classes] for r in rows])
    probs = np.array([[float(r[f"p_{c}"]) for c in classes] for r in rows])
    return figure_html(plot_pr_curves(targets, probs, classes, [c["threshold"] for c in run.metrics["per_class"]]),
                       "precision-recall curves per class",
                       "Each class's precision against its recall as its threshold moves; the dot is its threshold.")


def label_set_predictions_section(run, classifier, images) -> Section:
    """A grid of images titled with their true set and the predicted one; then the worst sets."""
    title = f"Predictions on the {run.metrics['split']} set"
    if images.unavailable:
        return Section("predictions", title, paragraph(images.unavailable))
    rows = sample_rows(run.predictions, GRID_IMAGES, run.config.seed)
    pixels, _, rows = load_rows(images, rows, run.metrics["split"])
    right = sum(_same(r) for r in rows)
    body = paragraph(f"{len(rows)} images drawn at random: {right} with every label right (green), "
                     f"{len(rows) - right} with a label missed or added (red). Each reads: the true labels, → the "
                     "predicted ones.") + _tiles(pixels, rows)
    wrong = sorted((r for r in run.predictions if not _same(r)), key=lambda r: -_worst(r, run.metrics["classes"]))
    if wrong:
        pixels, _, shown = load_rows(images, wrong[:MISTAKES], run.metrics["split"])
        body += "<h3>Surest mistakes</h3>" + paragraph(
            f"The {len(shown)} of {len(wrong)} wrong sets whose wrong label was given (or denied) most surely.") \
            + _tiles(pixels, shown)
    return Section("predictions", title, body)


def label_set_explain_section(run, classifier, images) -> Section:
    """Grad-CAM of one image for each of its true labels: where the evidence for each lies."""
    from ..deploy.explain import explain_image
    from .explain_plots import plot_grad_cam
    title = "What the model looks at"
    if images.unavailable:
        return Section("explain", title, paragraph(images.unavailable))
    rows = sorted(sample_rows(run.predictions, GRID_IMAGES, run.config.seed), key=lambda r: -len(_names(r["true"])))
    row = rows[0]  # an image with the most labels: one heat map each
    record = images.record(row["path"], row["true"], run.metrics["split"])
    body = (paragraph(f"One {run.metrics['split']} image labelled {_shown(row['true'])}, predicted "
                      f"{_shown(row['predicted'])}: Grad-CAM for each of its labels.")
            + "<p><code>oculi explain RUN IMAGE --class LABEL</code> draws it for any image and label.</p>")
    try:
        for name in _names(row["true"]):
            e = explain_image(classifier, images.raw(record), target=name)
            body += figure_html(plot_grad_cam(e.image, e.cam, e.title), f"Grad-CAM for {name}", photos=True)
    except OculiError as err:  # a dense-only network; an image file that changed since the run
        return Section("explain", title, paragraph(str(err)))
    return Section("explain", title, body)


def _names(cell: str) -> list[str]:
    return [n for n in cell.split(LABEL_SEP) if n]


def _shown(cell: str) -> str:
    return ", ".join(_names(cell)) or "(none)"


def _same(row: dict) -> bool:
    return set(_names(row["true"])) == set(_names(row["predicted"]))


def _worst(row: dict, classes: list[str]) -> float:
    """How surely the model was wrong on this image: its largest |probability - truth| over the classes."""
    true = set(_names(row["true"]))
    return max(abs(float(row[f"p_{c}"]) - (c in true)) for c in classes)


def _tiles(pixels, rows: list[dict]) -> str:
    return tiles_html([image_tile(pixels[i], f"{escape(_shown(r['true']))}<br>→ {escape(_shown(r['predicted']))}",
                                  "right" if _same(r) else "wrong") for i, r in enumerate(rows)])
