"""The classifier: a pretrained layer stack split into a frozen prefix and a trainable tail, then a head."""

from __future__ import annotations

import torch
from torch import nn

from train.config import Config


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
