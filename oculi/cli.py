"""The ``oculi`` command: a thin layer over ``TrainConfig`` and the Python API.

Every user mistake (bad path, bad flag value, unreadable bundle) ends as one line on stderr and exit
code 2; nothing the user did wrong shows a traceback.
"""

from __future__ import annotations

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

from .config import TrainConfig, parse_image_size
from .errors import BundleWarning, OculiError

app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False,
                  help="Train, evaluate and use image classifiers from folders of labelled images.")
# Pipes and CI logs get a wide console rather than rich's 80-column default, so tables don't fold.
out = Console(highlight=False, width=None if sys.stdout.isatty() else 160)
# Recent typer versions vendor click: take the exception classes from wherever typer's come from.
_click = sys.modules[typer.BadParameter.__module__]


# Keras ImageDataGenerator's knobs, each overriding the --augment preset: (type, flag declarations, help).
AUGMENTATION_FLAGS = {
    "rotation": (float, ("--rotation",), "Augmentation: rotate up to +-N degrees."),
    "shift": (float, ("--shift",), "Augmentation: shift up to +-this fraction of width and height."),
    "shear": (float, ("--shear",), "Augmentation: shear up to +-N degrees."),
    "zoom": (float, ("--zoom",), "Augmentation: zoom in or out by up to this fraction."),
    "translate": (float, ("--translate",), "Augmentation: shift by whole pixels, reflect-padded, up to this fraction."),
    "brightness": (float, ("--brightness",), "Augmentation: scale brightness by 1 +- this."),
    "contrast": (float, ("--contrast",), "Augmentation: scale contrast by 1 +- this."),
    "saturation": (float, ("--saturation",), "Augmentation: scale saturation by 1 +- this."),
    "flip": (bool, ("--flip/--no-flip",), "Augmentation: random horizontal flips (default: on, off for digits and MNIST)."),
    "vflip": (bool, ("--vflip/--no-vflip",), "Augmentation: random vertical flips."),
    "fill_mode": (str, ("--fill-mode",), "Augmentation: what fills the borders: constant, nearest, reflect or wrap."),
}


def augmentation_flags(command):
    """Give a command the flags of AUGMENTATION_FLAGS; it receives the values as one dict, ``knobs``.
    (``train`` and ``augment-preview`` share them, so the preview shows what training will do.)"""
    signature = inspect.signature(command)
    flags = [inspect.Parameter(name, inspect.Parameter.KEYWORD_ONLY, annotation=Optional[kind],
                               default=typer.Option(None, *decls, help=text))
             for name, (kind, decls, text) in AUGMENTATION_FLAGS.items()]

    @functools.wraps(command)
    def with_knobs(**kwargs):
        knobs = {name: kwargs.pop(name) for name in AUGMENTATION_FLAGS}
        return command(**kwargs, knobs=knobs)

    own = [p for p in signature.parameters.values() if p.name != "knobs"]
    with_knobs.__signature__ = signature.replace(parameters=own + flags)
    return with_knobs


@app.command()
@augmentation_flags
def train(
    data: Optional[str] = typer.Argument(None, help="Folder of class folders (or train/ val/ test/), or digits, cifar10, mnist, fashion-mnist."),
    resume: Optional[Path] = typer.Option(None, help="Continue the interrupted run in this folder."),
    model: str = typer.Option("auto", help="Model name (see `oculi models`; any timm name)."),
    pretrained: Optional[bool] = typer.Option(None, "--pretrained/--no-pretrained", help="ImageNet weights (default: when available)."),
    epochs: Optional[int] = typer.Option(None, help="Training epochs (default: chosen from the data)."),
    batch_size: Optional[int] = typer.Option(None, help="Images per step."),
    lr: Optional[float] = typer.Option(None, help="Peak learning rate."),
    optimizer: str = typer.Option("auto", help="adam, adamw, sgd or rmsprop; auto: the model's recipe (sgd for fast-cnn, else adamw)."),
    weight_decay: float = typer.Option(5e-4, help="Weight decay (not applied to biases and norms)."),
    schedule: str = typer.Option("auto", help="cosine, onecycle or constant (all with warmup); auto: the model's recipe."),
    warmup_epochs: float = typer.Option(1.0, help="Linear warmup length in epochs."),
    label_smoothing: Optional[float] = typer.Option(None, help="Label smoothing in [0, 1); default: the model's recipe (0.2 for fast-cnn, else 0)."),
    lookahead: Optional[bool] = typer.Option(None, "--lookahead/--no-lookahead", help="Pull the weights back to a slow average every 5 steps (airbench's Lookahead); default: the model's recipe."),
    patience: Optional[int] = typer.Option(10, help="Early stopping after this many epochs without a better val accuracy."),
    image_size: Optional[str] = typer.Option(None, help="N or HxW (default: from the data and model)."),
    resize: str = typer.Option("squash", help="squash, pad (letterbox) or crop."),
    channels: Optional[int] = typer.Option(None, help="1 (grayscale) or 3 (RGB); default from the data."),
    image_filter: Optional[str] = typer.Option(None, "--filter", help="Apply an image filter to every image, in training and prediction: sharpen, blur, edges or blur+sharpen."),
    tta: str = typer.Option("auto", help="Test-time augmentation: none, flip (average each image with its mirror) or flip-shift (also both shifted a pixel either way); auto: the model's recipe (flip for fast-cnn)."),
    augment: str = typer.Option("auto", help="none, light (flip + translate: small images), standard or strong (Keras-style rotation, shift, shear, zoom, colour); auto: light."),
    head: str = typer.Option("auto", help="auto, softmax or sigmoid (binary, one output)."),
    mode: str = typer.Option("auto", help="Pretrained backbones: features (frozen, cached features + head), finetune (whole net) or auto (features, then fine-tuning if it helps); scratch: no pretrained weights."),
    weights: Optional[str] = typer.Option(None, help="Local weights file for a timm backbone (safetensors or a state dict)."),
    classifier: str = typer.Option("linear", help="Layers on a backbone's features: linear or mlp (Dense 100/50, LeakyReLU, dropout)."),
    feature_views: int = typer.Option(1, help="Feature vectors per training image: 1 plain, more adds augmented views."),
    head_epochs: int = typer.Option(60, help="Epochs of the head on cached features."),
    head_lr: float = typer.Option(1e-3, help="Learning rate of the head on cached features."),
    backbone_lr: float = typer.Option(0.1, help="Fine-tuning: the backbone's learning rate as a fraction of --lr."),
    unfreeze_epochs: int = typer.Option(0, help="Fine-tuning: unfreeze the backbone gradually, top first, over N epochs."),
    cache: bool = typer.Option(True, "--cache/--no-cache", help="Keep decoded images and backbone features on disk, for later runs."),
    val_split: float = typer.Option(0.1, help="Fraction of images held out for validation."),
    test_split: float = typer.Option(0.1, help="Fraction held out for the final test."),
    split_manifest: Optional[str] = typer.Option(None, help="Reuse a run's split.csv."),
    class_weights: str = typer.Option("none", help="none or auto (inverse class frequency)."),
    sampler: str = typer.Option("shuffle", help="shuffle or balanced."),
    seed: int = typer.Option(0, help="Random seed: same seed, data and machine give the same model."),
    device: str = typer.Option("auto", help="auto, cpu, cuda, cuda:N or mps."),
    out_dir: Optional[str] = typer.Option(None, "--out", help="Run folder (default runs/<data>[-N])."),
    data_dir: Optional[str] = typer.Option(None, help="Folder holding a built-in dataset's archives."),
    top_k: int = typer.Option(5, help="k of the top-k accuracy."),
    report: bool = typer.Option(True, "--report/--no-report", help="Write report.html in the run folder."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="Only warnings and errors."),
    knobs: dict | None = None,
) -> None:
    """Train a classifier and evaluate it on the held-out test images."""
    from .api import resume_and_report, train_and_report
    from .console import Reporter
    if resume is not None:
        resume_and_report(resume, Reporter(quiet=quiet))
        return
    if data is None:
        raise OculiError("train: give a DATA folder or a built-in dataset name (e.g. `oculi train digits`)")
    cfg = TrainConfig(
        data=data, model=model, pretrained=pretrained, epochs=epochs, batch_size=batch_size, lr=lr,
        optimizer=optimizer, weight_decay=weight_decay, schedule=schedule, warmup_epochs=warmup_epochs,
        label_smoothing=label_smoothing, lookahead=lookahead, patience=patience, image_size=parse_image_size(image_size),
        resize=resize, channels=channels, augment=augment, tta=tta, filter=image_filter, head=head, mode=mode, weights=weights,
        classifier=classifier, feature_views=feature_views, head_epochs=head_epochs, head_lr=head_lr,
        backbone_lr=backbone_lr, unfreeze_epochs=unfreeze_epochs, cache=cache, val_split=val_split,
        test_split=test_split, split_manifest=split_manifest, class_weights=class_weights, sampler=sampler,
        seed=seed, device=device, out=out_dir, data_dir=data_dir, top_k=top_k, progress=not quiet, report=report,
        **knobs)
    train_and_report(cfg, Reporter(quiet=quiet))


@app.command()
def evaluate(
    run: Path = typer.Argument(..., help="Run folder (or its model.json)."),
    data: Optional[str] = typer.Option(None, help="Folder of class folders to evaluate on (default: the run's own test split, read again from its data)."),
    top_k: int = typer.Option(5, help="k of the top-k accuracy."),
    as_json: bool = typer.Option(False, "--json", help="Print the metrics as JSON."),
    out_dir: Optional[Path] = typer.Option(None, "--out", help="Where to write metrics and plots (default RUN/evaluate-<data>, or RUN/evaluate-test)."),
    device: str = typer.Option("auto", help="auto, cpu, cuda, cuda:N or mps."),
) -> None:
    """Accuracy, top-k, per-class precision/recall/F1, log loss and a confusion matrix on labelled images
    (--data, or the run's own test split)."""
    from .deploy.predict import Classifier
    from .evaluate import evaluate_folder, evaluate_run
    from .metrics import metrics_table_rows
    classifier = Classifier.load(run, device=device)
    run_dir = run if run.is_dir() else run.parent
    if data is None:
        metrics, written = evaluate_run(classifier, run_dir, top_k=top_k, out=out_dir)
    else:
        metrics, written = evaluate_folder(classifier, data, top_k=top_k, out=out_dir, run_dir=run_dir)
    if as_json:
        print(json.dumps(metrics, indent=2))
        return
    split = f" (the run's {metrics['split']} split)" if "split" in metrics else ""
    table = Table("class", "precision", "recall", "f1", "support", title=f"{metrics['n']} images from {metrics['data']}{split}")
    for row in metrics_table_rows(metrics):
        table.add_row(*row)
    out.print(table)
    out.print(f"accuracy {metrics['accuracy']:.2%}   top-{metrics['top_k']} {metrics['top_k_accuracy']:.2%}   "
              f"log loss {metrics['log_loss']:.4f}")
    out.print(f"written to {written}/")


@app.command()
def predict(
    run: Path = typer.Argument(..., help="Run folder (or its model.json)."),
    paths: List[str] = typer.Argument(..., help="Image files, folders or glob patterns."),
    top_k: int = typer.Option(3, help="How many classes to show per image."),
    as_json: bool = typer.Option(False, "--json", help="JSON lines, one per image."),
    as_csv: bool = typer.Option(False, "--csv", help="CSV: path, label, confidence, top-k."),
    batch_size: int = typer.Option(64, help="Images per forward pass."),
    device: str = typer.Option("auto", help="auto, cpu, cuda, cuda:N or mps."),
) -> int:
    """Classify new images with a trained run (exit code 1 when none of them can be read)."""
    from .deploy.predict import Classifier, expand_paths
    if top_k < 1 or batch_size < 1:
        raise OculiError("--top-k and --batch-size must be at least 1")
    classifier = Classifier.load(run, device=device)
    files, missing = expand_paths(paths)
    for item in missing:
        _warn(f"no such file or folder: {item}")
    if not files:
        raise OculiError("predict: no image files found in " + ", ".join(paths))
    failures: list = []
    predictions = classifier.predict_files(files, top_k=top_k, batch_size=batch_size, failures=failures)
    first = next(predictions, None)  # read before printing anything: no table or header for nothing
    if first is not None:
        _print_predictions(itertools.chain([first], predictions), "json" if as_json else "csv" if as_csv else "table")
    for path, reason in failures:
        _warn(f"could not read {path}: {reason}")
    if first is None:
        print(f"error: predict: none of the {len(files)} image files could be read", file=sys.stderr)
        return 1
    return 0


def _print_predictions(predictions, fmt: str) -> None:
    if fmt == "json":
        for p in predictions:
            print(json.dumps(p.to_dict()))
    elif fmt == "csv":
        import csv
        writer = csv.writer(sys.stdout, lineterminator="\n")
        writer.writerow(["path", "label", "confidence", "top_k"])
        for p in predictions:
            writer.writerow([p.source, p.label, f"{p.confidence:.6f}",
                             ";".join(f"{c}:{q:.6f}" for c, q in p.top_k)])
    else:
        table = Table("image", "prediction", "confidence", "top-k")
        for p in predictions:
            table.add_row(p.source, p.label, f"{p.confidence:.1%}",
                          ", ".join(f"{c} {q:.1%}" for c, q in p.top_k[1:]))
        out.print(table)


@app.command("augment-preview")
@augmentation_flags
def augment_preview(
    data: str = typer.Argument(..., help="Folder of class folders, or a built-in dataset name."),
    n: int = typer.Option(20, "--n", help="Augmented versions of each image."),
    images: int = typer.Option(3, help="How many images (one per class, in class order)."),
    augment: str = typer.Option("auto", help="none, light, standard or strong; auto: what train uses (light)."),
    image_size: Optional[str] = typer.Option(None, help="N or HxW; default: small images at their size, photos at 160."),
    seed: int = typer.Option(0, help="Seed of the random augmentations."),
    out_file: str = typer.Option("augment_preview.png", "--out", help="The PNG to write (a folder: augment_preview.png in it)."),
    knobs: dict | None = None,
) -> None:
    """A grid of augmented versions of a few images, as training would see them."""
    from .plots import save_figure
    from .report.augment import augmentation_preview
    figure = augmentation_preview(data, n, images, augment, parse_image_size(image_size), seed, **knobs)
    out.print(f"wrote {save_figure(figure, _png_path(out_file, 'augment_preview.png'))}")


@app.command()
def report(run: Path = typer.Argument(..., help="Run folder.")) -> None:
    """Rebuild report.html of a run: data, augmentation, model, curves, metrics, predictions, Grad-CAM."""
    from .console import Reporter
    from .report.build import write_report
    out.print(f"wrote {write_report(run, reporter=Reporter())}")


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
    run: Path = typer.Argument(..., help="Run folder (or its model.json)."),
    image: Path = typer.Argument(..., help="An image file."),
    class_name: Optional[str] = typer.Option(None, "--class", help="Explain this class (default: the predicted one)."),
    channels: int = typer.Option(16, help="Feature-map channels shown per stage (the most active ones)."),
    out_dir: Optional[Path] = typer.Option(None, "--out", help="Where to write the PNGs (default RUN/explain-<image name>)."),
    device: str = typer.Option("auto", help="auto, cpu, cuda, cuda:N or mps."),
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
