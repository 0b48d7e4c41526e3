"""The prior correction's maths on hand-made examples: the log prior, the fitted strength, the bias fold."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from train.config import Config
from train.model import Explained, PetNet, make_head
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
