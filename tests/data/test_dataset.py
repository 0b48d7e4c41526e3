"""train.data.pets: the official splits, a stratified seeded validation split, and missing files counted."""

from __future__ import annotations

import pytest

from preprocess import InputSpec
from tests.conftest import TINY_CLASSES
from train.data.pets import DataError, load_dataset


def test_splits_and_classes(tiny_data) -> None:
    data = load_dataset(tiny_data, val_fraction=0.25, seed=0)
    assert data.classes == [name for name, _ in TINY_CLASSES]
    assert data.species == ["cat", "dog", "cat"]
    assert data.counts() == {"train": 18, "val": 6, "test": 12}
    for label in range(3):  # stratified: every class in validation
        assert sum(s.label == label for s in data.splits["val"]) == 2
    names = [{s.name for s in samples} for samples in data.splits.values()]
    assert not (names[0] & names[1] or names[0] & names[2] or names[1] & names[2])


def test_validation_split_is_seeded(tiny_data) -> None:
    first = load_dataset(tiny_data, 0.25, seed=1).splits["val"]
    assert first == load_dataset(tiny_data, 0.25, seed=1).splits["val"]
    assert first != load_dataset(tiny_data, 0.25, seed=2).splits["val"]


def test_missing_images_are_skipped_and_counted(tiny_data) -> None:
    for stem in ("Stripes_1", "Stripes_2", "dots_3"):  # two trainval, one test
        (tiny_data / "images" / f"{stem}.jpg").unlink()
    data = load_dataset(tiny_data, 0.25, 0)
    assert data.missing["trainval"] == {"Stripes": 2, "dots": 0, "Checks": 0}
    assert data.missing["test"] == {"Stripes": 0, "dots": 1, "Checks": 0}
    assert data.missing_totals() == {"trainval": 2, "test": 1}
    assert sum(data.counts().values()) == 33


def test_digest_follows_the_files(tiny_data) -> None:
    before = load_dataset(tiny_data).digest
    (tiny_data / "images" / "Checks_1.jpg").unlink()
    assert load_dataset(tiny_data).digest != before


def test_a_class_without_training_images_is_an_error(tiny_data) -> None:
    for path in (tiny_data / "images").glob("dots_*.jpg"):
        path.unlink()
    with pytest.raises(DataError, match="No training image for class\\(es\\) dots"):
        load_dataset(tiny_data)


def test_absent_dataset_names_the_expected_layout(tmp_path) -> None:
    with pytest.raises(DataError, match="annotations/\\{trainval,test\\}.txt"):
        load_dataset(tmp_path / "elsewhere")


def test_malformed_annotation_line_is_reported(tiny_data) -> None:
    (tiny_data / "annotations" / "test.txt").write_text("Stripes_3 one 1 1\n")
    with pytest.raises(DataError, match="test.txt:1"):
        load_dataset(tiny_data)


def test_evaluating_a_model_on_another_dataset_is_a_clear_error(tiny_data, capsys) -> None:
    from tests.conftest import MODEL_DIR
    from train.__main__ import main

    assert main(["--data-dir", str(tiny_data), "evaluate", "--model", str(MODEL_DIR)]) == 1
    assert "3 classes differ from the model's 37" in capsys.readouterr().err


def test_the_feature_cache_key_follows_the_preprocessing_code_and_the_weights(monkeypatch, tiny_data) -> None:
    """A change to preprocess.py or to the weights package must not reuse features made before it."""
    from train.learning import features

    data = load_dataset(tiny_data, 0.25, 0)
    spec = InputSpec(256, 224, (0.5, 0.5, 0.5), (0.5, 0.5, 0.5))
    train = data.splits["train"]
    key = features._cache_key("efficientnet_lite0", spec, 3, 0, data.digest, train)
    assert features.weights_version("efficientnet_lite0") == "0.1.0"
    monkeypatch.setattr(features, "PREPROCESS_CODE", "edited")
    assert features._cache_key("efficientnet_lite0", spec, 3, 0, data.digest, train) != key
    monkeypatch.undo()
    monkeypatch.setattr(features, "weights_version", lambda backbone: "0.2.0")
    assert features._cache_key("efficientnet_lite0", spec, 3, 0, data.digest, train) != key


def test_a_frozen_runs_feature_cache_key_is_the_one_written_before_partial_fine_tuning_went(tiny_data) -> None:
    """The identity a frozen run hashed before commit 6346004 (the cut, no teacher entry): its caches still hit."""
    import hashlib
    import inspect
    import json

    from train.learning import features

    data = load_dataset(tiny_data, 0.25, 0)
    spec, train = InputSpec(256, 224, (0.5, 0.5, 0.5), (0.5, 0.5, 0.5)), data.splits["train"]
    identity = {"backbone": "efficientnet_lite0", "spec": spec.to_dict(), "cut": 9, "view": 1, "data": data.digest}
    identity["names"] = hashlib.sha256("\n".join(s.name for s in train).encode()).hexdigest()
    identity |= {"weights": "0.1.0", "preprocess": features.PREPROCESS_CODE}
    identity["views_code"] = hashlib.sha256(inspect.getsource(features.view_input).encode()).hexdigest()[:16]
    expected = hashlib.sha256(json.dumps(identity, sort_keys=True).encode()).hexdigest()[:24]
    assert features._cache_key("efficientnet_lite0", spec, 9, 1, data.digest, train) == expected


def test_augmentation_does_not_depend_on_the_worker_count(tiny_data) -> None:
    """Each sample's augmentation is seeded by (epoch seed, index), so 0 or 2 loader processes give the
    same batches: a run resumed with another `workers` goes on with the stream its key promises."""
    import torch
    from torch.utils.data import DataLoader

    from train.learning.finetune import Images, train_transform

    spec = InputSpec(80, 64, (0.5, 0.5, 0.5), (0.5, 0.5, 0.5))
    images = Images(load_dataset(tiny_data, 0.25, 0).splits["train"][:6], train_transform(64, spec, "trivial"), spec)
    images.seed = 7

    def batches(workers: int) -> list[torch.Tensor]:
        loader = DataLoader(images, batch_size=3, shuffle=True, generator=torch.Generator().manual_seed(1), num_workers=workers)
        return [x for x, _ in loader]

    single, several = batches(0), batches(2)
    assert all(torch.equal(a, b) for a, b in zip(single, several, strict=True))
    images.seed = 8
    assert not all(torch.equal(a, b) for a, b in zip(single, batches(0), strict=True))  # the seed matters
