"""`python -m train retest`: a shipped model folder tested again on the photos held today, without the
registry. Photos get added to the test split (../shared/data/oxford-iiit-pet/SOURCE.md, "Added later"),
and every figure on the card must come from the photos there are now, whether or not a new model ships.

What selection fitted stays: each variant's temperature and the "not sure" threshold. What the photos
decide is measured again: each variant's test metrics and confusion matrix, and retention on the Stanford
Dogs folder beside the data (left off the card of a model that trained on extra photos)."""

from __future__ import annotations

import logging
from dataclasses import replace
from pathlib import Path

from inference import ModelCard, PetClassifier
from train import retention
from train.data import load_dataset
from train.evaluate import evaluate_classifier
from train.gates import Gates
from train.select import INT8_FILE, int8_test, summarize_test

log = logging.getLogger(__name__)


def retest(model_dir: str | Path = "model", data_dir: str | Path | None = None) -> ModelCard:
    """Test `model_dir`'s variants and retention on today's photos; rewrite its card's figures of them."""
    model_dir, gate = Path(model_dir), Gates.load().calibration
    fp32 = PetClassifier.load(model_dir, variant="fp32")
    card = fp32.card
    data = load_dataset(data_dir, card.data["val_fraction"], card.data["seed"])
    tested = evaluate_classifier(fp32, data, "test", model_dir / "confusion_matrix_test.png")
    test = summarize_test(tested, fp32, gate) | {"variant": "fp32", "data_digest": data.digest}
    trained_on = retention.folders_trained_on(card, data.root.parent / retention.FOLDER)
    retained = retention.for_card(fp32, data.root, trained_on)
    metrics = {key: value for key, value in card.metrics.items() if key != "retention"} | {"test": test}
    images = card.data["images"] | {"test": len(data.splits["test"])}
    data_entry = card.data | {
        "images": images,
        "missing": card.data["missing"] | {"test": data.missing_totals()["test"]},
    }
    card = replace(card, data=data_entry, metrics=metrics | ({"retention": retained} if retained else {}))
    if "int8" in card.variants():
        int8 = PetClassifier(card, model_dir / INT8_FILE, fp32.labels, variant="int8")
        card = replace(card, int8=card.int8 | {"test": int8_test(int8, fp32.temperature, data, model_dir, gate)})
    card.save(model_dir / "card.json")
    log.info("test accuracy %.4f on %d photos", test["accuracy"], test["images"])
    return card
