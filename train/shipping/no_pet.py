"""`python -m train no-pet`: the "no cat or dog here" answer, fitted and measured on real photos.

The signal is the untouched ImageNet network's own view of a photo (the dog expert's `imagenet` output):
its probability mass on ImageNet's dog and domestic-cat classes. A photo is answered "no cat or dog" where
that mass is below a threshold. Where it is asked is measured: only where the answer could change (a
photo the breed model sends to the dog expert, or one it is not sure of), unless asking every photo
catches more than MAX_CATCH_LOSS more of the photos without a pet; both are reported.

The threshold is fitted on pet photos alone (Oxford trainval: at most `MAX_FALSE_ALARMS` of them flagged),
so the photos without a pet never choose it; they measure it, cross-validated: the not-pet photos in folds
by source, the trainval pets in as many folds, each fold judged at the threshold fitted on the others' pets.
The test pets give the false alarms once, at the final threshold fitted on all of trainval.
"""

from __future__ import annotations

import csv
import json
import logging
import math
import random
from collections import Counter
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
from torchvision.models import EfficientNet_B0_Weights

from inference import IMAGENET_NAMES, ModelCard, PetClassifier, asked_rows, pet_mass, softmax
from preprocess import PreprocessError
from train.data.pets import DataError, PetData, Sample, load_dataset
from train.shipping.evaluate import prepared
from train.shipping.export import updating

log = logging.getLogger(__name__)

FOLDER = "not-pets"  # beside the Oxford data folder, as in ../shared/data
IMAGENET_PETS = [[151, 268], [281, 285]]  # ImageNet's dog classes and its domestic cats, ranges inclusive
IMAGENET_SOURCE = "imagenet"  # not-pet photos whose source repository holds ImageNet's own (the network saw them)
MAX_FALSE_ALARMS = 0.01
# Where serving asks the ImageNet network (the card's `asked`): only where the answer could change, unless
# that catches more than MAX_CATCH_LOSS fewer photos without a pet (cross-validated) than asking every photo.
DOG_OR_UNSURE, EVERY_PHOTO = "dog or unsure", "every photo"
MAX_CATCH_LOSS = 0.02


@dataclass(frozen=True)
class Photo:
    path: Path
    category: str  # "animals", "people", ... for not-pets; "pet" for Oxford photos
    source: str  # the source repository (not-pets) or the split (Oxford)


@dataclass(frozen=True)
class Signals:
    """What the served pair says of each photo, and the ImageNet network's view of it."""

    mass: np.ndarray  # ImageNet probability on its dog and domestic-cat classes
    unsure_or_dog: np.ndarray  # whether serving asks the ImageNet network (routed, or below "not sure")
    seen: np.ndarray  # ImageNet's top-1 class


def not_pet_photos(folder: Path) -> tuple[list[Photo], int]:
    """The folder's MANIFEST.tsv rows whose file is present, and how many listed files are absent."""
    manifest = folder / "MANIFEST.tsv"
    if not manifest.is_file():
        raise DataError(f"No not-pet photos at {folder} (no MANIFEST.tsv): nothing to fit or measure on.")
    with manifest.open(newline="") as handle:
        rows = list(csv.DictReader(handle, delimiter="\t"))
    photos = [Photo(folder / row["relative_path"], row["category"], row["source_repo"]) for row in rows]
    present = [photo for photo in photos if photo.path.is_file()]
    if len(present) < len(photos):
        log.warning("%s: %d listed photos are missing and were skipped", folder.name, len(photos) - len(present))
    return present, len(photos) - len(present)


def signals(classifier: PetClassifier, photos: list[Photo] | list[Sample]) -> Signals:
    """Where serving would ask the ImageNet network (the breed model's routing and "not sure", as `answer`
    computes them) and that network's view of every photo (asked of all of them here, so both ways of
    asking can be measured): each model runs once a photo."""
    expert = classifier.expert
    masses, asked, seen = [], [], []
    try:
        for x in prepared(classifier.spec, photos):
            breeds = softmax(classifier.logits(x), classifier.temperature)
            imagenet = softmax(expert.session.run([expert.imagenet_output], {expert.input_name: x})[0])
            masses.append(pet_mass(imagenet, IMAGENET_PETS))
            asked.append(asked_rows(breeds, classifier.routes(breeds), classifier.threshold))
            seen.append(imagenet.argmax(1))
    except PreprocessError as error:
        raise DataError(f"A photo cannot be read: {error}") from None
    return Signals(np.concatenate(masses), np.concatenate(asked), np.concatenate(seen))


def fit_threshold(mass: np.ndarray, max_rate: float = MAX_FALSE_ALARMS) -> float:
    """The highest threshold at which at most `max_rate` of these pet photos have their mass below it (the
    mass of the first pet that would be one too many), whether or not serving would ask about them: the
    breed model trained on these photos, so it is rarely unsure of them, and fitting on the few it is would
    let more of the unsure test pets through."""
    allowed = math.floor(max_rate * len(mass))
    return float(np.sort(mass)[allowed]) if allowed < len(mass) else 1.0


def flagged(found: Signals, threshold: float, everywhere: bool = False) -> np.ndarray:
    """ "No cat or dog" where serving asks (or, `everywhere`, wherever it would be asked)."""
    return (found.mass < threshold) & (True if everywhere else found.unsure_or_dog)


def folds_by_source(photos: list[Photo], pets: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Fold numbers: one per not-pet source, and the pets shuffled into as many folds."""
    sources = sorted({photo.source for photo in photos})
    if len(sources) < 2:
        raise DataError("The not-pet photos come from one source: cross-validation by source needs two or more.")
    not_pet_fold = np.array([sources.index(photo.source) for photo in photos])
    order = list(range(pets))
    random.Random(seed).shuffle(order)
    pet_fold = np.empty(pets, dtype=int)
    pet_fold[order] = np.arange(pets) % len(sources)
    return not_pet_fold, pet_fold


def cross_validate(photos: list[Photo], others: Signals, pets: Signals) -> dict[str, dict]:
    """Per way of asking (DOG_OR_UNSURE, EVERY_PHOTO): catch and false alarms, each fold judged at the
    threshold fitted on the other folds' pets."""
    not_pet_fold, pet_fold = folds_by_source(photos, len(pets.mass))
    found = {}
    for asked in (DOG_OR_UNSURE, EVERY_PHOTO):
        caught, alarms = np.zeros(len(photos), bool), np.zeros(len(pets.mass), bool)
        for fold in range(not_pet_fold.max() + 1):
            threshold = fit_threshold(pets.mass[pet_fold != fold])
            held, mine = not_pet_fold == fold, pet_fold == fold
            caught[held] = flagged(subset(others, held), threshold, asked == EVERY_PHOTO)
            alarms[mine] = flagged(subset(pets, mine), threshold, asked == EVERY_PHOTO)
        found[asked] = catch_report(photos, caught) | {
            "false_alarms": float(alarms.mean()),
            "folds": int(not_pet_fold.max() + 1),
            "pets": len(pets.mass),
        }
    return found


def where_to_ask(cv: dict[str, dict]) -> str:
    """Only where the answer could change, unless that loses more than MAX_CATCH_LOSS of the catch."""
    loss = cv[EVERY_PHOTO]["catch"] - cv[DOG_OR_UNSURE]["catch"]
    return EVERY_PHOTO if loss > MAX_CATCH_LOSS else DOG_OR_UNSURE


def subset(found: Signals, rows: np.ndarray) -> Signals:
    return Signals(found.mass[rows], found.unsure_or_dog[rows], found.seen[rows])


def catch_report(photos: list[Photo], caught: np.ndarray) -> dict:
    """The share caught overall, per category, of the other animals and of the rest, and of the photos the
    ImageNet network saw in training (its own) against the others."""
    categories = Counter(photo.category for photo in photos)
    own = np.array([IMAGENET_SOURCE in photo.source.lower() for photo in photos])
    animals = np.array([photo.category == "animals" for photo in photos])

    def share(rows: np.ndarray) -> float:
        return float(caught[rows].mean()) if rows.any() else float("nan")

    return {
        "catch": share(np.ones(len(photos), bool)),
        "catch_animals": share(animals),
        "catch_not_animals": share(~animals),
        "catch_imagenet_photos": share(own),
        "catch_other_photos": share(~own),
        "photos": len(photos),
        "per_category": {
            name: {"catch": share(np.array([p.category == name for p in photos])), "photos": count}
            for name, count in sorted(categories.items())
        },
    }


def variant_entry(classifier: PetClassifier, data: PetData, photos: list[Photo], asked: str | None = None) -> dict:
    """One served variant's threshold, fitted on all trainval pets; where to ask (`asked`, else chosen by
    `where_to_ask` on this variant's cross-validation); the cross-validated catch and false alarms of that
    way (and the other's, beside it), the false alarms on the test pets and the catch on every not-pet
    photo at the threshold."""
    trainval = data.splits["train"] + data.splits["val"]
    pets, tested, others = (signals(classifier, found) for found in (trainval, data.splits["test"], photos))
    threshold, cv = fit_threshold(pets.mass), cross_validate(photos, others, pets)
    asked = asked or where_to_ask(cv)
    everywhere = asked == EVERY_PHOTO
    log.info("no cat or dog, %s: threshold %.4f, asked of %s", classifier.variant, threshold, asked)
    other = EVERY_PHOTO if asked == DOG_OR_UNSURE else DOG_OR_UNSURE
    return {
        "threshold": threshold,
        "asked": asked,
        "cv": cv[asked],
        "cv_if_asked_of": {other: {key: cv[other][key] for key in ("catch", "catch_animals", "false_alarms")}},
        "test": {"false_alarms": float(flagged(tested, threshold, everywhere).mean()), "photos": len(tested.mass)},
        "final_on_not_pets": float(flagged(others, threshold, everywhere).mean()),
    }


def fit_no_pet(model_dir: str | Path = "model", data_dir: str | Path | None = None, folder: Path | None = None) -> dict:
    """Measure, fit and write the card's `no_pet` entry (fp32's figures, and int8's own where it ships) and
    `imagenet_classes.json` into `model_dir`."""
    model_dir = Path(model_dir)
    card = ModelCard.load(model_dir / "card.json")
    if card.expert is None:
        raise DataError(f"{model_dir} has no dog expert: its ImageNet network is what tells a pet from the rest.")
    card = replace(card, no_pet=None)
    data = load_dataset(data_dir, card.data["val_fraction"], card.data["seed"])
    photos, missing = not_pet_photos(folder or data.root.parent / FOLDER)
    labels = json.loads((model_dir / "labels.json").read_text())
    served = {
        name: PetClassifier(card, model_dir / card.variant_file(name)[0], labels, variant=name)
        for name in card.variants()
    }
    found = {"fp32": variant_entry(served.pop("fp32"), data, photos)}
    found |= {
        name: variant_entry(classifier, data, photos, found["fp32"]["asked"]) for name, classifier in served.items()
    }
    entry = found["fp32"] | {
        "imagenet_pets": IMAGENET_PETS,
        "fitted_on": f"{len(data.splits['train']) + len(data.splits['val'])} Oxford trainval pet photos: at most "
        f"{MAX_FALSE_ALARMS:.0%} below it",
        "missing": missing,
    }
    entry |= {"int8": found["int8"]} if "int8" in found else {}
    write_entry(model_dir, replace(card, no_pet=entry))
    return entry


def write_entry(model_dir: Path, card: ModelCard) -> None:
    """The card with its `no_pet` entry and the ImageNet class names, replacing the folder at once."""
    with updating(model_dir) as staging:
        names = EfficientNet_B0_Weights.IMAGENET1K_V1.meta["categories"]  # ImageNet-1k's, in the package
        (staging / IMAGENET_NAMES).write_text(json.dumps(names, indent=0) + "\n")
        card.save(staging / "card.json")
