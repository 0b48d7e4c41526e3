"""The training pipeline end to end on a tiny real dataset: real Lite0 weights, a real MLflow SQLite
store, real ONNX export and ONNX Runtime. No network, no ../shared."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import mlflow
import numpy as np
import pytest
from mlflow import MlflowClient

from inference import PetClassifier, sha256_file
from preprocess import load_for_model
from tests.conftest import REPO, write_tiny_dataset
from train.__main__ import main as train_main
from train.data.pets import load_dataset
from train.experiments.fit import fit
from train.experiments.tracking import REGISTERED_MODEL
from train.learning.calibrate import fit_temperature
from train.learning.config import Config
from train.learning.features import view_input
from train.learning.model import input_spec
from train.shipping.evaluate import evaluate_classifier
from train.shipping.gates import Gates, int8_accepted

pytestmark = pytest.mark.slow

SWEEP = """
[base]
backbone = "efficientnet_lite0"
epochs = 25
patience = 25
val_fraction = 0.25
cache_dir = "{cache}"
[grid]
lr = [0.003, 0.00001]
"""


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory):
    """One sweep of two configurations, then select (which exports and tests the champion)."""
    root = tmp_path_factory.mktemp("training")
    data_dir = write_tiny_dataset(root / "oxford-iiit-pet")
    (data_dir / "images" / "Checks_1.jpg").unlink()  # a listed image that is absent
    sweep = root / "sweep.toml"
    sweep.write_text(SWEEP.format(cache=root / "cache"))
    with pytest.MonkeyPatch.context() as patch:
        patch.chdir(root)
        patch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{root / 'mlflow.db'}")
        mlflow.set_tracking_uri(f"sqlite:///{root / 'mlflow.db'}")
        assert train_main(["--data-dir", str(data_dir), "sweep", "--config", str(sweep)]) == 0
        assert train_main(["--data-dir", str(data_dir), "select", "--model-dir", str(root / "model")]) == 0
        yield {
            "root": root,
            "data": data_dir,
            "model": root / "model",
            "client": MlflowClient(),
            "cache": root / "cache",
        }
    mlflow.set_tracking_uri(None)


def child_runs(client: MlflowClient) -> list:
    experiment = client.get_experiment_by_name("pet-breeds")
    runs = client.search_runs([experiment.experiment_id], order_by=["attributes.start_time ASC"])
    return [run for run in runs if "mlflow.parentRunId" in run.data.tags]


def test_sweep_logs_child_runs_with_params_metrics_and_artifacts(trained) -> None:
    client = trained["client"]
    runs = child_runs(client)
    assert len(runs) == 2
    run = runs[0]
    params = run.data.params
    assert params["backbone"] == "efficientnet_lite0" and params["spec.crop"] == "224"
    assert params["missing.trainval"] == "1" and params["images.train"] == "17"
    assert params["git_commit"] and params["version.torch"].startswith("2.14")
    history = client.get_metric_history(run.info.run_id, "epoch_val_loss")
    assert len(history) == 25
    artifacts = {
        a.path for folder in ("evaluation", "labels", "config") for a in client.list_artifacts(run.info.run_id, folder)
    }
    assert {
        "evaluation/curves.png",
        "evaluation/confusion_matrix_val.png",
        "evaluation/per_class_accuracy_val.csv",
        "labels/labels.json",
        "config/sweep.toml",
    } <= artifacts
    inputs = client.get_run(run.info.run_id).inputs.dataset_inputs
    assert inputs and inputs[0].dataset.name == "oxford-iiit-pet"


def test_the_model_learns_the_tiny_dataset(trained) -> None:
    accuracies = sorted(run.data.metrics["val_accuracy"] for run in child_runs(trained["client"]))
    assert accuracies[-1] == 1.0
    card = json.loads((trained["model"] / "card.json").read_text())
    assert card["metrics"]["test"]["accuracy"] >= 0.9


def test_second_run_reuses_the_feature_cache(trained) -> None:
    first, second = child_runs(trained["client"])
    assert first.data.metrics["feature_images_computed"] > 0
    assert second.data.metrics["feature_images_computed"] == 0
    assert second.data.metrics["feature_cache_hits"] == 2  # one file per view, validation images inside


def test_select_picks_the_best_version_and_sets_the_alias(trained) -> None:
    client = trained["client"]
    best = max(child_runs(client), key=lambda run: run.data.metrics["val_accuracy"])
    champion = client.get_model_version_by_alias(REGISTERED_MODEL, "champion")
    assert champion.run_id == best.info.run_id
    assert "test_accuracy" in client.get_run(champion.run_id).data.metrics


def test_export_writes_what_serving_reads(trained) -> None:
    model = trained["model"]
    card = json.loads((model / "card.json").read_text())
    assert json.loads((model / "labels.json").read_text()) == ["Stripes", "dots", "Checks"]
    assert card["model"]["sha256"] == sha256_file(model / "model.onnx")
    assert card["model"]["parity"]["max_abs_logit_delta"] <= 1e-3
    assert card["preprocess"] == {"resize_shorter": 256, "crop": 224, "mean": [0.498] * 3, "std": [0.502] * 3}
    assert card["mlflow"]["alias"] == "champion" and card["data"]["missing"] == {"trainval": 1, "test": 0}
    assert 0 <= card["metrics"]["test"]["accuracy"] <= 1
    classifier = PetClassifier.load(model)
    import onnx

    graph = onnx.load(model / "model.onnx")
    assert graph.opset_import[0].version >= 18
    assert graph.graph.input[0].type.tensor_type.shape.dim[0].dim_param  # dynamic batch axis
    batch = np.zeros((3, 3, 224, 224), dtype=np.float32)
    assert classifier.logits(batch).shape == (3, 3)


def test_training_and_serving_see_the_identical_tensor(trained) -> None:
    """Training's cached evaluation view and the app's input are the same array, bit for bit."""
    classifier = PetClassifier.load(trained["model"])
    data = load_dataset(trained["data"], 0.25, 0)
    spec = input_spec(Config())
    assert spec == classifier.spec
    for sample in data.splits["val"][:3]:
        served = __import__("preprocess").model_batch([sample.path], classifier.spec)
        assert np.array_equal(view_input(load_for_model(sample.path, spec), spec, 0, sample.name), served)


def test_same_seed_gives_the_same_metrics(trained, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(trained["root"])
    config = Config(epochs=5, val_fraction=0.25, cache_dir=str(trained["cache"]), seed=3)
    first, second = fit(config, trained["data"]), fit(config, trained["data"])
    assert first.val_loss == second.val_loss and first.val_accuracy == second.val_accuracy


def test_bad_config_key_fails_with_its_name(tmp_path: Path) -> None:
    config = tmp_path / "bad.toml"
    config.write_text("learning_rate = 0.1\n")
    done = subprocess.run(
        [sys.executable, "-m", "train", "fit", "--config", str(config)], cwd=REPO, capture_output=True, text=True
    )
    assert done.returncode == 2
    assert "Unknown config key 'learning_rate'" in done.stderr


def test_evaluate_goes_through_the_serving_code(trained, capsys: pytest.CaptureFixture) -> None:
    from train.shipping.evaluate import evaluate

    assert (
        train_main(
            ["--data-dir", str(trained["data"]), "evaluate", "--model", str(trained["model"]), "--split", "test"]
        )
        == 0
    )
    printed = json.loads(capsys.readouterr().out)
    assert set(printed) >= {"accuracy", "top5_accuracy", "per_class", "per_species", "confusion_matrix_png"}
    assert Path(printed["confusion_matrix_png"]).is_file()
    summary = evaluate(trained["model"], "test", trained["data"])
    classifier = PetClassifier.load(trained["model"], variant="fp32")
    data = load_dataset(trained["data"], 0.25, 0)
    served = [classifier.predict(s.path).top[0][0] for s in data.splits["test"]]
    assert served == [classifier.names[i] for i in summary["logits"].argmax(1)]
    assert printed["accuracy"] == summary["accuracy"]


def test_select_calibrates_and_gates_the_int8_model(trained) -> None:
    card = json.loads((trained["model"] / "card.json").read_text())
    assert card["calibration"]["temperature"] > 0 and "threshold" in card["not_sure"]
    assert card["not_sure"]["non_pet"]["images"] == 10
    int8 = card["int8"]
    gate, fidelity = Gates.load().int8, int8["fidelity"]
    assert fidelity["images"] == 23  # every trainval photo present (one listed file is absent): never test
    assert int8["accepted"] == int8_accepted(fidelity["top1_agreement"], fidelity["probability_delta"], gate)
    assert (trained["model"] / "model.int8.onnx").exists() == int8["accepted"]
    assert {"accuracy", "ece"} <= set(int8["test"]) and int8["latency_ms_1_thread"]["int8"] > 0  # reported
    assert card["metrics"]["test"]["variant"] == "fp32"  # the reference; the host picks what serves
    calibration = int8["calibration"]  # int8's own temperature, on the photos fp32's was fitted on
    assert calibration["fitted_on"] == card["calibration"]["fitted_on"] == "val" and calibration["temperature"] > 0
    assert {"ece_after", "ece_at_fp32_temperature"} <= set(calibration) and "ece_at_fp32_temperature" in int8["test"]
    if int8["accepted"]:  # on the validation path these are int8's own logits, through the serving code
        served = PetClassifier.load(trained["model"], variant="int8")
        val = evaluate_classifier(served, load_dataset(trained["data"], 0.25, 0), "val")
        assert calibration["temperature"] == pytest.approx(fit_temperature(val["logits"], val["labels"]), rel=1e-4)
        assert served.temperature == calibration["temperature"]


def test_requantizing_a_model_folder_follows_the_gate(trained, tmp_path: Path) -> None:
    """`python -m train int8` on a copy of the folder: the int8 entry, its temperature included, is made
    again without the registry."""
    import shutil

    folder = tmp_path / "model"
    shutil.copytree(trained["model"], folder)
    (folder / "model.int8.onnx").unlink(missing_ok=True)
    assert train_main(["--data-dir", str(trained["data"]), "int8", "--model-dir", str(folder)]) == 0
    card = json.loads((folder / "card.json").read_text())
    assert (folder / "model.int8.onnx").exists() == card["int8"]["accepted"]
    assert PetClassifier.load(folder).variant in ("fp32", "int8")
    selected = json.loads((trained["model"] / "card.json").read_text())["int8"]["calibration"]["temperature"]
    assert card["int8"]["calibration"]["temperature"] == pytest.approx(selected, rel=1e-3)  # fitted again, alike


def test_the_parity_gate_refuses_non_finite_outputs(trained, tmp_path: Path) -> None:
    """A model whose outputs are NaN on both sides fails the gate (it passed before: NaN compares false,
    and argmax of a NaN row is 0 on both sides)."""
    import torch

    from train.shipping.export import ExportError, check_parity, model_version, registered_net, to_onnx

    model = registered_net(model_version(alias="champion"))
    spec = PetClassifier.load(trained["model"]).spec
    samples = load_dataset(trained["data"], 0.25, 0).splits["val"][:4]
    with torch.no_grad():
        model.head[-1].bias.fill_(float("nan"))
    to_onnx(model, spec, tmp_path / "nan.onnx")
    with pytest.raises(ExportError, match="not all finite"):
        check_parity(model, tmp_path / "nan.onnx", spec, samples, Gates.load().parity)


def test_cv_on_cached_features_extracts_once_and_keeps_every_epoch(tiny_data, tmp_path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")
    mlflow.set_tracking_uri(f"sqlite:///{tmp_path / 'mlflow.db'}")
    config = tmp_path / "cv.toml"
    config.write_text('backbone = "efficientnet_lite0"\nfolds = 2\nepochs = 5\npatience = 0\nlr = 0.003\n')
    assert train_main(["--data-dir", str(tiny_data), "cv", "--config", str(config)]) == 0
    runs = {run.info.run_name: run for run in child_runs(MlflowClient())}
    assert set(runs) == {"fold-1", "fold-2", "all"}
    computed = [runs[name].data.metrics["feature_images_computed"] for name in ("fold-1", "fold-2", "all")]
    assert computed[0] > 0 and computed[1:] == [0, 0]  # one extraction serves every fold and the final run
    history = MlflowClient().get_metric_history(runs["fold-1"].info.run_id, "epoch_val_loss")
    assert len(history) == 5  # no early stopping: the held-out fold does not choose the epoch
    assert runs["all"].data.tags["cv.parent_run_id"] and "cv_accuracy" in runs["all"].data.metrics
    assert not (tmp_path / "cache" / "checkpoints").exists()  # seconds a run: nothing to resume, no 20-40 MB left
    mlflow.set_tracking_uri(None)


def test_cv_on_cached_features_refuses_early_stopping(tiny_data, tmp_path, capsys) -> None:
    config = tmp_path / "cv.toml"
    config.write_text('backbone = "efficientnet_lite0"\nfolds = 2\npatience = 3\n')
    assert train_main(["--data-dir", str(tiny_data), "cv", "--config", str(config)]) != 0
    assert "needs patience = 0" in capsys.readouterr().err


def test_checkpoints_only_refuses_a_frozen_backbone_in_one_line(tiny_data, tmp_path, capsys) -> None:
    """`cv --checkpoints-only` is for end-to-end runs on a GPU box; on a frozen backbone it wrote checkpoints
    that the next `cv --resume` crashed on with a KeyError."""
    config = tmp_path / "cv.toml"
    config.write_text(f'backbone = "efficientnet_lite0"\nfolds = 2\npatience = 0\ncheckpoint_dir = "{tmp_path}"\n')
    assert train_main(["--data-dir", str(tiny_data), "cv", "--config", str(config), "--checkpoints-only"]) == 2
    refusal = capsys.readouterr().err.strip()
    assert "cv --checkpoints-only is for end_to_end configs" in refusal and "\n" not in refusal
    assert not list(tmp_path.glob("*.pt"))
