"""Image files -> uint8 [C, H, W] tensors, upright, with alpha composited on white.

JPEGs (most files in practice) are decoded by torchvision's libjpeg-turbo binding. Measured per image,
one thread, 396 real 256-px photos, PIL header read included: 0.34 ms (PIL 0.43), to gray 0.26 ms (PIL
0.68: libjpeg skips the chroma). Everything else (PNG, BMP, GIF, WebP, TIFF) goes through PIL. Either way
PIL first opens the header: it identifies the format from the bytes (never the file name), checks the
pixel count and tells the mode.

PNG is PIL's, not torchvision's, because torchvision 0.29's ``decode_png`` kills the process on corrupt
data: each libpng error met while reading the rows (a scanline filter byte above 4, a broken zlib stream,
a bad IDAT checksum, too little pixel data) is a segmentation fault, not an exception; 417 of 667
mutated PNGs crashed it. PIL raises instead, and costs little more: the same 396 photos as PNG, CPU time
per image, 1.54 ms against torchvision's 1.31 ms (+18 %). Checking the filter bytes ourselves before
calling torchvision would cost more than that: inflating the pixel data alone takes 0.55 ms, on top of
torchvision's own inflate (and the other libpng errors would still crash it). The one loss: PIL reads
16-bit colour PNGs to 8 bits by their high byte, at most one level below the rounded v / 257 that 16-bit
gray PNGs and TIFFs get. Whatever native crash is left is contained where many files are decoded at once
(``oculi.data.contained``).

Pixel limit: an image of more than ``max_image_pixels()`` pixels (default 178,956,970, about 179
megapixels: the size at which PIL itself refuses an image as a decompression bomb, so oculi reads the
images that PIL-based loaders such as Keras' and fastai's read) is an ImageDecodeError, "image too large
(N megapixels, limit M; raise with OCULI_MAX_IMAGE_PIXELS)": skipped from a run and listed with the other
skipped files. Below the limit nothing is printed: PIL's DecompressionBombWarning (from 89 megapixels) is
silenced, since a large photo is a normal input here. The environment variable OCULI_MAX_IMAGE_PIXELS
sets another limit, in pixels. An image near the limit takes 2-3 GB to decode, in each decoding process
(PIL's buffers and the array copied out of them: 2.4 GB for a 134-megapixel TIFF in benchmarks/fuzz_decode.py),
so a machine short of memory may want a lower one.
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
import torch
from PIL import Image, ImageOps

from ..errors import ImageDecodeError, OculiError
from .unreadable import CANNOT_READ, EMPTY_FILE, NOT_AN_IMAGE, TOO_LARGE, TRUNCATED, UNSUPPORTED_FORMAT

try:
    import torchvision.io.image as _tv_image
    from torchvision.io import ImageReadMode, decode_jpeg

    _FAST = getattr(_tv_image, "_has_image_ops", lambda: True)()
except ImportError:  # torchvision's decoders are deprecated since 0.29; PIL then decodes everything
    _FAST = False

# torchvision 0.29 warns on each decode that these decoders move to TorchCodec: nothing to act on here
warnings.filterwarnings("ignore", message="The image decoding and encoding capabilities of TorchVision",
                        category=DeprecationWarning)

IMAGE_EXTENSIONS = frozenset({".jpg", ".jpeg", ".jpe", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff"})
HIDDEN_NAMES = frozenset({"thumbs.db", "desktop.ini"})

# The only PIL decoders tried (JPEG includes MPO, the multi-picture JPEGs that phones write).
_PIL_FORMATS = ("JPEG", "PNG", "BMP", "GIF", "WEBP", "TIFF")
_GRAY_MODES = frozenset({"1", "L", "LA", "La", "I", "F", "I;16", "I;16L", "I;16B", "I;16N"})
_JPEG_FAST_MODES = frozenset({"L", "RGB", "CMYK"})  # torchvision converts CMYK (Adobe-inverted too) to RGB
# Modes read as one of L, LA, RGB, RGBA (16-bit and float gray are handled apart).
_PIL_TARGET = {"1": "L", "La": "LA", "PA": "RGBA", "RGBa": "RGBA", "RGBX": "RGB", "CMYK": "RGB",
               "YCbCr": "RGB", "LAB": "RGB", "HSV": "RGB"}
_ORIENTATION_TAG = 0x0112
_TRUNCATED = "truncated or corrupt image data"
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


def decode_image(source, channels: int | None = None, at_least: tuple[int, int] | None = None) -> torch.Tensor:
    """A file path or encoded bytes -> uint8 [C, H, W]. ``channels=None`` keeps gray images at 1
    channel and gives 3 for the rest; 1 or 3 converts. Raises ImageDecodeError for a bad file.

    ``at_least`` (height, width): a JPEG of at least twice that size is decoded at 1/2, 1/4 or 1/8 scale
    (libjpeg's DCT scaling, PIL's ``draft``), the smallest that keeps both upright sides at least that
    size: for a caller that resizes down to it next (``oculi predict``)."""
    return decode_image_and_facts(source, channels, at_least, facts=False)[0]


def decode_image_and_facts(source, channels: int | None = None, at_least: tuple[int, int] | None = None,
                           facts: bool = True) -> tuple[torch.Tensor, FileFacts | None]:
    """``decode_image``, and the file's facts (as ``read_image_size`` and a hash of its bytes give them), from
    the one read of the file: a training run's data check then reads no file again. None for the facts of
    an image whose header ``read_image_size`` refuses (a malformed EXIF block) though its pixels decode, and
    without ``facts`` (no hash of the bytes for a caller that has no use for it: predict, serve)."""
    if channels not in (None, 1, 3):
        raise ValueError(f"channels must be None, 1 or 3, got {channels!r}")
    label, data = _read(source)
    with _pixel_limit() as limit:
        image = _open(label, io.BytesIO(data), limit)
        try:
            found = _header_facts(image, data) if facts else None
            drafted = at_least is not None and _drafted(image, channels, at_least)
            pixels = _decode_pil(image) if drafted else _decode(image, data, channels)
        except Exception as e:  # decoders raise OSError, RuntimeError, ValueError, SyntaxError... on bad data
            raise ImageDecodeError(label, _TRUNCATED, TRUNCATED) from e
    # Left in the decoders' height-width-channel memory order: a copy to contiguous [C, H, W] would
    # cost a quarter of the JPEG decode time, and the uint8 resize that follows runs 0.13 ms on it
    # against 0.22 ms on a contiguous tensor.
    return convert_channels(_over_white(_to_8bit(pixels)), channels), found


def _header_facts(image: Image.Image, data: bytes) -> FileFacts | None:
    try:
        height, width = _upright_size(image)
    except Exception:  # a malformed EXIF block: read_image_size refuses the file, the pixels may still decode
        return None
    return FileFacts(bytes_digest(data), 1 if image.mode in _GRAY_MODES else 3, height, width)


def read_image_size(path) -> tuple[int, int, int]:
    """(channels, height, width) from the header alone, as ``decode_image`` would return them."""
    path = Path(path)
    _check_suffix(path)
    try:
        empty = path.stat().st_size == 0
    except OSError as e:
        raise ImageDecodeError(path, f"cannot read file ({e.strerror or e})", CANNOT_READ) from e
    if empty:
        raise ImageDecodeError(path, "empty file", EMPTY_FILE)
    with _pixel_limit() as limit, _open(path, path, limit) as image:
        try:
            height, width = _upright_size(image)
        except Exception as e:  # a malformed EXIF block
            raise ImageDecodeError(path, _TRUNCATED, TRUNCATED) from e
        return (1 if image.mode in _GRAY_MODES else 3), height, width


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
def _pixel_limit():
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


def _check_suffix(path: Path) -> None:
    if path.suffix and path.suffix.lower() not in IMAGE_EXTENSIONS:
        raise ImageDecodeError(path, "unsupported format", UNSUPPORTED_FORMAT)


def _read(source) -> tuple[str, bytes]:
    """(name for messages, file bytes); bytes are read once and shared by PIL and torchvision."""
    if isinstance(source, (bytes, bytearray, memoryview)):
        label, data = "<bytes>", bytes(source)
    else:
        path = Path(source)
        _check_suffix(path)
        try:
            label, data = str(path), path.read_bytes()
        except OSError as e:
            raise ImageDecodeError(path, f"cannot read file ({e.strerror or e})", CANNOT_READ) from e
    if not data:
        raise ImageDecodeError(label, "empty file", EMPTY_FILE)
    return label, data


def _open(label, fp, limit: int) -> Image.Image:
    """PIL's lazy open: reads the header only; an image of more than ``limit`` pixels is refused."""
    try:
        image = Image.open(fp, formats=_PIL_FORMATS)
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


def _upright_size(image: Image.Image) -> tuple[int, int]:
    """(height, width) after EXIF rotation: orientations 5-8 turn the image a quarter."""
    sideways = _orientation(image) in (5, 6, 7, 8)
    return (image.width, image.height) if sideways else (image.height, image.width)


def _orientation(image: Image.Image) -> int:
    # PIL's PNG getexif() decodes the whole image when no eXIf chunk precedes the pixels; such a PNG
    # has no orientation anyway as far as the header can tell.
    if image.format == "PNG" and "exif" not in image.info:
        return 1
    return image.getexif().get(_ORIENTATION_TAG, 1)


def _decode(image: Image.Image, data: bytes, channels: int | None) -> torch.Tensor:
    """Pixels as [C, H, W], C in 1-4 (2 and 4 carry alpha), uint8, or uint16 / int32 for 16-bit."""
    if _FAST and image.format in ("JPEG", "MPO") and image.mode in _JPEG_FAST_MODES:
        return _decode_jpeg(data, gray=channels == 1 or (channels is None and image.mode == "L"))
    return _decode_pil(image)


def _drafted(image: Image.Image, channels: int | None, at_least: tuple[int, int]) -> bool:
    """Set ``image`` (a JPEG, not yet decoded) to decode at the smallest of 1/2, 1/4, 1/8 scale that keeps
    it at least ``at_least`` (height, width) once upright; False when only full scale does. torchvision's
    decoder cannot scale, so PIL's decodes these: measured in BENCHMARKS.md ("Batch prediction")."""
    if image.format not in ("JPEG", "MPO"):
        return False
    height, width = at_least
    if _orientation(image) in (5, 6, 7, 8):  # stored sideways: the upright height is the stored width
        height, width = width, height
    if image.width < 2 * width or image.height < 2 * height:
        return False
    # "L": libjpeg skips the chroma of a colour JPEG wanted gray; any other mode is kept as it is.
    image.draft("L" if channels == 1 else image.mode, (width, height))  # PIL picks the scale: >= the size
    return True


def _decode_jpeg(data: bytes, gray: bool) -> torch.Tensor:
    # Truncation: torchvision's libjpeg error handler turns libjpeg's "Premature end of JPEG file"
    # warning into a RuntimeError (checked on torchvision 0.29: every cut of 60 real JPEGs, from 2
    # bytes to half the file, raised), so no EOI-marker check of our own is needed. It still accepts
    # harmless oddities such as extraneous bytes before the EOI marker.
    mode = ImageReadMode.GRAY if gray else ImageReadMode.RGB  # libjpeg's own colour conversion: cheapest
    return decode_jpeg(_as_tensor(data), mode=mode, apply_exif_orientation=True)


def _as_tensor(data: bytes) -> torch.Tensor:
    return torch.frombuffer(bytearray(data), dtype=torch.uint8)  # bytearray: frombuffer wants it writable


def _decode_pil(image: Image.Image) -> torch.Tensor:
    # load() raises on truncated data as long as ImageFile.LOAD_TRUNCATED_IMAGES keeps its default
    # False (verified for JPEG, PNG, BMP, GIF, TIFF, WebP cut at 50-99 %); we never set it.
    image.load()
    ImageOps.exif_transpose(image, in_place=True)
    array = _pil_array(image)
    return torch.from_numpy(array.reshape(array.shape[0], array.shape[1], -1)).permute(2, 0, 1)


def _pil_array(image: Image.Image) -> np.ndarray:
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


def _to_8bit(pixels: torch.Tensor) -> torch.Tensor:
    """16-bit values -> 8 bits by v / 257, rounded (65535 -> 255, 257 * k -> k): a scale, not a clip."""
    if pixels.dtype == torch.uint8:
        return pixels
    return _in_tiles(_scale_to_8bit, pixels, pixels.shape[0])


def _scale_to_8bit(pixels: torch.Tensor) -> torch.Tensor:
    return ((pixels.to(torch.int32) * 255 + 32767) // 65535).to(torch.uint8)


def _over_white(pixels: torch.Tensor) -> torch.Tensor:
    """Drop the alpha channel (the last of 2 or 4) by compositing on white, as viewers show it."""
    if pixels.shape[0] not in (2, 4):
        return pixels
    return _in_tiles(_composite_on_white, pixels, pixels.shape[0] - 1)


def _composite_on_white(pixels: torch.Tensor) -> torch.Tensor:
    colour, alpha = pixels[:-1].to(torch.int32), pixels[-1:].to(torch.int32)
    return ((colour * alpha + 255 * (255 - alpha) + 127) // 255).to(torch.uint8)


_TILE_PIXELS = 1 << 20


def _in_tiles(convert, pixels: torch.Tensor, channels: int) -> torch.Tensor:
    """``convert`` (a per-pixel map to ``channels`` uint8 channels) applied to tiles of about a million
    pixels, written into a height-width-channel buffer like the decoders' own. Its int32 temporaries then
    take a few MB; on a whole 160-megapixel image they took 4 GB (found by benchmarks/fuzz_decode.py)."""
    h, w = pixels.shape[-2:]
    out = torch.empty((h, w, channels), dtype=torch.uint8).permute(2, 0, 1)
    cols = min(w, _TILE_PIXELS)
    rows = max(1, _TILE_PIXELS // cols)
    for top in range(0, h, rows):
        for left in range(0, w, cols):
            tile = (slice(None), slice(top, top + rows), slice(left, left + cols))
            out[tile] = convert(pixels[tile])
    return out


def convert_channels(pixels: torch.Tensor, channels: int | None) -> torch.Tensor:
    """uint8 [1 or 3, H, W] -> ``channels`` channels (None: unchanged); gray to RGB copies, RGB to gray is luma."""
    if channels is None or pixels.shape[0] == channels:
        return pixels
    if channels == 3:
        return pixels.expand(3, -1, -1).contiguous()  # a real copy: in-place ops on a stride-0 view corrupt it
    return _luminance(pixels)


def _luminance(rgb: torch.Tensor) -> torch.Tensor:
    """ITU-R 601-2 luma in PIL's fixed-point form, so the PIL and torchvision paths agree."""
    return _in_tiles(_luma, rgb, 1)


def _luma(rgb: torch.Tensor) -> torch.Tensor:
    r, g, b = rgb.to(torch.int32)
    return ((r * 19595 + g * 38470 + b * 7471 + 32768) >> 16).to(torch.uint8).unsqueeze(0)
