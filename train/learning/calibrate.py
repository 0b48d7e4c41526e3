"""Temperature scaling and the "not sure" threshold, fitted on out-of-fold or validation predictions."""

from __future__ import annotations

import itertools

import numpy as np
from PIL import Image

from inference import softmax


def _log_softmax(logits: np.ndarray) -> np.ndarray:
    shifted = logits - logits.max(axis=1, keepdims=True)
    return shifted - np.log(np.exp(shifted).sum(axis=1, keepdims=True))


def nll(logits: np.ndarray, labels: np.ndarray, temperature: float = 1.0) -> float:
    return float(-_log_softmax(logits / temperature)[np.arange(len(labels)), labels].mean())


def ece(probabilities: np.ndarray, labels: np.ndarray, bins: int) -> float:
    """Expected calibration error: |accuracy - confidence| per equal-width confidence bin, weighted by size."""
    confidence, predicted = probabilities.max(1), probabilities.argmax(1)
    correct = predicted == labels
    edges = np.linspace(0, 1, bins + 1)
    total = 0.0
    for low, high in itertools.pairwise(edges):
        inside = (confidence > low) & (confidence <= high)
        if inside.any():
            total += inside.mean() * abs(correct[inside].mean() - confidence[inside].mean())
    return float(total)


def fit_temperature(logits: np.ndarray, labels: np.ndarray) -> float:
    """The temperature minimising validation NLL. NLL is convex in 1/T, so a ternary search finds it."""
    low, high = 1e-2, 1e2  # bounds on 1/T
    for _ in range(200):
        a, b = low + (high - low) / 3, high - (high - low) / 3
        if nll(logits, labels, 1 / a) < nll(logits, labels, 1 / b):
            high = b
        else:
            low = a
    return float(2 / (low + high))


def variant_logits(calibration: np.ndarray, reference: np.ndarray, variant: np.ndarray) -> np.ndarray:
    """Another variant's (int8's) counterpart of the calibration logits, to fit its own temperature on:
    each photo's calibration logits moved by what the variant changes in the shipped model's logits on
    that photo (`reference`: fp32's, `variant`: the variant's). Where the calibration logits are fp32's own
    (its validation split) these are exactly the variant's; out-of-fold ones come from fold models that
    were never quantized, so they take the final model's quantization shift on the same photo."""
    return calibration + (variant - reference)


def not_sure_threshold(probabilities: np.ndarray, labels: np.ndarray, max_flagged_correct: float) -> float:
    """The highest top-1 probability below which at most `max_flagged_correct` of correct predictions fall."""
    confidence = probabilities.max(1)[probabilities.argmax(1) == labels]
    if not len(confidence):
        return 0.0
    return float(np.quantile(confidence, max_flagged_correct, method="lower"))


def calibration_report(logits: np.ndarray, labels: np.ndarray, bins: int) -> dict:
    temperature = fit_temperature(logits, labels)
    calibrated = softmax(logits, temperature)
    return {
        "temperature": temperature,
        "ece_before": ece(softmax(logits), labels, bins),
        "ece_after": ece(calibrated, labels, bins),
        "nll_before": nll(logits, labels),
        "nll_after": nll(logits, labels, temperature),
        "bins": bins,
    }


def non_pet_images() -> dict[str, Image.Image]:
    """Photos that show none of the 37 breeds, which the project may use: scikit-image's samples, solid
    colours and noise. How often these are flagged "not sure" is reported in the card."""
    from skimage import data

    images = {name: Image.fromarray(getattr(data, name)()) for name in ("astronaut", "coffee", "rocket", "camera")}
    for name, colour in (("white", (255, 255, 255)), ("black", (0, 0, 0)), ("red", (200, 30, 30))):
        images[f"solid-{name}"] = Image.new("RGB", (320, 240), colour)
    rng = np.random.default_rng(0)
    for index in range(3):
        images[f"noise-{index}"] = Image.fromarray(rng.integers(0, 256, (240, 320, 3), dtype=np.uint8))
    return images
