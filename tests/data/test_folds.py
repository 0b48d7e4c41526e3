"""Cross-validation splits: stratified, disjoint, covering trainval; out-of-fold rows come only from the
fold run that held a sample out."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import numpy as np
import pytest

from tests.conftest import write_tiny_dataset
from train.learning.config import Config
from train.experiments.crossval import Fold, out_of_fold, plan, stratified_folds
from train.data.pets import load_dataset


@pytest.fixture
def trainval(tmp_path):
    data = load_dataset(write_tiny_dataset(tmp_path / "oxford-iiit-pet", per_class=30), 0.15, 0)
    return data, data.splits["train"] + data.splits["val"]


def test_folds_are_stratified_disjoint_and_cover_trainval(trainval) -> None:
    _, samples = trainval
    folds = stratified_folds(samples, 5, seed=0)
    names = [s.name for fold in folds for s in fold]
    assert sorted(names) == sorted(s.name for s in samples) and len(names) == len(set(names))
    for fold in folds:
        per_class = Counter(s.label for s in fold)
        assert sorted(per_class) == [0, 1, 2] and max(per_class.values()) - min(per_class.values()) <= 1
    assert max(map(len, folds)) - min(map(len, folds)) <= 1


def test_folds_are_seeded(trainval) -> None:
    _, samples = trainval
    assert stratified_folds(samples, 5, 0) == stratified_folds(samples, 5, 0)
    assert stratified_folds(samples, 5, 0) != stratified_folds(samples, 5, 1)


def test_plan_trains_each_fold_on_the_rest_then_on_everything(trainval) -> None:
    data, samples = trainval
    runs = plan(Config(folds=3), data)
    assert [run.name for run in runs] == ["fold-1", "fold-2", "fold-3", "all"]
    for run in runs[:-1]:
        assert {s.name for s in run.train} | {s.name for s in run.holdout} == {s.name for s in samples}
        assert not {s.name for s in run.train} & {s.name for s in run.holdout}
    assert runs[-1].train == samples and runs[-1].holdout == []


def test_out_of_fold_rows_come_from_the_run_that_held_the_sample_out(trainval) -> None:
    data, _ = trainval
    folds = plan(Config(folds=3), data)[:-1]
    # Each fold's "logits" carry its fold number, so every row shows which run produced it.
    logits = [np.full((len(fold.holdout), 3), i, dtype=np.float32) for i, fold in enumerate(folds)]
    names, rows, labels = out_of_fold(folds, logits)
    origin = {s.name: i for i, fold in enumerate(folds) for s in fold.holdout}
    assert [int(row[0]) for row in rows] == [origin[name] for name in names]
    for name, row in zip(names, rows, strict=True):
        assert name not in {s.name for s in folds[int(row[0])].train}
    assert len(names) == len(set(names)) == sum(len(f.holdout) for f in folds) and len(labels) == len(names)


def test_out_of_fold_refuses_a_prediction_made_on_a_training_fold(trainval) -> None:
    data, _ = trainval
    first, second, *_ = plan(Config(folds=3), data)
    leaky = Fold("leaky", first.train + second.holdout[:1], second.holdout[:1])
    with pytest.raises(ValueError, match="trained on it"):
        out_of_fold([leaky], [np.zeros((1, 3), np.float32)])
    with pytest.raises(ValueError, match="held out twice"):
        out_of_fold([first, first], [np.zeros((len(first.holdout), 3), np.float32)] * 2)


def test_near_duplicates_are_held_out_in_one_fold(trainval) -> None:
    _, samples = trainval
    pair = [samples[0], next(s for s in samples[1:] if s.label == samples[0].label)]
    together = [pair] + [[s] for s in samples if s not in pair]
    for seed in range(5):
        folds = stratified_folds(samples, 5, seed, together)
        assert sum(all(s in fold for s in pair) for fold in folds) == 1
        assert sorted(s.name for fold in folds for s in fold) == sorted(s.name for s in samples)


def test_a_re_encoded_copy_is_a_near_duplicate_and_another_photo_is_not(tmp_path) -> None:
    from PIL import Image

    from tests.conftest import CHELSEA, EXAMPLES
    from train.data.pets import Sample
    from train.data.duplicates import groups, twins

    photo = Image.open(CHELSEA).convert("RGB")
    photo.crop((4, 3, photo.width - 4, photo.height - 3)).resize((300, 200)).save(tmp_path / "copy.jpg", quality=60)
    samples = [
        Sample("original", CHELSEA, 0),
        Sample("copy", tmp_path / "copy.jpg", 0),
        Sample("other", EXAMPLES[0], 0),
    ]
    assert sorted(sorted(s.name for s in group) for group in groups(samples)) == [["copy", "original"], ["other"]]
    assert twins(samples[1:], samples[:1]) == [("copy", "original")]


SHARED = Path(__file__).resolve().parents[2].parent / "shared" / "data" / "oxford-iiit-pet"


@pytest.mark.skipif(
    not (SHARED / "annotations" / "test.txt").is_file(), reason="no Oxford-IIIT Pet copy beside the repo"
)
def test_the_six_known_test_twins_are_found() -> None:
    """The review's six test photos with a twin in trainval, and no others."""
    from train.data.duplicates import twins

    data = load_dataset(SHARED, 0.15, 0)
    found = set(twins(data.splits["test"], data.splits["train"] + data.splits["val"]))
    assert found == {
        ("British_Shorthair_278", "British_Shorthair_160"),
        ("British_Shorthair_271", "British_Shorthair_186"),
        ("Egyptian_Mau_219", "Egyptian_Mau_138"),
        ("Egyptian_Mau_6", "Egyptian_Mau_186"),
        ("Bombay_82", "Bombay_146"),
        ("Abyssinian_99", "Abyssinian_151"),
    }


def unpacked_distances(left: np.ndarray, right: np.ndarray) -> np.ndarray:
    """The former method, kept here as the reference: every pair's 64 XOR bits unpacked and summed."""
    a = left[:, None] ^ right[None, :]
    return np.unpackbits(a.view(np.uint8).reshape(*a.shape, 8), axis=-1).sum(-1)


def test_hash_distances_count_the_bits_of_the_xor_in_a_few_bytes_a_pair() -> None:
    """Equal to unpacking the bits on random 64-bit hashes (the top bit included), blocks of rows past the
    first included; tracemalloc sees numpy's buffers, and the peak stays under 4 bytes a pair (the
    uint8 answer and one block of XORs), where unpacking took ~80."""
    import tracemalloc

    from train.data.duplicates import ROWS_AT_ONCE, distances

    rng = np.random.default_rng(0)
    left, right = (rng.integers(0, 2**64, n, dtype=np.uint64, endpoint=False) for n in (ROWS_AT_ONCE + 37, 53))
    left[:3] = [0, 2**64 - 1, 2**63]
    found = distances([int(h) for h in left], [int(h) for h in right])
    assert found.shape == (len(left), len(right)) and (found == unpacked_distances(left, right)).all()
    assert found[1].tolist() == [64 - bin(int(h)).count("1") for h in right]
    hashes = [int(h) for h in rng.integers(0, 2**64, 1500, dtype=np.uint64)]
    tracemalloc.start()
    distances(hashes, hashes)
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert peak < 4 * 1500 * 1500
