"""The prior correction's maths on hand-made examples: the log prior, the fitted strength, the nested fit
behind the CV figures, the bias fold."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from train.data.pets import PetData, Sample
from train.experiments.crossval import Fold, correction_metrics, fit_correction
from train.learning.config import Config
from train.learning.metrics import mean_per_class
from train.learning.model import Explained, PetNet, make_head
from train.learning.prior import corrected, fit_strength, fold_into_bias, log_prior


def test_log_prior_is_the_log_training_frequency() -> None:
    assert np.exp(log_prior([0, 0, 0, 1], 3)) == pytest.approx([3 / 4, 1 / 4, 1 / 4])  # absent class counts one


def test_the_strength_that_undoes_a_learned_prior_is_found() -> None:
    """Logits that favour the big class by its log prior: enough of τ takes it back out, and every class is
    right; the fit keeps the smallest τ that does it."""
    prior = log_prior([0] * 90 + [1] * 10, 2)
    labels = np.array([0, 0, 1, 1])
    evidence = np.array([[1.0, 0.0], [2.0, 0.0], [0.0, 1.0], [0.0, 1.5]])
    logits = evidence + prior  # what a model trained on the skewed set outputs
    assert (logits.argmax(1) == labels).mean() < 1  # the small class loses
    strength, scores = fit_strength(logits, labels, prior)
    assert 0 < strength <= 1.0 and scores[strength] == 1.0 and scores[0.0] < 1.0
    assert all(scores[s] < 1.0 for s in scores if s < strength)
    assert (corrected(logits, prior, strength).argmax(1) == labels).all()


def test_ties_keep_the_smallest_strength() -> None:
    prior = log_prior([0, 1], 2)  # balanced: every τ gives the same answers
    assert fit_strength(np.array([[1.0, 0.0], [0.0, 1.0]]), np.array([0, 1]), prior)[0] == 0.0


@pytest.mark.parametrize("head", ["linear", "mlp"])
def test_folding_into_the_bias_equals_correcting_the_logits(head: str) -> None:
    """On the head `make_head` builds, in the graph export writes (`Explained` over a `PetNet`), and handed
    `model.head` as export hands it: the logits become the corrected ones, and a linear head's class maps
    still average to them."""
    torch.manual_seed(0)
    net = PetNet(torch.nn.Sequential(), torch.nn.Sequential(), make_head(Config(head=head, hidden=16), 8, 3)).eval()
    features, prior = torch.randn(5, 8, 4, 4), log_prior([0, 0, 0, 0, 1, 2], 3)
    with torch.no_grad():
        before = Explained(net)(features)[0].numpy()
        fold_into_bias(net.head, prior, 0.75)
        logits, maps = (output.numpy() for output in Explained(net)(features))
    assert logits == pytest.approx(corrected(before, prior, 0.75), abs=1e-5)
    if head == "linear":
        assert maps.mean((2, 3)) == pytest.approx(logits, abs=1e-5)


def test_cv_figures_use_a_tau_fitted_on_the_other_folds() -> None:
    """Fold 1's small-class photos need τ = 1, fold 2's big-class photo is lost at any τ > 0.05: τ fitted on
    all out-of-fold logits (1.0, kept for the final model) scores 0.75 on them, in-sample; nested, each
    fold gets the other's τ and the honest figure is 5/12. The rows come back in `names` order."""
    training = [Sample(f"t{i}", Path("."), 0 if i < 90 else 1) for i in range(100)]  # what the final run trains on
    final = PetData(Path("."), ["big", "small"], ["dog", "dog"], {"train": training, "val": [], "test": []})
    rows = {  # name: (fold, label, logit of "small" minus logit of "big")
        "a": (1, 1, -2.0), "b": (1, 1, -2.0), "c": (1, 0, -10.0), "d": (2, 0, -0.1), "e": (2, 1, 5.0)
    }  # fmt: skip
    folds = [Fold(f"fold-{k}", [], [Sample(n, Path("."), r[1]) for n, r in rows.items() if r[0] == k]) for k in (1, 2)]
    names = ["e", "a", "d", "b", "c"]  # out_of_fold's order is by name, not by fold: any order must do
    labels = np.array([rows[n][1] for n in names])
    logits = np.array([[0.0, rows[n][2]] for n in names])

    honest, correction = fit_correction(Config(prior_correction=True), folds, names, logits, labels, final)
    prior = log_prior([s.label for s in training], 2)
    assert correction["strength"] == 1.0 and correction["nested"] == {1: 0.0, 2: 1.0}
    in_fold_1 = np.array([rows[n][0] == 1 for n in names])
    assert honest[in_fold_1] == pytest.approx(logits[in_fold_1])  # τ from fold 2, which τ = 0 suits
    assert honest[~in_fold_1] == pytest.approx(corrected(logits[~in_fold_1], prior, 1.0))

    def score(scored: np.ndarray) -> float:
        correct = scored.argmax(1) == labels
        return mean_per_class({c: correct[labels == c].mean() for c in (0, 1)})

    assert score(honest) == pytest.approx(5 / 12) and score(corrected(logits, prior, 1.0)) == 0.75
    assert correction_metrics(correction) == {
        "cv_prior_strength": 1.0,
        "cv_mean_per_class_accuracy_in_sample_tau": 0.75,
    }


def test_without_the_correction_the_logits_pass_through() -> None:
    logits = np.zeros((2, 2))
    final = PetData(Path("."), ["a", "b"], ["dog", "dog"], {"train": [], "val": [], "test": []})
    passed, correction = fit_correction(Config(), [], ["x", "y"], logits, np.array([0, 1]), final)
    assert passed is logits and correction is None
    assert correction_metrics(None) == {}
