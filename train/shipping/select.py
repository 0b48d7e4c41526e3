"""Pick the champion among registered versions, test it once, and ship it: the one orchestrator of
export, int8, calibration and the test evaluation, and the only writer of card.json (once, atomically)."""

from __future__ import annotations

import json
import logging
import random
import shutil
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
from mlflow import MlflowClient

from inference import ExpertInfo, ModelCard, PetClassifier, not_sure, softmax
from train.data.pets import PetData, Sample, load_dataset
from train.experiments.tracking import OOF_LOGITS, REGISTERED_MODEL, load_logits
from train.learning.calibrate import calibration_report, ece, non_pet_images, not_sure_threshold, variant_logits
from train.shipping import retention
from train.shipping.evaluate import evaluate_classifier, photo_logits
from train.shipping.export import export_model, replacing
from train.shipping.gates import CalibrationGate, Gates, int8_accepted, int8_rule
from train.shipping.quantize import quantize

log = logging.getLogger(__name__)


class SelectionError(RuntimeError):
    """The champion cannot be shipped as it stands; the message says why and what to do."""


INT8_CONFUSION = "confusion_matrix_test_int8.png"
INT8_FILE = "model.int8.onnx"


@dataclass(frozen=True)
class CalibrationSet:
    """Held-out logits with their labels to fit a temperature on, the photos they are of, and which ones."""

    names: list[str]  # the photos (Sample.name), one per row
    logits: np.ndarray
    labels: np.ndarray
    fitted_on: str  # "out-of-fold" or "val"


def rank_key(found: dict[str, float], version: int) -> tuple[int, float, float, int] | None:
    """Cross-validated versions first (a k-fold estimate beats one small split), by CV accuracy, then
    validation-split versions by validation accuracy; ties go to the lower loss, then the newer version.
    None for a version with neither metric."""
    for rank, prefix in ((1, "cv"), (0, "val")):
        if f"{prefix}_accuracy" in found:
            return (rank, found[f"{prefix}_accuracy"], -found.get(f"{prefix}_loss", 0.0), version)
    return None


def best_version(client: MlflowClient, registered: str = REGISTERED_MODEL) -> str:
    """The best-ranked version of `registered`."""
    candidates = []
    for mv in client.search_model_versions(f"name='{registered}'"):
        key = rank_key(client.get_run(mv.run_id).data.metrics, int(mv.version))
        if key is not None:
            candidates.append((key, mv))
    if not candidates:
        raise RuntimeError(
            f"No registered version of {registered} with a CV or validation accuracy to rank: run fit first."
        )
    return max(candidates, key=lambda pair: pair[0])[1].version


def select(
    out_dir: str | Path = "model",
    data_dir: str | Path | None = None,
    version: str | None = None,
    alias: str = "champion",
) -> ModelCard:
    """The best-ranked version (or `version`) -> `alias` -> export (parity gate) -> test fp32 -> int8 (its
    gate) -> calibration -> card, all into a staging folder that replaces `out_dir` only once everything,
    the last MLflow call included, has succeeded. Another alias than "champion" tries a version out
    without moving what the registry says ships."""
    with replacing(Path(out_dir)) as staging:
        return ship_champion(staging, data_dir, version, alias, Path(out_dir))


def ship_champion(
    out_dir: Path,
    data_dir: str | Path | None,
    version: str | None = None,
    alias: str = "champion",
    previous: Path | None = None,
) -> ModelCard:
    """The card's test metrics are fp32's, the reference: an int8 model ships beside it only if it answers as
    fp32 does (its gate), and the host that serves picks the faster (`PetClassifier.load`). Each variant has
    its own temperature and "not sure" threshold, fitted on the same held-out photos. The dog expert of
    `previous` (the folder being replaced) ships on beside the new model, and the figures are the pair's.
    The alias moves last, once every gate has passed."""
    gates, client = Gates.load(), MlflowClient()
    version = version or best_version(client)
    card = export_model(gates.parity, version, None, out_dir, data_dir)
    card = replace(card, mlflow=card.mlflow | {"alias": alias}, expert=kept_expert(previous, out_dir))
    labels = json.loads((out_dir / "labels.json").read_text())
    data = load_dataset(data_dir, card.data["val_fraction"], card.data["seed"])
    fp32 = PetClassifier(card, out_dir / "model.onnx", labels, variant="fp32")
    held_out = calibration_logits(client, card, fp32, data)
    calibration, threshold = calibrate(held_out, gates.calibration)
    card = replace(card, calibration=calibration, not_sure=threshold)
    fp32 = fp32.with_card(card)
    test = evaluate_classifier(fp32, data, "test", out_dir / "confusion_matrix_test.png")
    card = replace(
        card,
        metrics=card.metrics
        | {"test": summarize_test(test, fp32, gates.calibration) | {"variant": "fp32", "data_digest": data.digest}},
    )
    card = replace(card, not_sure=card.not_sure | {"non_pet": non_pet_rate(fp32.with_card(card))})
    retained = retention.for_card(fp32, data.root)
    card = replace(card, metrics=card.metrics | ({"retention": retained} if retained else {}))
    card = with_int8(fp32.with_card(card), data, out_dir, gates, held_out)
    card.save(out_dir / "card.json")
    log_test_results(client, card, test)
    client.set_registered_model_alias(REGISTERED_MODEL, alias, version)  # last: only a version that passed moves
    log.info("%s: %s version %s", alias, REGISTERED_MODEL, version)
    log.info("test accuracy %.4f (top-5 %.4f); ships %s", test["accuracy"], test["top5_accuracy"], card.variants())
    return card


def kept_expert(previous: Path | None, out_dir: Path) -> ExpertInfo | None:
    """The dog expert of the folder being replaced, its files copied beside the new breed model: it stands on
    its own (frozen ImageNet features, its own calibration), so it answers the dogs the new model routes to
    it, and every test figure the card gets is the new pair's. None where that folder had none."""
    if previous is None or not (previous / "card.json").is_file():
        return None
    card = ModelCard.load(previous / "card.json")
    if card.no_pet:
        log.warning("the 'no cat or dog' answer was fitted on the replaced model's answers: run python -m train no-pet")
    expert = card.expert
    if expert is None:
        return None
    for name in {expert.file, *([expert.int8["file"]] if expert.int8 and "sha256" in expert.int8 else [])}:
        shutil.copy2(previous / name, out_dir / name)
    return replace(
        expert, metrics={key: value for key, value in expert.metrics.items() if key != "test_breed_model_alone"}
    )


def with_int8(
    fp32: PetClassifier, data: PetData, out_dir: Path, gates: Gates, held_out: CalibrationSet | None
) -> ModelCard:
    """Quantize; fit int8's own temperature on `held_out` (fp32's calibration logits; none where fp32 has
    none); keep the int8 model only if it answers as fp32 does on trainval photos, each at its own
    temperature (its gate). Its test accuracy and calibration error are measured and reported, never used
    to decide; its speed on this machine is recorded, never gated (the host that serves times both).
    Returns `fp32`'s card with the entry."""
    card = fp32.card
    train, trainval = data.splits["train"], data.splits["train"] + data.splits["val"]
    samples = random.Random(0).sample(train, min(gates.int8.calibration_images, len(train)))
    entry = quantize(out_dir / "model.onnx", out_dir / INT8_FILE, card, samples)
    int8 = PetClassifier(replace(card, int8=entry), out_dir / INT8_FILE, fp32.labels, variant="int8")
    reference, quantized = photo_logits(fp32, trainval), photo_logits(int8, trainval)
    entry |= int8_verdict(held_out, trainval, reference, quantized, fp32.temperature, gates)
    int8 = int8.with_card(replace(card, int8=entry))
    test = int8_test(int8, fp32.temperature, data, out_dir, gates.calibration)
    entry |= {"test": test}
    accepted, fidelity_found = entry["accepted"], entry["fidelity"]
    if not accepted:
        (out_dir / INT8_FILE).unlink()
        (out_dir / INT8_CONFUSION).unlink()
        entry.pop("sha256")
    log.info(
        "int8: top-1 agreement %.4f, probability delta %.4f -> %s; temperature %.3f (fp32 %.3f), test ECE %.4f "
        "(%.4f at fp32's)",
        fidelity_found["top1_agreement"],
        fidelity_found["probability_delta"],
        "kept" if accepted else "discarded",
        int8.temperature,
        fp32.temperature,
        test["ece"],
        test["ece_at_fp32_temperature"],
    )
    return replace(card, int8=entry)


def int8_verdict(
    held_out: CalibrationSet | None,
    trainval: list[Sample],
    reference: np.ndarray,
    quantized: np.ndarray,
    fp32_temperature: float,
    gates: Gates,
) -> dict:
    """What the breed model's and the expert's int8 entries share: int8's own temperature and threshold,
    fitted where fp32 has calibration logits (`held_out`), and the int8 gate's verdict on how closely it
    answers as fp32 does on `trainval` (`reference` and `quantized`: the two models' logits), each variant
    at its own temperature."""
    fits, temperature = {}, fp32_temperature
    if held_out is not None:
        calibration, threshold = int8_calibration(
            held_out, trainval, reference, quantized, fp32_temperature, gates.calibration
        )
        fits, temperature = {"calibration": calibration, "not_sure": threshold}, calibration["temperature"]
    agreement, delta = fidelity(softmax(reference, fp32_temperature), softmax(quantized, temperature))
    return fits | {
        "fidelity": {"images": len(trainval), "top1_agreement": agreement, "probability_delta": delta},
        "accepted": int8_accepted(agreement, delta, gates.int8),
        "gate": int8_rule(gates.int8),
    }


def int8_test(
    int8: PetClassifier, fp32_temperature: float, data: PetData, out_dir: Path, gate: CalibrationGate
) -> dict:
    """int8's test metrics at its own temperature, and the ECE fp32's temperature would leave it."""
    tested = evaluate_classifier(int8, data, "test", out_dir / INT8_CONFUSION)
    test = summarize_test(tested, int8, gate)
    at_fp32 = ece(softmax(tested["logits"], fp32_temperature), tested["labels"], gate.ece_bins)
    kept = ("accuracy", "top5_accuracy", "mean_per_class_accuracy", "per_species", "ece", "not_sure_rate")
    kept += ("not_sure_rate_correct", "not_sure_rate_wrong", "routing")
    return {key: test[key] for key in kept if key in test} | {
        "ece_at_fp32_temperature": at_fp32,
        "data_digest": data.digest,
    }


def int8_calibration(
    held_out: CalibrationSet,
    photos: list[Sample],
    reference: np.ndarray,
    quantized: np.ndarray,
    fp32_temperature: float,
    gate: CalibrationGate,
) -> tuple[dict, dict]:
    """int8's temperature and its fit, and its own "not sure" threshold, on fp32's calibration logits moved
    photo by photo by what quantization changes (`reference` and `quantized`: the two models' logits on
    `photos`), with the ECE fp32's temperature would leave on them (whether fp32's holds). Returns the
    variant's `calibration` and `not_sure` entries."""
    row = {s.name: i for i, s in enumerate(photos)}
    missing = [name for name in held_out.names if name not in row]
    if missing:
        raise SelectionError(
            f"{len(missing)} of the {held_out.fitted_on} calibration photos are not in trainval now "
            f"({', '.join(missing[:3])}): select with the data the champion was trained on."
        )
    at = np.array([row[name] for name in held_out.names])
    moved = replace(held_out, logits=variant_logits(held_out.logits, reference[at], quantized[at]))
    calibration, threshold = calibrate(moved, gate)
    at_fp32 = ece(softmax(moved.logits, fp32_temperature), held_out.labels, gate.ece_bins)
    return calibration | {"ece_at_fp32_temperature": at_fp32}, threshold


def fidelity(reference: np.ndarray, quantized: np.ndarray) -> tuple[float, float]:
    """From both models' calibrated probabilities on the same photos: the share where int8's top-1 is
    fp32's, and the mean of the largest difference between their probabilities per photo."""
    agreement = float((reference.argmax(1) == quantized.argmax(1)).mean())
    return agreement, float(np.abs(reference - quantized).max(1).mean())


def requantize(model_dir: str | Path = "model", data_dir: str | Path | None = None) -> ModelCard:
    """`python -m train int8`: make the int8 variant of a shipped model folder again under today's gate,
    without the registry (the folder's card already holds fp32's calibration and the test metrics). int8's
    temperature is fitted again on the logits fp32's was, read through the tracking store (the champion's
    run and its CV parent)."""
    model_dir = Path(model_dir)
    fp32 = PetClassifier.load(model_dir, variant="fp32")
    data = load_dataset(data_dir, fp32.card.data["val_fraction"], fp32.card.data["seed"])
    held_out = calibration_logits(MlflowClient(), fp32.card, fp32, data) if fp32.card.calibration else None
    card = with_int8(fp32, data, model_dir, Gates.load(), held_out)
    card.save(model_dir / "card.json")
    return card


def log_test_results(client: MlflowClient, card: ModelCard, test: dict) -> None:
    run_id = card.mlflow["run_id"]
    for key in ("accuracy", "top5_accuracy", "ece"):
        client.log_metric(run_id, f"test_{key}", card.metrics["test"][key])
    for kind, value in test["per_species"].items():
        client.log_metric(run_id, f"test_accuracy_{kind}", value)
    client.log_artifact(run_id, test["confusion_matrix_png"], "evaluation")
    client.log_dict(run_id, card.to_dict(), "evaluation/card.json")


def calibration_logits(client: MlflowClient, card: ModelCard, served: PetClassifier, data: PetData) -> CalibrationSet:
    """Out-of-fold logits of a cross-validated champion (its final model trained on every trainval image,
    so no held-out split is left); else the served model's logits on the validation split."""
    run = client.get_run(card.mlflow["run_id"]).data
    parent = calibration_parent(run.tags, run.params)
    if parent:
        return CalibrationSet(*load_logits(parent, OOF_LOGITS), "out-of-fold")
    val = evaluate_classifier(served, data, "val")
    return CalibrationSet([s.name for s in data.splits["val"]], val["logits"], val["labels"], "val")


def calibration_parent(tags: dict[str, str], params: dict[str, str]) -> str | None:
    """The CV parent whose out-of-fold logits calibrate this run, or None where its own validation split
    may (a run that held one out). A run that trained on every trainval image and names no parent is
    refused: its "validation" images are ones it learned from, and would make it look sure."""
    parent = tags.get("cv.parent_run_id")
    if parent:
        return parent
    if params.get("images.val") == "0":
        raise SelectionError(
            "The champion trained on all of trainval and its run names no cross-validation parent "
            "(tag cv.parent_run_id): there are no held-out images to calibrate it on. Tag the run with its "
            "cv parent, or re-run `python -m train cv --resume`."
        )
    return None


def calibrate(held_out: CalibrationSet, gate: CalibrationGate) -> tuple[dict, dict]:
    """The card's `calibration` (fp32's temperature) and `not_sure` (threshold) entries."""
    logits, labels, fitted_on = held_out.logits, held_out.labels, held_out.fitted_on
    calibration = calibration_report(logits, labels, gate.ece_bins) | {"fitted_on": fitted_on}
    probabilities = softmax(logits, calibration["temperature"])
    threshold = not_sure_threshold(probabilities, labels, gate.max_flagged_correct)
    return calibration, {"threshold": threshold, "fitted_on": fitted_on}


def summarize_test(test: dict, classifier: PetClassifier, gate: CalibrationGate) -> dict:
    """A variant's test metrics of the served answer, at its own temperatures and "not sure" thresholds, and
    where a dog expert serves, how often the breed model routed a photo to the right model."""
    probabilities = test["probabilities"]
    correct = probabilities.argmax(1) == test["labels"]
    flagged = not_sure(test["confidence"], test["threshold"])
    kept = ("accuracy", "top5_accuracy", "mean_per_class_accuracy", "images", "per_species", "per_class")
    return (
        {key: test[key] for key in kept}
        | {
            "ece": ece(probabilities, test["labels"], gate.ece_bins),
            "ece_uncalibrated": ece(softmax(test["logits"]), test["labels"], gate.ece_bins),
            "not_sure_rate": float(flagged.mean()),
            "not_sure_rate_correct": float(flagged[correct].mean()) if correct.any() else 0.0,
            "not_sure_rate_wrong": float(flagged[~correct].mean()) if (~correct).any() else 0.0,
            "confusion_matrix": Path(test["confusion_matrix_png"]).name,
            "confusion": test["confusion"].tolist(),  # counts, true × answered: the Model tab's tables
        }
        | ({"routing": routing(test, classifier)} if classifier.expert else {})
    )


def routing(test: dict, classifier: PetClassifier) -> dict:
    """How often the breed model sent a test photo to the right model: dogs to the expert, cats not."""
    is_dog = np.array([classifier.species[label] == "dog" for label in test["labels"]])
    return {"species_accuracy": float((test["routed"] == is_dog).mean()), "to_expert": int(test["routed"].sum())}


def non_pet_rate(classifier: PetClassifier) -> dict:
    images = non_pet_images()
    predictions = classifier.predict_batch(list(images.values()))
    flagged = [name for name, p in zip(images, predictions, strict=True) if p.not_sure]
    return {
        "images": len(images),
        "flagged": len(flagged),
        "rate": len(flagged) / len(images),
        "flagged_names": flagged,
    }


def print_card(card: ModelCard) -> None:
    print(json.dumps({k: v for k, v in card.to_dict().items() if k in ("model", "mlflow", "metrics")}, indent=2))
