"""Cross-validation splits: stratified, disjoint, covering trainval; out-of-fold rows come only from the
fold run that held a sample out."""

from __future__ import annotations

from collections import Counter

import numpy as np
import pytest

from tests.conftest import write_tiny_dataset
from train.config import Config
from train.crossval import Fold, out_of_fold, plan, stratified_folds
from train.data import load_dataset


@pytest.fixture
def trainval(tmp_path):
    data = load_dataset(write_tiny_dataset(tmp_path / "oxford-iiit-pet", per_class=30), 0.15, 0)
    return data, data.splits["train"] + data.splits["val"]


def test_folds_are_stratified_disjoint_and_cover_trainval(trainval) -> None:
    _, samples = trainval
    folds = stratified_folds(samples, 5, seed=0)
    names = [s.name for fold in folds for s in fold]
    assert sorted(names) == sorted(s.name for s in samples) and len(names) == len(set(names))
    for fold in folds:
        per_class = Counter(s.label for s in fold)
        assert sorted(per_class) == [0, 1, 2] and max(per_class.values()) - min(per_class.values()) <= 1
    assert max(map(len, folds)) - min(map(len, folds)) <= 1


def test_folds_are_seeded(trainval) -> None:
    _, samples = trainval
    assert stratified_folds(samples, 5, 0) == stratified_folds(samples, 5, 0)
    assert stratified_folds(samples, 5, 0) != stratified_folds(samples, 5, 1)


def test_plan_trains_each_fold_on_the_rest_then_on_everything(trainval) -> None:
    data, samples = trainval
    runs = plan(Config(folds=3), data)
    assert [run.name for run in runs] == ["fold-1", "fold-2", "fold-3", "all"]
    for run in runs[:-1]:
        assert {s.name for s in run.train} | {s.name for s in run.holdout} == {s.name for s in samples}
        assert not {s.name for s in run.train} & {s.name for s in run.holdout}
    assert runs[-1].train == samples and runs[-1].holdout == []


def test_out_of_fold_rows_come_from_the_run_that_held_the_sample_out(trainval) -> None:
    data, _ = trainval
    folds = plan(Config(folds=3), data)[:-1]
    # Each fold's "logits" carry its fold number, so every row shows which run produced it.
    logits = [np.full((len(fold.holdout), 3), i, dtype=np.float32) for i, fold in enumerate(folds)]
    names, rows, labels = out_of_fold(folds, logits)
    origin = {s.name: i for i, fold in enumerate(folds) for s in fold.holdout}
    assert [int(row[0]) for row in rows] == [origin[name] for name in names]
    for name, row in zip(names, rows, strict=True):
        assert name not in {s.name for s in folds[int(row[0])].train}
    assert len(names) == len(set(names)) == sum(len(f.holdout) for f in folds) and len(labels) == len(names)


def test_out_of_fold_refuses_a_prediction_made_on_a_training_fold(trainval) -> None:
    data, _ = trainval
    first, second, *_ = plan(Config(folds=3), data)
    leaky = Fold("leaky", first.train + second.holdout[:1], second.holdout[:1])
    with pytest.raises(ValueError, match="trained on it"):
        out_of_fold([leaky], [np.zeros((1, 3), np.float32)])
    with pytest.raises(ValueError, match="held out twice"):
        out_of_fold([first, first], [np.zeros((len(first.holdout), 3), np.float32)] * 2)
