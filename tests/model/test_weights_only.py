"""Nothing the training side loads can run code: a registered version is a file of tensors that `export`
loads into the network `build_net` makes from its run's JSON config, with the parity gate as before; a
pickled version from before is refused unread; a checkpoint holding anything but tensors and plain values
is refused. The pickles here would make a folder when unpickled, so a load that ran them would show."""

from __future__ import annotations

import json
import os
import zipfile
from pathlib import Path

import mlflow
import numpy as np
import onnxruntime as ort
import pytest
import torch
from mlflow import MlflowClient

from preprocess import model_batch
from train.__main__ import main as train_main
from train.data.pets import load_dataset
from train.experiments.fit import fit
from train.experiments.tracking import HOLDOUT_LOGITS, REGISTERED_MODEL, RUN_CONFIG, WEIGHTS, load_logits, log_model
from train.learning.config import Config
from train.learning.finetune import CheckpointError, load_checkpoint, save_checkpoint
from train.learning.model import build_net
from train.shipping.export import ExportError, export, model_version, registered_net
from train.shipping.gates import Gates


class Tripwire(torch.nn.Linear):
    """A module whose pickle, when loaded, makes a folder: what any code in a pickle could do instead."""

    def __init__(self, marker: Path) -> None:
        super().__init__(2, 2)
        self.marker = str(marker)

    def __reduce_ex__(self, protocol: int):
        return os.mkdir, (self.marker,)


class Note:
    """A plain object of the project's own: not code that runs, but not a tensor or a plain value either."""


def pickled_payload(model_dir: Path) -> bytes:
    with zipfile.ZipFile(model_dir / "data" / "model.pth") as archive:
        return b"".join(archive.read(name) for name in archive.namelist() if name.endswith(".pkl"))


@pytest.mark.slow
def test_a_registered_version_exports_through_build_net_with_the_same_outputs(
    tiny_data: Path, mlflow_store: Path, tmp_path: Path
) -> None:
    config = Config(epochs=3, patience=0, val_fraction=0.25, cache_dir=str(tmp_path / "cache"))
    result = fit(config, tiny_data)
    uri = f"models:/{REGISTERED_MODEL}/{result.version}"
    assert [entry.path for entry in mlflow.artifacts.list_artifacts(artifact_uri=uri)] == [WEIGHTS]
    weights = torch.load(mlflow.artifacts.download_artifacts(f"{uri}/{WEIGHTS}"), weights_only=True)
    assert weights and all(isinstance(value, torch.Tensor) for value in weights.values())
    assert mlflow.artifacts.load_dict(f"runs:/{result.run_id}/{RUN_CONFIG}") == json.loads(
        json.dumps(config.as_params())
    )

    card = export(version=result.version, out_dir=tmp_path / "model", data_dir=tiny_data)
    assert card.model.parity["max_abs_logit_delta"] <= Gates.load().parity.max_abs_logit_delta
    assert card.mlflow["run_id"] == model_version(result.version).run_id == result.run_id

    # The ONNX model gives the logits the trained network gave its held-out images when it was trained.
    names, trained, _ = load_logits(result.run_id, HOLDOUT_LOGITS)
    paths = {sample.name: sample.path for sample in load_dataset(tiny_data, 0.25, 0).splits["val"]}
    batch = model_batch([paths[name] for name in names], card.preprocess)
    session = ort.InferenceSession(str(tmp_path / "model" / "model.onnx"), providers=["CPUExecutionProvider"])
    np.testing.assert_allclose(session.run(["logits"], {"image": batch})[0], trained, rtol=0, atol=1e-3)


@pytest.mark.slow
def test_a_pickled_version_is_refused_and_never_unpickled(
    mlflow_store: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    marker = tmp_path / "the pickle ran"
    mlflow.set_experiment("pet-breeds")
    with mlflow.start_run():  # how versions were registered before: the whole module, pickled
        mlflow.pytorch.log_model(  # noqa: TID251
            Tripwire(marker),
            name="model",
            serialization_format="pickle",  # pickle-ok: the legacy version this test shows export refuses
            registered_model_name=REGISTERED_MODEL,
            pip_requirements=[],  # no requirement inference, which would load the model to find them
        )
    legacy = Path(mlflow.artifacts.download_artifacts(artifact_uri=f"models:/{REGISTERED_MODEL}/1"))
    assert b"mkdir" in pickled_payload(legacy) and not marker.exists()  # armed, and logging did not set it off

    previous = tmp_path / "model"
    previous.mkdir()
    (previous / "card.json").write_text("{}")
    assert train_main(["export", "--version", "1", "--model-dir", str(previous)]) == 1
    errors = [line for line in capsys.readouterr().err.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and errors[0].startswith(f"error: {REGISTERED_MODEL} version 1 is a pickled torch model")
    error = errors[0]
    assert "export never unpickles: re-register it by training it again with `python -m train fit`" in error
    assert not marker.exists()
    assert [path.name for path in previous.iterdir()] == ["card.json"]  # the model folder is left as it was


@pytest.mark.slow
@pytest.mark.parametrize("tampered", ["classes", "weights", "a list"])
def test_weights_that_do_not_fit_or_hold_an_object_are_refused(
    mlflow_store: Path, tmp_path: Path, tampered: str
) -> None:
    """Every key and shape must match what `build_net` makes (strict), and the file must be tensors only."""
    config, classes, marker = Config(), ["Stripes", "dots", "Checks"], tmp_path / "the pickle ran"
    net = build_net(config, classes)[0]
    mlflow.set_experiment("pet-breeds")
    with mlflow.start_run():
        mlflow.log_dict(config.as_params(), RUN_CONFIG)
        logged_classes = [*classes, "Spots"] if tampered == "classes" else classes
        mlflow.log_dict({"classes": logged_classes, "species": ["cat"] * len(logged_classes)}, "labels/classes.json")
        version = log_model(net)
    if tampered != "classes":  # the registered file replaced in the store by one that carries code, or a list
        (tmp_path / "upload").mkdir()
        replacement = net.state_dict() | {"extra": Tripwire(marker)} if tampered == "weights" else [torch.ones(2)]
        torch.save(replacement, tmp_path / "upload" / WEIGHTS)
        MlflowClient().log_model_artifacts(model_version(version).source.removeprefix("models:/"), tmp_path / "upload")

    reasons = {"weights": "holds posix.mkdir, not only tensors", "a list": "Expected state_dict to be dict-like"}
    reason = reasons.get(tampered, "size mismatch for head")
    with pytest.raises(ExportError, match=f"version {version}'s weights do not fit .*{reason}.*: re-register it"):
        registered_net(model_version(version))
    assert not marker.exists()


@pytest.mark.parametrize("kind", ["code", "object"])
def test_a_checkpoint_holding_an_object_is_refused(tmp_path: Path, kind: str) -> None:
    """What `--resume` reads (every resume goes through `load_checkpoint`): refused whole, nothing in it run."""
    marker, path = tmp_path / "the pickle ran", tmp_path / "checkpoints" / "k.pt"
    payload, named = (Tripwire(marker), "posix.mkdir") if kind == "code" else (Note(), f"{__name__}.Note")
    finished = {"key": "k", "epoch": 1, "done": True, "history": [], "holdout_logits": torch.zeros(6, 3)}
    path.parent.mkdir()
    torch.save(finished | {"model": {"extra": payload}}, path)

    with pytest.raises(CheckpointError, match=f"k.pt holds {named}, not only tensors and plain values; it is not"):
        load_checkpoint(path, "k", resume=True)
    assert not marker.exists()


def test_a_checkpoint_is_tensors_and_plain_values(tmp_path: Path) -> None:
    """Held-out logits go in as a tensor (a numpy array is an object to the weights-only loader) and come
    back as the array they were; the key check still guards the resume."""
    logits = np.arange(6, dtype=np.float32).reshape(2, 3)
    state = {
        "key": "k",
        "epoch": 2,
        "done": True,
        "history": [{"epoch": 1, "train_loss": 0.5}],
        "holdout_logits": logits,
    }
    save_checkpoint(state | {"model": {"weight": torch.ones(2)}}, tmp_path / "k.pt")

    raw = torch.load(tmp_path / "k.pt", weights_only=True)
    assert isinstance(raw["holdout_logits"], torch.Tensor) and raw["arrays"] == ["holdout_logits"]
    loaded = load_checkpoint(tmp_path / "k.pt", "k", resume=True)
    assert isinstance(loaded["holdout_logits"], np.ndarray) and "arrays" not in loaded
    np.testing.assert_array_equal(loaded["holdout_logits"], logits)
    assert loaded["history"] == state["history"] and torch.equal(loaded["model"]["weight"], torch.ones(2))
    with pytest.raises(CheckpointError, match="belongs to another configuration"):
        load_checkpoint(tmp_path / "k.pt", "another", resume=True)
    torch.save([torch.ones(2)], tmp_path / "tensors.pt")  # tensors only, but no checkpoint: one line, no traceback
    with pytest.raises(CheckpointError, match="tensors.pt belongs to another configuration"):
        load_checkpoint(tmp_path / "tensors.pt", "k", resume=True)


@pytest.mark.parametrize("done", [True, False])
def test_a_checkpoint_missing_a_key_is_refused_in_one_line(tmp_path: Path, done: bool) -> None:
    """This run's key but no history (tampered with, or written by other code): a CheckpointError, not a
    KeyError traceback from deep inside the resume."""
    state = {"key": "k", "epoch": 1, "done": True, "holdout_logits": np.zeros((2, 3), np.float32)}
    if not done:
        state = {"key": "k", "epoch": 1, "model": {}, "optimizer": {}, "schedule": {}, "ema": None}
    save_checkpoint(state, tmp_path / "k.pt")
    with pytest.raises(CheckpointError, match=r"k.pt lacks history: not a whole checkpoint") as refused:
        load_checkpoint(tmp_path / "k.pt", "k", resume=True)
    assert "\n" not in str(refused.value)


def test_two_writers_of_one_file_never_share_a_temporary_file(tmp_path: Path, monkeypatch) -> None:
    """Checkpoints and feature-cache files go through one helper: each writer its own temporary file beside
    the target, then an atomic rename (a fixed `.tmp` name let two Ray trials write into one file)."""
    from train.data import files

    temporaries, save = [], torch.save
    monkeypatch.setattr(files.torch, "save", lambda value, path: temporaries.append(Path(path)) or save(value, path))
    state = {"key": "k", "epoch": 1, "done": True, "history": [], "holdout_logits": np.zeros((2, 3), np.float32)}
    save_checkpoint(state, tmp_path / "k.pt")
    files.save_tensors({"x": torch.ones(2)}, tmp_path / "k.pt")
    assert len(set(temporaries)) == 2 and all(t.parent == tmp_path and t.name != "k.tmp" for t in temporaries)
    assert [p.name for p in tmp_path.iterdir()] == ["k.pt"]  # renamed into place, nothing left behind
    umask = os.umask(0o022)
    os.umask(umask)
    assert (tmp_path / "k.pt").stat().st_mode & 0o777 == 0o666 & ~umask  # others on a shared folder read it
    monkeypatch.setattr(files.torch, "save", lambda value, path: 1 / 0)  # a writer that dies mid-write
    with pytest.raises(ZeroDivisionError):
        files.save_tensors({"x": torch.zeros(2)}, tmp_path / "k.pt")
    assert [p.name for p in tmp_path.iterdir()] == ["k.pt"] and torch.equal(
        torch.load(tmp_path / "k.pt", weights_only=True)["x"], torch.ones(2)
    )


@pytest.mark.slow
def test_python_m_train_fit_prints_no_serialization_warning(tiny_data: Path, tmp_path: Path) -> None:
    """What a new user sees: MLflow warns on every run that logs a pickled model; this one must say nothing
    of pickles or serialization (it did while models were logged as pickles)."""
    import subprocess
    import sys

    from tests.conftest import REPO

    recipe = tmp_path / "fit.toml"
    recipe.write_text(f'epochs = 1\nval_fraction = 0.25\ncache_dir = "{tmp_path / "cache"}"\n')
    env = os.environ | {"MLFLOW_TRACKING_URI": f"sqlite:///{tmp_path / 'mlflow.db'}", "PYTHONWARNINGS": "default"}
    done = subprocess.run(
        [sys.executable, "-m", "train", "--data-dir", str(tiny_data), "fit", "--config", str(recipe)],
        cwd=tmp_path,
        env=env | {"PYTHONPATH": str(REPO)},
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert "registered version 1" in done.stderr + done.stdout  # it did log and register a model
    said = (done.stdout + done.stderr).lower()
    assert "pickle" not in said and "serializ" not in said, said[-2000:]
