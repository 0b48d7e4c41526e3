"""Retention on a folder of labelled dog photos (an extra folder's layout): the served answer against the
ImageNet network it started from, among the dog breeds ImageNet knows. Stanford Dogs are ImageNet photos,
the teacher's home ground: the figure says what the model kept, and is never used to choose a model."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import torch
from torch import nn

from inference import ModelCard, PetClassifier
from preprocess import InputSpec, PreprocessError
from train.data.imagenet import dog_rows
from train.data.pets import DataError, Sample, load_extra
from train.learning.backbones import get_backbone
from train.learning.distill import retention
from train.learning.features import EXTRACT_BATCH
from train.shipping.evaluate import log_probabilities, photo_answers, prepared

log = logging.getLogger(__name__)

FOLDER = "stanford-dogs-extra"  # beside the Oxford data folder, as in ../shared/data


@torch.no_grad()
def teacher_logits(backbone: str, spec: InputSpec, samples: list[Sample]) -> np.ndarray:
    """The untouched pretrained network's ImageNet logits, on the tensor serving makes of each photo."""
    layers, classifier = get_backbone(backbone).build(spec.crop)
    network = nn.Sequential(*layers).eval().to(memory_format=torch.channels_last)  # as the feature cache runs it
    batches = (torch.from_numpy(x) for x in prepared(spec, samples, EXTRACT_BATCH))
    return np.concatenate(
        [classifier(network(x.contiguous(memory_format=torch.channels_last)).mean((2, 3))).numpy() for x in batches]
    )


def trained_on_extra_photos(card: ModelCard) -> bool:
    """Whether the model may have trained on the retention photos: the one rule select, retest, the expert
    and `python -m train retention` follow. Training on extra folders was retired after commit 6346004 (a
    run that did cannot be exported), so only an older card counts extra photos, without naming their
    folder or its digest: the Stanford photos may be among them, and would measure memory, not what was
    kept."""
    return bool(card.data["images"].get("extra"))


def measure(classifier: PetClassifier, folder: Path) -> dict | None:
    """Overall and per-breed retention on `folder`'s photos of breeds the teacher knows; None (said in the
    log) where the folder is absent, holds no such photo, or the model may have trained on them
    (`trained_on_extra_photos`). Listed photos whose file is missing are counted, not fatal."""
    if not (folder / "MANIFEST.tsv").is_file():
        log.warning("no retention photos at %s (no MANIFEST.tsv): no retention measured there", folder)
        return None
    if trained_on_extra_photos(classifier.card):
        log.warning("the model trained on extra photos, maybe %s's: no retention measured on them", folder.name)
        return None
    extra = load_extra(folder, classifier.labels)
    rows, imagenet_rows = dog_rows(classifier.labels, classifier.card.species)
    samples = [s for s in extra.samples if s.label in rows]
    if not samples:
        log.warning("no photo of a dog breed ImageNet knows at %s: no retention measured there", folder)
        return None
    try:
        student = log_probabilities(photo_answers(classifier, samples).probabilities)  # the served answer
        teacher = teacher_logits(classifier.card.model.backbone, classifier.spec, samples)
    except PreprocessError as error:  # one unreadable file: a sentence naming the folder, not a traceback
        raise DataError(f"A retention photo in {folder} cannot be read: {error}") from None
    labels = np.array([s.label for s in samples])
    per_breed = {
        classifier.labels[row]: retention(
            student[labels == row], teacher[labels == row], labels[labels == row], rows, imagenet_rows
        )
        for row in rows
        if (labels == row).any()
    }
    overall = retention(student, teacher, labels, rows, imagenet_rows)
    log.info(
        "retention on %s: model %.4f, teacher %.4f (%d photos)",
        folder.name,
        overall["student"],
        overall["teacher"],
        len(labels),
    )
    return overall | {"folder": folder.name, "missing": sum(extra.missing.values()), "per_breed": per_breed}


def for_card(classifier: PetClassifier, data_root: Path) -> dict | None:
    """Retention on the Stanford Dogs folder beside the Oxford data, for a card; None (with a warning) where
    there is none or a photo cannot be read: a figure that chooses nothing must not stop a selection."""
    try:
        return measure(classifier, data_root.parent / FOLDER)
    except DataError as error:
        log.warning("no retention on the card: %s", error)
        return None
