"""Extra image folders (what retention is measured on; no run trains on them): labels checked, absent files
counted; the Stanford Dogs builder; class weights."""

from __future__ import annotations

import io
import re
import tarfile
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from inference import sha256_file
from tests.conftest import REPO, TINY_CLASSES, pattern
from train.data.pets import DataError, load_extra
from train.learning.model import class_weights
from train.data.stanford import SYNSETS, ArchiveError, build

CLASSES = [name for name, _ in TINY_CLASSES]
SHARED_EXTRA = REPO.parent / "shared" / "data" / "stanford-dogs-extra"


def write_extra(root: Path, per_class: dict[str, int], seed: int = 1, unlisted_label: str | None = None) -> Path:
    """`<root>/images/<label>/<stem>.jpg` and MANIFEST.tsv, in the layout of stanford-dogs-extra."""
    rng = np.random.default_rng(seed)
    rows = ["relative_path\tlabel\tsource_repo\tsource_commit\tsource_path\tsquashed"]
    for label, count in per_class.items():
        (root / "images" / label).mkdir(parents=True, exist_ok=True)
        for n in range(count):
            relative = f"images/{label}/x_{n}.jpg"
            kind = CLASSES.index(label) if label in CLASSES else 0
            pattern(kind, rng).rotate(45, Image.Resampling.BILINEAR).save(root / relative, quality=90)  # unlike any Oxford one
            rows.append(f"{relative}\t{label}\tgenerated\t-\t-\tno")
    if unlisted_label:
        rows.append(f"images/{unlisted_label}/y.jpg\t{unlisted_label}\tgenerated\t-\t-\tno")
    (root / "MANIFEST.tsv").write_text("\n".join(rows) + "\n")
    return root


def test_labels_counts_and_absent_files(tmp_path: Path) -> None:
    extra = write_extra(tmp_path / "extra", {"dots": 4, "Checks": 2})
    (extra / "images" / "dots" / "x_0.jpg").unlink()
    found = load_extra(extra, CLASSES)
    assert [CLASSES[s.label] for s in found.samples] == ["dots"] * 3 + ["Checks"] * 2
    assert found.missing == {"Stripes": 0, "dots": 1, "Checks": 0}
    assert all(s.name.startswith("extra:images/") and s.path.is_file() for s in found.samples)


def test_an_unknown_label_is_an_error_that_names_it(tmp_path: Path) -> None:
    extra = write_extra(tmp_path / "extra", {"dots": 1}, unlisted_label="cocker_spaniel")
    with pytest.raises(DataError, match="unknown label 'cocker_spaniel'"):
        load_extra(extra, CLASSES)


def test_a_folder_without_a_manifest_is_a_clear_error(tmp_path: Path) -> None:
    (tmp_path / "extra" / "images").mkdir(parents=True)
    with pytest.raises(DataError, match="No MANIFEST.tsv"):
        load_extra(tmp_path / "extra", CLASSES)


def test_class_weights_make_every_class_count_alike() -> None:
    weights = class_weights([0, 0, 0, 1, 2, 2], 4, "loss")
    assert weights.tolist() == pytest.approx([6 / 9, 6 / 3, 6 / 6, 0.0])  # total / (3 present × count)
    counts = np.array([3, 1, 2, 0])
    assert (weights.numpy() * counts)[:3] == pytest.approx([2, 2, 2])  # each present class weighs the same
    assert class_weights([0, 1], 2, "none") is None


# --------------------------------------------------------------------------- the Stanford Dogs builder


def test_the_synset_table_matches_the_shared_copy_and_its_ids() -> None:
    assert len(SYNSETS) == 20 and len(set(SYNSETS.values())) == 20
    for folder, label in SYNSETS.items():
        wnid, _, name = folder.partition("-")
        assert re.fullmatch(r"n\d{8}", wnid) and name, folder
    # the Oxford names, as the class list spells them (dogs lower case), and none of the approximate matches
    assert all(label.islower() for label in SYNSETS.values())
    assert "american_pit_bull_terrier" not in SYNSETS.values() and "english_cocker_spaniel" not in SYNSETS.values()
    assert SYNSETS["n02088364-beagle"] == "beagle" and SYNSETS["n02085782-Japanese_spaniel"] == "japanese_chin"


@pytest.mark.skipif(not (SHARED_EXTRA / "MANIFEST.tsv").is_file(), reason="no stanford-dogs-extra copy beside the repo")
def test_the_synset_ids_agree_with_every_file_of_the_shared_copy() -> None:
    """Each photo's WordNet id (its file stem) is the id of the synset the table maps to its label."""
    wnid_of = {label: folder.split("-")[0] for folder, label in SYNSETS.items()}
    rows = (SHARED_EXTRA / "MANIFEST.tsv").read_text().splitlines()[1:]
    assert len(rows) == 2682
    for row in rows:
        relative, label = row.split("\t")[:2]
        assert Path(relative).stem.split("_")[0] == wnid_of[label], row


def stanford_archive(path: Path) -> Path:
    """A small archive in the official layout: Images/<synset folder>/<wnid>_<n>.jpg, one unused synset."""
    rng = np.random.default_rng(3)
    with tarfile.open(path, "w") as tar:
        for folder, size in (
            ("n02085620-Chihuahua", (500, 375)),
            ("n02110958-pug", (200, 150)),
            ("n02099601-golden_retriever", (300, 300)),
        ):
            for n in (2, 1):
                buffer = io.BytesIO()
                pattern(n % 3, rng, size[::-1]).convert("L").save(buffer, "JPEG")
                info = tarfile.TarInfo(f"Images/{folder}/{folder.split('-')[0]}_{n}.jpg")
                info.size = len(buffer.getvalue())
                tar.addfile(info, io.BytesIO(buffer.getvalue()))
    return path


def test_the_builder_maps_processes_and_lists_like_the_shared_copy(tmp_path: Path) -> None:
    archive = stanford_archive(tmp_path / "images.tar")
    written = build(archive, tmp_path / "out")
    assert written == {"chihuahua": 2, "pug": 2}  # the golden retriever is no Oxford breed
    big = Image.open(tmp_path / "out" / "images" / "chihuahua" / "n02085620_1.jpg")
    small = Image.open(tmp_path / "out" / "images" / "pug" / "n02110958_2.jpg")
    assert big.mode == "RGB" and big.size == (427, 320) and small.size == (200, 150)  # down to 320, never up
    classes = ["chihuahua", "pug", "Abyssinian"]
    found = load_extra(tmp_path / "out", classes)
    assert sorted(s.name for s in found.samples) == sorted(
        f"extra:images/{label}/{wnid}_{n}.jpg"
        for label, wnid in (("chihuahua", "n02085620"), ("pug", "n02110958"))
        for n in (1, 2)
    )
    assert f"sha256:{sha256_file(archive)}" in (tmp_path / "out" / "MANIFEST.tsv").read_text()


def test_the_builder_refuses_an_archive_with_another_checksum(tmp_path: Path) -> None:
    archive = stanford_archive(tmp_path / "images.tar")
    with pytest.raises(ArchiveError, match="expected 00"):
        build(archive, tmp_path / "out", expected_sha256="00" * 32)


def test_square_root_balancing_is_gentler_than_full_balancing() -> None:
    labels = [0] * 100 + [1] * 4 + [2] * 25  # a cat breed's 100 photos beside a dog breed's few
    full, gentle = class_weights(labels, 4, "loss"), class_weights(labels, 4, "sqrt")
    assert full[1] / full[0] == pytest.approx(25.0) and gentle[1] / gentle[0] == pytest.approx(5.0)
    for weights in (full, gentle):  # an average image weighs 1 either way; absent classes weigh nothing
        assert (weights[torch.tensor(labels)].mean()).item() == pytest.approx(1.0) and weights[3] == 0
