"""The teacher's maths: the distillation loss, the dog rows it is asked about, and retention."""

from __future__ import annotations

import numpy as np
import torch

from train.data.imagenet import IMAGENET_CLASSES, dog_rows
from train.learning.distill import distillation_loss, restricted_accuracy, retention


def test_distillation_is_zero_when_the_student_agrees_with_the_teacher() -> None:
    logits = torch.tensor([[2.0, -1.0, 0.5], [0.0, 3.0, -2.0]])
    assert distillation_loss(logits, logits.clone(), temperature=2.0).item() < 1e-7
    assert distillation_loss(logits, logits + 5.0, temperature=2.0).item() < 1e-6  # a softmax ignores a shift
    assert distillation_loss(logits, logits.flip(1), temperature=2.0).item() > 0.1


def test_a_distillation_step_moves_the_students_distribution_toward_the_teachers() -> None:
    teacher = torch.tensor([[4.0, 0.0, -2.0]])
    student = torch.tensor([[0.0, 3.0, 0.0]], requires_grad=True)
    before = distillation_loss(student, teacher, 2.0)
    before.backward()
    assert student.grad[0, 0] < 0 < student.grad[0, 1]  # descent raises the teacher's favourite, lowers the other
    moved = (student - 0.5 * student.grad).detach()
    assert distillation_loss(moved, teacher, 2.0) < before
    assert distillation_loss(student[:0], teacher[:0], 2.0).item() == 0.0  # no dog in the batch: no term


def test_the_dog_rows_are_the_22_imagenet_dog_breeds_in_step_with_imagenet() -> None:
    classes = ["Persian", "beagle", "american_bulldog", "pug", "Siamese"]
    species = ["cat", "dog", "dog", "dog", "cat"]
    rows, imagenet_rows = dog_rows(classes, species)
    assert rows == [1, 3]  # no cat row (the teacher would pull cats toward its three), no unknown breed
    assert imagenet_rows == [IMAGENET_CLASSES["beagle"][1], IMAGENET_CLASSES["pug"][1]]


def test_the_restricted_argmax_reads_only_the_mapped_rows() -> None:
    logits = np.array([[9.0, 1.0, 2.0, 0.0], [9.0, 4.0, 1.0, 3.0], [0.0, 5.0, 1.0, 0.0]])
    labels = np.array([2, 3, 0])  # class 0 is not mapped: its photo does not count, and its row never wins
    accuracy, photos = restricted_accuracy(logits, labels, rows=[1, 2, 3])
    assert photos == 2 and accuracy == 0.5  # photo 1: row 2 wins (right); photo 2: row 1 wins (wrong)
    assert restricted_accuracy(logits, np.array([0]), rows=[1, 2])[1] == 0


def test_retention_compares_student_and_teacher_on_the_same_photos() -> None:
    rows, imagenet_rows = [0, 2], [10, 30]  # our class 0 is ImageNet 10, our class 2 is ImageNet 30
    labels = np.array([0, 2, 2, 1])  # the class-1 photo is not a breed the teacher knows
    student = np.array([[1.0, 9, 0], [0, 9, 1], [1, 0, 0], [0, 0, 0]])  # right, right, wrong
    teacher = np.zeros((4, 40))
    teacher[[0, 1, 2], [10, 30, 30]] = 1.0  # right, right, right
    teacher[:, 5] = 100.0  # an ImageNet class outside the mapped rows never counts
    found = retention(student, teacher, labels, rows, imagenet_rows)
    assert found == {"student": 2 / 3, "teacher": 1.0, "photos": 3.0}
