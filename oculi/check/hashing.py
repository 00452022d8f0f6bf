"""What identifies an image: the hash of its file's bytes (exact copies), a perceptual hash of its pixels
(resized or re-encoded copies) and the facts read from its header (size, grayscale or colour).

Headers are read in forked child processes (``data.children``), as decoding is: a file that crashes the
header parser costs that file, not the check."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Callable, Iterator

import numpy as np
import torch
import torch.nn.functional as F

from ..data.children import ChildDied, can_fork, map_in_children
from ..data.contained import one_thread
from ..data.decode import FileFacts, bytes_digest, read_image_size
from ..data.sources import DataSource, builtin_row
from ..data.unreadable import CANNOT_READ, DECODER_CRASHED, Unreadable
from ..errors import ImageDecodeError

HASH_SIDE = 32  # pHash: the image is shrunk to 32x32 gray and the lowest 8x8 DCT frequencies are kept
HASH_FREQS = 8
FILES_PER_CHILD = 2048  # a child reads this many headers: a fork costs 30-130 ms here


def file_facts(path: Path) -> FileFacts | Unreadable:
    """The facts of one file, or why it cannot be read."""
    try:
        channels, height, width = read_image_size(path)
        digest = bytes_digest(path.read_bytes())
    except ImageDecodeError as err:
        return Unreadable.of(err)
    except OSError as err:
        return Unreadable(CANNOT_READ, f"cannot read file ({err.strerror or err})")
    return FileFacts(digest, channels, height, width)


def source_facts(source: DataSource, paths: list[str], advance: Callable[[int], None] = lambda n: None
                 ) -> Iterator[tuple[str, FileFacts | Unreadable]]:
    """(path, facts or why not) for every path of ``source``: a folder's files read in child processes,
    a built-in set's rows hashed here."""
    if source.arrays is not None:
        for path in paths:
            pixels = source.arrays[builtin_row(path)]
            c, h, w = pixels.shape
            yield path, FileFacts(bytes_digest(pixels.tobytes()), c, h, w)
            advance(1)
        return
    files = [source.root / path for path in paths]
    if can_fork():
        outcomes = map_in_children(file_facts, files, workers=os.cpu_count() or 1, run_length=FILES_PER_CHILD,
                                   timeout=60, setup=one_thread)
    else:
        outcomes = map(file_facts, files)
    for path, outcome in zip(paths, outcomes):
        # A header reader that died or hung (and was killed) is a crash of that file's reader, as in decoding.
        yield path, (Unreadable(DECODER_CRASHED, f"header reader {outcome.reason} ({outcome.detail})")
                     if isinstance(outcome, ChildDied) else outcome)
        advance(1)


def _dct_matrix(n: int) -> torch.Tensor:
    """The orthonormal DCT-II basis, rows = frequencies."""
    k = torch.arange(n, dtype=torch.float64).unsqueeze(1)
    i = torch.arange(n, dtype=torch.float64).unsqueeze(0)
    basis = torch.cos(torch.pi * (2 * i + 1) * k / (2 * n)) * (2 / n) ** 0.5
    basis[0] /= 2 ** 0.5
    return basis.float()


def perceptual_hashes(images, chunk: int = 1024) -> tuple[torch.Tensor, torch.Tensor]:
    """pHash bits (bool [N, 64]) and colour thumbnails (float [N, 3 x 8 x 8], levels 0-255) of uint8 images
    [N, C, H, W] (a tensor or a ``RowView``), a chunk at a time.

    The pHash of Zauner (2010, "Implementation and Benchmarking of Perceptual Image Hash Functions"): gray,
    shrunk to 32x32, 2-D DCT, the lowest 8x8 frequencies compared with their median. It is unchanged by
    resizing and JPEG re-encoding, and moves a few bits under small edits. It sees no colour and little of a
    small image with a plain background (a plane in the sky, a bird on sand): the thumbnail tells those apart."""
    dct = _dct_matrix(HASH_SIDE)[:HASH_FREQS]
    bits, thumbs = [], []
    for start in range(0, len(images), chunk):
        batch = images[start:start + chunk].float()
        colour = batch.expand(-1, 3, -1, -1)  # grayscale compares with colour as its gray
        thumbs.append(F.interpolate(colour, size=(HASH_FREQS, HASH_FREQS), mode="area").flatten(1))
        small = F.interpolate(batch.mean(1, keepdim=True), size=(HASH_SIDE, HASH_SIDE), mode="area").squeeze(1)
        freqs = (dct @ small @ dct.T).flatten(1)  # [n, 64], the DC term first
        median = freqs[:, 1:].median(1, keepdim=True).values  # the DC term (the mean brightness) left out
        bits.append(freqs > median)
    if not bits:
        return torch.zeros(0, HASH_FREQS ** 2, dtype=torch.bool), torch.zeros(0, 3 * HASH_FREQS ** 2)
    return torch.cat(bits), torch.cat(thumbs)


def close_pairs(vectors: torch.Tensor, min_similarity: float, block: int = 512) -> list[tuple[int, int, float]]:
    """(i, j, similarity), i < j, of the rows of ``vectors`` whose dot product is at least ``min_similarity``,
    computed a block of rows at a time (memory: ``block`` x N floats)."""
    pairs = []
    for start in range(0, len(vectors), block):
        sims = vectors[start:start + block] @ vectors[start:].T  # only j >= i: each pair once
        rows, cols = torch.nonzero(sims >= min_similarity, as_tuple=True)
        keep = cols > rows
        for r, c in zip(rows[keep].tolist(), cols[keep].tolist()):
            pairs.append((start + r, start + c, float(sims[r, c])))
    return pairs


def hash_pairs(bits: torch.Tensor, max_distance: int) -> list[tuple[int, int, int]]:
    """(i, j, Hamming distance), i < j, of the hashes at most ``max_distance`` bits apart.

    Multi-index hashing (Norouzi, Punjani & Fleet 2012, "Fast Search in Hamming Space with Multi-Index
    Hashing"): cut the 64 bits into ``max_distance + 1`` bands; two hashes that differ in at most that many
    bits agree exactly on at least one band, so only hashes sharing a band value are compared. 60,000
    CIFAR-10 images: a few seconds, where comparing every pair took 48 s (2 busy cores)."""
    codes = _packed(bits)
    edges = np.linspace(0, bits.shape[1], max_distance + 2).round().astype(int)
    found: set[tuple[int, int]] = set()
    for lo, hi in zip(edges[:-1], edges[1:]):
        keys = (codes >> np.uint64(lo)) & np.uint64((1 << int(hi - lo)) - 1)
        order = np.argsort(keys, kind="stable")
        starts = np.flatnonzero(np.r_[True, keys[order][1:] != keys[order][:-1]])
        for start, end in zip(starts, np.r_[starts[1:], len(order)]):
            if end - start > 1:
                found.update(_close_within(codes, np.sort(order[start:end]), max_distance))
    return [(i, j, int(np.bitwise_count(codes[i] ^ codes[j]))) for i, j in sorted(found)]


def _packed(bits: torch.Tensor) -> np.ndarray:
    """Each row of up to 64 bits as one uint64."""
    weights = np.uint64(1) << np.arange(bits.shape[1], dtype=np.uint64)
    return (bits.numpy().astype(np.uint64) * weights).sum(1, dtype=np.uint64)


def _close_within(codes: np.ndarray, members: np.ndarray, max_distance: int, block: int = 256):
    """The pairs (i, j), i < j, of ``members`` (sorted indices) at most ``max_distance`` bits apart."""
    for start in range(0, len(members), block):
        rows = members[start:start + block]
        distances = np.bitwise_count(codes[rows][:, None] ^ codes[members][None, :])
        r, c = np.nonzero((distances <= max_distance) & (members[None, :] > rows[:, None]))
        yield from zip(rows[r].tolist(), members[c].tolist())


def cosine_pairs(features: torch.Tensor, min_cosine: float) -> list[tuple[int, int, float]]:
    """(i, j, cosine), i < j, of feature rows at least ``min_cosine`` alike."""
    return close_pairs(F.normalize(features.float(), dim=1), min_cosine)
