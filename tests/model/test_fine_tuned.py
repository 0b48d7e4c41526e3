"""Two backbones, one head, on real Lite0 weights: a fine-tuned backbone taken back from this project's own
ONNX export computes what the exported one did; a changed, missing or foreign file is refused in one line;
the model starts as the ImageNet classifier on the breeds it knows; and a recipe on it runs through CV to
an ONNX model that passes the parity gate, shipped only when named (its CV is optimistic)."""

from __future__ import annotations

import hashlib
from pathlib import Path

import mlflow
import pytest
import torch
from mlflow import MlflowClient

from inference import ModelCard
from tests.conftest import write_tiny_dataset
from train.__main__ import main as train_main
from train.backbones import get_backbone
from train.config import Config, ConfigError
from train.export import to_onnx
from train.features import _cache_key
from train.fine_tuned import FineTunedError, fine_tuned_backbone
from train.imagenet import IMAGENET_CLASSES
from train.model import PetNet, build, build_net
from train.tracking import REGISTERED_MODEL

pytestmark = pytest.mark.slow

DOGS = [("Stripes", 1), ("beagle", 2), ("pug", 2)]  # two dog breeds ImageNet knows, and a made-up cat
SIZE = 64


@pytest.fixture(scope="module")
def exported(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str, PetNet]:
    """A Lite0 "fine-tuned" end to end (every weight and batch-norm statistic moved off the pretrained
    ones), exported as the project exports: the file, its SHA-256 and the network."""
    config = Config(backbone="efficientnet_lite0", image_size=SIZE, crop_ratio=1.0, end_to_end=True)
    net, spec = build_net(config, [name for name, _ in DOGS])
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for tensor in [*net.parameters(), *net.buffers()]:
            if tensor.is_floating_point():
                tensor.mul_(1 + 0.1 * torch.randn(tensor.shape, generator=generator))
    path = tmp_path_factory.mktemp("fine-tuned") / "model.onnx"
    to_onnx(net.eval(), spec, path)
    return path, hashlib.sha256(path.read_bytes()).hexdigest(), net


def pretrained(backbone: str = "efficientnet_lite0") -> tuple[list[torch.nn.Module], torch.nn.Linear]:
    return get_backbone(backbone).build(SIZE)


def test_the_rebuilt_backbone_computes_what_the_exported_one_did(exported) -> None:
    path, sha, net = exported
    layers, _ = pretrained()
    untouched = {key: value.clone() for key, value in torch.nn.Sequential(*layers).state_dict().items()}
    rebuilt = fine_tuned_backbone(str(path), sha, layers, SIZE)
    image = torch.randn(2, 3, SIZE, SIZE)
    with torch.no_grad():
        assert torch.allclose(rebuilt(image), net.features(image), atol=1e-4)
    after = torch.nn.Sequential(*layers).state_dict()
    assert all(torch.equal(after[key], value) for key, value in untouched.items())  # the pretrained stay so


def test_a_changed_missing_or_foreign_file_is_refused_in_one_line(exported, tmp_path: Path) -> None:
    path, sha, _ = exported
    with pytest.raises(ConfigError, match="not the pinned"):
        fine_tuned_backbone(str(path), "0" * 64, pretrained()[0], SIZE)
    with pytest.raises(ConfigError, match="not found"):
        fine_tuned_backbone(str(tmp_path / "absent.onnx"), sha, pretrained()[0], SIZE)
    with pytest.raises(FineTunedError, match="convolution") as refused:  # a Lite0 export is no Lite1
        fine_tuned_backbone(str(path), sha, pretrained("efficientnet_lite1")[0], SIZE)
    assert "\n" not in str(refused.value)


def test_a_backbone_loaded_out_of_order_or_at_another_size_is_refused(exported, monkeypatch) -> None:
    """The logits check is the safety net for a graph whose convolutions do not run in the module order the
    loader assumes: two convolutions of one shape swapped load without complaint, and must be caught."""
    import train.fine_tuned

    path, sha, _ = exported
    with pytest.raises(FineTunedError, match="not the config's"):
        fine_tuned_backbone(str(path), sha, get_backbone("efficientnet_lite0").build(SIZE * 2)[0], SIZE * 2)
    in_order = train.fine_tuned.conv_tensors

    def swapped(model, values):
        tensors = in_order(model, values)
        shapes = [weight.shape for weight, _ in tensors]
        first, second = next((i, j) for j in reversed(range(len(shapes))) for i in range(j) if shapes[i] == shapes[j])
        tensors[first], tensors[second] = tensors[second], tensors[first]
        return tensors

    monkeypatch.setattr(train.fine_tuned, "conv_tensors", swapped)
    with pytest.raises(FineTunedError, match="logits differ"):
        fine_tuned_backbone(str(path), sha, pretrained()[0], SIZE)


def test_a_two_backbone_model_starts_as_the_imagenet_classifier(exported) -> None:
    path, sha, net = exported
    config = Config(backbone="efficientnet_lite0", image_size=SIZE, imagenet_init=True)
    config = Config(**config.as_params() | {"fine_tuned_onnx": str(path), "fine_tuned_sha256": sha})
    built = build(config, [name for name, _ in DOGS])
    layers, classifier = pretrained()
    image = torch.randn(2, 3, SIZE, SIZE)
    with torch.no_grad():
        features = built.net.eval().features(image)
        imagenet = classifier(torch.nn.Sequential(*layers).eval()(image).mean((2, 3)))
        logits = built.net(image)
        assert torch.allclose(features[:, :1280], net.features(image), atol=1e-4)  # the fine-tuned half
        assert torch.allclose(built.imagenet(features.mean((2, 3))), imagenet, atol=1e-4)  # the teacher
    rows = [IMAGENET_CLASSES[breed][1] for breed in ("beagle", "pug")]
    assert torch.allclose(logits[:, 1:], imagenet[:, rows], atol=1e-4)
    assert not any(p.requires_grad for p in built.net.prefix.parameters()) and len(built.net.tail) == 0


def test_the_feature_cache_tells_fine_tuned_backbones_apart(exported) -> None:
    spec = build_net(Config(backbone="efficientnet_lite0", image_size=SIZE), ["a"])[1]
    keys = {_cache_key("efficientnet_lite0", spec, 1, 0, "d", [], False, sha) for sha in ("", "a" * 64, "b" * 64)}
    assert len(keys) == 3


def test_a_two_backbone_recipe_runs_through_cv_and_ships_only_when_named(
    exported, tmp_path, mlflow_store, capsys
) -> None:
    path, sha, _ = exported
    dogs = write_tiny_dataset(tmp_path / "oxford-iiit-pet", classes=DOGS)
    recipe = tmp_path / "beside.toml"
    recipe.write_text(
        f'backbone = "efficientnet_lite0"\nimage_size = {SIZE}\nimagenet_init = true\nviews = 1\nepochs = 2\n'
        f'patience = 0\nfolds = 2\nbalance = "loss"\ndistill_weight = 1.0\nfine_tuned_onnx = "{path}"\n'
        f'fine_tuned_sha256 = "{sha}"\n'
    )
    data_dir = ["--data-dir", str(dogs)]
    assert train_main([*data_dir, "cv", "--config", str(recipe)]) == 0
    model_dir = ["--model-dir", str(tmp_path / "model")]
    assert train_main([*data_dir, "select", *model_dir]) == 1  # its only version is never chosen by itself
    assert "versions 1 stand on a fine-tuned backbone: name one with --version" in capsys.readouterr().err
    assert train_main([*data_dir, "select", *model_dir, "--version", "1", "--alias", "candidate"]) == 0
    assert str(MlflowClient().get_model_version_by_alias(REGISTERED_MODEL, "candidate").version) == "1"
    with pytest.raises(mlflow.exceptions.MlflowException):  # trying a version out moves no champion
        MlflowClient().get_model_version_by_alias(REGISTERED_MODEL, "champion")
    card = ModelCard.load(tmp_path / "model" / "card.json")
    assert card.model.parity["max_abs_logit_delta"] <= 1e-3  # both backbones are in the graph, and agree
    assert card.model.teacher == {"kept": True, "distill_weight": 1.0, "distill_temperature": 2.0, "fine_tuned": sha}
