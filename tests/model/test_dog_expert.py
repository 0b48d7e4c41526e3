"""The dog expert beside the shipped breed model (model/): routing, the combined answer, its ONNX file
against torch, and a folder without its file refused at start."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from onnx import numpy_helper
from torch import nn

from inference import ModelError, PetClassifier, combine, softmax
from preprocess import load_image, model_batch, model_input
from tests.conftest import CHELSEA, EXAMPLES, MODEL_DIR
from train.data.pets import Sample
from train.learning.backbones import get_backbone
from train.shipping.evaluate import photo_answers

DOGS = [path for path in EXAMPLES if path.stem[0].islower()]  # dataset convention: dog breeds in lower case
CATS = [path for path in EXAMPLES if path.stem[0].isupper()] + [CHELSEA]


@pytest.fixture(scope="module")
def classifier() -> PetClassifier:
    return PetClassifier.load(MODEL_DIR, variant="fp32")


def test_the_shipped_card_names_an_expert_for_the_25_dog_breeds(classifier: PetClassifier) -> None:
    expert = classifier.card.expert
    dog_breeds = [label for label, kind in zip(classifier.labels, classifier.species, strict=True) if kind == "dog"]
    assert expert is not None and expert.labels == dog_breeds and len(dog_breeds) == 25
    assert classifier.expert.columns.tolist() == [classifier.labels.index(label) for label in dog_breeds]
    assert 0 < expert.route_threshold < 1 and expert.calibration["fitted_on"] == "out-of-fold"


def test_the_expert_runs_exactly_where_the_card_asks(classifier: PetClassifier) -> None:
    """Each photo runs the breed model once and the expert's network once where `asks` says (routed to dogs,
    and for "no cat or dog" the photos the card's entry names), never more, whatever the endpoint."""
    for path in CATS + DOGS:
        x = model_batch([path], classifier.spec)
        breeds = softmax(classifier.session.run(["logits"], {"image": x})[0], classifier.temperature)
        asked = int(classifier.asks(breeds, classifier.routes(breeds))[0])
        before, breed_runs = classifier.expert.runs, classifier.runs
        classifier.predict(path)
        classifier.explain(path)
        assert (classifier.expert.runs - before, classifier.runs - breed_runs) == (2 * asked, 2), path.name


def test_without_no_pet_a_cat_photo_never_runs_the_expert(tmp_path: Path) -> None:
    """The breed model and the expert alone: a photo routed to cats costs the breed model only."""
    folder = tmp_path / "model"
    shutil.copytree(MODEL_DIR, folder)
    card = json.loads((folder / "card.json").read_text())
    del card["no_pet"]
    (folder / "card.json").write_text(json.dumps(card))
    pair = PetClassifier.load(folder, variant="fp32")
    for path in CATS:
        assert pair.predict(path).species == "cat", path.name
        pair.explain(path)
    pair.predict_batch(CATS)
    assert pair.expert.runs == 0 and pair.runs == 2 * len(CATS) + 1


def test_a_dog_photo_runs_each_model_once(classifier: PetClassifier) -> None:
    for path in DOGS:
        before, breed_runs = classifier.expert.runs, classifier.runs
        prediction = classifier.predict(path)
        assert (classifier.expert.runs, classifier.runs) == (before + 1, breed_runs + 1), path.name
        assert prediction.species == "dog" and prediction.threshold == classifier.expert.threshold


def test_the_answer_is_p_species_times_p_breed_given_species(classifier: PetClassifier) -> None:
    """Computed here from the two sessions' raw logits, the card's temperatures and its routing threshold."""
    x = model_batch(DOGS + CATS, classifier.spec)
    breeds = softmax(classifier.session.run(["logits"], {"image": x})[0], classifier.temperature)
    experts = softmax(classifier.expert.session.run(["logits"], {"image": x})[0], classifier.expert.temperature)
    dogs = classifier.expert.columns
    p_dog = breeds[:, dogs].sum(1)
    routed = p_dog > classifier.card.expert.route_threshold
    expected = breeds.copy()
    for row in np.flatnonzero(routed):
        expected[row, dogs] = p_dog[row] * experts[row]
    served = classifier.probabilities(DOGS + CATS)
    assert routed.tolist() == [True] * len(DOGS) + [False] * len(CATS)
    np.testing.assert_allclose(served, expected, rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(served.sum(1), 1.0, rtol=1e-5)
    np.testing.assert_allclose(combine(breeds, experts, dogs).sum(1), 1.0, rtol=1e-5)


def test_not_sure_reads_the_probability_shown_unless_the_expert_named_the_breed(classifier: PetClassifier) -> None:
    """Two photos routed to the expert: one a cat breed still wins after combining (at 40 %, what the page
    shows: held to the breed model's threshold), one the expert named (its p(breed | dog), as its threshold
    was fitted)."""
    columns = classifier.expert.columns
    cat = next(i for i in range(len(classifier.labels)) if i not in columns)
    shown = np.zeros((2, len(classifier.labels)))
    shown[0, cat], shown[0, columns[:3]] = 0.40, 0.20
    shown[1, columns[0]], shown[1, cat] = 0.90, 0.10
    experts = np.full((2, len(columns)), 0.05 / (len(columns) - 1))
    experts[0, 0], experts[1, 0] = 0.95, 0.95
    confidence, threshold = classifier.held_to(shown, np.array([True, True]), experts)
    assert confidence.tolist() == pytest.approx([0.40, 0.95])
    assert threshold.tolist() == [classifier.threshold, classifier.expert.threshold]


def test_the_heatmap_of_a_dog_comes_from_the_expert(classifier: PetClassifier) -> None:
    photo = load_image(DOGS[0])
    x = model_input(photo, classifier.spec)
    prediction, heat = classifier.explain(photo)
    assert prediction == classifier.predict(photo)
    expert_maps = classifier.expert.session.run(["cam"], {"image": x})[0][0]
    top = classifier.names.index(prediction.top[0][0])
    own = expert_maps[classifier.expert.columns.tolist().index(top)]
    assert heat.max() == pytest.approx(1.0) and own.shape == expert_maps.shape[1:]
    centre = np.unravel_index(np.maximum(own - own.mean(), 0).argmax(), own.shape)
    rows, cols = heat.shape
    hot = np.unravel_index(heat.argmax(), heat.shape)
    # the hottest place of the heatmap lies in the expert's hottest cell (the map is placed over the crop)
    assert abs(hot[0] / rows - (centre[0] + 0.5) / own.shape[0]) < 0.25
    assert abs(hot[1] / cols - (centre[1] + 0.5) / own.shape[1]) < 0.25


def test_training_time_evaluation_and_serving_give_the_same_answer(classifier: PetClassifier) -> None:
    samples = [Sample(path.stem, path, 0) for path in DOGS + CATS]
    answer = photo_answers(classifier, samples)
    for path, row, by_expert in zip(DOGS + CATS, answer.probabilities, answer.routed, strict=True):
        prediction = classifier.predict(path)
        order = np.argsort(-row, kind="stable")[:5]  # a batch of 16 against one photo: float rounding only
        assert [name for name, _ in prediction.top] == [classifier.names[i] for i in order]
        assert [p for _, p in prediction.top] == pytest.approx([float(row[i]) for i in order], rel=1e-5, abs=1e-7)
        assert by_expert == (prediction.species == "dog")


@torch.no_grad()
def test_the_expert_onnx_is_the_untouched_imagenet_network_with_its_head(classifier: PetClassifier) -> None:
    """torch's untouched pretrained Lite2 on the serving tensor, then the head read out of the ONNX file,
    gives the file's logits: the expert's backbone is ImageNet's, not a fine-tuned one."""
    expert = classifier.card.expert
    graph = onnx.load(MODEL_DIR / expert.file).graph
    tensors = {t.name: numpy_helper.to_array(t) for t in graph.initializer}
    weight = next(v for v in tensors.values() if v.shape in ((25, 1280), (1280, 25)))
    weight = weight if weight.shape == (25, 1280) else weight.T
    bias = next(v for v in tensors.values() if v.shape == (25,))
    layers, _ = get_backbone(expert.backbone).build(classifier.spec.crop)
    x = model_batch(DOGS[:2] + CATS[:1], classifier.spec)
    pooled = nn.Sequential(*layers).eval()(torch.from_numpy(x)).mean((2, 3)).numpy()
    logits = classifier.expert.session.run(["logits"], {"image": x})[0]
    np.testing.assert_allclose(logits, pooled @ weight.T + bias, atol=2e-3)


def test_a_folder_without_the_expert_file_is_refused_at_start(tmp_path: Path) -> None:
    folder = tmp_path / "model"
    shutil.copytree(MODEL_DIR, folder, ignore=shutil.ignore_patterns("expert*"))
    with pytest.raises(ModelError, match=r"expert\.onnx is missing"):
        PetClassifier.load(folder, variant="fp32")
    shutil.copy(MODEL_DIR / "model.onnx", folder / "expert.onnx")  # a file, but not the expert's
    with pytest.raises(ModelError, match="does not match the sha256 of the dog expert"):
        PetClassifier.load(folder, variant="fp32")


def test_a_breed_model_alone_still_serves(tmp_path: Path) -> None:
    """A card without an expert entry (one `select` wrote before the expert shipped) answers alone."""
    folder = tmp_path / "model"
    shutil.copytree(MODEL_DIR, folder, ignore=shutil.ignore_patterns("expert*"))
    card = json.loads((folder / "card.json").read_text())
    del card["expert"], card["no_pet"]  # "no cat or dog" asks the expert's network: it goes with it
    (folder / "card.json").write_text(json.dumps(card))
    alone = PetClassifier.load(folder, variant="fp32")
    assert alone.expert is None and not alone.routes(np.ones((2, 37)) / 37).any()
    x = model_batch(DOGS[:1], alone.spec)
    expected = softmax(alone.session.run(["logits"], {"image": x})[0], alone.temperature)
    np.testing.assert_allclose(alone.probabilities(DOGS[:1]), expected, rtol=1e-6)
