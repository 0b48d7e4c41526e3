"""The Oxford-IIIT Pet dataset in torchvision's layout: official splits, a seeded validation split,
and honest accounting of list entries whose image file is absent; plus the reader of extra image folders
(`<root>/images/<label>/*.jpg` listed in `<root>/MANIFEST.tsv`, labelled with the Oxford class names), which
no run trains on: the Stanford Dogs folder measures retention (`train.shipping.retention`)."""

from __future__ import annotations

import csv
import hashlib
import logging
import os
import random
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

log = logging.getLogger(__name__)

DEFAULT_DATA_DIR = "data/oxford-iiit-pet"
SPECIES = {"1": "cat", "2": "dog"}
LAYOUT = "<data-dir>/images/<Name>_<n>.jpg and <data-dir>/annotations/{trainval,test}.txt"
EXTRA_LAYOUT = "<folder>/images/<label>/<stem>.jpg, listed in <folder>/MANIFEST.tsv (columns relative_path, label)"


class DataError(RuntimeError):
    """The dataset is absent, malformed or unusable for training."""


@dataclass(frozen=True)
class Sample:
    name: str  # file stem, e.g. "Abyssinian_100"
    path: Path
    label: int


@dataclass
class PetData:
    root: Path
    classes: list[str]  # dataset stems in output order
    species: list[str]  # "cat" or "dog", per class
    splits: dict[str, list[Sample]]  # "train", "val", "test"
    missing: dict[str, dict[str, int]] = field(default_factory=dict)  # split -> class -> absent files
    digest: str = ""

    def counts(self) -> dict[str, int]:
        return {split: len(samples) for split, samples in self.splits.items()}

    def missing_totals(self) -> dict[str, int]:
        return {split: sum(per_class.values()) for split, per_class in self.missing.items()}


def data_dir(explicit: str | Path | None = None) -> Path:
    return Path(explicit or os.environ.get("PETS_DATA_DIR") or DEFAULT_DATA_DIR)


def ensure_dataset(root: Path) -> None:
    """Download with torchvision when the annotations are absent; offline, say what layout is expected."""
    if (root / "annotations" / "trainval.txt").is_file():
        return
    if root.name != "oxford-iiit-pet":
        raise DataError(f"No Oxford-IIIT Pet dataset at {root}. Expected {LAYOUT}.")
    log.info("Oxford-IIIT Pet not found at %s: downloading it with torchvision", root)
    try:
        from torchvision.datasets import OxfordIIITPet

        OxfordIIITPet(root=str(root.parent), split="trainval", download=True)
    except Exception as error:
        raise DataError(
            f"No Oxford-IIIT Pet dataset at {root} and the download failed ({error}). "
            f"Put a copy there (expected {LAYOUT}) or pass --data-dir / set PETS_DATA_DIR."
        ) from None


def _read_split(root: Path, split: str) -> list[tuple[str, int, str]]:
    path = root / "annotations" / f"{split}.txt"
    if not path.is_file():
        raise DataError(f"Missing split file {path}. Expected {LAYOUT}.")
    entries = []
    for number, line in enumerate(path.read_text().splitlines(), start=1):
        if not line.strip() or line.startswith("#"):
            continue
        parts = line.split()
        if len(parts) < 3 or not parts[1].isdigit() or parts[2] not in SPECIES:
            raise DataError(f"{path}:{number}: expected 'Name CLASS-ID SPECIES BREED-ID', got {line!r}.")
        entries.append((parts[0], int(parts[1]) - 1, SPECIES[parts[2]]))
    return entries


def _class_table(entries: list[tuple[str, int, str]]) -> tuple[list[str], list[str]]:
    table = {label: (name.rsplit("_", 1)[0], species) for name, label, species in entries}
    if sorted(table) != list(range(len(table))):
        raise DataError(f"Class ids are not contiguous from 1: {sorted(label + 1 for label in table)}.")
    return [table[i][0] for i in range(len(table))], [table[i][1] for i in range(len(table))]


def _digest(root: Path, present: list[str], species: str = "") -> str:
    digest = hashlib.sha256(species.encode())  # empty for all 37 breeds: the digest as before the option
    for split in ("trainval", "test"):
        digest.update((root / "annotations" / f"{split}.txt").read_bytes())
    digest.update("\n".join(sorted(present)).encode())
    return digest.hexdigest()


def _only(species: str, kinds: list[str], *splits: list[tuple[str, int, str]]) -> list[list[tuple[str, int, str]]]:
    """Each split's entries of `species`, their class ids renumbered among that species' breeds."""
    if species not in kinds:
        raise DataError(f"No {species!r} breed in this dataset: its species are {', '.join(sorted(set(kinds)))}.")
    number = {old: new for new, old in enumerate(i for i, kind in enumerate(kinds) if kind == species)}
    return [[(name, number[label], kind) for name, label, kind in split if label in number] for split in splits]


def _stratified_split(samples: list[Sample], fraction: float, seed: int) -> tuple[list[Sample], list[Sample]]:
    """Per class, a seeded `fraction` (at least one image where a class has two or more) goes to validation."""
    rng = random.Random(seed)
    train, val = [], []
    by_class: dict[int, list[Sample]] = {}
    for sample in samples:
        by_class.setdefault(sample.label, []).append(sample)
    for label in sorted(by_class):
        group = sorted(by_class[label], key=lambda s: s.name)
        rng.shuffle(group)
        n_val = max(1, round(len(group) * fraction)) if len(group) >= 2 else 0
        val += group[:n_val]
        train += group[n_val:]
    return train, val


@dataclass(frozen=True)
class ExtraImages:
    samples: list[Sample]
    missing: dict[str, int]  # class -> listed files that are absent


def load_extra(root: str | Path, classes: list[str]) -> ExtraImages:
    """An extra image folder: its MANIFEST.tsv rows whose file is present, labels checked against `classes`."""
    root = Path(root).resolve()
    manifest = root / "MANIFEST.tsv"
    if not manifest.is_file():
        raise DataError(f"No MANIFEST.tsv in the extra image folder {root}. Expected {EXTRA_LAYOUT}.")
    with manifest.open(newline="") as handle:
        rows = list(csv.DictReader(handle, delimiter="\t"))
    if rows and not {"relative_path", "label"} <= set(rows[0]):
        raise DataError(f"{manifest} needs the columns relative_path and label. Expected {EXTRA_LAYOUT}.")
    samples, absent = [], Counter()
    for number, row in enumerate(rows, start=2):
        label = row["label"]
        if label not in classes:
            raise DataError(f"{manifest}:{number}: unknown label {label!r}; labels are the dataset's 37 class names.")
        path = root / row["relative_path"]
        if not path.is_file():
            absent[label] += 1
            continue
        samples.append(Sample(f"extra:{row['relative_path']}", path, classes.index(label)))
    if absent:
        log.warning("%s: %d listed images are missing and were skipped", root.name, sum(absent.values()))
    return ExtraImages(samples, {name: absent.get(name, 0) for name in classes})


def load_dataset(
    root: str | Path | None = None,
    val_fraction: float = 0.15,
    seed: int = 0,
    species: str = "",
) -> PetData:
    """Oxford-IIIT Pet's splits (a seeded, stratified validation split of trainval). With `species` ("cat" or
    "dog"), only that species' breeds, numbered in dataset order (the dog expert's 25 classes)."""
    root = data_dir(root).resolve()  # absolute sample paths: a Ray worker does not start in this folder
    ensure_dataset(root)
    trainval, test = _read_split(root, "trainval"), _read_split(root, "test")
    classes, kinds = _class_table(trainval + test)
    if species:
        trainval, test = _only(species, kinds, trainval, test)
        classes = [name for name, kind in zip(classes, kinds, strict=True) if kind == species]
        kinds = [species] * len(classes)
    images = root / "images"
    present = {path.stem for path in images.glob("*.jpg")} if images.is_dir() else set()
    splits, missing = {}, {}
    for split, entries in (("trainval", trainval), ("test", test)):
        absent = Counter(classes[label] for name, label, _ in entries if name not in present)
        missing[split] = {name: absent.get(name, 0) for name in classes}
        splits[split] = [Sample(name, images / f"{name}.jpg", label) for name, label, _ in entries if name in present]
    train, val = _stratified_split(splits.pop("trainval"), val_fraction, seed)
    empty = [classes[i] for i in range(len(classes)) if not any(s.label == i for s in train)]
    if empty:
        raise DataError(f"No training image for class(es) {', '.join(empty)}: their files are all missing.")
    data = PetData(root, classes, kinds, {"train": train, "val": val, "test": splits["test"]}, missing)
    data.digest = _digest(root, [s.name for samples in data.splits.values() for s in samples], species)
    for split, total in data.missing_totals().items():
        if total:
            log.warning("%s: %d listed images are missing and were skipped", split, total)
    return data
