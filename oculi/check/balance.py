"""A profile of the data (class counts, image sizes, shapes, colour, skipped files) and the warnings it
gives, each in plain words with what to do about it."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..data.split import Record, label_counts
from .duplicates import Duplicate, summarize
from .hashing import FileFacts

IMBALANCE_RATIO = 3.0  # largest / smallest class of the training split
WIDE_ASPECT = 2.0  # an image twice as wide as high (or high as wide) is distorted by a square squash
TINY_FRACTION = 4  # a shorter side under a quarter of the set's median is a tiny image
MIN_TEST_PER_CLASS = 10  # fewer held-out images of a class: each one moves its accuracy by over 10 points


@dataclass(frozen=True)
class DataWarning:
    kind: str  # duplicates | conflicts | leaks | imbalance | aspect | colour | tiny | skipped | few_test
    message: str  # what is wrong and what to do, in one or two sentences

    def to_dict(self) -> dict:
        return {"kind": self.kind, "message": self.message}


def profile(classes: list[str], records: list[Record], facts: dict[str, FileFacts]) -> dict:
    """Counts per split and class, imbalance, sizes, aspect ratios and colour of the readable images."""
    counts = {s: dict(zip(classes, label_counts([r for r in records if r.split == s], len(classes)).tolist()))
              for s in ("train", "val", "test")}
    train = np.array(list(counts["train"].values()))
    shapes = np.array([(f.channels, f.height, f.width) for f in facts.values()] or [(3, 0, 0)])
    short = shapes[:, 1:].min(1)
    aspect = shapes[:, 2] / np.maximum(shapes[:, 1], 1)
    return {"images": len(records), "classes": len(classes),
            "counts": {s: c for s, c in counts.items() if sum(c.values())},
            "imbalance_ratio": round(float(train.max() / max(train.min(), 1)), 2),
            "size": {"min": _side(shapes, np.argmin(short)), "median": [int(np.median(shapes[:, 1])),
                                                                         int(np.median(shapes[:, 2]))],
                     "max": _side(shapes, np.argmax(short))},
            "aspect": {"min": round(float(aspect.min()), 2), "max": round(float(aspect.max()), 2)},
            "grayscale": int((shapes[:, 0] == 1).sum()) if facts else 0,
            **label_set_profile(classes, records)}


def label_set_profile(classes: list[str], records: list[Record], shown: int = 10) -> dict:
    """Of multi-label data (records with label sets): labels per image, and the label pairs most often on one
    image; nothing for one label an image."""
    sets = [r.labels for r in records if r.labels is not None]
    if not sets:
        return {}
    pairs: dict[tuple[int, int], int] = {}
    for labels in sets:
        for i, a in enumerate(labels):
            for b in labels[i + 1:]:
                pairs[a, b] = pairs.get((a, b), 0) + 1
    top = sorted(pairs.items(), key=lambda item: (-item[1], item[0]))[:shown]
    return {"label_sets": {"labels_per_image": round(float(np.mean([len(s) for s in sets])), 3),
                           "most_labels": int(max(len(s) for s in sets)),
                           "pairs": [{"labels": [classes[a], classes[b]], "images": n} for (a, b), n in top]}}


def _side(shapes: np.ndarray, i: int) -> list[int]:
    return [int(shapes[i, 1]), int(shapes[i, 2])]


def warnings_for(classes: list[str], records: list[Record], facts: dict[str, FileFacts], prof: dict,
                 duplicates: list[Duplicate], skipped: list[tuple[str, str]]) -> list[DataWarning]:
    """Every warning the data deserves, the most serious first."""
    found = _duplicate_warnings(duplicates)
    found += _imbalance(prof, classes)
    found += _few_test(prof)
    found += _shape_warnings(records, facts, classes)
    if skipped:
        first = "; ".join(f"{p} ({why})" for p, why in skipped[:2])
        found.append(DataWarning("skipped", f"{len(skipped)} file{_s(skipped)} could not be read and "
                                        f"{'are' if len(skipped) > 1 else 'is'} left out: {first}"
                                        f"{' ...' if len(skipped) > 2 else ''}. Convert or remove "
                                        f"{'them' if len(skipped) > 1 else 'it'}."))
    return found


def _s(items) -> str:
    return "s" if len(items) != 1 else ""


def _duplicate_warnings(duplicates: list[Duplicate]) -> list[DataWarning]:
    counts = summarize(duplicates)
    found = []
    if counts["leaks"]:
        found.append(DataWarning("leaks", f"{counts['leaks']} val/test image{'s' * (counts['leaks'] != 1)} "
                                      f"equal or nearly equal a training image (or, for test, a val image): "
                                      f"metrics on them are optimistic; training reports the test metrics "
                                      f"without them beside the whole. `oculi train --drop-leaks` leaves them out "
                                      f"of val/test."))
    if counts["across_classes"]:
        found.append(DataWarning("conflicts", f"{counts['across_classes']} image{'s' * (counts['across_classes'] != 1)}"
                                          f" appear{'s' * (counts['across_classes'] == 1)} under two classes "
                                          f"(the same picture, two labels): at most one label is right; fix "
                                          f"or remove them (duplicates.csv, across_classes)."))
    within = [d for d in duplicates if not d.leak and not d.across_classes]
    if within:
        found.append(DataWarning("duplicates", f"{len(within)} image{_s(within)} cop{'ies' if len(within) == 1 else 'y'} another of the same class "
                                           f"({sum(d.kind == 'exact' for d in within)} exact, "
                                           f"{sum(d.kind == 'near' for d in within)} near): they weigh twice in "
                                           f"training; remove the copies listed in duplicates.csv."))
    return found


def _imbalance(prof: dict, classes: list[str]) -> list[DataWarning]:
    train = prof["counts"].get("train", {})
    if not train or prof["imbalance_ratio"] < IMBALANCE_RATIO:
        return []
    big, small = max(train, key=train.get), min(train, key=train.get)
    return [DataWarning("imbalance", f"classes are imbalanced {prof['imbalance_ratio']:g}:1 ('{big}' has "
                                 f"{train[big]} training images, '{small}' {train[small]}): accuracy hides the "
                                 f"small class; read its recall, add images, or train with --class-weights "
                                 f"auto or --sampler balanced.")]


def _few_test(prof: dict) -> list[DataWarning]:
    split = "test" if "test" in prof["counts"] else "val" if "val" in prof["counts"] else None
    if split is None:
        return []
    few = {c: n for c, n in prof["counts"][split].items() if n < MIN_TEST_PER_CLASS}
    if not few:
        return []
    names = ", ".join(f"'{c}' ({n})" for c, n in list(few.items())[:4]) + (" ..." if len(few) > 4 else "")
    return [DataWarning("few_test", f"{len(few)} class{'es' * (len(few) != 1)} ha{'ve' if len(few) != 1 else 's'} "
                                f"fewer than {MIN_TEST_PER_CLASS} {split} images: {names}; per-class "
                                f"scores move in big steps and mean little. Add images or hold out more "
                                f"(--{split}-split).")]


def _shape_warnings(records: list[Record], facts: dict[str, FileFacts], classes: list[str]) -> list[DataWarning]:
    known = [(r, facts[r.path]) for r in records if r.path in facts]
    if not known:
        return []
    found = []
    wide = [r for r, f in known if max(f.width / f.height, f.height / f.width) > WIDE_ASPECT]
    if wide:
        found.append(DataWarning("aspect", f"{len(wide)} image{_s(wide)} are more than twice as wide as high (or high as wide) "
                                       f"(e.g. {wide[0].path}): the default --resize squash distorts them; "
                                       f"--resize pad keeps their shape."))
    median_short = float(np.median([min(f.height, f.width) for _, f in known]))
    limit = median_short / TINY_FRACTION  # relative: a set of 8 px digits is small, not tiny
    tiny = [r for r, f in known if min(f.height, f.width) < limit]
    if tiny:
        found.append(DataWarning("tiny", f"{len(tiny)} image{_s(tiny)} are under {limit:.0f} px on the shorter side "
                                     f"(most are {median_short:.0f}; e.g. {tiny[0].path}): enlarged to the "
                                     f"model's size they carry little detail; check them or remove them."))
    found += _colour_mix(known, classes)
    return found


def _colour_mix(known: list[tuple[Record, FileFacts]], classes: list[str]) -> list[DataWarning]:
    """Grayscale among colour images; worse when the grayscale ones gather in one class (a shortcut:
    the model can learn "gray means X")."""
    gray = [r for r, f in known if f.channels == 1]
    if not gray or len(gray) == len(known):
        return []
    per_class = label_counts(gray, len(classes))
    totals = label_counts([r for r, _ in known], len(classes))
    share = per_class / np.maximum(totals, 1)
    top = int(share.argmax())
    skew = (f" {share[top]:.0%} of '{classes[top]}' are grayscale against {len(gray) / len(known):.0%} overall: "
            f"the model may learn the colour instead of the subject." if share[top] > 2 * len(gray) / len(known)
            and per_class[top] >= 3 else "")
    return [DataWarning("colour", f"{len(gray)} of {len(known)} images are grayscale, the rest colour; all are read "
                              f"as colour.{skew} Check that colour is not what tells the classes apart.")]
