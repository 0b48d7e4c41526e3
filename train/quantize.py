"""Static int8 (QDQ) quantization of the exported model, kept only if it is accurate and fast enough."""

from __future__ import annotations

import logging
import random
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static
from onnxruntime.quantization.shape_inference import quant_pre_process

from inference import PetClassifier, sha256_file
from preprocess import InputSpec, load_image, model_input
from train.data import Sample, load_dataset
from train.evaluate import evaluate
from train.export import write_card

log = logging.getLogger(__name__)

INT8_FILE = "model.int8.onnx"
CALIBRATION_IMAGES = 256
MAX_ACCURACY_DROP = 0.005  # top-1 on test, as a fraction
MIN_SPEEDUP = 1.8  # single image, one thread


class TrainingImages(CalibrationDataReader):
    """Feeds the quantizer's calibration: normalized training images exactly as serving prepares them."""

    def __init__(self, samples: list[Sample], spec: InputSpec, input_name: str) -> None:
        self.batches = iter([{input_name: model_input(load_image(s.path), spec)} for s in samples])

    def get_next(self) -> dict | None:
        return next(self.batches, None)


def median_latency_ms(classifier: PetClassifier, x: np.ndarray, repeats: int = 100) -> float:
    classifier.logits(x)
    samples = []
    for _ in range(repeats):
        started = time.perf_counter()
        classifier.logits(x)
        samples.append((time.perf_counter() - started) * 1000)
    return statistics.median(samples)


def quantize(model_dir: str | Path, data_dir: str | Path | None, fp32_test_accuracy: float) -> tuple[dict, dict]:
    """Write model.int8.onnx; return the card's `int8` entry (`accepted` says whether serving uses it) and
    the int8 model's test evaluation, which the gate needed anyway."""
    model_dir = Path(model_dir)
    fp32 = PetClassifier(model_dir, threads=1, variant="fp32")
    card = fp32.card
    data = load_dataset(data_dir, card["data"]["val_fraction"], card["data"]["seed"])
    samples = random.Random(0).sample(data.splits["train"], min(CALIBRATION_IMAGES, len(data.splits["train"])))
    with tempfile.TemporaryDirectory() as scratch:
        prepared = Path(scratch) / "prepared.onnx"
        quant_pre_process(str(model_dir / "model.onnx"), str(prepared))
        quantize_static(
            str(prepared),
            str(model_dir / INT8_FILE),
            TrainingImages(samples, fp32.spec, fp32.input_name),
            quant_format=QuantFormat.QDQ,
            per_channel=True,
            activation_type=QuantType.QUInt8,
            weight_type=QuantType.QInt8,
        )
    entry = {
        "file": INT8_FILE,
        "sha256": sha256_file(model_dir / INT8_FILE),
        "bytes": (model_dir / INT8_FILE).stat().st_size,
        "calibration_images": len(samples),
    }
    card["int8"] = entry  # so that the int8 variant can be loaded for its own evaluation
    write_card(card, model_dir)
    test = evaluate(model_dir, "test", data_dir, variant="int8")
    int8 = PetClassifier(model_dir, threads=1, variant="int8")
    x = model_input(load_image(data.splits["val"][0].path), fp32.spec)
    latency = {"fp32": median_latency_ms(fp32, x), "int8": median_latency_ms(int8, x)}
    drop = fp32_test_accuracy - test["accuracy"]
    speedup = latency["fp32"] / latency["int8"]
    entry |= {
        "test_accuracy": test["accuracy"],
        "test_top5_accuracy": test["top5_accuracy"],
        "test_accuracy_drop": drop,
        "latency_ms_1_thread": latency,
        "speedup_1_thread": speedup,
        "accepted": bool(drop <= MAX_ACCURACY_DROP and speedup >= MIN_SPEEDUP),
        "gate": f"top-1 drop <= {MAX_ACCURACY_DROP:.3f} and speedup >= {MIN_SPEEDUP}x at 1 thread",
    }
    if not entry["accepted"]:
        (model_dir / INT8_FILE).unlink()
        entry.pop("sha256")
    write_card(card, model_dir)
    log.info("int8: drop %.4f, speedup %.2fx -> %s", drop, speedup, "kept" if entry["accepted"] else "discarded")
    return entry, test
