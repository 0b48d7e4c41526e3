"""Evaluate a model through the serving code, so the numbers are what the Space serves."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from inference import PetClassifier
from preprocess import PreprocessError, model_batch
from train import metrics
from train.data import DataError, PetData, Sample, load_dataset

BATCH = 32


def photo_logits(classifier: PetClassifier, samples: list[Sample]) -> np.ndarray:
    """The classifier's logits for `samples`' photos, prepared as serving prepares them, in batches."""
    paths = [s.path for s in samples]
    return np.concatenate(
        [classifier.logits(model_batch(paths[i : i + BATCH], classifier.spec)) for i in range(0, len(paths), BATCH)]
    )


def evaluate_classifier(classifier: PetClassifier, data: PetData, split: str, plot: Path | None = None) -> dict:
    """Top-1, top-5, per-species and per-class accuracy on a split, with the logits and labels; the
    confusion matrix is drawn to `plot` when given."""
    if data.classes != classifier.labels:
        raise DataError(
            f"The dataset's {len(data.classes)} classes differ from the model's {len(classifier.labels)}: "
            "evaluate a model trained on this dataset."
        )
    try:
        logits = photo_logits(classifier, data.splits[split])
    except PreprocessError as error:  # one unreadable photo: a sentence, not a traceback
        raise DataError(f"A {split} photo cannot be read: {error}") from None
    labels = np.array([s.label for s in data.splits[split]])
    summary = metrics.summarize(logits, labels, data.classes, data.species)
    if plot:
        metrics.plot_confusion(summary["confusion"], data.classes, f"{split} ({len(labels)} images)", plot)
        summary["confusion_matrix_png"] = str(plot)
    return summary | {"logits": logits, "labels": labels}


def evaluate(
    model_dir: str | Path = "model", split: str = "test", data_dir: str | Path | None = None, variant: str = "fp32"
) -> dict:
    """`python -m train evaluate`: a model folder on a split; writes confusion_matrix_<split>.png beside it."""
    classifier = PetClassifier.load(model_dir, variant=variant)
    data = load_dataset(data_dir, classifier.card.data["val_fraction"], classifier.card.data["seed"])
    plot = Path(model_dir) / f"confusion_matrix_{split}{'' if variant == 'fp32' else '_' + variant}.png"
    return evaluate_classifier(classifier, data, split, plot)
