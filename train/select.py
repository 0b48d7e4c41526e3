"""Pick the champion among registered versions, test it once, and export it."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import mlflow
import numpy as np
from mlflow import MlflowClient

from inference import PetClassifier, not_sure, softmax
from train.calibrate import calibration_report, ece, non_pet_images, not_sure_threshold
from train.crossval import OOF_ARTIFACT
from train.evaluate import evaluate
from train.export import REGISTERED_MODEL, export, write_card
from train.quantize import quantize

log = logging.getLogger(__name__)


def rank_key(found: dict[str, float], version: int) -> tuple[int, float, float, int] | None:
    """Cross-validated versions first (a k-fold estimate beats one small split), by CV accuracy, then
    validation-split versions by validation accuracy; ties go to the lower loss, then the newer version.
    None for a version with neither metric."""
    for rank, prefix in ((1, "cv"), (0, "val")):
        if f"{prefix}_accuracy" in found:
            return (rank, found[f"{prefix}_accuracy"], -found.get(f"{prefix}_loss", 0.0), version)
    return None


def best_version(client: MlflowClient) -> str:
    candidates = []
    for mv in client.search_model_versions(f"name='{REGISTERED_MODEL}'"):
        key = rank_key(client.get_run(mv.run_id).data.metrics, int(mv.version))
        if key is not None:
            candidates.append((key, mv))
    if not candidates:
        raise RuntimeError(
            f"No registered version of {REGISTERED_MODEL} with a CV or validation accuracy: run fit first."
        )
    return max(candidates, key=lambda pair: pair[0])[1].version


def select(out_dir: str | Path = "model", data_dir: str | Path | None = None) -> dict:
    """Champion by validation accuracy -> alias -> export -> int8 gate -> calibration on val -> test.

    Calibration, the "not sure" threshold and the card's test metrics all belong to the variant that
    serves (int8 when its gate accepts it), so the card describes what the Space answers."""
    client = MlflowClient()
    version = best_version(client)
    client.set_registered_model_alias(REGISTERED_MODEL, "champion", version)
    log.info("champion: %s version %s", REGISTERED_MODEL, version)
    out_dir = Path(out_dir)
    card = export(alias="champion", out_dir=out_dir, data_dir=data_dir)
    fp32_test = evaluate(out_dir, "test", data_dir, variant="fp32")
    card["int8"], int8_test = quantize(out_dir, data_dir, fp32_test["accuracy"])
    served = "int8" if card["int8"]["accepted"] else "fp32"
    card |= calibrate(*calibration_logits(client, card, out_dir, data_dir, served))
    test = int8_test if served == "int8" else fp32_test
    card["metrics"]["test"] = summarize_test(test, card) | {"variant": served}
    card["metrics"]["test_fp32"] = {key: fp32_test[key] for key in ("accuracy", "top5_accuracy")}
    write_card(card, out_dir)  # serving reads temperature and threshold from here, as non_pet_rate does
    card["not_sure"]["non_pet"] = non_pet_rate(out_dir)
    write_card(card, out_dir)
    log_test_results(client, card, test)
    log.info("test accuracy %.4f (top-5 %.4f), served %s", test["accuracy"], test["top5_accuracy"], served)
    return card


def log_test_results(client: MlflowClient, card: dict, test: dict) -> None:
    run_id = card["mlflow"]["run_id"]
    for key in ("accuracy", "top5_accuracy", "ece"):
        client.log_metric(run_id, f"test_{key}", card["metrics"]["test"][key])
    for kind, value in test["per_species"].items():
        client.log_metric(run_id, f"test_accuracy_{kind}", value)
    client.log_artifact(run_id, test["confusion_matrix_png"], "evaluation")
    client.log_dict(run_id, card, "evaluation/card.json")


def calibration_logits(
    client: MlflowClient, card: dict, out_dir: Path, data_dir: str | Path | None, served: str
) -> tuple[np.ndarray, np.ndarray, str]:
    """Out-of-fold logits of a cross-validated champion (its final model trained on every trainval image,
    so no held-out split is left); else the served model's logits on the validation split."""
    parent = client.get_run(card["mlflow"]["run_id"]).data.tags.get("cv.parent_run_id")
    if parent:
        oof = np.load(mlflow.artifacts.download_artifacts(run_id=parent, artifact_path=OOF_ARTIFACT))
        return oof["logits"], oof["labels"], "out-of-fold"
    val = evaluate(out_dir, "val", data_dir, variant=served)
    return val["logits"], val["labels"], "val"


def calibrate(logits: np.ndarray, labels: np.ndarray, fitted_on: str) -> dict:
    """The card's `calibration` (temperature) and `not_sure` (threshold) entries."""
    calibration = calibration_report(logits, labels) | {"fitted_on": fitted_on}
    threshold = not_sure_threshold(softmax(logits, calibration["temperature"]), labels)
    return {"calibration": calibration, "not_sure": {"threshold": threshold, "fitted_on": fitted_on}}


def summarize_test(test: dict, card: dict) -> dict:
    probabilities = softmax(test["logits"], card["calibration"]["temperature"])
    correct = probabilities.argmax(1) == test["labels"]
    flagged = not_sure(probabilities.max(1), card["not_sure"]["threshold"])
    return {key: test[key] for key in ("accuracy", "top5_accuracy", "images", "per_species", "per_class")} | {
        "ece": ece(probabilities, test["labels"]),
        "ece_uncalibrated": ece(softmax(test["logits"]), test["labels"]),
        "not_sure_rate": float(flagged.mean()),
        "not_sure_rate_correct": float(flagged[correct].mean()),
        "not_sure_rate_wrong": float(flagged[~correct].mean()) if (~correct).any() else 0.0,
        "confusion_matrix": Path(test["confusion_matrix_png"]).name,
    }


def non_pet_rate(out_dir: Path) -> dict:
    classifier = PetClassifier(out_dir)
    images = non_pet_images()
    flagged = [
        name for name, p in zip(images, classifier.predict_batch(list(images.values())), strict=True) if p.not_sure
    ]
    return {
        "images": len(images),
        "flagged": len(flagged),
        "rate": len(flagged) / len(images),
        "flagged_names": flagged,
    }


def print_card(card: dict) -> None:
    print(json.dumps({k: card[k] for k in ("model", "mlflow", "metrics")}, indent=2))
