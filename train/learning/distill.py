"""Learning from the teacher: the distillation loss, and retention, what the student still knows of what
the teacher knew (accuracy restricted to the breeds the teacher has a row for, student against teacher)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from train.data.imagenet import dog_rows
from train.learning.config import Config


def distillation_loss(student: torch.Tensor, teacher: torch.Tensor, temperature: float) -> torch.Tensor:
    """T² · KL(softmax(teacher / T) ‖ softmax(student / T)), averaged over the rows (Hinton et al., 2015):
    zero when the two agree; the T² keeps its gradient on the scale of the cross-entropy's as T changes."""
    if not len(student):
        return student.sum() * 0.0
    target = F.log_softmax(teacher / temperature, dim=1)
    guess = F.log_softmax(student / temperature, dim=1)
    return F.kl_div(guess, target, reduction="batchmean", log_target=True) * temperature**2


@dataclass(frozen=True)
class Distiller:
    """The ImageNet classifier's opinion on dog photos, for the breeds it has a row for."""

    imagenet: nn.Linear
    rows: list[int]  # our classes that are ImageNet dog breeds
    imagenet_rows: list[int]  # their ImageNet classes, in step
    is_dog: torch.Tensor  # per class
    weight: float
    temperature: float

    def loss(self, logits: torch.Tensor, teacher: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        dogs = self.is_dog[y]
        taught = self.imagenet(teacher[dogs].flatten(1))[:, self.imagenet_rows]
        return self.weight * distillation_loss(logits[dogs][:, self.rows], taught, self.temperature)


def make_distiller(config: Config, imagenet: nn.Linear, classes: list[str], species: list[str]) -> Distiller | None:
    """The recipe's distillation, or None where its weight is 0."""
    if not config.distill_weight:
        return None
    rows, imagenet_rows = dog_rows(classes, species)
    is_dog = torch.tensor([kind == "dog" for kind in species])
    return Distiller(imagenet, rows, imagenet_rows, is_dog, config.distill_weight, config.distill_temperature)


def restricted_accuracy(logits: np.ndarray, labels: np.ndarray, rows: list[int]) -> tuple[float, int]:
    """Top-1 among the columns `rows` only, over the samples whose label is one of them; (nan, 0) when no
    sample's is."""
    keep = np.isin(labels, rows)
    if not keep.any():
        return float("nan"), 0
    chosen = np.asarray(rows)[np.asarray(logits)[keep][:, rows].argmax(1)]
    return float((chosen == labels[keep]).mean()), int(keep.sum())


def retention(
    student: np.ndarray, teacher: np.ndarray, labels: np.ndarray, rows: list[int], imagenet_rows: list[int]
) -> dict[str, float]:
    """Student and teacher top-1 among the breeds the teacher knows, on the same photos: the student's
    logits over our classes (`rows` of them), the teacher's over ImageNet's (`imagenet_rows`, in step)."""
    as_imagenet = dict(zip(rows, imagenet_rows, strict=True))
    keep = np.isin(labels, rows)
    imagenet_labels = np.array([as_imagenet[label] for label in labels[keep]], dtype=np.int64)
    student_accuracy, photos = restricted_accuracy(student[keep], labels[keep], rows)
    teacher_accuracy, _ = restricted_accuracy(teacher[keep], imagenet_labels, imagenet_rows)
    return {"student": student_accuracy, "teacher": teacher_accuracy, "photos": float(photos)}
