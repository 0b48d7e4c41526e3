"""Hardening: the bad-input corpus through the Python API and the live server, what the server exposes,
and the upload size limit."""

from __future__ import annotations

import time
import tracemalloc
from pathlib import Path

import httpx
import numpy as np
import pytest
from gradio_client import Client, handle_file
from gradio_client.exceptions import AppError
from PIL import Image

from inference import PetClassifier
from preprocess import PreprocessError, load_image
from tests.conftest import CHELSEA, MODEL_DIR, REPO
from tests.corpus import ABSURD_PARAMETERS, bomb_png, write_corpus


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, tuple[Path, str]]:
    return write_corpus(tmp_path_factory.mktemp("corpus"))


@pytest.fixture(scope="module")
def classifier() -> PetClassifier:
    return PetClassifier.load(MODEL_DIR)


def test_corpus_through_the_python_api(files, classifier: PetClassifier) -> None:
    for name, (path, expected) in files.items():
        if expected == "ok":
            assert len(classifier.predict(path).top) == 5, name
        else:
            with pytest.raises(PreprocessError, match=expected):
                classifier.predict(path)


def test_exif_rotated_photo_predicts_like_the_upright_one(files, classifier: PetClassifier) -> None:
    """The same JPEG pixels turned upright by hand give exactly the prediction load_image gives via EXIF."""
    path = files["exif-rotated.jpg"][0]
    stored = Image.open(path)
    assert stored.getexif()[0x0112] == 6 and stored.width < stored.height
    by_hand = np.asarray(stored.convert("RGB").transpose(Image.Transpose.ROTATE_270))  # pixels only, no EXIF
    assert classifier.predict(path) == classifier.predict(by_hand)
    assert classifier.predict(path).top[0][0] == classifier.predict(CHELSEA).top[0][0]


def test_bomb_is_refused_fast_without_allocating_the_image() -> None:
    data = bomb_png()
    tracemalloc.start()
    started = time.perf_counter()
    with pytest.raises(PreprocessError, match="too large"):
        load_image(data)
    elapsed = time.perf_counter() - started
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    assert elapsed < 2 and peak < 50e6  # the full image would be 400 MB


def test_corpus_through_the_live_server(files, client: Client) -> None:
    for name, (path, expected) in files.items():
        if expected == "ok":
            assert len(client.predict(handle_file(path), api_name="/predict")["confidences"]) == 5, name
        else:
            with pytest.raises(AppError, match=expected) as error:
                client.predict(handle_file(path), api_name="/predict")
            assert "Traceback" not in str(error.value) and "/tmp" not in str(error.value), name
        assert client.predict(handle_file(CHELSEA), api_name="/predict")["label"]  # still serving


@pytest.mark.parametrize(("api_name", "args", "expected"), ABSURD_PARAMETERS)
def test_absurd_parameters_through_the_live_server(client: Client, api_name: str, args: tuple, expected: str) -> None:
    if expected == "ok":
        assert client.predict(handle_file(CHELSEA), *args, api_name=api_name)
    else:
        with pytest.raises(AppError, match=expected):
            client.predict(handle_file(CHELSEA), *args, api_name=api_name)


@pytest.mark.parametrize(
    "target",
    [
        "/etc/passwd",
        str(REPO / "mlflow.db"),
        str(REPO / ".git" / "config"),
        str(REPO / "app.py"),
        "../../../../etc/passwd",
        str(REPO / "model" / "card.json"),
    ],
)
def test_file_routes_refuse_files_outside_the_app(server: str, target: str) -> None:
    for route in ("gradio_api/file=", "file="):
        response = httpx.get(server + route + target, timeout=10)
        assert response.status_code in (403, 404), (route, target, response.status_code)
        assert "root:" not in response.text and "[core]" not in response.text


def test_uploads_over_the_size_limit_are_refused(server: str) -> None:
    big = b"\0" * (21 * 1024 * 1024)
    response = httpx.post(server + "gradio_api/upload", files={"files": ("big.jpg", big)}, timeout=60)
    assert response.status_code == 413
    assert (
        httpx.post(server + "gradio_api/upload", files={"files": ("ok.jpg", CHELSEA.read_bytes())}).status_code == 200
    )
