"""`python -m train retest`: a shipped model folder tested again on the photos held today, without the
registry. Photos get added to the test split (../shared/data/oxford-iiit-pet/SOURCE.md, "Added later"),
and every figure on the card must come from the photos there are now, whether or not a new model ships.

What selection fitted stays: each variant's temperature and the "not sure" threshold. What the photos
decide is measured again: each variant's test metrics and confusion matrix, and retention on the Stanford
Dogs folder beside the data (left off the card of a model that trained on extra photos)."""

from __future__ import annotations

import logging
from dataclasses import replace
from datetime import date
from pathlib import Path

from inference import ModelCard, ModelError, PetClassifier
from train.data.pets import load_dataset
from train.shipping import retention
from train.shipping.evaluate import evaluate_classifier
from train.shipping.export import updating
from train.shipping.gates import Gates
from train.shipping.select import int8_test, summarize_test

log = logging.getLogger(__name__)


def retest(model_dir: str | Path = "model", data_dir: str | Path | None = None) -> ModelCard:
    """Test `model_dir`'s variants and retention on today's photos and rewrite its card's figures of them,
    in a copy of the folder that replaces it only once all of it has succeeded."""
    if not (Path(model_dir) / "card.json").is_file():
        raise ModelError(f"{model_dir} holds no card.json: retest a model folder that `select` wrote.")
    with updating(Path(model_dir)) as staging:
        return retest_in(staging, data_dir)


def retest_in(folder: Path, data_dir: str | Path | None) -> ModelCard:
    gate, fp32 = Gates.load().calibration, PetClassifier.load(folder, variant="fp32")
    card = fp32.card
    data = load_dataset(data_dir, card.data["val_fraction"], card.data["seed"])
    tested_on = {"data_digest": data.digest, "retested": date.today().isoformat()}
    tested = evaluate_classifier(fp32, data, "test", folder / "confusion_matrix_test.png")
    test = summarize_test(tested, fp32, gate) | {"variant": "fp32"} | tested_on
    images = card.data["images"] | {"test": len(data.splits["test"])}
    missing = card.data["missing"] | {"test": data.missing_totals()["test"]}
    retained = retention_again(fp32, data.root)
    metrics = {key: value for key, value in card.metrics.items() if key != "retention"} | {"test": test}
    metrics |= {"retention": retained} if retained else {}
    card = replace(card, data=card.data | {"images": images, "missing": missing}, metrics=metrics)
    if "int8" in card.variants():
        int8 = PetClassifier(card, folder / card.int8["file"], fp32.labels, variant="int8")
        card = replace(
            card, int8=card.int8 | {"test": int8_test(int8, fp32.temperature, data, folder, gate) | tested_on}
        )
    elif card.int8:  # rejected at selection, its file deleted: its old test figures go too
        card = replace(card, int8={key: value for key, value in card.int8.items() if key != "test"})
    card.save(folder / "card.json")
    log.info("test accuracy %.4f on %d photos", test["accuracy"], test["images"])
    return card


def retention_again(fp32: PetClassifier, data_root: Path) -> dict | None:
    """Retention on the Stanford folder beside the data; where there is no such folder here, the card keeps
    the figure it had, unless the model may have trained on those photos."""
    found = retention.for_card(fp32, data_root)
    absent = not (data_root.parent / retention.FOLDER / "MANIFEST.tsv").is_file()
    trained_on = retention.trained_on_extra_photos(fp32.card)
    if found is None and absent and not trained_on and fp32.card.metrics.get("retention"):
        log.warning("retention not measured again: the card keeps the figure it had")
        return fp32.card.metrics["retention"]
    return found
