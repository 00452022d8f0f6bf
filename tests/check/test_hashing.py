"""Perceptual hashes and close pairs: copies stay close, different pictures do not."""

import io
import itertools

import numpy as np
import torch
from PIL import Image

from oculi.check.duplicates import NEAR_HASH_BITS, find_duplicates
from oculi.data.split import Record
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
        bits, _ = perceptual_hashes(torch.stack([as_tensor(p) for p in [original, *copies]]))
        assert all(hamming(bits[0], bits[i]) <= NEAR_HASH_BITS for i in range(1, 4)), seed


def test_different_pictures_are_far_apart():
    bits, _ = perceptual_hashes(torch.stack([as_tensor(smooth_picture(seed)) for seed in range(12)]))
    distances = [hamming(bits[i], bits[j]) for i, j in itertools.combinations(range(12), 2)]
    assert min(distances) > 3 * NEAR_HASH_BITS


def test_hash_pairs_equals_brute_force():
    rng = torch.Generator().manual_seed(0)
    bits = torch.rand(300, 64, generator=rng) > 0.5
    bits[10:20] = bits[0]  # a few planted near copies
    bits[10:20, :3] ^= True
    found = {(i, j) for i, j, _ in hash_pairs(bits, 6)}
    distances = (bits[:, None] != bits[None]).sum(-1)
    expected = {(i, j) for i, j in itertools.combinations(range(300), 2) if distances[i, j] <= 6}
    assert found == expected and len(found) >= 55


def test_same_structure_in_other_colours_is_no_copy():
    """Swapping colour channels keeps the gray picture, so the pHash, exactly: the thumbnails tell them apart."""
    original = as_tensor(smooth_picture(0))
    images = torch.stack([original, original[[2, 0, 1]], as_tensor(reencoded(smooth_picture(0), 0.5, 75))])
    bits, thumbs = perceptual_hashes(images)
    assert hamming(bits[0], bits[1]) == 0
    records = [Record("a.png", 0, "train"), Record("b.png", 1, "train"), Record("c.jpg", 0, "val")]
    found = find_duplicates(records, ["a", "b", "c"], bits, thumbs)
    assert [(d.path, d.duplicate_of, d.kind, d.leak) for d in found] == [("c.jpg", "a.png", "near", True)]
