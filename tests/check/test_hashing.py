"""Perceptual hashes and close pairs: copies stay close, different pictures do not."""

import io
import itertools

import numpy as np
import torch
from PIL import Image

from oculi.check.duplicates import NEAR_HASH_BITS
from oculi.check.hashing import hash_pairs, perceptual_hashes


def smooth_picture(seed: int, size: int = 96) -> np.ndarray:
    """A photo-like picture: a few random blobs of colour, smooth at every scale."""
    rng = np.random.default_rng(seed)
    small = rng.integers(0, 256, size=(12, 12, 3), dtype=np.uint8)
    return np.asarray(Image.fromarray(small).resize((size, size), Image.Resampling.BICUBIC))


def as_tensor(pixels: np.ndarray, side: int = 64) -> torch.Tensor:
    """As the decoding path gives it: resized to the model's square input."""
    picture = Image.fromarray(pixels).resize((side, side), Image.Resampling.BILINEAR)
    return torch.from_numpy(np.array(picture)).permute(2, 0, 1)


def reencoded(pixels: np.ndarray, scale: float, quality: int) -> np.ndarray:
    picture = Image.fromarray(pixels)
    picture = picture.resize((round(picture.width * scale), round(picture.height * scale)))
    buffer = io.BytesIO()
    picture.save(buffer, format="JPEG", quality=quality)
    return np.asarray(Image.open(buffer).convert("RGB"))


def hamming(a: torch.Tensor, b: torch.Tensor) -> int:
    return int((a != b).sum())


def test_resized_and_reencoded_copies_stay_within_the_near_threshold():
    for seed in range(5):
        original = smooth_picture(seed)
        copies = [reencoded(original, scale, quality) for scale, quality in ((0.5, 75), (1.7, 90), (0.8, 60))]
        bits = perceptual_hashes(torch.stack([as_tensor(p) for p in [original, *copies]]))
        assert all(hamming(bits[0], bits[i]) <= NEAR_HASH_BITS for i in range(1, 4)), seed


def test_different_pictures_are_far_apart():
    bits = perceptual_hashes(torch.stack([as_tensor(smooth_picture(seed)) for seed in range(12)]))
    distances = [hamming(bits[i], bits[j]) for i, j in itertools.combinations(range(12), 2)]
    assert min(distances) > 3 * NEAR_HASH_BITS


def test_hash_pairs_equals_brute_force():
    rng = torch.Generator().manual_seed(0)
    bits = torch.rand(300, 64, generator=rng) > 0.5
    bits[10:20] = bits[0]  # a few planted near copies
    bits[10:20, :3] ^= True
    found = {(i, j) for i, j, _ in hash_pairs(bits, 6)}
    expected = {(i, j) for i, j in itertools.combinations(range(300), 2) if hamming(bits[i], bits[j]) <= 6}
    assert found == expected and len(found) >= 55
