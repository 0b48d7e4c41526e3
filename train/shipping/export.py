"""Registered MLflow model -> model.onnx and labels.json, checked against torch (the parity gate), and the
model card's first part. `select` completes the card and writes it; `python -m train export` alone writes
this first part, which serving accepts (no calibration, no test metrics yet)."""

from __future__ import annotations

import json
import logging
import shutil
import tempfile
import textwrap
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path

import mlflow
import numpy as np
import onnx
import onnxruntime as ort
import torch
from mlflow import MlflowClient
from mlflow.entities.model_registry import ModelVersion
from torch import nn

from inference import CARD_SCHEMA, ModelCard, ModelInfo, sha256_file
from preprocess import InputSpec, model_batch
from train.data.files import load_tensors
from train.data.pets import Sample, load_dataset
from train.experiments.provenance import git_commit
from train.experiments.tracking import REGISTERED_MODEL, RUN_CONFIG, WEIGHTS
from train.learning.config import ConfigError, logged_config
from train.learning.model import Explained, PetNet, build_net
from train.shipping.gates import Gates, ParityGate, parity_failure

log = logging.getLogger(__name__)

OPSET = 18
INPUT, LOGITS, CAM, IMAGENET = "image", "logits", "cam", "imagenet"


class ExportError(RuntimeError):
    """The ONNX model does not reproduce the torch model, or the version cannot be found."""


def model_version(
    version: str | None = None, alias: str | None = None, registered: str = REGISTERED_MODEL
) -> ModelVersion:
    client = MlflowClient()
    try:
        if alias:
            return client.get_model_version_by_alias(registered, alias)
        if version:
            return client.get_model_version(registered, version)
    except mlflow.exceptions.MlflowException as error:
        raise ExportError(f"No {registered} version {alias or version}: {error.message}") from None
    raise ExportError("Say which model to export: --version N or --alias champion.")


def registered_net(chosen: ModelVersion) -> PetNet:
    """The version's network: built by `build_net` from its run's config and classes, then its weights
    loaded into it as data (tensors only, every key matched). Nothing registered can make this run code."""
    uri, name = f"models:/{chosen.name}/{chosen.version}", f"{chosen.name} version {chosen.version}"
    if WEIGHTS not in {Path(entry.path).name for entry in mlflow.artifacts.list_artifacts(artifact_uri=uri)}:
        raise ExportError(
            f"{name} is a pickled torch model (no {WEIGHTS}: registered before versions held weights only) "
            f"and export never unpickles: re-register it by training it again with `python -m train fit` or "
            f"`cv` and its config (run {chosen.run_id})."
        )
    net = rebuilt_net(chosen.run_id, name)
    with tempfile.TemporaryDirectory() as folder:
        weights = Path(mlflow.artifacts.download_artifacts(f"{uri}/{WEIGHTS}", dst_path=folder))
        try:
            net.load_state_dict(load_tensors(weights), strict=True)
        except (RuntimeError, TypeError) as error:  # not tensors only (NotTensorsError), not a dict, keys or shapes
            reason = textwrap.shorten(str(error), 300)
            raise ExportError(
                f"{name}'s weights do not fit the network its config builds ({reason}): re-register it."
            ) from None
    return net.eval()


def rebuilt_net(run_id: str, name: str) -> PetNet:
    """A fresh network as the run built it, from its config and classes logged as JSON: the weights loaded
    next replace every tensor in it."""
    try:
        config = logged_config(mlflow.artifacts.load_dict(f"runs:/{run_id}/{RUN_CONFIG}"))
    except ConfigError as error:
        raise ExportError(f"{name}'s run config does not fit this code: {error}") from None
    return build_net(config, mlflow.artifacts.load_dict(f"runs:/{run_id}/labels/classes.json")["classes"])[0]


def parity_samples(run_params: dict, data_dir: str | Path | None, count: int) -> list[Sample]:
    """Validation images of the run's own split, topped up with training images to `count`."""
    data = load_dataset(
        data_dir, float(run_params["val_fraction"]), int(run_params["seed"]), run_params.get("species", "")
    )
    return (data.splits["val"] + data.splits["train"])[:count]


def to_onnx(model: PetNet, spec: InputSpec, path: Path, imagenet: nn.Linear | None = None) -> None:
    """The model's graph (`Explained`: logits, CAM, and ImageNet's logits given its classifier)."""
    example = torch.zeros(2, 3, spec.crop, spec.crop)
    batch = torch.export.Dim("batch", min=1, max=1024)
    torch.onnx.export(
        Explained(model, imagenet).eval(),
        (example,),
        str(path),
        input_names=[INPUT],
        output_names=[LOGITS, CAM] + ([IMAGENET] if imagenet is not None else []),
        opset_version=OPSET,
        dynamo=True,
        dynamic_shapes=({0: batch},),
        external_data=False,
    )
    without_source_notes(path)


def without_source_notes(path: Path) -> None:
    """Drop what the exporter notes on each node for debugging (the source file and line it came from, the
    module path, the rewrite rule): the model's bytes then follow its graph and weights alone, not where the
    checkout lives or how the training code is laid out, and no build machine's paths ship to the Space."""
    model = onnx.load(str(path))
    for node in model.graph.node:
        del node.metadata_props[:]
    onnx.save(model, str(path))


def check_parity(
    model: PetNet,
    path: Path,
    spec: InputSpec,
    samples: list[Sample],
    gate: ParityGate,
    imagenet: nn.Linear | None = None,
) -> float:
    """Every output (logits, the class activation maps, ImageNet's logits where exported) as torch and ONNX
    Runtime compute them."""
    batch = model_batch([s.path for s in samples], spec)
    with torch.no_grad():
        expected = [output.numpy() for output in Explained(model, imagenet).eval()(torch.from_numpy(batch))]
    got = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(None, {INPUT: batch})
    finite = all(np.isfinite(output).all() for output in (*expected, *got))
    delta = max(float(np.abs(want - have).max()) for want, have in zip(expected, got, strict=True))
    failure = parity_failure(delta, bool((expected[0].argmax(1) == got[0].argmax(1)).all()), gate, finite)
    if failure:
        raise ExportError(f"ONNX parity failed on {len(samples)} images: {failure}.")
    return delta


def export_model(
    gate: ParityGate, version: str | None, alias: str | None, out_dir: Path, data_dir: str | Path | None
) -> ModelCard:
    """Write model.onnx and labels.json into `out_dir`; return the card (not written)."""
    out_dir.mkdir(parents=True, exist_ok=True)
    chosen = model_version(version, alias)
    run = MlflowClient().get_run(chosen.run_id)
    model = registered_net(chosen)
    spec = InputSpec.from_dict(mlflow.artifacts.load_dict(f"runs:/{run.info.run_id}/labels/input_spec.json"))
    classes = mlflow.artifacts.load_dict(f"runs:/{run.info.run_id}/labels/classes.json")
    onnx_path = out_dir / "model.onnx"
    to_onnx(model, spec, onnx_path)
    samples = parity_samples(run.data.params, data_dir, gate.images)
    delta = check_parity(model, onnx_path, spec, samples, gate)
    log.info("parity on %d images: max |Δlogit| = %.2e", len(samples), delta)
    (out_dir / "labels.json").write_text(json.dumps(classes["classes"], indent=1) + "\n")
    return make_card(
        chosen, run, spec, classes["species"], onnx_path, {"images": len(samples), "max_abs_logit_delta": delta}
    )


@contextmanager
def replacing(out_dir: Path) -> Iterator[Path]:
    """An empty folder beside `out_dir` that takes its place only when the block succeeds: a tracking
    server lost mid-export, or a failed gate, leaves the previous model whole and no half-written one."""
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.", dir=out_dir.parent))
    try:
        yield staging
        staging.chmod(0o755)
        retired = staging.with_name(f"{staging.name}.old")
        if out_dir.exists():
            out_dir.rename(retired)
        staging.rename(out_dir)
        shutil.rmtree(retired, ignore_errors=True)
    finally:
        shutil.rmtree(staging, ignore_errors=True)  # only left there when the block failed


@contextmanager
def updating(folder: Path, ignore: Callable | None = None) -> Iterator[Path]:
    """`replacing`, starting from a copy of `folder` (less what `ignore` leaves out): a command that rewrites
    part of a model folder (retest, expert, no-pet) leaves it whole or fully updated, never half of it."""
    with replacing(Path(folder)) as staging:
        shutil.copytree(folder, staging, dirs_exist_ok=True, ignore=ignore)
        yield staging


def export(
    version: str | None = None, alias: str | None = None, out_dir: str | Path = "model", data_dir=None
) -> ModelCard:
    """`python -m train export`: the model, its labels and the card's first part, written together."""
    with replacing(Path(out_dir)) as staging:
        card = export_model(Gates.load().parity, version, alias, staging, data_dir)
        card.save(staging / "card.json")
    return card


def make_card(
    chosen: ModelVersion, run, spec: InputSpec, species: list[str], onnx_path: Path, parity: dict
) -> ModelCard:
    params, found = run.data.params, run.data.metrics
    linear = params["head"] == "linear"
    return ModelCard(
        schema=CARD_SCHEMA,
        model=ModelInfo(
            backbone=params["backbone"],
            head=params["head"],
            finetune_blocks=0,  # `logged_config` refuses a run that fine-tuned blocks (retired after 6346004)
            end_to_end=params.get("end_to_end") == "True",
            sha256=sha256_file(onnx_path),
            bytes=onnx_path.stat().st_size,
            input_name=INPUT,
            output_name=LOGITS,
            cam_output=CAM,
            cam_method="exact CAM (linear head)" if linear else "mean activation (MLP head)",
            opset=OPSET,
            parity=parity,
            teacher=teacher_entry(params),
        ),
        preprocess=spec,
        species=species,
        mlflow={
            "run_id": run.info.run_id,
            "registered_model": REGISTERED_MODEL,
            "version": int(chosen.version),
            "alias": "champion" if "champion" in chosen.aliases else None,
        },
        data={
            "digest": params["data.digest"],
            "val_fraction": float(params["val_fraction"]),
            "seed": int(params["seed"]),
            "images": {s: int(params[f"images.{s}"]) for s in ("train", "val", "test") if f"images.{s}" in params},
            "missing": {s: int(params[f"missing.{s}"]) for s in ("trainval", "test")},
        },
        metrics=selection_metrics(found),
        created=datetime.now(UTC).isoformat(timespec="seconds"),
        git_commit=git_commit(),
    )


def teacher_entry(params: dict[str, str]) -> dict | None:
    """The distillation of the ImageNet network's dog rows the model trained with; None for a model that
    had none (or predates it)."""
    weight = float(params.get("distill_weight", 0.0))
    if not weight:
        return None
    return {"distill_weight": weight, "distill_temperature": float(params["distill_temperature"])}


def selection_metrics(found: dict[str, float]) -> dict:
    """What the version was selected on: cross-validation over trainval, or the validation split."""
    if "cv_accuracy" in found:
        cv = {key.removeprefix("cv_"): value for key, value in found.items() if key.startswith("cv_")}
        species = [key for key in cv if key.startswith("accuracy_") and key != "accuracy_std"]
        per_species = {key.removeprefix("accuracy_"): cv.pop(key) for key in species}
        return {"cv": cv | {"folds": int(cv["folds"]), "per_species": per_species}}
    val = {"accuracy": found["val_accuracy"], "top5_accuracy": found["val_top5_accuracy"], "loss": found["val_loss"]}
    if "val_mean_per_class_accuracy" in found:
        val["mean_per_class_accuracy"] = found["val_mean_per_class_accuracy"]
    return {"val": val}
