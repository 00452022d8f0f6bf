"""decode_image / read_image_size on images written by the tests, through both decoders."""

from __future__ import annotations

import io
import struct
import warnings
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis.extra.numpy import arrays, array_shapes
from PIL import Image

from oculi.data import decode
from oculi.data.decode import IMAGE_EXTENSIONS, decode_image, is_hidden, read_image_size
from oculi.data.children import map_in_children
from oculi.errors import ImageDecodeError, OculiError

# pytest resets warning filters per test, undoing the one decode.py installs for this notice.
pytestmark = pytest.mark.filterwarnings("ignore:The image decoding and encoding capabilities:DeprecationWarning")

WHITE = [255, 255, 255]
# Numpy statements of each EXIF orientation: how the stored pixels are turned to stand upright.
UPRIGHT = {
    1: lambda a: a,
    2: lambda a: a[:, ::-1],
    3: lambda a: a[::-1, ::-1],
    4: lambda a: a[::-1],
    5: lambda a: a.swapaxes(0, 1),
    6: lambda a: np.rot90(a, -1),  # stored sideways: turn a quarter clockwise
    7: lambda a: a[::-1, ::-1].swapaxes(0, 1),
    8: lambda a: np.rot90(a, 1),
}


@pytest.fixture(params=["torchvision", "pil"])
def decoder(request, monkeypatch):
    """Runs a test through the torchvision fast path and again through the PIL-only fallback."""
    if request.param == "pil":
        monkeypatch.setattr(decode, "_FAST", False)
    return request.param


def noise(h=12, w=20, c=3, seed=0) -> np.ndarray:
    shape = (h, w, c) if c > 1 else (h, w)
    return np.random.default_rng(seed).integers(0, 256, shape, dtype=np.uint8)


def blocks(h=16, w=24) -> np.ndarray:
    """Flat 8x8 colour blocks: JPEG keeps them within a few levels, so pixels can be compared."""
    colours = noise(h // 8, w // 8, seed=1)
    return colours.repeat(8, axis=0).repeat(8, axis=1)


def save(path: Path, image: Image.Image, **kwargs) -> Path:
    image.save(path, **kwargs)
    return path


def chw(array: np.ndarray) -> torch.Tensor:
    array = array[..., None] if array.ndim == 2 else array
    return torch.from_numpy(np.array(array, order="C")).permute(2, 0, 1)  # a copy: PIL arrays are read-only


def write_png16_rgb(path: Path, array: np.ndarray) -> Path:
    """A 16-bit RGB PNG written by hand: PIL cannot save one."""
    h, w, _ = array.shape
    rows = b"".join(b"\x00" + row.astype(">u2").tobytes() for row in array)

    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    header = struct.pack(">IIBBBBB", w, h, 16, 2, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(rows))
                     + chunk(b"IEND", b""))
    return path


def assert_close(actual: torch.Tensor, expected: np.ndarray, tol: int) -> None:
    expected = chw(expected)
    assert actual.dtype == torch.uint8 and actual.shape == expected.shape
    assert (actual.int() - expected.int()).abs().max() <= tol


def test_image_extensions():
    assert IMAGE_EXTENSIONS == {".jpg", ".jpeg", ".jpe", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff"}


@pytest.mark.parametrize("name, hidden", [
    (".DS_Store", True), ("._IMG_0001.jpg", True), (".hidden.png", True), ("Thumbs.db", True),
    ("thumbs.DB", True), ("Desktop.ini", True), ("photo.jpg", False), ("a.b.png", False),
])
def test_is_hidden(name, hidden):
    assert is_hidden(Path("data/cats") / name) is hidden


@pytest.mark.parametrize("suffix, kwargs, tol", [
    (".png", {}, 0), (".bmp", {}, 0), (".tif", {}, 0), (".webp", {"lossless": True}, 0),
    (".jpg", {"quality": 95, "subsampling": 0}, 8),
])
def test_rgb_formats_decode_to_their_pixels(tmp_path, decoder, suffix, kwargs, tol):
    pixels = blocks()
    out = decode_image(save(tmp_path / f"img{suffix}", Image.fromarray(pixels), **kwargs))
    assert_close(out, pixels, tol)


def test_bytes_decode_like_the_file(tmp_path, decoder):
    path = save(tmp_path / "img.png", Image.fromarray(noise()))
    assert torch.equal(decode_image(path.read_bytes()), decode_image(path))


def test_gif_gives_its_first_frame(tmp_path):
    frames = [Image.fromarray(np.full((8, 8, 3), v, dtype=np.uint8)) for v in ((255, 0, 0), (0, 0, 255))]
    path = save(tmp_path / "anim.gif", frames[0], save_all=True, append_images=frames[1:])
    assert decode_image(path)[:, 0, 0].tolist() == [255, 0, 0]


@pytest.mark.parametrize("suffix", [".png", ".gif"])
def test_palette_becomes_rgb(tmp_path, decoder, suffix):
    pixels = blocks()
    image = Image.fromarray(pixels).quantize(colors=8)
    out = decode_image(save(tmp_path / f"pal{suffix}", image))
    assert_close(out, np.asarray(image.convert("RGB")), 0)


@pytest.mark.parametrize("suffix", [".png", ".gif"])
def test_palette_transparency_composites_on_white(tmp_path, decoder, suffix):
    image = Image.fromarray(np.array([[0, 1], [1, 2]], dtype=np.uint8), mode="P")
    image.putpalette([10, 20, 30, 200, 0, 0, 0, 200, 0])
    out = decode_image(save(tmp_path / f"pal{suffix}", image, transparency=0))
    assert out.shape == (3, 2, 2)
    assert out[:, 0, 0].tolist() == WHITE and out[:, 0, 1].tolist() == [200, 0, 0]


@pytest.mark.parametrize("suffix", [".png", ".webp", ".tif"])
def test_rgba_composites_on_white(tmp_path, decoder, suffix):
    rgba = np.zeros((2, 2, 4), dtype=np.uint8)  # black everywhere
    rgba[..., 3] = [[0, 128], [255, 255]]  # transparent, half, opaque
    kwargs = {"lossless": True} if suffix == ".webp" else {}
    out = decode_image(save(tmp_path / f"rgba{suffix}", Image.fromarray(rgba), **kwargs))
    assert out.shape == (3, 2, 2)
    assert out[:, 0, 0].tolist() == WHITE and out[:, 1, 1].tolist() == [0, 0, 0]
    assert out[:, 0, 1].tolist() == [127, 127, 127]


def test_gray_alpha_stays_gray_on_white(tmp_path, decoder):
    la = np.array([[[0, 0], [100, 255]]], dtype=np.uint8)
    out = decode_image(save(tmp_path / "la.png", Image.fromarray(la, mode="LA")))
    assert out.tolist() == [[[255, 100]]]


def test_cmyk_jpeg_becomes_rgb(tmp_path, decoder):
    image = Image.new("RGB", (16, 16), (200, 60, 30)).convert("CMYK")
    out = decode_image(save(tmp_path / "cmyk.jpg", image, quality=95))
    assert_close(out, np.full((16, 16, 3), (200, 60, 30), dtype=np.uint8), 3)


@pytest.mark.parametrize("suffix", [".png", ".tif"])
def test_16bit_gray_is_scaled_not_clipped(tmp_path, decoder, suffix):
    values = np.array([[0, 257, 257 * 100, 257 * 254, 65535]], dtype=np.uint16)
    out = decode_image(save(tmp_path / f"g16{suffix}", Image.fromarray(values)))
    assert out.tolist() == [[[0, 1, 100, 254, 255]]]


def test_16bit_rgb_png_is_scaled(tmp_path, decoder):
    values = np.array([[[65535, 257 * 10, 0], [0, 65535, 257 * 200]]], dtype=np.uint16)
    out = decode_image(write_png16_rgb(tmp_path / "rgb16.png", values))
    assert out.permute(1, 2, 0).tolist() == [[[255, 10, 0], [0, 255, 200]]]


def test_16bit_scaling_rounds_every_value():
    values = torch.arange(65536, dtype=torch.int32).view(1, 1, -1)
    expected = torch.round(torch.arange(65536, dtype=torch.float64) / 257).to(torch.uint8)
    assert torch.equal(decode._to_8bit(values).flatten(), expected)


@pytest.mark.parametrize("suffix, tol", [(".png", 0), (".jpg", 3), (".bmp", 0)])
def test_gray_stays_one_channel_and_expands_on_request(tmp_path, decoder, suffix, tol):
    gray = blocks()[..., 0]
    path = save(tmp_path / f"gray{suffix}", Image.fromarray(gray))
    assert_close(decode_image(path), gray, tol)
    assert_close(decode_image(path, channels=3), np.stack([gray] * 3, -1), tol)


def test_one_bit_image_is_gray(tmp_path, decoder):
    bits = Image.fromarray(np.array([[0, 255, 255, 0]], dtype=np.uint8)).convert("1")
    assert decode_image(save(tmp_path / "bits.png", bits)).tolist() == [[[0, 255, 255, 0]]]


@pytest.mark.parametrize("suffix, tol", [(".png", 0), (".jpg", 8)])
def test_channels_1_converts_colour_to_luminance(tmp_path, decoder, suffix, tol):
    pixels = blocks()
    path = save(tmp_path / f"img{suffix}", Image.fromarray(pixels), quality=95, subsampling=0)
    assert_close(decode_image(path, channels=1), np.asarray(Image.fromarray(pixels).convert("L")), tol)


def test_channels_must_be_1_3_or_none(tmp_path):
    with pytest.raises(ValueError):
        decode_image(save(tmp_path / "img.png", Image.fromarray(noise())), channels=4)


@pytest.mark.parametrize("orientation", range(1, 9))
@pytest.mark.parametrize("suffix, kwargs, tol", [
    (".jpg", {"quality": 95, "subsampling": 0}, 8), (".png", {}, 0), (".webp", {"lossless": True}, 0),
])
def test_exif_orientation_is_applied(tmp_path, decoder, orientation, suffix, kwargs, tol):
    stored = blocks(16, 24)  # wide as stored; orientations 5-8 stand it upright as tall
    exif = Image.Exif()
    exif[0x0112] = orientation
    path = save(tmp_path / f"o{orientation}{suffix}", Image.fromarray(stored), exif=exif.tobytes(), **kwargs)
    assert_close(decode_image(path), UPRIGHT[orientation](stored), tol)


@pytest.mark.parametrize("orientation, expected", [(1, (3, 16, 24)), (6, (3, 24, 16)), (8, (3, 24, 16))])
def test_read_image_size_is_orientation_aware(tmp_path, orientation, expected):
    exif = Image.Exif()
    exif[0x0112] = orientation
    path = save(tmp_path / "photo.jpg", Image.fromarray(blocks(16, 24)), exif=exif.tobytes())
    assert read_image_size(path) == expected == tuple(decode_image(path).shape)


@pytest.mark.parametrize("mode, channels", [("L", 1), ("LA", 1), ("I;16", 1), ("1", 1), ("RGB", 3),
                                            ("RGBA", 3), ("P", 3)])
def test_read_image_size_counts_channels_like_decode(tmp_path, mode, channels):
    image = Image.fromarray(noise()).convert(mode) if mode != "I;16" else Image.fromarray(noise(c=1).astype(np.uint16))
    path = save(tmp_path / "img.png", image)
    assert read_image_size(path) == (channels, 12, 20) == tuple(decode_image(path).shape)


def _jpeg_bytes() -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(noise(64, 64)).save(buffer, "JPEG")
    return buffer.getvalue()


def _png_bytes() -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(noise(64, 64)).save(buffer, "PNG")
    return buffer.getvalue()


BAD_FILES = {
    "half.jpg": lambda: _jpeg_bytes()[: len(_jpeg_bytes()) // 2],
    "no_end_marker.jpg": lambda: _jpeg_bytes()[:-2],
    "half.png": lambda: _png_bytes()[: len(_png_bytes()) // 2],
    "random.jpg": lambda: np.random.default_rng(0).integers(0, 256, 4096, dtype=np.uint8).tobytes(),
    "empty.png": lambda: b"",
    "text.png": lambda: b"this is not an image\n" * 10,
    "notes.txt": _png_bytes,  # even a real image: .txt is not an image extension
}


@pytest.mark.parametrize("name", BAD_FILES)
def test_bad_files_raise_with_the_path(tmp_path, decoder, name):
    path = tmp_path / name
    path.write_bytes(BAD_FILES[name]())
    with pytest.raises(ImageDecodeError, match=name) as info:
        decode_image(path)
    assert info.value.path == str(path)


@pytest.mark.parametrize("name, reason", [("empty.png", "empty file"), ("random.jpg", "not an image"),
                                          ("text.png", "not an image"), ("notes.txt", "unsupported format")])
def test_read_image_size_rejects_unreadable_headers(tmp_path, name, reason):
    path = tmp_path / name
    path.write_bytes(BAD_FILES[name]())
    with pytest.raises(ImageDecodeError, match=reason):
        read_image_size(path)


def test_truncation_reason_is_short(tmp_path):
    path = tmp_path / "half.jpg"
    path.write_bytes(BAD_FILES["half.jpg"]())
    with pytest.raises(ImageDecodeError) as info:
        decode_image(path)
    assert info.value.reason == "truncated or corrupt image data"


def test_missing_file_raises(tmp_path):
    with pytest.raises(ImageDecodeError, match="cannot read file"):
        decode_image(tmp_path / "gone.png")
    with pytest.raises(ImageDecodeError, match="cannot read file"):
        read_image_size(tmp_path / "gone.png")


TOO_LARGE = "image too large (0.0016 megapixels, limit 0.001; raise with OCULI_MAX_IMAGE_PIXELS)"


def test_an_image_over_the_pixel_limit_is_refused_in_oculis_words(tmp_path, decoder, monkeypatch):
    monkeypatch.setenv("OCULI_MAX_IMAGE_PIXELS", "1000")  # a tiny limit stands for 179 megapixels
    big = save(tmp_path / "big.png", Image.fromarray(noise(40, 40)))
    for read in (decode_image, read_image_size):
        with pytest.raises(ImageDecodeError) as info:
            read(big)
        assert info.value.reason == TOO_LARGE
    assert decode_image(save(tmp_path / "fits.png", Image.fromarray(noise(25, 40)))).shape == (3, 25, 40)


def test_an_image_pil_refuses_first_still_gets_its_size_in_the_reason(tmp_path, monkeypatch):
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 100)  # PIL raises above 200 pixels, before oculi looks
    monkeypatch.setenv("OCULI_MAX_IMAGE_PIXELS", "150")
    with pytest.raises(ImageDecodeError) as info:
        decode_image(save(tmp_path / "big.png", Image.fromarray(noise(40, 40))))
    assert info.value.reason == "image too large (0.0016 megapixels, limit 0.00015; raise with OCULI_MAX_IMAGE_PIXELS)"


@pytest.mark.parametrize("suffix", [".png", ".jpg", ".tif"])
def test_a_large_image_under_the_limit_decodes_without_pils_warning(tmp_path, decoder, monkeypatch, suffix):
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)  # PIL warns above 1000 pixels: 1600 stand for 144 MP
    path = save(tmp_path / f"large{suffix}", Image.fromarray(noise(40, 40)))
    with warnings.catch_warnings():
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        assert decode_image(path).shape == (3, 40, 40)
        assert read_image_size(path) == (3, 40, 40)


def test_raising_the_limit_admits_what_pil_would_refuse(tmp_path, monkeypatch):
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 100)  # PIL alone refuses above 200 pixels
    monkeypatch.setenv("OCULI_MAX_IMAGE_PIXELS", "2000")
    assert decode_image(save(tmp_path / "big.png", Image.fromarray(noise(40, 40)))).shape == (3, 40, 40)
    assert Image.MAX_IMAGE_PIXELS == 100  # PIL's setting is the caller's: left as it was


@pytest.mark.parametrize("value", ["lots", "0", "-5", "1.5e8"])
def test_a_bad_pixel_limit_is_a_one_line_error(tmp_path, monkeypatch, value):
    monkeypatch.setenv("OCULI_MAX_IMAGE_PIXELS", value)
    with pytest.raises(OculiError, match=f"OCULI_MAX_IMAGE_PIXELS must be a whole number of pixels.*{value}"):
        decode_image(save(tmp_path / "img.png", Image.fromarray(noise())))


def write_png(path: Path, width: int, height: int, idat: bytes) -> Path:
    """An 8-bit RGB PNG of the compressed rows ``idat``, with valid chunk checksums."""
    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", idat) + chunk(b"IEND", b""))
    return path


def _decode_reason(path: Path) -> str:
    try:
        return f"decoded {tuple(decode_image(path).shape)}"
    except ImageDecodeError as err:
        return err.reason


PNG_ROW = bytes(1 + 16 * 3)  # filter byte 0 (none), 16 black pixels
BAD_PNG_DATA = {"filter-5": zlib.compress(b"\x05" + PNG_ROW[1:]),  # filter types stop at 4
                "bad-checksum": zlib.compress(PNG_ROW)[:-1] + b"\x00"}  # the zlib stream's Adler-32


@pytest.mark.parametrize("idat", BAD_PNG_DATA.values(), ids=BAD_PNG_DATA)
def test_a_png_that_segfaults_torchvision_is_a_decode_error(tmp_path, idat):
    # torchvision 0.29's decode_png segfaults on these (any libpng error while reading rows): decoded in a
    # child process, so that a regression fails this test instead of killing the test run.
    path = write_png(tmp_path / "bad.png", 16, 1, idat)
    [outcome] = map_in_children(_decode_reason, [path])
    assert outcome == "truncated or corrupt image data"


@settings(max_examples=40, deadline=None)
@given(arrays(np.uint8, array_shapes(min_dims=3, max_dims=3, min_side=1, max_side=16).map(lambda s: s[:2] + (3,))))
def test_any_rgb_png_round_trips_exactly(pixels):
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, "PNG")
    assert torch.equal(decode_image(buffer.getvalue()), chw(pixels))


def test_decoding_gives_the_facts_reading_the_header_and_hashing_the_bytes_give(tmp_path):
    import hashlib

    from oculi.data.decode import FileFacts, decode_image_and_facts, read_image_size
    rng = np.random.default_rng(0)
    rotated = Image.fromarray(rng.integers(0, 255, (20, 30, 3), dtype=np.uint8))
    exif = rotated.getexif()
    exif[0x0112] = 6  # orientation: turned a quarter, so upright it is 30 high and 20 wide
    rotated.save(tmp_path / "rotated.jpg", exif=exif)
    Image.fromarray(rng.integers(0, 255, (12, 9), dtype=np.uint8)).save(tmp_path / "gray.png")
    Image.fromarray(rng.integers(0, 255, (7, 5, 4), dtype=np.uint8)).save(tmp_path / "rgba.webp")
    for path in sorted(tmp_path.iterdir()):
        pixels, facts = decode_image_and_facts(path, 3)
        digest = hashlib.blake2b(path.read_bytes(), digest_size=16).hexdigest()
        assert facts == FileFacts(digest, *read_image_size(path))
        assert tuple(pixels.shape[1:]) == (facts.height, facts.width)
    rotated_facts = decode_image_and_facts(tmp_path / "rotated.jpg")[1]
    assert (rotated_facts.height, rotated_facts.width) == (30, 20)
    assert decode_image_and_facts(tmp_path / "gray.png")[1].channels == 1
