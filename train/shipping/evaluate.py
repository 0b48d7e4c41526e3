"""Evaluate a model through the serving code, so the numbers are what the Space serves."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np

from inference import Answer, PetClassifier
from preprocess import InputSpec, PreprocessError, model_batch
from train.data.pets import DataError, PetData, Sample, load_dataset
from train.learning import metrics

BATCH = 32


def prepared(spec: InputSpec, samples: list[Sample], batch: int = BATCH) -> Iterator[np.ndarray]:
    """`samples`' photos prepared as serving prepares them (`spec`), `batch` at a time: the one loop every
    evaluation feeds its models with, so all of them read a photo as the Space does."""
    paths = [s.path for s in samples]
    return (model_batch(paths[i : i + batch], spec) for i in range(0, len(paths), batch))


def photo_logits(classifier: PetClassifier, samples: list[Sample]) -> np.ndarray:
    """The breed model's raw logits for `samples`' photos."""
    return np.concatenate([classifier.logits(x) for x in prepared(classifier.spec, samples)])


def photo_answers(classifier: PetClassifier, samples: list[Sample]) -> Answer:
    """The served answer for `samples`' photos (`PetClassifier.answer`: the breed model, and the dog expert
    for the photos it routes there)."""
    answers = [classifier.answer(x) for x in prepared(classifier.spec, samples)]
    return Answer(*(np.concatenate(parts) for parts in zip(*(answer[:-1] for answer in answers), strict=True)))


def log_probabilities(probabilities: np.ndarray) -> np.ndarray:
    """Logits whose softmax is exactly the served answer: what argmax, top-5 and restricted top-1 read."""
    return np.log(np.maximum(probabilities, np.finfo(np.float32).tiny))


def evaluate_classifier(classifier: PetClassifier, data: PetData, split: str, plot: Path | None = None) -> dict:
    """Top-1, top-5, per-species and per-class accuracy of the served answer on a split, with its
    probabilities, which photos the dog expert answered, the breed model's own raw logits (what its
    temperature is fitted on) and the labels; the confusion matrix is drawn to `plot` when given."""
    if data.classes != classifier.labels:
        raise DataError(
            f"The dataset's {len(data.classes)} classes differ from the model's {len(classifier.labels)}: "
            "evaluate a model trained on this dataset."
        )
    try:
        answer = photo_answers(classifier, data.splits[split])
    except PreprocessError as error:  # one unreadable photo: a sentence, not a traceback
        raise DataError(f"A {split} photo cannot be read: {error}") from None
    labels = np.array([s.label for s in data.splits[split]])
    summary = metrics.summarize(log_probabilities(answer.probabilities), labels, data.classes, data.species)
    if plot:
        metrics.plot_confusion(summary["confusion"], data.classes, f"{split} ({len(labels)} images)", plot)
        summary["confusion_matrix_png"] = str(plot)
    served = {"logits": answer.logits, "probabilities": answer.probabilities, "routed": answer.routed}
    served |= {"confidence": answer.confidence, "threshold": answer.threshold}
    return summary | served | {"no_pet": answer.no_pet, "labels": labels}


def evaluate(
    model_dir: str | Path = "model", split: str = "test", data_dir: str | Path | None = None, variant: str = "fp32"
) -> dict:
    """`python -m train evaluate`: a model folder on a split; writes confusion_matrix_<split>.png beside it."""
    classifier = PetClassifier.load(model_dir, variant=variant)
    data = load_dataset(data_dir, classifier.card.data["val_fraction"], classifier.card.data["seed"])
    plot = Path(model_dir) / f"confusion_matrix_{split}{'' if variant == 'fp32' else '_' + variant}.png"
    return evaluate_classifier(classifier, data, split, plot)
