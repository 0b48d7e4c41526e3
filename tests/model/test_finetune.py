"""End-to-end fine-tuning on generated images (CPU, real Lite0 weights): the loss falls, a killed run
resumes from its last epoch to the same result, and `cv` logs folds, out-of-fold predictions and a
registered model that `select` calibrates on out-of-fold logits."""

from __future__ import annotations

import json

import mlflow
import numpy as np
import onnxruntime as ort
import pytest
import torch
from mlflow import MlflowClient

import train.learning.finetune
from preprocess import model_batch
from train.__main__ import main as train_main
from train.data.pets import load_dataset
from train.experiments.tracking import OOF_LOGITS, load_logits
from train.learning.config import Config
from train.learning.finetune import fine_tune_run
from train.learning.model import input_spec
from train.shipping.export import to_onnx

pytestmark = pytest.mark.slow

TINY = dict(end_to_end=True, image_size=64, crop_ratio=1.0, batch_size=8, workers=0, augment="basic", val_fraction=0.25)


def run(config: Config, data, resume: bool = False):
    return fine_tune_run(config, data.classes, data.splits["train"], data.splits["val"], data.digest, resume, keep=True)


def test_loss_falls_and_held_out_logits_are_what_serving_computes(tiny_data, tmp_path) -> None:
    config = Config(**TINY, epochs=4, lr=3e-3, checkpoint_dir=str(tmp_path / "ckpt"))
    data = load_dataset(tiny_data, 0.25, 0)
    outcome = run(config, data)
    losses = [row["train_loss"] for row in outcome.history]
    assert losses[-1] < losses[0] * 0.8
    assert outcome.history[-1]["val_loss"] < outcome.history[0]["val_loss"]

    # The exported model, fed by the serving code, reproduces training-time evaluation: no skew.
    spec = input_spec(config)
    to_onnx(outcome.model, spec, tmp_path / "model.onnx")
    session = ort.InferenceSession(str(tmp_path / "model.onnx"), providers=["CPUExecutionProvider"])
    served = session.run(["logits"], {"image": model_batch([s.path for s in data.splits["val"]], spec)})[0]
    np.testing.assert_allclose(outcome.holdout_logits, served, rtol=0, atol=1e-3)


def test_a_killed_run_resumes_from_its_last_epoch_to_the_same_result(tiny_data, tmp_path, monkeypatch) -> None:
    data = load_dataset(tiny_data, 0.25, 0)
    whole = run(Config(**TINY, epochs=3, ema_decay=0.9, checkpoint_dir=str(tmp_path / "whole")), data)

    config = Config(**TINY, epochs=3, ema_decay=0.9, checkpoint_dir=str(tmp_path / "killed"))
    save = train.learning.finetune.save_checkpoint

    def save_then_die(state: dict, path) -> None:
        save(state, path)
        if state["epoch"] == 2:
            raise KeyboardInterrupt("killed after epoch 2")

    monkeypatch.setattr(train.learning.finetune, "save_checkpoint", save_then_die)
    with pytest.raises(KeyboardInterrupt):
        run(config, data)
    monkeypatch.setattr(train.learning.finetune, "save_checkpoint", save)
    assert torch.load(next((tmp_path / "killed").glob("*.pt")), weights_only=True)["epoch"] == 2

    resumed = run(config, data, resume=True)
    assert [row["epoch"] for row in resumed.history] == [1, 2, 3]
    assert resumed.history == whole.history
    np.testing.assert_allclose(resumed.holdout_logits, whole.holdout_logits, rtol=0, atol=1e-5)
    for name, value in whole.model.state_dict().items():
        torch.testing.assert_close(resumed.model.state_dict()[name], value, rtol=0, atol=1e-6)


def test_another_configuration_never_resumes_from_this_ones_checkpoint(tiny_data, tmp_path) -> None:
    data = load_dataset(tiny_data, 0.25, 0)
    first = run(Config(**TINY, epochs=1, lr=1e-3, checkpoint_dir=str(tmp_path)), data)
    again = run(Config(**TINY, epochs=1, lr=1e-3, checkpoint_dir=str(tmp_path)), data, resume=True)
    other = run(Config(**TINY, epochs=1, lr=2e-3, checkpoint_dir=str(tmp_path)), data, resume=True)
    assert again.history == first.history and again.images_per_second == 0  # finished: nothing retrained
    assert other.images_per_second > 0 and len(list(tmp_path.glob("*.pt"))) == 2


def test_a_run_is_never_resumed_after_its_pixels_change(tiny_data, monkeypatch) -> None:
    """The checkpoint key holds the dataset digest (the images' bytes), the preprocessing code and the
    pretrained weights' version, not only the images' names: `--resume` after any of them changed trains anew."""
    data = load_dataset(tiny_data, 0.25, 0)
    config, trained_on, holdout = Config(**TINY, epochs=1), data.splits["train"], data.splits["val"]

    def path(digest: str = data.digest):
        return train.learning.finetune.checkpoint_path(config, data.classes, trained_on, holdout, digest)

    before = path()
    assert path("other bytes, same names") != before
    monkeypatch.setattr(train.learning.finetune, "PREPROCESS_CODE", "edited")
    assert path() != before
    monkeypatch.undo()
    monkeypatch.setattr(train.learning.finetune, "weights_version", lambda backbone: "0.2.0")
    assert path() != before


def test_cv_logs_folds_and_select_calibrates_on_out_of_fold_logits(tiny_data, tmp_path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    mlflow.set_tracking_uri(uri)
    config = tmp_path / "cv.toml"
    config.write_text(
        'backbone = "efficientnet_lite0"\nend_to_end = true\nimage_size = 64\ncrop_ratio = 1.0\nepochs = 2\n'
        f'folds = 2\nbatch_size = 8\nworkers = 0\nimagenet_init = true\ncheckpoint_dir = "{tmp_path / "ckpt"}"\n'
        'balance = "loss"\n'
    )
    data = ["--data-dir", str(tiny_data)]
    assert train_main([*data, "cv", "--config", str(config), "--checkpoints-only"]) == 0  # as on a GPU box
    assert not (tmp_path / "mlflow.db").exists()  # nothing tracked yet
    assert train_main([*data, "cv", "--config", str(config), "--resume"]) == 0  # logs from the checkpoints
    client = MlflowClient()
    experiment = client.get_experiment_by_name("pet-breeds")
    runs = client.search_runs([experiment.experiment_id])
    parent = next(r for r in runs if r.info.run_name.startswith("cv:"))
    children = {r.info.run_name: r for r in runs if r.data.tags.get("mlflow.parentRunId") == parent.info.run_id}
    assert set(children) == {"fold-1", "fold-2", "all"}
    assert {"cv_accuracy", "cv_accuracy_std", "cv_accuracy_cat", "cv_accuracy_dog"} <= set(parent.data.metrics)
    assert "cv_mean_per_class_accuracy" in parent.data.metrics
    assert [a.path for a in client.list_artifacts(parent.info.run_id, "cv")] == ["cv/oof.npz", "cv/per_class.csv"]
    oof_names = load_logits(parent.info.run_id, OOF_LOGITS)[0]
    assert len(oof_names) == 24
    assert len(client.get_metric_history(children["fold-1"].info.run_id, "epoch_val_loss")) == 2
    final = children["all"]
    assert final.data.metrics["cv_accuracy"] == parent.data.metrics["cv_accuracy"]
    assert final.data.tags["cv.parent_run_id"] == parent.info.run_id
    assert [v.run_id for v in client.search_model_versions("name='pet-breed-classifier'")] == [final.info.run_id]

    assert train_main([*data, "select", "--model-dir", str(tmp_path / "model")]) == 0
    card = json.loads((tmp_path / "model" / "card.json").read_text())
    assert card["calibration"]["fitted_on"] == "out-of-fold" and card["metrics"]["cv"]["folds"] == 2
    assert card["int8"]["calibration"]["fitted_on"] == "out-of-fold"  # its own temperature, on the same photos
    assert card["metrics"]["cv"]["accuracy"] == pytest.approx(parent.data.metrics["cv_accuracy"])
    mlflow.set_tracking_uri(None)
