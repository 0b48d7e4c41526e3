"""Training configuration: one dataclass of defaults, filled from TOML and `--set key=value` overrides."""

from __future__ import annotations

import itertools
import tomllib
from dataclasses import asdict, dataclass, fields, replace
from pathlib import Path
from typing import Any


class ConfigError(ValueError):
    """A configuration file or override names an unknown key or holds a bad value."""


@dataclass(frozen=True)
class Config:
    backbone: str = "efficientnet_lite0"
    image_size: int = 0  # centre-crop size; 0 = the backbone's own
    crop_ratio: float = 0.875  # crop / resize_shorter, as in ImageNet evaluation
    val_fraction: float = 0.15
    seed: int = 0
    head: str = "linear"  # "linear" or "mlp"
    hidden: int = 512  # mlp head width
    dropout: float = 0.2
    views: int = 2  # frozen backbone: cached training views: centre, mirror, then random resized crops
    end_to_end: bool = False  # train the whole backbone (all but the stem) from images, online augmentation
    train_size: int = 0  # end to end: training crop; 0 = image_size (FixRes: train smaller than test)
    augment: str = "trivial"  # end to end: "basic" (resized crop, flip) or "trivial" (+ TrivialAugmentWide)
    backbone_lr_scale: float = 0.1  # end to end: the backbone's learning rate is lr times this
    warmup_epochs: int = 1  # end to end: linear warmup, then cosine decay to zero
    ema_decay: float = 0.0  # end to end: weight EMA per step (0 = off); the average is what is kept
    imagenet_init: bool = False  # start the head rows of breeds that are ImageNet classes from its classifier
    distill_weight: float = 0.0  # weight of the ImageNet classifier's distillation on dog photos (0 = off)
    distill_temperature: float = 2.0  # softens both distributions in the distillation loss
    species: str = ""  # "": all 37 breeds; "dog": the dog expert's 25 (train/configs/dog_expert.toml)
    folds: int = 5  # python -m train cv: stratified folds over trainval
    balance: str = "none"  # "none"; "loss": class weights ∝ 1 / training images (each breed alike); "sqrt": ∝ 1 / √
    device: str = "auto"  # "auto" (CUDA when present), "cuda" or "cpu"
    workers: int = 2  # end to end: data-loading processes
    trial_cpus: float = 1.0  # --engine ray: CPUs one run reserves on the cluster
    trial_gpus: float = 0.0  # --engine ray: GPUs one run reserves (0.5 = two runs share one GPU)
    epochs: int = 40
    batch_size: int = 64
    lr: float = 1e-3
    weight_decay: float = 1e-4
    label_smoothing: float = 0.1
    patience: int = 6  # cached path: early stopping on validation loss; 0 = every epoch, keep the last
    experiment: str = "pet-breeds"
    cache_dir: str = "cache/features"
    checkpoint_dir: str = "cache/checkpoints"

    def __post_init__(self) -> None:
        checks = {
            "image_size": self.image_size == 0 or 32 <= self.image_size <= 1024,
            "crop_ratio": 0.3 <= self.crop_ratio <= 1.0,
            "val_fraction": 0.0 < self.val_fraction < 0.9,
            "head": self.head in ("linear", "mlp"),
            "hidden": self.hidden >= 1,
            "dropout": 0.0 <= self.dropout < 1.0,
            "views": 1 <= self.views <= 32,
            "epochs": 1 <= self.epochs <= 10_000,
            "batch_size": 1 <= self.batch_size <= 4096,
            "lr": 0.0 < self.lr < 10.0,
            "weight_decay": 0.0 <= self.weight_decay < 1.0,
            "label_smoothing": 0.0 <= self.label_smoothing < 1.0,
            "patience": self.patience >= 0,
            "train_size": self.train_size == 0 or 32 <= self.train_size <= 1024,
            "augment": self.augment in ("basic", "trivial"),
            "backbone_lr_scale": 0.0 <= self.backbone_lr_scale <= 10.0,
            "warmup_epochs": 0 <= self.warmup_epochs <= self.epochs,
            "ema_decay": 0.0 <= self.ema_decay < 1.0,
            "folds": 2 <= self.folds <= 20,
            "imagenet_init": not self.imagenet_init or self.head == "linear",
            "device": self.device in ("auto", "cuda", "cpu"),
            "species": self.species in ("", "dog"),
            "balance": self.balance in ("none", "loss", "sqrt"),
            "distill_weight": 0.0 <= self.distill_weight <= 100.0,
            "distill_temperature": 0.1 <= self.distill_temperature <= 20.0,
            "workers": 0 <= self.workers <= 64,
            "trial_cpus": 0.0 < self.trial_cpus <= 1024,
            "trial_gpus": 0.0 <= self.trial_gpus <= 64,
        }
        for key, ok in checks.items():
            if not ok:
                raise ConfigError(f"Bad value for '{key}': {getattr(self, key)!r}.")
        if self.end_to_end and self.distill_weight:
            raise ConfigError(
                "distill_weight > 0 needs the frozen backbone (the dog expert's recipe): distillation inside "
                "end-to-end fine-tuning was retired after commit 6346004 (docs/training.md)."
            )

    def as_params(self) -> dict[str, Any]:
        return asdict(self)

    def dataset_key(self) -> tuple[float, int, str]:
        """What `train.data.pets.load_dataset` takes after the folder: runs with equal keys share one dataset."""
        return self.val_fraction, self.seed, self.species

    def training_params(self) -> dict[str, Any]:
        """The keys that change what a run learns: where it runs, logs or caches does not."""
        ignored = {"experiment", "cache_dir", "checkpoint_dir", "device", "workers", "trial_cpus", "trial_gpus"}
        return {key: value for key, value in asdict(self).items() if key not in ignored}


FIELD_TYPES = {field.name: type(getattr(Config(), field.name)) for field in fields(Config)}


def _coerce(key: str, value: Any) -> Any:
    if key not in FIELD_TYPES:
        raise ConfigError(f"Unknown config key '{key}'. Known keys: {', '.join(FIELD_TYPES)}.")
    kind = FIELD_TYPES[key]
    if kind is float and isinstance(value, int) and not isinstance(value, bool):
        value = float(value)
    if kind is tuple and isinstance(value, list) and all(isinstance(item, str) for item in value):
        value = tuple(value)
    if type(value) is not kind:
        raise ConfigError(f"Config key '{key}' must be {kind.__name__}, got {value!r}.")
    return value


def make_config(values: dict[str, Any]) -> Config:
    try:
        return Config(**{key: _coerce(key, value) for key, value in values.items()})
    except TypeError as error:
        raise ConfigError(str(error)) from None


# Keys of retired recipes (docs/training.md), each with the value every other run logged and the commit after
# which it went: a run's logged config still holds them. 0242e1d: the kept teacher, two backbones; 6346004:
# partial fine-tuning on cached activations, extra training folders, the prior correction.
RETIRED = {
    "keep_teacher": (False, "0242e1d"),
    "fine_tuned_onnx": ("", "0242e1d"),
    "fine_tuned_sha256": ("", "0242e1d"),
    "finetune_blocks": (0, "6346004"),
    "extra_data": ((), "6346004"),
    "prior_correction": (False, "6346004"),
}


def _is_off(value: Any, off: Any) -> bool:
    """Whether a logged value is the retired key's off value as the run's JSON config holds it (a tuple comes
    back as a list) or as an MLflow param (a string: "()", "0", "False")."""
    forms = [off, str(off)] + ([list(off), str(list(off))] if isinstance(off, tuple) else [])
    return any(type(value) is type(form) and value == form for form in forms)


def logged_config(values: dict[str, Any]) -> Config:
    """A run's config as it logged it (`RUN_CONFIG`), without the retired keys; a run that used a retired
    recipe cannot be rebuilt by this code."""
    used = sorted(key for key, (off, _) in RETIRED.items() if key in values and not _is_off(values[key], off))
    if used:
        commits = sorted({RETIRED[key][1] for key in used})
        raise ConfigError(f"it used {', '.join(used)}, retired after commit {', '.join(commits)} (docs/training.md).")
    return make_config({key: value for key, value in values.items() if key not in RETIRED})


def parse_override(text: str) -> tuple[str, Any]:
    """`key=value` with the value read as TOML (numbers, booleans, quoted or bare strings)."""
    key, sep, raw = text.partition("=")
    if not sep:
        raise ConfigError(f"Override '{text}' must look like key=value.")
    try:
        value = tomllib.loads(f"v = {raw}")["v"]
    except tomllib.TOMLDecodeError:
        value = raw
    return key.strip(), value


def read_toml(path: str | Path) -> dict[str, Any]:
    try:
        return tomllib.loads(Path(path).read_text())
    except FileNotFoundError:
        raise ConfigError(f"Config file not found: {path}") from None
    except tomllib.TOMLDecodeError as error:
        raise ConfigError(f"{path} is not valid TOML: {error}") from None


def load_config(path: str | Path, overrides: list[str] = ()) -> Config:
    values = read_toml(path)
    values.update(parse_override(text) for text in overrides)
    return make_config(values)


def load_sweep(path: str | Path, overrides: list[str] = ()) -> list[Config]:
    """A sweep file has a [base] table of settings and a [grid] table of lists; one config per combination."""
    data = read_toml(path)
    unknown = set(data) - {"base", "grid"}
    if unknown:
        raise ConfigError(f"Unknown sweep table(s) {sorted(unknown)}: a sweep has only [base] and [grid].")
    base = make_config(data.get("base", {}) | dict(parse_override(text) for text in overrides))
    grid = data.get("grid", {})
    for key, values in grid.items():
        if not isinstance(values, list) or not values:
            raise ConfigError(f"Sweep grid key '{key}' must be a non-empty list.")
    keys = list(grid)
    return [
        replace(base, **{key: _coerce(key, value) for key, value in zip(keys, combo, strict=True)})
        for combo in itertools.product(*(grid[key] for key in keys))
    ]
