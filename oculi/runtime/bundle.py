"""Model bundles: ``model.safetensors`` (weights) + ``model.json`` (everything needed to use them).

Loading never unpickles anything: safetensors holds plain tensors, JSON holds the rest.

Integrity: ``model.json`` records the SHA-256 of the weights file, and ``bundle_sha256`` is the SHA-256
of model.json's own canonical JSON (every field but the digest and signature), so an edited class list
or a damaged file is refused as surely as swapped weights. A digest alone only catches accidents: a
deliberate forger can recompute it. That is what ``OCULI_BUNDLE_KEY`` is for: when it is set at save
time, ``bundle_hmac_sha256`` signs the digest with it; when it is set at load time, a bundle without a
valid signature is refused.

Everything model.json says is checked before it is used (types, ranges, class count against the
network's outputs), and the architecture is rebuilt from its name and checked against every tensor's
shape. Bundles of format 1 (weights checksum only) still load, with a ``BundleWarning``.

``verified_meta`` does every check but building the network, without torch: what a prediction through an
exported graph (``oculi.deploy.lite``) relies on.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import math
import os
import warnings
from collections import Counter
from pathlib import Path
from typing import TYPE_CHECKING, NamedTuple

from safetensors import SafetensorError

from ..calibration import Calibration
from ..config import CLASSIFIERS, FILTER_NAMES, MAX_IMAGE_SIDE, MIN_IMAGE_SIDE, RESIZE_MODES, TTAS
from ..data.preprocessing import Preprocessing
from ..errors import BundleError, BundleWarning, OculiError, first_line
from ..io import atomic_path, atomic_write_json
from ..rundir import RunDir
from ..version import __version__

if TYPE_CHECKING:  # torch and the models are imported where a network is saved or built: verifying needs neither
    import torch.nn as nn

    from ..models.spec import ModelSpec

FORMAT = "oculi.bundle"
FORMAT_VERSION = 2  # 2: bundle_sha256 covers model.json as well; 1: only the weights' checksum
DIGEST_FIELD, SIGNATURE_FIELD = "bundle_sha256", "bundle_hmac_sha256"
KEY_ENV = "OCULI_BUNDLE_KEY"
MODEL_FIELDS = ("name", "num_classes", "in_chans", "image_size", "head", "classifier")
# flip_tta: how bundles from before --tta flip-shift stored test-time flips (Preprocessing.from_dict reads it).
PREPROCESSING_FIELDS = ("image_size", "channels", "resize", "mean", "std", "tta", "filter", "flip_tta")
CALIBRATION_FIELDS = ("temperature", "abstain_threshold", "class_temperatures")
MAX_CLASSES = 1_000_000  # far above any real task; only bounds what a damaged file can ask to allocate


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def save_bundle(folder: Path, model: "nn.Module", spec: "ModelSpec", classes: list[str],
                preprocessing: Preprocessing, extra: dict | None = None) -> Path:
    """Write the weights, then the JSON that vouches for them (each atomically); returns model.json."""
    from safetensors.torch import save_file
    files = RunDir(Path(folder))
    state = {k: v.detach().cpu().contiguous().clone() for k, v in model.state_dict().items()}
    with atomic_path(files.weights) as tmp:
        save_file(state, str(tmp))
    meta = {"format": FORMAT, "format_version": FORMAT_VERSION, "oculi_version": __version__,
            "model": spec.to_dict(), "classes": list(classes), "preprocessing": preprocessing.to_dict(),
            "weights_sha256": sha256_of(files.weights), **(extra or {})}
    atomic_write_json(files.model_json, seal(meta))
    return files.model_json


def canonical_json(meta: dict) -> bytes:
    """What the digest covers: every field but the digest and signature, in one fixed spelling (sorted
    keys, no spaces), so that re-indenting model.json does not break it but changing any value does."""
    body = {k: v for k, v in meta.items() if k not in (DIGEST_FIELD, SIGNATURE_FIELD)}
    return json.dumps(body, sort_keys=True, separators=(",", ":")).encode("ascii")


def bundle_digest(meta: dict) -> str:
    """SHA-256 of ``meta``'s canonical JSON; it includes ``weights_sha256``, so it covers the weights too."""
    return hashlib.sha256(canonical_json(meta)).hexdigest()


def signing_key() -> bytes | None:
    """The key in OCULI_BUNDLE_KEY; unset or empty: no signing."""
    key = os.environ.get(KEY_ENV, "")
    # surrogateescape: the key's bytes as the environment holds them, even when they are not UTF-8.
    return key.encode("utf-8", "surrogateescape") if key else None


def _signature(digest: str, key: bytes) -> str:
    return hmac.new(key, digest.encode("ascii"), hashlib.sha256).hexdigest()


def seal(meta: dict) -> dict:
    """``meta`` with its digest, and signed when OCULI_BUNDLE_KEY is set: what ``save_bundle`` writes."""
    digest = bundle_digest(meta)
    sealed = {**{k: v for k, v in meta.items() if k not in (DIGEST_FIELD, SIGNATURE_FIELD)}, DIGEST_FIELD: digest}
    key = signing_key()
    if key is not None:
        sealed[SIGNATURE_FIELD] = _signature(digest, key)
    return sealed


def bundle_paths(path: str | Path) -> tuple[Path, Path]:
    """(model.json, model.safetensors) for a run folder or either file of a bundle."""
    path = Path(path).expanduser()
    folder = path if path.is_dir() else path.parent
    if not path.exists():
        raise OculiError(f"no such run folder or model: {path}")
    meta, weights = RunDir(folder).model_json, RunDir(folder).weights
    for p in (meta, weights):
        if not p.is_file():
            raise BundleError(f"{folder}: no {p.name} (is this an oculi run folder?)")
    return meta, weights


def read_bundle_meta(meta_path: Path) -> dict:
    """model.json parsed, once it is known to be an oculi bundle of a format this version reads."""
    try:
        meta = json.loads(meta_path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise BundleError(f"{meta_path}: not valid JSON ({err})") from None
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        raise BundleError(f"{meta_path}: not an oculi model bundle")
    version = meta.get("format_version")
    if type(version) is int and version > FORMAT_VERSION:
        raise BundleError(f"{meta_path}: made by a newer oculi (bundle format {version})")
    _Fields(meta_path, "", meta).integer("format_version", 1, FORMAT_VERSION)
    return meta


def load_bundle(path: str | Path) -> tuple["nn.Module", dict]:
    """The model (eval mode, CPU) and its metadata, once both files are shown to be unchanged and everything
    model.json says is checked; a one-line BundleError otherwise. Format 1 bundles load with a BundleWarning."""
    meta, meta_path, weights_path = verified_meta(path, warn=False)
    model = _build(meta, meta_path, weights_path)
    warn_of_format(meta, meta_path)
    return model.eval(), meta


def verified_meta(path: str | Path, warn: bool = True) -> tuple[dict, Path, Path]:
    """(model.json's content, its path, the weights' path) once both files are shown to be unchanged (digests,
    and the signature where OCULI_BUNDLE_KEY asks for one) and every field is checked: all of ``load_bundle``
    but building the network, so without torch. ``warn``: a format 1 bundle gives its BundleWarning."""
    meta_path, weights_path = bundle_paths(path)
    meta = read_bundle_meta(meta_path)
    _check_integrity(meta, meta_path, weights_path)
    check_meta(meta, meta_path)
    if warn:
        warn_of_format(meta, meta_path)
    return meta, meta_path, weights_path


def warn_of_format(meta: dict, meta_path: Path) -> None:
    if meta["format_version"] < 2:
        # Warned only once everything else passed, so that a refused bundle gets a single line.
        warnings.warn(f"{meta_path}: bundle format {meta['format_version']} checks its weights but not "
                      f"model.json itself; train again for a bundle whose every file is checked",
                      BundleWarning, stacklevel=3)


def _check_integrity(meta: dict, meta_path: Path, weights_path: Path) -> None:
    if sha256_of(weights_path) != meta.get("weights_sha256"):
        raise BundleError(f"{weights_path}: checksum does not match {meta_path.name} "
                          f"(the weights were changed or belong to another model)")
    if meta["format_version"] >= 2 and meta.get(DIGEST_FIELD) != bundle_digest(meta):
        raise BundleError(f"{meta_path}: its content does not match its {DIGEST_FIELD} "
                          f"(the file was edited or damaged)")
    key = signing_key()
    if key is not None and not _signed(meta, key):
        raise BundleError(f"{meta_path}: no valid signature for the key in {KEY_ENV} "
                          f"(unsigned, signed with another key, or altered)")


def _signed(meta: dict, key: bytes) -> bool:
    signature = meta.get(SIGNATURE_FIELD)
    if not isinstance(signature, str):
        return False
    # compare_digest: the time taken does not tell a forger how much of a guess was right.
    return hmac.compare_digest(signature.encode("utf-8", "replace"), _signature(bundle_digest(meta), key).encode())


def check_meta(meta: dict, meta_path: Path) -> None:
    """Check classes, model spec and preprocessing (types, ranges and agreement)."""
    fields = _Fields(meta_path, "", meta)
    classes = _classes(fields)
    spec = _model_fields(fields.section("model"))
    preprocessing = _preprocessing(fields.section("preprocessing"))
    if len(classes) != spec.num_classes:
        fields.fail("classes", f"has {len(classes)} names but model.num_classes is {spec.num_classes}")
    if spec.head == "sigmoid" and spec.num_classes != 2:
        fields.fail("model.head", f"is \"sigmoid\", which takes exactly 2 classes, not {spec.num_classes}")
    bundle_thresholds(meta, meta_path)
    if spec.in_chans != preprocessing.channels:
        fields.fail("model.in_chans", f"is {spec.in_chans} but preprocessing.channels is {preprocessing.channels}")
    if spec.image_size != preprocessing.image_size:
        fields.fail("model.image_size", f"is {list(spec.image_size)} but preprocessing.image_size is "
                                        f"{list(preprocessing.image_size)}")
    bundle_calibration(meta, meta_path)


def bundle_calibration(meta: dict, meta_path: Path | str = "the bundle") -> Calibration:
    """model.json's ``calibration``, checked; a bundle without one (made before it existed): T = 1, no
    threshold."""
    if "calibration" not in meta:
        return Calibration()
    section = _Fields(Path(meta_path), "", meta).section("calibration")
    section.only(CALIBRATION_FIELDS)
    temperature = section.number("temperature", 1e-3, 1e3)
    threshold = section.get("abstain_threshold", "", None)
    if threshold is not None:
        threshold = section.number("abstain_threshold", 0, 1)
    return Calibration(float(temperature), threshold if threshold is None else float(threshold),
                       _class_temperatures(section, meta))


def _class_temperatures(section: "_Fields", meta: dict) -> tuple[float, ...] | None:
    """``calibration.class_temperatures``: a multi-label bundle's temperature for each class (optional; one
    from before they existed divides by 1); refused with any other head."""
    value = section.get("class_temperatures", "", None)
    if value is None:
        return None
    if (meta.get("model") or {}).get("head") != "multilabel":
        section.fail("class_temperatures", "belongs to a multilabel head only")
    n = len(meta.get("classes") or ())
    if not (isinstance(value, list) and len(value) == n and all(type(v) in (int, float) and 1e-3 <= v <= 1e3
                                                                for v in value)):
        section.wrong("class_temperatures", value, f"a list of {n} numbers from 0.001 to 1000")
    return tuple(float(v) for v in value)


def bundle_thresholds(meta: dict, meta_path: Path | str = "the bundle") -> list[float] | None:
    """A multi-label bundle's per-class thresholds (``thresholds``: one number in [0, 1] a class, required with
    the multilabel head, refused with any other); None for a one-label model."""
    fields = _Fields(Path(meta_path), "", meta)
    multi = (meta.get("model") or {}).get("head") == "multilabel"
    if not multi:
        if "thresholds" in meta:
            fields.fail("thresholds", "belongs to a multilabel head only")
        return None
    value = fields.get("thresholds", "a list of one threshold a class")
    if not (isinstance(value, list) and len(value) == len(meta.get("classes") or ())
            and all(type(v) in (int, float) and 0 <= v <= 1 for v in value)):
        fields.wrong("thresholds", value, f"a list of {len(meta.get('classes') or ())} numbers from 0 to 1")
    return [float(v) for v in value]


def _classes(fields: "_Fields") -> list[str]:
    classes = fields.get("classes", "a list of class names")
    if not isinstance(classes, list) or not all(isinstance(c, str) and c.strip() for c in classes):
        fields.wrong("classes", classes, "a list of non-empty names")
    if len(classes) < 2:
        fields.wrong("classes", classes, "at least 2 names")
    repeated = next((c for c, n in Counter(classes).items() if n > 1), None)
    if repeated is not None:
        fields.fail("classes", f"names {_show(repeated)} twice")
    return classes


class _ModelFields(NamedTuple):
    """model.json's ``model``, checked: what ``ModelSpec.from_dict`` builds the spec from."""
    name: str
    num_classes: int
    in_chans: int
    image_size: tuple[int, int]
    head: str
    classifier: str


def _model_fields(model: "_Fields") -> _ModelFields:
    model.only(MODEL_FIELDS)
    return _ModelFields(model.text("name"), model.integer("num_classes", 2, MAX_CLASSES),
                        model.pick("in_chans", (1, 3)), model.size("image_size"),
                        model.pick("head", ("softmax", "sigmoid", "multilabel")),
                        model.pick("classifier", CLASSIFIERS, default="linear"))


def _preprocessing(pre: "_Fields") -> Preprocessing:
    pre.only(PREPROCESSING_FIELDS)
    channels = pre.pick("channels", (1, 3))
    pre.size("image_size")
    pre.pick("resize", RESIZE_MODES)
    pre.numbers("mean", sorted({1, channels}), positive=False)
    pre.numbers("std", sorted({1, channels}), positive=True)
    pre.pick("tta", (None, *(t for t in TTAS if t != "auto")), default=None)
    pre.pick("filter", (None, *FILTER_NAMES), default=None)
    pre.pick("flip_tta", (False, True), default=False)
    return Preprocessing.from_dict(pre.d)


def _build(meta: dict, meta_path: Path, weights_path: Path) -> "nn.Module":
    """The network model.json (checked) names, with every tensor of the weights file (names and shapes must match)."""
    from safetensors.torch import load_file

    from ..models.spec import ModelSpec
    spec = ModelSpec.from_dict(meta["model"])
    try:
        state = load_file(str(weights_path))
    except (SafetensorError, OSError) as err:
        raise BundleError(f"{weights_path}: not a readable safetensors file ({first_line(err)})") from None
    try:
        model = spec.build()
    except (OculiError, TypeError, ValueError, RuntimeError) as err:
        raise BundleError(f"{meta_path}: model cannot be built ({first_line(err)})") from None
    try:
        model.load_state_dict(state, strict=True)
    except (KeyError, TypeError, ValueError, RuntimeError) as err:
        raise BundleError(f"{weights_path}: does not match the architecture in {meta_path.name} "
                          f"({first_line(err)})") from None
    return model


_MISSING = object()


def _show(value) -> str:
    """``value`` as model.json spells it, cut short so that a message stays one line."""
    text = json.dumps(value)
    return text if len(text) <= 60 else text[:57] + "..."


class _Fields:
    """One object of model.json read field by field: a missing or wrong value is a one-line BundleError
    naming the file, the field, what it holds and what was expected."""

    def __init__(self, where: Path, prefix: str, d: dict):
        self.where, self.prefix, self.d = where, prefix, d

    def fail(self, key: str, problem: str):
        raise BundleError(f"{self.where}: {self.prefix}{key} {problem}")

    def wrong(self, key: str, value, expected: str):
        self.fail(key, f"is {_show(value)}, expected {expected}")

    def get(self, key: str, expected: str, default=_MISSING):
        if key in self.d:
            return self.d[key]
        if default is _MISSING:
            self.fail(key, f"is missing (expected {expected})")
        return default

    def only(self, known: tuple[str, ...]) -> None:
        """Refuse settings this version does not know: ignoring one could change what the model sees."""
        unknown = sorted(set(self.d) - set(known))
        if unknown:
            self.fail(unknown[0], "is not a setting this version of oculi knows")

    def section(self, key: str) -> "_Fields":
        value = self.get(key, "an object")
        if not isinstance(value, dict):
            self.wrong(key, value, "an object")
        return _Fields(self.where, f"{self.prefix}{key}.", value)

    def text(self, key: str) -> str:
        value = self.get(key, "a name")
        if not isinstance(value, str) or not value.strip():
            self.wrong(key, value, "a name")
        return value

    def integer(self, key: str, low: int, high: int) -> int:
        expected = f"a whole number from {low} to {high}"
        value = self.get(key, expected)
        # type() rather than isinstance: JSON's true and false are Python ints, not numbers to a reader.
        if type(value) is not int or not low <= value <= high:
            self.wrong(key, value, expected)
        return value

    def pick(self, key: str, allowed: tuple, default=_MISSING):
        expected = "one of " + ", ".join(_show(a) for a in allowed)
        value = self.get(key, expected, default)
        if not any(type(value) is type(a) and value == a for a in allowed):
            self.wrong(key, value, expected)
        return value

    def number(self, key: str, low: float, high: float) -> float:
        expected = f"a number from {low:g} to {high:g}"
        value = self.get(key, expected)
        if not (type(value) in (int, float) and math.isfinite(value) and low <= value <= high):
            self.wrong(key, value, expected)
        return value

    def size(self, key: str) -> tuple[int, int]:
        # The bounds --image-size has: a damaged side of 10^5 would ask for gigabytes per image.
        expected = f"[height, width], each from {MIN_IMAGE_SIDE} to {MAX_IMAGE_SIDE}"
        value = self.get(key, expected)
        if not (isinstance(value, list) and len(value) == 2
                and all(type(v) is int and MIN_IMAGE_SIDE <= v <= MAX_IMAGE_SIDE for v in value)):
            self.wrong(key, value, expected)
        return tuple(value)

    def numbers(self, key: str, counts: list[int], positive: bool) -> list[float]:
        expected = f"a list of {' or '.join(map(str, counts))} finite numbers{' above 0' if positive else ''}"
        value = self.get(key, expected)
        if not (isinstance(value, list) and len(value) in counts
                and all(type(v) in (int, float) and math.isfinite(v) and (v > 0 or not positive) for v in value)):
            self.wrong(key, value, expected)
        return value
