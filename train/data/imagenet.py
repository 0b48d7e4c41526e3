"""What an ImageNet backbone already knows about the 37 breeds: 22 dog breeds and 3 cat breeds are
ImageNet classes, so their head rows can start from the pretrained 1000-way classifier."""

from __future__ import annotations

import logging

import torch
from torch import nn

log = logging.getLogger(__name__)

# Oxford-IIIT Pet label -> (WordNet id, ImageNet-1k class index). ImageNet orders its classes by WordNet id.
# american_bulldog, havanese and shiba_inu, and nine of the twelve cat breeds, have no ImageNet class.
IMAGENET_CLASSES: dict[str, tuple[str, int]] = {
    "chihuahua": ("n02085620", 151),
    "japanese_chin": ("n02085782", 152),  # "Japanese spaniel"
    "basset_hound": ("n02088238", 161),
    "beagle": ("n02088364", 162),
    "staffordshire_bull_terrier": ("n02093256", 179),
    "american_pit_bull_terrier": ("n02093428", 180),  # "American Staffordshire terrier"
    "yorkshire_terrier": ("n02094433", 187),
    "scottish_terrier": ("n02097298", 199),
    "wheaten_terrier": ("n02098105", 202),
    "german_shorthaired": ("n02100236", 210),
    "english_setter": ("n02100735", 212),
    "english_cocker_spaniel": ("n02102318", 219),
    "miniature_pinscher": ("n02107312", 237),
    "boxer": ("n02108089", 242),
    "saint_bernard": ("n02109525", 247),
    "pug": ("n02110958", 254),
    "leonberger": ("n02111129", 255),
    "newfoundland": ("n02111277", 256),
    "great_pyrenees": ("n02111500", 257),
    "samoyed": ("n02111889", 258),
    "pomeranian": ("n02112018", 259),
    "keeshond": ("n02112350", 261),
    "Persian": ("n02123394", 283),
    "Siamese": ("n02123597", 284),
    "Egyptian_Mau": ("n02124075", 285),  # "Egyptian cat"
}


@torch.no_grad()
def init_from_imagenet(classifier: nn.Linear, classes: list[str], imagenet: nn.Linear) -> list[str]:
    """Copy the ImageNet classifier's row of each breed that has one into the new head; returns those
    breeds. The other rows keep their random start, scaled to the copied rows' norm so no class starts
    with an advantage from its initialisation alone."""
    rows = {i: IMAGENET_CLASSES[name][1] for i, name in enumerate(classes) if name in IMAGENET_CLASSES}
    if not rows:
        return []
    targets, sources = list(rows), list(rows.values())
    classifier.weight[targets] = imagenet.weight[sources]
    classifier.bias[targets] = imagenet.bias[sources]
    others = [i for i in range(len(classes)) if i not in rows]
    if others:
        scale = classifier.weight[targets].norm(dim=1).mean() / classifier.weight[others].norm(dim=1).mean()
        classifier.weight[others] *= scale
        classifier.bias[others] = imagenet.bias[sources].mean()
    log.info("head initialised from ImageNet for %d of %d classes", len(rows), len(classes))
    return [classes[i] for i in targets]


def dog_rows(classes: list[str], species: list[str]) -> tuple[list[int], list[int]]:
    """The dog breeds that are ImageNet classes: their indices among `classes`, and ImageNet's, in step.

    The teacher is distilled and retention measured on these only: three of ImageNet's rows for our
    breeds are cats (Persian, Siamese, Egyptian cat), and a teacher asked about every photo pulls all cats
    toward those three."""
    pairs = [
        (i, IMAGENET_CLASSES[name][1])
        for i, (name, kind) in enumerate(zip(classes, species, strict=True))
        if kind == "dog" and name in IMAGENET_CLASSES
    ]
    return [i for i, _ in pairs], [j for _, j in pairs]
