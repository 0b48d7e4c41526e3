"""Pick the champion among registered versions, test it once, and export it."""

from __future__ import annotations

import json
import logging
from pathlib import Path

from mlflow import MlflowClient

from train.evaluate import evaluate
from train.export import REGISTERED_MODEL, export, write_card

log = logging.getLogger(__name__)


def rank_key(val_accuracy: float, val_loss: float, version: int) -> tuple[float, float, int]:
    """Highest validation accuracy; ties go to the lower validation loss, then to the newer version."""
    return (val_accuracy, -val_loss, version)


def best_version(client: MlflowClient) -> str:
    candidates = []
    for mv in client.search_model_versions(f"name='{REGISTERED_MODEL}'"):
        found = client.get_run(mv.run_id).data.metrics
        if "val_accuracy" in found:
            candidates.append((rank_key(found["val_accuracy"], found.get("val_loss", 0.0), int(mv.version)), mv))
    if not candidates:
        raise RuntimeError(f"No registered version of {REGISTERED_MODEL} with a validation accuracy: run fit first.")
    return max(candidates, key=lambda pair: pair[0])[1].version


def select(out_dir: str | Path = "model", data_dir: str | Path | None = None) -> dict:
    client = MlflowClient()
    version = best_version(client)
    client.set_registered_model_alias(REGISTERED_MODEL, "champion", version)
    log.info("champion: %s version %s", REGISTERED_MODEL, version)
    card = export(alias="champion", out_dir=out_dir, data_dir=data_dir)
    test = evaluate(out_dir, "test", data_dir)
    run_id = card["mlflow"]["run_id"]
    for key in ("accuracy", "top5_accuracy"):
        client.log_metric(run_id, f"test_{key}", test[key])
    for kind, value in test["per_species"].items():
        client.log_metric(run_id, f"test_accuracy_{kind}", value)
    client.log_artifact(run_id, test["confusion_matrix_png"], "evaluation")
    card["metrics"]["test"] = {
        key: test[key] for key in ("accuracy", "top5_accuracy", "images", "per_species", "per_class")
    }
    write_card(card, Path(out_dir))
    log.info("test accuracy %.4f (top-5 %.4f)", test["accuracy"], test["top5_accuracy"])
    return card


def print_card(card: dict) -> None:
    print(json.dumps({k: card[k] for k in ("model", "mlflow", "metrics")}, indent=2))
