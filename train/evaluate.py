"""Evaluate an exported model folder through the serving code, so the numbers are what the Space serves."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from inference import PetClassifier
from preprocess import model_batch
from train import metrics
from train.data import DataError, load_dataset

BATCH = 32


def evaluate(
    model_dir: str | Path = "model", split: str = "test", data_dir: str | Path | None = None, variant: str = "fp32"
) -> dict:
    """Top-1, top-5, per-species and per-class accuracy on a split; writes confusion_matrix_<split>.png."""
    classifier = PetClassifier(model_dir, variant=variant)
    card = classifier.card
    data = load_dataset(data_dir, card["data"]["val_fraction"], card["data"]["seed"])
    if data.classes != classifier.labels:
        raise DataError(
            f"The dataset's {len(data.classes)} classes differ from the {len(classifier.labels)} in "
            f"{Path(model_dir) / 'labels.json'}: evaluate a model trained on this dataset."
        )
    samples = data.splits[split]
    paths = [s.path for s in samples]
    logits = np.concatenate(
        [classifier.logits(model_batch(paths[i : i + BATCH], classifier.spec)) for i in range(0, len(paths), BATCH)]
    )
    labels = np.array([s.label for s in samples])
    summary = metrics.summarize(logits, labels, data.classes, data.species)
    plot = Path(model_dir) / f"confusion_matrix_{split}{'' if variant == 'fp32' else '_' + variant}.png"
    metrics.plot_confusion(summary["confusion"], data.classes, f"{split} ({len(samples)} images)", plot)
    summary["confusion_matrix_png"] = str(plot)
    summary["logits"], summary["labels"] = logits, labels
    return summary
