"""`python -m train expert`: the dog expert shipped beside the breed model in a model folder.

The best cross-validated version of `pet-dog-expert` (or the one named) is exported to ONNX under the
parity gate; its int8 twin ships under the int8 gate; each variant gets a temperature and a "not sure"
threshold fitted on the expert's own out-of-fold logits; then the served answer (the breed model routing
each photo, the expert answering the dogs) is tested, and the card's `expert` entry and test figures are
written. The breed model's files and calibration stay as they are. Nothing is written, and no alias moves,
unless every gate passes.
"""

from __future__ import annotations

import json
import logging
import random
import shutil
from dataclasses import replace
from pathlib import Path

import mlflow
import numpy as np
import onnxruntime as ort
from mlflow import MlflowClient
from torch import nn

from inference import IMAGENET_NAMES, ExpertInfo, ModelCard, PetClassifier, sha256_file
from preprocess import InputSpec
from train.data.pets import PetData, Sample, load_dataset
from train.experiments.tracking import EXPERT_MODEL, OOF_LOGITS, load_logits
from train.learning.backbones import get_backbone
from train.shipping import retention
from train.shipping.evaluate import evaluate_classifier, prepared
from train.shipping.export import (
    IMAGENET,
    check_parity,
    model_version,
    parity_samples,
    registered_net,
    selection_metrics,
    to_onnx,
    updating,
)
from train.shipping.gates import Gates
from train.shipping.quantize import quantize
from train.shipping.select import (
    CalibrationSet,
    best_version,
    calibrate,
    calibration_parent,
    int8_verdict,
    summarize_test,
)

log = logging.getLogger(__name__)

EXPERT_FILE, EXPERT_INT8_FILE = "expert.onnx", "expert.int8.onnx"
# The breed model names the right species for 99.9 % of the test photos at this threshold on its summed
# calibrated dog probability (docs/training.md, "The dog expert"): above it, a photo is the expert's.
ROUTE_THRESHOLD = 0.5


class ExpertError(RuntimeError):
    """The expert cannot ship beside this breed model; the message says why."""


def ship_expert(
    model_dir: str | Path = "model", data_dir: str | Path | None = None, version: str | None = None
) -> ModelCard:
    """A copy of `model_dir` with the expert added (any earlier expert replaced) takes the folder's place
    once every gate has passed; then the version becomes the expert's champion."""
    model_dir = Path(model_dir)
    breed = ModelCard.load(model_dir / "card.json")
    client = MlflowClient()
    version = version or best_version(client, EXPERT_MODEL)
    with updating(model_dir, shutil.ignore_patterns("expert*", IMAGENET_NAMES, "*.tmp")) as staging:
        if breed.no_pet:
            log.warning("the 'no cat or dog' answer was fitted beside the replaced expert: run python -m train no-pet")
        card = with_expert(staging, breed_model_alone(breed), data_dir, version)
        card.save(staging / "card.json")
    client.set_registered_model_alias(EXPERT_MODEL, "champion", version)
    log.info("champion: %s version %s, shipped in %s", EXPERT_MODEL, version, model_dir)
    return card


ALONE = ("accuracy", "mean_per_class_accuracy", "per_species", "ece")  # the breed model's test figures kept


def breed_model_alone(card: ModelCard) -> ModelCard:
    """The card as the breed model alone left it: no expert, no "no cat or dog" (fitted to the pair), no
    retention (the pair's, measured again where the Stanford photos are), and where an expert ships already,
    the breed model's own test figures its entry kept in place of the pair's."""
    metrics = {key: value for key, value in card.metrics.items() if key != "retention"}
    if card.expert:
        metrics["test"] = metrics["test"] | card.expert.metrics["test_breed_model_alone"]
    return replace(card, expert=None, no_pet=None, metrics=metrics)


def with_expert(folder: Path, card: ModelCard, data_dir: str | Path | None, version: str) -> ModelCard:
    """Export, calibrate and quantize the expert into `folder`; test the served pair; return the card."""
    gates, chosen = Gates.load(), model_version(version, registered=EXPERT_MODEL)
    run = MlflowClient().get_run(chosen.run_id)
    spec = InputSpec.from_dict(mlflow.artifacts.load_dict(f"runs:/{chosen.run_id}/labels/input_spec.json"))
    if spec != card.preprocess:
        raise ExpertError(
            f"{EXPERT_MODEL} version {version} reads {spec.to_dict()}, the breed model {card.preprocess.to_dict()}: "
            "one tensor must feed both (train it with the breed model's image_size and crop_ratio)."
        )
    metrics = expert_metrics(run)  # a run that was not cross-validated is refused before any export
    net, imagenet = registered_net(chosen), untouched_classifier(run.data.params, spec)
    to_onnx(net, spec, folder / EXPERT_FILE, imagenet)
    samples = parity_samples(run.data.params, data_dir, gates.parity.images)
    delta = check_parity(net, folder / EXPERT_FILE, spec, samples, gates.parity, imagenet)
    held_out = CalibrationSet(
        *load_logits(calibration_parent(run.data.tags, run.data.params), OOF_LOGITS), "out-of-fold"
    )
    calibration, threshold = calibrate(held_out, gates.calibration)
    classes = mlflow.artifacts.load_dict(f"runs:/{chosen.run_id}/labels/classes.json")["classes"]
    entry = ExpertInfo(
        file=EXPERT_FILE,
        sha256=sha256_file(folder / EXPERT_FILE),
        bytes=(folder / EXPERT_FILE).stat().st_size,
        backbone=run.data.params["backbone"],
        labels=classes,
        species="dog",
        route_threshold=ROUTE_THRESHOLD,
        imagenet_output=IMAGENET,
        parity={"images": len(samples), "max_abs_logit_delta": delta},
        mlflow={"run_id": chosen.run_id, "registered_model": EXPERT_MODEL, "version": int(version)},
        metrics=metrics,
        recipe={
            key: run.data.params[key] for key in ("distill_weight", "distill_temperature", "balance", "views", "head")
        },
        calibration=calibration,
        not_sure=threshold,
    )
    dogs = load_dataset(data_dir, card.data["val_fraction"], card.data["seed"], "dog")
    entry = replace(entry, int8=expert_int8(folder, card, entry, dogs, held_out, gates))
    return tested(folder, replace(card, expert=entry), data_dir, gates)


def untouched_classifier(params: dict[str, str], spec: InputSpec) -> nn.Linear:
    """ImageNet's own classifier of the expert's backbone, which must be the untouched one (frozen whole):
    exported beside the head, it gives ImageNet's 1000-way view of each photo the expert sees. An end-to-end
    run is the one other recipe left (`logged_config` refuses a run that fine-tuned some blocks)."""
    if params.get("end_to_end") == "True":
        raise ExpertError("The expert's backbone must be ImageNet's untouched one: a frozen run, not end to end.")
    return get_backbone(params["backbone"]).build(spec.crop).classifier.eval()


def expert_metrics(run: mlflow.entities.Run) -> dict:
    """What the expert was chosen on: its cross-validation over the trainval dog photos, with their count."""
    if "cv_accuracy" not in run.data.metrics:
        raise ExpertError(
            "The expert ships only from a cross-validated run (python -m train cv): its calibration needs "
            "out-of-fold logits."
        )
    found = selection_metrics(run.data.metrics)
    found["cv"]["images"] = int(run.data.params["images.train"])
    return found


def expert_int8(
    folder: Path, card: ModelCard, entry: ExpertInfo, dogs: PetData, held_out: CalibrationSet, gates: Gates
) -> dict:
    """The expert's int8 twin under the breed model's int8 gate, with its own temperature and threshold fitted
    on the out-of-fold logits moved photo by photo by what quantization changes (`calibrate.variant_logits`)."""
    trainval = dogs.splits["train"] + dogs.splits["val"]
    photos = random.Random(0).sample(trainval, min(gates.int8.calibration_images, len(trainval)))
    found = quantize(folder / EXPERT_FILE, folder / EXPERT_INT8_FILE, card, photos)
    reference, quantized = (
        onnx_logits(folder / name, trainval, card.preprocess) for name in (EXPERT_FILE, EXPERT_INT8_FILE)
    )
    found |= int8_verdict(held_out, trainval, reference, quantized, entry.calibration["temperature"], gates)
    accepted, measured = found["accepted"], found["fidelity"]
    log.info(
        "expert int8: top-1 agreement %.4f, probability delta %.4f -> %s",
        measured["top1_agreement"],
        measured["probability_delta"],
        accepted,
    )
    if not accepted:
        (folder / EXPERT_INT8_FILE).unlink()
        found.pop("sha256")
    return found


def tested(folder: Path, card: ModelCard, data_dir: str | Path | None, gates: Gates) -> ModelCard:
    """The served answer on the test photos, for each variant pair that ships: the card's test figures
    become the pair's (the breed model's alone are kept in the expert entry), with the routing's species
    accuracy and the retention on the Stanford photos."""
    labels = json.loads((folder / "labels.json").read_text())
    data = load_dataset(data_dir, card.data["val_fraction"], card.data["seed"])
    before = {key: card.metrics["test"][key] for key in ALONE}
    metrics = card.expert.metrics | {"test_breed_model_alone": before}
    card = replace(card, expert=replace(card.expert, metrics=metrics))
    for variant in card.variants():
        served = PetClassifier(card, folder / card.variant_file(variant)[0], labels, variant=variant)
        suffix = "" if variant == "fp32" else "_int8"
        test = evaluate_classifier(served, data, "test", folder / f"confusion_matrix_test{suffix}.png")
        figures = summarize_test(test, served, gates.calibration) | {"variant": variant, "data_digest": data.digest}
        if variant == "fp32":
            kept = retention.for_card(served, data.root)
            card = replace(card, metrics=card.metrics | {"test": figures} | ({"retention": kept} if kept else {}))
        else:
            card = replace(card, int8=card.int8 | {"test": figures})
    return card


def onnx_logits(path: Path, samples: list[Sample], spec: InputSpec) -> np.ndarray:
    """An ONNX model's first output on `samples`' photos, prepared as serving prepares them."""
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    name = session.get_inputs()[0].name
    return np.concatenate([session.run(None, {name: x})[0] for x in prepared(spec, samples)])
