"""What test-time augmentation buys a trained run: its test accuracy with each ``--tta`` (none, flip,
flip-shift) and the time each takes, on the run's own test split.

    python benchmarks/tta_views.py RUN_DIR [RUN_DIR ...]

The test images are read again through the run's split.csv and the bundle's preprocessing, then every
TTA setting runs the same model over them (oculi.runtime.engines.predict_logits, as predict and evaluate do).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import time
from pathlib import Path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("runs", type=Path, nargs="+")
    parser.add_argument("--device", default="auto")
    args = parser.parse_args()

    import oculi
    from oculi.data.loading import load_split
    from oculi.data.sources import open_source
    from oculi.runtime.engines import predict_logits

    print("| run | model | tta | test accuracy | seconds |\n| --- | --- | --- | --- | --- |")
    for run in args.runs:
        classifier = oculi.load(run, device=args.device)
        cfg = json.loads((run / "config.json").read_text())["config"]
        source = open_source(cfg["data"], split_manifest=str(run / "split.csv"), data_dir=cfg.get("data_dir"))
        test = load_split(source, source.split_records("test"), classifier.preprocessing, [])
        for tta in ("none", "flip", "flip-shift"):
            preprocessing = dataclasses.replace(classifier.preprocessing, tta=tta)
            started = time.perf_counter()
            logits = predict_logits(classifier.model, test.images, preprocessing, classifier.device)
            seconds = time.perf_counter() - started
            accuracy = (logits.argmax(1) == test.labels).float().mean().item()
            print(f"| {run.name} | {classifier.meta['model']['name']} | {tta} | {accuracy:.2%} | {seconds:.1f} |")


if __name__ == "__main__":
    main()
