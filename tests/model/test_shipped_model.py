"""Behaviour of the committed model/ through inference.py: what the Space serves."""

from __future__ import annotations

import io
import json
import os
import shutil

import numpy as np
import pytest
from PIL import Image

from inference import ModelError, PetClassifier, readable_name, serving_threads, sha256_file, usable_cores
from tests.conftest import CHELSEA, MODEL_DIR


@pytest.fixture(scope="module")
def classifier() -> PetClassifier:
    return PetClassifier.load(MODEL_DIR)


def test_model_folder_is_consistent() -> None:
    card = json.loads((MODEL_DIR / "card.json").read_text())
    labels = json.loads((MODEL_DIR / "labels.json").read_text())
    assert len(labels) == 37 and len(set(labels)) == 37
    assert {"Abyssinian", "american_pit_bull_terrier", "great_pyrenees", "Maine_Coon"} <= set(labels)
    assert card["model"]["sha256"] == sha256_file(MODEL_DIR / "model.onnx")
    assert (MODEL_DIR / "model.onnx").stat().st_size <= 25e6
    for split in ("cv" if "cv" in card["metrics"] else "val", "test"):
        assert 0 <= card["metrics"][split]["accuracy"] <= card["metrics"][split]["top5_accuracy"] <= 1


def test_readable_names() -> None:
    assert readable_name("great_pyrenees") == "Great Pyrenees"
    assert readable_name("Maine_Coon") == "Maine Coon"
    assert readable_name("american_pit_bull_terrier") == "American Pit Bull Terrier"


def test_top5_is_sorted_probabilities(classifier: PetClassifier) -> None:
    prediction = classifier.predict(CHELSEA)
    probabilities = [p for _, p in prediction.top]
    assert len(prediction.top) == 5
    assert probabilities == sorted(probabilities, reverse=True)
    assert all(0 <= p <= 1 for p in probabilities) and sum(probabilities) <= 1 + 1e-6
    assert prediction.species == "cat"
    assert all(name in classifier.names for name, _ in prediction.top)
    assert len(classifier.predict(CHELSEA, top_k=37).top) == 37


def test_batch_equals_singles_and_is_deterministic(classifier: PetClassifier) -> None:
    photo = Image.open(CHELSEA)
    images = [photo, photo.transpose(Image.Transpose.FLIP_LEFT_RIGHT), photo.resize((200, 300)), CHELSEA]
    batch = classifier.predict_batch(images)
    for image, together in zip(images, batch, strict=True):
        alone = classifier.predict(image)
        assert [n for n, _ in alone.top] == [n for n, _ in together.top]
        assert np.allclose([p for _, p in alone.top], [p for _, p in together.top], atol=1e-5)
    assert classifier.predict(CHELSEA) == classifier.predict(CHELSEA)
    assert classifier.predict_batch([]) == []


def test_exif_rotated_photo_predicts_like_the_upright_one(classifier: PetClassifier) -> None:
    photo = Image.open(CHELSEA)
    exif = Image.Exif()
    exif[0x0112] = 8  # viewers turn it 90° counter-clockwise
    buffer = io.BytesIO()
    photo.rotate(-90, expand=True).save(buffer, "JPEG", exif=exif, quality=100)
    upright = io.BytesIO()
    photo.save(upright, "JPEG", quality=100)
    rotated, straight = classifier.predict(buffer.getvalue()), classifier.predict(upright.getvalue())
    assert [n for n, _ in rotated.top[:3]] == [n for n, _ in straight.top[:3]]


def test_thread_count_comes_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PETS_THREADS", "1")
    assert PetClassifier.load(MODEL_DIR).session.get_session_options().intra_op_num_threads == 1
    assert serving_threads() == 1 and PetClassifier.load(MODEL_DIR).threads == 1


def test_threads_default_to_the_usable_cores(tmp_path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Without PETS_THREADS each run gets the cores this process may run on, capped by a container's quota
    (a container may see 32 cores and be allowed 2; ONNX Runtime's own default counts what it sees)."""
    monkeypatch.delenv("PETS_THREADS", raising=False)
    affinity = len(os.sched_getaffinity(0))
    cpu_max = tmp_path / "cpu.max"
    for text, cores in (("max 100000", affinity), ("150000 100000", min(affinity, 2)), ("50000 100000", 1)):
        cpu_max.write_text(text + "\n")
        assert usable_cores(cpu_max) == cores, text
    assert usable_cores(tmp_path / "absent") == affinity
    assert serving_threads() == usable_cores() == PetClassifier.load(MODEL_DIR).threads


def test_missing_model_is_a_clear_error(tmp_path) -> None:
    with pytest.raises(ModelError, match=r"model\.onnx is missing"):
        PetClassifier.load(tmp_path)


def test_mismatched_model_folder_is_refused(tmp_path) -> None:
    folder = tmp_path / "model"
    shutil.copytree(MODEL_DIR, folder)
    (folder / "labels.json").write_text(json.dumps(["only", "two"]))
    with pytest.raises(ModelError, match=r"37 species but labels\.json lists 2 classes"):
        PetClassifier.load(folder)
    (folder / "labels.json").write_text((MODEL_DIR / "labels.json").read_text())
    served = "model.int8.onnx" if PetClassifier.load(folder).variant == "int8" else "model.onnx"
    with open(folder / served, "ab") as handle:
        handle.write(b"\0")
    with pytest.raises(ModelError, match="sha256"):
        PetClassifier.load(folder)


@pytest.mark.parametrize("page", ["README.md", "docs/training.md"])
def test_the_docs_report_the_cards_numbers(page: str) -> None:
    readme = (MODEL_DIR.parent / page).read_text()
    card = json.loads((MODEL_DIR / "card.json").read_text())
    test = card["metrics"]["test"]
    for value in (
        test["accuracy"],
        test["per_species"]["cat"],
        test["per_species"]["dog"],
        test["top5_accuracy"],
        test["mean_per_class_accuracy"],
        test["ece"],
        card["metrics"]["cv" if "cv" in card["metrics"] else "val"]["accuracy"],
        card["not_sure"]["threshold"],
    ):
        assert f"{100 * value:.1f} %" in readme, value
    assert f"version {card['mlflow']['version']}" in readme and card["model"]["backbone"][-5:] in readme


def test_each_example_photo_is_answered_right_and_sure(classifier: PetClassifier) -> None:
    """The Space's examples (Oxford test images, named <Breed>_<n>.jpg) must stay convincing."""
    from tests.conftest import EXAMPLES

    assert 8 <= len(EXAMPLES) <= 12
    assert {classifier.species[classifier.labels.index(p.stem.rsplit("_", 1)[0])] for p in EXAMPLES} == {"cat", "dog"}
    for path in EXAMPLES:
        prediction = classifier.predict(path)
        assert prediction.top[0][0] == readable_name(path.stem.rsplit("_", 1)[0]), path.name
        assert not prediction.not_sure, (path.name, prediction.top[0])
