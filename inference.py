"""The breed classifier the Space embeds: ONNX Runtime, the shipped `model/` folder, no torch.

python inference.py photo.jpg [more.jpg ...] [--json]
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import hashlib
import json
import logging
import math
import os
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import MISSING, asdict, dataclass, fields, is_dataclass
from pathlib import Path
from typing import Any, NamedTuple, get_args, get_type_hints

import numpy as np

os.environ.setdefault("ORT_DISABLE_TELEMETRY", "1")  # privacy: no device id under ~/.cache/Microsoft
import onnxruntime as ort
from PIL import Image

from preprocess import (
    ImageSource,
    InputSpec,
    PreprocessError,
    display_size,
    load_for_model,
    model_batch,
    model_input,
    source_box,
)

DEFAULT_MODEL_DIR = Path(__file__).parent / "model"
log = logging.getLogger("inference")


class ModelError(RuntimeError):
    """The model folder is missing, incomplete or inconsistent."""


class CardError(ModelError):
    """card.json lacks a field or holds a bad value; the message names the field."""


CARD_SCHEMA = 2  # the layout of card.json; a reader refuses any other


@dataclass(frozen=True)
class ModelInfo:
    backbone: str
    head: str
    finetune_blocks: int  # 0: the partial fine-tune it counted retired after commit 6346004 (schema 2 keeps it)
    end_to_end: bool
    sha256: str  # of model.onnx (fp32)
    bytes: int
    input_name: str
    output_name: str  # the logits
    cam_output: str  # per-class activation maps, for heatmaps
    cam_method: str
    opset: int
    parity: dict  # ONNX Runtime against torch at export: images, max |Δlogit|
    teacher: dict | None = None  # the ImageNet teacher's distillation: weight and temperature


@dataclass(frozen=True)
class ExpertInfo:
    """card.json's `expert`: the dog expert, the untouched ImageNet network with a head over its features for
    the dog breeds, which answers every photo the breed model routes to dogs (`train.shipping.expert` writes it).
    Its input is the breed model's own tensor (the card's `preprocess`), so one decode feeds both."""

    file: str  # expert.onnx: the backbone and the head, logits and CAM outputs named as the breed model's
    sha256: str
    bytes: int
    backbone: str
    labels: list  # its classes, dataset stems in its output order: the card's breeds of `species`
    species: str  # "dog"
    route_threshold: float  # the breed model's calibrated probability of `species` above which it answers
    imagenet_output: str  # the untouched network's own 1000-way ImageNet logits: its view of what is there
    parity: dict  # ONNX Runtime against torch at export
    mlflow: dict  # run_id, registered_model, version
    metrics: dict  # "cv" (its own folds), "retention" (Stanford photos, against ImageNet's classifier)
    recipe: dict  # distillation weight and temperature, class balance, views
    calibration: dict | None = None  # fp32's temperature, fitted on its out-of-fold logits
    not_sure: dict | None = None  # fp32's threshold for the photos it answers
    int8: dict | None = None  # as the card's own `int8`: file, sha256, accepted, calibration, not_sure


FEW_TEST_PHOTOS = 10  # a breed's test accuracy on fewer photos is too few to judge (Model tab, Space page)


@dataclass(frozen=True)
class ModelCard:
    """card.json: the one typed, versioned record that ties training to serving. `train.shipping.select` writes it
    (once); everything else reads it through this type. Calibration, the "not sure" threshold and the int8
    entry are absent from a folder that `python -m train export` alone made. Each variant has its own
    temperature: fp32's in `calibration`, int8's in `int8["calibration"]` (a card written before int8 had
    one gives int8 fp32's, `temperature_of`)."""

    schema: int
    model: ModelInfo
    preprocess: InputSpec
    species: list  # "cat" or "dog" per class, in labels.json order
    mlflow: dict  # run_id, registered_model, version, alias
    data: dict  # digest, split sizes, missing files
    metrics: dict  # "cv" or "val" (what selection saw), and "test" (fp32's, the reference) once tested
    created: str
    git_commit: str
    calibration: dict | None = None  # fp32's temperature and its fit
    not_sure: dict | None = None  # threshold, what it was fitted on, non-pet check
    int8: dict | None = None  # file, sha256 when shipped, accepted, gate statistics, its own calibration
    expert: ExpertInfo | None = None  # the dog expert beside the breed model, where one ships
    no_pet: dict | None = None  # "no cat or dog": threshold on ImageNet's pet mass, where asked, its measurements

    @property
    def temperature(self) -> float:
        """fp32's (the reference's) temperature; 1 where the card is not calibrated."""
        return float(self.calibration["temperature"]) if self.calibration else 1.0

    def temperature_of(self, variant: str) -> float:
        """The temperature fitted to `variant`'s logits: int8's own where `select` fitted one (quantization
        moves the logits, so fp32's may not fit them), else fp32's."""
        if variant == "int8" and self.int8 and "calibration" in self.int8:
            return float(self.int8["calibration"]["temperature"])
        return self.temperature

    @property
    def threshold(self) -> float:
        return float(self.not_sure["threshold"]) if self.not_sure else 0.0

    def threshold_of(self, variant: str) -> float:
        """The "not sure" threshold fitted to `variant`'s own probabilities where one was, else fp32's."""
        if variant == "int8" and self.int8 and "not_sure" in self.int8:
            return float(self.int8["not_sure"]["threshold"])
        return self.threshold

    def test_photos(self, labels: Sequence[str]) -> dict[str, int]:
        """Test photos per class, from the test confusion counts, whose rows follow `labels` (labels.json):
        how many photos each per-breed figure rests on. Empty for a card without those counts."""
        confusion = self.metrics.get("test", {}).get("confusion", [])
        return {label: sum(row) for label, row in zip(labels, confusion, strict=False)}

    def test_photos_per_species(self, labels: Sequence[str]) -> dict[str, int]:
        photos, kinds = self.test_photos(labels), dict(zip(labels, self.species, strict=True))
        return {
            kind: sum(n for label, n in photos.items() if kinds[label] == kind) for kind in sorted(set(self.species))
        }

    def variants(self) -> list[str]:
        """The model files that ship: fp32, and int8 where its fidelity gate accepted it."""
        return ["fp32"] + (["int8"] if self.int8 and self.int8.get("accepted") and "sha256" in self.int8 else [])

    def variant_file(self, variant: str) -> tuple[str, str]:
        """(file name, sha256) of "fp32" (model.onnx) or a shipped "int8" model."""
        if variant == "fp32":
            return "model.onnx", self.model.sha256
        if variant == "int8" and self.int8 and "sha256" in self.int8:
            return self.int8["file"], self.int8["sha256"]
        raise ModelError(f"No model variant {variant!r} in card.json: use fp32 or an exported int8 model.")

    def expert_variant(self, variant: str) -> tuple[str, str, float, float]:
        """The expert's (file name, sha256, temperature, threshold) for `variant`: int8's own file and fits
        where its gate accepted one, else fp32's (a pair serves one variant, `PetClassifier.load`)."""
        entry = self.expert
        if entry is None:
            raise ModelError("card.json has no dog expert.")
        fitted = {"temperature": 1.0} | (entry.calibration or {})
        threshold = entry.not_sure["threshold"] if entry.not_sure else 0.0
        int8 = entry.int8 or {}
        if variant == "int8" and int8.get("accepted") and "sha256" in int8:
            fitted |= int8.get("calibration", {})
            threshold = int8.get("not_sure", {}).get("threshold", threshold)
            return int8["file"], int8["sha256"], float(fitted["temperature"]), float(threshold)
        return entry.file, entry.sha256, float(fitted["temperature"]), float(threshold)

    def no_pet_threshold(self, variant: str) -> float:
        """The "no cat or dog" threshold fitted on `variant`'s own answers where one was, else fp32's."""
        if variant == "int8" and "int8" in self.no_pet:
            return float(self.no_pet["int8"]["threshold"])
        return float(self.no_pet["threshold"])

    @classmethod
    def from_dict(cls, data: Any) -> ModelCard:
        card = _typed(cls, data, "")
        if card.schema != CARD_SCHEMA:
            raise CardError(f"card.json has schema {card.schema}; this code reads schema {CARD_SCHEMA}.")
        if card.no_pet is not None and card.expert is None:
            raise CardError("card.json has a 'no_pet' entry but no 'expert': its ImageNet network is the expert's.")
        return card

    @classmethod
    def load(cls, path: Path) -> ModelCard:
        try:
            return cls.from_dict(json.loads(Path(path).read_text()))
        except json.JSONDecodeError as error:
            raise CardError(f"{path} is not valid JSON: {error}") from None

    def to_dict(self) -> dict:
        data = asdict(self)
        if data["model"]["teacher"] is None:  # a model without a teacher: the card as before the field existed
            del data["model"]["teacher"]
        for entry in ("expert", "no_pet"):  # absent where nothing ships them: the card as before they existed
            if data[entry] is None:
                del data[entry]
        return data

    def save(self, path: Path) -> None:
        """Atomically: a reader sees the old card or the new one, never half of it."""
        temporary = Path(path).with_suffix(".tmp")
        temporary.write_text(json.dumps(self.to_dict(), indent=2) + "\n")
        os.replace(temporary, path)


def _typed(cls: type, data: Any, where: str) -> Any:
    """Build dataclass `cls` from JSON, checking every field's presence and type."""
    if not isinstance(data, dict):
        raise CardError(f"card.json: '{where or 'the card'}' must be an object, got {type(data).__name__}.")
    hints, values = get_type_hints(cls), {}
    for field in fields(cls):
        name = f"{where}.{field.name}" if where else field.name
        if field.name not in data:
            if field.default is MISSING:
                raise CardError(f"card.json has no '{name}': re-export the model (python -m train select).")
            continue
        values[field.name] = _value(hints[field.name], data[field.name], name)
    return cls(**values)


def _value(hint: Any, value: Any, name: str) -> Any:
    if hint is InputSpec:
        try:
            return InputSpec.from_dict(value)
        except (KeyError, TypeError, ValueError) as error:
            raise CardError(f"card.json: bad '{name}': {error}") from None
    options = get_args(hint) or (hint,)  # X | None -> (X, NoneType)
    if value is None and type(None) in options:
        return None
    kind = next(option for option in options if option is not type(None))
    if is_dataclass(kind):
        return _typed(kind, value, name)
    ok = isinstance(value, (int, float)) and not isinstance(value, bool) if kind is float else type(value) is kind
    if not ok:
        raise CardError(f"card.json: '{name}' must be {kind.__name__}, got {value!r:.40}.")
    return value


def how_answered(card: ModelCard) -> str:
    """One sentence on how a photo is answered, as the Model tab and the Space page both say it."""
    if card.expert is None:
        return "One network answers every photo: it names the breed, and with it the species."
    return (
        "Each photo goes to the breed model first, which says whether it shows a cat or a dog and names the cat "
        f"breeds; a photo it gives more than {card.expert.route_threshold:.0%} to dogs goes on to the dog expert, "
        "the untouched ImageNet network with a head for the 25 dog breeds, which names the dog's breed."
    )


def no_pet_sentence(card: ModelCard) -> str:
    """One sentence on the "no cat or dog" answer and how well it works, as the Model tab and the Space page
    both say it; empty where the card has none."""
    entry = card.no_pet
    if entry is None:
        return ""
    cv, test = entry["cv"], entry["test"]
    return (
        f"A photo with no cat or dog is answered **No cat or dog**: {cv['catch']:.0%} of {cv['photos']} such "
        f"photos (other animals {cv['catch_animals']:.0%}, cross-validated), while {test['false_alarms']:.1%} "
        f"of the {test['photos']} test pet photos are wrongly told so."
    )


def retention_sentence(where: str, model: float, network: str, teacher: float, after: str = "") -> str:
    """How much of what the ImageNet network knew of its dog breeds the model still knows, on the photos
    `where` names: top-1 among those breeds, the model's against `network`'s."""
    figures = f"this model {model:.1%}, {network} {teacher:.1%}"
    return f"Top-1 among the dog breeds ImageNet knows, on {where}: {figures}{after}."


def stanford_retention(retained: dict, network: str) -> str:
    """The card's retention on the Stanford Dogs photos (ImageNet's own) and its three weakest breeds there,
    as the Model tab and the Space page both say it."""
    weakest = sorted(retained["per_breed"].items(), key=lambda item: item[1]["student"])[:3]
    names = ", ".join(f"{readable_name(name)} {found['student']:.0%}" for name, found in weakest)
    where = f"{retained['photos']:.0f} Stanford Dogs photos of {len(retained['per_breed'])} breeds (ImageNet's own)"
    return retention_sentence(where, retained["student"], network, retained["teacher"], f"; weakest there: {names}")


def readable_name(label: str) -> str:
    """Dataset stem to display name: "great_pyrenees" -> "Great Pyrenees", "Maine_Coon" -> "Maine Coon"."""
    return " ".join(word[:1].upper() + word[1:] for word in label.split("_"))


def softmax(logits: np.ndarray, temperature: float = 1.0) -> np.ndarray:
    """Row-wise softmax of logits / temperature (temperature scaling, fitted at selection)."""
    scaled = logits / temperature
    shifted = np.exp(scaled - scaled.max(axis=1, keepdims=True))
    return shifted / shifted.sum(axis=1, keepdims=True)


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def not_sure(top_probability: np.ndarray | float, threshold: float) -> np.ndarray | bool:
    """The one "not sure" rule: a calibrated top-1 probability below the card's threshold, where the photo
    may not show one of the 37 breeds, or not clearly."""
    return np.asarray(top_probability) < threshold


@dataclass(frozen=True)
class Prediction:
    top: list[tuple[str, float]]  # (readable breed, probability), most likely first
    species: str  # of the most likely breed
    not_sure: bool  # see `not_sure`
    threshold: float  # the card's "not sure" threshold behind the flag
    no_pet: bool = False  # "no cat or dog": the ImageNet network sees neither (card's `no_pet`)
    seen: tuple[str, float] | None = None  # the ImageNet network's top-1 class and probability, where asked

    def as_details(self) -> dict:
        """The JSON of /predict_details: `no_cat_or_dog` and, where the ImageNet network was asked, what it
        saw (the reason for a "no cat or dog" answer)."""
        details = {
            "top": [{"breed": name, "probability": p} for name, p in self.top],
            "species": self.species,
            "not_sure": self.not_sure,
            "threshold": self.threshold,
            "no_cat_or_dog": self.no_pet,
        }
        if self.seen:
            details["imagenet"] = {"class": self.seen[0], "probability": self.seen[1]}
        return details


def usable_cores(cpu_max: Path = Path("/sys/fs/cgroup/cpu.max")) -> int:
    """The cores this process may use: those it may run on, capped by its container's CPU quota (cgroup v2
    `cpu.max`) where one is set. A container can see all of its host's cores and be allowed two, and ONNX
    Runtime's own default counts what it sees."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    with contextlib.suppress(OSError, ValueError):
        quota, period = cpu_max.read_text().split()
        if quota != "max":
            cores = min(cores, max(1, math.ceil(int(quota) / int(period))))
    return cores


def serving_threads() -> int:
    """Intra-op threads for each model run: PETS_THREADS, else the usable cores. Each of the queue's two
    concurrent runs gets them all: on the 2-core AVX2 EPYC that answers one visitor's REST /predict in
    64 ms instead of 96 ms at one thread each, for 4 % less throughput under 8 clients (benchmarks.md)."""
    if os.environ.get("PETS_THREADS"):
        return int(os.environ["PETS_THREADS"])
    return usable_cores()


class Answer(NamedTuple):
    """What the served model says of a batch of photos."""

    probabilities: np.ndarray  # over the 37 breeds, calibrated: the breed model's, the expert's for its rows
    routed: np.ndarray  # per photo: whether the dog expert answered it
    logits: np.ndarray  # the breed model's raw logits (what its temperature is fitted on)
    confidence: np.ndarray  # what "not sure" reads: the top-1's probability, or the expert's p(breed | dog)
    threshold: np.ndarray  # what it is held to: the expert's where it named the top-1 breed, else the breed model's
    no_pet: np.ndarray  # per photo: "no cat or dog" (never where the card has no `no_pet` entry)
    seen: np.ndarray  # per photo: ImageNet's top-1 class index, -1 where its network was not asked
    seen_probability: np.ndarray  # its probability
    heat: np.ndarray | None = None  # per photo, with `maps`: the top-1 breed's map, from the model that named it


class DogExpert:
    """The dog expert's ONNX Runtime session (card.json's `expert`): logits over its breeds for the photos the
    breed model routes to it, and the columns of labels.json they belong to; its untouched network's own
    ImageNet logits, for the "no cat or dog" answer."""

    def __init__(self, card: ModelCard, model_dir: Path, labels: list[str], options: ort.SessionOptions, variant: str):
        entry = card.expert
        name, sha256, self.temperature, self.threshold = card.expert_variant(variant)
        path = Path(model_dir) / name
        if not path.is_file():
            raise ModelError(
                f"{path} is missing: card.json names a dog expert. Restore model/ from git, or ship one with "
                "python -m train expert."
            )
        if sha256_file(path) != sha256:
            raise ModelError(f"{name} does not match the sha256 of the dog expert in card.json.")
        unknown = [label for label in entry.labels if label not in labels]
        if unknown:
            raise ModelError(f"The dog expert's breeds {unknown[:3]} are not in labels.json.")
        self.columns = np.array([labels.index(label) for label in entry.labels])
        self.route_threshold, self.imagenet_output = entry.route_threshold, entry.imagenet_output
        self.session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        self.input_name, self.output_name, self.cam_output = (
            card.model.input_name,
            card.model.output_name,
            card.model.cam_output,
        )
        self.runs = 0
        if self.session.get_outputs()[0].shape[-1] != len(entry.labels):
            raise ModelError(f"{name} does not have one output per breed of its card entry ({len(entry.labels)}).")

    def run(self, outputs: list[str], batch: np.ndarray) -> list[np.ndarray]:
        self.runs += 1  # tests check that a photo routed to cats never runs the expert
        return self.session.run(outputs, {self.input_name: batch})


IMAGENET_NAMES = "imagenet_classes.json"  # ImageNet's 1000 class names, beside a card with a `no_pet` entry


def imagenet_names(card: ModelCard, model_dir: Path) -> list[str]:
    """The names of the ImageNet classes, for saying what the network saw; empty where the card has no
    "no cat or dog" entry. A card that has one and a folder without the names is refused at start."""
    if card.no_pet is None:
        return []
    path = Path(model_dir) / IMAGENET_NAMES
    if not path.is_file():
        raise ModelError(f"{path} is missing: card.json has a 'no cat or dog' entry. Restore model/ from git.")
    names = json.loads(path.read_text())
    if len(names) != 1000:
        raise ModelError(f"{path} lists {len(names)} ImageNet classes, not 1000.")
    return names


def pet_mass(imagenet: np.ndarray, pets: list) -> np.ndarray:
    """ImageNet's probability that a photo shows a dog or a domestic cat: the mass of its probabilities
    `imagenet` on the class ranges `pets` ([first, last] each, inclusive: the card's `no_pet["imagenet_pets"]`)."""
    return sum(imagenet[:, first : last + 1].sum(1) for first, last in pets)


def asked_rows(breeds: np.ndarray, routed: np.ndarray, threshold: float) -> np.ndarray:
    """Where serving asks the ImageNet network whether there is a pet at all: a photo routed to the dog
    expert, or one whose calibrated breed-model top-1 is below the breed model's "not sure" threshold."""
    return routed | (breeds.max(1) < threshold)


def combine(breeds: np.ndarray, experts: np.ndarray, columns: np.ndarray) -> np.ndarray:
    """p(species) × p(breed | species): each row's mass on the `columns` breeds (the breed model's, calibrated)
    shared out as the expert's calibrated probabilities over them; the other breeds keep theirs. Each row
    still sums to 1."""
    combined = breeds.copy()
    combined[:, columns] = breeds[:, columns].sum(1, keepdims=True) * experts
    return combined


class PetClassifier:
    """The breed model's ONNX Runtime session with its card and labels, and the dog expert beside it where the
    card names one; predicts breeds for images. Each photo runs the breed model once; the expert runs once
    more for a photo the breed model says is a dog (`routes`), and answers its breed, and, where the card
    has a "no cat or dog" entry, for the photos it says to ask about (`asks`: every photo, or those the
    breed model is not sure of), to see whether there is a pet at all."""

    def __init__(
        self, card: ModelCard, model_file: Path, labels: list[str], threads: int | None = None, variant: str = "fp32"
    ) -> None:
        """Built in memory from a card and a model file (which must be the card's `variant`); the expert's file,
        of the same variant, from the same folder."""
        name, sha256 = card.variant_file(variant)
        if sha256_file(model_file) != sha256:
            raise ModelError(f"{Path(model_file).name} does not match the sha256 of {name} in card.json.")
        if len(card.species) != len(labels):
            raise ModelError(f"card.json has {len(card.species)} species but labels.json lists {len(labels)} classes.")
        self.card, self.labels, self.variant, self.model_file = card, labels, variant, Path(model_file)
        self.spec, self.species = card.preprocess, card.species
        self.names = [readable_name(label) for label in labels]
        options = self._options(threads)
        self.session = ort.InferenceSession(str(model_file), options, providers=["CPUExecutionProvider"])
        self.expert = DogExpert(card, self.model_file.parent, labels, options, variant) if card.expert else None
        self.imagenet_names = imagenet_names(card, self.model_file.parent)
        self.threads = self.session.get_session_options().intra_op_num_threads
        self.runs = 0
        self.timings: dict[str, float] = {}  # variant -> ms a photo, where `load` timed the variants that ship
        outputs = self.session.get_outputs()[0].shape[-1]
        if outputs != len(labels):
            raise ModelError(f"The model has {outputs} outputs but labels.json lists {len(labels)} classes.")

    @property
    def temperature(self) -> float:
        """The temperature of the breed model's variant this classifier serves."""
        return self.card.temperature_of(self.variant)

    @property
    def threshold(self) -> float:
        """The breed model's "not sure" threshold (a photo the expert answers has the expert's)."""
        return self.card.threshold_of(self.variant)

    @property
    def no_pet_threshold(self) -> float:
        """Below this ImageNet pet mass a photo the network is asked about has no cat or dog."""
        return self.card.no_pet_threshold(self.variant)

    def with_card(self, card: ModelCard) -> PetClassifier:
        """The same session under a later card of the same model (`select` adds calibration to it); the
        expert's session is made again where the card's expert entry changed."""
        if card.variant_file(self.variant) != self.card.variant_file(self.variant):
            raise ModelError("The new card describes another model file.")
        clone = copy.copy(self)
        clone.card = card
        if card.expert != self.card.expert:
            clone.expert = DogExpert(
                card, self.model_file.parent, self.labels, self._options(self.threads), self.variant
            )
        clone.imagenet_names = imagenet_names(card, self.model_file.parent)
        return clone

    @classmethod
    def load(
        cls,
        model_dir: str | Path | None = None,
        threads: int | None = None,
        variant: str | None = None,
        timer: Callable[[dict[str, PetClassifier]], dict[str, float]] | None = None,
    ) -> PetClassifier:
        """From a model folder: the argument, else PETS_MODEL_DIR, else model/ beside this file. Variant: the
        argument, else PETS_MODEL_VARIANT, else the one `choose_variant` picks on this host of those that
        ship: whether int8 pays depends on the CPU that serves (VNNI or not), not on the one that built it.
        `timer` measures them (default: `time_variants`)."""
        model_dir = Path(model_dir or os.environ.get("PETS_MODEL_DIR") or DEFAULT_MODEL_DIR)
        for name in ("model.onnx", "labels.json", "card.json"):
            if not (model_dir / name).is_file():
                raise ModelError(
                    f"{model_dir / name} is missing. Restore model/ from git, or train one: "
                    "python -m train sweep ..., then python -m train select."
                )
        card = ModelCard.load(model_dir / "card.json")
        labels = json.loads((model_dir / "labels.json").read_text())
        forced = variant or os.environ.get("PETS_MODEL_VARIANT")
        candidates = {
            name: cls(card, model_dir / card.variant_file(name)[0], labels, threads, name)
            for name in ([forced] if forced else card.variants())
        }
        if len(candidates) == 1:
            return next(iter(candidates.values()))
        timings = (timer or time_variants)(candidates)
        chosen = candidates[choose_variant(timings)]
        chosen.timings = timings
        log.info(
            "serving the %s model%s at %d intra-op threads: %s a photo on this host",
            chosen.variant,
            " and dog expert" if chosen.expert else "",
            chosen.threads,
            ", ".join(f"{name} {ms:.1f} ms" for name, ms in timings.items()),
        )
        return chosen

    @staticmethod
    def _options(threads: int | None) -> ort.SessionOptions:
        """Intra-op threads from the argument, else `serving_threads()`; whether they spin-wait for work
        between runs from PETS_ORT_SPINNING (docs/benchmarks.md: measured both ways)."""
        options = ort.SessionOptions()
        options.intra_op_num_threads = threads if threads is not None else serving_threads()
        options.inter_op_num_threads = 1
        options.add_session_config_entry("session.intra_op.allow_spinning", os.environ.get("PETS_ORT_SPINNING", "0"))
        return options

    def logits(self, batch: np.ndarray) -> np.ndarray:
        """The breed model's raw logits for an N×3×H×W batch that `preprocess.model_input` made."""
        return self._run([self.card.model.output_name], batch)[0]

    def _run(self, outputs: list[str], batch: np.ndarray) -> list[np.ndarray]:
        self.runs += 1  # breed-model runs so far (the expert counts its own): one Identify click costs one each
        return self.session.run(outputs, {self.card.model.input_name: batch})

    def run_every_model(self, batch: np.ndarray) -> None:
        """Each model once on `batch`, as a dog photo costs: what `time_variants` times per variant."""
        self.session.run(None, {self.card.model.input_name: batch})
        if self.expert:
            self.expert.session.run(None, {self.expert.input_name: batch})

    def routes(self, breeds: np.ndarray) -> np.ndarray:
        """Per row of calibrated breed-model probabilities: whether the expert answers it (its species'
        probability above the card's routing threshold). All False without an expert."""
        if self.expert is None:
            return np.zeros(len(breeds), dtype=bool)
        return breeds[:, self.expert.columns].sum(1) > self.expert.route_threshold

    def asks(self, breeds: np.ndarray, routed: np.ndarray) -> np.ndarray:
        """The photos the expert's network runs on: those routed to it, and where the card has a "no cat or
        dog" entry, those it says to ask about: every photo, or those the breed model is not sure of."""
        if self.card.no_pet is None or self.expert is None:
            return routed
        if self.card.no_pet["asked"] == "every photo":
            return np.ones(len(breeds), dtype=bool)
        return asked_rows(breeds, routed, self.threshold)

    def answer(self, batch: np.ndarray, maps: bool = False) -> Answer:
        """The served answer for a prepared batch: the one path every endpoint, the CLI and `train evaluate`
        go through. With `maps`, each photo's map of its top-1 breed, from the model that named it."""
        names = [self.card.model.output_name] + ([self.card.model.cam_output] if maps else [])
        logits, *breed_maps = self._run(names, batch)
        probabilities = softmax(logits, self.temperature)
        routed = self.routes(probabilities)
        asked = self.asks(probabilities, routed)
        count = len(batch)
        no_pet, seen, seen_probability = np.zeros(count, bool), np.full(count, -1), np.zeros(count, np.float32)
        expert_maps, experts = None, np.zeros((0, 0))
        if asked.any():
            expert = self.expert
            wanted = [expert.output_name] + ([expert.cam_output] if maps else [])
            wanted += [expert.imagenet_output] if self.card.no_pet else []
            found = dict(zip(wanted, expert.run(wanted, batch[asked]), strict=True))
            experts = softmax(found[expert.output_name][routed[asked]], expert.temperature)
            probabilities[routed] = combine(probabilities[routed], experts, expert.columns)
            expert_maps = found.get(expert.cam_output)
            if self.card.no_pet:
                imagenet = softmax(found[expert.imagenet_output])
                no_pet[asked] = pet_mass(imagenet, self.card.no_pet["imagenet_pets"]) < self.no_pet_threshold
                seen[asked], seen_probability[asked] = imagenet.argmax(1), imagenet.max(1)
        confidence, threshold = self.held_to(probabilities, routed, experts)
        heat = self._heat(probabilities, breed_maps[0], asked, routed, expert_maps) if maps else None
        return Answer(probabilities, routed, logits, confidence, threshold, no_pet, seen, seen_probability, heat)

    def held_to(
        self, probabilities: np.ndarray, routed: np.ndarray, experts: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray]:
        """What "not sure" reads of each photo and the threshold it is held to: the top-1 probability shown,
        against the breed model's threshold, except where the expert named the top-1 breed: its
        p(breed | dog) (`experts`, the routed rows' calibrated expert probabilities), as its threshold was
        fitted, against its own."""
        confidence, threshold = probabilities.max(1), np.full(len(probabilities), self.threshold)
        if self.expert is None or not routed.any():
            return confidence, threshold
        rows = np.flatnonzero(routed)
        named = np.isin(probabilities[rows].argmax(1), self.expert.columns)  # a dog breed won: the expert's
        confidence[rows[named]], threshold[rows[named]] = experts.max(1)[named], self.expert.threshold
        return confidence, threshold

    def _heat(
        self, probabilities: np.ndarray, breed_maps: np.ndarray, asked: np.ndarray, routed: np.ndarray, expert_maps
    ) -> np.ndarray:
        """Each photo's map of its top-1 breed: the expert's where it named that breed, else the breed model's."""
        heat = []
        for row, top in enumerate(probabilities.argmax(1)):
            if routed[row] and top in self.expert.columns:
                at = int(np.flatnonzero(np.flatnonzero(asked) == row)[0])
                heat.append(expert_maps[at, self.expert.columns.tolist().index(top)])
            else:
                heat.append(breed_maps[row, top])
        return np.stack(heat)

    def probabilities(self, images: Sequence[ImageSource]) -> np.ndarray:
        return self.answer(model_batch(images, self.spec)).probabilities

    def predict(self, image: ImageSource, top_k: int = 5) -> Prediction:
        return self.predict_batch([image], top_k)[0]

    def predict_batch(self, images: Sequence[ImageSource], top_k: int = 5) -> list[Prediction]:
        """All images in one session call per model; each gets its top-k breeds, most likely first."""
        if not images:
            return []
        answer = self.answer(model_batch(images, self.spec))
        return [self._prediction(answer, row, top_k) for row in range(len(images))]

    def _prediction(self, answer: Answer, row: int, top_k: int) -> Prediction:
        probabilities = answer.probabilities[row]
        top_k = max(1, min(int(top_k), len(self.labels)))
        order = np.argsort(-probabilities, kind="stable")[:top_k]
        top = [(self.names[i], float(probabilities[i])) for i in order]
        threshold = float(answer.threshold[row])
        flag = bool(not_sure(answer.confidence[row], threshold))
        seen = None
        if answer.seen[row] >= 0 and self.imagenet_names:
            seen = (self.imagenet_names[answer.seen[row]], float(answer.seen_probability[row]))
        return Prediction(top, self.species[order[0]], flag, threshold, bool(answer.no_pet[row]), seen)

    def explain(self, image: ImageSource, top_k: int = 5) -> tuple[Prediction, np.ndarray]:
        """The prediction and, for its top-1 breed, a class activation map in [0, 1] at the photo's display
        size (`preprocess.display_size`: rows × columns), from the model that named that breed; zero
        outside the centre crop the models see."""
        photo = load_for_model(image, self.spec)
        answer = self.answer(model_input(photo, self.spec), maps=True)
        heat = np.maximum(answer.heat[0] - answer.heat[0].mean(), 0)  # positions that raise the logit above its mean
        heat = heat / heat.max() if heat.max() > 0 else heat
        return self._prediction(answer, 0, top_k), _heat_canvas(heat, photo.size, self.spec)


def _heat_canvas(heat: np.ndarray, photo_size: tuple[int, int], spec: InputSpec) -> np.ndarray:
    """The map placed where the model's crop lies, on a float32 canvas of the photo's display size."""
    width, height = display_size(photo_size)
    scale = width / photo_size[0], height / photo_size[1]
    left, top, right, bottom = source_box(photo_size, spec)
    left, right = round(left * scale[0]), max(round(left * scale[0]) + 1, round(right * scale[0]))
    top, bottom = round(top * scale[1]), max(round(top * scale[1]) + 1, round(bottom * scale[1]))
    resized = Image.fromarray(heat.astype(np.float32), "F").resize((right - left, bottom - top), Image.BICUBIC)
    canvas = np.zeros((height, width), dtype=np.float32)
    canvas[top:bottom, left:right] = np.asarray(resized)[: height - top, : width - left]
    return np.clip(canvas, 0, 1)  # bicubic overshoots a little


# Single-photo runs per variant at start. Past the warm-up and the minimum, timing stops once the budget is
# spent, so a slow host's cold start grows by about the budget, not by ten runs of a slow model each.
CHOOSER_WARMUP, CHOOSER_MIN_RUNS, CHOOSER_RUNS = 2, 3, 7
CHOOSER_BUDGET_S = 0.75


def time_variants(candidates: dict[str, PetClassifier], budget_s: float = CHOOSER_BUDGET_S) -> dict[str, float]:
    """Each variant's model time for one photo at the thread count it serves with, the breed model and the
    dog expert together where one ships (a pair serves one variant, decided for the pair): the median of runs
    taken in turn (fp32, int8, fp32, ...), after a warm-up, so a burst of load elsewhere hits both alike;
    at least CHOOSER_MIN_RUNS each, more while `budget_s` (warm-up included) lasts."""
    deadline = time.perf_counter() + budget_s
    crop = next(iter(candidates.values())).spec.crop
    image = np.zeros((1, 3, crop, crop), np.float32)
    for _ in range(CHOOSER_WARMUP):
        for candidate in candidates.values():
            candidate.run_every_model(image)
    samples: dict[str, list[float]] = {name: [] for name in candidates}
    for taken in range(CHOOSER_RUNS):
        if taken >= CHOOSER_MIN_RUNS and time.perf_counter() > deadline:
            break
        for name, candidate in candidates.items():
            started = time.perf_counter()
            candidate.run_every_model(image)
            samples[name].append((time.perf_counter() - started) * 1000)
    return {name: statistics.median(times) for name, times in samples.items()}


# int8 approximates the reference, so it serves only where it is clearly faster (timed for the breed model
# and the expert together). The breed model alone: on a CPU with VNNI int8 takes about half fp32's time; on
# an AVX2-only one 1.1-1.15x, and the timing at start on a shared 2-vCPU host
# read the two as equal in one start of three (docs/benchmarks.md): a smaller gain is neither worth the
# approximation nor reliably measured in a second.
FASTER_BY = 0.9  # another variant serves only if it takes at most this share of fp32's time


def choose_variant(timings: dict[str, float]) -> str:
    """fp32, unless the fastest variant takes at most FASTER_BY of fp32's time."""
    fastest = min(timings, key=lambda name: (timings[name], name != "fp32"))
    if "fp32" in timings and timings[fastest] > FASTER_BY * timings["fp32"]:
        return "fp32"
    return fastest


# Matplotlib's "inferno" at nine stops: perceptually uniform, readable in grey and by most colour-blind eyes.
INFERNO_STOPS = np.array(
    [(0, 0, 4), (31, 12, 72), (85, 15, 109), (136, 34, 106), (186, 54, 85), (227, 89, 51), (249, 140, 10),
     (249, 201, 50), (252, 255, 164)],
    dtype=np.float32,
)  # fmt: skip
INFERNO = np.stack(
    [np.interp(np.linspace(0, 1, 256), np.linspace(0, 1, 9), INFERNO_STOPS[:, c]) for c in range(3)], 1
).astype(np.float32)


def overlay(photo: Image.Image, heat: np.ndarray, opacity: float = 0.7) -> Image.Image:
    """The heatmap in the inferno colour map over the photo, at the heatmap's (display) size: the photo
    shows through where it is cold, the colour dominates where it is hot (a gamma of 0.6 widens the warm
    band so it reads at a glance). Float32 at display size: a 50 MP photo costs a 1 MP blend."""
    shown = (
        photo.resize((heat.shape[1], heat.shape[0]), Image.Resampling.BILINEAR)
        if photo.size != heat.shape[::-1]
        else photo
    )
    level = np.clip(heat, 0, 1) ** 0.6
    colour = INFERNO[(level * 255).astype(np.uint8)]
    alpha = (opacity * (0.25 + 0.75 * level))[..., None]
    blended = np.asarray(shown, dtype=np.float32) * (1 - alpha) + colour * alpha
    return Image.fromarray(np.clip(blended + 0.5, 0, 255).astype(np.uint8))


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Name the breed of the cat or dog in each photo.")
    parser.add_argument("images", nargs="+", type=Path)
    parser.add_argument("--json", action="store_true", help="one JSON object per line")
    parser.add_argument("--model-dir", type=Path, default=DEFAULT_MODEL_DIR)
    parser.add_argument("--top-k", type=int, default=5)
    args = parser.parse_args(argv)
    classifier = PetClassifier.load(args.model_dir)
    failed = 0
    for path in args.images:
        try:
            prediction = classifier.predict(path, args.top_k)
        except PreprocessError as error:
            failed += 1
            print(f"{path}: {error}", file=sys.stderr)
            continue
        if args.json:
            print(json.dumps({"file": str(path)} | prediction.as_details()))
        else:
            flag = f", not sure: below {prediction.threshold:.0%}" if prediction.not_sure else ""
            flag = f", no cat or dog: more like {prediction.seen[0]}" if prediction.no_pet else flag
            print(f"{path} ({prediction.species}{flag})")
            for name, probability in prediction.top:
                print(f"  {probability:7.2%}  {name}")
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
