"""`python -m train retest` on the shipped model folder and photos made here: every figure the photos
decide is measured again, on the photos there are now (test metrics of each variant, the confusion matrix,
retention, the test counts); what selection fitted stays (temperatures, the "not sure" threshold, CV)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from inference import ModelCard
from tests.conftest import MODEL_DIR, write_tiny_dataset
from tests.data.test_extra import write_extra
from train.__main__ import main as train_main

pytestmark = pytest.mark.slow


LABELS = json.loads((MODEL_DIR / "labels.json").read_text())


def photos_of_every_breed(root: Path) -> Path:
    """One test photo of each of the model's breeds, and Stanford-layout photos of two dog breeds beside."""
    breeds = [(name, 1 if name[0].isupper() else 2) for name in LABELS]
    write_extra(root / "stanford-dogs-extra", {"beagle": 2, "pug": 1})
    return write_tiny_dataset(root / "oxford-iiit-pet", per_class=3, classes=breeds)


def test_retest_measures_the_shipped_folder_again_on_todays_photos(tmp_path: Path) -> None:
    labels = LABELS
    data = photos_of_every_breed(tmp_path)
    model = shutil.copytree(MODEL_DIR, tmp_path / "model")
    (model / "confusion_matrix_test.png").unlink()
    planted = json.loads((model / "card.json").read_text())
    planted["int8"]["test"]["accuracy"] = -1.0  # a figure retest must replace, whatever the photos
    (model / "card.json").write_text(json.dumps(planted))
    before = ModelCard.load(model / "card.json")

    assert train_main(["--data-dir", str(data), "retest", "--model-dir", str(model)]) == 0

    after = ModelCard.load(model / "card.json")
    assert after.metrics["test"]["images"] == len(labels) == after.data["images"]["test"]
    assert after.data["missing"]["test"] == 0 and after.data["images"]["train"] == before.data["images"]["train"]
    assert (model / "confusion_matrix_test.png").is_file()
    assert after.metrics["retention"]["photos"] == 3 and set(after.metrics["retention"]["per_breed"]) == {
        "beagle",
        "pug",
    }
    assert after.int8["test"] != before.int8["test"] and 0.0 <= after.int8["test"]["accuracy"] <= 1.0
    kept = (after.calibration, after.not_sure, after.metrics["cv"], after.int8.get("calibration"), after.model)
    assert kept == (
        before.calibration,
        before.not_sure,
        before.metrics["cv"],
        before.int8.get("calibration"),
        before.model,
    )


def test_a_model_that_trained_on_extra_photos_gets_no_retention(tmp_path: Path) -> None:
    """Its card counts extra photos without naming their folder: the Stanford photos may be among them."""
    data = photos_of_every_breed(tmp_path)
    model = shutil.copytree(MODEL_DIR, tmp_path / "model")
    card = json.loads((model / "card.json").read_text())
    card["data"]["images"]["extra"] = 2682
    (model / "card.json").write_text(json.dumps(card))

    assert train_main(["--data-dir", str(data), "retest", "--model-dir", str(model)]) == 0
    assert "retention" not in ModelCard.load(model / "card.json").metrics
    assert train_main(["--data-dir", str(data), "retention", "--model", str(model)]) == 1


def test_whether_a_model_trained_on_the_photos_is_one_rule_whatever_the_folder_is_called(tmp_path: Path) -> None:
    """Select decided by the run's extra folder names, retest by the card: a copy of the Stanford photos under
    another name was measured by one and not the other. `measure` now asks the card, for every caller."""
    from dataclasses import replace

    from inference import PetClassifier
    from train.shipping import retention

    shipped = PetClassifier.load(MODEL_DIR, variant="fp32")
    counted = shipped.card.data | {"images": shipped.card.data["images"] | {"extra": 2682}}
    trained = shipped.with_card(replace(shipped.card, data=counted))
    copy = write_extra(tmp_path / "dogs-copy", {"beagle": 2})

    assert retention.measure(trained, copy) is None
    assert retention.measure(shipped, copy)["photos"] == 2


def test_a_rejected_int8_loses_its_old_test_figures_and_retention_stays_where_not_measured(tmp_path: Path) -> None:
    breeds = [(name, 1 if name[0].isupper() else 2) for name in LABELS]
    data = write_tiny_dataset(tmp_path / "oxford-iiit-pet", per_class=3, classes=breeds)  # no Stanford folder
    model = shutil.copytree(MODEL_DIR, tmp_path / "model")
    card = json.loads((model / "card.json").read_text())
    card["int8"] = {key: value for key, value in card["int8"].items() if key != "sha256"} | {"accepted": False}
    (model / "model.int8.onnx").unlink()
    (model / "card.json").write_text(json.dumps(card))

    assert train_main(["--data-dir", str(data), "retest", "--model-dir", str(model)]) == 0
    after = ModelCard.load(model / "card.json")
    assert after.variants() == ["fp32"] and "test" not in after.int8
    assert after.metrics["retention"] == card["metrics"]["retention"]  # not measured here: kept as it was
    assert after.metrics["test"]["images"] == len(LABELS) and not list(tmp_path.glob(".model.*"))


def test_retest_of_a_folder_without_a_card_is_refused_in_one_line(tmp_path: Path, capsys) -> None:
    data = photos_of_every_breed(tmp_path)
    assert train_main(["--data-dir", str(data), "retest", "--model-dir", str(tmp_path / "absent")]) == 1
    assert "holds no card.json" in capsys.readouterr().err and not (tmp_path / "absent").exists()
