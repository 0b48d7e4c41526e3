"""What happens without a network: the dataset download and torchvision's weights fail with clear errors.
The network is the one thing that cannot exist here, so its failure is simulated at torchvision's door."""

from __future__ import annotations

from urllib.error import URLError

import pytest
import torchvision

from train.learning.backbones import BackboneError, get_backbone
from train.data.pets import DataError, load_dataset


def offline(*args, **kwargs):
    raise URLError("[Errno -3] Temporary failure in name resolution")


def test_absent_dataset_offline_names_the_layout(tmp_path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(torchvision.datasets, "OxfordIIITPet", offline)
    with pytest.raises(DataError, match=r"download failed .*\(expected <data-dir>/images/<Name>_<n>\.jpg"):
        load_dataset(tmp_path / "oxford-iiit-pet")


def test_torchvision_backbone_offline_says_what_to_do(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(torchvision.models, "get_model", offline)
    for name in ("mobilenet_v2", "efficientnet_b0"):
        with pytest.raises(BackboneError, match="network connection or a filled TORCH_HOME"):
            get_backbone(name).build(224)


def test_unknown_backbone_lists_the_known_ones() -> None:
    with pytest.raises(BackboneError, match="efficientnet_lite0, efficientnet_lite1"):
        get_backbone("resnet50")
