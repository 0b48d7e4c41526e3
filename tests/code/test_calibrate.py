"""train.calibrate: temperature scaling recovers a known temperature; the threshold flags ≤ 5 % of correct."""

from __future__ import annotations

import numpy as np
import pytest

from inference import softmax
from train.calibrate import calibration_report, ece, fit_temperature, not_sure_threshold
from train.gates import Gates

GATE = Gates.load().calibration


def sampled(temperature: float, n: int = 4000, classes: int = 10, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Logits whose labels are drawn from softmax(logits / temperature): `temperature` is the true one."""
    rng = np.random.default_rng(seed)
    logits = rng.normal(0, 3, (n, classes))
    probabilities = softmax(logits, temperature)
    labels = np.array([rng.choice(classes, p=p) for p in probabilities])
    return logits, labels


@pytest.mark.parametrize("temperature", [0.5, 1.0, 2.5])
def test_fitting_recovers_a_known_temperature(temperature: float) -> None:
    logits, labels = sampled(temperature)
    assert fit_temperature(logits, labels) == pytest.approx(temperature, rel=0.1)


def test_temperature_one_leaves_probabilities_unchanged() -> None:
    logits = np.random.default_rng(1).normal(0, 2, (5, 7))
    assert np.allclose(softmax(logits, 1.0), np.exp(logits) / np.exp(logits).sum(1, keepdims=True))


def test_scaling_reduces_ece_and_nll_on_overconfident_logits() -> None:
    logits, labels = sampled(3.0)
    report = calibration_report(logits, labels, GATE.ece_bins)
    assert report["ece_after"] < report["ece_before"] and report["nll_after"] < report["nll_before"]
    assert report["ece_after"] < 0.03


def test_ece_of_a_perfectly_calibrated_toy() -> None:
    probabilities = np.array([[0.8, 0.2]] * 10)
    labels = np.array([0] * 8 + [1] * 2)
    assert ece(probabilities, labels, GATE.ece_bins) == pytest.approx(0.0)


def test_threshold_flags_at_most_five_percent_of_correct_predictions() -> None:
    logits, labels = sampled(1.0, seed=3)
    probabilities = softmax(logits)
    threshold = not_sure_threshold(probabilities, labels, GATE.max_flagged_correct)
    correct = probabilities.argmax(1) == labels
    assert (probabilities.max(1)[correct] < threshold).mean() <= 0.05


def test_calibration_never_fits_on_images_the_model_trained_on() -> None:
    from train.select import SelectionError, calibration_parent

    assert calibration_parent({"cv.parent_run_id": "abc"}, {"images.val": "0"}) == "abc"  # out-of-fold logits
    assert calibration_parent({}, {"images.val": "230"}) is None  # its own held-out validation split
    with pytest.raises(SelectionError, match="no held-out images"):  # a CV final run whose tag went missing
        calibration_parent({}, {"images.val": "0"})
