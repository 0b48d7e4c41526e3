"""A prior correction for class imbalance: logits − τ·log(training prior), τ fitted on out-of-fold logits
for the mean per-class accuracy (nested for the CV figures: each fold's τ from the other folds), and folded
into the exported head's bias, so serving does not change.

A classifier trained on a skewed set learns its prior: with 100 American Bulldogs beside 10–19 photos of
each other dog breed, 40 % of its wrong dog answers were "American Bulldog". Subtracting τ times the log
of the training frequencies moves every logit by a per-class constant, exactly what a bias does.
"""

from __future__ import annotations

import numpy as np
import torch

from train.learning.metrics import mean_per_class

STRENGTHS = tuple(np.round(np.arange(0.0, 1.51, 0.125), 3))  # τ = 0 is no correction


def log_prior(labels: list[int] | np.ndarray, classes: int) -> np.ndarray:
    """Log training frequency per class (a class without images counts one, so the log stays finite)."""
    counts = np.bincount(np.asarray(labels), minlength=classes).astype(np.float64)
    return np.log(np.maximum(counts, 1.0) / counts.sum())


def corrected(logits: np.ndarray, prior: np.ndarray, strength: float) -> np.ndarray:
    return logits - strength * prior


def fit_strength(logits: np.ndarray, labels: np.ndarray, prior: np.ndarray) -> tuple[float, dict[float, float]]:
    """The τ of STRENGTHS with the best mean per-class accuracy on held-out logits (the smallest on a tie),
    and that accuracy for every τ tried."""
    scores = {}
    for strength in STRENGTHS:
        predicted = corrected(logits, prior, strength).argmax(1)
        correct = predicted == labels
        scores[float(strength)] = mean_per_class({c: correct[labels == c].mean() for c in np.unique(labels)})
    best = max(scores, key=lambda s: (round(scores[s], 12), -s))
    return best, scores


def nested_corrected(
    logits: np.ndarray, labels: np.ndarray, groups: np.ndarray, prior: np.ndarray
) -> tuple[np.ndarray, dict[int, float]]:
    """Each group's (fold's) logits corrected by the τ fitted on the other groups' logits alone, and those
    τ by group. Metrics on these measure what fitting τ on held-out logits gives on logits it did not see;
    on logits corrected by a τ fitted on themselves they are optimistic (τ saw their labels)."""
    honest = np.empty(logits.shape, dtype=np.result_type(logits, prior))
    strengths = {}
    for group in np.unique(groups).tolist():
        inside = groups == group
        strengths[group] = fit_strength(logits[~inside], labels[~inside], prior)[0]
        honest[inside] = corrected(logits[inside], prior, strengths[group])
    return honest, strengths


def fold_into_bias(head: torch.nn.Module, prior: np.ndarray, strength: float) -> None:
    """Apply the correction in place to the bias of the head's last linear layer, the one that outputs the
    logits (the linear classifier, or an MLP's output layer): its logits (and a linear head's class
    activation maps, whose spatial mean they are) become the corrected ones."""
    layer = [module for module in head.modules() if isinstance(module, torch.nn.Linear)][-1]
    with torch.no_grad():
        layer.bias -= torch.as_tensor(strength * prior, dtype=layer.bias.dtype)
