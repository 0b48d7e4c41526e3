"""Image loading, transforms and the model's input tensor: one implementation for training and serving.

Everything that touches pixels before the model goes through this module, so a photo produces the same
tensor in training-time evaluation, in `inference.py` and in the app. It imports nothing from the
project and no torch.

    python preprocess.py resize in.jpg out.png --width 320
"""

from __future__ import annotations

import argparse
import inspect
import io
import json
import math
import os
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np
from PIL import Image, ImageFilter, ImageOps, UnidentifiedImageError

DEFAULT_MAX_PIXELS = 50_000_000
MAX_SIDE = 4096
MAX_BLUR_RADIUS = 50.0
MAX_PIPELINE_STEPS = 20

ImageSource = str | os.PathLike | bytes | bytearray | BinaryIO | Image.Image | np.ndarray


class PreprocessError(ValueError):
    """The one error this module raises for bad images and bad parameters; its message is for users."""


def max_pixels() -> int:
    """Pixel cap against decompression bombs, from `PETS_MAX_PIXELS` or the default (50 MP)."""
    return int(os.environ.get("PETS_MAX_PIXELS", DEFAULT_MAX_PIXELS))


# --------------------------------------------------------------------------- loading


def load_image(src: ImageSource, pixel_cap: int | None = None) -> Image.Image:
    """Decode any supported input into an upright 8-bit RGB image, or raise PreprocessError."""
    cap = pixel_cap or max_pixels()
    if isinstance(src, Image.Image):
        image = src
    elif isinstance(src, np.ndarray):
        image = _from_array(src)
    else:
        image = _decode(src, cap)
    _check_size(image.width, image.height, cap)
    image = ImageOps.exif_transpose(image)
    return _to_rgb(image)


def _decode(src: str | os.PathLike | bytes | bytearray | BinaryIO, cap: int) -> Image.Image:
    if isinstance(src, (bytes, bytearray)):
        if not src:
            raise PreprocessError("The file is empty (0 bytes): upload a JPEG, PNG, WebP, GIF or TIFF photo.")
        src = io.BytesIO(src)
    elif isinstance(src, (str, os.PathLike)):
        path = Path(src)
        if not path.is_file():
            raise PreprocessError(f"No image file at '{path.name}'.")
        if path.stat().st_size == 0:
            raise PreprocessError("The file is empty (0 bytes): upload a JPEG, PNG, WebP, GIF or TIFF photo.")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(src) as opened:
                _check_size(opened.width, opened.height, cap)
                opened.seek(0)  # first frame of animated GIF/WebP/APNG
                opened.load()
                return opened.copy()
    except PreprocessError:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning):
        raise PreprocessError(_too_large_message(cap)) from None
    except UnidentifiedImageError:
        raise PreprocessError(
            "This file is not an image Pillow can read: upload a JPEG, PNG, WebP, GIF or TIFF photo."
        ) from None
    except (OSError, SyntaxError, ValueError, EOFError) as error:
        raise PreprocessError(f"The image is truncated or corrupt and cannot be decoded ({error}).") from None


def _from_array(array: np.ndarray) -> Image.Image:
    if array.ndim == 3 and array.shape[2] == 1:
        array = array[:, :, 0]
    if array.ndim not in (2, 3) or (array.ndim == 3 and array.shape[2] not in (3, 4)) or 0 in array.shape:
        raise PreprocessError(f"An image array must be H×W, H×W×3 or H×W×4; got shape {array.shape}.")
    if array.dtype == np.uint16:
        array = (array // 257).astype(np.uint8)
    elif array.dtype.kind == "f":
        if not np.isfinite(array).all():
            raise PreprocessError("The image array contains NaN or infinite values.")
        array = (np.clip(array, 0.0, 1.0) * 255 + 0.5).astype(np.uint8)
    elif array.dtype == np.bool_:
        array = array.astype(np.uint8) * 255
    elif array.dtype != np.uint8:
        raise PreprocessError(f"Unsupported image array type {array.dtype}: use uint8, uint16 or float in [0, 1].")
    return Image.fromarray(np.ascontiguousarray(array))


def _check_size(width: int, height: int, cap: int) -> None:
    if width * height > cap:
        raise PreprocessError(_too_large_message(cap, width, height))


def _too_large_message(cap: int, width: int = 0, height: int = 0) -> str:
    size = f" ({width}×{height})" if width else ""
    return f"The image is too large{size}: at most {cap / 1e6:.0f} megapixels are accepted. Downscale it first."


def _to_rgb(image: Image.Image) -> Image.Image:
    """Every Pillow mode to RGB: transparency composited on white, 16-bit and float scaled to 8 bits."""
    if image.mode in ("I;16", "I;16L", "I;16B", "I;16N", "I"):
        scaled = np.asarray(image, dtype=np.float64) / 257.0
        image = Image.fromarray(np.clip(scaled + 0.5, 0, 255).astype(np.uint8))
    elif image.mode == "F":
        image = Image.fromarray(np.clip(np.asarray(image), 0, 255).astype(np.uint8))
    has_alpha = image.mode in ("RGBA", "LA", "PA", "RGBa", "La") or (image.mode == "P" and "transparency" in image.info)
    if has_alpha:
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    return image.convert("RGB") if image.mode != "RGB" else image


# --------------------------------------------------------------------------- the model's input


@dataclass(frozen=True)
class InputSpec:
    """How a backbone wants its pixels; written to card.json at export and read back by serving."""

    resize_shorter: int
    crop: int
    mean: tuple[float, float, float]
    std: tuple[float, float, float]

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> InputSpec:
        spec = cls(int(data["resize_shorter"]), int(data["crop"]), tuple(data["mean"]), tuple(data["std"]))
        if spec.crop < 1 or spec.resize_shorter < spec.crop:
            raise ValueError(f"Bad input spec: need 1 <= crop <= resize_shorter, got {spec}.")
        return spec

    def to_dict(self) -> dict[str, Any]:
        return {"resize_shorter": self.resize_shorter, "crop": self.crop, "mean": self.mean, "std": self.std}


def shorter_side_size(size: tuple[int, int], shorter: int) -> tuple[int, int]:
    """(width, height) after scaling so the shorter side is exactly `shorter`, keeping the aspect ratio."""
    scale = shorter / min(size)
    width, height = (max(shorter, round(side * scale)) for side in size)
    return width, height


def resize_shorter(image: Image.Image, size: int) -> Image.Image:
    return image.resize(shorter_side_size(image.size, size), Image.Resampling.BILINEAR)


def center_crop(image: Image.Image, size: int) -> Image.Image:
    left, top = (image.width - size) // 2, (image.height - size) // 2
    return image.crop((left, top, left + size, top + size))


def source_box(size: tuple[int, int], spec: InputSpec) -> tuple[float, float, float, float]:
    """Where the model's centre crop lies in the original image (left, top, right, bottom), for heatmaps."""
    width, height = size
    scale = spec.resize_shorter / min(size)
    resized_w, resized_h = (
        max(spec.resize_shorter, round(width * scale)),
        max(spec.resize_shorter, round(height * scale)),
    )
    left, top = (resized_w - spec.crop) // 2, (resized_h - spec.crop) // 2
    sx, sy = width / resized_w, height / resized_h
    return left * sx, top * sy, (left + spec.crop) * sx, (top + spec.crop) * sy


def to_tensor(image: Image.Image, spec: InputSpec) -> np.ndarray:
    """An RGB image of the final size to a normalized float32 1×3×H×W array."""
    pixels = np.asarray(image, dtype=np.float32) / 255.0
    pixels = (pixels - np.asarray(spec.mean, np.float32)) / np.asarray(spec.std, np.float32)
    return np.ascontiguousarray(pixels.transpose(2, 0, 1)[None])


def model_input(image: Image.Image, spec: InputSpec) -> np.ndarray:
    """The exact tensor the model sees: resize shorter side, centre crop, scale to [0,1], normalize."""
    return to_tensor(center_crop(resize_shorter(image, spec.resize_shorter), spec.crop), spec)


def model_batch(sources: Sequence[ImageSource], spec: InputSpec) -> np.ndarray:
    """Load each source and stack their model inputs into one N×3×H×W batch."""
    return np.concatenate([model_input(load_image(source), spec) for source in sources])


# --------------------------------------------------------------------------- transforms


def _number(name: str, value: Any, low: float, high: float) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise PreprocessError(f"{name} must be a number, got {value!r}.")
    if not math.isfinite(value):
        raise PreprocessError(f"{name} must be a finite number, got {value!r}.")
    if not low <= value <= high:
        raise PreprocessError(f"{name} must be between {low:g} and {high:g}, got {value!r}.")
    return float(value)


def _integer(name: str, value: Any, low: int, high: int) -> int:
    number = _number(name, value, low, high)
    if number != int(number):
        raise PreprocessError(f"{name} must be a whole number, got {value!r}.")
    return int(number)


def resize(image: Image.Image, width: int | None = None, height: int | None = None) -> Image.Image:
    """Resize to width and/or height (1–4096); with only one given, keep the aspect ratio."""
    if width is None and height is None:
        raise PreprocessError("resize needs a width, a height or both.")
    w = _integer("width", width, 1, MAX_SIDE) if width is not None else None
    h = _integer("height", height, 1, MAX_SIDE) if height is not None else None
    if w is None:
        w = min(MAX_SIDE, max(1, round(image.width * h / image.height)))
    if h is None:
        h = min(MAX_SIDE, max(1, round(image.height * w / image.width)))
    return image.resize((w, h), Image.Resampling.LANCZOS)


def crop(image: Image.Image, width: int, height: int, left: int | None = None, top: int | None = None) -> Image.Image:
    """Crop a width×height box at (left, top), or centred when left and top are not given."""
    w = _integer("width", width, 1, image.width)
    h = _integer("height", height, 1, image.height)
    x = (image.width - w) // 2 if left is None else _integer("left", left, 0, image.width - w)
    y = (image.height - h) // 2 if top is None else _integer("top", top, 0, image.height - h)
    return image.crop((x, y, x + w, y + h))


def grayscale(image: Image.Image) -> Image.Image:
    return image.convert("L").convert("RGB")


def rotate(image: Image.Image, angle: float, expand: bool = True) -> Image.Image:
    """Rotate counter-clockwise by any finite angle; `expand` grows the canvas to keep the corners."""
    degrees = _number("angle", angle, -math.inf, math.inf) % 360.0
    return image.rotate(degrees, Image.Resampling.BICUBIC, expand=bool(expand), fillcolor=(255, 255, 255))


def flip(image: Image.Image, direction: str = "horizontal") -> Image.Image:
    if direction == "horizontal":
        return ImageOps.mirror(image)
    if direction == "vertical":
        return ImageOps.flip(image)
    raise PreprocessError(f"direction must be 'horizontal' or 'vertical', got {direction!r}.")


def blur(image: Image.Image, radius: float) -> Image.Image:
    return image.filter(ImageFilter.GaussianBlur(_number("radius", radius, 0, MAX_BLUR_RADIUS)))


def normalize(image: Image.Image, cutoff: float = 0.0) -> Image.Image:
    """Autocontrast: stretch the histogram, ignoring `cutoff` percent at each end (0–49)."""
    return ImageOps.autocontrast(image, cutoff=_number("cutoff", cutoff, 0, 49))


TRANSFORMS: dict[str, Callable[..., Image.Image]] = {
    "resize": resize,
    "crop": crop,
    "grayscale": grayscale,
    "rotate": rotate,
    "flip": flip,
    "blur": blur,
    "normalize": normalize,
}


def pipeline(image: Image.Image, steps: Sequence[dict[str, Any]] | str) -> Image.Image:
    """Apply steps such as [{"op": "resize", "width": 256}, {"op": "flip"}] in order (list or JSON text)."""
    for number, step in enumerate(parse_steps(steps), start=1):
        params = {key: value for key, value in step.items() if key != "op"}
        try:
            image = TRANSFORMS[step["op"]](image, **params)
        except TypeError:
            takes = ", ".join(list(inspect.signature(TRANSFORMS[step["op"]]).parameters)[1:]) or "no parameters"
            raise PreprocessError(
                f"Step {number} ({step['op']}): got parameters {sorted(params)}, but it takes {takes}."
            ) from None
        except PreprocessError as error:
            raise PreprocessError(f"Step {number} ({step['op']}): {error}") from None
    return image


def parse_steps(steps: Sequence[dict[str, Any]] | str) -> list[dict[str, Any]]:
    if isinstance(steps, str):
        try:
            steps = json.loads(steps)
        except json.JSONDecodeError as error:
            raise PreprocessError(f"The pipeline is not valid JSON: {error}.") from None
    if not isinstance(steps, list) or not all(isinstance(step, dict) for step in steps):
        raise PreprocessError('The pipeline must be a list of steps like {"op": "flip"}.')
    if len(steps) > MAX_PIPELINE_STEPS:
        raise PreprocessError(f"A pipeline has at most {MAX_PIPELINE_STEPS} steps, got {len(steps)}.")
    for number, step in enumerate(steps, start=1):
        if step.get("op") not in TRANSFORMS:
            raise PreprocessError(
                f"Step {number}: unknown operation {step.get('op')!r}; choose one of {', '.join(TRANSFORMS)}."
            )
    return steps


# --------------------------------------------------------------------------- command line

CLI_OPTIONS: dict[str, list[tuple[str, type]]] = {
    "resize": [("--width", int), ("--height", int)],
    "crop": [("--width", int), ("--height", int), ("--left", int), ("--top", int)],
    "grayscale": [],
    "rotate": [("--angle", float), ("--no-expand", bool)],
    "flip": [("--direction", str)],
    "blur": [("--radius", float)],
    "normalize": [("--cutoff", float)],
    "pipeline": [("--steps", str)],
}


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Apply one image transform: preprocess.py OP in.jpg out.png")
    commands = parser.add_subparsers(dest="op", required=True)
    for op, options in CLI_OPTIONS.items():
        command = commands.add_parser(op)
        command.add_argument("source", type=Path)
        command.add_argument("target", type=Path)
        for flag, kind in options:
            if kind is bool:
                command.add_argument(flag, action="store_true")
            else:
                command.add_argument(flag, type=kind)
    args = vars(parser.parse_args(argv))
    op, source, target = args.pop("op"), args.pop("source"), args.pop("target")
    if "no_expand" in args:
        args["expand"] = not args.pop("no_expand")
    params = {key: value for key, value in args.items() if value is not None}
    try:
        image = load_image(source)
        result = pipeline(image, params["steps"]) if op == "pipeline" else TRANSFORMS[op](image, **params)
        result.save(target)
    except (PreprocessError, TypeError) as error:
        parser.exit(2, f"error: {error}\n")
    print(f"{target}\t{result.width}×{result.height}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
