"""Mutated image files through the real decode path (benchmarks/fuzz_decode.py): nothing crashes, hangs or
raises anything but ImageDecodeError; and the regressions the fuzzing found."""

from __future__ import annotations

import importlib.util
import resource
import sys
from pathlib import Path

import pytest
import torch
from PIL import Image

from oculi.data.children import can_fork, map_in_children
from oculi.data.decode import decode_image
from oculi.data.transforms import Preprocessing, resize_image

pytestmark = pytest.mark.skipif(not can_fork(), reason="mutants run in forked children: Linux only")

HARNESS = Path(__file__).resolve().parents[2] / "benchmarks" / "fuzz_decode.py"


@pytest.fixture(scope="module")
def fuzz():
    spec = importlib.util.spec_from_file_location("fuzz_decode", HARNESS)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # its dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


@pytest.mark.slow
def test_two_thousand_mutants_are_decoded_or_skipped_never_crash(fuzz):
    report = fuzz.run_fuzz(2000, seed=1, workers=2)
    assert (report.crashed, report.timed_out, report.unhandled) == (0, 0, 0), report.failures
    # The mutants reach the decoders: many are refused for what they are, many still decode.
    assert report.decoded > 300 and report.skipped > 1000
    assert set(report.by_format) == {"JPEG", "PNG", "GIF", "WEBP", "BMP", "TIFF"}


def _crop_sliver(width: int) -> tuple:
    sliver = torch.zeros(3, 1, width, dtype=torch.uint8)
    sliver[:, :, width // 2 - 2: width // 2 + 2] = 100  # only the centre is lit
    out = resize_image(sliver, (40, 24), "crop")
    return tuple(out.shape), out.unique().tolist()


def test_a_sliver_cropped_to_the_target_is_cut_before_it_is_resized(fuzz):
    # Found by the fuzzer: a TIFF declaring 12,000,000 x 1 pixels (under the pixel limit) made the crop
    # resize build a 40 x 480,000,000 image first (57.6 GB). In a child with a memory ceiling, so that the
    # old behaviour fails the test instead of exhausting the machine.
    [outcome] = map_in_children(_crop_sliver, [12_000_000], setup=fuzz.limit_child)
    assert outcome == ((3, 40, 24), [100])


def _decode_and_prepare(job: tuple) -> tuple:
    path, mode = job
    torch.set_num_threads(1)
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    image = Preprocessing((24, 40), 1, resize=mode).prepare(decode_image(path, channels=1))
    return tuple(image.shape), (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) * 1024


@pytest.mark.parametrize("mode", ["squash", "pad", "crop"])
def test_a_one_pixel_wide_jpeg_turned_upright_is_prepared(tmp_path, mode):
    # Found by the fuzzer: turned upright by its EXIF orientation, it decodes to a width of 1 whose stride
    # is the height, and torch's uint8 antialiased resize segfaulted on that. In a child, to fail cleanly.
    exif = Image.Exif()
    exif[0x0112] = 6
    path = tmp_path / "strip.jpg"
    Image.new("L", (5000, 1), 128).save(path, exif=exif.tobytes())
    [(shape, _)] = map_in_children(_decode_and_prepare, [(path, mode)])
    assert shape == (1, 24, 40)


@pytest.mark.parametrize("mode", ["squash", "pad", "crop"])
def test_a_tall_sliver_is_decoded_and_prepared_in_little_memory(tmp_path, mode):
    # Found by the fuzzer: a header edited to 16 x 10,000,000 pixels (under the pixel limit) took 4.9 GB.
    # Per pixel now: PIL's image (4 bytes) and the array copied out of it (3), about 11 bytes in all; it
    # was 32 to 37 (int32 temporaries of the gray conversion; the resize's intermediate rows).
    path = tmp_path / "sliver.tif"
    Image.new("RGB", (16, 2_000_000), (10, 200, 30)).save(path, compression="tiff_adobe_deflate")
    [(shape, peak_rise)] = map_in_children(_decode_and_prepare, [(path, mode)])
    assert shape == (1, 24, 40) and peak_rise / (16 * 2_000_000) < 20
