"""Shared fixtures: a tiny Oxford-layout dataset of real JPEGs, a throwaway MLflow store, sample photos."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

REPO = Path(__file__).resolve().parents[1]
MODEL_DIR = REPO / "model"
CHELSEA = REPO / "tests" / "chelsea.jpg"  # scikit-image's sample photo of a cat (CC0); its breed is unknown
EXAMPLES = sorted((REPO / "examples").glob("*.jpg"))

os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")

# Three classes with clearly different patterns; names follow the dataset's convention (cats capitalised).
TINY_CLASSES = [("Stripes", 1), ("dots", 2), ("Checks", 1)]
TINY_PER_CLASS = 12


def pattern(kind: int, rng: np.random.Generator, size: tuple[int, int] = (96, 80)) -> Image.Image:
    """A noisy image whose class shows in its structure: horizontal stripes, dots or a checkerboard."""
    h, w = size
    y, x = np.mgrid[0:h, 0:w]
    period = rng.integers(8, 14)
    if kind == 0:
        mask = (y // period) % 2 == 0
    elif kind == 1:
        mask = ((x % (2 * period) - period) ** 2 + (y % (2 * period) - period) ** 2) < (period * 0.6) ** 2
    else:
        mask = ((x // period) + (y // period)) % 2 == 0
    colours = rng.integers(0, 256, size=(2, 3))
    pixels = np.where(mask[..., None], colours[0], colours[1]) + rng.normal(0, 12, (h, w, 3))
    return Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8))


def write_tiny_dataset(
    root: Path, per_class: int = TINY_PER_CLASS, seed: int = 0, classes: list[tuple[str, int]] = TINY_CLASSES
) -> Path:
    """Oxford layout: images/<Name>_<n>.jpg and annotations/{list,trainval,test}.txt (a third to test).
    `classes` are (name, species id: 1 cat, 2 dog); name real breeds to reach what ImageNet knows of them."""
    rng = np.random.default_rng(seed)
    (root / "images").mkdir(parents=True)
    (root / "annotations").mkdir()
    lines = {"trainval": [], "test": []}
    for class_id, (name, species) in enumerate(classes, start=1):
        for n in range(1, per_class + 1):
            stem = f"{name}_{n}"
            pattern((class_id - 1) % 3, rng).save(root / "images" / f"{stem}.jpg", quality=90)
            split = "test" if n % 3 == 0 else "trainval"
            lines[split].append(f"{stem} {class_id} {species} {n}")
    for split, entries in lines.items():
        (root / "annotations" / f"{split}.txt").write_text("\n".join(entries) + "\n")
    (root / "annotations" / "list.txt").write_text("\n".join(lines["trainval"] + lines["test"]) + "\n")
    return root


@pytest.fixture
def tiny_data(tmp_path: Path) -> Path:
    return write_tiny_dataset(tmp_path / "oxford-iiit-pet")


@pytest.fixture
def mlflow_store(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A real MLflow SQLite store in a temporary folder, artifacts beside it."""
    import mlflow

    store = tmp_path / "mlflow"
    store.mkdir()
    monkeypatch.chdir(store)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{store / 'mlflow.db'}")
    mlflow.set_tracking_uri(f"sqlite:///{store / 'mlflow.db'}")
    yield store
    mlflow.set_tracking_uri(None)


@pytest.fixture(scope="module")
def server() -> Iterator[str]:
    """`python app.py` on a free port, one per test module that asks for it."""
    from bench.common import running_app

    with running_app() as (url, _):
        yield url


@pytest.fixture(scope="module")
def client(server: str):
    from gradio_client import Client

    return Client(server, verbose=False)
