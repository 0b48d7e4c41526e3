"""Image loading and the model's input tensor: one implementation for training and serving.

Everything that touches pixels before the model goes through this module, so a photo produces the same
tensor in training-time evaluation, in `inference.py` and in the app. It imports nothing from the
project and no torch. The Transform tab's toolbox is `transforms.py`.
"""

from __future__ import annotations

import io
import os
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

DEFAULT_MAX_PIXELS = 50_000_000

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
