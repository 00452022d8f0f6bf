"""The torch-free preparation (oculi.data.pixels) against the torch one (data.decode + Preprocessing.prepare):
decoding equal, resizing within a level or two. Tolerance: no pixel more than 2 levels apart and under 1 %
of the values differing by more than 1 (PIL's antialiased bilinear filter and torch's uint8 port of it round
a few sums differently)."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from oculi.data.decode import decode_image
from oculi.data.pixels import decode_array, prepare_array
from oculi.data.preprocessing import Preprocessing
from oculi.errors import ImageDecodeError

SIZES = [(224, 224), (64, 48), (17, 31)]


def _torch_prepared(path, pre: Preprocessing, draft: bool) -> np.ndarray:
    return pre.prepare(decode_image(path, pre.channels, pre.image_size if draft else None)).numpy()


def assert_close(torch_side: np.ndarray, torch_free: np.ndarray) -> None:
    assert torch_side.shape == torch_free.shape and torch_free.dtype == np.uint8
    diff = np.abs(torch_side.astype(int) - torch_free)
    assert diff.max() <= 2 and np.mean(diff > 1) < 0.01


@pytest.mark.parametrize("resize", ["squash", "crop", "pad"])
@pytest.mark.parametrize("channels", [3, 1])
def test_real_photos_prepare_as_the_torch_path_prepares_them(hymenoptera, resize, channels):
    photos = sorted(hymenoptera.rglob("*.jpg"))[::20]
    for size in SIZES:
        pre = Preprocessing(size, channels, resize)
        for path in photos:
            assert np.array_equal(decode_image(path, channels).numpy(), decode_array(path, channels))
            assert_close(_torch_prepared(path, pre, True), prepare_array(path, size, channels, resize, draft=True))


def _saved(tmp_path, name, array, fmt, **options):
    path = tmp_path / name
    Image.fromarray(array).save(path, format=fmt, **options)
    return path


@pytest.mark.parametrize("resize", ["squash", "crop", "pad"])
def test_made_images_of_every_kind_prepare_alike(tmp_path, resize):
    rng = np.random.default_rng(0)
    smooth = np.kron(rng.integers(0, 256, (30, 40, 3)), np.ones((20, 20, 1))).astype(np.uint8)  # 600 x 800
    rgba = np.dstack([smooth[:50, :70], rng.integers(0, 256, (50, 70, 1)).astype(np.uint8)])
    files = [_saved(tmp_path, "big.jpg", smooth, "JPEG", quality=90),  # drafted: at least twice the size
             _saved(tmp_path, "rgba.png", rgba, "PNG"),  # alpha on white
             _saved(tmp_path, "gray.png", smooth[..., 0], "PNG"),
             _saved(tmp_path, "wide16.png", (rng.integers(0, 65536, (9, 300))).astype(np.uint16), "PNG"),
             _saved(tmp_path, "tiny.bmp", smooth[:3, :5], "BMP")]  # enlarged
    rotated = Image.fromarray(smooth[:120, :200])
    exif = rotated.getexif()
    exif[0x0112] = 6  # stored sideways
    rotated.save(tmp_path / "rotated.jpg", exif=exif)
    files.append(tmp_path / "rotated.jpg")
    for channels in (3, 1):
        for size in SIZES[1:]:
            pre = Preprocessing(size, channels, resize)
            for path in files:
                assert_close(_torch_prepared(path, pre, True), prepare_array(path, size, channels, resize, draft=True))
                assert_close(_torch_prepared(path, pre, False), prepare_array(path, size, channels, resize))


def test_a_bad_file_is_the_same_error(tmp_path):
    path = tmp_path / "cut.png"
    buffer = io.BytesIO()
    Image.fromarray(np.zeros((40, 40, 3), np.uint8)).save(buffer, format="PNG")
    path.write_bytes(buffer.getvalue()[:60])
    for decoder in (decode_image, decode_array):
        with pytest.raises(ImageDecodeError, match="truncated or corrupt image data"):
            decoder(path, 3)
