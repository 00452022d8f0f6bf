"""Image files -> uint8 pixel arrays with PIL and numpy alone: the part of decoding that needs no torch.

``oculi.data.decode`` builds on it (adding torchvision's JPEG decoder and torch tensors); ``decode_array`` and
``prepare_array`` are the whole path for a prediction that runs an exported graph without torch
(``oculi.deploy.lite``). Both read a file the same way: PIL opens the header (the format from the bytes, the
pixel limit, the mode), JPEGs large enough are drafted, the image is turned upright by its EXIF orientation,
16-bit values are scaled to 8 bits and alpha is composited on white. The one difference: full-scale JPEGs are
decoded here by PIL's libjpeg-turbo, there by torchvision's; ``tests/data/test_pixels.py`` measures it.

Resizing follows ``oculi.data.transforms.resize_image`` step for step (squash, pad, crop, the cut-first
path of slivers), with PIL's antialiased bilinear filter, the algorithm torch's uint8 antialiased resize
was ported from: on real photos the two differ by at most one level in a few pixels.
"""

from __future__ import annotations

import hashlib
import io
import os
import re
import warnings
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps

from ..errors import ImageDecodeError, OculiError
from .unreadable import CANNOT_READ, EMPTY_FILE, NOT_AN_IMAGE, TOO_LARGE, TRUNCATED, UNSUPPORTED_FORMAT

IMAGE_EXTENSIONS = frozenset({".jpg", ".jpeg", ".jpe", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff"})
HIDDEN_NAMES = frozenset({"thumbs.db", "desktop.ini"})

# The only PIL decoders tried (JPEG includes MPO, the multi-picture JPEGs that phones write).
PIL_FORMATS = ("JPEG", "PNG", "BMP", "GIF", "WEBP", "TIFF")
GRAY_MODES = frozenset({"1", "L", "LA", "La", "I", "F", "I;16", "I;16L", "I;16B", "I;16N"})
# Modes read as one of L, LA, RGB, RGBA (16-bit and float gray are handled apart).
_PIL_TARGET = {"1": "L", "La": "LA", "PA": "RGBA", "RGBa": "RGBA", "RGBX": "RGB", "CMYK": "RGB",
               "YCbCr": "RGB", "LAB": "RGB", "HSV": "RGB"}
_ORIENTATION_TAG = 0x0112
TRUNCATED_REASON = "truncated or corrupt image data"
PIXEL_LIMIT_VARIABLE = "OCULI_MAX_IMAGE_PIXELS"
DEFAULT_MAX_IMAGE_PIXELS = 2 * 89_478_485  # PIL's refusal size (twice its default MAX_IMAGE_PIXELS): 179 MP


def is_hidden(path) -> bool:
    """Files the data discovery skips silently: dot files (.DS_Store, ._AppleDouble) and OS litter."""
    name = Path(path).name
    return name.startswith(".") or name.lower() in HIDDEN_NAMES


@dataclass(frozen=True)
class FileFacts:
    """One image file: the hash of its bytes (exact copies), channels as decoded (1 gray, 3 colour), and its
    upright height and width, as the header gives them."""

    digest: str
    channels: int
    height: int
    width: int


def bytes_digest(data: bytes) -> str:
    return hashlib.blake2b(data, digest_size=16).hexdigest()




def max_image_pixels() -> int:
    """The most pixels an image may have: ``OCULI_MAX_IMAGE_PIXELS``, else about 179 megapixels."""
    value = os.environ.get(PIXEL_LIMIT_VARIABLE, "").strip()
    if not value:
        return DEFAULT_MAX_IMAGE_PIXELS
    try:
        limit = int(value)
    except ValueError:
        limit = 0
    if limit < 1:
        raise OculiError(f"{PIXEL_LIMIT_VARIABLE} must be a whole number of pixels, at least 1; got {value!r}")
    return limit


@contextmanager
def pixel_limit():
    """Within it, oculi's pixel limit (yielded) replaces PIL's bomb guard, which would otherwise speak first:
    PIL's warning above its MAX_IMAGE_PIXELS (89 megapixels) is silenced, and its error above twice that is
    moved up, for this call only, when oculi's limit is higher (set so by OCULI_MAX_IMAGE_PIXELS)."""
    pil_limit = Image.MAX_IMAGE_PIXELS
    limit = max_image_pixels()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)
        if pil_limit is not None and 2 * pil_limit < limit:
            Image.MAX_IMAGE_PIXELS = -(-limit // 2)  # PIL refuses above twice this: never below oculi's limit
        try:
            yield limit
        finally:
            Image.MAX_IMAGE_PIXELS = pil_limit


def check_suffix(path: Path) -> None:
    if path.suffix and path.suffix.lower() not in IMAGE_EXTENSIONS:
        raise ImageDecodeError(path, "unsupported format", UNSUPPORTED_FORMAT)


def read_source(source) -> tuple[str, bytes]:
    """(name for messages, file bytes); bytes are read once and shared by PIL and torchvision."""
    if isinstance(source, (bytes, bytearray, memoryview)):
        label, data = "<bytes>", bytes(source)
    else:
        path = Path(source)
        check_suffix(path)
        try:
            label, data = str(path), path.read_bytes()
        except OSError as e:
            raise ImageDecodeError(path, f"cannot read file ({e.strerror or e})", CANNOT_READ) from e
    if not data:
        raise ImageDecodeError(label, "empty file", EMPTY_FILE)
    return label, data


def open_image(label, fp, limit: int) -> Image.Image:
    """PIL's lazy open: reads the header only; an image of more than ``limit`` pixels is refused."""
    try:
        image = Image.open(fp, formats=PIL_FORMATS)
    except Image.DecompressionBombError as e:  # over twice PIL's limit: PIL refuses before we can look
        raise _too_large(label, _pixels_in(e), limit) from e
    except Exception as e:  # UnidentifiedImageError, or a plugin choking on a broken header
        raise ImageDecodeError(label, "not an image", NOT_AN_IMAGE) from e
    if image.width * image.height > limit:
        image.close()
        raise _too_large(label, image.width * image.height, limit)
    return image


def _too_large(label, pixels: int | None, limit: int) -> ImageDecodeError:
    size = (f"{_megapixels(pixels)} megapixels, limit {_megapixels(limit)}" if pixels
            else f"over the limit of {_megapixels(limit)} megapixels")
    return ImageDecodeError(label, f"image too large ({size}; raise with {PIXEL_LIMIT_VARIABLE})", TOO_LARGE)


def _pixels_in(error: Exception) -> int | None:
    """The pixel count PIL's DecompressionBombError states ("Image size (N pixels) exceeds ..."), if it does."""
    found = re.search(r"\((\d+) pixels\)", str(error))
    return int(found.group(1)) if found else None


def _megapixels(pixels: int) -> str:
    """Whole megapixels from 10 up (144, 1,500); three significant digits below (2.5, or a test's 0.0016)."""
    return f"{pixels / 1e6:,.0f}" if pixels >= 10**7 else f"{pixels / 1e6:.3g}"


def upright_size(image: Image.Image) -> tuple[int, int]:
    """(height, width) after EXIF rotation: orientations 5-8 turn the image a quarter."""
    sideways = orientation(image) in (5, 6, 7, 8)
    return (image.width, image.height) if sideways else (image.height, image.width)


def orientation(image: Image.Image) -> int:
    # PIL's PNG getexif() decodes the whole image when no eXIf chunk precedes the pixels; such a PNG
    # has no orientation anyway as far as the header can tell.
    if image.format == "PNG" and "exif" not in image.info:
        return 1
    return image.getexif().get(_ORIENTATION_TAG, 1)


def set_draft(image: Image.Image, channels: int | None, at_least: tuple[int, int]) -> bool:
    """Set ``image`` (a JPEG, not yet decoded) to decode at the smallest of 1/2, 1/4, 1/8 scale that keeps
    it at least ``at_least`` (height, width) once upright; False when only full scale does. torchvision's
    decoder cannot scale, so PIL's decodes these: measured in BENCHMARKS.md ("Batch prediction")."""
    if image.format not in ("JPEG", "MPO"):
        return False
    height, width = at_least
    if orientation(image) in (5, 6, 7, 8):  # stored sideways: the upright height is the stored width
        height, width = width, height
    if image.width < 2 * width or image.height < 2 * height:
        return False
    # "L": libjpeg skips the chroma of a colour JPEG wanted gray; any other mode is kept as it is.
    image.draft("L" if channels == 1 else image.mode, (width, height))  # PIL picks the scale: >= the size
    return True


def pil_pixels(image: Image.Image) -> np.ndarray:
    """An opened image's pixels, upright: [C, H, W] (a view of the height-width-channel buffer), C in 1-4 (2
    and 4 carry alpha), uint8, or int32 holding 16-bit values."""
    # load() raises on truncated data as long as ImageFile.LOAD_TRUNCATED_IMAGES keeps its default
    # False (verified for JPEG, PNG, BMP, GIF, TIFF, WebP cut at 50-99 %); we never set it.
    image.load()
    ImageOps.exif_transpose(image, in_place=True)
    array = pil_array(image)
    return array.reshape(array.shape[0], array.shape[1], -1).transpose(2, 0, 1)


def pil_array(image: Image.Image) -> np.ndarray:
    """H x W (x C) array: uint8 for L/LA/RGB/RGBA, int32 holding 16-bit values for wide gray."""
    if image.mode in ("I", "I;16", "I;16L", "I;16B", "I;16N"):
        return np.clip(np.asarray(image, dtype=np.int32), 0, 65535)
    if image.mode == "F":
        return _float_gray(np.asarray(image, dtype=np.float32))
    target = _pil_target(image)
    # A copy, since PIL's buffer is read-only; convert() would make one more, even to the mode it has.
    return np.array(image if image.mode == target else image.convert(target))


def _pil_target(image: Image.Image) -> str:
    if "transparency" in image.info and image.mode in ("P", "L", "RGB"):  # palette or colour-key alpha
        return "LA" if image.mode == "L" else "RGBA"
    return "RGB" if image.mode == "P" else _PIL_TARGET.get(image.mode, image.mode)


def _float_gray(array: np.ndarray) -> np.ndarray:
    # Float images are either normalised to [0, 1] or on the 0-255 scale PIL's convert("F") gives.
    scale = 255.0 if np.nanmax(array, initial=0.0) <= 1.0 else 1.0
    return np.clip(np.nan_to_num(array) * scale, 0, 255).round().astype(np.uint8)



def to_8bit(pixels: np.ndarray) -> np.ndarray:
    """16-bit values [C, H, W] -> 8 bits by v / 257, rounded (65535 -> 255, 257 * k -> k): a scale, not a clip."""
    if pixels.dtype == np.uint8:
        return pixels
    return _in_tiles(_scale_to_8bit, pixels, pixels.shape[0])


def _scale_to_8bit(pixels: np.ndarray) -> np.ndarray:
    return ((pixels.astype(np.int32) * 255 + 32767) // 65535).astype(np.uint8)


def over_white(pixels: np.ndarray) -> np.ndarray:
    """Drop the alpha channel (the last of 2 or 4, of [C, H, W]) by compositing on white, as viewers show it."""
    if pixels.shape[0] not in (2, 4):
        return pixels
    return _in_tiles(_composite_on_white, pixels, pixels.shape[0] - 1)


def _composite_on_white(pixels: np.ndarray) -> np.ndarray:
    colour, alpha = pixels[:-1].astype(np.int32), pixels[-1:].astype(np.int32)
    return ((colour * alpha + 255 * (255 - alpha) + 127) // 255).astype(np.uint8)


def luminance(rgb: np.ndarray) -> np.ndarray:
    """uint8 [3, H, W] -> [1, H, W]: ITU-R 601-2 luma in PIL's fixed-point form, so the PIL and torchvision
    paths agree."""
    return _in_tiles(_luma, rgb, 1)


def _luma(rgb: np.ndarray) -> np.ndarray:
    r, g, b = rgb.astype(np.int32)
    return ((r * 19595 + g * 38470 + b * 7471 + 32768) >> 16).astype(np.uint8)[None]


_TILE_PIXELS = 1 << 20


def _in_tiles(convert, pixels: np.ndarray, channels: int) -> np.ndarray:
    """``convert`` (a per-pixel map to ``channels`` uint8 channels) applied to tiles of about a million
    pixels of [C, H, W], written into a height-width-channel buffer like the decoders' own. Its int32
    temporaries then take a few MB; on a whole 160-megapixel image they took 4 GB (found by
    benchmarks/fuzz_decode.py)."""
    h, w = pixels.shape[-2:]
    out = np.empty((h, w, channels), dtype=np.uint8).transpose(2, 0, 1)
    cols = min(w, _TILE_PIXELS)
    rows = max(1, _TILE_PIXELS // cols)
    for top in range(0, h, rows):
        for left in range(0, w, cols):
            tile = (slice(None), slice(top, top + rows), slice(left, left + cols))
            out[tile] = convert(pixels[tile])
    return out


def convert_array_channels(pixels: np.ndarray, channels: int | None) -> np.ndarray:
    """uint8 [1 or 3, H, W] -> ``channels`` channels (None: unchanged), as ``decode.convert_channels``."""
    if channels is None or pixels.shape[0] == channels:
        return pixels
    return np.repeat(pixels, 3, axis=0) if channels == 3 else luminance(pixels)


def decode_array(source, channels: int | None = None, at_least: tuple[int, int] | None = None) -> np.ndarray:
    """``decode.decode_image`` without torch: a file path or encoded bytes -> uint8 [C, H, W] (a view of a
    height-width-channel buffer), every format through PIL. Raises ImageDecodeError for a bad file."""
    if channels not in (None, 1, 3):
        raise ValueError(f"channels must be None, 1 or 3, got {channels!r}")
    label, data = read_source(source)
    with pixel_limit() as limit:
        image = open_image(label, io.BytesIO(data), limit)
        try:
            if not (at_least is not None and set_draft(image, channels, at_least)):
                _gray_at_full_scale(image, channels)
            pixels = pil_pixels(image)
        except Exception as e:  # decoders raise OSError, ValueError, SyntaxError... on bad data
            raise ImageDecodeError(label, TRUNCATED_REASON, TRUNCATED) from e
    return convert_array_channels(over_white(to_8bit(pixels)), channels)


def _gray_at_full_scale(image: Image.Image, channels: int | None) -> None:
    """A colour JPEG wanted gray is decoded to libjpeg's own gray (its Y channel), as torchvision's decoder
    gives it to ``decode``, rather than to colour and then luma: they differ by up to 19 levels."""
    if channels == 1 and image.format in ("JPEG", "MPO") and image.mode == "RGB":
        image.draft("L", image.size)  # the requested size is the full size: the scale stays 1


def resize_array(image: np.ndarray, size: tuple[int, int], mode: str) -> np.ndarray:
    """uint8 [C, H, W] -> [C, *size] by squashing, letterboxing (pad) or centre-cropping: the steps of
    ``transforms.resize_image``, each resize PIL's."""
    h, w = image.shape[-2:]
    if (h, w) == tuple(size):
        return image
    if mode == "squash":
        return _resized(image, size)
    scale = (min if mode == "pad" else max)(size[0] / h, size[1] / w)
    new_h, new_w = max(1, round(h * scale)), max(1, round(w * scale))
    if mode == "crop" and new_h * new_w > 16 * size[0] * size[1]:
        kept = (min(h, max(1, round(size[0] / scale))), min(w, max(1, round(size[1] / scale))))
        return _resized(_centre(image, kept), size)
    image = _resized(image, (new_h, new_w))
    if mode == "crop":
        return _centre(image, size)
    top, left = (size[0] - new_h) // 2, (size[1] - new_w) // 2
    out = np.zeros((image.shape[0], *size), dtype=np.uint8)  # zero padding, as the torch path
    out[:, top:top + new_h, left:left + new_w] = image
    return out


def _centre(image: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """The centre ``size`` of [C, H, W], placed as torchvision's ``center_crop`` places it (never larger)."""
    h, w = image.shape[-2:]
    top, left = int(round((h - size[0]) / 2.0)), int(round((w - size[1]) / 2.0))
    return image[:, top:top + size[0], left:left + size[1]]


def _resized(image: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Antialiased bilinear resize of uint8 [C, H, W] to ``size``; height first in the case where
    ``transforms._resize`` does it (a tall sliver widened), for the same memory reason and result."""
    h, w = image.shape[-2:]
    if size[0] < h and size[1] > w and h * size[1] > 2**24:
        image = _pil_resize(image, (size[0], w))
    return _pil_resize(image, size)


def _pil_resize(image: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    hwc = np.ascontiguousarray(image.transpose(1, 2, 0))
    picture = Image.fromarray(hwc[..., 0] if hwc.shape[2] == 1 else hwc)
    resized = np.asarray(picture.resize((size[1], size[0]), Image.Resampling.BILINEAR))
    return resized.reshape(size[0], size[1], -1).transpose(2, 0, 1)


def prepare_array(source, image_size: tuple[int, int], channels: int, resize: str, draft: bool = False) -> np.ndarray:
    """A file as the model takes it without torch: contiguous uint8 [channels, *image_size]. ``draft``: a JPEG
    of at least twice ``image_size`` is decoded at reduced scale first, as ``oculi predict`` decodes it."""
    pixels = decode_array(source, channels, image_size if draft else None)
    return np.ascontiguousarray(resize_array(pixels, image_size, resize))
