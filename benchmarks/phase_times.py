"""Where the time of one `oculi train` goes: each phase of a run timed in-process, end to end.

Runs ``oculi train`` (the CLI's own code path, report included unless ``--no-report`` is among the flags)
with timers wrapped around the run's phases: opening the data, decoding (the cache), the data check,
channel statistics, the whitening init, each epoch's training and validation, calibration, the test
evaluation, the plots and bundle, and report.html. Prints one line per phase and the total; the wall time
from process start (imports included) is the last line.

    OCULI_CACHE_DIR=$(mktemp -d) python benchmarks/phase_times.py DATA [oculi train flags...]
"""

from __future__ import annotations

import functools
import sys
import time
from collections import defaultdict

STARTED = time.perf_counter()


def timed_calls(totals: dict, counts: dict, owner, name: str, label: str) -> None:
    """Replace ``owner.name`` by a wrapper that adds each call's seconds to ``totals[label]``."""
    original = getattr(owner, name)

    @functools.wraps(original)
    def wrapper(*args, **kwargs):
        began = time.perf_counter()
        try:
            return original(*args, **kwargs)
        finally:
            totals[label] += time.perf_counter() - began
            counts[label] += 1
    setattr(owner, name, wrapper)


def main() -> None:
    from importlib import import_module

    from oculi.cli import app

    api, finish, fitting, loop, run = (import_module(f"oculi.{name}") for name in (
        "api", "training.finish", "training.fitting", "training.loop", "training.run"))

    imported = time.perf_counter() - STARTED
    totals, counts = defaultdict(float), defaultdict(int)
    # Each phase by the name its caller looks up at call time (a module's global, or a method).
    for owner, name, label in [
        (run, "open_configured", "open the data (scan, split)"),
        (run, "load_with_progress", "decode images (cache)"),
        (run, "check_at_train_start", "data check"),
        (run, "_statistics", "channel statistics"),
        (run, "_init_from_data", "whitening init"),
        (loop.Learner, "train_epoch", "epochs: training"),
        (loop.ImageData, "validate", "epochs: validation"),
        (fitting, "save_checkpoint", "epochs: checkpoint"),
        (finish, "_calibrate", "calibration (val logits)"),
        (finish, "_evaluate", "test evaluation (and its files)"),
        (finish, "plot_curves", "curves"),
        (finish, "save_bundle", "bundle"),
        (api, "_write_export", "model.onnx (export and its gate)"),
        (api, "write_report", "report.html"),
    ]:
        timed_calls(totals, counts, owner, name, label)
    try:
        app(["train", *sys.argv[1:]], standalone_mode=False)
    finally:
        print(f"\n{'phase':<36}{'seconds':>9}{'calls':>7}")
        print(f"{'python + imports':<36}{imported:>9.1f}{1:>7}")
        for label, seconds in totals.items():
            print(f"{label:<36}{seconds:>9.1f}{counts[label]:>7}")
        print(f"{'wall, process start to end':<36}{time.perf_counter() - STARTED:>9.1f}")


if __name__ == "__main__":
    main()
