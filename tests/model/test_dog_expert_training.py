"""The dog expert's pipeline end to end on a tiny real dataset (one cat breed, two dog breeds ImageNet knows):
`cv` with species = "dog" registers it as pet-dog-expert, tensors only; `expert` ships it beside a breed
model that `select` shipped; the served pair answers as training-time evaluation does; a later `select`
keeps it. Real Lite0 weights, a real SQLite MLflow store, real ONNX files. No network, no ../shared."""

from __future__ import annotations

import json

import mlflow
import numpy as np
import onnx
import pytest
import torch
from mlflow import MlflowClient

from inference import ModelCard, PetClassifier, sha256_file
from tests.conftest import REPO, write_tiny_dataset
from train.__main__ import main as train_main
from train.data.pets import load_dataset
from train.experiments.tracking import EXPERT_MODEL, REGISTERED_MODEL, WEIGHTS
from train.shipping.evaluate import evaluate_classifier

pytestmark = pytest.mark.slow

CLASSES = [("Stripes", 1), ("beagle", 2), ("pug", 2)]  # Oxford names: the dogs are ImageNet classes
BREED_MODEL = """
backbone = "efficientnet_lite0"
epochs = 15
patience = 0
lr = 0.003
folds = 2
cache_dir = "{cache}"
"""
EXPERT = (
    BREED_MODEL
    + """
species = "dog"
imagenet_init = true
distill_weight = 1.0
experiment = "pet-dog-expert"
"""
)


@pytest.fixture(scope="module")
def shipped(tmp_path_factory: pytest.TempPathFactory):
    """A breed model cross-validated and selected, then an expert cross-validated and shipped beside it."""
    root = tmp_path_factory.mktemp("expert")
    data = write_tiny_dataset(root / "oxford-iiit-pet", per_class=15, classes=CLASSES)
    configs = {name: root / f"{name}.toml" for name in ("breeds", "expert")}
    configs["breeds"].write_text(BREED_MODEL.format(cache=root / "cache"))
    configs["expert"].write_text(EXPERT.format(cache=root / "cache"))
    model = root / "model"
    with pytest.MonkeyPatch.context() as patch:
        patch.chdir(root)
        patch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{root / 'mlflow.db'}")
        mlflow.set_tracking_uri(f"sqlite:///{root / 'mlflow.db'}")
        for name in ("breeds", "expert"):
            assert train_main(["--data-dir", str(data), "cv", "--config", str(configs[name])]) == 0
        assert train_main(["--data-dir", str(data), "select", "--model-dir", str(model)]) == 0
        assert MlflowClient().get_registered_model(EXPERT_MODEL).aliases == {}  # nothing moves before it ships
        assert train_main(["--data-dir", str(data), "expert", "--model-dir", str(model)]) == 0
        yield {"root": root, "data": data, "model": model, "client": MlflowClient()}
    mlflow.set_tracking_uri(None)


def test_the_expert_registers_tensors_only_under_its_own_name(shipped) -> None:
    client = shipped["client"]
    (version,) = client.search_model_versions(f"name='{EXPERT_MODEL}'")
    assert client.get_registered_model(EXPERT_MODEL).aliases == {"champion": version.version}
    assert len(client.search_model_versions(f"name='{REGISTERED_MODEL}'")) == 1  # the breed model's own
    uri = f"models:/{EXPERT_MODEL}/{version.version}"
    assert [entry.path for entry in mlflow.artifacts.list_artifacts(artifact_uri=uri)] == [WEIGHTS]
    weights = torch.load(mlflow.artifacts.download_artifacts(f"{uri}/{WEIGHTS}"), weights_only=True)
    assert weights["head.3.weight"].shape[0] == 2  # one row per dog breed
    assert json.loads(client.get_run(version.run_id).data.params["images.test"]) == 10  # dogs only


def test_the_card_describes_both_models(shipped) -> None:
    card = ModelCard.load(shipped["model"] / "card.json")
    expert = card.expert
    assert expert.labels == ["beagle", "pug"] and expert.species == "dog"
    assert expert.sha256 == sha256_file(shipped["model"] / expert.file)
    assert expert.parity["max_abs_logit_delta"] < 1e-3 and expert.parity["images"] > 0
    assert expert.calibration["fitted_on"] == "out-of-fold" and expert.metrics["cv"]["folds"] == 2
    assert expert.metrics["cv"]["images"] == 20 and "test_breed_model_alone" in expert.metrics
    assert expert.int8["accepted"] == (shipped["model"] / "expert.int8.onnx").exists()
    routing = card.metrics["test"]["routing"]
    assert 0 <= routing["species_accuracy"] <= 1 and card.metrics["test"]["data_digest"]


def test_the_onnx_files_hold_the_graph_and_weights_and_no_notes_of_where_they_were_built(shipped) -> None:
    """The exporter notes each node's source file and line: dropped, so a file's bytes do not change with
    the checkout's path or the training code's layout, and no build machine's paths ship."""
    for name in ("model.onnx", "expert.onnx"):
        path = shipped["model"] / name
        assert not any(node.metadata_props for node in onnx.load(path).graph.node), name
        assert str(REPO).encode() not in path.read_bytes(), name


def test_training_time_evaluation_is_what_the_pair_serves(shipped) -> None:
    classifier = PetClassifier.load(shipped["model"], variant="fp32")
    data = load_dataset(shipped["data"], classifier.card.data["val_fraction"], classifier.card.data["seed"])
    tested = evaluate_classifier(classifier, data, "test")
    for sample, row in zip(data.splits["test"], tested["probabilities"], strict=True):
        prediction = classifier.predict(sample.path, top_k=3)
        assert prediction.top[0][0] == classifier.names[int(row.argmax())]
        assert prediction.top[0][1] == pytest.approx(float(row.max()), rel=1e-6)
    assert tested["routed"].any(), "no tiny test photo went to the expert: the test would prove nothing"
    np.testing.assert_allclose(tested["probabilities"].sum(1), 1.0, rtol=1e-5)


def test_shipping_the_expert_again_keeps_the_breed_models_own_figures(shipped) -> None:
    """The second `expert` starts from a card whose test figures are the first pair's: the breed model's
    own, kept in the expert entry, must stay its own, not become that pair's."""
    model, data = shipped["model"], shipped["data"]
    first = ModelCard.load(model / "card.json")
    assert train_main(["--data-dir", str(data), "expert", "--model-dir", str(model)]) == 0
    again = ModelCard.load(model / "card.json")
    alone = first.expert.metrics["test_breed_model_alone"]
    assert again.expert.metrics["test_breed_model_alone"] == alone != {k: first.metrics["test"][k] for k in alone}
    assert again.metrics["test"]["accuracy"] == first.metrics["test"]["accuracy"]  # the same pair, the same photos


def test_a_later_select_keeps_the_expert(shipped) -> None:
    model, data = shipped["model"], shipped["data"]
    before = ModelCard.load(model / "card.json").expert
    assert train_main(["--data-dir", str(data), "select", "--model-dir", str(model), "--version", "1"]) == 0
    after = ModelCard.load(model / "card.json").expert
    assert after.sha256 == before.sha256 == sha256_file(model / after.file)
    assert "test_breed_model_alone" not in after.metrics  # that figure was of the breed model it replaced
    assert PetClassifier.load(model, variant="fp32").expert is not None
