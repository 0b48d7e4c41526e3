"""What a run records in MLflow, in one place: parameters, the dataset, artifacts and the model."""

from __future__ import annotations

import json
import tempfile
from pathlib import Path

import mlflow
import numpy as np
import pandas as pd
import torch

from preprocess import InputSpec
from train.data.pets import PetData
from train.experiments.provenance import git_commit, package_versions


def start(experiment: str) -> None:
    """Use MLFLOW_TRACKING_URI when set, else MLflow's default (./mlflow.db with ./mlruns artifacts)."""
    mlflow.set_experiment(experiment)


def log_run_inputs(params: dict, spec: InputSpec, data: PetData, config_path: str | None) -> None:
    mlflow.log_params(params | {f"spec.{k}": v for k, v in spec.to_dict().items()})
    mlflow.log_params({f"images.{split}": n for split, n in data.counts().items()})
    mlflow.log_params({f"missing.{split}": n for split, n in data.missing_totals().items()})
    mlflow.log_params({"git_commit": git_commit(), "data.digest": data.digest, **package_versions()})
    mlflow.log_dict(data.missing, "data/missing_per_class.json")
    mlflow.log_dict({"classes": data.classes, "species": data.species}, "labels/classes.json")
    mlflow.log_text(json.dumps(data.classes), "labels/labels.json")
    mlflow.log_dict(spec.to_dict(), "labels/input_spec.json")
    mlflow.log_dict(params, RUN_CONFIG)
    if config_path:
        mlflow.log_artifact(config_path, "config")
    log_dataset(data)


def log_dataset(data: PetData) -> None:
    """The images and their splits as the run's input. A parent logs it before its children start: the
    store creates a dataset on first sight, and concurrent children racing to create it would collide."""
    rows = [(s.name, data.classes[s.label], split) for split, samples in data.splits.items() for s in samples]
    frame = pd.DataFrame(rows, columns=["image", "label", "split"])
    dataset = mlflow.data.from_pandas(frame, source=str(data.root), name="oxford-iiit-pet", digest=data.digest[:16])
    mlflow.log_input(dataset, context="training")


HOLDOUT_LOGITS = "evaluation/holdout_logits.npz"  # each run's held-out logits: what `cv` gathers its folds from
HOLDOUT_TEACHER = "evaluation/holdout_teacher_logits.npz"  # the teacher's ImageNet logits of them: retention
OOF_LOGITS = "cv/oof.npz"  # a CV parent's out-of-fold logits: what `select` calibrates on


def save_logits(path: Path, names: list[str], logits: np.ndarray, labels: np.ndarray) -> Path:
    np.savez(path, names=np.array(names), logits=logits, labels=labels)
    return path


def load_logits(run_id: str, artifact: str) -> tuple[list[str], np.ndarray, np.ndarray]:
    """Logits saved by `save_logits` in a run, read back through the tracking store (so from any machine)."""
    with np.load(mlflow.artifacts.download_artifacts(run_id=run_id, artifact_path=artifact)) as saved:
        return [str(n) for n in saved["names"]], saved["logits"], saved["labels"]


def log_files(files: dict[str, callable]) -> None:
    """Write each artifact with its writer into a temporary folder, then log it."""
    with tempfile.TemporaryDirectory() as folder:
        for name, write in files.items():
            mlflow.log_artifact(str(write(Path(folder) / name)), "evaluation")


REGISTERED_MODEL = "pet-breed-classifier"  # what the 37-breed runs register under and select/export look up
EXPERT_MODEL = "pet-dog-expert"  # what the dog expert's runs (species = "dog") register under
RUN_CONFIG = "config/resolved.json"  # the run's whole Config as JSON: what `export` rebuilds the network from
WEIGHTS = "state_dict.pt"  # a registered version's one file: the network's tensors, nothing else


def registered_name(species: str) -> str:
    """The registered model a run of `species` ("" for all breeds, "dog" for the expert) belongs to."""
    return EXPERT_MODEL if species == "dog" else REGISTERED_MODEL


def log_model(model: torch.nn.Module, name: str = REGISTERED_MODEL) -> str:
    """Register the network's weights, tensors only, as a version of `name`. Data, not code:
    `export` rebuilds the network with the project's own `build_net` from the run's config and classes and
    loads these into it, so nothing in a shared registry can make a loader run code (a pickled module could).
    """
    logged = mlflow.initialize_logged_model(name="model", model_type="state_dict")
    with tempfile.TemporaryDirectory() as folder:
        torch.save({name: tensor.cpu() for name, tensor in model.state_dict().items()}, Path(folder) / WEIGHTS)
        mlflow.MlflowClient().log_model_artifacts(logged.model_id, folder)
    mlflow.log_outputs([mlflow.entities.LoggedModelOutput(logged.model_id, step=0)])
    mlflow.finalize_logged_model(logged.model_id, "READY")
    return str(mlflow.register_model(f"models:/{logged.model_id}", name).version)
