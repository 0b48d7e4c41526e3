"""The WordNet table that lets a head start from the backbone's ImageNet classifier."""

from __future__ import annotations

import json

import pytest
import torch
from torch import nn
from torchvision.models._meta import _IMAGENET_CATEGORIES

from tests.conftest import MODEL_DIR
from train.data.imagenet import IMAGENET_CLASSES, init_from_imagenet

EXPECTED_NAMES = {  # ImageNet's own name for each breed, where it differs from the dataset's
    "japanese_chin": "Japanese spaniel",
    "basset_hound": "basset",
    "staffordshire_bull_terrier": "Staffordshire bullterrier",
    "american_pit_bull_terrier": "American Staffordshire terrier",
    "scottish_terrier": "Scotch terrier",
    "wheaten_terrier": "soft-coated wheaten terrier",
    "german_shorthaired": "German short-haired pointer",
    "english_cocker_spaniel": "cocker spaniel",
    "leonberger": "Leonberg",
    "Persian": "Persian cat",
    "Siamese": "Siamese cat",
    "Egyptian_Mau": "Egyptian cat",
}


def test_each_breed_maps_to_its_imagenet_class() -> None:
    for breed, (_, index) in IMAGENET_CLASSES.items():
        expected = EXPECTED_NAMES.get(breed, breed.replace("_", " "))
        assert _IMAGENET_CATEGORIES[index].lower() == expected.lower(), breed


def test_table_covers_22_dog_and_3_cat_breeds_of_the_dataset() -> None:
    labels = json.loads((MODEL_DIR / "labels.json").read_text())
    assert set(IMAGENET_CLASSES) <= set(labels)
    dogs = [breed for breed in IMAGENET_CLASSES if breed[0].islower()]  # the dataset capitalises cats
    assert len(dogs) == 22 and len(IMAGENET_CLASSES) == 25


def test_wordnet_ids_follow_imagenet_class_order() -> None:
    """ImageNet-1k numbers its classes in WordNet-id order, so ids must rise with the index."""
    pairs = sorted(IMAGENET_CLASSES.values(), key=lambda pair: pair[1])
    ids = [wnid for wnid, _ in pairs]
    assert ids == sorted(ids) and len(set(ids)) == len(ids)
    assert all(wnid.startswith("n0") and len(wnid) == 9 for wnid in ids)


def test_head_rows_start_from_the_imagenet_classifier() -> None:
    torch.manual_seed(0)
    imagenet, head = nn.Linear(8, 1000), nn.Linear(8, 3)
    copied = init_from_imagenet(head, ["beagle", "havanese", "Persian"], imagenet)
    assert copied == ["beagle", "Persian"]
    assert torch.equal(head.weight[0], imagenet.weight[162]) and torch.equal(head.bias[2], imagenet.bias[283])
    assert not torch.equal(head.weight[1], imagenet.weight[162])


def test_a_random_row_starts_at_the_copied_rows_norm() -> None:
    """A breed ImageNet lacks keeps its random start, scaled to the copied rows' norm: no class starts with an
    advantage (or handicap) from its initialisation alone."""
    torch.manual_seed(0)
    imagenet, head = nn.Linear(8, 1000), nn.Linear(8, 3)
    init_from_imagenet(head, ["beagle", "havanese", "Persian"], imagenet)
    with torch.no_grad():
        copied = head.weight[[0, 2]].norm(dim=1).mean()
    assert head.weight[1].norm().item() == pytest.approx(copied.item(), rel=1e-5)
