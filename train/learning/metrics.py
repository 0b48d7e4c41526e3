"""Classification metrics and their pictures, shared by training-time validation and `evaluate`."""

from __future__ import annotations

import csv
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np


def summarize(logits: np.ndarray, labels: np.ndarray, classes: list[str], species: list[str]) -> dict:
    """Top-1, top-5, per-species and per-class accuracy (fractions in [0,1]), their mean over the classes
    that have images (the balanced figure: the held-out photos are mostly cats), and the confusion matrix."""
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
        "mean_per_class_accuracy": mean_per_class(per_class),
        "confusion": confusion,
    }


def mean_per_class(per_class: dict[str, float]) -> float:
    """The mean of per-class accuracies, each class counted once however many images it has."""
    return float(np.mean(list(per_class.values()))) if per_class else float("nan")


def write_per_class_csv(summary: dict, classes: list[str], path: Path) -> Path:
    counts = summary["confusion"].sum(1)
    with open(path, "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["class", "images", "accuracy"])
        for i, name in enumerate(classes):
            writer.writerow([name, int(counts[i]), summary["per_class"].get(name, "")])
    return path


def plot_confusion(confusion: np.ndarray, classes: list[str], title: str, path: Path) -> Path:
    """Row-normalised matrix of the classes that have images: readable names, counts in the cells."""
    confusion = np.asarray(confusion)
    keep = np.flatnonzero(confusion.sum(1) > 0)
    shown = confusion[np.ix_(keep, keep)]
    rows = shown.sum(1, keepdims=True)
    share = np.divide(shown, rows, out=np.zeros(shown.shape), where=rows > 0)
    names = [f"{classes[i].replace('_', ' ')} ({int(rows[k, 0])})" for k, i in enumerate(keep)]
    side = max(6.0, 0.42 * len(keep) + 3)
    fig, ax = plt.subplots(figsize=(side, side))
    ax.imshow(share, cmap="Blues", vmin=0, vmax=1)
    for (r, c), count in np.ndenumerate(shown):
        if count:
            ax.text(
                c, r, str(count), ha="center", va="center", fontsize=7, color="white" if share[r, c] > 0.5 else "black"
            )
    ax.set_xticks(range(len(keep)), [name.rsplit(" (", 1)[0] for name in names], rotation=90, fontsize=9)
    ax.set_yticks(range(len(keep)), names, fontsize=9)
    ax.set_xlabel("answered")
    ax.set_ylabel("true breed (test photos)")
    ax.set_title(f"{title}; only classes with images, share of each row")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
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
