"""Classification metrics and their pictures, shared by training-time validation and `evaluate`."""

from __future__ import annotations

import csv
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np


def summarize(logits: np.ndarray, labels: np.ndarray, classes: list[str], species: list[str]) -> dict:
    """Top-1, top-5, per-species and per-class accuracy (fractions in [0,1]) and the confusion matrix."""
    predicted = logits.argmax(1)
    top5 = np.argsort(-logits, axis=1)[:, :5]
    correct = predicted == labels
    per_class = {name: float(correct[labels == i].mean()) for i, name in enumerate(classes) if (labels == i).any()}
    label_species = np.asarray(species)[labels]
    per_species = {kind: float(correct[label_species == kind].mean()) for kind in sorted(set(label_species))}
    confusion = np.zeros((len(classes), len(classes)), dtype=np.int64)
    np.add.at(confusion, (labels, predicted), 1)
    return {
        "accuracy": float(correct.mean()),
        "top5_accuracy": float((top5 == labels[:, None]).any(1).mean()),
        "images": len(labels),
        "per_species": per_species,
        "per_class": per_class,
        "confusion": confusion,
    }


def write_per_class_csv(summary: dict, classes: list[str], path: Path) -> Path:
    counts = summary["confusion"].sum(1)
    with open(path, "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["class", "images", "accuracy"])
        for i, name in enumerate(classes):
            writer.writerow([name, int(counts[i]), summary["per_class"].get(name, "")])
    return path


def plot_confusion(confusion: np.ndarray, classes: list[str], title: str, path: Path) -> Path:
    rows = confusion.sum(1, keepdims=True)
    share = np.divide(confusion, rows, out=np.zeros(confusion.shape), where=rows > 0)
    fig, ax = plt.subplots(figsize=(11, 10))
    ax.imshow(share, cmap="Blues", vmin=0, vmax=1)
    ax.set_xticks(range(len(classes)), classes, rotation=90, fontsize=7)
    ax.set_yticks(range(len(classes)), classes, fontsize=7)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title(title)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return path


def plot_curves(history: list[dict[str, float]], path: Path) -> Path:
    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    epochs = [row["epoch"] for row in history]
    for ax, metric in zip(axes, ("loss", "accuracy"), strict=True):
        for split in ("train", "val") if f"val_{metric}" in history[0] else ("train",):
            ax.plot(epochs, [row[f"{split}_{metric}"] for row in history], label=split)
        ax.set_xlabel("epoch")
        ax.set_title(metric)
        ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return path
