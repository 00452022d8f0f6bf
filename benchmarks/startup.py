"""Start-up time: how long a new user waits before oculi does anything.

Each command runs in a fresh process (cold interpreter, warm OS file cache: one unmeasured run first)
and the table gives the median, min and max process wall time of ``--repeat`` runs, next to the bar of
issue 16, with the median CPU time (user + sys), which a busy machine inflates less, and the heavy
libraries the command imported. ``import torch`` alone is measured as the reference: ``oculi predict`` must import torch, so
its bar is a multiple of that figure. For ``predict``, a small bundle is trained first (digits, one
epoch, into a temporary folder) and one 8x8 PNG is classified.

    python benchmarks/startup.py [--repeat 5] [--json FILE]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

# Modules a command should not import unless it needs them; the table reports the ones that were.
HEAVY = ("torch", "timm", "sklearn", "matplotlib", "torchvision")


def oculi_command() -> list[str]:
    """The installed console script next to this interpreter (what a user types), else ``-m oculi``."""
    script = Path(sys.executable).with_name("oculi")
    return [str(script)] if script.is_file() else [sys.executable, "-m", "oculi"]


def children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def timed_run(argv: list[str], env: dict) -> tuple[float, float]:
    """(wall, CPU) seconds of one process. CPU time is the steadier figure on a busy machine: it does not
    count the time spent waiting for a core."""
    wall, cpu = time.perf_counter(), children_cpu()
    result = subprocess.run(argv, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    wall, cpu = time.perf_counter() - wall, children_cpu() - cpu
    if result.returncode != 0:
        sys.exit(f"{' '.join(argv)} failed ({result.returncode}):\n{result.stderr}")
    return wall, cpu


def measure(argv: list[str], env: dict, repeat: int) -> list[tuple[float, float]]:
    timed_run(argv, env)  # warms the OS file cache; not counted
    return [timed_run(argv, env) for _ in range(repeat)]


def heavy_modules(code: str, env: dict) -> list[str]:
    """Which of HEAVY a Python snippet leaves imported (run in a fresh interpreter)."""
    # The command's own output comes first; the module list is the last line.
    probe = f"{code}\nimport sys; print('\\n' + ' '.join(m for m in {HEAVY!r} if m in sys.modules))"
    result = subprocess.run([sys.executable, "-c", probe], env=env, capture_output=True, text=True, check=True)
    return result.stdout.splitlines()[-1].split()


def make_bundle(folder: Path, env: dict) -> tuple[Path, Path]:
    """A digits run trained for one epoch, and one digit image to classify."""
    run = folder / "run"
    subprocess.run([*oculi_command(), "train", "digits", "--epochs", "1", "--out", str(run), "--no-report", "-q"],
                   env=env, check=True)
    image = folder / "digit.png"
    subprocess.run([sys.executable, "-c", "import sys, numpy as np; from PIL import Image; "
                    "Image.fromarray((np.arange(64).reshape(8, 8) * 4).astype(np.uint8)).save(sys.argv[1])",
                    str(image)], env=env, check=True)
    return run, image


def cases(run: Path, image: Path) -> list[tuple[str, list[str], str, str]]:
    """(label, argv, code that imports the same in-process for the module probe, bar as text)."""
    oculi = oculi_command()
    predict = ["predict", str(run), str(image)]
    return [
        ("python -c 'import torch'", [sys.executable, "-c", "import torch"], "import torch", "reference"),
        ("python -c 'import oculi'", [sys.executable, "-c", "import oculi"], "import oculi", "<= 0.5 s"),
        ("oculi --help", [*oculi, "--help"], "from oculi.cli import main; main(['--help'])", "<= 0.5 s"),
        ("oculi train --help", [*oculi, "train", "--help"],
         "from oculi.cli import main; main(['train', '--help'])", "<= 0.5 s"),
        ("oculi predict RUN IMG", [*oculi, *predict],
         f"from oculi.cli import main; main({predict!r})", "<= 3x torch"),
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=5, help="timed runs of each command (the median is reported)")
    parser.add_argument("--json", type=Path, help="also write the figures to this file")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="oculi-startup-") as tmp:
        # A private cache: the benchmark neither reads nor fills the user's.
        env = {**os.environ, "OCULI_CACHE_DIR": str(Path(tmp) / "cache")}
        run, image = make_bundle(Path(tmp), env)
        rows = []
        for label, argv, probe, bar in cases(run, image):
            walls, cpus = zip(*measure(argv, env, args.repeat))
            rows.append({"command": label, "median_s": statistics.median(walls), "min_s": min(walls),
                         "max_s": max(walls), "cpu_median_s": statistics.median(cpus), "bar": bar,
                         "imports": heavy_modules(probe, env)})
    print_table(rows, args.repeat)
    if args.json:
        args.json.write_text(json.dumps(rows, indent=2) + "\n")


def print_table(rows: list[dict], repeat: int) -> None:
    torch_s = rows[0]["median_s"]
    print(f"process wall time, median of {repeat} (min-max), and CPU time (user + sys), median; "
          f"python {sys.version.split()[0]}, {os.cpu_count()} cores, load average {os.getloadavg()[0]:.1f}")
    print(f"{'command':<26} {'wall':>7} {'min-max':>12} {'cpu':>7}  {'bar (wall)':<11} heavy modules imported")
    for r in rows:
        spread = f"{r['min_s']:.2f}-{r['max_s']:.2f}"
        bar = r["bar"] if r["bar"] != "<= 3x torch" else f"<= {3 * torch_s:.2f} s"
        print(f"{r['command']:<26} {r['median_s']:>6.2f}s {spread:>12} {r['cpu_median_s']:>6.2f}s  {bar:<11} "
              f"{' '.join(r['imports']) or '-'}")


if __name__ == "__main__":
    main()
