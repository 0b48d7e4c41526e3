"""The classifier: a pretrained layer stack split into a frozen prefix and a trainable tail, then a head."""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from preprocess import InputSpec
from train.backbones import get_backbone
from train.config import Config
from train.imagenet import init_from_imagenet


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


def split_layers(layers: list[nn.Module], finetune_blocks: int) -> tuple[nn.Sequential, nn.Sequential]:
    """The last `finetune_blocks` layers train; the rest stay frozen and can be cached."""
    cut = len(layers) - min(finetune_blocks, len(layers) - 1)
    prefix, tail = nn.Sequential(*layers[:cut]), nn.Sequential(*layers[cut:])
    prefix.eval().requires_grad_(False)
    return prefix, tail


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

    def __init__(self, prefix: nn.Sequential, tail: nn.Sequential, head: nn.Module) -> None:
        super().__init__()
        self.prefix, self.tail, self.head = prefix, tail, head

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        return self.head(self.tail(self.prefix(image)))


class Explained(nn.Module):
    """The exported graph: logits and, per class, a map over the last feature map (CAM).

    For a linear head the map of class k is W_k · F + b_k at each position, whose spatial mean is exactly
    logit k (Zhou et al., 2016). An MLP head has no such decomposition: every class then gets the
    class-agnostic mean activation of the feature map, and the card says so."""

    def __init__(self, model: PetNet) -> None:
        super().__init__()
        self.model = model
        self.linear = isinstance(model.head[-1], nn.Linear)

    def forward(self, image: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        features = self.model.tail(self.model.prefix(image))
        logits = self.model.head(features)
        if self.linear:
            layer = self.model.head[-1]
            maps = torch.einsum("nchw,kc->nkhw", features, layer.weight) + layer.bias[None, :, None, None]
        else:
            maps = features.mean(1, keepdim=True).expand(-1, logits.shape[1], -1, -1)
        return logits, maps


def input_spec(config: Config) -> InputSpec:
    backbone = get_backbone(config.backbone)
    crop = config.image_size or backbone.input_size
    return InputSpec(round(crop / config.crop_ratio), crop, backbone.mean, backbone.std)


def seed_everything(seed: int) -> None:
    torch.manual_seed(seed)
    np.random.seed(seed)
    torch.use_deterministic_algorithms(True, warn_only=True)


def build_net(config: Config, classes: list[str]) -> tuple[PetNet, InputSpec]:
    """The pretrained backbone split where training starts, and a new head (rows from ImageNet on request)."""
    backbone, spec = get_backbone(config.backbone), input_spec(config)
    layers, imagenet = backbone.build(spec.crop)
    prefix, tail = split_layers(layers, len(layers) if config.end_to_end else config.finetune_blocks)
    head = make_head(config, backbone.channels, len(classes))
    if config.imagenet_init:
        init_from_imagenet(head[-1], classes, imagenet)
    return PetNet(prefix, tail, head), spec


def class_weights(labels: list[int], classes: int, balance: str) -> torch.Tensor | None:
    """Loss weights for `balance = "loss"`: each class's images weigh total / (classes present × its count),
    so every breed contributes alike however many photos it has (the extra dogs make some breeds ~10× the
    five they leave out). None for "none": plain cross-entropy."""
    if balance == "none":
        return None
    counts = torch.bincount(torch.as_tensor(labels), minlength=classes).float()
    present = counts > 0
    weights = torch.zeros(classes)
    weights[present] = counts.sum() / (present.sum() * counts[present])
    return weights
