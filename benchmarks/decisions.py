"""The decisions a default run makes, and what they did to the test figures (issue 24): which weights were
kept (features head, a fine-tuned epoch, the last or an earlier epoch) and whether the temperature helped.

Each (data set, seed) is one ``oculi train DATA --seed S`` process with the defaults, run by the oculi found
on ``--code`` (this checkout by default; another checkout, e.g. a ``git worktree`` of an older commit, to
compare rules on the same data and seeds). Every data set gets its own cache, shared by its seeds and by
both checkouts (decoded pixels and features are the same; accuracy, not time, is measured here).

    python benchmarks/decisions.py --data hym=/tmp/hymenoptera_data cifar5=/tmp/cifar5-128 \
        --seeds 0 1 2 --label new [--code DIR] [--out benchmarks/results/decisions.json]

Per run it records: what was kept and its val accuracy, the test accuracy, and the test log loss and ECE
at T = 1 (raw), as applied, and (new rule) at the fitted T had it been applied. The JSON file gathers runs
of every label, so the rules can be set side by side (``--table``).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def run_once(code: Path, data: Path, seed: int, cache: Path, flags: list[str]) -> dict:
    """One default training run by the oculi of ``code``; its decisions and figures."""
    env = {**os.environ, "OCULI_CACHE_DIR": str(cache), "PYTHONPATH": str(code)}
    with tempfile.TemporaryDirectory() as work:
        out = Path(work) / "run"
        started = time.perf_counter()
        done = subprocess.run([sys.executable, "-m", "oculi", "train", str(data), "--seed", str(seed), "--out",
                               str(out), "-q", "--no-report", *flags], env=env, capture_output=True, text=True,
                              cwd=work)
        if done.returncode:
            raise SystemExit(f"{data} seed {seed}: {done.stderr[-2000:]}")
        meta = json.loads((out / "model.json").read_text())
        metrics = json.loads((out / "test_metrics.json").read_text())
        rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    return {"seconds": round(time.perf_counter() - started, 1), **_kept(meta, rows),
            "test_images": metrics["n"], "test_accuracy": metrics["accuracy"], **_calibration(metrics)}


def _kept(meta: dict, rows: list[dict]) -> dict:
    """What was kept and its val accuracy: model.json's ``kept`` (new), else derived as the old rule chose."""
    if "kept" in meta:
        k = meta["kept"]
        return {"kept": k["words"], "val_accuracy": k["val_accuracy"], "decision": k.get("decision")}
    best = meta["metrics"]["best_epoch"]
    if meta["training"] == "features":
        head = [r for r in rows if r["phase"] == "features"]
        row = max(head, key=lambda r: (r["val_acc"], -r["val_loss"]))
        return {"kept": f"features head, epoch {row['epoch']}", "val_accuracy": row["val_acc"], "decision": None}
    tuned = [r for r in rows if r["phase"] != "features"]
    return {"kept": f"{meta['training']}, epoch {best}", "val_accuracy": tuned[best - 1]["val_acc"], "decision": None}


def _calibration(metrics: dict) -> dict:
    c = metrics["calibration"]
    check, fitted = c.get("check") or {}, c.get("if_applied")
    return {"temperature": c["temperature"], "applied": check.get("applied", c["temperature"] != 1.0),
            "log_loss_raw": c["before"]["log_loss"], "log_loss_applied": c["after"]["log_loss"],
            "ece_raw": c["before"]["ece"], "ece_applied": c["after"]["ece"],
            "t_fitted": (fitted or {}).get("temperature", c["temperature"]),
            "log_loss_fitted": (fitted or {}).get("log_loss", c["after"]["log_loss"])}


def table(results: list[dict]) -> str:
    lines = ["| data | seed | rule | kept | val | test | T fitted | applied | test log loss raw -> applied |",
             "| --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    for r in sorted(results, key=lambda r: (r["data"], r["seed"], r["label"])):
        lines.append(f"| {r['data']} | {r['seed']} | {r['label']} | {r['kept']} | {r['val_accuracy']:.2%} | "
                     f"{r['test_accuracy']:.2%} | {r['t_fitted']:.3f} | {'yes' if r['applied'] else 'no'} | "
                     f"{r['log_loss_raw']:.4f} -> {r['log_loss_applied']:.4f} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", nargs="+", default=[], help="NAME=DIR pairs")
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    parser.add_argument("--code", type=Path, default=Path(__file__).resolve().parents[1])
    parser.add_argument("--label", default="new")
    parser.add_argument("--flags", nargs=argparse.REMAINDER, default=[], help="more oculi train flags")
    parser.add_argument("--cache", type=Path, default=Path(tempfile.gettempdir()) / "oculi-decisions-cache")
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "decisions.json")
    parser.add_argument("--table", action="store_true", help="print the table of --out and stop")
    args = parser.parse_args()
    results = json.loads(args.out.read_text()) if args.out.is_file() else []
    if not args.table:
        for pair in args.data:
            name, folder = pair.split("=", 1)
            for seed in args.seeds:
                found = run_once(args.code, Path(folder), seed, args.cache / name, args.flags)
                found.update(data=name, seed=seed, label=args.label)
                results = [r for r in results if (r["data"], r["seed"], r["label"]) != (name, seed, args.label)]
                results.append(found)
                print(json.dumps(found), flush=True)
                args.out.parent.mkdir(parents=True, exist_ok=True)
                args.out.write_text(json.dumps(results, indent=1) + "\n")
    print(table(results))


if __name__ == "__main__":
    main()
