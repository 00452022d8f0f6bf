"""Which temperature rule keeps "calibrated test log loss <= raw" on every set (issue 24), measured on the logits
of real default runs, so that rules are compared on the same models.

Capture: one default ``oculi train DATA --seed S`` per (set, seed), in this process, with the logits the run's
finish step sees saved to ``--logits DIR/NAME-sS.npz``: the val logits the temperature is checked on, the kept
features head's out-of-fold logits of the training images (when it has them) and the test logits.

    python benchmarks/calibration_rules.py --data hym=/tmp/hymenoptera_data digits=digits --seeds 0 1 2

Rules: each saved run is scored by every rule in ``RULES`` (the one oculi uses is ``checked_temperature``;
the others are the candidates it was chosen over), printing the test log loss raw and as each rule leaves it.

    python benchmarks/calibration_rules.py --rules [--logits DIR]
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from oculi import calibration as cal  # noqa: E402


def capture(data: str, seed: int, target: Path, flags: dict) -> None:
    """Train with the defaults and save the logits the finish step computed (val, out-of-fold, test)."""
    import oculi
    from oculi.training import finish

    seen: dict = {}
    class_logits, calibrate = finish._class_logits, finish._calibrate

    def keep_logits(model, ctx, data_set, name):
        out = class_logits(model, ctx, data_set, name)
        seen[f"{name}_logits"], seen[f"{name}_labels"] = out, data_set.labels.numpy()
        return out

    def keep_fit_on(cfg, logits, labels, fit_on, reporter):
        if fit_on is not None:
            seen["oof_logits"], seen["oof_labels"] = fit_on["logits"], fit_on["labels"]
        return calibrate(cfg, logits, labels, fit_on, reporter)

    finish._class_logits, finish._calibrate = keep_logits, keep_fit_on
    try:
        with tempfile.TemporaryDirectory() as work:
            oculi.train(data, seed=seed, out=str(Path(work) / "run"), report=False, progress=False, **flags)
    finally:
        finish._class_logits, finish._calibrate = class_logits, calibrate
    target.parent.mkdir(parents=True, exist_ok=True)
    np.savez(target, **seen)


# ---------------------------------------------------------------- the rules compared

def rule_raw(run: dict, seed: int) -> float:
    return 1.0


def rule_val_fit(run: dict, seed: int) -> float:
    """The rule before issue 24: T fitted on val, always applied."""
    return cal.fit_temperature(run["val_logits"], run["val_labels"])


def rule_oculi(run: dict, seed: int) -> float:
    """What oculi's ``checked_temperature`` applies."""
    fit_on = {"logits": run["oof_logits"], "labels": run["oof_labels"]} if "oof_logits" in run else None
    return cal.checked_temperature(run["val_logits"], run["val_labels"], seed, fit_on)["temperature"]


RULES = {"raw": rule_raw, "val fit": rule_val_fit, "oculi": rule_oculi}


def score(folder: Path) -> None:
    names = list(RULES)
    print("| run | val images (mistakes) | test images | " + " | ".join(names) + " |")
    print("| --- | --- | --- | " + " | ".join("---" for _ in names) + " |")
    for path in sorted(folder.glob("*.npz")):
        run = dict(np.load(path))
        seed = int(path.stem.rsplit("-s", 1)[1])
        test_logits, test_labels = run["test_logits"], run["test_labels"]
        mistakes = int((run["val_logits"].argmax(1) != run["val_labels"]).sum())
        cells = []
        for name in names:
            t = RULES[name](run, seed)
            cells.append(f"{cal.nll(test_logits, test_labels, t):.4f} (T {t:.2f})")
        print(f"| {path.stem} | {len(run['val_labels'])} ({mistakes}) | {len(test_labels)} | " + " | ".join(cells) + " |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", nargs="+", default=[], help="NAME=DIR pairs (DIR may be a built-in name)")
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    parser.add_argument("--logits", type=Path, default=Path(tempfile.gettempdir()) / "oculi-calibration-logits")
    parser.add_argument("--rules", action="store_true", help="score the saved runs and stop")
    args = parser.parse_args()
    if not args.rules:
        for pair in args.data:
            name, folder = pair.split("=", 1)
            os.environ["OCULI_CACHE_DIR"] = str(args.logits / f"cache-{name}")
            for seed in args.seeds:
                capture(folder, seed, args.logits / f"{name}-s{seed}.npz", {})
                print(f"captured {name} seed {seed}", flush=True)
    score(args.logits)


if __name__ == "__main__":
    main()
