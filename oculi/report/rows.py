"""The rows of test_predictions.csv a report shows: a seeded sample, and their images read again."""

from __future__ import annotations

import numpy as np


def sample_rows(rows: list[dict], n: int, seed: int) -> list[dict]:
    """``n`` rows drawn by ``seed``, in file order."""
    order = np.random.default_rng(seed).permutation(len(rows))[:n]
    return [rows[i] for i in sorted(order)]


def load_rows(images, rows: list[dict], split: str):
    """The prepared images of prediction rows, with their records; rows whose image is unreadable now drop."""
    pixels, records = images.load([images.record(r["path"], r["true"], split) for r in rows])
    kept = {r.path for r in records}
    return pixels, records, [r for r in rows if r["path"] in kept]
