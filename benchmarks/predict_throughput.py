"""Batch prediction throughput of ``oculi predict`` on the CPU: images per second, process start to exit.

    python benchmarks/predict_throughput.py [--n 1000] [--engines torch onnx onnx-int8 openvino] [--run RUN]
                                            [--repeats 1] [--no-draft] [--sizes 300 500] [--compare-draft]
                                            [--compare-int8]

There is no cats-and-dogs set here, so the photos are made from the hymenoptera photos
(/tmp/hym/hymenoptera_data, extracted from /work/shared/data; 171-500 px): each of the ``--n`` photos is a
random crop (60-100 % of each side) of one of them, resized so that its longer side is 300-500 px
(uniform), saved as a JPEG at quality 90 into /tmp/oculi-predict-photos-N (made once, seed 0).

Without --run, a default bundle is trained first (``oculi train /tmp/hym/hymenoptera_data --mode features``:
efficientnet_lite0, 288 px, about 15 s) into /tmp/oculi-predict-bench/run, then exported: ``oculi export``
(model.onnx), ``oculi export --int8`` (model.int8.onnx) and ``oculi export --format openvino`` (model.xml:
OpenVINO IR, ``--engine openvino``), each through its parity gate.

Each engine is then timed as a subprocess, ``python -m oculi predict RUN PHOTOS --csv --engine E --device
cpu``, from the process start to its exit (start-up, bundle loading, decoding and inference included);
``--no-draft`` rows run the same with full-size JPEG decoding. Every run must print one row per photo.
The table shows images/s, the speed-up over the first row (the first engine; with --no-draft, its
full-size decoding) and, against that row's labels, the share of photos given the same label.
"""

from __future__ import annotations

import argparse
import csv
import io
import os
import random
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # --compare-int8 imports this checkout's oculi
HYMENOPTERA = Path("/tmp/hym/hymenoptera_data")
WORK = Path("/tmp/oculi-predict-bench")
ENGINES = ("auto", "torch", "onnx", "onnx-int8", "onnx-fp16", "openvino")


def make_photos(n: int, sizes: tuple[int, int] = (300, 500), source: Path = HYMENOPTERA, seed: int = 0) -> Path:
    """``n`` JPEGs of ``sizes`` px (longer side), q90, random crops of the hymenoptera photos, made once."""
    from PIL import Image

    folder = Path(f"/tmp/oculi-predict-photos-{n}" + ("" if sizes == (300, 500) else f"-{sizes[0]}-{sizes[1]}"))
    if folder.is_dir() and len(list(folder.glob("*.jpg"))) == n:
        return folder
    originals = sorted(source.rglob("*.jpg"))
    if not originals:
        sys.exit(f"no photos in {source}: extract hymenoptera_data from /work/shared/data first")
    rng = random.Random(seed)
    tmp = folder.with_name(folder.name + ".part")
    tmp.mkdir(parents=True, exist_ok=True)
    for i in range(n):
        with Image.open(originals[i % len(originals)]) as image:
            image = image.convert("RGB")
        w, h = image.size
        cw, ch = round(w * rng.uniform(0.6, 1)), round(h * rng.uniform(0.6, 1))
        left, top = rng.randint(0, w - cw), rng.randint(0, h - ch)
        crop = image.crop((left, top, left + cw, top + ch))
        scale = rng.uniform(*sizes) / max(cw, ch)
        crop.resize((max(1, round(cw * scale)), max(1, round(ch * scale))), Image.BICUBIC).save(
            tmp / f"photo_{i:05d}.jpg", quality=90)
    tmp.rename(folder)
    return folder


def oculi(*args: str, threads: int | None = None) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    if threads:
        env["OMP_NUM_THREADS"] = str(threads)
    return subprocess.run([sys.executable, "-m", "oculi", *args], capture_output=True, text=True, env=env)


def prepare_run(run: Path | None, engines: list[str]) -> Path:
    """The bundle to time: ``run``, else a default one trained now; exported as the engines need."""
    if run is None:
        run = WORK / "run"
        if not (run / "model.json").is_file():
            print(f"training a default bundle into {run} ...", flush=True)
            done = oculi("train", str(HYMENOPTERA), "--mode", "features", "--out", str(run), "-q", threads=1)
            if done.returncode:
                sys.exit(done.stderr)
    exports = {"onnx": [], "onnx-int8": ["--int8"], "onnx-fp16": ["--half"], "openvino": ["--format", "openvino"]}
    files = {"onnx": "model.onnx", "onnx-int8": "model.int8.onnx", "onnx-fp16": "model.fp16.onnx",
             "openvino": "model.xml"}
    for engine in engines:
        # an export of this very bundle is kept (predict refuses one of another bundle)
        if engine in exports and not (run / f"{files[engine]}.json").is_file():
            done = oculi("export", str(run), *exports[engine])
            print(f"export {' '.join(exports[engine]) or '(fp32)'}: "
                  + (done.stdout.strip() or done.stderr.strip()).replace("\n", "; "), flush=True)
    return run


def time_predict(run: Path, photos: Path, engine: str, draft: bool, n: int) -> tuple[float, dict[str, str]]:
    """Seconds from process start to exit of ``oculi predict``, and its label per photo."""
    args = ["predict", str(run), str(photos), "--csv", "--engine", engine, "--device", "cpu"]
    start = time.perf_counter()
    done = oculi(*args, *([] if draft else ["--no-draft"]))
    seconds = time.perf_counter() - start
    if done.returncode:
        sys.exit(f"oculi {' '.join(args)} failed:\n{done.stderr}")
    rows = list(csv.DictReader(io.StringIO(done.stdout)))
    if len(rows) != n:
        sys.exit(f"oculi {' '.join(args)} printed {len(rows)} rows for {n} photos")
    return seconds, {row["path"]: row["label"] for row in rows}


def compare_quantisers(run: Path, photos: Path, n: int = 200) -> None:
    """Static (what `oculi export --int8` writes) against dynamic int8 quantisation of the run's float32
    graph, in this process: ONNX Runtime, one thread, batches of 32 of ``n`` prepared photos; ms per image
    and agreement with float32. Calibration: 128 training images of the run, as the export takes them."""
    import tempfile

    import numpy as np
    import torch
    from onnxruntime.quantization import QuantType, quant_pre_process, quantize_dynamic

    from oculi.data.contained import prepare_files
    from oculi.deploy.export import int8_bytes
    from oculi.deploy.predict import Classifier
    from oculi.evaluate import training_images
    from oculi.runtime.onnx import OnnxRunner

    classifier = Classifier.load(run, device="cpu")
    images = torch.from_numpy(np.stack(list(prepare_files(sorted(photos.glob("*.jpg"))[:n],
                                                          classifier.preprocessing))))
    fp32 = (run / "model.onnx").read_bytes()
    with tempfile.TemporaryDirectory() as tmp:
        (Path(tmp) / "fp32.onnx").write_bytes(fp32)
        quant_pre_process(f"{tmp}/fp32.onnx", f"{tmp}/pre.onnx")
        quantize_dynamic(f"{tmp}/pre.onnx", f"{tmp}/dynamic.onnx", weight_type=QuantType.QUInt8)
        dynamic = Path(f"{tmp}/dynamic.onnx").read_bytes()
    graphs = {"float32": fp32, "int8 static (QDQ, per channel)": int8_bytes(fp32, training_images(classifier, run, 128)),
              "int8 dynamic": dynamic}
    runners = {name: OnnxRunner(graph, threads=1) for name, graph in graphs.items()}
    best, probs = {name: float("inf") for name in graphs}, {}
    for _ in range(3):  # rounds in turn, the best of each kept: a loaded machine slows all of them alike
        for name, runner in runners.items():
            runner(images[:8])  # warm-up
            start = time.perf_counter()
            probs[name] = torch.cat([runner(images[i:i + 32]) for i in range(0, n, 32)]).numpy()
            best[name] = min(best[name], (time.perf_counter() - start) / n * 1000)
    reference = probs["float32"]
    print(f"\n{n} photos, ONNX Runtime, 1 thread, batches of 32, best of 3 rounds")
    print(f"{'graph':<34}{'ms/image':>10}{'speed-up':>10}{'same label':>12}{'max |dp|':>10}")
    for name in graphs:
        same = np.mean(probs[name].argmax(1) == reference.argmax(1))
        print(f"{name:<34}{best[name]:>10.1f}{best['float32'] / best[name]:>9.2f}x{same:>12.2%}"
              f"{np.abs(probs[name] - reference).max():>10.3f}")


def compare_draft(run: Path, photos: Path, n: int = 200) -> None:
    """Preparing ``n`` photos (decode and resize to the bundle's input) with and without draft decoding, in
    this process, one thread, best of 3 rounds in turn; how many were drafted and how far the pixels moved."""
    import numpy as np
    import torch

    from oculi.data.contained import prepare_file
    from oculi.deploy.predict import Classifier

    torch.set_num_threads(1)
    pre = Classifier.load(run, device="cpu").preprocessing
    files = sorted(photos.glob("*.jpg"))[:n]
    best, arrays = {False: float("inf"), True: float("inf")}, {}
    for _ in range(3):
        for draft in (False, True):
            start = time.perf_counter()
            arrays[draft] = [prepare_file(f, pre, draft=draft) for f in files]
            best[draft] = min(best[draft], (time.perf_counter() - start) / len(files) * 1000)
    diffs = [np.abs(a.astype(int) - b.astype(int)) for a, b in zip(arrays[False], arrays[True])]
    drafted = sum(d.any() for d in diffs)
    print(f"\n{len(files)} photos prepared for {pre.image_size[0]}x{pre.image_size[1]}, 1 thread, best of 3 rounds: "
          f"full decoding {best[False]:.2f} ms/image, draft {best[True]:.2f} ms/image "
          f"({best[False] / best[True]:.2f}x); {drafted} drafted; mean |pixel difference| of those "
          f"{np.mean([d.mean() for d in diffs if d.any()] or [0]):.2f} levels")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=1000, help="photos to predict (default 1000)")
    parser.add_argument("--engines", nargs="+", default=["torch", "auto", "onnx-int8"], choices=ENGINES,
                        help="auto: the default engine (model.onnx, which a CPU run writes, without torch)")
    parser.add_argument("--one", type=int, default=5, metavar="K",
                        help="also time predicting one photo, K times per engine (the median; 0: not)")
    parser.add_argument("--no-draft", action="store_true", help="also time each engine with --no-draft (first)")
    parser.add_argument("--sizes", type=int, nargs=2, default=[300, 500], metavar=("LO", "HI"),
                        help="longer side of the photos, px (default 300 500; draft decoding needs twice the "
                             "model's input: 600 1200 for a 288-px bundle)")
    parser.add_argument("--run", type=Path, help="run folder to use (default: train one)")
    parser.add_argument("--repeats", type=int, default=1, help="timings per row; the median is shown")
    parser.add_argument("--compare-draft", action="store_true",
                        help="also time preparing photos with and without draft decoding in process (200 photos)")
    parser.add_argument("--compare-int8", action="store_true",
                        help="also compare static and dynamic int8 quantisation in process (200 photos)")
    args = parser.parse_args()
    if not 1 <= args.n <= 100_000 or args.repeats < 1:
        parser.error("--n must be from 1 to 100,000 and --repeats at least 1")
    photos = make_photos(args.n, tuple(args.sizes))
    run = prepare_run(args.run, args.engines)
    rows = []
    for engine in args.engines:
        for draft in (False, True) if args.no_draft else (True,):
            times, labels = [], {}
            for _ in range(args.repeats):
                seconds, labels = time_predict(run, photos, engine, draft, args.n)
                times.append(seconds)
            rows.append((engine + ("" if draft else " --no-draft"), statistics.median(times), labels))
    ones = {engine: statistics.median(time_predict(run, photos / "photo_00000.jpg", engine, True, 1)[0]
                                      for _ in range(args.one)) for engine in args.engines} if args.one else {}
    base = rows[0]
    print(f"\n{args.n} photos ({args.sizes[0]}-{args.sizes[1]} px JPEGs, q90) from {photos}; bundle {run}; "
          f"{os.cpu_count()} CPUs")
    print(f"{'engine':<24}{'seconds':>9}{'images/s':>10}  {'vs ' + base[0]:>20}{'same label':>12}")
    for name, seconds, labels in rows:
        same = sum(labels[k] == base[2][k] for k in labels) / len(labels)
        print(f"{name:<24}{seconds:>9.1f}{args.n / seconds:>10.1f}  {base[1] / seconds:>19.2f}x{same:>12.2%}")
    for engine, seconds in ones.items():
        print(f"one photo, --engine {engine}: {seconds:.2f} s wall (median of {args.one})")
    if args.compare_draft:
        compare_draft(run, photos, min(200, args.n))
    if args.compare_int8:
        compare_quantisers(run, photos, min(200, args.n))
    return 0


if __name__ == "__main__":
    sys.exit(main())
