"""The "no cat or dog" fit's maths: its threshold flags at most the allowed share of pets, folds keep a
source together, and the catch report counts what it says."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from inference import pet_mass
from train.no_pet import Photo, Signals, catch_report, fit_threshold, flagged, folds_by_source


@pytest.mark.parametrize("asked_share", [1.0, 0.3])
def test_the_threshold_flags_at_most_the_allowed_share_of_pets(asked_share: float) -> None:
    rng = np.random.default_rng(0)
    mass, asked = rng.uniform(0, 1, 1000), rng.uniform(0, 1, 1000) < asked_share
    threshold = fit_threshold(mass, asked, 0.01)
    flags = flagged(Signals(mass, asked, np.zeros(1000, int)), threshold)
    assert flags.sum() == 10  # exactly the allowed ten: the next pet up would be one too many
    assert fit_threshold(mass, np.zeros(1000, bool), 0.01) == 1.0  # no pet is asked: nothing limits it


def test_folds_hold_each_source_whole() -> None:
    photos = [Photo(Path(f"{i}.jpg"), "objects", source) for i, source in enumerate("aabbbcaa")]
    not_pet_fold, pet_fold = folds_by_source(photos, pets=30)
    by_source = {
        photo.source: {fold for p, fold in zip(photos, not_pet_fold, strict=True) if p.source == photo.source}
        for photo in photos
    }
    assert all(len(folds) == 1 for folds in by_source.values()) and len(set(not_pet_fold)) == 3
    assert sorted(np.bincount(pet_fold).tolist()) == [10, 10, 10]


def test_the_catch_report_counts_by_category_and_by_source() -> None:
    photos = [
        Photo(Path("1.jpg"), "animals", "EliSchwartz/imagenet-sample-images"),
        Photo(Path("2.jpg"), "animals", "lightly-ai/coco128_yolo"),
        Photo(Path("3.jpg"), "food", "lightly-ai/coco128_yolo"),
        Photo(Path("4.jpg"), "food", "EliSchwartz/imagenet-sample-images"),
    ]
    report = catch_report(photos, np.array([True, False, True, True]))
    assert report["catch"] == 0.75 and report["catch_animals"] == 0.5 and report["catch_not_animals"] == 1.0
    assert report["catch_imagenet_photos"] == 1.0 and report["catch_other_photos"] == 0.5
    assert report["per_category"] == {"animals": {"catch": 0.5, "photos": 2}, "food": {"catch": 1.0, "photos": 2}}


def test_pet_mass_sums_the_listed_imagenet_classes() -> None:
    logits = np.zeros((1, 1000))
    logits[0, [151, 268, 281, 285]] = np.log(1000.0)  # four classes a thousand times likelier than each other
    expected = (4 * 1000 + 118 - 2 + 5 - 2) / (4 * 1000 + 996)
    assert pet_mass(logits, [[151, 268], [281, 285]])[0] == pytest.approx(expected)
