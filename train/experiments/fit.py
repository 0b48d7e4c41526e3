"""One training run, logged to MLflow, in one of two modes: a frozen backbone (its pooled features cached
per view, a head trained on them) or end-to-end fine-tuning from images (`train.learning.finetune`)."""

from __future__ import annotations

import copy
import logging
import math
import time
from dataclasses import dataclass
from pathlib import Path

import mlflow
import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from preprocess import InputSpec
from train.data.pets import PetData, load_dataset
from train.experiments import tracking
from train.learning import metrics
from train.learning.config import Config
from train.learning.distill import Distiller, make_distiller
from train.learning.features import CacheStats, features
from train.learning.finetune import Outcome, fine_tune_run
from train.learning.model import build, class_weights, input_spec, seed_everything, train_mode

log = logging.getLogger(__name__)


@dataclass
class RunResult:
    run_id: str
    version: str | None  # registered model version; None for runs that register nothing (CV folds)
    val_accuracy: float  # on the held-out samples; nan when nothing was held out
    val_loss: float
    cache: CacheStats
    train_images_per_s: float


def evaluate_logits(head: nn.Module, x: torch.Tensor, batch: int = 256) -> torch.Tensor:
    head.eval()
    with torch.no_grad():  # at least one batch, so nothing held out gives an empty (0, classes) result
        return torch.cat([head(x[i : i + batch]) for i in range(0, max(len(x), 1), batch)])


def train_loop(
    config: Config,
    head: nn.Module,
    views: torch.Tensor,
    y: torch.Tensor,
    val: torch.Tensor,
    val_y: torch.Tensor,
    classes: int,
    distiller: Distiller | None = None,
) -> list[dict[str, float]]:
    """AdamW with a cosine schedule (class-weighted loss with `balance`, plus the teacher's distillation
    with a `distiller`: the cached features are the teacher's, so it reads the batch itself); each sample
    shows a random cached view per epoch; early stopping on validation loss restores the best weights,
    unless `patience = 0`: then every epoch runs and the last weights stay (cross-validation, where the
    held-out fold must not choose the epoch, and the final run has nothing held out to stop on). `views`
    index as [view, sample]."""
    params = list(head.parameters())
    optimizer = torch.optim.AdamW(params, lr=config.lr, weight_decay=config.weight_decay)
    weights = class_weights(y.tolist(), classes, config.balance)
    steps = config.epochs * math.ceil(len(y) / config.batch_size)
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, config.lr, total_steps=steps, pct_start=0.1)
    generator = torch.Generator().manual_seed(config.seed)
    history, best, best_loss, waited = [], None, math.inf, 0
    for epoch in range(1, config.epochs + 1):
        train_mode(head)
        order = torch.randperm(len(y), generator=generator)
        chosen = torch.randint(len(views), (len(y),), generator=generator)
        total_loss, total_correct = 0.0, 0
        for start in range(0, len(y), config.batch_size):
            index = order[start : start + config.batch_size]
            batch = views[chosen[index], index]
            logits = head(batch)
            loss = F.cross_entropy(logits, y[index], weights, label_smoothing=config.label_smoothing)
            if distiller:
                loss = loss + distiller.loss(logits, batch, y[index])
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            schedule.step()
            total_loss += loss.item() * len(index)
            total_correct += (logits.argmax(1) == y[index]).sum().item()
        row = {"epoch": epoch, "train_loss": total_loss / len(y), "train_accuracy": total_correct / len(y)}
        if len(val_y):
            val_logits = evaluate_logits(head, val)
            row["val_loss"] = F.cross_entropy(val_logits, val_y).item()
            row["val_accuracy"] = (val_logits.argmax(1) == val_y).float().mean().item()
        history.append(row)
        log.info("epoch %d: " + ", ".join(f"{k} %.4f" for k in list(row)[1:]), epoch, *list(row.values())[1:])
        if not config.patience:
            continue
        if row["val_loss"] < best_loss - 1e-4:
            best, best_loss, waited = copy.deepcopy(head.state_dict()), row["val_loss"], 0
        else:
            waited += 1
            if waited >= config.patience:
                log.info("early stop at epoch %d (best val loss %.4f)", epoch, best_loss)
                break
    if not config.patience:
        return history
    if best is None:
        raise RuntimeError("The validation loss was NaN or infinite in every epoch: lower lr and try again.")
    head.load_state_dict(best)
    return history


def train_cached(config: Config, spec: InputSpec, data: PetData) -> tuple[Outcome, CacheStats]:
    """The frozen backbone runs once per view into the feature cache, then the head trains on the cached
    pooled features, which are also the teacher's (ImageNet's classifier on them is the untouched network).
    The cache holds every training and held-out image in one set, the same for each CV fold, the final run
    and a sweep's runs, so one extraction serves them all. No checkpoint: with the features cached a run
    takes seconds, so a killed CV or sweep simply runs it again."""
    (net, _, imagenet), stats = build(config, data.classes), CacheStats()
    training, held_out = data.splits["train"], data.splits["val"]
    images = sorted(training + held_out, key=lambda s: s.name)
    row = {s.name: i for i, s in enumerate(images)}
    if len(row) != len(images):
        raise RuntimeError("Two training or held-out images share a name; the feature cache needs them unique.")

    def rows(samples: list) -> torch.Tensor:
        return torch.tensor([row[s.name] for s in samples], dtype=torch.long)

    cache = Path(config.cache_dir)
    views = [
        features(net.prefix, config.backbone, spec, images, v, data.digest, cache, stats) for v in range(config.views)
    ]
    x, val = torch.stack([view[rows(training)] for view in views]), views[0][rows(held_out)]
    mlflow.log_metrics(
        {
            "feature_cache_hits": stats.hits,
            "feature_images_computed": stats.computed_images,
            "feature_seconds": stats.seconds,
        }
    )
    y = torch.tensor([s.label for s in training])
    val_y = torch.tensor([s.label for s in held_out], dtype=torch.long)
    torch.manual_seed(config.seed)
    started = time.perf_counter()
    distiller = make_distiller(config, imagenet, data.classes, data.species)
    history = train_loop(config, net.head, x, y, val, val_y, len(data.classes), distiller)
    throughput = len(y) * len(history) / (time.perf_counter() - started)
    with torch.no_grad():
        teacher_logits = imagenet(val.flatten(1)).numpy()
    holdout = evaluate_logits(net.head, val).numpy()
    return Outcome(net.eval(), history, holdout, throughput, teacher_logits), stats


def fit(
    config: Config,
    data_dir: str | Path | None = None,
    config_path: str | None = None,
    data: PetData | None = None,
    resume: bool = False,
    register: bool = True,
    run_name: str | None = None,
    extra_metrics: dict[str, float] | None = None,
    parent_run_id: str | None = None,
) -> RunResult:
    """Train on data.splits["train"], evaluate on data.splits["val"] (which CV folds set to the held-out fold
    and the final CV run leaves empty), log everything and register the model. The run is a child of the
    active run, or of `parent_run_id` (a Ray trial, in a process where the parent is not active). `resume`
    continues an end-to-end run from its checkpoint; a frozen backbone's run keeps none (`train_cached`)."""
    seed_everything(config.seed)
    data = data or load_dataset(data_dir, *config.dataset_key())
    spec = input_spec(config)
    tracking.start(config.experiment)
    nested = mlflow.active_run() is not None
    with mlflow.start_run(nested=nested, run_name=run_name, parent_run_id=parent_run_id) as run:
        tracking.log_run_inputs(config.as_params(), spec, data, config_path)
        if config.end_to_end:
            train, val = data.splits["train"], data.splits["val"]
            outcome = fine_tune_run(config, data.classes, train, val, data.digest, resume, keep=register)
            stats = CacheStats()
        else:
            outcome, stats = train_cached(config, spec, data)
        for row in outcome.history:
            mlflow.log_metrics({f"epoch_{k}": v for k, v in row.items() if k != "epoch"}, step=row["epoch"])
        mlflow.log_metrics({"train_images_per_s": outcome.images_per_second} | (extra_metrics or {}))
        val_accuracy, val_loss = log_holdout(outcome, data)
        version = tracking.log_model(outcome.model, tracking.registered_name(config.species)) if register else None
        log.info("run %s: val accuracy %.4f, registered version %s", run.info.run_id, val_accuracy, version)
        return RunResult(run.info.run_id, version, val_accuracy, val_loss, stats, outcome.images_per_second)


def log_holdout(outcome: Outcome, data: PetData) -> tuple[float, float]:
    """Validation metrics and pictures of the held-out split; (nan, nan) when nothing was held out."""
    plots = {"curves.png": lambda p: metrics.plot_curves(outcome.history, p)}
    if not data.splits["val"]:
        tracking.log_files(plots)
        return math.nan, math.nan
    val_y = np.array([s.label for s in data.splits["val"]])
    summary = metrics.summarize(outcome.holdout_logits, val_y, data.classes, data.species)
    val_loss = F.cross_entropy(torch.from_numpy(outcome.holdout_logits), torch.from_numpy(val_y)).item()
    mlflow.log_metrics(
        {
            "val_accuracy": summary["accuracy"],
            "val_top5_accuracy": summary["top5_accuracy"],
            "val_mean_per_class_accuracy": summary["mean_per_class_accuracy"],
            "val_loss": val_loss,
            "best_epoch": min(outcome.history, key=lambda r: r["val_loss"])["epoch"],
        }
        | {f"val_accuracy_{k}": v for k, v in summary["per_species"].items()}
    )
    names = [s.name for s in data.splits["val"]]
    plots |= {
        Path(tracking.HOLDOUT_LOGITS).name: lambda p: tracking.save_logits(p, names, outcome.holdout_logits, val_y),
        "confusion_matrix_val.png": lambda p: metrics.plot_confusion(
            summary["confusion"], data.classes, "validation", p
        ),
        "per_class_accuracy_val.csv": lambda p: metrics.write_per_class_csv(summary, data.classes, p),
    }
    if outcome.holdout_teacher is not None:
        plots[Path(tracking.HOLDOUT_TEACHER).name] = lambda p: tracking.save_logits(
            p, names, outcome.holdout_teacher, val_y
        )
    tracking.log_files(plots)
    return summary["accuracy"], val_loss
