"""The "no cat or dog" answer of the shipped model folder on real photos: six Kodak photos shipped with the
tests (tests/not-pets/ATTRIBUTION.md), every example pet, and the whole not-pets folder and the Oxford
test pets where ../shared holds them; through inference.py and through the live app."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from gradio_client import handle_file

from inference import PetClassifier
from tests.conftest import CHELSEA, EXAMPLES, MODEL_DIR, REPO
from train.data.pets import load_dataset
from train.shipping.evaluate import photo_answers
from train.shipping.no_pet import FOLDER, not_pet_photos

KODAK = sorted((REPO / "tests" / "not-pets").glob("*.jpg"))
SHARED = REPO.parent / "shared" / "data"


@pytest.fixture(scope="module")
def classifier() -> PetClassifier:
    return PetClassifier.load(MODEL_DIR, variant="fp32")


def test_the_card_reports_the_fit(classifier: PetClassifier) -> None:
    entry = classifier.card.no_pet
    assert entry["asked"] in ("dog or unsure", "every photo") and 0 < entry["threshold"] < 1
    other = next(iter(entry["cv_if_asked_of"].values()))  # the way not chosen, measured beside it
    assert (entry["asked"] == "every photo") == (entry["cv"]["catch"] - other["catch"] > 0.02)
    assert entry["cv"]["false_alarms"] <= 0.0125 and entry["test"]["false_alarms"] < 0.02  # fitted at 1 %
    assert set(entry["cv"]["per_category"]) >= {"animals", "people", "food", "vehicles"}
    assert len(classifier.imagenet_names) == 1000 and classifier.imagenet_names[285] == "Egyptian cat"


@pytest.mark.parametrize("path", KODAK, ids=[path.stem for path in KODAK])
def test_a_photo_without_a_pet_says_so_and_why(classifier: PetClassifier, path: Path) -> None:
    prediction = classifier.predict(path)
    details = prediction.as_details()
    assert prediction.no_pet and details["no_cat_or_dog"] is True
    assert details["imagenet"]["class"] in classifier.imagenet_names and 0 < details["imagenet"]["probability"] <= 1
    assert len(details["top"]) == 5  # the closest breeds are still listed


@pytest.mark.parametrize("path", [*EXAMPLES, CHELSEA], ids=[path.stem for path in [*EXAMPLES, CHELSEA]])
def test_a_pet_photo_is_never_no_cat_or_dog(classifier: PetClassifier, path: Path) -> None:
    assert not classifier.predict(path).no_pet


def test_the_app_labels_it_no_cat_or_dog(client) -> None:
    result = client.predict(handle_file(str(KODAK[0])), api_name="/predict")
    assert result["label"] == "No cat or dog" and len(result["confidences"]) == 5
    details = client.predict(handle_file(str(KODAK[0])), api_name="/predict_details")
    assert details["no_cat_or_dog"] is True and "class" in details["imagenet"]
    pet = client.predict(handle_file(str(EXAMPLES[0])), api_name="/predict")
    assert pet["label"] != "No cat or dog"


def served_variants() -> list[PetClassifier]:
    card = PetClassifier.load(MODEL_DIR, variant="fp32").card
    return [PetClassifier.load(MODEL_DIR, variant=variant) for variant in card.variants()]


def fitted(classifier: PetClassifier) -> dict:
    """The card's figures for this classifier's variant."""
    entry = classifier.card.no_pet
    return entry["int8"] if classifier.variant == "int8" and "int8" in entry else entry


def test_serving_catches_the_whole_not_pets_folder_as_the_card_says() -> None:
    folder = SHARED / FOLDER
    if not (folder / "MANIFEST.tsv").is_file():
        pytest.skip(f"no not-pets folder at {folder}: the shipped Kodak photos above stand in for it")
    photos, _ = not_pet_photos(folder)
    for classifier in served_variants():
        caught = photo_answers(classifier, photos).no_pet  # what the app answers, photo by photo
        assert float(caught.mean()) == pytest.approx(fitted(classifier)["final_on_not_pets"], abs=1e-9)
        assert caught.mean() >= 0.9, classifier.variant


def test_serving_raises_as_few_false_alarms_on_the_test_pets_as_the_card_says() -> None:
    oxford = SHARED / "oxford-iiit-pet"
    if not (oxford / "annotations" / "test.txt").is_file():
        pytest.skip(f"no Oxford-IIIT Pet copy at {oxford}")
    for classifier in served_variants():
        card = classifier.card
        test = load_dataset(oxford, card.data["val_fraction"], card.data["seed"]).splits["test"]
        alarms = photo_answers(classifier, test).no_pet
        assert float(np.mean(alarms)) == pytest.approx(fitted(classifier)["test"]["false_alarms"], abs=1e-9)
