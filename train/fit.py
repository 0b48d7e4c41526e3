"""One training run: cached frozen activations in, a trained tail and head out, everything logged."""

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
from train import metrics, tracking
from train.backbones import get_backbone
from train.config import Config
from train.data import PetData, load_dataset
from train.features import CacheStats, activations
from train.model import PetNet, make_head, split_layers

log = logging.getLogger(__name__)


@dataclass
class RunResult:
    run_id: str
    version: str
    val_accuracy: float
    val_loss: float
    cache: CacheStats
    train_seconds: float
    train_images: int  # samples seen by the training loop, over all epochs


def input_spec(config: Config) -> InputSpec:
    backbone = get_backbone(config.backbone)
    crop = config.image_size or backbone.input_size
    return InputSpec(round(crop / config.crop_ratio), crop, backbone.mean, backbone.std)


def seed_everything(seed: int) -> None:
    torch.manual_seed(seed)
    np.random.seed(seed)
    torch.use_deterministic_algorithms(True, warn_only=True)


def evaluate_logits(tail: nn.Module, head: nn.Module, x: torch.Tensor, batch: int = 256) -> torch.Tensor:
    tail.eval(), head.eval()
    with torch.no_grad():
        return torch.cat([head(tail(x[i : i + batch])) for i in range(0, len(x), batch)])


def train_mode(tail: nn.Module, head: nn.Module) -> None:
    """Train the weights but keep batch-norm statistics frozen: the pretrained ones update with momentum
    0.01, far too slowly for a few hundred steps, and batch statistics would make training and evaluation
    disagree."""
    tail.train(), head.train()
    for module in tail.modules():
        if isinstance(module, nn.modules.batchnorm._BatchNorm):
            module.eval()


def train_loop(
    config: Config,
    tail: nn.Module,
    head: nn.Module,
    views: torch.Tensor,
    y: torch.Tensor,
    val_x: torch.Tensor,
    val_y: torch.Tensor,
) -> list[dict[str, float]]:
    """AdamW with a cosine schedule; each sample shows a random cached view per epoch; early stopping on
    validation loss restores the best weights."""
    params = [p for p in [*tail.parameters(), *head.parameters()] if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=config.lr, weight_decay=config.weight_decay)
    steps = config.epochs * math.ceil(len(y) / config.batch_size)
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, config.lr, total_steps=steps, pct_start=0.1)
    generator = torch.Generator().manual_seed(config.seed)
    history, best, best_loss, waited = [], None, math.inf, 0
    for epoch in range(1, config.epochs + 1):
        train_mode(tail, head)
        order = torch.randperm(len(y), generator=generator)
        chosen = torch.randint(len(views), (len(y),), generator=generator)
        total_loss, total_correct = 0.0, 0
        for start in range(0, len(y), config.batch_size):
            index = order[start : start + config.batch_size]
            logits = head(tail(views[chosen[index], index]))
            loss = F.cross_entropy(logits, y[index], label_smoothing=config.label_smoothing)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            schedule.step()
            total_loss += loss.item() * len(index)
            total_correct += (logits.argmax(1) == y[index]).sum().item()
        val_logits = evaluate_logits(tail, head, val_x)
        row = {
            "epoch": epoch,
            "train_loss": total_loss / len(y),
            "train_accuracy": total_correct / len(y),
            "val_loss": F.cross_entropy(val_logits, val_y).item(),
            "val_accuracy": (val_logits.argmax(1) == val_y).float().mean().item(),
        }
        history.append(row)
        log.info("epoch %d: " + ", ".join(f"{k} %.4f" for k in list(row)[1:]), epoch, *list(row.values())[1:])
        mlflow.log_metrics({f"epoch_{k}": v for k, v in row.items() if k != "epoch"}, step=epoch)
        if row["val_loss"] < best_loss - 1e-4:
            best, best_loss, waited = copy.deepcopy((tail.state_dict(), head.state_dict())), row["val_loss"], 0
        else:
            waited += 1
            if waited >= config.patience:
                log.info("early stop at epoch %d (best val loss %.4f)", epoch, best_loss)
                break
    tail.load_state_dict(best[0]), head.load_state_dict(best[1])
    return history


def fit(
    config: Config, data_dir: str | Path | None = None, config_path: str | None = None, data: PetData | None = None
) -> RunResult:
    seed_everything(config.seed)
    data = data or load_dataset(data_dir, config.val_fraction, config.seed)
    backbone, spec = get_backbone(config.backbone), input_spec(config)
    prefix, tail = split_layers(backbone.build(spec.crop), config.finetune_blocks)
    head = make_head(config, backbone.channels, len(data.classes))
    tracking.start(config.experiment)
    with mlflow.start_run(nested=mlflow.active_run() is not None) as run:
        tracking.log_run_inputs(config.as_params(), spec, data, config_path)
        stats = CacheStats()

        def cached(split: str, view: int) -> torch.Tensor:
            return activations(
                prefix,
                config.backbone,
                spec,
                data.splits[split],
                view,
                data.digest,
                Path(config.cache_dir),
                stats,
                pool=len(tail) == 0,
            )

        views = torch.stack([cached("train", v) for v in range(config.views)])
        val_x = cached("val", 0)
        mlflow.log_metrics(
            {
                "feature_cache_hits": stats.hits,
                "feature_images_computed": stats.computed_images,
                "feature_seconds": stats.seconds,
            }
        )
        y = torch.tensor([s.label for s in data.splits["train"]])
        val_y = torch.tensor([s.label for s in data.splits["val"]])
        torch.manual_seed(config.seed)
        started = time.perf_counter()
        history = train_loop(config, tail, head, views, y, val_x, val_y)
        train_seconds, train_images = time.perf_counter() - started, len(y) * len(history)
        mlflow.log_metrics({"train_seconds": train_seconds, "train_images_per_s": train_images / train_seconds})

        val_logits = evaluate_logits(tail, head, val_x)
        summary = metrics.summarize(val_logits.numpy(), val_y.numpy(), data.classes, data.species)
        val_loss = F.cross_entropy(val_logits, val_y).item()
        mlflow.log_metrics(
            {
                "val_accuracy": summary["accuracy"],
                "val_top5_accuracy": summary["top5_accuracy"],
                "val_loss": val_loss,
                "best_epoch": min(history, key=lambda r: r["val_loss"])["epoch"],
            }
            | {f"val_accuracy_{k}": v for k, v in summary["per_species"].items()}
        )
        tracking.log_files(
            {
                "curves.png": lambda p: metrics.plot_curves(history, p),
                "confusion_matrix_val.png": lambda p: metrics.plot_confusion(
                    summary["confusion"], data.classes, "validation", p
                ),
                "per_class_accuracy_val.csv": lambda p: metrics.write_per_class_csv(summary, data.classes, p),
            }
        )
        version = tracking.log_model(PetNet(prefix, tail, head), config.registered_model)
        log.info("run %s: val accuracy %.4f, registered version %s", run.info.run_id, summary["accuracy"], version)
        return RunResult(run.info.run_id, version, summary["accuracy"], val_loss, stats, train_seconds, train_images)
