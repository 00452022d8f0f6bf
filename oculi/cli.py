"""The ``oculi`` command: a thin layer over ``TrainConfig`` and the Python API.

Every user mistake (bad path, bad flag value, unreadable bundle) ends as one line on stderr and exit
code 2; nothing the user did wrong shows a traceback.
"""

from __future__ import annotations

import contextlib
import csv
import functools
import inspect
import itertools
import json
import os
import sys
import warnings
from pathlib import Path
from typing import List, Optional

import typer
from rich.console import Console
from rich.table import Table

from .config import AUGMENTATION_KNOBS, SETTINGS, Setting, TrainConfig
from .errors import BundleWarning, OculiError

app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False,
                  help="Train, evaluate and use image classifiers from folders of labelled images.")
# --engine of predict, evaluate and serve (the choice itself: deploy.predict.Classifier.load)
ENGINE_HELP = ("torch; onnx, onnx-int8, onnx-fp16, openvino: the run's model.onnx, model.int8.onnx, model.fp16.onnx, "
               "model.xml (training on the CPU writes model.onnx; `oculi export` makes any, with --int8, --half, "
               "--format openvino; of this very bundle); "
               "auto: model.onnx when there is one and the device is the CPU, else torch.")
# Pipes and CI logs get a wide console rather than rich's 80-column default, so tables don't fold.
out = Console(highlight=False, width=None if sys.stdout.isatty() else 160)
# Recent typer versions vendor click: take the exception classes from wherever typer's come from.
_click = sys.modules[typer.BadParameter.__module__]


# The settings that say how a table of labels is read: train has them among all others; check takes them too.
TABLE_SETTINGS = ["images", "path_column", "label_column", "split_column", "multi_label", "label_sep", "label_columns"]
# What typer parses each kind of setting as; a setting of another type (image_size) is text with a parse function.
CLI_TYPES = {"int": int, "float": float, "str": str, "bool": bool}


def setting_options(names):
    """Give a command an option for each named TrainConfig setting, with the flag, default and help that
    oculi.config declares for it; the command receives their values, parsed where the setting says how,
    as one dict, ``settings``."""
    options = [_option(SETTINGS[name]) for name in names]

    def decorate(command):
        signature = inspect.signature(command)

        @functools.wraps(command)
        def with_settings(**kwargs):
            settings = {o.name: _parsed(SETTINGS[o.name], kwargs.pop(o.name)) for o in options}
            return command(**kwargs, settings=settings)

        own = [p for p in signature.parameters.values() if p.name != "settings"]
        with_settings.__signature__ = signature.replace(parameters=own + options)
        return with_settings
    return decorate


def _option(s: Setting) -> inspect.Parameter:
    """The typer option of setting ``s``, as a parameter of the command."""
    kind = str if s.parse else CLI_TYPES[s.kind]
    return inspect.Parameter(s.name, inspect.Parameter.KEYWORD_ONLY, annotation=Optional[kind],
                             default=setting_option(s.name))


def setting_option(name: str):
    """The typer option of TrainConfig setting ``name``, with the flag, default and help that oculi.config
    declares for it: ``--flag`` (``--flag/--no-flag`` for a yes-or-no setting). For a command that takes
    one setting as it is (``device: str = setting_option("device")``); ``setting_options`` also parses."""
    s = SETTINGS[name]
    decl = f"{s.flag}/--no-{s.flag[2:]}" if s.kind == "bool" and not s.parse else s.flag
    return typer.Option(s.default, decl, help=s.help)


def _parsed(s: Setting, value):
    return s.parse(value) if s.parse and value is not None else value


@app.command()
@setting_options([name for name, s in SETTINGS.items() if s.cli])
def train(
    data: Optional[str] = typer.Argument(None, help=SETTINGS["data"].help),
    resume: Optional[Path] = typer.Option(None, help="Continue the interrupted run in this folder."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="Only warnings and errors."),
    verbose: bool = typer.Option(False, "--verbose", help="With several processes: every process prints, not only "
                                 "rank 0."),
    settings: dict | None = None,
) -> None:
    """Train a classifier and evaluate it on the held-out test images."""
    if resume is None and data is None:
        raise OculiError("train: give a DATA folder or a built-in dataset name (e.g. `oculi train digits`)")
    cfg = None if resume is not None else TrainConfig(data=data, progress=not quiet, **settings).validate()
    if settings["nproc"] > 1 and not _launched():
        _in_workers(settings["nproc"], settings["max_restarts"], _train_here, cfg, resume, quiet, verbose)
        return
    _train_here(cfg, resume, quiet, verbose)


def _train_here(cfg: TrainConfig | None, resume: Path | None, quiet: bool, verbose: bool) -> None:
    """`oculi train` in this process (alone, or one rank of several): a new run from ``cfg``, or ``resume``."""
    from .api import resume_and_report, train_and_report
    from .console import Reporter
    from .training.distributed import silence
    reporter = Reporter(quiet=quiet)
    if not (verbose or _rank_zero()):
        silence(reporter)
    if resume is not None:
        resume_and_report(resume, reporter)
    else:
        train_and_report(cfg, reporter)


def _launched() -> bool:
    """True in a process that torchrun (or --nproc) started as one of several."""
    return int(os.environ.get("WORLD_SIZE", 1)) > 1


def _rank_zero() -> bool:
    return os.environ.get("RANK", "0") == "0"


def _in_workers(nproc: int, max_restarts: int, command, *args):
    """``command(*args)`` in ``nproc`` worker processes started by torch.distributed's elastic launcher
    (runtime.world.launch); rank 0's result. A user error comes back as a value (the launcher would
    restart a worker that raised) and is raised here, once."""
    from .runtime.world import launch
    if max_restarts and command is not _train_here:
        raise OculiError("--max-restarts is for `oculi train`")
    error, result = launch(nproc, _contained, command, *args, max_restarts=max_restarts)
    if error is not None:
        raise OculiError(error)
    return result


def _contained(command, *args) -> tuple[str | None, object]:
    """(None, ``command(*args)``), or (the message, None) of the OculiError it raised."""
    try:
        return None, command(*args)
    except OculiError as err:
        return str(err), None


MIN_CONFIDENCE_HELP = ("Answer 'unknown' below this calibrated confidence, 0 to 1 (default: the threshold the run "
                       "chose with --abstain-threshold or --target-precision, if any).")


@app.command()
@setting_options(TABLE_SETTINGS)
def check(
    data: str = typer.Argument(..., help=SETTINGS["data"].help),
    labels: bool = typer.Option(False, "--labels", help="Also rank the images most likely mislabelled (label_issues.csv; computes backbone features, cached for training)."),
    out_dir: Optional[Path] = typer.Option(None, "--out", help="Where to write duplicates.csv, label_issues.csv, check.json, check.html (default checks/<data>/)."),
    as_json: bool = typer.Option(False, "--json", help="Print the results as one JSON object."),
    device: str = setting_option("device"),
    settings: dict | None = None,
) -> None:
    """Trust the data: duplicates, train/test leaks, class balance, sizes and colour, likely label errors."""
    from .api import check as check_data
    from .console import Reporter
    result, written = check_data(data, labels, out_dir, Reporter(quiet=as_json), device, **settings)
    if as_json:
        print(json.dumps(result.to_dict(), indent=2))
        return
    out.print(result.summary())
    for warning in result.warnings:
        _warn(warning.message)
    for row in (result.label_issues or [])[:10]:
        out.print(f"  {row['path']}: labelled {row['given']}, looks like {row['suggested']} (score {row['score']:.2f})")
    out.print(f"written to {written}/ (check.html: thumbnails)")


@app.command()
@setting_options(TABLE_SETTINGS)
def evaluate(
    run: Path = typer.Argument(..., help="Run folder (or its model.json), or hf://owner/name[@revision] on the Hugging Face Hub."),
    data: Optional[str] = typer.Option(None, help="Folder of class folders, or a table of labels, to evaluate on (default: the run's own test split, read again from its data)."),
    top_k: int = setting_option("top_k"),
    as_json: bool = typer.Option(False, "--json", help="Print the metrics as JSON."),
    out_dir: Optional[Path] = typer.Option(None, "--out", help="Where to write metrics and plots (default RUN/evaluate-<data>, or RUN/evaluate-test)."),
    device: str = setting_option("device"),
    min_confidence: Optional[float] = typer.Option(None, help=MIN_CONFIDENCE_HELP),
    engine: str = typer.Option("auto", help=ENGINE_HELP),
    settings: dict | None = None,
) -> None:
    """Accuracy, top-k, per-class precision/recall/F1, log loss, calibration error and a confusion matrix on
    labelled images (--data, or the run's own test split); with a confidence threshold, the share answered
    and the accuracy of those answers."""
    from .deploy.predict import Classifier
    from .evaluate import evaluate_folder, evaluate_run
    from .metrics import metrics_table_rows
    run = local_run(run)
    classifier = _with_min_confidence(Classifier.load(run, device=device, engine=engine), min_confidence)
    run_dir = run if run.is_dir() else run.parent
    if data is None:
        metrics, written = evaluate_run(classifier, run_dir, top_k=top_k, out=out_dir)
    else:
        metrics, written = evaluate_folder(classifier, data, top_k=top_k, out=out_dir, run_dir=run_dir, table=settings)
    if as_json:
        print(json.dumps(metrics, indent=2))
        return
    split = f" (the run's {metrics['split']} split)" if "split" in metrics else ""
    title = f"{metrics['n']} images from {metrics['data']}{split}"
    if metrics.get("multi_label"):
        _print_label_set_metrics(metrics, title)
        out.print(f"written to {written}/")
        return
    table = Table("class", "precision", "recall", "f1", "support", title=title)
    for row in metrics_table_rows(metrics):
        table.add_row(*row)
    out.print(table)
    out.print(f"accuracy {metrics['accuracy']:.2%}   top-{metrics['top_k']} {metrics['top_k_accuracy']:.2%}   "
              f"log loss {metrics['log_loss']:.4f}   ECE {metrics['ece']:.4f} (temperature {metrics['temperature']:.3f})")
    from .calibration import describe_abstaining
    abstaining = describe_abstaining(metrics["abstain"])
    if abstaining:
        out.print(abstaining)
    from .deploy.lite import describe_engine
    out.print(f"engine: {describe_engine(classifier)}")
    out.print(f"written to {written}/")


def _print_label_set_metrics(metrics: dict, title: str) -> None:
    """A multi-label model's evaluation: each class's AP and scores at its threshold, then the set scores."""
    table = Table("class", "AP", "threshold", "precision", "recall", "f1", "support", title=title)
    for c in metrics["per_class"]:
        table.add_row(c["class"], "-" if c["ap"] is None else f"{c['ap']:.3f}", f"{c['threshold']:.2f}",
                      f"{c['precision']:.3f}", f"{c['recall']:.3f}", f"{c['f1']:.3f}", str(c["support"]))
    out.print(table)
    out.print(f"mAP {metrics['mAP']:.2%} (micro {metrics['micro_mAP']:.2%})   macro-F1 {metrics['macro_avg']['f1']:.3f}   "
              f"micro-F1 {metrics['micro_avg']['f1']:.3f}   every label right {metrics['subset_accuracy']:.2%}   "
              f"Hamming loss {metrics['hamming_loss']:.4f}")


def _with_min_confidence(classifier, value: float | None):
    """``classifier`` answering "unknown" below ``value`` (None: the bundle's own threshold)."""
    if value is not None:
        if not 0 <= value <= 1:
            raise OculiError(f"--min-confidence must be between 0 and 1, got {value:g}")
        classifier.min_confidence = value
    return classifier


@app.command()
def predict(
    run: Path = typer.Argument(..., help="Run folder (or its model.json), or hf://owner/name[@revision] on the Hugging Face Hub."),
    paths: Optional[List[str]] = typer.Argument(None, help="Image files, folders or glob patterns; or video files (.mp4, .mov, .mkv, .avi, .webm, ...)."),
    top_k: int = typer.Option(3, help="How many classes to show per image."),
    as_json: bool = typer.Option(False, "--json", help="JSON lines, one per image."),
    as_csv: bool = typer.Option(False, "--csv", help="CSV: path, label, confidence, top-k."),
    batch_size: int = typer.Option(64, help="Images per forward pass."),
    device: str = setting_option("device"),
    engine: str = typer.Option("auto", help=ENGINE_HELP),
    draft: bool = typer.Option(True, "--draft/--no-draft", help="Decode JPEGs of at least twice the model's input size at 1/2-1/8 scale before resizing (faster), pixel for pixel as training, `evaluate`, `serve` and the Python API read them; --no-draft: at full size."),
    min_confidence: Optional[float] = typer.Option(None, help=MIN_CONFIDENCE_HELP),
    nproc: int = typer.Option(1, help="Worker processes (one per GPU), each predicting its share of the files; the output is in input order (under torchrun leave it at 1)."),
    every: Optional[str] = typer.Option(None, help="Videos: the frames to predict, one each 0.5s or 2 (seconds of video), or every 10th frame: 10f (default: 1s). Rows add the frame's time (s) and index."),
    out_file: Optional[Path] = typer.Option(None, "--out", help="A video: also write a copy with the label and confidence drawn on every frame (.mp4, .mkv, .mov, .avi). --watch: the CSV the rows are appended to (default: stdout)."),
    source: Optional[str] = typer.Option(None, help="A live video: a webcam's number (0: v4l2 on Linux, avfoundation on macOS) or a stream URL (rtsp://...); Ctrl-C stops it."),
    watch: Optional[Path] = typer.Option(None, help="Predict each image that lands in this folder (or its subfolders) once it is complete, a CSV row each (--json: JSON lines), until Ctrl-C."),
    existing: bool = typer.Option(False, "--existing", help="--watch: predict the images already in the folder first (default: only new or changed ones)."),
    settle: Optional[float] = typer.Option(None, help="--watch: seconds a file must stay unchanged before it is read (default 0.5); one that still does not decode is tried again until it has been unchanged ten times as long, then reported once."),
) -> int:
    """Classify new images with a trained run (exit code 1 when none of them can be read). Each answer has
    a calibrated confidence and an out-of-distribution score (energy: higher = less like the training
    images; torch engine only); below --min-confidence the answer is 'unknown'. Also the frames of videos
    (files, a webcam, a stream) and the images landing in a watched folder."""
    if top_k < 1 or batch_size < 1 or nproc < 1:
        raise OculiError("--top-k, --batch-size and --nproc must be at least 1")
    fmt = "json" if as_json else "csv" if as_csv else "table"
    mode = _predict_mode(paths, source, watch)
    _check_predict_flags(mode, every=every, out=out_file, existing=existing, settle=settle, nproc=nproc)
    run = local_run(run)  # once, before any worker starts
    if mode == "images":
        if nproc > 1 and not _launched():
            return _in_workers(nproc, 0, _predict_here, run, paths, top_k, fmt, batch_size, device, engine,
                               min_confidence, draft)
        return _predict_here(run, paths, top_k, fmt, batch_size, device, engine, min_confidence, draft)
    from .deploy.predict import Classifier
    from .deploy.video import DEFAULT_EVERY, parse_every
    sampling = parse_every(DEFAULT_EVERY if every is None else every)  # a bad one before the model loads
    sources = _video_sources(paths, source) if mode == "videos" else []
    classifier = _with_min_confidence(Classifier.load(run, device=device, engine=engine), min_confidence)
    if mode == "watch":
        return _watch_here(classifier, watch, fmt, top_k, out_file, existing, settle, draft)
    return _predict_videos_here(classifier, sources, sampling, fmt, top_k, out_file, batch_size)


# What each way of giving predict its input takes, beyond the common flags (--top-k, --json, --device...).
PREDICT_FLAGS = {"images": {"nproc"}, "videos": {"every", "out"}, "watch": {"out", "existing", "settle"}}


def _predict_mode(paths: list[str] | None, source: str | None, watch: Path | None) -> str:
    """"images", "videos" (files, or --source) or "watch": what predict was given, exactly one of them."""
    given = [name for name, value in (("files", paths), ("--source", source), ("--watch", watch)) if value]
    if len(given) != 1:
        raise OculiError("predict: give image or video files, --source or --watch" if not given
                         else f"predict: {' and '.join(given)}: give one of them")
    if watch is not None:
        return "watch"
    from .deploy.video import is_video
    if source is not None or any(is_video(p) for p in paths):
        return "videos"
    return "images"


def _check_predict_flags(mode: str, **values) -> None:
    """One line for a flag that does nothing for this ``mode`` (it would be silently ignored)."""
    defaults = {"every": None, "out": None, "existing": False, "settle": None, "nproc": 1}
    for name, value in values.items():
        if value != defaults[name] and name not in PREDICT_FLAGS[mode]:
            users = [m for m, flags in PREDICT_FLAGS.items() if name in flags]
            raise OculiError(f"--{name} is for {' and '.join(users)}, not {mode}")


def _video_sources(paths: list[str] | None, source: str | None) -> list:
    """The videos to predict: --source, or the video files named (a glob of them too)."""
    from .deploy.predict import expand_paths
    from .deploy.video import is_video, live_source, video_file
    if source is not None:
        return [live_source(source)]
    if not all(is_video(p) for p in paths):
        raise OculiError("predict: give images or videos, not both in one call")
    files, missing = expand_paths(paths)
    for item in missing:
        _warn(f"no such file or folder: {item}")
    if not files:
        raise OculiError("predict: no video files found in " + ", ".join(paths))
    return [video_file(f) for f in files]


def _predict_videos_here(classifier, sources: list, sampling, fmt: str, top_k: int, out_file: Path | None,
                         batch_size: int) -> int:
    """`oculi predict` on videos: a row per sampled frame, and a line for each video on stderr (a warning when
    it stopped early). Exit code 1 when no frame could be predicted, 130 when a file was interrupted."""
    from .console import Reporter
    from .deploy.video import predict_video
    if out_file is not None and len(sources) > 1:
        raise OculiError("--out writes one labelled video: give one video with it")
    printer = _Printer(fmt, what="video")
    code = 0
    for source in sources:
        # A file's rows wait for the end of its progress bar (they would share the terminal); a live
        # source's come as its frames do.
        rows: list = []
        show = printer.add if source.live else lambda *row: rows.append(row)
        summary = predict_video(classifier, source, sampling,
                                lambda f: show(f.prediction, {"time": round(f.time, 3), "frame": f.frame}),
                                top_k, out_file, batch_size, Reporter())
        for row in rows:
            printer.add(*row)
        ended_badly = summary.stopped is not None and not (summary.interrupted and source.live)
        (_warn if ended_badly else _note)(summary.line())
        code = max(code, 1 if not summary.predicted else 130 if summary.interrupted and not source.live else 0)
        if summary.written is not None:
            _note(f"wrote {summary.written}")
    printer.close()
    return code


def _watch_here(classifier, folder: Path, fmt: str, top_k: int, out_file: Path | None, existing: bool,
                settle: float | None, draft: bool) -> int:
    """`oculi predict --watch`: a row per image as it lands (CSV, or JSON lines: a table would wait for the
    end), appended to --out or printed; a summary line when Ctrl-C or SIGTERM stops it."""
    from .deploy.watch import DEFAULT_SETTLE, FolderWatch
    watcher = FolderWatch(classifier, folder, lambda p: printer.add(p), _warn, top_k,
                          DEFAULT_SETTLE if settle is None else settle, existing, draft)
    with _appending(out_file) as (stream, fresh):
        printer = _Printer("json" if fmt == "json" else "csv", stream=stream, header=fresh)
        into = f", rows appended to {out_file}" if out_file is not None else ""
        summary = watcher.run(on_start=lambda: _note(f"watching {folder} for new images{into} (Ctrl-C to stop)"))
    _note(summary.line())
    return 0


@contextlib.contextmanager
def _appending(path: Path | None):
    """(stream, whether it is empty) to add rows to: ``path`` opened to append, or stdout."""
    if path is None:
        yield sys.stdout, True
        return
    try:
        stream = open(path, "a", newline="", encoding="utf-8")
    except OSError as err:
        raise OculiError(f"--out {path}: cannot write ({err.strerror or err})") from None
    with stream:
        yield stream, stream.tell() == 0


def _predict_here(run: Path, paths: list[str], top_k: int, fmt: str, batch_size: int, device: str,
                  engine: str, min_confidence: float | None, draft: bool) -> int:
    """`oculi predict` in this process: all the files, or with several processes this rank's share of
    them, rank 0 printing every rank's predictions (and unreadable files) in input order. Alone, it imports
    torch only when the engine is torch (``deploy.lite.load_classifier``)."""
    from .deploy.answers import expand_paths
    from .deploy.lite import describe_engine, load_classifier
    w = _ranks() if _launched() else None
    if w is None:
        classifier = load_classifier(run, device=device, engine=engine)
    else:
        from .deploy.predict import Classifier
        classifier = Classifier.load(run, device=_rank_device(device, w), engine=engine)
    classifier = _with_min_confidence(classifier, min_confidence)
    main = w is None or w.main
    files, missing = expand_paths(paths)
    for item in missing if main else ():
        _warn(f"no such file or folder: {item}")
    if not files:
        raise OculiError("predict: no image files found in " + ", ".join(paths))
    if main:  # on stderr: --json and --csv keep stdout for the predictions alone
        print(f"engine: {describe_engine(classifier)}", file=sys.stderr)
    failures: list = []
    if w is None:
        predictions = classifier.predict_files(files, top_k=top_k, batch_size=batch_size, failures=failures,
                                               draft=draft)
    else:
        predictions, failures = _sharded_predictions(classifier, files, top_k, batch_size, w, draft)
        if not w.main:
            return 0
    first = next(predictions, None)  # read before printing anything: no table or header for nothing
    if first is not None:
        _print_predictions(itertools.chain([first], predictions), fmt)
    for path, reason in failures:
        _warn(f"could not read {path}: {reason}")
    if first is None:
        print(f"error: predict: none of the {len(files)} image files could be read", file=sys.stderr)
        return 1
    return 0


def _ranks():
    """This process's place among several (torch's world: only a job of several processes needs it)."""
    from .runtime.world import world
    return world()


def _rank_device(device: str, w) -> str:
    """--device for this rank: with several processes, "auto" or "cuda" is this rank's own GPU."""
    from .runtime.engines import resolve_device
    from .runtime.world import rank_device
    return str(rank_device(resolve_device(device), w)) if w.size > 1 else device


def _sharded_predictions(classifier, files: list, top_k: int, batch_size: int, w, draft: bool) -> tuple:
    """(predictions, failures) of all ``files`` in input order, on rank 0 (each rank predicts its
    contiguous share; failures stay failures, listed in input order too)."""
    from .runtime.world import gather_objects, process_group
    with process_group(w, classifier.device):
        failures: list = []
        mine = list(classifier.predict_files(files[w.part(len(files))], top_k=top_k, batch_size=batch_size,
                                             failures=failures, draft=draft))
        shares = gather_objects(w, (mine, failures))
    return iter([p for share, _ in shares for p in share]), [f for _, share in shares for f in share]


@app.command()
def export(
    run: Path = typer.Argument(..., help="Run folder (or its model.json)."),
    fmt: str = typer.Option("onnx", "--format", help="onnx, torchscript, openvino (model.xml and model.bin), tflite (model.tflite: uint8 NHWC, batch 1) or coreml (model.mlpackage: int32 NCHW; not run off macOS, so not verified there)."),
    out_dir: Optional[Path] = typer.Option(None, "--out", help="Where to write the files (default: the run folder)."),
    data: Optional[List[str]] = typer.Option(None, help="Images to check the export on (files, folders, globs; default: the run's own test split)."),
    max_images: int = typer.Option(1000, help="Most images the check uses."),
    int8: bool = typer.Option(False, "--int8", help="model.int8.onnx: int8 weights and activations (ONNX Runtime static quantisation, calibrated on up to 128 training images of the run); faster on CPUs. With --format tflite, model.int8.tflite: the convolutions in int8 the same way (ai-edge-quantizer), dense layers and probabilities in float. Gate: at most 2% of the check images (or one) change class and test accuracy at most 0.5 points below the bundle's."),
    half: bool = typer.Option(False, "--half", help="model.fp16.onnx: float16 weights and activations, for GPUs (runs on CPUs, slowly). Same gate as --int8."),
) -> int:
    """Export a trained model as one file that takes uint8 images [N, C, H, W] at the bundle's size and
    returns class probabilities (normalisation and test-time views inside); written only when it agrees
    with the bundle on real images (exit code 1 otherwise, with the figures in RUN/export_refused.json)."""
    from .deploy.export import (CALIBRATION_IMAGES, FORMATS, ParityError, check_precision, clear_refusal,
                                describe_parity, export_classifier, save_refusal)
    from .deploy.predict import Classifier
    from .evaluate import labelled_check_images, training_images
    if fmt not in FORMATS:
        raise OculiError(f"--format: unknown format '{fmt}' (use {', '.join(list(FORMATS)[:-1])} or {list(FORMATS)[-1]})")
    if max_images < 1:
        raise OculiError("--max-images must be at least 1")
    if int8 and half:
        raise OculiError("--int8 and --half: choose one")
    precision = "int8" if int8 else "fp16" if half else "fp32"
    check_precision(fmt, precision)  # before the images are read
    FORMATS[fmt].require()
    classifier = Classifier.load(run, device="cpu")  # the reference in float32, as the export computes
    run_dir = run if run.is_dir() else run.parent
    images, labels, source = labelled_check_images(classifier, run_dir, data, max_images)
    calibration = training_images(classifier, run_dir, CALIBRATION_IMAGES) if int8 else None
    folder = out_dir or run_dir
    try:
        meta = export_classifier(classifier, images, fmt, folder, source, precision, labels, calibration)
    except ParityError as err:
        print(f"error: {err} (figures in {save_refusal(run_dir, err)})", file=sys.stderr)
        return 1
    clear_refusal(run_dir, meta["file"])
    out.print(f"{'parity on ' + source if meta['verified'] else 'not verified'}: {describe_parity(meta['parity'])}")
    beside = "".join(f", {name}" for name in meta.get("companions", {}))
    out.print(f"wrote {folder / meta['file']}{beside} and {meta['file']}.json")
    return 0


def _print_predictions(predictions, fmt: str) -> None:
    printer = _Printer(fmt)
    for p in predictions:
        printer.add(p)
    printer.close()


class _Printer:
    """Predictions as ``fmt`` says: CSV rows or JSON lines written to ``stream`` as they come (flushed, for a
    camera or a watched folder read as it goes), or one table, printed by ``close``. The ``fields`` of a row
    (a video frame's time and index) come between its source and its prediction. ``header``: CSV's first."""

    def __init__(self, fmt: str, what: str = "image", stream=None, header: bool = True):
        self.fmt, self.what, self.stream, self.header = fmt, what, stream or sys.stdout, header
        self.table: Table | None = None

    def add(self, p, fields: dict | None = None) -> None:
        fields = fields or {}
        if self.fmt == "table":
            self._add_to_table(p, fields)
            return
        if self.fmt == "json":
            self.stream.write(json.dumps({**p.to_dict(), **fields}) + "\n")
        else:
            writer = csv.writer(self.stream, lineterminator="\n")
            if self.header:
                writer.writerow(["path", *fields, "label", "confidence", "top_k", "top_label", "ood_score"])
                self.header = False
            writer.writerow([p.source, *map(_cell, fields.values()), p.label, f"{p.confidence:.6f}",
                             ";".join(f"{c}:{q:.6f}" for c, q in p.top_k), p.top_label,
                             "" if p.ood_score is None else f"{p.ood_score:.4f}"])
        self.stream.flush()

    def _add_to_table(self, p, fields: dict) -> None:
        if self.table is None:
            self.table = Table(self.what, *fields, "prediction", "confidence", "top-k", "ood score")
        shown = p.label if p.label == p.top_label or p.labels is not None else f"{p.label} (top: {p.top_label})"
        self.table.add_row(p.source, *map(_cell, fields.values()), shown, f"{p.confidence:.1%}",
                           ", ".join(f"{c} {q:.1%}" for c, q in p.top_k[1:]),
                           "" if p.ood_score is None else f"{p.ood_score:.2f}")

    def close(self) -> None:
        if self.table is not None:
            out.print(self.table)


def _cell(value) -> str:
    return f"{value:.3f}" if isinstance(value, float) else str(value)


@app.command("augment-preview")
@setting_options(("augment", "image_size") + AUGMENTATION_KNOBS)
def augment_preview(
    data: str = typer.Argument(..., help=SETTINGS["data"].help),
    n: int = typer.Option(20, "--n", help="Augmented versions of each image."),
    images: int = typer.Option(3, help="How many images (one per class, in class order)."),
    seed: int = typer.Option(0, help="Seed of the random augmentations (and of the split they are drawn from)."),
    out_file: str = typer.Option("augment_preview.png", "--out", help="The PNG to write (a folder: augment_preview.png in it)."),
    settings: dict | None = None,
) -> None:
    """A grid of augmented versions of a few images, as training would see them."""
    from .plots import save_figure
    from .report.augment import augmentation_preview
    figure = augmentation_preview(data, n, images, seed=seed, **settings)
    if figure.get_suptitle():
        out.print(figure.get_suptitle())
    out.print(f"wrote {save_figure(figure, _png_path(out_file, 'augment_preview.png'))}")


@app.command()
def report(run: Path = typer.Argument(..., help="Run folder.")) -> None:
    """Rebuild report.html of a run: data, augmentation, model, curves, metrics, predictions, Grad-CAM."""
    from .console import Reporter
    from .report.build import write_report
    out.print(f"wrote {write_report(run, reporter=Reporter())}")


@app.command()
def card(run: Path = typer.Argument(..., help="Run folder."),
         out_file: Optional[Path] = typer.Option(None, "--out", help="Where to write it (default RUN/README.md).")) -> None:
    """Write the model card of a run: README.md in the Hugging Face format (data, training, test figures with
    their uncertainty, calibration, exports and their agreement, limits)."""
    from .report.card import write_card
    out.print(f"wrote {write_card(run, out_file)}")


@app.command()
def compare(
    runs: List[Path] = typer.Argument(..., help="Run folders."),
    out_file: Path = typer.Option(Path("compare.html"), "--out", help="The page to write (a folder: compare.html in it)."),
) -> None:
    """Compare finished runs: one table (data, model, parameters, accuracy, macro-F1, log loss, ECE, training
    time, images/s) and compare.html, with every run's val curves overlaid and the settings that differ."""
    from .report.compare import HEADERS, write_comparison
    path, rows = write_comparison(runs, out_file)
    table = Table(*HEADERS)
    for row in rows:
        table.add_row(*row)
    out.print(table)
    out.print(f"wrote {path}")


@app.command()
def tune(
    data: str = typer.Argument(..., help=SETTINGS["data"].help),
    budget: str = typer.Option("30m", help="The whole search's time: 90s, 10m, 1.5h."),
    out_dir: Optional[Path] = typer.Option(None, "--out", help="The tune folder (default tunes/<data>); "
                                           "running again on it continues the search."),
    seed: int = typer.Option(0, help=SETTINGS["seed"].help),
    trials: Optional[int] = typer.Option(None, help="At most this many head trials (default: as the budget allows)."),
    finalists: int = typer.Option(2, help="How many of the best head trials are then fine-tuned."),
    device: str = typer.Option("auto", help=SETTINGS["device"].help),
) -> None:
    """Search backbone x image size x head x feature views x lr (Optuna, successive halving) on cached
    features, fine-tune the best few; every trial a run folder, all in compare.html, the best named."""
    from .config import parse_duration
    from .tune import tune as run_tune
    result = run_tune(data, parse_duration(budget, "--budget"), out_dir, seed, trials, finalists, device=device)
    if result.best_run is not None:
        out.print(result.best_run)


@app.command()
def filters(
    image: Path = typer.Argument(..., help="An image file."),
    low: float = typer.Option(50.0, help="Canny: lower hysteresis threshold (gradient magnitude, 0-255 scale)."),
    high: float = typer.Option(150.0, help="Canny: upper hysteresis threshold."),
    sigma: float = typer.Option(1.0, help="Gaussian blur sigma, in pixels."),
    out_file: str = typer.Option("filters.png", "--out", help="The PNG to write, or a folder to write filters.png in."),
) -> None:
    """The image filters side by side: sharpen, blur, Canny edges, blur then sharpen."""
    from .data.decode import decode_image
    from .data.filters import blur, blur_sharpen, edges, sharpen
    from .plots import plot_filters, save_figure
    if not 0 <= low <= high:
        raise OculiError(f"--low and --high must satisfy 0 <= low <= high, got {low} and {high}")
    if sigma <= 0:
        raise OculiError(f"--sigma must be positive, got {sigma}")
    pixels = decode_image(image)
    figure = plot_filters(pixels, {"sharpen": sharpen(pixels), f"blur (sigma {sigma:g})": blur(pixels, sigma),
                                   f"edges ({low:g}/{high:g})": edges(pixels, low, high),
                                   "blur+sharpen": blur_sharpen(pixels, sigma)})
    out.print(f"wrote {save_figure(figure, _png_path(out_file, 'filters.png'))}")


@app.command()
def explain(
    run: Path = typer.Argument(..., help="Run folder (or its model.json), or hf://owner/name[@revision] on the Hugging Face Hub."),
    image: Path = typer.Argument(..., help="An image file."),
    class_name: Optional[str] = typer.Option(None, "--class", help="Explain this class (default: the predicted one)."),
    channels: int = typer.Option(16, help="Feature-map channels shown per stage (the most active ones)."),
    out_dir: Optional[Path] = typer.Option(None, "--out", help="Where to write the PNGs (default RUN/explain-<image name>)."),
    device: str = setting_option("device"),
) -> None:
    """What the model looks at: feature maps of each convolutional stage and a Grad-CAM heat map."""
    from .deploy.explain import explain_image
    from .deploy.predict import Classifier
    from .plots import save_figure
    from .report.explain_plots import plot_feature_maps, plot_grad_cam
    if channels < 1:
        raise OculiError(f"--channels must be at least 1, got {channels}")
    if not image.is_file():
        raise OculiError(f"explain: no such image file: {image}")
    run = local_run(run)
    classifier = Classifier.load(run, device=device)
    explanation = explain_image(classifier, image, class_name)
    folder = out_dir or (run if run.is_dir() else run.parent) / f"explain-{image.stem}"
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise OculiError(f"--out {folder}: cannot create the folder ({err.strerror or err})") from None
    written = [save_figure(plot_feature_maps(explanation.maps, channels), folder / "feature_maps.png"),
               save_figure(plot_grad_cam(explanation.image, explanation.cam, explanation.title),
                           folder / "grad_cam.png")]
    e, best = explanation, explanation.predicted
    out.print(f"prediction: {e.classes[best]} ({e.probs[best]:.1%})")
    if e.target != best:
        out.print(f"explained: {e.label} ({e.probs[e.target]:.1%})")
    out.print(f"Grad-CAM: {e.stage_note}")
    for path in written:
        out.print(f"wrote {path}")


@app.command()
def serve(
    run: Path = typer.Argument(..., help="Run folder (or its model.json), or hf://owner/name[@revision] on the Hugging Face Hub."),
    host: str = typer.Option("127.0.0.1", help="Address to listen on (0.0.0.0: every interface)."),
    port: int = typer.Option(8000, help="Port to listen on."),
    workers: Optional[int] = typer.Option(None, help="Processes decoding uploads (default: one per core, at most 8)."),
    max_batch: int = typer.Option(32, help="Most images per model call."),
    max_wait_ms: float = typer.Option(5.0, help="How long the first image of a batch waits for others, in ms."),
    queue: int = typer.Option(256, help="Most images in flight (decoding, waiting, in the model); beyond: 503."),
    max_upload_mb: float = typer.Option(20.0, help="Largest request body, in MB (all its files together)."),
    max_files: int = typer.Option(32, help="Most images per request."),
    device: str = setting_option("device"),
    engine: str = typer.Option("auto", help=ENGINE_HELP),
) -> None:
    """Serve a trained model over HTTP: a JSON API (/v1/predict, /v1/explain, /v1/model; /docs), a web page
    at /, /healthz, /readyz and /metrics."""
    from .deploy.serve import serve as serve_run
    from .deploy.service import ServeSettings
    settings = ServeSettings(max_batch=max_batch, max_wait_ms=max_wait_ms, queue=queue,
                             max_upload_mb=max_upload_mb, max_files=max_files, workers=workers)
    serve_run(local_run(run), settings, host=host, port=port, device=device, engine=engine)


@app.command("app")
def web_app(
    root: Path = typer.Option(Path("."), help="The app's folder: data folders inside it become projects; its "
                              "projects, runs and jobs are kept in it (projects/, .oculi-app/)."),
    host: str = typer.Option("127.0.0.1", help="Address to listen on."),
    port: int = typer.Option(8000, help="Port to listen on."),
) -> None:
    """A web page for the whole loop: data and its check (with fixes you can undo), training with live
    curves, results, trying the model (upload or webcam), exports and the model card."""
    from .app.server import serve_app
    serve_app(root, host=host, port=port)


@app.command()
def push(
    run: Path = typer.Argument(..., help="Run folder."),
    to: str = typer.Option(..., "--to", help="The model repo: hf://owner/name (made when missing)."),
    private: bool = typer.Option(False, "--private", help="Make a new repo private."),
    token: Optional[str] = typer.Option(None, help="A Hugging Face write token (default: HF_TOKEN, or the one `hf auth login` saved)."),
    message: Optional[str] = typer.Option(None, help="The commit message (default: oculi push RUN)."),
) -> None:
    """Upload a finished run to the Hugging Face Hub: the bundle (verified first), the model card README.md
    (written when missing), its exports, test_metrics.json and the figures; never checkpoints or data.
    `oculi predict hf://owner/name photo.jpg` and `oculi.load("hf://owner/name")` use it back."""
    from .api import push as push_run
    url, files = push_run(run, to, private=private, token=token, message=message)
    out.print(f"pushed {len(files)} files to {to}: {', '.join(files)}")
    out.print(url)


def local_run(run: Path) -> Path:
    """The run folder a RUN argument names: itself, or a Hub address's snapshot in the HF cache."""
    from .deploy.hub import resolve_run
    return resolve_run(run)


@app.command()
def models(as_json: bool = typer.Option(False, "--json", help="Print as JSON.")) -> None:
    """The built-in architectures (with parameter counts at their tutorial's input) and suggested timm backbones."""
    from .models.catalog import model_catalog
    rows = model_catalog()
    if as_json:
        print(json.dumps(rows, indent=2))
        return
    table = Table("name", "kind", "parameters", "reference input", "description")
    for r in rows:
        table.add_row(r["name"], r["kind"], f"{r['parameters']:,}", r["reference_input"], r["description"])
    out.print(table)
    out.print("Any other timm model name works too, e.g. --model resnet34 (pretrained weights from the hub).")


cache_app = typer.Typer(no_args_is_help=True, help="The on-disk cache of decoded images and backbone features.")
app.add_typer(cache_app, name="cache")


@cache_app.command("info")
def cache_info() -> None:
    """Where the cache is and how much it holds."""
    from .data.cache import cache_root, cache_size
    entries, size = cache_size()
    out.print(f"{cache_root()}: {entries} entries, {size / 2**20:.1f} MiB")


@cache_app.command("clear")
def cache_clear() -> None:
    """Delete every cached entry (they are recomputed when needed)."""
    from .data.cache import cache_root, clear_cache
    entries, size = clear_cache()
    out.print(f"cleared {cache_root()}: {entries} entries, {size / 2**20:.1f} MiB freed")


def _png_path(out_arg: str, default_name: str) -> Path:
    """Where ``--out`` means a PNG to go: into a folder (an existing one, or a name ending in a slash)
    as ``default_name``; a file name without an image extension gets ``.png``, so it opens as one."""
    from .data.decode import IMAGE_EXTENSIONS
    path = Path(out_arg).expanduser()
    if path.is_dir() or out_arg.endswith(("/", os.sep)):
        return path / default_name
    return path if path.suffix.lower() in IMAGE_EXTENSIONS else path.with_name(path.name + ".png")


def _warn(message: str) -> None:
    print(f"warning: {message}", file=sys.stderr)


def _note(message: str) -> None:
    """A line for the user beside the results on stdout: on stderr."""
    print(message, file=sys.stderr)


def _show_warning(message, category, filename, lineno, file=None, line=None) -> None:
    """A BundleWarning is for the user: one line, like errors; other warnings keep Python's format."""
    if issubclass(category, BundleWarning):
        _warn(str(message))
    else:
        sys.stderr.write(warnings.formatwarning(message, category, filename, lineno, line))


def main(argv: list[str] | None = None) -> int:
    """Entry point: run the app; user errors become one line on stderr and exit code 2."""
    with warnings.catch_warnings():  # restores the caller's showwarning (tests call main in-process)
        warnings.showwarning = _show_warning
        return _run(argv)


def _run(argv: list[str] | None) -> int:
    command = typer.main.get_command(app)
    try:
        result = command.main(args=argv, prog_name="oculi", standalone_mode=False)
    except OculiError as err:
        if _rank_zero():  # one of several processes: rank 0 says it (each has the same error)
            print(f"error: {err}", file=sys.stderr)
        return 2
    except getattr(_click, "NoArgsIsHelpError", ()) as err:
        print(err.ctx.get_help() if err.ctx else str(err))
        return 0
    except _click.UsageError as err:
        command = err.ctx.command_path if err.ctx else "oculi"  # "oculi" or "oculi train"
        print(f"error: {err.format_message()} (see {command} --help)", file=sys.stderr)
        return 2
    except typer.Abort:
        print("error: aborted", file=sys.stderr)
        return 130
    except KeyboardInterrupt:
        print("\ninterrupted: `oculi train --resume RUN_DIR` continues a training run", file=sys.stderr)
        return 130
    return result if isinstance(result, int) else 0


if __name__ == "__main__":
    sys.exit(main())
