"""The ImageNet teacher on real Lite0 weights: the model starts as the ImageNet classifier, the frozen
backbone's cached features are the untouched network's, and a distilling recipe runs through cross-validation
(with retention) and select to an ONNX model that passes the parity gate."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import mlflow
import numpy as np
import pytest
import torch
from mlflow import MlflowClient

from inference import ModelCard
from preprocess import load_for_model
from tests.conftest import write_tiny_dataset
from tests.data.test_extra import write_extra
from train.__main__ import main as train_main
from train.data.imagenet import IMAGENET_CLASSES
from train.data.pets import load_dataset
from train.learning.backbones import get_backbone
from train.learning.config import Config
from train.learning.features import CacheStats, features, view_input
from train.learning.model import build, seed_everything

pytestmark = pytest.mark.slow

DOGS = [("Stripes", 1), ("beagle", 2), ("pug", 2)]  # two dog breeds ImageNet knows, and a made-up cat
CONFIG = Config(backbone="efficientnet_lite0", image_size=96, imagenet_init=True)


@pytest.fixture(scope="module")
def dogs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_tiny_dataset(tmp_path_factory.mktemp("dogs") / "oxford-iiit-pet", classes=DOGS)


def untouched(image: torch.Tensor) -> torch.Tensor:
    """The pretrained ImageNet network, freshly loaded: the teacher as it was published."""
    layers, classifier = get_backbone(CONFIG.backbone).build(CONFIG.image_size)
    with torch.no_grad():
        return classifier(torch.nn.Sequential(*layers).eval()(image).mean((2, 3)))


def test_a_model_with_imagenet_rows_starts_as_the_imagenet_classifier() -> None:
    net = build(CONFIG, [name for name, _ in DOGS]).net.eval()
    image = torch.randn(2, 3, 96, 96)
    with torch.no_grad():
        logits = net(image)
    imagenet = [IMAGENET_CLASSES[breed][1] for breed in ("beagle", "pug")]
    assert torch.allclose(logits[:, 1:], untouched(image)[:, imagenet], atol=1e-4)


def test_the_frozen_part_never_trains() -> None:
    """Whatever `.train()` asks, the frozen backbone (all of it on the cached path, the stem end to end) keeps
    its batch-norm statistics and weights; end to end, the rest trains."""
    classes = [name for name, _ in DOGS]
    for config, trains in ((CONFIG, False), (replace(CONFIG, end_to_end=True), True)):
        net = build(config, classes).net
        net.train()
        assert not any(layer.training for layer in net.prefix.modules())
        assert not any(p.requires_grad for p in net.prefix.parameters())
        assert any(p.requires_grad for p in net.tail.parameters()) == trains == bool(len(net.tail))


def test_cached_teacher_features_give_the_untouched_networks_logits(dogs: Path, tmp_path: Path) -> None:
    data = load_dataset(dogs, 0.25, 0)
    samples = data.splits["train"][:5]
    net, spec, imagenet = build(CONFIG, data.classes)
    stats = CacheStats()
    for _ in range(2):  # computed, then read back from disk
        cached = features(net.prefix, CONFIG.backbone, spec, samples, 2, data.digest, tmp_path, stats)
    assert stats.hits == 1 and stats.computed_images == len(samples)
    views = np.concatenate([view_input(load_for_model(s.path, spec), spec, 2, s.name) for s in samples])
    with torch.no_grad():
        from_cache = imagenet(cached.flatten(1))
    assert torch.allclose(from_cache, untouched(torch.from_numpy(views)), atol=1e-4)


def test_the_recipe_runs_through_cv_with_retention_and_ships_with_parity(dogs: Path, tmp_path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")
    mlflow.set_tracking_uri(f"sqlite:///{tmp_path / 'mlflow.db'}")
    recipe = tmp_path / "teacher.toml"
    recipe.write_text(
        'backbone = "efficientnet_lite0"\nimage_size = 96\nimagenet_init = true\n'
        'views = 1\nepochs = 1\npatience = 0\nfolds = 2\nbalance = "sqrt"\n'
        "distill_weight = 1.0\n"
    )
    assert train_main(["--data-dir", str(dogs), "cv", "--config", str(recipe)]) == 0
    client = MlflowClient()
    parent = next(r for r in client.search_runs(["1"]) if r.info.run_name == "cv:teacher")
    found = parent.data.metrics
    trainval_dogs = 2 * 8  # beagle and pug: 8 trainval photos each (every third photo is a test photo)
    assert found["cv_retention_photos"] == trainval_dogs
    assert 0.0 <= found["cv_retention_student"] <= 1.0 and 0.0 <= found["cv_retention_teacher"] <= 1.0
    write_extra(dogs.parent / "stanford-dogs-extra", {"beagle": 3, "pug": 2, "Stripes": 2})  # retention photos
    assert train_main(["--data-dir", str(dogs), "select", "--model-dir", str(tmp_path / "model")]) == 0
    card = ModelCard.load(tmp_path / "model" / "card.json")
    assert card.model.parity["max_abs_logit_delta"] <= 1e-3
    assert card.model.teacher == {"distill_weight": 1.0, "distill_temperature": 2.0}
    assert card.metrics["cv"]["retention_photos"] == trainval_dogs
    retained = card.metrics["retention"]
    assert retained["photos"] == 5 and set(retained["per_breed"]) == {"beagle", "pug"}  # the cat is not asked
    mlflow.set_tracking_uri(None)


def test_a_frozen_backbone_distils_from_its_own_pooled_features(dogs: Path, tmp_path: Path, mlflow_store) -> None:
    """With no trainable tail the cached pooled activations are the teacher's features: distillation on a
    frozen backbone (the issue's first ablation) runs, and its term is in the loss."""

    from train.experiments.fit import train_cached
    from train.learning.model import input_spec

    data = load_dataset(dogs, 0.25, 0)
    config = Config(backbone="efficientnet_lite0", image_size=64, crop_ratio=1.0, views=1, epochs=1, patience=0)
    config = replace(config, imagenet_init=True, distill_weight=5.0, cache_dir=str(tmp_path / "cache"))
    mlflow.set_experiment(config.experiment)  # this store's: MLflow keeps the last test's experiment id
    with mlflow.start_run():
        seed_everything(0)  # the same random head rows for both, whatever ran before
        taught, _ = train_cached(config, input_spec(config), data)
        seed_everything(0)
        plain, _ = train_cached(replace(config, distill_weight=0.0), input_spec(config), data)
    assert taught.history[0]["train_loss"] > plain.history[0]["train_loss"]
    _, _, imagenet = build(config, data.classes)
    assert taught.holdout_teacher.shape == (len(data.splits["val"]), imagenet.out_features)


def test_retention_is_not_measured_on_photos_it_cannot_speak_for(tmp_path: Path) -> None:
    """No photo of a dog breed ImageNet knows (cats only, or every listed file missing): nothing to measure,
    not a crash at the end of select. A model trained on the folder: its photos measure memory, not what
    was kept, so no figure under retention's name."""
    from inference import PetClassifier
    from tests.conftest import MODEL_DIR
    from train.shipping import retention

    classifier = PetClassifier.load(MODEL_DIR, variant="fp32")
    cats = write_extra(tmp_path / "cats" / retention.FOLDER, {"Persian": 2})
    assert retention.measure(classifier, cats) is None
    dogs = write_extra(tmp_path / "dogs" / retention.FOLDER, {"beagle": 2})
    assert retention.measure(classifier, dogs)["photos"] == 2
    counted = classifier.card.data | {"images": classifier.card.data["images"] | {"extra": 2}}
    trained = classifier.with_card(replace(classifier.card, data=counted))  # a card from before extra folders retired
    assert retention.measure(trained, dogs) is None


def test_the_cached_path_computes_what_the_served_network_does(dogs: Path, tmp_path: Path) -> None:
    """Training runs the head on the frozen backbone's cached features; serving runs the whole network.
    With the head moved from where it started, a skipped or doubled part would show."""
    from preprocess import model_batch
    from train.experiments.fit import evaluate_logits

    data = load_dataset(dogs, 0.25, 0)
    samples = data.splits["train"][:4]
    net, spec, _ = build(CONFIG, data.classes)
    with torch.no_grad():
        net.head[-1].weight.normal_(0.0, 0.05)
    cached = features(net.prefix, CONFIG.backbone, spec, samples, 0, data.digest, tmp_path, CacheStats())
    trained = evaluate_logits(net.head, cached)
    with torch.no_grad():
        served = net.eval()(torch.from_numpy(model_batch([s.path for s in samples], spec)))
    torch.testing.assert_close(trained, served, rtol=1e-4, atol=1e-4)  # both float32 throughout


def test_retention_of_a_model_folder_from_the_command_line(tmp_path: Path, capsys) -> None:
    from tests.conftest import MODEL_DIR

    photos = write_extra(tmp_path / "dogs", {"beagle": 3, "pug": 2, "Persian": 2})
    assert train_main(["retention", "--model", str(MODEL_DIR), "--photos", str(photos)]) == 0
    found = json.loads(capsys.readouterr().out)
    assert found["photos"] == 5 and set(found["per_breed"]) == {"beagle", "pug"}  # a cat is not the teacher's
    assert 0.0 <= found["student"] <= 1.0 and 0.0 <= found["teacher"] <= 1.0


def test_retention_refuses_in_one_line_what_it_cannot_measure(tmp_path: Path, capsys) -> None:
    from tests.conftest import MODEL_DIR

    assert train_main(["retention", "--model", str(MODEL_DIR), "--photos", str(tmp_path / "absent")]) == 1
    assert "No retention measured on" in capsys.readouterr().err
    photos = write_extra(tmp_path / "dogs", {"beagle": 2})
    (photos / "images" / "beagle" / "x_0.jpg").write_bytes(b"not a photo")
    assert train_main(["retention", "--model", str(MODEL_DIR), "--photos", str(photos)]) == 1
    assert "A retention photo in" in capsys.readouterr().err


def test_the_retention_teacher_is_the_untouched_network_on_the_serving_tensor(dogs: Path) -> None:
    from preprocess import model_batch
    from train.learning.model import input_spec
    from train.shipping.retention import teacher_logits

    samples = load_dataset(dogs, 0.25, 0).splits["train"][:4]
    spec = input_spec(CONFIG)
    expected = untouched(torch.from_numpy(model_batch([s.path for s in samples], spec)))
    assert np.allclose(teacher_logits(CONFIG.backbone, spec, samples), expected.numpy(), atol=1e-4)
