"""Static int8 (QDQ) quantization of an exported model: the file and its statistics. Whether it serves is
decided by `select` with the int8 gate (accuracy on test, speed at one thread)."""

from __future__ import annotations

import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import onnxruntime as ort
from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static
from onnxruntime.quantization.shape_inference import quant_pre_process

from inference import ModelCard, sha256_file
from preprocess import load_for_model, model_input
from train.data.pets import Sample


class TrainingImages(CalibrationDataReader):
    """Feeds the quantizer's calibration: training images exactly as serving prepares them."""

    def __init__(self, samples: list[Sample], card: ModelCard) -> None:
        name = card.model.input_name
        self.batches = iter(
            [{name: model_input(load_for_model(s.path, card.preprocess), card.preprocess)} for s in samples]
        )

    def get_next(self) -> dict | None:
        return next(self.batches, None)


def median_latency_ms(model: Path, x: np.ndarray, input_name: str, repeats: int = 100) -> float:
    """One image at one thread, the median of `repeats` runs after a warm-up."""
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    session = ort.InferenceSession(str(model), options, providers=["CPUExecutionProvider"])
    session.run(None, {input_name: x})
    samples = []
    for _ in range(repeats):
        started = time.perf_counter()
        session.run(None, {input_name: x})
        samples.append((time.perf_counter() - started) * 1000)
    return statistics.median(samples)


def quantize(fp32: Path, out: Path, card: ModelCard, samples: list[Sample]) -> dict:
    """Write the int8 model to `out`; return the card's `int8` entry without the verdict: file, sha256,
    size, calibration images and the latency of both models measured side by side."""
    with tempfile.TemporaryDirectory() as scratch:
        prepared = Path(scratch) / "prepared.onnx"
        quant_pre_process(str(fp32), str(prepared))
        quantize_static(
            str(prepared),
            str(out),
            TrainingImages(samples, card),
            quant_format=QuantFormat.QDQ,
            per_channel=True,
            activation_type=QuantType.QUInt8,
            weight_type=QuantType.QInt8,
        )
    x = model_input(load_for_model(samples[0].path, card.preprocess), card.preprocess)
    name = card.model.input_name
    latency = {"fp32": median_latency_ms(fp32, x, name), "int8": median_latency_ms(out, x, name)}
    return {
        "file": out.name,
        "sha256": sha256_file(out),
        "bytes": out.stat().st_size,
        "calibration_images": len(samples),
        "latency_ms_1_thread": latency,
        "speedup_1_thread": latency["fp32"] / latency["int8"],
    }
