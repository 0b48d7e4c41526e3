"""The classifier: a pretrained layer stack split into a frozen prefix and a trainable tail, then a head;
frozen (the whole backbone is the prefix, the tail is empty) or end to end (only the stem is frozen)."""

from __future__ import annotations

from typing import NamedTuple

import numpy as np
import torch
from torch import nn

from preprocess import InputSpec
from train.data.imagenet import init_from_imagenet
from train.learning.backbones import get_backbone
from train.learning.config import Config


def make_head(config: Config, channels: int, num_classes: int) -> nn.Module:
    """Global average pooling, dropout and a linear (or one-hidden-layer MLP) classifier."""
    if config.head == "linear":
        classifier = nn.Linear(channels, num_classes)
    else:
        classifier = nn.Sequential(
            nn.Linear(channels, config.hidden),
            nn.ReLU(),
            nn.Dropout(config.dropout),
            nn.Linear(config.hidden, num_classes),
        )
    return nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Dropout(config.dropout), classifier)


class Frozen(nn.Sequential):
    """Layers that never train: no gradients, and evaluation mode whatever `.train()` asks, so neither
    batch-norm statistics nor stochastic depth ever change what they compute."""

    def __init__(self, *layers: nn.Module) -> None:
        super().__init__(*layers)
        self.requires_grad_(False)
        self.train(False)

    def train(self, mode: bool = True) -> Frozen:
        return super().train(False)


def split_layers(layers: list[nn.Module], end_to_end: bool) -> tuple[Frozen, nn.Sequential]:
    """End to end, every layer but the stem trains; otherwise none does, and the frozen backbone's features
    can be cached."""
    cut = 1 if end_to_end else len(layers)
    return Frozen(*layers[:cut]), nn.Sequential(*layers[cut:])


def train_mode(*modules: nn.Module) -> None:
    """Train the weights but keep batch-norm statistics frozen: the pretrained ones update with momentum
    0.01, far too slowly for a few hundred steps, and statistics of small batches would make training and
    evaluation disagree."""
    for module in modules:
        module.train()
        for layer in module.modules():
            if isinstance(layer, nn.modules.batchnorm._BatchNorm):
                layer.eval()


class PetNet(nn.Module):
    """What is registered in MLflow and exported to ONNX: normalized image in, logits out."""

    def __init__(self, prefix: nn.Sequential, tail: nn.Sequential, head: nn.Module):
        super().__init__()
        self.prefix, self.tail, self.head = prefix, tail, head

    def features(self, image: torch.Tensor) -> torch.Tensor:
        """The feature map the head pools."""
        return self.tail(self.prefix(image))

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(image))


class Explained(nn.Module):
    """The exported graph: logits and, per class, a map over the last feature map (CAM).

    For a linear head the map of class k is W_k · F + b_k at each position, whose spatial mean is exactly
    logit k (Zhou et al., 2016). An MLP head has no such decomposition: every class then gets the
    class-agnostic mean activation of the feature map, and the card says so.

    Given `imagenet` (the backbone's own classifier, for a model whose backbone is the untouched one: the
    dog expert), a third output: ImageNet's 1000-way logits of the same pooled features, its view of what
    is in the photo at all."""

    def __init__(self, model: PetNet, imagenet: nn.Linear | None = None) -> None:
        super().__init__()
        self.model, self.imagenet = model, imagenet
        self.linear = isinstance(model.head[-1], nn.Linear)

    def forward(self, image: torch.Tensor) -> tuple[torch.Tensor, ...]:
        features = self.model.features(image)
        logits = self.model.head(features)
        if self.linear:
            layer = self.model.head[-1]
            maps = torch.einsum("nchw,kc->nkhw", features, layer.weight) + layer.bias[None, :, None, None]
        else:
            maps = features.mean(1, keepdim=True).expand(-1, logits.shape[1], -1, -1)
        if self.imagenet is None:
            return logits, maps
        return logits, maps, self.imagenet(features.mean((2, 3)))


def input_spec(config: Config) -> InputSpec:
    backbone = get_backbone(config.backbone)
    crop = config.image_size or backbone.input_size
    return InputSpec(round(crop / config.crop_ratio), crop, backbone.mean, backbone.std)


def seed_everything(seed: int) -> None:
    torch.manual_seed(seed)
    np.random.seed(seed)
    torch.use_deterministic_algorithms(True, warn_only=True)


class Built(NamedTuple):
    net: PetNet
    spec: InputSpec
    imagenet: nn.Linear  # the backbone's ImageNet classifier: the teacher's head, for distillation and retention


def build(config: Config, classes: list[str]) -> Built:
    """The pretrained backbone split where training starts, and a new head (rows from ImageNet on request)."""
    backbone, spec = get_backbone(config.backbone), input_spec(config)
    layers, imagenet = backbone.build(spec.crop)
    prefix, tail = split_layers(layers, config.end_to_end)
    head = make_head(config, backbone.channels, len(classes))
    if config.imagenet_init:
        init_from_imagenet(head[-1], classes, imagenet)
    return Built(PetNet(prefix, tail, head), spec, imagenet.requires_grad_(False))


def build_net(config: Config, classes: list[str]) -> tuple[PetNet, InputSpec]:
    net, spec, _ = build(config, classes)
    return net, spec


def class_weights(labels: list[int], classes: int, balance: str) -> torch.Tensor | None:
    """Loss weights. "loss": each class's images weigh ∝ 1 / its count, so every breed contributes alike
    however many photos it has; "sqrt": ∝ 1 / √count, a gentler balance (with 100 photos per cat breed and
    ~10 per dog breed, full balancing weighs a dog photo 10× a cat's and drowns the cats). Normalised to a
    mean weight of 1 per image. None for "none": plain cross-entropy."""
    if balance == "none":
        return None
    counts = torch.bincount(torch.as_tensor(labels), minlength=classes).float()
    present = counts > 0
    weights = torch.zeros(classes)
    weights[present] = counts[present] ** (-1.0 if balance == "loss" else -0.5)
    return weights * counts.sum() / (weights * counts).sum()
