"""The one place every knob lives. The CLI and the Python API only fill in a ``TrainConfig``.

"auto" (or None) means: chosen from the data and the model when the run starts; the run prints what
it chose and saves the resolved values in ``config.json``, so a run can be repeated exactly.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields

from .errors import OculiError

OPTIMIZERS = ("auto", "adam", "adamw", "sgd", "rmsprop")
SCHEDULES = ("auto", "cosine", "onecycle", "constant")
HEADS = ("auto", "softmax", "sigmoid")
RESIZE_MODES = ("squash", "pad", "crop")
AUGMENTS = ("auto", "none", "light", "standard", "strong")
CLASS_WEIGHTS = ("none", "auto")
SAMPLERS = ("shuffle", "balanced")
MODES = ("auto", "features", "finetune")
CLASSIFIERS = ("linear", "mlp")
TTAS = ("auto", "none", "flip", "flip-shift")
FILTER_NAMES = ("sharpen", "blur", "edges", "blur+sharpen")  # oculi.data.filters.FILTERS
FILL_MODES = ("constant", "nearest", "reflect", "wrap")
# Augmentation knobs that override the --augment preset: (flag, lowest, highest) of each number.
AUGMENT_RANGES = {"rotation": ("--rotation", 0, 180), "shift": ("--shift", 0, 0.5), "shear": ("--shear", 0, 45),
                  "zoom": ("--zoom", 0, 0.9), "translate": ("--translate", 0, 0.5),
                  "brightness": ("--brightness", 0, 0.9), "contrast": ("--contrast", 0, 0.9),
                  "saturation": ("--saturation", 0, 1)}


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
        for name, (flag, low, high) in AUGMENT_RANGES.items():
            value = getattr(self, name)
            if value is not None and not low <= value <= high:
                raise OculiError(f"{flag} must be between {low} and {high}, got {value}")
        _fraction("--val-split", self.val_split)
        _fraction("--test-split", self.test_split)
        if self.val_split + self.test_split >= 1:
            raise OculiError("--val-split plus --test-split must leave images for training (sum < 1)")
        for flag, value in (("--epochs", self.epochs), ("--batch-size", self.batch_size),
                            ("--top-k", self.top_k), ("--feature-views", self.feature_views),
                            ("--head-epochs", self.head_epochs)):
            if value is not None and value < 1:
                raise OculiError(f"{flag} must be at least 1, got {value}")
        if self.patience is not None and self.patience < 1:
            raise OculiError(f"--patience must be at least 1, got {self.patience}")
        for flag, value in (("--lr", self.lr), ("--head-lr", self.head_lr)):
            if value is not None and not 0 < value < 10:
                raise OculiError(f"{flag} must be between 0 and 10, got {value}")
        if self.label_smoothing is not None and not 0 <= self.label_smoothing < 1:
            raise OculiError(f"--label-smoothing must be in [0, 1), got {self.label_smoothing}")
        if self.weight_decay < 0 or self.warmup_epochs < 0:
            raise OculiError("--weight-decay and --warmup-epochs cannot be negative")
        if not 0 < self.backbone_lr <= 1:
            raise OculiError(f"--backbone-lr must be a fraction in (0, 1] of --lr, got {self.backbone_lr}")
        if self.unfreeze_epochs < 0:
            raise OculiError(f"--unfreeze-epochs cannot be negative, got {self.unfreeze_epochs}")
        if self.channels not in (None, 1, 3):
            raise OculiError(f"--channels must be 1 or 3, got {self.channels}")
        if self.image_size is not None and min(self.image_size) < 1:
            raise OculiError(f"--image-size must be positive, got {self.image_size}")
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
    return (parts[0], parts[-1])


def _choice(flag: str, value: str, allowed: tuple[str, ...]) -> None:
    if value not in allowed:
        raise OculiError(f"{flag} must be one of {', '.join(allowed)}; got '{value}'")


def _fraction(flag: str, value: float) -> None:
    if not 0 <= value < 1:
        raise OculiError(f"{flag} must be a fraction in [0, 1), got {value}")
