"""kill -9 at random moments: does a run folder stay either complete or resumable, and does ``--resume``
give exactly what the uninterrupted run gives?

    python benchmarks/kill_resume.py --trials 20 [--seed 0] [--epochs 3] [--image-size 12] [--work DIR]

One reference run of ``oculi train digits`` (seeded) is timed; then each trial starts the same command into
its own folder and SIGKILLs it (the main process only, as the OOM killer or ``kill -9 PID`` would) after a
seeded random delay between 0 and 1.1x the reference time. After each kill:

(a) a folder with model.json must be accepted by ``oculi predict`` and equal the reference (model.json,
    weights, test metrics and predictions, byte for byte), and ``--resume`` must say it already finished;
(b) a folder without model.json must be refused by ``oculi predict`` (exit 2);
(c) ``oculi train --resume`` must finish it (a folder killed before config.json was written has nothing to
    resume: --resume must refuse it and a new run into the same folder must be accepted), and the result
    must equal the reference; no temporary file may be left behind.

Prints one row per trial and the counts of each state at the kill; exits 1 on any violation.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import random
import signal
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

import numpy as np
from PIL import Image
from safetensors import safe_open

TIMING = ("seconds", "images_per_s", "time")  # metrics.jsonl fields that depend on the clock


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, default=20)
    parser.add_argument("--seed", type=int, default=0, help="seeds the kill moments and the training")
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--image-size", type=int, default=12)
    parser.add_argument("--work", type=Path, help="where the runs go (default: a new temporary folder)")
    args = parser.parse_args()
    work = args.work or Path(tempfile.mkdtemp(prefix="oculi-kill-resume-"))
    work.mkdir(parents=True, exist_ok=True)
    bench = Bench(work, ["digits", "--epochs", str(args.epochs), "--image-size", str(args.image_size),
                         "--seed", str(args.seed), "--no-report", "-q"])
    started = time.perf_counter()
    reference_seconds = bench.reference()
    print(f"reference run: {reference_seconds:.1f} s, in {work}")
    rng = random.Random(args.seed)
    rows = [bench.trial(n, rng.uniform(0, 1.1 * reference_seconds)) for n in range(args.trials)]
    _print_summary(rows, time.perf_counter() - started)
    return 1 if any(problems for _, _, _, problems in rows) else 0


class Bench:
    def __init__(self, work: Path, train_args: list[str]):
        self.work = work
        self.train_args = train_args
        # Decoded images are cached once, by the reference run, as a user's second run would find them.
        self.env = {**os.environ, "OCULI_CACHE_DIR": str(work / "cache")}
        self.image = work / "digit.png"
        Image.fromarray(np.full((8, 8), 128, np.uint8)).save(self.image)
        self.expected: dict = {}

    def oculi(self, *args: str) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-m", "oculi", *args], env=self.env, capture_output=True,
                              text=True, timeout=1800)

    def train(self, folder: Path) -> subprocess.CompletedProcess:
        return self.oculi("train", *self.train_args, "--out", str(folder))

    def reference(self) -> float:
        started = time.perf_counter()
        done = self.train(self.work / "reference")
        if done.returncode:
            sys.exit(f"the reference run failed:\n{done.stderr}")
        self.expected = outcome(self.work / "reference")
        return time.perf_counter() - started

    def trial(self, n: int, delay: float) -> tuple[int, float, str, list[str]]:
        folder = self.work / f"trial-{n:02d}"
        process = subprocess.Popen([sys.executable, "-m", "oculi", "train", *self.train_args, "--out", str(folder)],
                                   env=self.env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                   start_new_session=True)
        try:
            process.wait(timeout=delay)
            state = "finished before the kill"
        except subprocess.TimeoutExpired:
            process.send_signal(signal.SIGKILL)  # the main process only: its workers may live on a while
            process.wait()
            state = stage(folder)
        try:
            problems = self.check(folder)
        finally:
            _kill_group(process.pid)  # whatever the killed run left running
        print(f"trial {n:2d}: killed at {delay:5.1f} s, {state}: {'; '.join(problems) or 'ok'}", flush=True)
        return n, delay, state, problems

    def check(self, folder: Path) -> list[str]:
        finished = (folder / "model.json").is_file()
        predict = self.oculi("predict", str(folder), str(self.image))
        if finished:
            problems = [] if predict.returncode == 0 else [f"(a) predict refused it: {_last_line(predict)}"]
            again = self.oculi("train", "--resume", str(folder))
            if again.returncode != 2 or "already finished" not in again.stderr:
                problems.append(f"(a) --resume of a finished run: exit {again.returncode}, {_last_line(again)}")
        else:
            problems = [] if predict.returncode == 2 else [f"(b) predict gave exit {predict.returncode}"]
            problems += self.finish(folder)
        problems += [f"{key} differs from the uninterrupted run" for key, value in outcome(folder).items()
                     if value != self.expected[key]]
        leftovers = sorted(p.name for p in folder.glob(".*.tmp"))
        return problems + ([f"temporary files left: {', '.join(leftovers)}"] if leftovers else [])

    def finish(self, folder: Path) -> list[str]:
        """(c): --resume finishes the run; without config.json it must refuse, and a new run must be let in."""
        resumed = self.oculi("train", "--resume", str(folder))
        if (folder / "config.json").is_file() or resumed.returncode == 0:
            return [] if resumed.returncode == 0 else [f"(c) --resume failed: {_last_line(resumed)}"]
        if resumed.returncode != 2:
            return [f"(c) --resume of a folder without config.json: exit {resumed.returncode}"]
        fresh = self.train(folder)
        return [] if fresh.returncode == 0 else [f"(c) a new run into the folder failed: {_last_line(fresh)}"]


def stage(folder: Path) -> str:
    """How far the run had got when it was killed, from what its folder holds."""
    if (folder / "model.json").is_file():
        return "complete (model.json)"
    checkpoint = folder / "checkpoint.safetensors"
    if checkpoint.is_file():
        with safe_open(str(checkpoint), framework="numpy") as f:
            epoch = json.loads(f.metadata()["oculi_checkpoint"])["epoch"]
        return f"checkpoint of epoch {epoch}"
    if (folder / "config.json").is_file():
        return "config.json, no checkpoint yet"
    return "folder made, no config.json" if folder.is_dir() else "nothing written"


def outcome(folder: Path) -> dict:
    """What a finished run must reproduce exactly: its bundle, test results and per-epoch metrics."""
    def read(name: str) -> str | None:
        path = folder / name
        return path.read_text() if path.is_file() else None

    weights = folder / "model.safetensors"
    epochs = [json.loads(line) for line in (read("metrics.jsonl") or "").splitlines()]
    return {"model.json": read("model.json"), "test_metrics.json": read("test_metrics.json"),
            "test_predictions.csv": read("test_predictions.csv"),
            "model.safetensors": hashlib.sha256(weights.read_bytes()).hexdigest() if weights.is_file() else None,
            "metrics.jsonl": [{k: v for k, v in row.items() if k not in TIMING} for row in epochs]}


def _kill_group(pgid: int) -> None:
    try:
        os.killpg(pgid, signal.SIGKILL)
    except ProcessLookupError:
        pass


def _last_line(done: subprocess.CompletedProcess) -> str:
    lines = (done.stderr or done.stdout).strip().splitlines()
    return lines[-1] if lines else f"exit {done.returncode}, no output"


def _print_summary(rows: list, seconds: float) -> None:
    print("\n| trial | killed at (s) | state at the kill | result |\n| --- | --- | --- | --- |")
    for n, delay, state, problems in rows:
        print(f"| {n} | {delay:.1f} | {state} | {'; '.join(problems) or 'ok'} |")
    print("\n| state at the kill | trials | violations |\n| --- | --- | --- |")
    states = Counter(state for _, _, state, _ in rows)
    for state, count in sorted(states.items()):
        bad = sum(1 for _, _, s, problems in rows if s == state and problems)
        print(f"| {state} | {count} | {bad} |")
    violations = sum(1 for *_, problems in rows if problems)
    print(f"\n{len(rows)} trials, {violations} with violations, {seconds / 60:.1f} min in all")


if __name__ == "__main__":
    sys.exit(main())
