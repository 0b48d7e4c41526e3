"""End-to-end fine-tuning from images: online augmentation, AdamW with two learning rates, warmup and
cosine decay, optional weight EMA, CUDA with bf16 autocast where present, a checkpoint every epoch.

No MLflow here. A run's history lives in its checkpoint and `fit` / `cv` log it, so a run killed
anywhere resumes from its last epoch, and training can happen on a GPU box without the tracking store
and be logged later from the checkpoint folder (docs/training.md, "Fine-tuning end to end").
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn
from torch.utils.data import DataLoader, Dataset
from torchvision.transforms import v2
from tqdm import tqdm

from preprocess import InputSpec, load_for_model, model_input
from train.data.files import NotTensorsError, load_tensors, save_tensors
from train.data.pets import Sample
from train.learning.config import Config
from train.learning.features import PREPROCESS_CODE, weights_version
from train.learning.model import PetNet, build_net, class_weights, seed_everything, train_mode

log = logging.getLogger(__name__)


class CheckpointError(RuntimeError):
    """A checkpoint exists but was written by another configuration or data, or is not a whole checkpoint."""


IN_PROGRESS = {"key", "epoch", "history", "model", "optimizer", "schedule", "ema"}  # what an epoch's checkpoint holds
FINISHED = {"key", "epoch", "history", "done", "holdout_logits"}  # a finished run's, plus "model" where kept


@dataclass
class Outcome:
    model: PetNet | None  # the weights to keep (the EMA average when enabled), on the CPU; None unless `keep`
    history: list[dict[str, float]]  # one row per epoch
    holdout_logits: np.ndarray  # fp32 logits of the held-out samples, from the serving tensor
    images_per_second: float  # training throughput of the epochs this process ran (0 when none)
    holdout_teacher: np.ndarray | None = None  # the frozen backbone's ImageNet logits of them (cached path)


def pick_device(name: str) -> torch.device:
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("device = 'cuda' but no CUDA device is available; use 'auto' or 'cpu'.")
    return torch.device(name)


def train_transform(size: int, spec: InputSpec, augment: str) -> v2.Compose:
    """Random resized crop and flip (plus TrivialAugmentWide), then the serving normalization."""
    steps = [v2.RandomResizedCrop(size, scale=(0.25, 1.0), antialias=True), v2.RandomHorizontalFlip()]
    if augment == "trivial":
        steps.append(v2.TrivialAugmentWide())
    steps += [v2.PILToTensor(), v2.ToDtype(torch.float32, scale=True), v2.Normalize(spec.mean, spec.std)]
    return v2.Compose(steps)


class Images(Dataset):
    """Samples decoded by the serving loader; `transform` turns the PIL image into a 3×H×W tensor.

    With `seed` set (each training epoch sets it), a sample's random augmentation is seeded by (seed, its
    index): the same whichever loader process draws it, so a run resumed with another worker count goes
    on with the same augmentation stream its checkpoint key promises."""

    def __init__(self, samples: list[Sample], transform: Callable, spec: InputSpec) -> None:
        self.samples, self.transform, self.spec = samples, transform, spec
        self.seed: int | None = None

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        sample = self.samples[index]
        if self.seed is not None:
            torch.manual_seed(self.seed * 1_000_003 + index)
        return self.transform(load_for_model(sample.path, self.spec)), sample.label


class ServingTensor:
    """The exact array `inference.py` feeds the model, as a tensor (picklable for loader workers)."""

    def __init__(self, spec: InputSpec) -> None:
        self.spec = spec

    def __call__(self, image) -> torch.Tensor:
        return torch.from_numpy(model_input(image, self.spec)[0])


def checkpoint_key(config: Config, classes: list[str], train: list[Sample], holdout: list[Sample], digest: str) -> str:
    """Identity of a run: what it learns from (the images' names and the dataset digest over their bytes, the
    preprocessing code and the pretrained weights' package, which make the pixels and the start) and how; a
    checkpoint is resumed only under the same key, so never after the pixels change."""
    identity = {
        "config": config.training_params(),
        "classes": classes,
        "train": [s.name for s in train],
        "holdout": [s.name for s in holdout],
        "data": digest,
        "preprocess": PREPROCESS_CODE,
        "weights": weights_version(config.backbone),
    }
    return hashlib.sha256(json.dumps(identity, sort_keys=True).encode()).hexdigest()[:16]


def lr_factor(step: int, warmup: int, total: int) -> float:
    """Linear warmup to 1, then cosine decay to 0 at `total` steps."""
    if step < warmup:
        return (step + 1) / warmup
    return 0.5 * (1 + math.cos(math.pi * (step - warmup) / max(1, total - warmup)))


@torch.no_grad()
def predict_logits(model: nn.Module, samples: list[Sample], spec: InputSpec, device: torch.device, workers: int):
    """fp32 logits for samples prepared exactly as serving prepares them."""
    model.eval()
    loader = DataLoader(Images(samples, ServingTensor(spec), spec), batch_size=64, num_workers=workers)
    outputs = [model(x.to(device)).float().cpu() for x, _ in loader]
    return torch.cat(outputs).numpy() if outputs else np.zeros((0, 0), np.float32)


def save_checkpoint(state: dict, path: Path) -> None:
    """Tensors and plain values only, so `load_checkpoint` can read it weights-only: numpy arrays go in as tensors,
    their names listed under "arrays" to come back as arrays."""
    arrays = [name for name, value in state.items() if isinstance(value, np.ndarray)]
    save_tensors(state | {name: torch.from_numpy(state[name]) for name in arrays} | {"arrays": arrays}, path)


def load_checkpoint(path: Path, key: str, resume: bool) -> dict | None:
    """A checkpoint folder may be shared storage others write to (a cluster's): it is read as data, and one
    holding any other object is refused, never unpickled."""
    if not resume:
        return None
    if not path.is_file():  # the key holds the config, data, pixels and weights: any change starts anew
        log.info("no checkpoint %s for this run (its key): training it from the start", path.name)
        return None
    try:
        state = load_tensors(path)
    except NotTensorsError as error:
        raise CheckpointError(f"{error}; it is not loaded: delete it to train again.") from None
    if not isinstance(state, dict) or state.get("key") != key:  # a file of tensors, but not this run's checkpoint
        raise CheckpointError(f"{path} belongs to another configuration or data; delete it or drop --resume.")
    absent = sorted((FINISHED if state.get("done") else IN_PROGRESS) - set(state))
    if absent:  # this run's key, but cut short or tampered with
        raise CheckpointError(f"{path} lacks {', '.join(absent)}: not a whole checkpoint; delete it to train again.")
    log.info("resuming %s from epoch %d", path.name, state["epoch"])
    arrays = state.pop("arrays", [])
    return state | {name: state[name].numpy() for name in arrays}


def checkpoint_path(
    config: Config, classes: list[str], train: list[Sample], holdout: list[Sample], digest: str
) -> Path:
    return Path(config.checkpoint_dir) / f"{checkpoint_key(config, classes, train, holdout, digest)}.pt"


def finetune(
    config: Config,
    model: PetNet,
    spec: InputSpec,
    classes: list[str],
    train: list[Sample],
    holdout: list[Sample],
    digest: str,
    resume: bool = False,
    keep: bool = True,
) -> Outcome:
    """Train `model` end to end on `train`; evaluate on `holdout` (may be empty) after every epoch.
    Without `keep` (CV folds) the final checkpoint holds only the history and held-out logits."""
    checkpoint = checkpoint_path(config, classes, train, holdout, digest)
    key = checkpoint.stem
    state = load_checkpoint(checkpoint, key, resume)
    if state and state.get("done"):
        if keep and "model" not in state:
            raise CheckpointError(f"{checkpoint} kept no weights (a CV fold's); delete it to train again.")
        if keep:
            model.load_state_dict(state["model"])
        return Outcome(model.eval() if keep else None, state["history"], state["holdout_logits"], 0.0)

    device = pick_device(config.device)
    layout = torch.channels_last if device.type == "cuda" else torch.contiguous_format  # faster convs on GPUs
    model.to(device, memory_format=layout)
    backbone = [p for p in model.tail.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(
        [
            {"params": backbone, "lr": config.lr * config.backbone_lr_scale},
            {"params": list(model.head.parameters()), "lr": config.lr},
        ],
        weight_decay=config.weight_decay,
    )
    steps_per_epoch = max(1, len(train) // config.batch_size)
    total, warmup = config.epochs * steps_per_epoch, config.warmup_epochs * steps_per_epoch
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: lr_factor(step, warmup, total))
    ema = AveragedModel(model, multi_avg_fn=get_ema_multi_avg_fn(config.ema_decay)) if config.ema_decay else None
    history: list[dict[str, float]] = []
    if state:
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        schedule.load_state_dict(state["schedule"])
        if ema:
            ema.load_state_dict(state["ema"])
        history = state["history"]
    kept = ema.module if ema else model

    images = Images(train, train_transform(config.train_size or spec.crop, spec, config.augment), spec)
    weights = class_weights([s.label for s in train], len(classes), config.balance)
    weights = weights.to(device) if weights is not None else None
    holdout_y = torch.tensor([s.label for s in holdout])
    first = len(history) + 1
    progress = tqdm(total=(config.epochs - first + 1) * steps_per_epoch, desc="fine-tuning", unit="step", disable=None)
    started, seen = time.perf_counter(), 0
    for epoch in range(first, config.epochs + 1):
        seed = config.seed * 100_003 + epoch  # each epoch's shuffle and augmentation depend on (seed, epoch)
        torch.manual_seed(seed)
        images.seed = seed
        loader = DataLoader(
            images,
            batch_size=config.batch_size,
            shuffle=True,
            drop_last=len(train) >= config.batch_size,
            generator=torch.Generator().manual_seed(seed),
            num_workers=config.workers,
            pin_memory=device.type == "cuda",
        )
        train_mode(model)
        total_loss, correct, count = 0.0, 0, 0
        for x, y in loader:
            x, y = x.to(device, memory_format=layout, non_blocking=True), y.to(device, non_blocking=True)
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda"):
                logits = model(x)
                loss = F.cross_entropy(logits.float(), y, weights, label_smoothing=config.label_smoothing)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            schedule.step()
            if ema:
                ema.update_parameters(model)
            total_loss += loss.item() * len(y)
            correct += (logits.argmax(1) == y).sum().item()
            count += len(y)
            progress.update()
            progress.set_postfix(epoch=epoch, loss=f"{loss.item():.3f}")
        seen += count
        row = {"epoch": epoch, "train_loss": total_loss / count, "train_accuracy": correct / count}
        if holdout:
            logits = torch.from_numpy(predict_logits(kept, holdout, spec, device, config.workers))
            row |= {
                "val_loss": F.cross_entropy(logits, holdout_y).item(),
                "val_accuracy": (logits.argmax(1) == holdout_y).float().mean().item(),
            }
        history.append(row)
        log.info("epoch %d: %s", epoch, ", ".join(f"{k} {v:.4f}" for k, v in list(row.items())[1:]))
        state = {"key": key, "epoch": epoch, "model": model.state_dict(), "history": history}
        state |= {"optimizer": optimizer.state_dict(), "schedule": schedule.state_dict()}
        save_checkpoint(state | {"ema": ema.state_dict() if ema else None}, checkpoint)
    progress.close()
    seconds = time.perf_counter() - started

    holdout_logits = predict_logits(kept, holdout, spec, device, config.workers)
    final = kept.to("cpu").eval()
    done = {"key": key, "epoch": config.epochs, "done": True, "history": history, "holdout_logits": holdout_logits}
    save_checkpoint(done | ({"model": final.state_dict()} if keep else {}), checkpoint)
    return Outcome(final if keep else None, history, holdout_logits, seen / seconds if seen else 0.0)


def fine_tune_run(
    config: Config,
    classes: list[str],
    train: list[Sample],
    holdout: list[Sample],
    digest: str,
    resume: bool,
    keep: bool,
) -> Outcome:
    """A freshly seeded pretrained network, fine-tuned (or taken from its checkpoint): `fit` and
    `cv --checkpoints-only` start every run this way, so their checkpoints are interchangeable."""
    seed_everything(config.seed)
    net, spec = build_net(config, classes)
    return finetune(config, net, spec, classes, train, holdout, digest, resume, keep)
