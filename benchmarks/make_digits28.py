"""A stand-in for an MNIST subset, made offline: 28x28 grayscale digits 0-9 as PNG folders.

MNIST itself is not on this machine (no internet), so this renders each digit with the system's TrueType
fonts (DejaVu and Liberation: sans, serif, mono, condensed, bold, italic; the test set's fonts are
not the training set's, as MNIST's test writers are not its training writers), then distorts it the ways
handwriting varies: stroke width, random affine (rotation, shear, scale, aspect), an elastic
deformation (Simard et al. 2003: a smoothed random displacement field), MNIST's framing (the digit
fitted to a 20x20 box, centred by its centre of mass in 28x28), blur and pixel noise. White on black,
like MNIST. Seeded: the same arguments give the same files.

It is a stand-in, not MNIST: figures on it say how the recipe behaves on a 10,000-image 28x28 gray set,
not what it scores on MNIST (BENCHMARKS.md says so beside them).

    python benchmarks/make_digits28.py OUT [--train 10000] [--test 2000] [--seed 0]

writes OUT/train/<digit>/*.png and OUT/test/<digit>/*.png (the same number of each digit).
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFilter, ImageFont
from scipy import ndimage

FONT_DIRS = [Path("/usr/share/fonts/truetype"), Path("/usr/share/fonts")]
CANVAS = 64  # rendered large, distorted, then reduced to 28 (as MNIST's 20x20 box in a 28x28 frame)


def fonts() -> list[Path]:
    """Every TrueType font found that draws all ten digits (checked by rendering them)."""
    found = sorted({p for d in FONT_DIRS if d.is_dir() for p in d.rglob("*.ttf")})
    usable = [p for p in found if _draws_digits(p)]
    if not usable:
        raise SystemExit("no TrueType fonts with digits found under /usr/share/fonts")
    return usable


def _draws_digits(path: Path) -> bool:
    try:
        font = ImageFont.truetype(str(path), 48)
    except OSError:
        return False
    return all(font.getbbox(str(d))[2] > font.getbbox(str(d))[0] for d in range(10))


def render(digit: int, font_path: Path, rng: np.random.Generator) -> np.ndarray:
    """One distorted digit, uint8 28x28, white on black."""
    font = ImageFont.truetype(str(font_path), int(rng.integers(35, 43)))
    canvas = Image.new("L", (CANVAS, CANVAS), 0)
    stroke = int(rng.integers(0, 3))  # thin to heavy pens
    ImageDraw.Draw(canvas).text((CANVAS / 2, CANVAS / 2), str(digit), fill=255, font=font, anchor="mm",
                                stroke_width=stroke, stroke_fill=255)
    pixels = _affine(np.asarray(canvas, dtype=np.float32), rng)
    pixels = _elastic(pixels, rng)
    return _frame(pixels, rng)


def _affine(pixels: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Rotation up to 15 degrees, shear up to 0.3, scale 0.85-1.1 with aspect 0.8-1.2, about the centre."""
    angle = np.deg2rad(rng.uniform(-15, 15))
    shear, scale, aspect = rng.uniform(-0.3, 0.3), rng.uniform(0.85, 1.1), rng.uniform(0.8, 1.2)
    rotation = np.array([[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]])
    matrix = rotation @ np.array([[1, shear], [0, 1]]) @ np.diag([scale * aspect, scale])
    inverse = np.linalg.inv(matrix)
    centre = np.array(pixels.shape) / 2
    return ndimage.affine_transform(pixels, inverse, offset=centre - inverse @ centre, order=1)


def _elastic(pixels: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Each pixel moved by a random field smoothed with a Gaussian (sigma 5 px at 64 px, up to ~3 px)."""
    alpha, sigma = rng.uniform(20, 60), 5.0
    dy, dx = (ndimage.gaussian_filter(rng.uniform(-1, 1, pixels.shape), sigma) * alpha for _ in range(2))
    rows, cols = np.meshgrid(np.arange(pixels.shape[0]), np.arange(pixels.shape[1]), indexing="ij")
    return ndimage.map_coordinates(pixels, [rows + dy, cols + dx], order=1)


def _frame(pixels: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """MNIST's framing: the ink's bounding box scaled into 20x20 (aspect kept), centred by its centre of
    mass in 28x28; then a little blur and noise."""
    ys, xs = np.nonzero(pixels > 30)
    if len(ys) == 0:
        return np.zeros((28, 28), np.uint8)
    ink = Image.fromarray(pixels[ys.min():ys.max() + 1, xs.min():xs.max() + 1].clip(0, 255).astype(np.uint8))
    side = 20 / max(ink.size)
    ink = ink.resize((max(1, round(ink.width * side)), max(1, round(ink.height * side))), Image.LANCZOS)
    frame = np.zeros((28, 28), np.float32)
    small = np.asarray(ink, dtype=np.float32)
    cy, cx = ndimage.center_of_mass(small)
    top = int(np.clip(round(14 - cy), 0, 28 - small.shape[0]))
    left = int(np.clip(round(14 - cx), 0, 28 - small.shape[1]))
    frame[top:top + small.shape[0], left:left + small.shape[1]] = small
    blurred = np.asarray(Image.fromarray(frame.astype(np.uint8)).filter(ImageFilter.GaussianBlur(rng.uniform(0, 0.6))),
                         dtype=np.float32)
    noisy = blurred + rng.normal(0, rng.uniform(0, 12), blurred.shape)
    return noisy.clip(0, 255).astype(np.uint8)


def split_fonts(faces: list[Path]) -> tuple[list[Path], list[Path]]:
    """Train fonts and test fonts, disjoint (every fifth font is the test set's), as MNIST's test digits are
    by other writers than its training digits: with shared fonts the test set is far easier (99.85% after
    10 epochs)."""
    return [f for i, f in enumerate(faces) if i % 5 != 2], faces[2::5]


def write_split(out: Path, split: str, count: int, faces: list[Path], rng: np.random.Generator) -> None:
    """``count`` images, the digits in turn (count / 10 each), each in a random font."""
    for digit in range(10):
        (out / split / str(digit)).mkdir(parents=True, exist_ok=True)
    for i in range(count):
        digit = i % 10
        pixels = render(digit, faces[int(rng.integers(len(faces)))], rng)
        Image.fromarray(pixels).save(out / split / str(digit) / f"{i:05d}.png")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", type=Path)
    parser.add_argument("--train", type=int, default=10_000)
    parser.add_argument("--test", type=int, default=2_000)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    train_fonts, test_fonts = split_fonts(fonts())
    rng = np.random.default_rng(args.seed)
    write_split(args.out, "train", args.train, train_fonts, rng)
    write_split(args.out, "test", args.test, test_fonts, rng)
    print(f"{args.out}: {args.train} train digits from {len(train_fonts)} fonts, {args.test} test digits from "
          f"{len(test_fonts)} others, 28x28 gray")


if __name__ == "__main__":
    main()
