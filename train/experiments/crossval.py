"""Cross-validated selection: stratified k-fold over trainval, one MLflow child run per fold under a
parent that holds mean ± std and the out-of-fold predictions, then the candidate retrained on all of
trainval and registered. `select` ranks by the CV accuracy and calibrates on the out-of-fold logits."""

from __future__ import annotations

import logging
import random
import tempfile
from dataclasses import dataclass, replace
from pathlib import Path

import mlflow
import numpy as np

from train.data import duplicates
from train.data.imagenet import dog_rows
from train.data.pets import PetData, Sample, load_dataset
from train.experiments import tracking
from train.experiments.fit import fit
from train.experiments.trials import IN_PROCESS, Engine, Trial, run_trials
from train.learning import metrics
from train.learning.calibrate import nll
from train.learning.config import Config, ConfigError
from train.learning.distill import retention
from train.learning.finetune import fine_tune_run

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Fold:
    name: str  # "fold-1" ... or "all" for the final retrain
    train: list[Sample]
    holdout: list[Sample]


def stratified_folds(
    samples: list[Sample], k: int, seed: int, together: list[list[Sample]] | None = None
) -> list[list[Sample]]:
    """k disjoint held-out sets covering `samples`, each class spread as evenly as its size allows; the
    samples of each group in `together` (near-duplicate photos) land in one fold."""
    rng = random.Random(seed)
    folds: list[list[Sample]] = [[] for _ in range(k)]
    by_class: dict[int, list[list[Sample]]] = {}
    for unit in together or [[sample] for sample in samples]:
        by_class.setdefault(unit[0].label, []).append(unit)
    offset = 0
    for label in sorted(by_class):
        units = sorted(by_class[label], key=lambda unit: unit[0].name)
        rng.shuffle(units)
        for i, unit in enumerate(units):
            folds[(offset + i) % k].extend(unit)
        offset += len(units)  # the next class starts where this one stopped, so fold sizes stay level
    return folds


def plan(config: Config, data: PetData) -> list[Fold]:
    """The k fold runs, then the run on all of trainval; near-duplicate photos are held out together."""
    trainval = data.splits["train"] + data.splits["val"]
    runs = []
    together = duplicates.groups(trainval)
    for i, holdout in enumerate(stratified_folds(trainval, config.folds, config.seed, together), start=1):
        held = {s.name for s in holdout}
        runs.append(Fold(f"fold-{i}", [s for s in trainval if s.name not in held], holdout))
    return [*runs, Fold("all", trainval, [])]


def out_of_fold(folds: list[Fold], logits: list[np.ndarray]) -> tuple[list[str], np.ndarray, np.ndarray]:
    """Each sample's logits from the one fold run that held it out and never trained on it."""
    rows: dict[str, tuple[np.ndarray, int]] = {}
    for fold, fold_logits in zip(folds, logits, strict=True):
        trained_on = {s.name for s in fold.train}
        for sample, row in zip(fold.holdout, fold_logits, strict=True):
            if sample.name in rows or sample.name in trained_on:
                raise ValueError(f"{sample.name}: held out twice, or held out by a fold that trained on it.")
            rows[sample.name] = (row, sample.label)
    names = sorted(rows)
    return names, np.stack([rows[n][0] for n in names]), np.array([rows[n][1] for n in names])


def cv_metrics(fold_accuracies: list[float], summary: dict, logits: np.ndarray, labels: np.ndarray) -> dict:
    return {
        "cv_accuracy": summary["accuracy"],
        "cv_accuracy_std": float(np.std(fold_accuracies, ddof=1)),
        "cv_top5_accuracy": summary["top5_accuracy"],
        "cv_mean_per_class_accuracy": summary["mean_per_class_accuracy"],
        "cv_loss": nll(logits, labels),
        "cv_folds": float(len(fold_accuracies)),
    } | {f"cv_accuracy_{kind}": value for kind, value in summary["per_species"].items()}


def cross_validate(
    config: Config, data_dir: str | Path | None, config_path: str | None, resume: bool, engine: Engine = IN_PROCESS
) -> dict:
    """Folds as child runs of one parent (trials of `engine`); then the final model on all of trainval,
    registered with the CV metrics. Returns the CV metrics."""
    if not config.end_to_end and config.patience:
        raise RuntimeError(
            "cv on the cached path needs patience = 0 (a fixed number of epochs): early stopping would let the "
            "held-out fold choose the epoch, and the final run has nothing held out to stop on."
        )
    data = load_dataset(data_dir, *config.dataset_key())
    folds = plan(config, data)
    tracking.start(config.experiment)
    with mlflow.start_run(run_name=f"cv:{Path(config_path or 'config').stem}") as parent:
        mlflow.log_params(config.as_params())
        log_twins(data)
        trials = [Trial(f.name, config, fold_data(data, f), register=False, resume=resume) for f in folds[:-1]]
        results = run_trials(trials, engine, config_path)
        failed = [f"{r.name} ({r.error})" for r in results if r.error]
        if failed:
            raise RuntimeError(f"No CV estimate without every fold; failed: {', '.join(failed)}.")
        held_out = [tracking.load_logits(r.run_id, tracking.HOLDOUT_LOGITS)[1] for r in results]
        names, logits, labels = out_of_fold(folds[:-1], held_out)
        summary = metrics.summarize(logits, labels, data.classes, data.species)
        found = cv_metrics([r.val_accuracy for r in results], summary, logits, labels)
        found |= oof_retention(config, folds[:-1], [r.run_id for r in results], data, logits)
        mlflow.log_metrics(found)
        with tempfile.TemporaryDirectory() as folder:  # what `select` calibrates on
            oof = tracking.save_logits(Path(folder) / Path(tracking.OOF_LOGITS).name, names, logits, labels)
            per_class = metrics.write_per_class_csv(summary, data.classes, Path(folder) / "per_class.csv")
            for path in (oof, per_class):  # per breed: how many held-out photos, and the share answered right
                mlflow.log_artifact(str(path), Path(tracking.OOF_LOGITS).parent.as_posix())
        final = fit(
            config,
            config_path=config_path,
            data=fold_data(data, folds[-1]),
            resume=resume,
            run_name="all",
            extra_metrics=found,
        )
        mlflow.set_tag("cv.final_run_id", final.run_id)
        mlflow.MlflowClient().set_tag(final.run_id, "cv.parent_run_id", parent.info.run_id)
    log.info(
        "cv accuracy %.4f ± %.4f; registered version %s", found["cv_accuracy"], found["cv_accuracy_std"], final.version
    )
    return found | {"version": final.version}


def oof_retention(
    config: Config, folds: list[Fold], run_ids: list[str], data: PetData, logits: np.ndarray
) -> dict[str, float]:
    """Out-of-fold retention: top-1 among the ImageNet dog breeds, the model against the teacher on the
    same held-out photos. A frozen backbone's run logs the teacher's logits of every held-out photo (its
    cached features are the teacher's); an end-to-end run does not."""
    if config.end_to_end:
        return {}
    taught = [tracking.load_logits(run_id, tracking.HOLDOUT_TEACHER)[1] for run_id in run_ids]
    names, teacher, labels = out_of_fold(folds, taught)
    if len(names) != len(logits):
        raise ValueError("The teacher's out-of-fold logits do not cover the model's.")
    found = retention(logits, teacher, labels, *dog_rows(data.classes, data.species))
    return {f"cv_retention_{kind}": value for kind, value in found.items()}


def log_twins(data: PetData) -> None:
    """Test photos with a near-duplicate in trainval (test accuracy on those is not a fresh measurement):
    counted and listed in the CV parent run."""
    trainval = data.splits["train"] + data.splits["val"]
    pairs = {"test_in_trainval": duplicates.twins(data.splits["test"], trainval)}
    for kind, found in pairs.items():
        log.info("near-duplicates, %s: %d %s", kind, len(found), found[:10])
    mlflow.log_metrics({f"near_duplicates_{kind}": len(found) for kind, found in pairs.items()})
    mlflow.log_dict(pairs, "data/near_duplicates.json")


def fold_data(data: PetData, fold: Fold) -> PetData:
    return replace(data, splits={"train": fold.train, "val": fold.holdout, "test": data.splits["test"]})


def train_checkpoints(config: Config, data_dir: str | Path | None) -> None:
    """Every fold and the final run trained and checkpointed, with no tracking: for a GPU box that cannot reach the
    tracking store. `cv --resume` on any machine then logs and registers from the checkpoints. End to end
    only: a frozen backbone's runs take seconds once its features are cached, and write no checkpoint."""
    if not config.end_to_end:
        raise ConfigError("cv --checkpoints-only is for end_to_end configs; run a frozen backbone's cv without it.")
    data = load_dataset(data_dir, *config.dataset_key())
    for fold in plan(config, data):  # the same runs and checkpoint keys as `cv --resume`'s
        outcome = fine_tune_run(config, data.classes, fold.train, fold.holdout, data.digest, True, not fold.holdout)
        if fold.holdout:
            accuracy = (outcome.holdout_logits.argmax(1) == np.array([s.label for s in fold.holdout])).mean()
            log.info("%s: held-out accuracy %.4f", fold.name, accuracy)
