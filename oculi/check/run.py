"""``oculi check DATA``: open the data as ``oculi train`` would, decode it through the same cache, find
duplicates and leaks, profile it, and (``--labels``) rank the images most likely mislabelled; write
duplicates.csv, label_issues.csv, check.json and check.html. ``check_at_train_start`` is the cheap part,
run on the images a training run has just decoded."""

from __future__ import annotations

import dataclasses
import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F

from ..config import TrainConfig
from ..console import Reporter
from ..data.loading import LoadedSource, TensorSet, load_with_progress, tensor_records
from ..data.sources import DataSource, open_configured
from ..data.split import Record
from ..defaults import PHOTO_PRETRAINED_MODEL
from ..models import offline_weights_file
from ..errors import OculiError
from ..io import atomic_write_csv, atomic_write_json, atomic_write_text
from ..metrics import classification_metrics
from ..plan import Plan, resolve_plan
from ..rundir import RunDir
from .balance import DataWarning, profile, warnings_for
from .duplicates import CSV_HEADER, Duplicate, find_duplicates, summarize
from .hashing import HASH_SIDE, FileFacts, perceptual_hashes, source_facts
from .label_errors import find_label_issues, out_of_fold_probs

PIXEL_FEATURE_SIDE = 16  # without a pretrained backbone, labels are judged on pixels shrunk to 16x16
LABEL_CSV_HEADER = ["path", "given", "suggested", "score"]
# Train start says nothing twice: the data source already warned about imbalance, the run about skipped files.
SAID_BY_TRAINING = {"imbalance", "skipped"}

# (plan, sets, reporter) -> features of each split's images, rows as in the sets; None: no pretrained backbone.
FeatureFn = Callable[[Plan, dict, Reporter], "dict[str, torch.Tensor] | None"]


@dataclass
class CheckResult:
    data: str
    classes: list[str]
    profile: dict
    duplicates: list[Duplicate]
    warnings: list[DataWarning]
    skipped: list[tuple[str, str]]
    records: list[Record] = field(repr=False)
    label_issues: list[dict] | None = None  # the flagged images, most likely mislabelled first
    label_method: str = ""
    seconds: float = 0.0

    def leaks(self) -> set[str]:
        return {d.path for d in self.duplicates if d.leak}

    def summary(self) -> str:
        counts = summarize(self.duplicates)
        issues = "" if self.label_issues is None else f", {len(self.label_issues)} likely label errors"
        sets = self.profile.get("label_sets")
        per_image = "" if sets is None else f" ({sets['labels_per_image']:.2f} labels an image)"
        return (f"{self.profile['images']} images{per_image}: {counts['exact']} exact + {counts['near']} near duplicates, "
                f"val/test leaks {counts['leaks']}, under two labels {counts['across_classes']}, imbalance "
                f"{self.profile['imbalance_ratio']:g}:1, {len(self.warnings)} warning"
                f"{'s' * (len(self.warnings) != 1)}{issues}")

    def to_dict(self) -> dict:
        return {"data": self.data, "summary": self.summary(), "profile": self.profile,
                "duplicate_counts": summarize(self.duplicates),
                "duplicates": [dataclasses.asdict(d) for d in self.duplicates],
                "warnings": [w.to_dict() for w in self.warnings],
                "skipped": [list(s) for s in self.skipped], "label_issues": self.label_issues,
                "label_method": self.label_method or None, "seconds": round(self.seconds, 2)}


# ---- the checks ------------------------------------------------------------------------------------

def inspect(source: DataSource, loaded: LoadedSource, reporter: Reporter,
            features: torch.Tensor | None = None) -> CheckResult:
    """Duplicates, leaks and the profile of the decoded sets (features: rows in the sets' order)."""
    start = time.perf_counter()
    sets, skipped = loaded.sets, loaded.skipped
    records = set_records(sets)
    facts = _file_facts(source, records, loaded.facts, reporter)
    digests = [facts[r.path].digest if r.path in facts else f"unread:{r.path}" for r in records]
    signatures = [perceptual_hashes(s.images) for s in sets.values()]
    hashes, thumbs = (torch.cat(parts) for parts in zip(*signatures))
    duplicates = find_duplicates(records, digests, hashes if _hashable(sets) else None, thumbs, features)
    prof = profile(source.classes, records, facts)
    warnings = warnings_for(source.classes, records, facts, prof, duplicates, skipped)
    return CheckResult(source.name, source.classes, prof, duplicates, warnings, skipped, records,
                       seconds=time.perf_counter() - start)


def _file_facts(source: DataSource, records: list[Record], known: dict[str, FileFacts], reporter: Reporter
                ) -> dict[str, FileFacts]:
    """The facts of every record's file: those decoding gathered as it read the file, the others (a cache
    entry written before decoding gathered them, a built-in set) read here."""
    unknown = [r.path for r in records if r.path not in known]
    facts = {r.path: known[r.path] for r in records if r.path in known}
    if unknown:
        with reporter.bar("checking: hashes", len(unknown)) as advance:
            facts.update((path, f) for path, f in source_facts(source, unknown, advance) if isinstance(f, FileFacts))
    return facts


def _hashable(sets: dict[str, TensorSet]) -> bool:
    """Whether the images are big enough for perceptual hashes to tell copies from look-alikes. The pHash
    reads a 32x32 gray image; an 8x8 one blown up to it is a blur: distinct handwritten digits of sklearn's
    set (at most 5 of 16 levels apart on every pixel) hash within the near-copy distance. Smaller images
    are checked for exact copies only."""
    height, width = next(iter(sets.values())).images.shape[-2:]  # every split has the training size
    return min(height, width) >= HASH_SIDE


def set_records(sets: dict[str, TensorSet]) -> list[Record]:
    """The readable images of ``sets``, in the sets' row order."""
    return [record for split, s in sets.items() for record in tensor_records(s, split)]


def label_issue_rows(result: CheckResult, features: torch.Tensor, seed: int = 0) -> list[dict]:
    """Confident learning on out-of-fold probabilities from ``features``: the flagged images, ranked."""
    labels = np.array([r.label for r in result.records])
    probs, folds = out_of_fold_probs(features.numpy().astype(np.float64), labels, len(result.classes), seed=seed)
    issues = find_label_issues(probs, labels, folds)
    return [{"path": result.records[i].path, "given": result.classes[labels[i]],
             "suggested": result.classes[issues.suggested[i]], "score": round(float(issues.score[i]), 4),
             "split": result.records[i].split}
            for i in issues.order if issues.flagged[i]]


def pixel_features(sets: dict[str, TensorSet]) -> torch.Tensor:
    """Images shrunk to 16x16, flattened: what labels are judged on without a pretrained backbone."""
    side = (PIXEL_FEATURE_SIDE, PIXEL_FEATURE_SIDE)
    return torch.cat([F.adaptive_avg_pool2d(s.images[:].float(), side).flatten(1) / 255 for s in sets.values()])


# ---- at the start of a training run ------------------------------------------------------------------

def check_at_train_start(source: DataSource, loaded: LoadedSource, drop_leaks: bool, run_dir: Path,
                         reporter: Reporter) -> set[str]:
    """The cheap checks on a run's decoded images: one summary line, the warnings, ``check.json`` in the run
    folder. Returns the val/test images to leave out: those that copy a training image when ``drop_leaks``."""
    result = inspect(source, loaded, reporter)
    check_file = RunDir(run_dir).check  # in a run folder, and in `oculi check`'s --out folder
    reporter.info(f"[bold]check[/bold]  {result.summary()} ({check_file.name})")
    for warning in result.warnings:
        if warning.kind not in SAID_BY_TRAINING:
            reporter.data_warning(warning.message)
    leaks = result.leaks() if drop_leaks else set()
    if leaks:
        reporter.info(f"--drop-leaks: left out {len(leaks)} val/test image{'s' * (len(leaks) != 1)} that copy a "
                      f"training image")
    atomic_write_json(check_file, {**result.to_dict(), "leaks_dropped": bool(leaks)})
    return leaks


def without(data: TensorSet, paths: set[str]) -> TensorSet:
    """``data`` without the images of ``paths``."""
    keep = [i for i, p in enumerate(data.paths) if p not in paths]
    if len(keep) == len(data.paths):
        return data
    index = torch.tensor(keep, dtype=torch.long)
    return TensorSet(data.images[index], data.labels[index], [data.paths[i] for i in keep])


def leaked_paths(run_dir: Path) -> set[str] | None:
    """The val/test images that copy an image of an earlier split (train; for test, val too), by the run's
    check.json (None when the run has none)."""
    try:
        saved = json.loads(RunDir(Path(run_dir)).check.read_text())
    except (OSError, ValueError):
        return None
    return {d["path"] for d in saved.get("duplicates", []) if d.get("leak")}


def leak_free_figures(paths: list[str], labels: np.ndarray, probs: np.ndarray, leaked: set[str] | None,
                      classes: list[str], top_k: int) -> dict | None:
    """The headline metrics on the evaluated images that copy no image the model learnt from or was chosen
    on; None when none of them leaks."""
    clean = np.array([p not in (leaked or set()) for p in paths], dtype=bool)
    if clean.all():
        return None
    figures = {"images": int(clean.sum()), "leaked": int((~clean).sum())}
    if not clean.any():
        return {**figures, "accuracy": None, "top_k_accuracy": None, "log_loss": None, "macro_f1": None}
    m = classification_metrics(labels[clean], probs[clean], classes, top_k)
    return {**figures, "accuracy": m["accuracy"], "top_k_accuracy": m["top_k_accuracy"], "log_loss": m["log_loss"],
            "macro_f1": m["macro_avg"]["f1"]}


def leak_free_words(metrics: dict, clean: dict) -> str:
    """e.g. "test 99.44% on 180, but 165 of them copy a training or val image: on the 15 that copy none 93.33%"."""
    head = (f"{metrics['split']} {metrics['accuracy']:.2%} on {metrics['n']:,}, but {clean['leaked']:,} of them copy "
            f"a training or val image (check.json)")
    if clean["accuracy"] is None:
        return f"{head}: no image is left to measure the model on; --drop-leaks, or a test set of new images"
    return (f"{head}: on the {clean['images']:,} that copy none {clean['accuracy']:.2%} (log loss "
            f"{clean['log_loss']:.4f}), the figure to trust; --drop-leaks leaves the copies out")


# ---- `oculi check DATA` ---------------------------------------------------------------------------------

def run_check(data: str, labels: bool = False, out: str | Path | None = None, reporter: Reporter | None = None,
              features: FeatureFn | None = None, device: str = "auto", table: dict | None = None
              ) -> tuple[CheckResult, Path]:
    """The command: check ``data`` as ``oculi train DATA`` would split and decode it (so that training
    afterwards finds the decoded images, and with ``labels`` the backbone features, in the cache). ``table``:
    a table's settings (images, path_column, label_column, split_column), as train takes them."""
    from ..runtime.engines import resolve_device
    reporter = reporter or Reporter()
    start = time.perf_counter()
    path = Path(data).expanduser()
    cfg = TrainConfig(data=str(path.resolve()) if path.exists() else data, device=device, **(table or {}))
    source = open_configured(cfg)
    if labels and source.multi_label:  # confident learning ranks one given class against the others
        raise OculiError(f"--labels: {data} has label sets (multi-label); ranking their label errors is not "
                         f"supported, the rest of the check is")
    for warning in source.warnings:
        reporter.warn(warning)
    plan = resolve_plan(cfg, source, resolve_device(device).type)
    loaded = _decoded(source, plan, reporter)
    sets = loaded.sets
    backbone, method = _backbone_features(source, plan, sets, reporter, features) if labels else (None, "")
    # Near copies by features only on photos: enlarged small images all look alike to the backbone
    # (on digits, 8 px, nearly every pair was above the threshold).
    result = inspect(source, loaded, reporter, backbone if plan.config.pretrained else None)
    if labels:
        result.label_method = method
        result.label_issues = _label_issues(result, backbone if backbone is not None else pixel_features(sets))
    result.seconds = time.perf_counter() - start
    out_dir = Path(out) if out else Path("checks") / source.name
    write_outputs(result, sets, out_dir)
    return result, out_dir


def _backbone_features(source: DataSource, plan: Plan, sets: dict[str, TensorSet], reporter: Reporter,
                       features: FeatureFn | None) -> tuple[torch.Tensor | None, str]:
    """Features of every image of ``sets`` (rows in order) to judge labels by, and what they are: the plan's
    pretrained backbone, else (small images, trained from scratch) the photo backbone on them enlarged;
    None when there is no pretrained backbone at all."""
    label_plan, label_sets = plan, sets
    if not plan.config.pretrained and offline_weights_file(PHOTO_PRETRAINED_MODEL):
        label_plan = resolve_plan(dataclasses.replace(plan.config, model=PHOTO_PRETRAINED_MODEL, pretrained=True,
                                                      mode="features", image_size=None, channels=None), source)
        label_sets = _decoded(source, label_plan, reporter).sets
    vectors = features(label_plan, label_sets, reporter) if features else None
    if vectors is None or [s.paths for s in label_sets.values()] != [s.paths for s in sets.values()]:
        return None, "pixels shrunk to 16x16 (no pretrained backbone here)"
    enlarged = "" if label_plan is plan else f", the images enlarged to {label_plan.preprocessing.image_size[0]} px"
    return torch.cat([vectors[s] for s in sets]), f"{label_plan.config.model} features{enlarged}"


def _label_issues(result: CheckResult, features: torch.Tensor) -> list[dict]:
    try:
        return label_issue_rows(result, features)
    except ValueError as err:
        raise OculiError(f"--labels: {err}") from None


def _decoded(source: DataSource, plan: Plan, reporter: Reporter) -> LoadedSource:
    """Every image decoded as the training run of ``plan`` decodes it (through the same cache); empty
    splits left out."""
    loaded = load_with_progress(source, plan.preprocessing, reporter, plan.config.cache)
    return dataclasses.replace(loaded, sets={split: s for split, s in loaded.sets.items() if len(s)})


def write_outputs(result: CheckResult, sets: dict[str, TensorSet], out_dir: Path) -> None:
    """duplicates.csv, label_issues.csv (when the labels were checked), check.json and check.html."""
    from .page import check_page
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise OculiError(f"--out {out_dir}: cannot create the folder ({err.strerror or err})") from None
    atomic_write_csv(out_dir / "duplicates.csv", CSV_HEADER, [d.row() for d in result.duplicates])
    if result.label_issues is not None:
        atomic_write_csv(out_dir / "label_issues.csv", LABEL_CSV_HEADER,
                         [[row[k] for k in LABEL_CSV_HEADER] for row in result.label_issues])
    else:  # an earlier --labels check's list no longer goes with this folder's other files
        (out_dir / "label_issues.csv").unlink(missing_ok=True)
    atomic_write_json(RunDir(out_dir).check, result.to_dict())
    atomic_write_text(out_dir / "check.html", check_page(result, sets))
