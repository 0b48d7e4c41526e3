"""The breed classifier the Space embeds: ONNX Runtime, the shipped `model/` folder, no torch.

python inference.py photo.jpg [more.jpg ...] [--json]
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnxruntime as ort
from PIL import Image

from preprocess import ImageSource, InputSpec, PreprocessError, load_image, model_batch, model_input, source_box

DEFAULT_MODEL_DIR = Path(__file__).parent / "model"


class ModelError(RuntimeError):
    """The model folder is missing, incomplete or inconsistent."""


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

    def as_details(self) -> dict:
        """The JSON of /predict_details."""
        return {
            "top": [{"breed": name, "probability": p} for name, p in self.top],
            "species": self.species,
            "not_sure": self.not_sure,
            "threshold": self.threshold,
        }

    def as_label(self) -> dict[str, float]:
        """The payload of a `gr.Label`."""
        return dict(self.top)


class PetClassifier:
    """Loads `model.onnx`, `labels.json` and `card.json` once; predicts breeds for images."""

    def __init__(
        self, model_dir: str | Path = DEFAULT_MODEL_DIR, threads: int | None = None, variant: str | None = None
    ) -> None:
        model_dir = Path(model_dir)
        for name in ("model.onnx", "labels.json", "card.json"):
            if not (model_dir / name).is_file():
                raise ModelError(
                    f"{model_dir / name} is missing. Restore model/ from git, or train one: "
                    "python -m train sweep ..., then python -m train select."
                )
        self.labels: list[str] = json.loads((model_dir / "labels.json").read_text())
        self.card: dict = json.loads((model_dir / "card.json").read_text())
        self.spec = InputSpec.from_dict(self.card["preprocess"])
        self.species: list[str] = self.card["species"]
        self.names = [readable_name(label) for label in self.labels]
        self.temperature = float(self.card.get("calibration", {}).get("temperature", 1.0))
        self.threshold = float(self.card.get("not_sure", {}).get("threshold", 0.0))
        self.variant, entry = self._variant(variant)
        self.model_file = model_dir / entry["file"]
        if sha256_file(self.model_file) != entry["sha256"]:
            raise ModelError(
                f"{entry['file']} does not match the sha256 in card.json: the model folder is inconsistent."
            )
        self.session = ort.InferenceSession(
            str(self.model_file), self._options(threads), providers=["CPUExecutionProvider"]
        )
        self.input_name = self.card["model"]["input_name"]
        self.runs = 0
        outputs = self.session.get_outputs()[0].shape[-1]
        if outputs != len(self.labels) or len(self.species) != len(self.labels):
            raise ModelError(f"The model has {outputs} outputs but labels.json lists {len(self.labels)} classes.")

    def _variant(self, variant: str | None) -> tuple[str, dict]:
        """ "fp32" (model.onnx) or "int8" (model.int8.onnx, shipped only when it passed its gate at export).
        Default: PETS_MODEL_VARIANT, else int8 when the card accepted it, else fp32."""
        int8 = self.card.get("int8", {})
        variant = variant or os.environ.get("PETS_MODEL_VARIANT") or ("int8" if int8.get("accepted") else "fp32")
        if variant == "fp32":
            return variant, {"file": "model.onnx", "sha256": self.card["model"]["sha256"]}
        if variant == "int8" and "sha256" in int8:
            return variant, int8
        raise ModelError(f"No model variant {variant!r} in card.json: use fp32 or an exported int8 model.")

    @staticmethod
    def _options(threads: int | None) -> ort.SessionOptions:
        """Intra-op threads from the argument, else PETS_THREADS, else ONNX Runtime's choice (0)."""
        options = ort.SessionOptions()
        options.intra_op_num_threads = threads if threads is not None else int(os.environ.get("PETS_THREADS", "0"))
        options.inter_op_num_threads = 1
        return options

    def logits(self, batch: np.ndarray) -> np.ndarray:
        """Raw logits for an N×3×H×W batch that `preprocess.model_input` made."""
        return self._run(["logits"], batch)[0]

    def _run(self, outputs: list[str], batch: np.ndarray) -> list[np.ndarray]:
        self.runs += 1  # model runs so far: bench/latency.py checks one Identify click costs one
        return self.session.run(outputs, {self.input_name: batch})

    def probabilities(self, images: Sequence[ImageSource]) -> np.ndarray:
        return softmax(self.logits(model_batch(images, self.spec)), self.temperature)

    def predict(self, image: ImageSource, top_k: int = 5) -> Prediction:
        return self.predict_batch([image], top_k)[0]

    def predict_batch(self, images: Sequence[ImageSource], top_k: int = 5) -> list[Prediction]:
        """All images in one session call; each gets its top-k breeds, most likely first."""
        if not images:
            return []
        return [self._prediction(row, top_k) for row in self.probabilities(images)]

    def _prediction(self, probabilities: np.ndarray, top_k: int) -> Prediction:
        top_k = max(1, min(int(top_k), len(self.labels)))
        order = np.argsort(-probabilities, kind="stable")[:top_k]
        top = [(self.names[i], float(probabilities[i])) for i in order]
        flag = bool(not_sure(probabilities[order[0]], self.threshold))
        return Prediction(top, self.species[order[0]], flag, self.threshold)

    def explain(self, image: ImageSource, top_k: int = 5) -> tuple[Prediction, np.ndarray]:
        """The prediction and, for its top-1 breed, a class activation map in [0, 1] of the photo's size
        (rows × columns); zero outside the centre crop the model sees."""
        photo = load_image(image)
        logits, maps = self._run(["logits", "cam"], model_input(photo, self.spec))
        probabilities = softmax(logits, self.temperature)[0]
        prediction = self._prediction(probabilities, top_k)
        heat = maps[0, int(probabilities.argmax())]
        heat = np.maximum(heat - heat.mean(), 0)  # positions that raise the logit above its average
        heat = heat / heat.max() if heat.max() > 0 else heat
        left, top, right, bottom = (round(v) for v in source_box(photo.size, self.spec))
        resized = Image.fromarray(heat.astype(np.float32), "F").resize((right - left, bottom - top), Image.BILINEAR)
        canvas = np.zeros((photo.height, photo.width), dtype=np.float32)
        canvas[top:bottom, left:right] = np.asarray(resized)[: photo.height - top, : photo.width - left]
        return prediction, canvas


def overlay(photo: Image.Image, heat: np.ndarray, opacity: float = 0.5) -> Image.Image:
    """The heatmap over the photo: transparent where cold, red to yellow where hot."""
    colour = np.stack([np.ones_like(heat), heat, np.zeros_like(heat)], axis=-1) * 255
    alpha = (opacity * np.clip(heat * 1.5, 0, 1))[..., None]
    blended = np.asarray(photo, dtype=np.float32) * (1 - alpha) + colour * alpha
    return Image.fromarray(blended.astype(np.uint8))


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Name the breed of the cat or dog in each photo.")
    parser.add_argument("images", nargs="+", type=Path)
    parser.add_argument("--json", action="store_true", help="one JSON object per line")
    parser.add_argument("--model-dir", type=Path, default=DEFAULT_MODEL_DIR)
    parser.add_argument("--top-k", type=int, default=5)
    args = parser.parse_args(argv)
    classifier = PetClassifier(args.model_dir)
    failed = 0
    for path in args.images:
        try:
            prediction = classifier.predict(path, args.top_k)
        except PreprocessError as error:
            failed += 1
            print(f"{path}: {error}", file=sys.stderr)
            continue
        if args.json:
            top = [{"breed": name, "probability": round(p, 6)} for name, p in prediction.top]
            print(json.dumps({"file": str(path), "species": prediction.species, "top": top}))
        else:
            print(f"{path} ({prediction.species})")
            for name, probability in prediction.top:
                print(f"  {probability:7.2%}  {name}")
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
