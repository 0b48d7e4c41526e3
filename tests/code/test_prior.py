"""The prior correction's maths on hand-made examples: the log prior, the fitted strength, the bias fold."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from train.prior import corrected, fit_strength, fold_into_bias, log_prior


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


def test_folding_into_the_bias_equals_correcting_the_logits() -> None:
    torch.manual_seed(0)
    head, x = torch.nn.Linear(8, 3), torch.randn(5, 8)
    prior = log_prior([0, 0, 0, 0, 1, 2], 3)
    before = head(x).detach().numpy()
    fold_into_bias(head, prior, 0.75)
    assert head(x).detach().numpy() == pytest.approx(corrected(before, prior, 0.75), abs=1e-5)
