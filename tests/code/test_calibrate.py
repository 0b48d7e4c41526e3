"""train.learning.calibrate: temperature scaling recovers a known temperature; the threshold flags ≤ 5 % of correct;
each variant gets the temperature of its own logits."""

from __future__ import annotations

import numpy as np
import pytest

from inference import softmax
from train.learning.calibrate import calibration_report, ece, fit_temperature, not_sure_threshold, variant_logits
from train.shipping.gates import Gates

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
    from train.shipping.select import SelectionError, calibration_parent

    assert calibration_parent({"cv.parent_run_id": "abc"}, {"images.val": "0"}) == "abc"  # out-of-fold logits
    assert calibration_parent({}, {"images.val": "230"}) is None  # its own held-out validation split
    with pytest.raises(SelectionError, match="no held-out images"):  # a CV final run whose tag went missing
        calibration_parent({}, {"images.val": "0"})


def test_a_variant_that_stretches_the_logits_gets_a_temperature_as_much_higher() -> None:
    """Where the calibration logits are the shipped model's own (its validation split), the moved logits are
    exactly the variant's: int8 logits 1.3× fp32's need a temperature 1.3× fp32's."""
    logits, labels = sampled(2.0)
    stretched = 1.3 * logits
    assert variant_logits(logits, logits, stretched) == pytest.approx(stretched)
    assert fit_temperature(variant_logits(logits, logits, stretched), labels) == pytest.approx(
        1.3 * fit_temperature(logits, labels), rel=1e-3
    )


def test_int8_is_calibrated_on_the_same_photos_matched_by_name() -> None:
    """Out-of-fold rows come in name order, the models' logits in trainval order: each row is moved by its
    own photo's quantization shift (a shift taken from another photo fits another temperature), and a
    calibration photo missing from trainval is refused by name."""
    from pathlib import Path

    from train.data.pets import Sample
    from train.shipping.select import CalibrationSet, SelectionError, int8_calibration

    logits, labels = sampled(1.0, n=600)
    rng = np.random.default_rng(5)
    photos = [Sample(f"photo_{i}", Path("."), 0) for i in range(600)]  # trainval order
    reference = 2 * logits + rng.normal(0, 1, logits.shape)  # the final model: surer than the fold models
    quantized = reference + 0.5 * logits  # quantization shifts each photo's logits
    order = rng.permutation(600)
    held_out = CalibrationSet([photos[i].name for i in order], logits[order], labels[order], "out-of-fold")
    report, threshold = int8_calibration(held_out, photos, reference, quantized, 1.0, GATE)
    assert report["temperature"] == pytest.approx(fit_temperature(1.5 * logits, labels), rel=1e-6)
    moved = softmax(1.5 * logits, report["temperature"])  # its own threshold, on its own probabilities
    assert threshold["threshold"] == pytest.approx(not_sure_threshold(moved, labels, GATE.max_flagged_correct))
    assert report["temperature"] == pytest.approx(1.5, rel=0.1) and report["fitted_on"] == "out-of-fold"
    assert report["ece_after"] < report["ece_at_fp32_temperature"]  # fp32's temperature does not hold
    with pytest.raises(SelectionError, match="1 of the out-of-fold calibration photos are not in trainval now"):
        int8_calibration(held_out, photos[1:], reference[1:], quantized[1:], 1.0, GATE)
