"""Image loading and the model's input tensor: one implementation for training and serving.

Everything that touches pixels before the model goes through this module, so a photo produces the same
tensor in training-time evaluation, in `inference.py` and in the app. It imports nothing from the
project and no torch. The Transform tab's toolbox is `transforms.py`.
"""

from __future__ import annotations

import io
import os
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np
from PIL import Image, UnidentifiedImageError

DEFAULT_MAX_PIXELS = 50_000_000
EXIF_ORIENTATION = 0x0112
DISPLAY_SIDE = 1024  # the longer side of images the app shows about a photo (the heatmap)
# How to turn a photo stored with each EXIF orientation upright (as Pillow's ImageOps.exif_transpose)
_UPRIGHT = {
    2: Image.Transpose.FLIP_LEFT_RIGHT,
    3: Image.Transpose.ROTATE_180,
    4: Image.Transpose.FLIP_TOP_BOTTOM,
    5: Image.Transpose.TRANSPOSE,
    6: Image.Transpose.ROTATE_270,
    7: Image.Transpose.TRANSVERSE,
    8: Image.Transpose.ROTATE_90,
}

ImageSource = str | os.PathLike | bytes | bytearray | BinaryIO | Image.Image | np.ndarray


class PreprocessError(ValueError):
    """The one error this module raises for bad images and bad parameters; its message is for users."""


def max_pixels() -> int:
    """Pixel cap against decompression bombs, from `PETS_MAX_PIXELS` or the default (50 MP)."""
    return int(os.environ.get("PETS_MAX_PIXELS", DEFAULT_MAX_PIXELS))


# --------------------------------------------------------------------------- loading


def load_image(src: ImageSource, pixel_cap: int | None = None, at_least: int | None = None) -> Image.Image:
    """Decode any supported input into an upright 8-bit RGB image, or raise PreprocessError.

    `at_least`: the shorter side the caller needs (the model's `resize_shorter`). A photo more than twice
    that is decoded reduced (JPEG: at a smaller DCT scale) and box-reduced by a whole factor before its
    mode is converted, so memory follows what the model needs, not what the file claims. Training and
    serving both ask for it through `load_for_model`, so they see the same pixels. The EXIF orientation
    is read from the file before that reduced decode and applied after it: the reduced image is a new
    one that no longer carries the file's EXIF, and most phone photos are reduced."""
    cap = pixel_cap or max_pixels()
    image, orientation = _opened(src, cap, at_least)
    _check_size(image.width, image.height, cap, len(image.getbands()))
    if at_least:
        image = _reduce(image, at_least)
    return _upright(_to_rgb(image), orientation)


def load_for_model(src: ImageSource, spec: InputSpec) -> Image.Image:
    """The photo as the model's input is built from it: decoded no larger than the model needs."""
    return load_image(src, at_least=spec.resize_shorter)


def _opened(src: ImageSource, cap: int, at_least: int | None) -> tuple[Image.Image, int]:
    """The image as given or decoded, and the EXIF orientation it was stored with."""
    if isinstance(src, Image.Image):
        return src, _orientation(src)
    if isinstance(src, np.ndarray):
        return _from_array(src), 1
    return _decode(src, cap, at_least)


def _orientation(image: Image.Image) -> int:
    """The EXIF orientation (1 to 8; 1 is stored upright). Values outside the standard's eight read as 1."""
    orientation = image.getexif().get(EXIF_ORIENTATION, 1)
    return orientation if orientation in _UPRIGHT else 1


def _upright(image: Image.Image, orientation: int) -> Image.Image:
    """An RGB image turned as its EXIF orientation asks. The turned copy drops the file's metadata, whose
    orientation would otherwise turn it a second time if it were loaded again."""
    if orientation == 1:
        return image
    turned = image.transpose(_UPRIGHT[orientation])
    turned.info = {}
    return turned


def _decode(
    src: str | os.PathLike | bytes | bytearray | BinaryIO, cap: int, at_least: int | None
) -> tuple[Image.Image, int]:
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
            opened = Image.open(src)
            _check_size(opened.width, opened.height, cap, len(opened.getbands()))
            orientation = _orientation(opened)  # before the reduced decode, which may not keep it
            if at_least and opened.format == "JPEG" and min(opened.size) >= 2 * at_least:
                scale = min(opened.size) / (2 * at_least)  # the decoder picks 1/2, 1/4 or 1/8 of at most this
                opened.draft(opened.mode, (int(opened.width / scale), int(opened.height / scale)))
            opened.seek(0)  # first frame of animated GIF/WebP/APNG
            opened.load()
            return _detached(opened), orientation
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


def _detached(opened: Image.Image) -> Image.Image:
    """The decoded image without its file. A single-frame image owns its pixels once loaded (Pillow has
    closed the file): no copy, which for a 50 MP photo is 150 MB. A multi-frame one keeps its file
    open, so its first frame is copied and the file closed."""
    if getattr(opened, "n_frames", 1) == 1:
        return opened
    frame = opened.copy()
    opened.close()
    return frame


def _reduce(image: Image.Image, at_least: int) -> Image.Image:
    """Box-reduce by the largest whole factor that keeps the shorter side at `at_least` or more."""
    factor = min(image.size) // at_least
    if factor < 2:
        return image
    if image.mode not in ("L", "LA", "RGB", "RGBA", "I", "F", "CMYK"):
        image = _to_rgb(image)  # palette, 1-bit and 16-bit modes have no box reduction of their own
    out = Image.new(image.mode, (-(-image.width // factor), -(-image.height // factor)))
    band = factor * 16  # whole blocks of `factor` rows: the same result as reducing the image at once
    for top in range(0, image.height, band):
        rows = image.crop((0, top, image.width, min(top + band, image.height)))
        out.paste(rows.reduce(factor), (0, top // factor))  # Pillow reduces RGBA via a full premultiplied copy
    return out


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


def _check_size(width: int, height: int, cap: int, bands: int = 3) -> None:
    """The pixel cap, held in decoded bytes: an image of four bands (RGBA, CMYK) may have 3/4 of the
    pixels, since it decodes to 4 bytes a pixel and is converted to RGB beside itself."""
    allowed = cap if bands <= 3 else cap * 3 // bands
    if width * height > allowed:
        raise PreprocessError(_too_large_message(allowed, width, height, bands > 3))


def _too_large_message(cap: int, width: int = 0, height: int = 0, four_bands: bool = False) -> str:
    size = f" ({width}×{height})" if width else ""
    kind = " with transparency or in CMYK" if four_bands else ""
    return f"The image is too large{size}: at most {cap / 1e6:.1f} megapixels are accepted{kind}. Downscale it first."


def _to_rgb(image: Image.Image) -> Image.Image:
    """Every Pillow mode to RGB: transparency composited on white, 16-bit and float scaled to 8 bits.
    Deep and transparent modes go through a band of rows at a time, so the only full-size copy made is
    the RGB result (no float64 image, no full-size RGBA and white canvas beside it)."""
    if image.mode in ("I;16", "I;16L", "I;16B", "I;16N", "I"):  # round(v / 257): 16 bits to 8
        return _banded(image, "RGB", lambda rows: _scaled_grey(rows, lambda v: (v.astype(np.int64) + 128) // 257))
    if image.mode == "F":
        return _banded(image, "RGB", lambda rows: _scaled_grey(rows, lambda v: v))
    has_alpha = image.mode in ("RGBA", "LA", "PA", "RGBa", "La") or (image.mode == "P" and "transparency" in image.info)
    if has_alpha:
        return _banded(image, "RGB", _on_white)
    return image.convert("RGB") if image.mode != "RGB" else image


def _banded(
    image: Image.Image, mode: str, convert: Callable[[Image.Image], Image.Image], band: int = 256
) -> Image.Image:
    """`image` in `mode`, converted by `convert` a band of rows at a time."""
    out = Image.new(mode, image.size)
    for top in range(0, image.height, band):
        out.paste(convert(image.crop((0, top, image.width, min(top + band, image.height)))), (0, top))
    return out


def _scaled_grey(rows: Image.Image, scale: Callable[[np.ndarray], np.ndarray]) -> Image.Image:
    """Grey levels `scale`d and clipped to 0–255, as RGB."""
    return Image.fromarray(np.clip(scale(np.asarray(rows)), 0, 255).astype(np.uint8)).convert("RGB")


def _on_white(rows: Image.Image) -> Image.Image:
    rgba = rows.convert("RGBA")
    return Image.alpha_composite(Image.new("RGBA", rgba.size, (255, 255, 255, 255)), rgba).convert("RGB")


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


def source_box(size: tuple[int, int], spec: InputSpec) -> tuple[float, float, float, float]:
    """Where the model's centre crop lies in the original image (left, top, right, bottom): the crop of
    the photo resized so its shorter side is `resize_shorter`, mapped back to the photo's pixels."""
    resized_w, resized_h = shorter_side_size(size, spec.resize_shorter)
    left, top = (resized_w - spec.crop) // 2, (resized_h - spec.crop) // 2
    sx, sy = size[0] / resized_w, size[1] / resized_h
    return left * sx, top * sy, (left + spec.crop) * sx, (top + spec.crop) * sy


def display_size(size: tuple[int, int], longest: int = DISPLAY_SIDE) -> tuple[int, int]:
    """(width, height) to show a photo at: its own, or scaled so the longer side is `longest`."""
    scale = min(1.0, longest / max(size))
    return max(1, round(size[0] * scale)), max(1, round(size[1] * scale))


def to_tensor(image: Image.Image, spec: InputSpec) -> np.ndarray:
    """An RGB image of the final size to a normalized float32 1×3×H×W array: (v / 255 − mean) / std, as
    v · 1/(255·std) − mean/std in place on one float copy (a third of the time of the textbook form)."""
    mean, std = np.asarray(spec.mean, np.float32), np.asarray(spec.std, np.float32)
    tensor = np.ascontiguousarray(np.asarray(image).transpose(2, 0, 1))[None].astype(np.float32)
    tensor *= (1 / (255 * std))[:, None, None]
    tensor -= (mean / std)[:, None, None]
    return tensor


def model_input(image: Image.Image, spec: InputSpec) -> np.ndarray:
    """The exact tensor the model sees: the centre crop of the photo scaled to a shorter side of
    `resize_shorter`, resampled straight from its box in the photo (the resized whole is never made, so
    a 400000×50 strip costs a crop's pixels, not 2.7 billion), scaled to [0,1] and normalized."""
    crop = image.resize((spec.crop, spec.crop), Image.Resampling.BILINEAR, box=source_box(image.size, spec))
    return to_tensor(crop, spec)


def model_batch(sources: Sequence[ImageSource], spec: InputSpec) -> np.ndarray:
    """Load each source and stack their model inputs into one N×3×H×W batch."""
    return np.concatenate([model_input(load_for_model(source, spec), spec) for source in sources])
