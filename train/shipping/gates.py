"""The gates between training and the Space, from one TOML file (train/configs/gates.toml), each checked by
a pure function so its test exercises exactly the rule that runs."""

from __future__ import annotations

from dataclasses import dataclass, fields
from pathlib import Path
from typing import get_type_hints

from train.learning.config import ConfigError, read_toml

GATES = Path(__file__).parents[1] / "configs" / "gates.toml"


@dataclass(frozen=True)
class ParityGate:
    images: int
    max_abs_logit_delta: float


@dataclass(frozen=True)
class Int8Gate:
    calibration_images: int
    min_top1_agreement: float
    max_probability_delta: float


@dataclass(frozen=True)
class CalibrationGate:
    max_flagged_correct: float
    ece_bins: int


@dataclass(frozen=True)
class PublishGate:
    min_test_accuracy: float
    max_regression: float


@dataclass(frozen=True)
class Gates:
    parity: ParityGate
    int8: Int8Gate
    calibration: CalibrationGate
    publish: PublishGate

    @classmethod
    def load(cls, path: Path = GATES) -> Gates:
        data, tables = read_toml(path), get_type_hints(cls)
        _check_keys(path, "", data, list(tables))
        return cls(**{name: _table(path, name, kind, data[name]) for name, kind in tables.items()})


def _table(path: Path, name: str, kind: type, data: dict) -> object:
    """One gate's table: exactly its keys, each a number of the declared type."""
    types = {field.name: field.type for field in fields(kind)}
    _check_keys(path, f"[{name}] ", data, list(types))
    for key, value in data.items():
        if (
            isinstance(value, bool)
            or not isinstance(value, int | float)
            or (types[key] == "int" and isinstance(value, float))
        ):
            raise ConfigError(f"{path}: [{name}] {key} must be a {types[key]}, got {value!r}.")
    return kind(**{key: float(value) if types[key] == "float" else value for key, value in data.items()})


def _check_keys(path: Path, where: str, data: dict, expected: list[str]) -> None:
    missing, unknown = [k for k in expected if k not in data], sorted(set(data) - set(expected))
    if missing or unknown:
        raise ConfigError(f"{path}: {where}missing key(s) {missing}, unknown key(s) {unknown}.")


def parity_failure(max_abs_delta: float, same_top1: bool, gate: ParityGate, finite: bool = True) -> str | None:
    """Why the ONNX model does not reproduce torch, or None when it does. Non-finite outputs fail however
    they compare (NaN on both sides would otherwise pass: NaN > tolerance is false, argmax of NaN is 0)."""
    if not finite:
        return "the outputs are not all finite (NaN or infinite values in torch's or ONNX Runtime's)"
    if not max_abs_delta <= gate.max_abs_logit_delta or not same_top1:
        return f"max |Δlogit| = {max_abs_delta:.2e} (at most {gate.max_abs_logit_delta:g}), same top-1: {same_top1}"
    return None


def int8_accepted(top1_agreement: float, probability_delta: float, gate: Int8Gate) -> bool:
    """Fidelity to fp32 on trainval photos, not test accuracy (test is only reported) and not the build
    machine's speed (the host that serves times both and picks)."""
    return top1_agreement >= gate.min_top1_agreement and probability_delta <= gate.max_probability_delta


def int8_rule(gate: Int8Gate) -> str:
    return (
        f"top-1 as fp32's on >= {gate.min_top1_agreement:.1%} of trainval photos and calibrated probabilities "
        f"within {gate.max_probability_delta:.3f} of fp32's (mean of the largest difference per photo)"
    )


def publish_failure(test: dict | None, served: dict | None, gate: PublishGate) -> str | None:
    """Why the card's test metrics may not go to the Space, or None when they may: top-1 at its floor, and
    neither top-1 nor the mean over breeds more than `max_regression` below what the Space serves now
    (the test photos are mostly cats, so top-1 alone would let the dog breeds slide)."""
    if not test or "accuracy" not in test:
        return "card.json has no test accuracy: run `python -m train select` first."
    digests = {entry["data_digest"] for entry in (test, served or {}) if "data_digest" in entry}
    if len(digests) > 1:  # both cards say which photos they were tested on, and they differ
        return (
            "The card and the Space's card were tested on different photos (data digests differ): test the served "
            "model again on these photos (`python -m train retest`) before comparing."
        )
    if test["accuracy"] < gate.min_test_accuracy:
        return f"Test accuracy {test['accuracy']:.4f} is below the threshold {gate.min_test_accuracy:.4f}."
    for key, name in (("accuracy", "Test accuracy"), ("mean_per_class_accuracy", "Mean per-class test accuracy")):
        if served and key in served and key in test and test[key] < served[key] - gate.max_regression:
            return (
                f"{name} {test[key]:.4f} is more than {gate.max_regression:.4f} below the "
                f"{served[key]:.4f} the Space serves now."
            )
    return None
