"""The bad-input corpus, generated on the fly (nothing binary is committed): each entry is a file and
what must happen to it, "ok" or a phrase of the specific error."""

from __future__ import annotations

import io
import struct
import zlib
from pathlib import Path

import numpy as np
from PIL import Image

from tests.conftest import CHELSEA


def _encode(image: Image.Image, fmt: str, **options) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, fmt, **options)
    return buffer.getvalue()


def bomb_png(width: int = 20000, height: int = 20000) -> bytes:
    """A valid PNG header claiming width×height (400 MP) followed by a 1-pixel body: costs bytes, not memory."""
    small = _encode(Image.new("L", (1, 1)), "PNG")
    ihdr = b"IHDR" + struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return small[:8] + struct.pack(">I", 13) + ihdr + struct.pack(">I", zlib.crc32(ihdr)) + small[33:]


def exif_rotated_jpeg() -> bytes:
    """Chelsea stored on her side with EXIF orientation 6: viewers (and load_image) turn her upright."""
    exif = Image.Exif()
    exif[0x0112] = 6
    return _encode(Image.open(CHELSEA).convert("RGB").rotate(90, expand=True), "JPEG", exif=exif, quality=95)


def large_photo() -> bytes:
    """A legal 6000×4000 JPEG (24 MP): smooth, so it stays a few MB."""
    small = Image.open(CHELSEA).convert("RGB")
    return _encode(small.resize((6000, 4000), Image.Resampling.BILINEAR), "JPEG", quality=80)


def corpus() -> dict[str, tuple[bytes, str]]:
    photo = Image.open(CHELSEA).convert("RGB")
    frames = [photo.resize((90, 60)), photo.resize((90, 60)).rotate(180)]
    palette = photo.resize((90, 60)).convert("P", palette=Image.Palette.ADAPTIVE)
    gray16 = Image.fromarray(np.asarray(photo.convert("L"), dtype=np.uint16) * 257)
    jpeg = CHELSEA.read_bytes()
    return {
        "zero.jpg": (b"", "empty"),
        "text.jpg": (b"Dear diary, today I renamed a text file.", "not an image"),
        "page.html": (b"<!doctype html><html><body><img src=x></body></html>", "not an image"),
        "drawing.svg": (b'<svg xmlns="http://www.w3.org/2000/svg"><circle r="5"/></svg>', "not an image"),
        "truncated.jpg": (jpeg[: len(jpeg) // 3], "truncated or corrupt"),
        "bomb.png": (bomb_png(), "too large"),
        "one-pixel.png": (_encode(Image.new("RGB", (1, 1), (200, 120, 40)), "PNG"), "ok"),
        "gray16.png": (_encode(gray16, "PNG"), "ok"),
        "cmyk.jpg": (_encode(photo.convert("CMYK"), "JPEG"), "ok"),
        "palette-transparent.png": (_encode(palette, "PNG", transparency=0), "ok"),
        "la.png": (_encode(photo.convert("LA"), "PNG"), "ok"),
        "animated.gif": (_encode(frames[0], "GIF", save_all=True, append_images=frames[1:]), "ok"),
        "photo.webp": (_encode(photo, "WEBP"), "ok"),
        "photo.tiff": (_encode(photo, "TIFF"), "ok"),
        "exif-rotated.jpg": (exif_rotated_jpeg(), "ok"),
        "large-6000x4000.jpg": (large_photo(), "ok"),
    }


def write_corpus(folder: Path) -> dict[str, tuple[Path, str]]:
    folder.mkdir(parents=True, exist_ok=True)
    written = {}
    for name, (data, expected) in corpus().items():
        (folder / name).write_bytes(data)
        written[name] = (folder / name, expected)
    return written


ABSURD_PARAMETERS = [
    ("/resize", (0, None), "width must be between 1 and 4096"),
    ("/resize", (-5, None), "width must be between 1 and 4096"),
    ("/resize", (100000, None), "width must be between 1 and 4096"),
    ("/resize", (None, None), "needs a width, a height or both"),
    ("/rotate", (1e300, True), "ok"),
    ("/blur", (1e6,), "radius must be between 0 and 50"),
    ("/blur", (-1,), "radius must be between 0 and 50"),
    ("/crop", (50, 50, 10000, 0), "left must be between"),
    ("/crop", (5000, 50, None, None), "width must be between"),
    ("/normalize", (75,), "cutoff must be between 0 and 49"),
    ("/pipeline", ('[{"op": "teleport"}]',), "unknown operation 'teleport'"),
    ("/pipeline", ("not json",), "not valid JSON"),
]
