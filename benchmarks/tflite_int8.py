"""model.tflite against model.int8.tflite in the LiteRT interpreter: images/s, size and agreement.

    python benchmarks/tflite_int8.py RUN

RUN: a run folder (the bundle of ``benchmarks/predict_throughput.py`` in BENCHMARKS.md). Both files are
exported first where missing (``oculi export RUN --format tflite [--int8]``, through their gates); each is
then run as oculi's gate runs it (one image at a time, 2 threads) on the run's check images, after one
warm-up call, and compared with the torch bundle. Needs ``pip install 'oculi[tflite]'``.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from oculi.deploy.export import FORMATS  # noqa: E402
from oculi.deploy.predict import Classifier  # noqa: E402
from oculi.evaluate import labelled_check_images  # noqa: E402


def exported(run: Path, name: str, flags: list[str]) -> Path:
    """RUN/name, made by ``oculi export`` when it is not there yet."""
    if not (run / name).is_file():
        subprocess.run([sys.executable, "-m", "oculi", "export", str(run), "--format", "tflite", *flags], check=True)
    return run / name


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("run", type=Path)
    run = parser.parse_args().run
    classifier = Classifier.load(run, device="cpu")
    images = labelled_check_images(classifier, run)[0]
    probs, energy = classifier.prepared_outputs(images)
    print(f"{len(images)} check images at {tuple(images.shape[2:])}")
    for name, flags in (("model.tflite", []), ("model.int8.tflite", ["--int8"])):
        session = FORMATS["tflite"].runner(exported(run, name, flags))
        session.outputs(images[:1])  # warm-up: the interpreter's first call allocates
        began = time.perf_counter()
        got, got_energy = session.outputs(images)
        seconds = time.perf_counter() - began
        print(f"{name:20s} {len(images) / seconds:7.1f} images/s  {(run / name).stat().st_size / 2**20:5.1f} MiB  "
              f"top-1 agreement {(got.argmax(1) == probs.argmax(1)).mean():.2%}  "
              f"max |p diff| {np.abs(got - probs).max():.4f}  max |energy diff| {np.abs(got_energy - energy).max():.3f}")


if __name__ == "__main__":
    main()
