"""The live Space: `python app.py` in a subprocess, every named endpoint called through gradio_client."""

from __future__ import annotations

import contextlib
import io
import re
import shutil
import subprocess
from pathlib import Path

import pytest
from gradio_client import Client, handle_file
from gradio_client.exceptions import AppError
from PIL import Image, ImageFilter

from inference import Prediction
from tests.conftest import CHELSEA, REPO

pytestmark = pytest.mark.slow

ENDPOINTS = {
    "/predict",
    "/predict_batch",
    "/resize",
    "/crop",
    "/grayscale",
    "/rotate",
    "/flip",
    "/blur",
    "/normalize",
    "/pipeline",
    "/classes",
    "/explain",
    "/predict_details",
    "/identify",
}


def opened(path: str) -> Image.Image:
    return Image.open(path)


def test_every_named_endpoint_is_exposed(client: Client) -> None:
    assert set(client.view_api(print_info=False, return_format="dict")["named_endpoints"]) == ENDPOINTS


def test_predict_returns_five_confidences(client: Client) -> None:
    result = client.predict(handle_file(CHELSEA), api_name="/predict")
    confidences = [c["confidence"] for c in result["confidences"]]
    assert len(confidences) == 5 and confidences == sorted(confidences, reverse=True)
    assert result["label"] == result["confidences"][0]["label"]


@pytest.mark.parametrize(("picture", "label"), [("blurred-cat", "Not sure"), ("white", "No cat or dog")])
def test_predict_says_not_sure_or_no_cat_or_dog_in_its_label_and_keeps_the_top5(
    client: Client, tmp_path: Path, picture: str, label: str
) -> None:
    """A cat blurred until the model is unsure of its breed (the ImageNet network still sees a cat), and a
    white page (it sees no pet at all): each flag in /predict_details, the label /predict gives it."""
    path = tmp_path / f"{picture}.png"
    if picture == "white":
        Image.new("RGB", (320, 240), (255, 255, 255)).save(path)
    else:
        Image.open(CHELSEA).filter(ImageFilter.GaussianBlur(6)).save(path)
    result = client.predict(handle_file(path), api_name="/predict")
    details = client.predict(handle_file(path), api_name="/predict_details")
    assert result["label"] == label
    assert details["not_sure"] is (label == "Not sure") or label == "No cat or dog"
    assert details["no_cat_or_dog"] is (label == "No cat or dog")
    assert [c["label"] for c in result["confidences"]] == [entry["breed"] for entry in details["top"]]


def test_predict_details_and_explain(client: Client) -> None:
    details = client.predict(handle_file(CHELSEA), api_name="/predict_details")
    assert set(details) - {"imagenet"} == {"top", "species", "not_sure", "threshold", "no_cat_or_dog"}
    assert len(details["top"]) == 5 and details["no_cat_or_dog"] is False
    assert details["species"] == "cat" and 0 < details["threshold"] < 1
    before = client.predict(handle_file(CHELSEA), api_name="/predict")
    assert opened(client.predict(handle_file(CHELSEA), api_name="/explain")).size == (451, 300)
    assert client.predict(handle_file(CHELSEA), api_name="/predict") == before
    assert before["label"] == details["top"][0]["breed"]


def test_predict_batch_reports_each_file(client: Client, tmp_path: Path) -> None:
    text = tmp_path / "notes.jpg"
    text.write_text("not a photo")
    Image.new("RGB", (320, 240), (255, 255, 255)).save(tmp_path / "white.png")
    files = [handle_file(CHELSEA), handle_file(text), handle_file(tmp_path / "white.png")]
    table = client.predict(files, api_name="/predict_batch")
    assert table["headers"] == ["file", "top-1", "probability", "sure", "top-5"]
    good, bad, white = table["data"]
    assert good[0] == "chelsea.jpg" and good[1] and 0 < good[2] <= 1 and good[4].count("%") == 5
    assert bad[0] == "notes.jpg" and bad[4].startswith("error: This file is not an image")
    for row, photo in ((good, CHELSEA), (white, tmp_path / "white.png")):  # the flag /predict_details gives
        details = client.predict(handle_file(photo), api_name="/predict_details")
        sure = f"not sure (below {details['threshold']:.0%})" if details["not_sure"] else "sure"
        assert row[3] == ("no cat or dog" if details["no_cat_or_dog"] else sure)
    assert white[3] == "no cat or dog" or white[3].startswith("not sure")


@pytest.mark.parametrize(
    ("api_name", "args", "size"),
    [
        ("/resize", (100, None), (100, 67)),
        ("/crop", (50, 40, None, None), (50, 40)),
        ("/crop", (50, 40, 0, 0), (50, 40)),
        ("/grayscale", (), (451, 300)),
        ("/rotate", (90, True), (300, 451)),
        ("/flip", ("vertical",), (451, 300)),
        ("/blur", (3,), (451, 300)),
        ("/normalize", (2,), (451, 300)),
        ("/pipeline", ('[{"op": "resize", "height": 150}, {"op": "rotate", "angle": 90}]',), (150, 226)),
    ],
)
def test_transforms(client: Client, api_name: str, args: tuple, size: tuple[int, int]) -> None:
    assert opened(client.predict(handle_file(CHELSEA), *args, api_name=api_name)).size == size


def test_classes(client: Client) -> None:
    breeds = client.predict(api_name="/classes")
    assert len(breeds) == 37
    assert {"label": "great_pyrenees", "name": "Great Pyrenees", "species": "dog"} in breeds
    assert sum(b["species"] == "cat" for b in breeds) == 12


@pytest.mark.parametrize(
    ("api_name", "args", "message"),
    [
        ("/predict", (), "not an image"),
        ("/resize", (0, None), "width must be between 1 and 4096"),
        ("/blur", (1e6,), "radius must be between 0 and 50"),
        ("/crop", (50, 50, 1000, 0), "left must be between"),
        ("/pipeline", ('[{"op": "explode"}]',), "unknown operation 'explode'"),
    ],
)
def test_bad_input_gets_the_specific_error_and_the_app_keeps_serving(
    client: Client, tmp_path: Path, api_name: str, args: tuple, message: str
) -> None:
    source = CHELSEA
    if api_name == "/predict":
        source = tmp_path / "page.jpg"
        source.write_text("<html>not an image</html>")
    with pytest.raises(AppError, match=message) as error:
        client.predict(handle_file(source), *args, api_name=api_name)
    assert "Traceback" not in str(error.value) and str(REPO) not in str(error.value)
    assert client.predict(handle_file(CHELSEA), api_name="/predict")["label"]


def readme_client_example() -> str:
    readme = (REPO / "README.md").read_text()
    match = re.search(r"<!-- client-example -->\s*```python\n(.*?)```", readme, re.S)
    assert match, "README.md has no client example"
    return match.group(1)


def test_readme_client_example_runs(server: str, monkeypatch: pytest.MonkeyPatch) -> None:
    code = readme_client_example().replace("http://127.0.0.1:7860/", server)
    monkeypatch.chdir(REPO)
    output = io.StringIO()
    with contextlib.redirect_stdout(output):
        exec(compile(code, "README.md", "exec"), {})
    assert re.search(r"^[A-Z][\w ]+ \d\.\d+$", output.getvalue().strip(), re.M), output.getvalue()


def test_the_api_pages_curl_example_runs(server: str) -> None:
    """docs/api.md's plain-REST example, as a reader pastes it into a shell (against this test's server)."""
    if not shutil.which("curl"):
        pytest.skip("curl is not installed")
    page = (REPO / "docs" / "api.md").read_text()
    script = re.search(r"## Plain REST.*?```bash\n(.*?)```", page, re.S).group(1)
    done = subprocess.run(
        ["bash", "-c", script.replace("http://127.0.0.1:7860/", server)],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    assert "event: complete" in done.stdout and '"label": "Abyssinian"' in done.stdout, done.stdout


def test_plain_rest_with_upload_and_with_an_inline_image(server: str) -> None:
    """What curl does, both ways the README documents; both give gradio_client's answer."""
    import httpx

    from bench.common import rest_call

    with httpx.Client(timeout=30) as http:
        uploaded = rest_call(http, server, "predict", CHELSEA)
        inline = rest_call(http, server, "predict", CHELSEA, inline=True)
    assert uploaded == inline and len(uploaded[0]["confidences"]) == 5


def test_summary_line_says_species_or_not_sure() -> None:
    import app

    sure = Prediction([("Beagle", 0.9), ("Basset Hound", 0.05)], "dog", False, 0.7)
    unsure = Prediction([("Beagle", 0.5), ("Basset Hound", 0.3)], "dog", True, 0.7)
    assert app.summary_line(sure) == "Looks like a **dog**: most likely a Beagle (90%)."
    assert app.summary_line(unsure).startswith("**Not sure** (50%)")


def test_one_identify_click_decodes_once_and_runs_the_model_once() -> None:
    import app

    runs = app.classifier.runs
    label, summary, details, heatmap = app.identify(str(CHELSEA))
    assert app.classifier.runs == runs + 1
    assert [name for name, _ in label.top] == [entry["breed"] for entry in details["top"]] and summary
    assert heatmap.size == Image.open(CHELSEA).size
    assert label == app.predict(str(CHELSEA)) and details == app.predict_details(str(CHELSEA))


def test_identify_endpoint_feeds_every_output(client: Client) -> None:
    label, summary, details, heatmap = client.predict(handle_file(CHELSEA), api_name="/identify")
    assert label == client.predict(handle_file(CHELSEA), api_name="/predict")
    assert details == client.predict(handle_file(CHELSEA), api_name="/predict_details")
    assert summary.startswith(("Looks like a", "**Not sure**")) and opened(heatmap).size == (451, 300)


def test_the_model_tab_says_what_the_model_keeps_of_its_teacher() -> None:
    import dataclasses

    import app
    from inference import stanford_retention

    card = app.classifier.card
    teacher = {"kept": True, "distill_weight": 1.0, "distill_temperature": 2.0}  # a card from before 0242e1d
    per_breed = {"beagle": {"student": 0.97}, "chihuahua": {"student": 0.81}, "pug": {"student": 0.99}}
    retained = {"student": 0.912, "teacher": 0.934, "photos": 2682.0, "folder": "stanford-dogs-extra"}
    retained |= {"per_breed": per_breed}
    cv = card.metrics.get("cv", {}) | {"retention_student": 0.85, "retention_teacher": 0.8, "retention_photos": 240.0}
    card = dataclasses.replace(
        card,
        model=dataclasses.replace(card.model, teacher=teacher),
        metrics=card.metrics | {"cv": cv, "retention": retained},
    )
    text = app.card_markdown(card)
    assert "its dog rows distilled on dog photos (weight 1, T = 2)" in text and "kept beside" not in text
    assert "240 held-out Oxford dog photos (cross-validation): this model 85.0%, the teacher 80.0%" in text
    assert "2682 Stanford Dogs photos of 3 breeds (ImageNet's own): this model 91.2%, the teacher 93.4%" in text
    assert "weakest there: Chihuahua 81%, Beagle 97%, Pug 99%" in text
    assert stanford_retention(retained, "the teacher") in text  # the Space page's sentence
    untaught = dataclasses.replace(card, model=dataclasses.replace(card.model, teacher=None))
    text = app.card_markdown(untaught)
    assert "teacher" not in text.lower()
    assert "this model 91.2%, the ImageNet network it started from 93.4%" in text  # retention, measured for any model
    shipped = app.classifier.card.metrics  # its CV measured no retention
    unmeasured = dataclasses.replace(untaught, metrics={k: v for k, v in shipped.items() if k != "retention"})
    assert "ImageNet network it started from" not in app.card_markdown(unmeasured)
