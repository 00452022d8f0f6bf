"""The one place every knob lives. The CLI and the Python API only fill in a ``TrainConfig``.

Each field is declared once, with ``setting``: its default, its help text and the values it accepts. The
``oculi train`` options and ``TrainConfig.validate`` are both generated from these declarations, so adding
a knob is one line here.

"auto" (or None) means: chosen from the data and the model when the run starts; the run prints what
it chose and saves the resolved values in ``config.json``, so a run can be repeated exactly.
"""

from __future__ import annotations

from dataclasses import Field, asdict, dataclass, field, fields
from typing import Callable, NamedTuple

from .errors import OculiError

OPTIMIZERS = ("auto", "adam", "adamw", "sgd", "rmsprop")
SCHEDULES = ("auto", "cosine", "onecycle", "constant")
HEADS = ("auto", "softmax", "sigmoid", "multilabel")
RESIZE_MODES = ("squash", "pad", "crop")
AUGMENTS = ("auto", "none", "light", "standard", "strong", "modern")
AUTO_AUGMENT_POLICIES = ("none", "randaugment", "trivialaugment")  # oculi.data.transforms.AUTO_AUGMENTS
CLASS_WEIGHTS = ("none", "auto")
SELECT_BY = ("auto", "accuracy", "macro-f1", "map")
# Training data whose largest class has at least this many times the images of its smallest is imbalanced:
# the run warns, and --select-by auto keeps the epoch with the best val macro-F1, which counts every class
# equally, instead of accuracy (which a model that ignores a 1-in-20 class still scores 95% on).
IMBALANCE_RATIO = 3
SAMPLERS = ("shuffle", "balanced")
MODES = ("auto", "features", "finetune", "scratch")
CLASSIFIERS = ("linear", "mlp")
TTAS = ("auto", "none", "flip", "flip-shift")
FILTER_NAMES = ("sharpen", "blur", "edges", "blur+sharpen")  # oculi.data.filters.FILTERS
FILL_MODES = ("constant", "nearest", "reflect", "wrap")
CHANNELS = (1, 3)
TRACKERS = ("none", "tensorboard", "mlflow", "tensorboard+mlflow")  # oculi.training.trackers
MAX_IMAGE_SIDE = 4096  # largest model input side (pixels): one bound for --image-size and bundles
# Smallest: --augment's and --tta's whole-pixel shifts pad by reflection (which needs a side of 2) and
# fast-cnn's first layer is a 2x2 patch. Models that need more (the tutorials' conv nets) say so when built.
MIN_IMAGE_SIDE = 2
# Seeds go to numpy's and torch's generators, which take 0 .. 2**32 - 1 everywhere (numpy's legacy
# seeding and other tools' too), so a seed from another tool means the same thing here.
MAX_SEED = 2**32 - 1
AUGMENTATION = "augmentation"  # the group of the knobs that override the --augment preset


def parse_image_size(text: str | int | tuple[int, int] | None) -> tuple[int, int] | None:
    """'224' -> (224, 224); '224x256' -> (224, 256) (height x width). A value given as the Python API takes
    it (224, or (224, 256)) is taken as it is; so is None."""
    if text is None or (isinstance(text, int) and not isinstance(text, bool)):
        return None if text is None else (text, text)
    if isinstance(text, (tuple, list)):
        return tuple(text)
    try:
        parts = [int(p) for p in str(text).lower().split("x")]
    except ValueError:
        parts = []
    if len(parts) not in (1, 2) or min(parts, default=0) < 1:
        raise OculiError(f"--image-size must be N or HxW (e.g. 224 or 224x256), got '{text}'")
    return check_image_size((parts[0], parts[-1]))


def parse_duration(text: str | float | None, flag: str = "--time-budget") -> float | None:
    """Seconds from '90', '90s', '2m' or '1.5h' (a number is seconds already, and None none); ``flag``: the
    option a bad value is blamed on."""
    if text is None or isinstance(text, (int, float)):
        return text
    units = {"s": 1, "m": 60, "h": 3600}
    number, unit = (text[:-1], units[text[-1]]) if text and text[-1] in units else (text, 1)
    try:
        return float(number) * unit
    except ValueError:
        raise OculiError(f"{flag} must be seconds or a duration like 90s, 2m or 1.5h, got '{text}'") from None


def check_image_size(size: tuple[int, int]) -> tuple[int, int]:
    """``size`` when each side is from MIN_IMAGE_SIDE to MAX_IMAGE_SIDE: 100000 px a side would ask for
    tens of GB per image before anything could fail more helpfully."""
    if len(size) != 2 or not all(isinstance(v, int) and MIN_IMAGE_SIDE <= v <= MAX_IMAGE_SIDE for v in size):
        raise OculiError(f"--image-size sides must be between {MIN_IMAGE_SIDE} and {MAX_IMAGE_SIDE} pixels, "
                         f"got {'x'.join(map(str, size))}")
    return size


def setting(default, help: str, *, choices: tuple | None = None, low: float | None = None,
            high: float | None = None, excluded: str = "", group: str | None = None, cli: bool = True,
            parse: Callable | None = None):
    """A TrainConfig field with everything the CLI and ``validate`` need to know about it.

    ``help``: the option's help text. The values it accepts: one of ``choices``, or a number from ``low``
    to ``high`` (``excluded`` names an end left out: "low" or "high"); None is accepted where the field's
    type allows it. ``group``: AUGMENTATION for the knobs over the --augment preset. ``cli=False``: no
    generated option (API only, or written by hand). ``parse``: for a setting the CLI takes as text, the
    function from that text to the value; the CLI and the Python API (``oculi.train``) both apply it, so it
    must also take a value already parsed (and None) as it is. The flag is always ``--field-name``."""
    return field(default=default, metadata={"help": help, "choices": choices, "low": low, "high": high,
                                            "excluded": excluded, "group": group, "cli": cli, "parse": parse})


def knob(help: str, **limits):
    """An augmentation knob: None (the --augment preset's value) unless set."""
    return setting(None, f"Augmentation: {help}", group=AUGMENTATION, **limits)


# The upper bounds of the numbers are far beyond any sensible run; they turn a typo into an error
# instead of hours of work or an allocation that cannot succeed.
@dataclass
class TrainConfig:
    # data
    data: str = setting("digits", "Folder of class folders (or train/ val/ test/), a table of labels (.csv, .tsv, "
                        "or a folder with labels.csv), or digits, cifar10, mnist, fashion-mnist.",
                        cli=False)  # the CLI's DATA argument
    data_dir: str | None = setting(None, "Folder holding a built-in dataset's archives.")
    images: str | None = setting(None, "A table's images folder: its paths are relative to it (default: the "
                                 "table's folder).")
    path_column: str = setting("path", "A table's column of image paths.")
    label_column: str = setting("label", "A table's column of labels.")
    split_column: str = setting("split", "A table's column of splits (train, val, test, or empty: split by "
                                "--val-split and --test-split); optional.")
    multi_label: bool | None = setting(None, "Several labels an image (a sigmoid per class): --multi-label also "
                                       "joins a path's rows; default: when a table's row has two labels.")
    label_sep: str = setting(";", "Between the labels of one table cell (e.g. 'cat;dog').")
    label_columns: str | None = setting(None, "A table's 0/1 columns, one per class (e.g. cat,dog,bird): "
                                        "multi-label, instead of a label column.")
    val_split: float = setting(0.1, "Fraction of images held out for validation.", low=0, high=1, excluded="high")
    test_split: float = setting(0.1, "Fraction held out for the final test.", low=0, high=1, excluded="high")
    split_manifest: str | None = setting(None, "Reuse a run's split.csv.")
    image_size: tuple[int, int] | None = setting(None, "N or HxW (default: from the data and model).",
                                                 parse=parse_image_size)  # (height, width)
    resize: str = setting("squash", "squash, pad (letterbox) or crop.", choices=RESIZE_MODES)
    channels: int | None = setting(None, "1 (grayscale) or 3 (RGB); default from the data.", choices=CHANNELS)
    augment: str = setting("auto", "none, light (flip + translate: small images), standard or strong (Keras-style "
                           "rotation, shift, shear, zoom, colour), modern (light + TrivialAugment, random erasing "
                           "0.25, MixUp 0.8 / CutMix 1.0: long runs from scratch); auto: light.", choices=AUGMENTS)
    rotation: float | None = knob("rotate up to +-N degrees.", low=0, high=180)
    shift: float | None = knob("shift up to +-this fraction of width and height.", low=0, high=0.5)
    shear: float | None = knob("shear up to +-N degrees.", low=0, high=45)
    zoom: float | None = knob("zoom in or out by up to this fraction.", low=0, high=0.9)
    translate: float | None = knob("shift by whole pixels, reflect-padded, up to this fraction.", low=0, high=0.5)
    brightness: float | None = knob("scale brightness by 1 +- this.", low=0, high=0.9)
    contrast: float | None = knob("scale contrast by 1 +- this.", low=0, high=0.9)
    saturation: float | None = knob("scale saturation by 1 +- this.", low=0, high=1)
    flip: bool | None = knob("random horizontal flips (default: on; off for digits, MNIST and class folders 0-9).")
    vflip: bool | None = knob("random vertical flips.")
    fill_mode: str | None = knob("what fills the borders: constant, nearest, reflect or wrap.", choices=FILL_MODES)
    auto_augment: str | None = knob("a random operation of torchvision's policy per image: none, randaugment or "
                                    "trivialaugment (TrivialAugmentWide).", choices=AUTO_AUGMENT_POLICIES)
    erasing: float | None = knob("erase a random rectangle of an image (random noise) with this probability.",
                                 low=0, high=1)
    mixup: float | None = knob("MixUp: blend pairs of training images and their labels, Beta(alpha, alpha) "
                               "weights; 0: off (with --cutmix: one of the two a batch).", low=0, high=100)
    cutmix: float | None = knob("CutMix: paste a box of another training image, labels mixed by its area, "
                                "Beta(alpha, alpha); 0: off.", low=0, high=100)
    filter: str | None = setting(None, "Apply an image filter to every image, in training and prediction: sharpen, "
                                 "blur, edges or blur+sharpen.", choices=FILTER_NAMES)  # kept in the bundle
    tta: str = setting("auto", "Test-time augmentation: none, flip (average each image with its mirror) or "
                       "flip-shift (also both shifted a pixel either way); auto: the model's recipe (flip for "
                       "fast-cnn).", choices=TTAS)
    # model
    model: str = setting("auto", "Model name (see `oculi models`; any timm name).")
    pretrained: bool | None = setting(None, "ImageNet weights (default: when available).")
    head: str = setting("auto", "auto, softmax, sigmoid (binary, one output) or multilabel (a sigmoid per class: "
                        "label sets, chosen by --multi-label or the data).", choices=HEADS)
    weights: str | None = setting(None, "Local weights file for a timm backbone (safetensors or a state dict).")
    classifier: str = setting("linear", "Layers on a backbone's features: linear or mlp (Dense 100/50, LeakyReLU, "
                              "dropout).", choices=CLASSIFIERS)
    # transfer learning (pretrained backbones)
    mode: str = setting("auto", "Pretrained backbones: features (frozen, cached features + head), finetune (whole "
                        "net) or auto (features, then fine-tuning if it helps); scratch: no pretrained weights.",
                        choices=MODES)
    feature_views: int | None = setting(None, "Feature vectors per training image: 1 plain, more adds augmented "
                                        "views (default: about 2,000 vectors in all, 1 to 8 a image).",
                                        low=1, high=100)
    head_epochs: int = setting(60, "Epochs of the head on cached features.", low=1, high=100_000)
    head_lr: float = setting(1e-3, "Learning rate of the head on cached features.", low=0, high=10, excluded="low")
    backbone_lr: float = setting(0.1, "Fine-tuning: the backbone's learning rate as a fraction of --lr.",
                                 low=0, high=1, excluded="low")
    unfreeze_epochs: int = setting(0, "Fine-tuning: unfreeze the backbone gradually, top first, over N epochs.",
                                   low=0, high=10_000)
    unfreeze_stages: int | None = setting(None, "Fine-tuning: train only the backbone's last K stages, from their "
                                          "cached inputs (each epoch costs the top alone); auto: 1 on a CPU, "
                                          "the whole network on a GPU.", low=1, high=1_000)
    time_budget: float | None = setting(None, "Stop training before an epoch that would end past this long "
                                        "(90s, 2m, 1.5h); what was trained so far is kept (by the usual rule). From "
                                        "scratch without --epochs: the epoch count is what fits, measured after the "
                                        "second epoch, and the schedule follows it. auto: 3m for fine-tuning on a "
                                        "CPU, else none.", low=0, high=1e7, excluded="low",
                                        parse=parse_duration)
    epochs_from_budget: bool = setting(False, "Set by the plan: --time-budget without --epochs from scratch "
                                       "fits the epoch count to the first epoch's measured time.", cli=False)
    # optimisation
    epochs: int | None = setting(None, "Training epochs (default: chosen from the data).", low=1, high=10_000)
    batch_size: int | None = setting(None, "Images per step, over all processes (each of N processes takes 1/N; "
                                     "default: the model's recipe).", low=1, high=65_536)
    lr: float | None = setting(None, "Peak learning rate.", low=0, high=10, excluded="low")
    optimizer: str = setting("auto", "adam, adamw, sgd or rmsprop; auto: the model's recipe (sgd for fast-cnn, else "
                             "adamw).", choices=OPTIMIZERS)
    weight_decay: float = setting(5e-4, "Weight decay (not applied to biases and norms).", low=0, high=1)
    momentum: float = setting(0.9, "Momentum of sgd (Nesterov) and rmsprop.", low=0, high=1, excluded="high", cli=False)
    schedule: str = setting("auto", "cosine, onecycle or constant (all with warmup); auto: the model's recipe.",
                            choices=SCHEDULES)
    warmup_epochs: float = setting(1.0, "Linear warmup length in epochs.", low=0, high=10_000)
    label_smoothing: float | None = setting(None, "Label smoothing in [0, 1); default: the model's recipe (0.2 for "
                                            "fast-cnn, else 0).", low=0, high=1, excluded="high")
    lookahead: bool | None = setting(None, "Pull the weights back to a slow average every 5 steps (airbench's "
                                     "Lookahead); default: the model's recipe.")
    ema: bool = setting(False, "Keep an exponential moving average of the weights; it is what each epoch's val "
                        "metrics measure and what the run keeps (not for a head on cached features).")
    ema_decay: float | None = setting(None, "--ema's decay a step; default: a horizon 1 / (1 - decay) of 5% of the "
                                      "run's steps.", low=0, high=1, excluded="high")
    patience: int | None = setting(10, "Early stopping after this many epochs without a better val accuracy "
                                   "(from scratch with --time-budget and no --epochs: in the last quarter only).",
                                   low=1, high=10_000)  # None: never
    class_weights: str = setting("none", "none or auto: weight each class's loss by its inverse training frequency "
                                 "(for imbalanced data).", choices=CLASS_WEIGHTS)
    sampler: str = setting("shuffle", "shuffle (each image once per epoch) or balanced (draw every class equally "
                           "often, with replacement).", choices=SAMPLERS)
    select_by: str = setting("auto", "Which epoch is kept, by its val score: accuracy, macro-f1 or map (multi-label); "
                             f"auto: map for label sets, macro-f1 when the largest class has {IMBALANCE_RATIO}x the "
                             "training images of the smallest.",
                             choices=SELECT_BY)
    # trust: calibration and abstaining (oculi.calibration)
    calibrate: bool = setting(True, "Fit a temperature on the val images after training, so that confidence "
                              "matches accuracy (kept in the bundle).")
    abstain_threshold: float | None = setting(None, "Answer 'unknown' below this calibrated confidence (predict, "
                                              "evaluate, serve); kept in the bundle.", low=0, high=1)
    target_precision: float | None = setting(None, "Choose --abstain-threshold on the val images: the lowest "
                                             "confidence whose answers are right this often (e.g. 0.99); with "
                                             "label sets, each class's threshold so.",
                                             low=0, high=1, excluded="low")
    drop_leaks: bool = setting(False, "Leave out of val/test the images that copy a training image (exactly or "
                               "nearly; see `oculi check`).")
    # run
    cache: bool = setting(True, "Keep decoded images and backbone features on disk, for later runs.")
    seed: int = setting(0, "Random seed: same seed, data and machine give the same model.", low=0, high=MAX_SEED)
    device: str = setting("auto", "auto, cpu, cuda, cuda:N or mps.")
    # several processes (oculi.training.distributed): --batch-size is a step's batch over all of them, each
    # taking its share (the floor when they cannot share it evenly, the lr then scaled: defaults.scaled_lr),
    # so the recipe is the same on 1 or N processes
    nproc: int = setting(1, "Worker processes on this machine, one per GPU (torch.distributed; under torchrun "
                         "leave it at 1: torchrun starts them).", low=1, high=1024)
    max_restarts: int = setting(0, "With --nproc: restart the workers this many times after one dies; the run "
                                "goes on from its last checkpoint.", low=0, high=1000)
    sync_bn: bool | None = setting(None, "BatchNorm statistics over every process's batch; default: on with "
                                   "several processes and a per-process batch under 32.")
    accumulate: int = setting(1, "Gradient accumulation: batches per optimizer step.", low=1, high=1024)
    mixed_precision: bool = setting(True, "Training steps in bfloat16 on CUDA and on CPUs that compute it natively "
                                    "(AVX512-BF16, AMX): 1.4x faster fast-cnn on a 2-core CPU; "
                                    "--no-mixed-precision: float32.")
    world_size: int = setting(1, "Processes training together (from torchrun's WORLD_SIZE).", low=1,
                              high=1_000_000, cli=False)
    out: str | None = setting(None, "Run folder (default runs/<data>[-N]).")
    top_k: int = setting(5, "k of the top-k accuracy.", low=1, high=1000)
    progress: bool = setting(True, "Show progress as the run goes.", cli=False)  # the CLI's --quiet turns it off
    report: bool = setting(True, "Write report.html in the run folder.")
    export: str = setting("auto", "After training, write model.onnx beside the bundle once it agrees with the "
                          "bundle on the test images, so that `oculi predict` runs on ONNX Runtime without torch: "
                          "auto (runs trained on the CPU), onnx (always), none.", choices=("auto", "onnx", "none"))
    log: str = setting("none", "Also log the settings and every epoch to a tracker: tensorboard (event files in the "
                       "run folder), mlflow or tensorboard+mlflow.", choices=TRACKERS)
    mlflow_uri: str | None = setting(None, "MLflow tracking URI for --log mlflow, e.g. a server's http://host:5000 "
                                     "(default: $MLFLOW_TRACKING_URI, else the folder ./mlruns).")

    def to_dict(self) -> dict:
        d = asdict(self)
        if d["image_size"] is not None:
            d["image_size"] = list(d["image_size"])
        return d

    @classmethod
    def from_dict(cls, d: dict) -> "TrainConfig":
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise OculiError(f"config: unknown setting '{unknown[0]}'")
        d = dict(d)
        if d.get("image_size") is not None:
            d["image_size"] = tuple(d["image_size"])
        return cls(**d)

    def validate(self) -> "TrainConfig":
        """Raise OculiError naming the flag of the first out-of-range value."""
        for s in SETTINGS.values():
            s.check(getattr(self, s.name))
        if self.val_split + self.test_split >= 1:
            raise OculiError("--val-split plus --test-split must leave images for training (sum < 1)")
        if self.image_size is not None:
            check_image_size(self.image_size)
        if self.abstain_threshold is not None and self.target_precision is not None:
            raise OculiError("--abstain-threshold and --target-precision both set the threshold; give one")
        if self.ema_decay is not None and not self.ema:
            raise OculiError("--ema-decay is the decay of --ema's average of the weights; add --ema")
        return self


class NumberRange(NamedTuple):
    """The values a numeric setting accepts: ``kind`` "int" or "float", from ``low`` to ``high``, both
    included unless ``excluded`` names that end ("low" or "high")."""

    field: str
    flag: str
    low: float
    high: float
    kind: str
    excluded: str = ""

    def accepts(self, value) -> bool:
        number = int if self.kind == "int" else (int, float)
        if isinstance(value, bool) or not isinstance(value, number):
            return False
        # NaN fails every comparison, so it is never accepted; inf fails the finite upper bound.
        above = self.low < value if self.excluded == "low" else self.low <= value
        below = value < self.high if self.excluded == "high" else value <= self.high
        return above and below

    def describe(self) -> str:
        ends = [f"{v}{' (excluded)' if self.excluded == end else ''}"
                for v, end in ((self.low, "low"), (self.high, "high"))]
        whole = " (a whole number)" if self.kind == "int" else ""
        return f"{self.flag} must be between {ends[0]} and {ends[1]}{whole}"


class Setting(NamedTuple):
    """A TrainConfig field as the CLI and ``validate`` see it, read from its ``setting`` declaration."""

    name: str
    kind: str  # its type without None: "int", "float", "str", "bool", "tuple[int, int]"
    optional: bool  # None is a valid value ("auto", or "off")
    default: object
    help: str
    flag: str  # "--field-name"; an API-only setting is named by its field in errors
    cli: bool
    choices: tuple | None
    range: NumberRange | None
    group: str | None
    parse: Callable | None

    @classmethod
    def of(cls, f: Field) -> "Setting":
        m = f.metadata
        kind, *rest = [part.strip() for part in f.type.split("|")]  # the annotation, as text ("float | None")
        flag = "--" + f.name.replace("_", "-") if m["cli"] else f.name
        limits = None if m["low"] is None else NumberRange(f.name, flag, m["low"], m["high"], kind, m["excluded"])
        return cls(f.name, kind, "None" in rest, f.default, m["help"], flag, m["cli"], m["choices"], limits,
                   m["group"], m["parse"])

    def check(self, value) -> None:
        """Raise OculiError, naming the flag, unless ``value`` is one this setting accepts."""
        if value is None and self.optional:
            return
        if self.choices is not None and value not in self.choices:
            raise OculiError(f"{self.flag} must be one of {', '.join(map(str, self.choices))}; got {value!r}")
        if self.range is not None and not self.range.accepts(value):
            raise OculiError(f"{self.range.describe()}, got {value!r}")


SETTINGS: dict[str, Setting] = {f.name: Setting.of(f) for f in fields(TrainConfig)}
# The knobs over the --augment preset: the fields of oculi.data.transforms.Augmentation, by the same names.
AUGMENTATION_KNOBS: tuple[str, ...] = tuple(name for name, s in SETTINGS.items() if s.group == AUGMENTATION)
