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

import io
import warnings
from pathlib import Path

import torch
from PIL import Image

from ..errors import ImageDecodeError
from .pixels import (  # noqa: F401 (the names callers have long imported from here)
    DEFAULT_MAX_IMAGE_PIXELS, GRAY_MODES, HIDDEN_NAMES, IMAGE_EXTENSIONS, PIXEL_LIMIT_VARIABLE, TRUNCATED_REASON,
    FileFacts, bytes_digest, check_suffix, is_hidden, luminance, max_image_pixels, open_image, over_white,
    pil_pixels, pixel_limit, read_source, set_draft, to_8bit, upright_size)
from .unreadable import CANNOT_READ, EMPTY_FILE, TRUNCATED

try:
    import torchvision.io.image as _tv_image
    from torchvision.io import ImageReadMode, decode_jpeg

    _FAST = getattr(_tv_image, "_has_image_ops", lambda: True)()
except ImportError:  # torchvision's decoders are deprecated since 0.29; PIL then decodes everything
    _FAST = False

# torchvision 0.29 warns on each decode that these decoders move to TorchCodec: nothing to act on here
warnings.filterwarnings("ignore", message="The image decoding and encoding capabilities of TorchVision",
                        category=DeprecationWarning)
_JPEG_FAST_MODES = frozenset({"L", "RGB", "CMYK"})  # torchvision converts CMYK (Adobe-inverted too) to RGB


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
    label, data = read_source(source)
    with pixel_limit() as limit:
        image = open_image(label, io.BytesIO(data), limit)
        try:
            found = _header_facts(image, data) if facts else None
            drafted = at_least is not None and set_draft(image, channels, at_least)
            pixels = _decode_pil(image) if drafted else _decode(image, data, channels)
        except Exception as e:  # decoders raise OSError, RuntimeError, ValueError, SyntaxError... on bad data
            raise ImageDecodeError(label, TRUNCATED_REASON, TRUNCATED) from e
    # Left in the decoders' height-width-channel memory order: a copy to contiguous [C, H, W] would
    # cost a quarter of the JPEG decode time, and the uint8 resize that follows runs 0.13 ms on it
    # against 0.22 ms on a contiguous tensor.
    return convert_channels(_over_white(_to_8bit(pixels)), channels), found


def _header_facts(image: Image.Image, data: bytes) -> FileFacts | None:
    try:
        height, width = upright_size(image)
    except Exception:  # a malformed EXIF block: read_image_size refuses the file, the pixels may still decode
        return None
    return FileFacts(bytes_digest(data), 1 if image.mode in GRAY_MODES else 3, height, width)


def read_image_size(path) -> tuple[int, int, int]:
    """(channels, height, width) from the header alone, as ``decode_image`` would return them."""
    path = Path(path)
    check_suffix(path)
    try:
        empty = path.stat().st_size == 0
    except OSError as e:
        raise ImageDecodeError(path, f"cannot read file ({e.strerror or e})", CANNOT_READ) from e
    if empty:
        raise ImageDecodeError(path, "empty file", EMPTY_FILE)
    with pixel_limit() as limit, open_image(path, path, limit) as image:
        try:
            height, width = upright_size(image)
        except Exception as e:  # a malformed EXIF block
            raise ImageDecodeError(path, TRUNCATED_REASON, TRUNCATED) from e
        return (1 if image.mode in GRAY_MODES else 3), height, width


def _decode(image: Image.Image, data: bytes, channels: int | None) -> torch.Tensor:
    """Pixels as [C, H, W], C in 1-4 (2 and 4 carry alpha), uint8, or uint16 / int32 for 16-bit."""
    if _FAST and image.format in ("JPEG", "MPO") and image.mode in _JPEG_FAST_MODES:
        return _decode_jpeg(data, gray=channels == 1 or (channels is None and image.mode == "L"))
    return _decode_pil(image)


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
    return torch.from_numpy(pil_pixels(image))


def _to_8bit(pixels: torch.Tensor) -> torch.Tensor:
    """``pixels.to_8bit`` of a tensor."""
    return pixels if pixels.dtype == torch.uint8 else torch.from_numpy(to_8bit(pixels.numpy()))


def _over_white(pixels: torch.Tensor) -> torch.Tensor:
    """``pixels.over_white`` of a tensor."""
    return pixels if pixels.shape[0] not in (2, 4) else torch.from_numpy(over_white(pixels.numpy()))


def convert_channels(pixels: torch.Tensor, channels: int | None) -> torch.Tensor:
    """uint8 [1 or 3, H, W] -> ``channels`` channels (None: unchanged); gray to RGB copies, RGB to gray is luma."""
    if channels is None or pixels.shape[0] == channels:
        return pixels
    if channels == 3:
        return pixels.expand(3, -1, -1).contiguous()  # a real copy: in-place ops on a stride-0 view corrupt it
    return torch.from_numpy(luminance(pixels.numpy()))
