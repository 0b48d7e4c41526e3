"""Near-duplicate photos, found by a perceptual hash: grouped into one cross-validation fold, and reported
where a test photo has a twin in trainval.

Oxford-IIIT Pet holds the same photograph twice under different names (re-crops, re-encodings): a pair
split across folds lets a fold be tested on a photo it trained on, and flatters the CV estimate.
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import cache
from pathlib import Path

import numpy as np
from PIL import Image

from train.data.pets import Sample

MAX_DISTANCE = 8  # bits of 64 that may differ for two photos to count as one


@cache
def _dct_matrix(size: int = 32) -> np.ndarray:
    k, n = np.meshgrid(np.arange(size), np.arange(size), indexing="ij")
    return np.cos(np.pi * (2 * n + 1) * k / (2 * size))


@cache  # a CV run hashes trainval for its folds and again for the twin report
def phash(path: Path) -> int:
    """The 64-bit pHash: grey 32×32, 2-D DCT, the 8×8 lowest frequencies against their median."""
    grey = np.asarray(Image.open(path).convert("L").resize((32, 32), Image.Resampling.LANCZOS), dtype=np.float64)
    dct = _dct_matrix() @ grey @ _dct_matrix().T
    low = dct[:8, :8].flatten()
    bits = low > np.median(low)
    return int("".join("1" if bit else "0" for bit in bits), 2)


ROWS_AT_ONCE = 256  # XOR blocks of 256 × len(right) uint64: 7.5 MB for trainval against itself


def distances(left: Sequence[int], right: Sequence[int]) -> np.ndarray:
    """Hamming distances (uint8) between every hash of `left` and every hash of `right`: the bits set in
    their XOR, counted a block of rows at a time: one byte a pair and a block (unpacking the 64 bits of
    every pair took ~80 bytes a pair, ~1 GB for trainval against itself)."""
    a, b = np.asarray(left, dtype=np.uint64), np.asarray(right, dtype=np.uint64)
    out = np.empty((len(a), len(b)), dtype=np.uint8)
    for start in range(0, len(a), ROWS_AT_ONCE):
        out[start : start + ROWS_AT_ONCE] = np.bitwise_count(a[start : start + ROWS_AT_ONCE, None] ^ b[None, :])
    return out


def groups(samples: Sequence[Sample], max_distance: int = MAX_DISTANCE) -> list[list[Sample]]:
    """The samples in groups of near-duplicates (most groups are one photo), in the samples' order."""
    hashes = [phash(s.path) for s in samples]
    close = distances(hashes, hashes) <= max_distance
    parent = list(range(len(samples)))

    def root(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    for i, j in zip(*np.nonzero(np.triu(close, 1)), strict=True):
        parent[root(int(i))] = root(int(j))
    grouped: dict[int, list[Sample]] = {}
    for i, sample in enumerate(samples):
        grouped.setdefault(root(i), []).append(sample)
    return list(grouped.values())


def twins(
    queries: Sequence[Sample], references: Sequence[Sample], max_distance: int = MAX_DISTANCE
) -> list[tuple[str, str]]:
    """(query, reference) name pairs whose photos are near-duplicates: a test photo seen in training."""
    if not queries or not references:
        return []
    close = distances([phash(s.path) for s in queries], [phash(s.path) for s in references]) <= max_distance
    return [(queries[i].name, references[j].name) for i, j in zip(*np.nonzero(close), strict=True)]
