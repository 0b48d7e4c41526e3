"""A fine-tuned backbone taken back from an ONNX model this project exported, to run frozen beside the
pretrained ImageNet backbone (`fine_tuned_onnx` in the config; docs/training.md, "Two backbones").

The export folded every batch norm into the convolution before it, so the graph holds one weight and one
bias per convolution, in the order the network runs them. The pretrained network is rebuilt with each of
its convolutions fused with its batch norm the same way, the graph's tensors are loaded into it in that
order, and the result must reproduce the ONNX model's own logits, or nothing is loaded. The file is pinned
by its SHA-256: the model built on it is only reproducible from those exact weights."""

from __future__ import annotations

import copy
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import torch
from onnx import numpy_helper
from torch import nn
from torch.nn.utils.fusion import fuse_conv_bn_eval

from inference import sha256_file
from train.config import ConfigError

LOGIT_TOLERANCE = 1e-3  # fp32 torch against ONNX Runtime on the same input; the export's parity gate is alike


class FineTunedError(RuntimeError):
    """The ONNX model does not fit the backbone it is said to come from."""


class Beside(nn.Module):
    """The fine-tuned backbone's feature map and the pretrained one's, stacked along the channels."""

    def __init__(self, fine_tuned: nn.Sequential, pretrained: nn.Sequential) -> None:
        super().__init__()
        self.fine_tuned, self.pretrained = fine_tuned, pretrained

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        return torch.cat([self.fine_tuned(image), self.pretrained(image)], 1)


def checked_model(path: str, sha256: str) -> onnx.ModelProto:
    """The pinned file, or a one-line ConfigError saying what is wrong with it."""
    file = Path(path)
    if not file.is_file():
        raise ConfigError(f"fine_tuned_onnx {path} not found; the config's comment says where that model comes from.")
    found = sha256_file(file)
    if found != sha256:
        raise ConfigError(f"fine_tuned_onnx {path} has SHA-256 {found[:16]}…, not the pinned {sha256[:16]}….")
    return onnx.load(str(file))


def fused(layers: list[nn.Module]) -> nn.Sequential:
    """A copy of `layers` with every batch norm folded into the convolution before it, in module order,
    which is the order these backbones run their convolutions."""
    network = copy.deepcopy(nn.Sequential(*layers)).eval()
    named = [(name, m) for name, m in network.named_modules() if isinstance(m, (nn.Conv2d, nn.BatchNorm2d))]
    convs, norms = named[0::2], named[1::2]
    paired = len(convs) == len(norms) and all(
        isinstance(conv, nn.Conv2d) and isinstance(norm, nn.BatchNorm2d)
        for (_, conv), (_, norm) in zip(convs, norms, strict=True)
    )
    if not paired:
        raise FineTunedError("this backbone has a convolution without a batch norm after it; it cannot be fused")
    for (conv_name, conv), (norm_name, norm) in zip(convs, norms, strict=True):
        network.set_submodule(conv_name, fuse_conv_bn_eval(conv, norm))
        network.set_submodule(norm_name, nn.Identity())
    return network


def constants(model: onnx.ModelProto) -> dict[str, np.ndarray]:
    """The graph's initializers by name, read once for the convolutions and the head."""
    return {tensor.name: numpy_helper.to_array(tensor) for tensor in model.graph.initializer}


def conv_tensors(model: onnx.ModelProto, values: dict[str, np.ndarray]) -> list[tuple[np.ndarray, np.ndarray]]:
    """(weight, bias) of each Conv node, in graph order."""
    found = []
    for node in model.graph.node:
        if node.op_type == "Conv":
            if len(node.input) < 3 or node.input[1] not in values or node.input[2] not in values:
                raise FineTunedError(f"Conv node {node.name} has no constant weight and bias")
            found.append((values[node.input[1]], values[node.input[2]]))
    return found


def head_tensors(model: onnx.ModelProto, values: dict[str, np.ndarray]) -> tuple[torch.Tensor, torch.Tensor]:
    """The linear head (the graph's one Gemm, as this project exports it) that turns pooled features into
    logits: its weight as classes × features, and its bias."""
    gemms = [node for node in model.graph.node if node.op_type == "Gemm"]
    if len(gemms) != 1 or len(gemms[0].input) != 3 or not all(name in values for name in gemms[0].input[1:]):
        raise FineTunedError("expected one linear head (a Gemm with a constant weight and bias)")
    attributes = {a.name: onnx.helper.get_attribute_value(a) for a in gemms[0].attribute}
    if attributes.get("alpha", 1.0) != 1.0 or attributes.get("beta", 1.0) != 1.0 or attributes.get("transA", 0):
        raise FineTunedError("the linear head scales or transposes its input; this is not a head this project exports")
    weight, bias = (torch.from_numpy(values[name].copy()) for name in gemms[0].input[1:3])
    return (weight if attributes.get("transB", 0) else weight.T), bias


def check_input(model: onnx.ModelProto, crop: int) -> None:
    """The file's image input must be the crop the config asks for: its backbone saw images of that size."""
    dims = [d.dim_value or None for d in model.graph.input[0].type.tensor_type.shape.dim]
    if dims[1:] != [3, crop, crop]:
        raise FineTunedError(f"its input is {dims[1:]}, not the config's 3×{crop}×{crop} images")


@torch.no_grad()
def load_convs(network: nn.Sequential, tensors: list[tuple[np.ndarray, np.ndarray]]) -> None:
    convs = [m for m in network.modules() if isinstance(m, nn.Conv2d)]
    if len(convs) != len(tensors):
        raise FineTunedError(f"the backbone has {len(convs)} convolutions, the ONNX model {len(tensors)}")
    for index, (conv, (weight, bias)) in enumerate(zip(convs, tensors, strict=True)):
        if tuple(conv.weight.shape) != weight.shape:
            raise FineTunedError(f"convolution {index} is {tuple(conv.weight.shape)} here, {weight.shape} in the file")
        conv.weight.copy_(torch.from_numpy(weight.copy()))
        conv.bias.copy_(torch.from_numpy(bias.copy()))


@torch.no_grad()
def check_logits(network: nn.Sequential, model: onnx.ModelProto, values: dict[str, np.ndarray], crop: int) -> None:
    """The rebuilt backbone under the file's own head must give the file's logits."""
    from train.export import INPUT, LOGITS  # train.export builds models through this module

    image = torch.randn(2, 3, crop, crop, generator=torch.Generator().manual_seed(0))
    weight, bias = head_tensors(model, values)
    mine = network(image).mean((2, 3)) @ weight.T + bias
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    theirs = session.run([LOGITS], {INPUT: image.numpy()})[0]
    delta = float(np.abs(mine.numpy() - theirs).max())
    if not delta <= LOGIT_TOLERANCE:
        raise FineTunedError(f"the rebuilt backbone's logits differ from the ONNX model's by {delta:.2g}")


def fine_tuned_backbone(path: str, sha256: str, pretrained: list[nn.Module], crop: int) -> nn.Sequential:
    """The backbone of the pinned ONNX model at `path`, rebuilt on the structure of `pretrained` (the same
    backbone's layers, which are left as they are)."""
    model = checked_model(path, sha256)
    network = fused(pretrained)
    try:
        check_input(model, crop)
        values = constants(model)
        load_convs(network, conv_tensors(model, values))
        check_logits(network, model, values, crop)
    except FineTunedError as error:
        raise FineTunedError(f"fine_tuned_onnx {path}: {error}.") from None
    return network


def beside_classifier(imagenet: nn.Linear) -> nn.Linear:
    """The ImageNet classifier over the stacked features: zero weight on the fine-tuned half, so it is
    exactly the pretrained network's classifier (the teacher for distillation and retention)."""
    stacked = nn.Linear(2 * imagenet.in_features, imagenet.out_features)
    with torch.no_grad():
        stacked.weight.zero_()
        stacked.weight[:, imagenet.in_features :] = imagenet.weight
        stacked.bias.copy_(imagenet.bias)
    return stacked
