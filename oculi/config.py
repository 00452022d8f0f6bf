"""The one place every knob lives. The CLI and the Python API only fill in a ``TrainConfig``.

"auto" (or None) means: chosen from the data and the model when the run starts; the run prints what
it chose and saves the resolved values in ``config.json``, so a run can be repeated exactly.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields
from typing import NamedTuple

from .errors import OculiError

OPTIMIZERS = ("auto", "adam", "adamw", "sgd", "rmsprop")
SCHEDULES = ("auto", "cosine", "onecycle", "constant")
HEADS = ("auto", "softmax", "sigmoid")
RESIZE_MODES = ("squash", "pad", "crop")
AUGMENTS = ("auto", "none", "light", "standard", "strong")
CLASS_WEIGHTS = ("none", "auto")
SAMPLERS = ("shuffle", "balanced")
MODES = ("auto", "features", "finetune", "scratch")
CLASSIFIERS = ("linear", "mlp")
TTAS = ("auto", "none", "flip", "flip-shift")
FILTER_NAMES = ("sharpen", "blur", "edges", "blur+sharpen")  # oculi.data.filters.FILTERS
FILL_MODES = ("constant", "nearest", "reflect", "wrap")
MAX_IMAGE_SIDE = 4096  # largest model input side (pixels): one bound for --image-size and bundles
# Smallest: --augment's and --tta's whole-pixel shifts pad by reflection (which needs a side of 2) and
# fast-cnn's first layer is a 2x2 patch. Models that need more (the tutorials' conv nets) say so when built.
MIN_IMAGE_SIDE = 2
# Augmentation knobs that override the --augment preset: (flag, lowest, highest) of each number.
AUGMENT_RANGES = {"rotation": ("--rotation", 0, 180), "shift": ("--shift", 0, 0.5), "shear": ("--shear", 0, 45),
                  "zoom": ("--zoom", 0, 0.9), "translate": ("--translate", 0, 0.5),
                  "brightness": ("--brightness", 0, 0.9), "contrast": ("--contrast", 0, 0.9),
                  "saturation": ("--saturation", 0, 1)}
# Seeds go to numpy's and torch's generators, which take 0 .. 2**32 - 1 everywhere (numpy's legacy
# seeding and other tools' too), so a seed from another tool means the same thing here.
MAX_SEED = 2**32 - 1


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


# Every numeric setting's range, checked by TrainConfig.validate (None, where a field allows it, means
# "auto" and is not checked). The upper bounds are far beyond any sensible run; they turn a typo into an
# error instead of hours of work or an allocation that cannot succeed. channels and image_size are
# checked on their own (a choice of 1 or 3; a pair of sides).
NUMBER_RANGES = (
    NumberRange("val_split", "--val-split", 0, 1, "float", "high"),
    NumberRange("test_split", "--test-split", 0, 1, "float", "high"),
    *(NumberRange(name, flag, low, high, "float") for name, (flag, low, high) in AUGMENT_RANGES.items()),
    NumberRange("feature_views", "--feature-views", 1, 100, "int"),
    NumberRange("head_epochs", "--head-epochs", 1, 100_000, "int"),
    NumberRange("head_lr", "--head-lr", 0, 10, "float", "low"),
    NumberRange("backbone_lr", "--backbone-lr", 0, 1, "float", "low"),
    NumberRange("unfreeze_epochs", "--unfreeze-epochs", 0, 10_000, "int"),
    NumberRange("epochs", "--epochs", 1, 10_000, "int"),
    NumberRange("batch_size", "--batch-size", 1, 65_536, "int"),
    NumberRange("lr", "--lr", 0, 10, "float", "low"),
    NumberRange("weight_decay", "--weight-decay", 0, 1, "float"),
    NumberRange("momentum", "momentum", 0, 1, "float", "high"),  # API only: no flag
    NumberRange("warmup_epochs", "--warmup-epochs", 0, 10_000, "float"),
    NumberRange("label_smoothing", "--label-smoothing", 0, 1, "float", "high"),
    NumberRange("patience", "--patience", 1, 10_000, "int"),
    NumberRange("seed", "--seed", 0, MAX_SEED, "int"),
    NumberRange("top_k", "--top-k", 1, 1000, "int"),
)


@dataclass
class TrainConfig:
    # data
    data: str = "digits"
    data_dir: str | None = None  # where a built-in set's archives already are (skips the download)
    val_split: float = 0.1
    test_split: float = 0.1
    split_manifest: str | None = None
    image_size: tuple[int, int] | None = None  # (height, width); None: from the data and the model
    resize: str = "squash"
    channels: int | None = None  # None: 1 for grayscale data, 3 otherwise (3 when the model needs it)
    augment: str = "auto"
    # Each augmentation knob overrides the --augment preset's value when set (None: the preset's).
    rotation: float | None = None  # degrees, up to +-rotation
    shift: float | None = None  # fraction of the side, up to +-shift (Keras' width/height_shift_range)
    shear: float | None = None  # degrees
    zoom: float | None = None  # scale in [1 - zoom, 1 + zoom]
    translate: float | None = None  # whole-pixel shift with reflect padding, fraction of the side
    brightness: float | None = None  # pixel values times 1 +- brightness
    contrast: float | None = None
    saturation: float | None = None
    flip: bool | None = None  # horizontal flips (None: on, except for digits and MNIST)
    vflip: bool | None = None  # vertical flips
    fill_mode: str | None = None  # constant | nearest | reflect | wrap: what comes in at the borders
    filter: str | None = None  # sharpen | blur | edges | blur+sharpen, applied to every image (kept in the bundle)
    tta: str = "auto"  # test-time augmentation: flip averages each image with its mirror; auto: the recipe's
    # model
    model: str = "auto"
    pretrained: bool | None = None  # None: pretrained weights when the model has them available
    head: str = "auto"  # binary tasks: one sigmoid output or two softmax outputs
    weights: str | None = None  # a local weights file for a timm backbone (safetensors or state dict)
    classifier: str = "linear"  # the layers on a backbone's pooled features: linear | mlp (tutorial's)
    # transfer learning (pretrained backbones)
    mode: str = "auto"  # features: frozen backbone, cached features | finetune: the whole net | auto: both
    feature_views: int = 1  # features per training image: 1 plain, more adds augmented views
    head_epochs: int = 60  # epochs of the head on cached features (each takes milliseconds)
    head_lr: float = 1e-3  # learning rate of the head on cached features
    backbone_lr: float = 0.1  # fine-tuning: the backbone's learning rate, as a fraction of --lr
    unfreeze_epochs: int = 0  # fine-tuning: unfreeze the backbone gradually, top first, over N epochs
    # optimisation
    epochs: int | None = None
    batch_size: int | None = None
    lr: float | None = None
    optimizer: str = "auto"  # the model's recipe: sgd for fast-cnn, else adamw
    weight_decay: float = 5e-4
    momentum: float = 0.9
    schedule: str = "auto"  # the model's recipe: onecycle for fast-cnn, else cosine
    warmup_epochs: float = 1.0
    label_smoothing: float | None = None  # None: the model's recipe (0.2 for fast-cnn, else 0)
    lookahead: bool | None = None  # average the weights every 5 steps (airbench's Lookahead); None: the recipe's
    patience: int | None = 10  # early stopping: epochs without a better val accuracy; None: never
    class_weights: str = "none"
    sampler: str = "shuffle"
    # run
    cache: bool = True  # keep decoded images and backbone features on disk for later runs (oculi.data.cache)
    seed: int = 0
    device: str = "auto"
    out: str | None = None  # run folder; None: runs/<data name>, runs/<data name>-2, ...
    top_k: int = 5
    progress: bool = True
    report: bool = True  # write report.html (data, model, curves, metrics, predictions, Grad-CAM) at the end

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
        _choice("--optimizer", self.optimizer, OPTIMIZERS)
        _choice("--schedule", self.schedule, SCHEDULES)
        _choice("--head", self.head, HEADS)
        _choice("--resize", self.resize, RESIZE_MODES)
        _choice("--augment", self.augment, AUGMENTS)
        _choice("--class-weights", self.class_weights, CLASS_WEIGHTS)
        _choice("--sampler", self.sampler, SAMPLERS)
        _choice("--mode", self.mode, MODES)
        _choice("--classifier", self.classifier, CLASSIFIERS)
        _choice("--tta", self.tta, TTAS)
        if self.filter is not None:
            _choice("--filter", self.filter, FILTER_NAMES)
        if self.fill_mode is not None:
            _choice("--fill-mode", self.fill_mode, FILL_MODES)
        for rule in NUMBER_RANGES:
            value = getattr(self, rule.field)
            if value is not None and not rule.accepts(value):
                raise OculiError(f"{rule.describe()}, got {value!r}")
        if self.val_split + self.test_split >= 1:
            raise OculiError("--val-split plus --test-split must leave images for training (sum < 1)")
        if self.channels not in (None, 1, 3):
            raise OculiError(f"--channels must be 1 or 3, got {self.channels}")
        if self.image_size is not None:
            check_image_size(self.image_size)
        return self


def parse_image_size(text: str | int | None) -> tuple[int, int] | None:
    """'224' -> (224, 224); '224x256' -> (224, 256) (height x width)."""
    if text is None or isinstance(text, int):
        return None if text is None else (text, text)
    try:
        parts = [int(p) for p in str(text).lower().split("x")]
    except ValueError:
        parts = []
    if len(parts) not in (1, 2) or min(parts, default=0) < 1:
        raise OculiError(f"--image-size must be N or HxW (e.g. 224 or 224x256), got '{text}'")
    return check_image_size((parts[0], parts[-1]))


def check_image_size(size: tuple[int, int]) -> tuple[int, int]:
    """``size`` when each side is from MIN_IMAGE_SIDE to MAX_IMAGE_SIDE: 100000 px a side would ask for
    tens of GB per image before anything could fail more helpfully."""
    if len(size) != 2 or not all(isinstance(v, int) and MIN_IMAGE_SIDE <= v <= MAX_IMAGE_SIDE for v in size):
        raise OculiError(f"--image-size sides must be between {MIN_IMAGE_SIDE} and {MAX_IMAGE_SIDE} pixels, "
                         f"got {'x'.join(map(str, size))}")
    return size


def _choice(flag: str, value: str, allowed: tuple[str, ...]) -> None:
    if value not in allowed:
        raise OculiError(f"{flag} must be one of {', '.join(allowed)}; got '{value}'")
