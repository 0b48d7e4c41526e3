"""The "no cat or dog" fit's maths: its threshold flags at most the allowed share of pets, folds keep a
source together, and the catch report counts what it says."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from inference import pet_mass
from train.data.pets import DataError
from train.shipping.no_pet import Photo, Signals, catch_report, fit_threshold, flagged, folds_by_source


def test_the_threshold_flags_at_most_the_allowed_share_of_pets_wherever_they_are_asked() -> None:
    rng = np.random.default_rng(0)
    mass = rng.uniform(0, 1, 1000)
    threshold = fit_threshold(mass, 0.01)
    everywhere = flagged(Signals(mass, np.zeros(1000, bool), np.zeros(1000, int)), threshold, everywhere=True)
    assert everywhere.sum() == 10  # exactly the allowed ten: the next pet up would be one too many
    for share in (0.3, 1.0):  # serving asks about some of them: never more alarms than that
        asked = rng.uniform(0, 1, 1000) < share
        assert flagged(Signals(mass, asked, np.zeros(1000, int)), threshold).sum() <= 10
    assert fit_threshold(mass[:50], 0.01) == float(np.sort(mass[:50])[0])  # too few to allow one: below them all


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
    probabilities = np.full((1, 1000), 0.0005)
    probabilities[0, [151, 268, 281, 285]] = 0.1255  # four classes carry half the mass, the other 996 the rest
    expected = 4 * 0.1255 + (118 - 2 + 5 - 2) * 0.0005
    assert pet_mass(probabilities, [[151, 268], [281, 285]])[0] == pytest.approx(expected)


def test_one_source_cannot_be_cross_validated_by_source() -> None:
    with pytest.raises(DataError, match="one source"):
        folds_by_source([Photo(Path("1.jpg"), "food", "a"), Photo(Path("2.jpg"), "food", "a")], pets=4)
