"""The model card type: the one way card.json is read and written; a bad card names its bad field."""

from __future__ import annotations

import json
import shutil

import httpx
import pytest

from bench.common import rest_call, running_app
from inference import CardError, ModelCard, PetClassifier, softmax
from preprocess import model_batch
from tests.conftest import CHELSEA, MODEL_DIR

SHIPPED = json.loads((MODEL_DIR / "card.json").read_text())


def without(data: dict, dotted: str) -> dict:
    data = json.loads(json.dumps(data))
    *parents, last = dotted.split(".")
    node = data
    for key in parents:
        node = node[key]
    del node[last]
    return data


def test_the_shipped_card_round_trips() -> None:
    card = ModelCard.from_dict(SHIPPED)
    assert json.loads(json.dumps(card.to_dict())) == SHIPPED
    assert card.preprocess.crop == SHIPPED["preprocess"]["crop"] and card.model.sha256 == SHIPPED["model"]["sha256"]


@pytest.mark.parametrize("field", ["model.sha256", "preprocess", "species", "model", "schema"])
def test_a_missing_field_is_named(field: str) -> None:
    with pytest.raises(CardError, match=f"card.json has no '{field}'"):
        ModelCard.from_dict(without(SHIPPED, field))


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        ("opset", "18", "'model.opset' must be int"),
        ("end_to_end", 1, "'model.end_to_end' must be bool"),
        ("parity", [], "'model.parity' must be dict"),
    ],
)
def test_a_field_of_the_wrong_type_is_named(field: str, value, message: str) -> None:
    data = json.loads(json.dumps(SHIPPED))
    data["model"][field] = value
    with pytest.raises(CardError, match=message):
        ModelCard.from_dict(data)


def test_bad_input_spec_and_other_schema_are_refused() -> None:
    with pytest.raises(CardError, match="bad 'preprocess'"):
        ModelCard.from_dict(SHIPPED | {"preprocess": SHIPPED["preprocess"] | {"crop": 10_000}})
    with pytest.raises(CardError, match="schema 1; this code reads schema 2"):
        ModelCard.from_dict(SHIPPED | {"schema": 1})


def test_save_is_atomic_and_loads_back(tmp_path) -> None:
    card = ModelCard.from_dict(SHIPPED)
    card.save(tmp_path / "card.json")
    assert ModelCard.load(tmp_path / "card.json") == card and not list(tmp_path.glob("*.tmp"))


def test_a_classifier_is_built_in_memory_from_a_card_and_a_model_file() -> None:
    card = ModelCard.from_dict(SHIPPED)
    labels = json.loads((MODEL_DIR / "labels.json").read_text())
    for variant in card.variants():
        built = PetClassifier(card, MODEL_DIR / card.variant_file(variant)[0], labels, variant=variant)
        assert built.predict(CHELSEA) == PetClassifier.load(MODEL_DIR, variant=variant).predict(CHELSEA)


def test_a_folder_that_export_alone_made_serves_uncalibrated(tmp_path) -> None:
    folder = tmp_path / "model"
    shutil.copytree(MODEL_DIR, folder)
    exported = {k: v for k, v in SHIPPED.items() if k not in ("calibration", "not_sure", "int8")}
    exported["metrics"] = {k: v for k, v in SHIPPED["metrics"].items() if k in ("cv", "val")}
    (folder / "card.json").write_text(json.dumps(exported))
    classifier = PetClassifier.load(folder)
    assert classifier.temperature == 1.0 and classifier.threshold == 0.0 and classifier.variant == "fp32"
    assert not classifier.predict(CHELSEA).not_sure
    with running_app({"PETS_MODEL_DIR": str(folder)}) as (url, _), httpx.Client(timeout=30) as http:
        answer = rest_call(http, url, "predict_details", CHELSEA)[0]
    assert answer["not_sure"] is False and answer["threshold"] == 0.0


def with_int8_temperature(temperature: float | None) -> dict:
    """The shipped card with an int8 entry naming model.onnx (so the test needs no quantized file), with
    its own temperature or, as cards written before int8 had one, without."""
    data = json.loads(json.dumps(SHIPPED))
    data.pop("expert", None), data.pop("no_pet", None)  # the breed model alone: its files only are copied
    data["int8"] = {"file": "model.onnx", "sha256": SHIPPED["model"]["sha256"], "accepted": True}
    if temperature is not None:
        data["int8"]["calibration"] = {"temperature": temperature, "fitted_on": SHIPPED["calibration"]["fitted_on"]}
    return data


def test_each_variant_serves_at_its_own_temperature(tmp_path) -> None:
    """The same logits (both entries name model.onnx): fp32 applies the card's temperature, int8 its own."""
    for name in ("model.onnx", "labels.json"):
        shutil.copy(MODEL_DIR / name, tmp_path / name)
    fp32_temperature = SHIPPED["calibration"]["temperature"]
    card = with_int8_temperature(3 * fp32_temperature)
    (tmp_path / "card.json").write_text(json.dumps(card))
    assert ModelCard.load(tmp_path / "card.json").int8 == card["int8"]
    fp32, int8 = (PetClassifier.load(tmp_path, variant=variant) for variant in ("fp32", "int8"))
    assert fp32.temperature == fp32_temperature and int8.temperature == 3 * fp32_temperature
    logits = fp32.logits(model_batch([CHELSEA], fp32.spec))
    for classifier in (fp32, int8):
        expected = softmax(logits, classifier.temperature)[0].max()
        assert classifier.predict(CHELSEA).top[0][1] == pytest.approx(float(expected), rel=1e-6)
        assert classifier.explain(CHELSEA)[0].top[0][1] == pytest.approx(float(expected), rel=1e-6)
    assert int8.predict(CHELSEA).top[0][1] < fp32.predict(CHELSEA).top[0][1]  # a higher temperature


def test_a_card_without_an_int8_temperature_gives_int8_fp32s() -> None:
    card = ModelCard.from_dict(with_int8_temperature(None))
    assert card.temperature_of("int8") == card.temperature_of("fp32") == SHIPPED["calibration"]["temperature"]
