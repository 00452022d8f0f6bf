"""The model card: a run's README.md in the Hugging Face model-card format (a YAML header with the library, tags
and a ``model-index`` of the test results, then Markdown), written from the run folder alone, so ``oculi card RUN``
rebuilds it. What a reader of a model needs before using it: the data and what its check found, how the model
was trained and which weights were kept, the test figures with their uncertainty, per class, the calibration and
abstaining, the exports and their agreement with the bundle, and what the model cannot do.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import yaml

from ..errors import OculiError
from ..io import atomic_write_text
from ..rundir import RunDir
from .build import RunFiles, read_run

WILSON_Z = 1.96  # a 95% interval


def write_card(run_dir: str | Path, out: str | Path | None = None) -> Path:
    """Write the card of the run in ``run_dir`` (to ``out``, default RUN/README.md); its path."""
    if not RunDir(Path(run_dir)).test_metrics.is_file() and RunDir(Path(run_dir)).model_json.is_file():
        raise OculiError(f"{run_dir}: no test_metrics.json (nothing was held out to measure): no card to write")
    run = read_run(run_dir)
    path = Path(out) if out else RunDir(run.run_dir).card
    atomic_write_text(path, model_card(run))
    return path


def model_card(run: RunFiles) -> str:
    """The card's text: the YAML header, then its sections."""
    multi = run.meta["model"]["head"] == "multilabel"
    sections = [_title(run), _data(run), _training(run), _set_results(run) if multi else _results(run),
                _thresholds(run) if multi else _trust(run), _exports(run), _use(run), _limits(run)]
    return "---\n" + yaml.safe_dump(_header(run), sort_keys=False) + "---\n\n" + "\n\n".join(sections) + "\n"


def accuracy_interval(correct: int, n: int) -> tuple[float, float]:
    """The Wilson score interval (95%) of an accuracy of ``correct`` of ``n``: unlike mean +- 1.96 sd it stays in
    [0, 1] and is honest at 100% on a small test set (Wilson 1927)."""
    if n == 0:
        return 0.0, 1.0
    p, z2 = correct / n, WILSON_Z ** 2
    centre = (p + z2 / (2 * n)) / (1 + z2 / n)
    half = WILSON_Z * math.sqrt(p * (1 - p) / n + z2 / (4 * n * n)) / (1 + z2 / n)
    return max(0.0, centre - half), min(1.0, centre + half)


def _header(run: RunFiles) -> dict:
    m, model = run.metrics, run.meta["model"]["name"]
    multi = bool(m.get("multi_label"))
    first = ({"type": "mAP", "value": round(m["mAP"], 4), "name": f"{m['split']} mAP"} if multi else
             {"type": "accuracy", "value": round(m["accuracy"], 4), "name": f"{m['split']} accuracy"})
    metrics = [first, {"type": "f1", "value": round(m["macro_avg"]["f1"], 4), "name": f"{m['split']} macro-F1"},
               {"type": "log_loss", "value": round(m["log_loss"], 4),
                "name": f"{m['split']} log loss" + (" (mean binary cross-entropy)" if multi else " (calibrated)")}]
    return {"library_name": "oculi", "pipeline_tag": "image-classification",
            "tags": ["image-classification", "oculi", model] + ["multi-label-classification"] * multi,
            "model-index": [{"name": run.run_dir.name, "results": [{
                "task": {"type": "image-classification", "name": "Image Classification"},
                "dataset": {"name": run.meta["data"], "type": run.meta["data"], "split": m["split"]},
                "metrics": metrics}]}]}


def _title(run: RunFiles) -> str:
    classes = run.meta["classes"]
    shown = ", ".join(classes[:12]) + (f" and {len(classes) - 12} more" if len(classes) > 12 else "")
    kept = run.meta.get("kept", {}).get("words", run.meta.get("training", ""))
    source = run.meta.get("weights_source", "scratch")
    start = "trained from scratch" if source == "scratch" else f"from pretrained weights ({source})"
    return (f"# {run.run_dir.name}: {run.meta['model']['name']} on {run.meta['data']}\n\n"
            f"An image classifier made by oculi {run.meta.get('oculi_version', '')}, {start}: {len(classes)} "
            f"classes ({shown}). Kept: {kept}.")


def _data(run: RunFiles) -> str:
    counts: dict[str, int] = {}
    for _, _, split in run.split:
        counts[split] = counts.get(split, 0) + 1
    sizes = ", ".join(f"{counts[s]:,} {s}" for s in ("train", "val", "test") if s in counts)
    lines = [f"## Data\n\n`{run.config.data}`: {sizes} images."]
    check = _read_json(RunDir(run.run_dir).check)
    if check:
        lines.append(f"The data check at train start: {check['summary']}.")
        lines += [f"- {w['message'] if isinstance(w, dict) else w}" for w in check.get("warnings", [])]
    if run.skipped:
        lines.append(f"{len(run.skipped)} files could not be read and were left out (skipped_files.csv).")
    return "\n".join(lines)


def _training(run: RunFiles) -> str:
    cfg, kept = run.config, run.meta.get("kept", {})
    lines = ["## Training",
             "",
             f"- model: {cfg.model} ({run.meta.get('trainable_parameters', 0):,} trainable parameters), input "
             f"{cfg.channels}x{cfg.image_size[0]}x{cfg.image_size[1]} ({cfg.resize})",
             f"- route: {run.meta.get('route', run.meta.get('training'))}; {cfg.epochs} epochs, batch {cfg.batch_size}, "
             f"{cfg.optimizer} at lr {cfg.lr:g}, {cfg.schedule} schedule, augment {cfg.augment}, seed {cfg.seed}",
             f"- kept: {kept.get('words', '?')}"]
    if kept.get("decision"):
        lines.append(f"- why: {kept['decision']}")
    if kept.get("val_accuracy") is not None:
        lines.append(f"- val: accuracy {kept['val_accuracy']:.2%} on {kept['val_images']:,} images, "
                     f"log loss {kept['val_loss']:.4f}")
    return "\n".join(lines)


def _results(run: RunFiles) -> str:
    m = run.metrics
    correct = round(m["accuracy"] * m["n"])
    low, high = accuracy_interval(correct, m["n"])
    lines = [f"## Results ({m['split']} split)", "",
             f"Accuracy {m['accuracy']:.2%} on {m['n']:,} images (95% interval {low:.1%} to {high:.1%}), "
             f"top-{m['top_k']} {m['top_k_accuracy']:.2%}, macro-F1 {m['macro_avg']['f1']:.3f}, "
             f"log loss {m['log_loss']:.4f}."]
    clean = m.get("leak_free")
    if clean:
        figure = "nothing to measure" if clean["accuracy"] is None else f"accuracy {clean['accuracy']:.2%}"
        lines.append(f"\n{clean['leaked']} of these images copy a training or val image; on the "
                     f"{clean['images']:,} that copy none: {figure}.")
    lines += ["", "| class | precision | recall | F1 | images |", "| --- | --- | --- | --- | --- |"]
    lines += [f"| {c['class']} | {c['precision']:.3f} | {c['recall']:.3f} | {c['f1']:.3f} | {c['support']} |"
              for c in m["per_class"]]
    return "\n".join(lines)


def _set_results(run: RunFiles) -> str:
    """A multi-label model's results: mAP and the set scores, then each class's AP and scores at its threshold."""
    m = run.metrics
    lines = [f"## Results ({m['split']} split)", "",
             f"Multi-label: each image gets every class whose probability reaches its threshold. mAP "
             f"{m['mAP']:.2%} (micro {m['micro_mAP']:.2%}) on {m['n']:,} images; macro-F1 {m['macro_avg']['f1']:.3f}, "
             f"micro-F1 {m['micro_avg']['f1']:.3f}, every label right on {m['subset_accuracy']:.2%} of the images, "
             f"Hamming loss {m['hamming_loss']:.4f}.", "",
             "| class | AP | threshold | precision | recall | F1 | images |", "| --- | --- | --- | --- | --- | --- | --- |"]
    lines += [f"| {c['class']} | {'-' if c['ap'] is None else format(c['ap'], '.3f')} | {c['threshold']:.2f} | "
              f"{c['precision']:.3f} | {c['recall']:.3f} | {c['f1']:.3f} | {c['support']} |" for c in m["per_class"]]
    return "\n".join(lines)


def _thresholds(run: RunFiles) -> str:
    from .label_sets import calibration_words, threshold_words
    return ("## Thresholds and calibration\n\n" + threshold_words(run.metrics.get("thresholds") or {}) + "\n\n"
            + calibration_words(run.metrics.get("calibration"), run.metrics["split"]))


def _trust(run: RunFiles) -> str:
    c, abstain = run.metrics["calibration"], run.metrics["abstain"]
    why = (c.get("check") or {}).get("why", "not calibrated")
    lines = ["## Calibration and abstaining", "",
             f"Temperature {c['temperature']:.3f} ({why}). {run.metrics['split']} ECE {c['before']['ece']:.4f} -> "
             f"{c['after']['ece']:.4f}, log loss {c['before']['log_loss']:.4f} -> {c['after']['log_loss']:.4f}."]
    if abstain.get("threshold") is not None:
        lines.append(f"Below a confidence of {abstain['threshold']:.3f} the model answers 'unknown': it answered "
                     f"{abstain['coverage']:.1%} of the images, {abstain['selective_accuracy']:.2%} of them right.")
    return "\n".join(lines)


def _exports(run: RunFiles) -> str:
    from ..deploy.export import FORMATS, describe_parity

    # each export's <file>.json, written last by the gate: it vouches for the file
    found = [(form.file, _read_json(run.run_dir / f"{form.file}.json")) for form in FORMATS.values()]
    rows = [f"- `{name}` ({meta.get('precision', 'fp32')}): {describe_parity(meta['parity'])}"
            for name, meta in found if meta and "parity" in meta]
    if not rows:
        return "## Exports\n\nNone yet: `oculi export RUN --format onnx` writes one, checked against the bundle."
    return "## Exports\n\nEach agrees with the bundle on real images (the parity gate):\n\n" + "\n".join(rows)


def _use(run: RunFiles) -> str:
    return ("## Use\n\nWith oculi installed:\n\n```bash\n"
            f"oculi predict {run.run_dir.name} photo.jpg      # the folder holding model.json\n```\n\n"
            f"```python\nimport oculi\nmodel = oculi.load(\"{run.run_dir.name}\")  # verified before it is used\n"
            "model.predict(\"photo.jpg\")\n```\n\n"
            "From the Hugging Face Hub (after `oculi push RUN --to hf://owner/name`): `oculi predict "
            "hf://owner/name photo.jpg`, `oculi.load(\"hf://owner/name\")`, checked in the same way.")


def _limits(run: RunFiles) -> str:
    classes = run.meta["classes"]
    return ("## Intended use and limits\n\n"
            f"- It knows {len(classes)} classes only: an image of anything else still gets one of them (use a "
            "confidence threshold, `--min-confidence`, to answer 'unknown').\n"
            f"- The figures above come from {run.metrics['n']:,} {run.metrics['split']} images drawn like the "
            "training images; photos from another camera, place or time may score lower.\n"
            "- Check the per-class recall before relying on a rare class.")


def _read_json(path: Path) -> dict | None:
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        return None

