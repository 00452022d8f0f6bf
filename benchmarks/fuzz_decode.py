"""Fuzz oculi's decode path with mutated JPEG, PNG, GIF, WebP, BMP and TIFF files: none may crash or hang it.

Seed images are written by PIL here, in a few sizes and modes each (palette, alpha, gray, 16-bit, CMYK,
progressive JPEG, EXIF orientation, compressed TIFFs, animated GIF). Each mutant is a seed with random
damage: bit flips, byte overwrites, truncation, inserted / duplicated / deleted runs of bytes, header
edits, huge declared sizes (PNG IHDR 2^31-1 with its CRC fixed, BMP, GIF, JPEG, WebP and TIFF
dimensions), and for PNG damage behind valid checksums (chunk bodies, scanline filter bytes, extra
chunks) so that it reaches the pixel decoder. Each goes through what training does to a file:
``decode_image`` (given the bytes; every other triple of mutants drafted, as training decodes a large JPEG,
the rest at full size, as ``serve`` does) then ``Preprocessing.prepare`` (the resize), in a forked child
process (``oculi.data.children``) under a per-mutant time limit and an address-space limit, so that a
crash or a hang is counted, not fatal. Mutant ``i`` depends only on ``--seed`` and ``i``.

    nice python benchmarks/fuzz_decode.py --n 100000 [--seed 0] [--workers 2] [--save-failures DIR]

Prints the counts (decoded, skipped by reason, crashed, timed out, unhandled exceptions), per format,
the images per second and the memory the children took; exits 1 if a mutant crashed, timed out or
raised anything but ImageDecodeError.
"""

from __future__ import annotations

import argparse
import io
import os
import random
import resource
import struct
import sys
import time
import warnings
import zlib
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout, not installed

from oculi.data.children import ChildDied, map_in_children  # noqa: E402
from oculi.data.decode import decode_image  # noqa: E402
from oculi.data.transforms import Preprocessing  # noqa: E402
from oculi.errors import ImageDecodeError  # noqa: E402

# Per mutant. A seed decodes in about a millisecond, but a mutant may declare up to the 179-megapixel limit
# and be decoded at that size: 7-9 s seen on this project's shared 2-core VM. A hang runs past any limit.
TIME_LIMIT_S = 30.0
MEMORY_HEADROOM = 3 * 2**30  # bytes of address space a child may add to what it inherits
RUN_LENGTH = 250  # mutants per child process: a fork costs 30-130 ms here
INTERESTING = (0, 1, 0x7F, 0x80, 0xFF, 0xFE)
HUGE = (2**31 - 1, 2**32 - 1, 2**16 - 1, 2**15, 2**30, 0, 1)
PREPS = [Preprocessing((32, 32), 3), Preprocessing((24, 40), 1, resize="pad"),
         Preprocessing((40, 24), 3, resize="crop")]  # mutant i gets PREPS[i % 3]


# ---- seeds ----------------------------------------------------------------------------------------------

def make_seeds() -> list[tuple[str, bytes]]:
    """(format, file bytes) of every seed image."""
    rng = np.random.default_rng(0)
    rgb = lambda w, h: Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8))  # noqa: E731
    rgba = Image.fromarray(rng.integers(0, 256, (24, 32, 4), dtype=np.uint8))
    gray = Image.fromarray(rng.integers(0, 256, (30, 40), dtype=np.uint8))
    gray16 = Image.fromarray(rng.integers(0, 65536, (20, 30), dtype=np.uint16))
    palette = rgb(40, 24).quantize(16)
    exif = Image.Exif()
    exif[0x0112] = 6  # stored sideways
    seeds = [
        ("JPEG", _save(rgb(64, 48), "JPEG", quality=90)),
        ("JPEG", _save(rgb(96, 64), "JPEG", progressive=True)),
        ("JPEG", _save(rgb(48, 32), "JPEG", exif=exif.tobytes(), subsampling=0)),
        ("JPEG", _save(gray, "JPEG")),
        ("JPEG", _save(rgb(32, 32).convert("CMYK"), "JPEG")),
        ("PNG", _save(rgb(48, 32), "PNG")),
        ("PNG", _save(rgba, "PNG")),
        ("PNG", _save(palette, "PNG", transparency=0)),
        ("PNG", _save(gray.convert("1"), "PNG")),
        ("PNG", _save(gray.convert("LA"), "PNG")),
        ("PNG", _save(gray16, "PNG")),
        ("PNG", _save(rgb(24, 16), "PNG", exif=exif.tobytes())),
        ("PNG", _png16_rgb(rng.integers(0, 65536, (12, 16, 3), dtype=np.uint16))),
        ("GIF", _save(palette, "GIF")),
        ("GIF", _save(palette, "GIF", transparency=3)),
        ("GIF", _save(palette, "GIF", save_all=True, append_images=[rgb(40, 24).quantize(8)], duration=50)),
        ("WEBP", _save(rgb(48, 32), "WEBP", quality=80)),
        ("WEBP", _save(rgba, "WEBP", lossless=True)),
        ("BMP", _save(rgb(30, 20), "BMP")),
        ("BMP", _save(palette, "BMP")),
        ("BMP", _save(gray.convert("1"), "BMP")),
        ("BMP", _save(rgba, "BMP")),
        ("TIFF", _save(rgb(32, 24), "TIFF")),
        ("TIFF", _save(rgb(32, 24), "TIFF", compression="tiff_lzw")),
        ("TIFF", _save(rgba, "TIFF", compression="tiff_adobe_deflate")),
        ("TIFF", _save(gray, "TIFF", compression="packbits")),
        ("TIFF", _save(rgb(32, 24), "TIFF", compression="jpeg")),
        ("TIFF", _save(gray16, "TIFF")),
        ("TIFF", _save(rgb(24, 16).convert("CMYK"), "TIFF", exif=exif.tobytes())),
    ]
    return seeds


def _save(image: Image.Image, fmt: str, **options) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, fmt, **options)
    return buffer.getvalue()


def _png_chunk(kind: bytes, body: bytes) -> bytes:
    return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))


def _png16_rgb(array: np.ndarray) -> bytes:
    """PIL cannot write a 16-bit colour PNG: written by hand."""
    h, w, _ = array.shape
    rows = b"".join(b"\x00" + row.astype(">u2").tobytes() for row in array)
    return (b"\x89PNG\r\n\x1a\n" + _png_chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 16, 2, 0, 0, 0))
            + _png_chunk(b"IDAT", zlib.compress(rows)) + _png_chunk(b"IEND", b""))


# ---- mutations ------------------------------------------------------------------------------------------

def bit_flips(data: bytearray, rng: random.Random, fmt: str) -> bytearray:
    for _ in range(rng.randint(1, 16)):
        data[rng.randrange(len(data))] ^= 1 << rng.randrange(8)
    return data


def overwrite(data: bytearray, rng: random.Random, fmt: str) -> bytearray:
    for _ in range(rng.randint(1, 8)):
        data[rng.randrange(len(data))] = rng.choice(INTERESTING) if rng.random() < 0.5 else rng.randrange(256)
    return data


def truncate(data: bytearray, rng: random.Random, fmt: str) -> bytearray:
    return data[:rng.randrange(len(data))]  # may leave nothing: an empty file


def insert(data: bytearray, rng: random.Random, fmt: str) -> bytearray:
    at = rng.randrange(len(data) + 1)
    return data[:at] + bytearray(rng.randbytes(rng.randint(1, 64))) + data[at:]


def duplicate(data: bytearray, rng: random.Random, fmt: str) -> bytearray:
    start = rng.randrange(len(data))
    piece = data[start:start + rng.randint(1, 256)]
    at = rng.randrange(len(data) + 1)
    return data[:at] + piece + data[at:]


def delete(data: bytearray, rng: random.Random, fmt: str) -> bytearray:
    start = rng.randrange(len(data))
    return data[:start] + data[start + rng.randint(1, 64):]


def header_edit(data: bytearray, rng: random.Random, fmt: str) -> bytearray:
    for _ in range(rng.randint(1, 4)):
        data[rng.randrange(min(64, len(data)))] = rng.randrange(256)
    return data


def huge_size(data: bytearray, rng: random.Random, fmt: str) -> bytearray:
    """Declare other dimensions than the pixel data holds, often absurd ones."""
    width, height = rng.choice(HUGE), rng.choice(HUGE)
    if rng.random() < 0.1:  # a photo's size, under the pixel limit: decoders allocate, then run out of data
        width, height = rng.choice([(4_000, 3_000), (20_000, 400), (1, 12_000_000)])
    _SIZE_WRITERS[fmt](data, width, height)
    return data


def _png_size(data: bytearray, width: int, height: int) -> None:
    data[16:24] = struct.pack(">II", width & 0xFFFFFFFF, height & 0xFFFFFFFF)
    data[29:33] = struct.pack(">I", zlib.crc32(bytes(data[12:29])))  # the IHDR CRC, fixed


def _bmp_size(data: bytearray, width: int, height: int) -> None:
    data[18:26] = struct.pack("<ii", _int32(width), -_int32(height) if height & 1 else _int32(height))


def _gif_size(data: bytearray, width: int, height: int) -> None:
    data[6:10] = struct.pack("<HH", width & 0xFFFF, height & 0xFFFF)
    descriptor = data.find(b"\x2c", 13)
    if descriptor > 0 and descriptor + 9 <= len(data):
        data[descriptor + 5:descriptor + 9] = struct.pack("<HH", width & 0xFFFF, height & 0xFFFF)


def _jpeg_size(data: bytearray, width: int, height: int) -> None:
    for marker in (b"\xff\xc0", b"\xff\xc1", b"\xff\xc2"):
        at = data.find(marker)
        if at > 0:
            data[at + 5:at + 9] = struct.pack(">HH", height & 0xFFFF, width & 0xFFFF)
            return


def _webp_size(data: bytearray, width: int, height: int) -> None:
    kind = bytes(data[12:16])
    if kind == b"VP8 " and len(data) > 30:
        data[26:30] = struct.pack("<HH", width & 0x3FFF, height & 0x3FFF)
    elif kind == b"VP8L" and len(data) > 25:
        bits = ((width - 1) & 0x3FFF) | (((height - 1) & 0x3FFF) << 14) | (data[24] >> 4 << 28)
        data[21:25] = struct.pack("<I", bits)
    elif kind == b"VP8X" and len(data) > 30:
        data[24:30] = ((width - 1) & 0xFFFFFF).to_bytes(3, "little") + ((height - 1) & 0xFFFFFF).to_bytes(3, "little")


def _tiff_size(data: bytearray, width: int, height: int) -> None:
    """ImageWidth (256) and ImageLength (257) of the first IFD, rewritten as LONG values."""
    if len(data) < 8:
        return
    order = "<" if data[:2] == b"II" else ">"
    ifd = struct.unpack(order + "I", data[4:8])[0]
    if ifd + 2 > len(data):
        return
    for k in range(struct.unpack(order + "H", data[ifd:ifd + 2])[0]):
        entry = ifd + 2 + 12 * k
        if entry + 12 > len(data):
            return
        tag = struct.unpack(order + "H", data[entry:entry + 2])[0]
        if tag in (256, 257):
            value = width if tag == 256 else height
            data[entry + 2:entry + 12] = struct.pack(order + "HII", 4, 1, value & 0xFFFFFFFF)


def _int32(value: int) -> int:
    return value if value < 2**31 else value - 2**32


_SIZE_WRITERS = {"PNG": _png_size, "BMP": _bmp_size, "GIF": _gif_size, "JPEG": _jpeg_size, "WEBP": _webp_size,
                 "TIFF": _tiff_size}


def png_chunks(data: bytearray, rng: random.Random, fmt: str) -> bytearray:
    """PNG damage that passes the checksums: a chunk body changed, a chunk repeated or added, CRC recomputed."""
    chunks = _split_png(bytes(data))
    if not chunks:
        return bit_flips(data, rng, fmt)
    k = rng.randrange(len(chunks))
    kind, body = chunks[k]
    action = rng.choice(["body", "repeat", "add"])
    if action == "body" and body:
        body = bytearray(body)
        for _ in range(rng.randint(1, 4)):
            body[rng.randrange(len(body))] = rng.randrange(256)
        chunks[k] = (kind, bytes(body))
    elif action == "repeat":
        chunks.insert(rng.randrange(len(chunks) + 1), chunks[k])
    else:
        extra = rng.choice([b"IHDR", b"PLTE", b"tRNS", b"eXIf", b"IDAT", b"acTL", b"fcTL", b"zTXt", b"iCCP", b"sBIT"])
        chunks.insert(rng.randrange(1, len(chunks) + 1), (extra, rng.randbytes(rng.randint(0, 40))))
    return bytearray(b"\x89PNG\r\n\x1a\n" + b"".join(_png_chunk(kind, body) for kind, body in chunks))


def png_rows(data: bytearray, rng: random.Random, fmt: str) -> bytearray:
    """Damage inside the compressed pixel data (filter bytes above 4, changed or missing bytes), recompressed
    into one IDAT with a valid CRC: the damage torchvision's decode_png crashed on."""
    chunks = _split_png(bytes(data))
    try:
        rows = bytearray(zlib.decompress(b"".join(body for kind, body in chunks if kind == b"IDAT")))
    except zlib.error:
        return bit_flips(data, rng, fmt)
    if rows:
        for _ in range(rng.randint(1, 4)):
            at = rng.randrange(len(rows))
            rows[at] = rng.choice([5, 6, 0xFF, rng.randrange(256)])
        if rng.random() < 0.3:
            rows = rows[:rng.randrange(len(rows))] if rng.random() < 0.5 else rows + rng.randbytes(rng.randint(1, 64))
    kept = [c for c in chunks if c[0] != b"IDAT"]
    end = next((i for i, c in enumerate(kept) if c[0] == b"IEND"), len(kept))
    kept.insert(end, (b"IDAT", zlib.compress(bytes(rows))))
    return bytearray(b"\x89PNG\r\n\x1a\n" + b"".join(_png_chunk(kind, body) for kind, body in kept))


def _split_png(data: bytes) -> list[tuple[bytes, bytes]]:
    chunks, at = [], 8
    while at + 12 <= len(data):
        length = struct.unpack(">I", data[at:at + 4])[0]
        chunks.append((data[at + 4:at + 8], data[at + 8:at + 8 + length]))
        at += 12 + length
    return chunks


GENERIC = [bit_flips, overwrite, truncate, insert, duplicate, delete, header_edit, huge_size]
PNG_ONLY = [png_chunks, png_rows]


def mutant(seeds: list[tuple[str, bytes]], seed: int, i: int) -> tuple[str, str, bytes]:
    """(format, mutations, bytes) of mutant ``i``: one to three mutations of one seed."""
    rng = random.Random(seed * 1_000_003 + i)
    fmt, data = rng.choice(seeds)
    data, names = bytearray(data), []
    for _ in range(rng.choice([1, 1, 1, 2, 3])):
        mutate = rng.choice(GENERIC + PNG_ONLY * 2 if fmt == "PNG" else GENERIC)
        data = mutate(data, rng, fmt) or bytearray(b"\x00")  # the next mutation needs a byte to work on
        names.append(mutate.__name__)
    return fmt, "+".join(names), bytes(data)


# ---- one mutant, in a child ------------------------------------------------------------------------------

def try_mutant(seeds: list[tuple[str, bytes]], seed: int, i: int) -> tuple[str, float]:
    """What oculi made of mutant ``i`` ("decoded", the ImageDecodeError reason, or "unhandled <exception>"),
    and by how many MB it raised its process's peak resident memory."""
    _, _, data = mutant(seeds, seed, i)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    drafted = i // len(PREPS) % 2 == 1  # each preprocessing both ways
    outcome = _outcome(data, PREPS[i % len(PREPS)], drafted)
    return outcome, (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - peak) / 1024


def _outcome(data: bytes, prep: Preprocessing, drafted: bool = False) -> str:
    try:
        at_least = prep.image_size if drafted else None
        image = prep.prepare(decode_image(data, channels=prep.channels, at_least=at_least))
        assert image.shape == (prep.channels, *prep.image_size) and str(image.dtype) == "torch.uint8"
        return "decoded"
    except ImageDecodeError as err:
        if isinstance(err.__cause__, MemoryError):  # PIL refusing an impossible size, or the cap below
            return "truncated or corrupt image data (a MemoryError)"
        return err.reason.split(" (")[0]  # "image too large (N megapixels, ...)" counted as one reason
    except Exception as e:  # anything else reaches the user as a traceback: a bug
        return f"unhandled {type(e).__name__}: {str(e)[:80]}"


def limit_child() -> None:
    """One thread; an address-space ceiling, so that a decoder that allocates wildly fails in here; and
    quiet: libjpeg and libtiff print a line to stderr, PIL a warning, for most broken files."""
    import torch
    torch.set_num_threads(1)
    warnings.simplefilter("ignore")
    os.dup2(os.open(os.devnull, os.O_WRONLY), 2)
    inherited = int(Path("/proc/self/statm").read_text().split()[0]) * resource.getpagesize()
    resource.setrlimit(resource.RLIMIT_AS, (inherited + MEMORY_HEADROOM, resource.RLIM_INFINITY))


# ---- the run --------------------------------------------------------------------------------------------

FAILURES = ("crashed", "timed out", "unhandled")


def kind_of(outcome: str) -> str:
    """decoded, skipped (an ImageDecodeError: what oculi should do with a bad file) or one of FAILURES."""
    return next((kind for kind in ("decoded", *FAILURES) if outcome.startswith(kind)), "skipped")


@dataclass
class FuzzReport:
    n: int
    seconds: float = 0.0
    outcomes: Counter = field(default_factory=Counter)  # "decoded", a skip reason, "crashed (SIGSEGV)", ...
    by_format: dict = field(default_factory=dict)  # format -> Counter of decoded / skipped / crashed ...
    failures: list = field(default_factory=list)  # (mutant, format, mutations, outcome) of each crash, hang, bug
    largest_rise: tuple = (0.0, None)  # (MB, mutant): the most a mutant raised its child's peak memory

    def count(self, kind: str) -> int:
        return sum(n for outcome, n in self.outcomes.items() if kind_of(outcome) == kind)

    @property
    def crashed(self) -> int:
        return self.count("crashed")

    @property
    def timed_out(self) -> int:
        return self.count("timed out")

    @property
    def unhandled(self) -> int:
        return self.count("unhandled")


    @property
    def decoded(self) -> int:
        return self.count("decoded")

    @property
    def skipped(self) -> int:
        return self.count("skipped")


def run_fuzz(n: int, seed: int = 0, workers: int = 2, time_limit: float = TIME_LIMIT_S) -> FuzzReport:
    seeds = make_seeds()
    report = FuzzReport(n)
    started = time.perf_counter()
    outcomes = map_in_children(lambda i: try_mutant(seeds, seed, i), range(n), workers=workers,
                               run_length=RUN_LENGTH, timeout=time_limit, setup=limit_child)
    for i, outcome in enumerate(outcomes):
        if isinstance(outcome, ChildDied):
            outcome = f"{outcome.reason} ({outcome.detail})"
        else:
            outcome, rise = outcome
            report.largest_rise = max(report.largest_rise, (rise, i), key=lambda r: r[0])
        fmt, mutations, _ = mutant(seeds, seed, i)
        report.outcomes[outcome] += 1
        report.by_format.setdefault(fmt, Counter())[kind_of(outcome)] += 1
        if kind_of(outcome) in FAILURES:
            report.failures.append((i, fmt, mutations, outcome))
    report.seconds = time.perf_counter() - started
    return report


def print_report(report: FuzzReport, seed: int, workers: int) -> None:
    print(f"{report.n} mutants (seed {seed}, {workers} workers) in {report.seconds:.1f} s: "
          f"{report.n / report.seconds:.0f} images/s")
    print(f"  decoded     {report.decoded}")
    print(f"  skipped     {report.skipped}")
    for reason, k in report.outcomes.most_common():
        if kind_of(reason) == "skipped":
            print(f"    {k:7d}  {reason}")
    print(f"  crashed     {report.crashed}")
    print(f"  timed out   {report.timed_out} (limit {TIME_LIMIT_S:g} s each)")
    print(f"  unhandled   {report.unhandled} (exceptions other than ImageDecodeError)")
    print("  per format: " + "; ".join(f"{fmt} {dict(c)}" for fmt, c in sorted(report.by_format.items())))
    largest = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
    print(f"  memory: largest child process {largest:.0f} MB resident (address space capped at inherited + "
          f"{MEMORY_HEADROOM / 2**30:g} GiB); mutant {report.largest_rise[1]} raised its child's peak the most, "
          f"by {report.largest_rise[0]:.0f} MB")
    for failure in report.failures[:20]:
        print("  FAILED mutant {} ({}, {}): {}".format(*failure))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=10_000, help="how many mutants")
    parser.add_argument("--seed", type=int, default=0, help="which mutants: mutant i depends on seed and i only")
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 1, help="child processes at once")
    parser.add_argument("--save-failures", type=Path, help="write the mutants that crashed, hung or raised here")
    args = parser.parse_args()
    report = run_fuzz(args.n, args.seed, args.workers)
    print_report(report, args.seed, args.workers)
    if args.save_failures and report.failures:
        args.save_failures.mkdir(parents=True, exist_ok=True)
        seeds = make_seeds()
        for i, fmt, _, _ in report.failures:
            (args.save_failures / f"mutant-{args.seed}-{i}.{fmt.lower()}").write_bytes(mutant(seeds, args.seed, i)[2])
    sys.exit(1 if report.failures else 0)


if __name__ == "__main__":
    main()
