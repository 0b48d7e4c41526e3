"""The Transform tab's toolbox and its command line: image transforms with range-checked parameters.

One table, `TRANSFORMS`, declares each transform's parameters, types and ranges; the checks, the command
line, the app's controls and the README's endpoint rows all follow from it. Imports `preprocess` only.

    python transforms.py resize in.jpg out.png --width 320
"""

from __future__ import annotations

import argparse
import json
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from PIL import Image, ImageFilter, ImageOps

from preprocess import PreprocessError, load_image, max_pixels

MAX_SIDE = 4096  # the longest side any transform outputs (checked before it computes)
MAX_PIPELINE_STEPS = 20
MAX_PIPELINE_PIXELS = 64_000_000  # a pipeline's output pixels over all its steps: bounds its time
REQUIRED = object()  # a parameter without a default must be given


@dataclass(frozen=True)
class Param:
    name: str
    kind: type  # int, float, bool or str
    low: float = -math.inf
    high: float = math.inf
    default: Any = REQUIRED  # None: may be left empty
    example: Any = None  # what the app's control starts with
    choices: tuple[str, ...] = ()
    note: str = ""

    def check(self, value: Any) -> Any:
        """The value, or a PreprocessError that names the parameter and says what is allowed."""
        if value is None and self.default is None:
            return None
        if self.kind is bool:
            if not isinstance(value, bool):  # "false" is a non-empty string: truthy, so never coerce
                raise PreprocessError(f"{self.name} must be true or false, got {value!r}.")
            return value
        if self.kind is str:
            if value not in self.choices:
                raise PreprocessError(f"{self.name} must be {' or '.join(map(repr, self.choices))}, got {value!r}.")
            return value
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise PreprocessError(f"{self.name} must be a number, got {value!r}.")
        if not math.isfinite(value):
            raise PreprocessError(f"{self.name} must be a finite number, got {value!r}.")
        if not self.low <= value <= self.high:
            raise PreprocessError(f"{self.name} must be between {self.low:g} and {self.high:g}, got {value!r}.")
        if self.kind is int and value != int(value):
            raise PreprocessError(f"{self.name} must be a whole number, got {value!r}.")
        return self.kind(value)

    @property
    def optional_number(self) -> bool:
        return self.kind in (int, float) and self.default is None

    def from_text(self, value: Any) -> Any:
        """A value typed into a text field: empty is None (the parameter left out), digits are a number;
        anything else goes to `check` as it is, which names the parameter and says what is allowed."""
        if isinstance(value, str):
            text = value.strip()
            if not text:
                return None
            try:
                return float(text)
            except ValueError:
                return text
        return value

    def describe(self) -> str:
        """For people: the README's endpoint table and the app's labels."""
        if self.choices:
            allowed = " or ".join(f'"{choice}"' for choice in self.choices)
        elif self.kind is bool:
            allowed = "true or false"
        elif math.isinf(self.low):
            allowed = "any"
        else:
            allowed = f"{self.low:g}–{self.high:g}"
        return f"{self.name} ({allowed}{', ' + self.note if self.note else ''})"


def check_output(width: int, height: int) -> None:
    """Refuse, before any pixel is computed, a result larger than MAX_SIDE a side or the pixel cap."""
    if max(width, height) > MAX_SIDE or width * height > max_pixels():
        raise PreprocessError(
            f"The result would be {width}×{height} pixels; at most {MAX_SIDE} px a side is made. "
            "Resize the image down first."
        )


def same_size(image: Image.Image, **params: Any) -> tuple[int, int]:
    return image.size


@dataclass(frozen=True)
class Transform:
    name: str
    operation: Callable[..., Image.Image]  # gets parameters that passed their checks
    params: tuple[Param, ...] = ()
    summary: str = ""
    output_size: Callable[..., tuple[int, int]] = same_size  # the result's size, known before computing it

    def __call__(self, image: Image.Image, *args: Any, **kwargs: Any) -> Image.Image:
        names = [p.name for p in self.params]
        unknown = sorted(set(kwargs) - set(names))
        if unknown or len(args) > len(names):
            takes = ", ".join(names) or "no parameters"
            raise PreprocessError(f"got parameters {unknown or list(args)}, but it takes {takes}.")
        given = dict(zip(names, args, strict=False)) | kwargs
        checked = {}
        for param in self.params:
            if param.name not in given and param.default is REQUIRED:
                raise PreprocessError(f"{self.name} needs {param.name}.")
            checked[param.name] = param.check(given.get(param.name, param.default))
        check_output(*self.output_size(image, **checked))
        return self.operation(image, **checked)


def _resize_size(image: Image.Image, width: int | None, height: int | None) -> tuple[int, int]:
    if width is None and height is None:
        raise PreprocessError("resize needs a width, a height or both.")
    w = width or min(MAX_SIDE, max(1, round(image.width * height / image.height)))
    h = height or min(MAX_SIDE, max(1, round(image.height * w / image.width)))
    return w, h


def _resize(image: Image.Image, width: int | None, height: int | None, band: int = 256) -> Image.Image:
    """LANCZOS, a band of output rows at a time: each band is resampled from its own box of the source,
    so Pillow's full-width intermediate (4096 × 7071 × 4 bytes for a 50 MP photo) is never made whole."""
    w, h = _resize_size(image, width, height)
    out, scale = Image.new(image.mode, (w, h)), image.height / h
    for top in range(0, h, band):
        bottom = min(top + band, h)
        box = (0, top * scale, image.width, bottom * scale)
        out.paste(image.resize((w, bottom - top), Image.Resampling.LANCZOS, box=box), (0, top))
    return out


def _crop(image: Image.Image, width: int, height: int, left: int | None, top: int | None) -> Image.Image:
    w = Param("width", int, 1, image.width).check(width)
    h = Param("height", int, 1, image.height).check(height)
    x = (image.width - w) // 2 if left is None else Param("left", int, 0, image.width - w).check(left)
    y = (image.height - h) // 2 if top is None else Param("top", int, 0, image.height - h).check(top)
    return image.crop((x, y, x + w, y + h))


def _rotate_size(image: Image.Image, angle: float, expand: bool) -> tuple[int, int]:
    """Pillow's canvas for `expand`: the rotated corners' bounding box (up to rounding)."""
    if not expand:
        return image.size
    radians = math.radians(angle % 360.0)
    cos, sin = abs(math.cos(radians)), abs(math.sin(radians))
    return math.ceil(image.width * cos + image.height * sin), math.ceil(image.width * sin + image.height * cos)


def _rotate(image: Image.Image, angle: float, expand: bool) -> Image.Image:
    return image.rotate(angle % 360.0, Image.Resampling.BICUBIC, expand=expand, fillcolor=(255, 255, 255))


def _flip(image: Image.Image, direction: str) -> Image.Image:
    return ImageOps.mirror(image) if direction == "horizontal" else ImageOps.flip(image)


SIZE = {"kind": int, "low": 1, "high": MAX_SIDE}
resize = Transform(
    "resize",
    _resize,
    (
        Param("width", **SIZE, default=None, example=512, note="empty keeps the aspect ratio"),
        Param("height", **SIZE, default=None, note="empty keeps the aspect ratio"),
    ),
    "Resize; with one side given, keep the aspect ratio.",
    _resize_size,
)
crop = Transform(
    "crop",
    _crop,
    (
        Param("width", **SIZE, example=200),
        Param("height", **SIZE, example=200),
        Param("left", int, 0, MAX_SIDE, default=None, note="empty centres the box"),
        Param("top", int, 0, MAX_SIDE, default=None),
    ),
    "Crop a width × height box at (left, top), centred when they are empty.",
    lambda image, width, height, **_: (min(width, image.width), min(height, image.height)),
)
grayscale = Transform("grayscale", lambda image: image.convert("L").convert("RGB"), (), "Grey levels, as RGB.")
rotate = Transform(
    "rotate",
    _rotate,
    (Param("angle", float, example=90, note="degrees, counter-clockwise"), Param("expand", bool, default=True)),
    "Rotate; `expand` grows the canvas to keep the corners.",
    _rotate_size,
)
flip = Transform(
    "flip",
    _flip,
    (Param("direction", str, default="horizontal", choices=("horizontal", "vertical")),),
    "Mirror left–right or upside down.",
)
blur = Transform(
    "blur",
    lambda image, radius: image.filter(ImageFilter.GaussianBlur(radius)),
    (Param("radius", float, 0, 50, example=4),),
    "Gaussian blur.",
)
normalize = Transform(
    "normalize",
    lambda image, cutoff: ImageOps.autocontrast(image, cutoff=cutoff),
    (Param("cutoff", float, 0, 49, default=0.0, example=1, note="percent ignored at each end"),),
    "Autocontrast: stretch the histogram.",
)
TRANSFORMS: dict[str, Transform] = {t.name: t for t in (resize, crop, grayscale, rotate, flip, blur, normalize)}


def pipeline(image: Image.Image, steps: Sequence[dict[str, Any]] | str) -> Image.Image:
    """Apply steps such as [{"op": "resize", "width": 256}, {"op": "flip"}] in order (list or JSON text).
    Each step's result is size-checked before it is made, and all steps together make at most
    MAX_PIPELINE_PIXELS, so a pipeline's time is bounded as well as its memory."""
    made = 0
    for number, step in enumerate(parse_steps(steps), start=1):
        try:
            image = TRANSFORMS[step["op"]](image, **{key: value for key, value in step.items() if key != "op"})
        except PreprocessError as error:
            raise PreprocessError(f"Step {number} ({step['op']}): {error}") from None
        made += image.width * image.height
        if made > MAX_PIPELINE_PIXELS:
            raise PreprocessError(
                f"Step {number} ({step['op']}): the pipeline would make over {MAX_PIPELINE_PIXELS / 1e6:.0f} "
                "megapixels in all; use fewer steps or a smaller image."
            )
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


def api_row(transform: Transform) -> str:
    """The transform's row in the endpoint table of docs/api.md (a test keeps the page in step)."""
    params = "".join(f", {param.describe()}" for param in transform.params)
    return f"| `/{transform.name}` | image{params} | image |"


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Apply one image transform: transforms.py OP in.jpg out.png")
    commands = parser.add_subparsers(dest="op", required=True)
    for transform in TRANSFORMS.values():
        command = commands.add_parser(transform.name, help=transform.summary)
        for param in transform.params:
            if param.kind is bool:
                command.add_argument(f"--{param.name}", action=argparse.BooleanOptionalAction, default=param.default)
            else:
                command.add_argument(f"--{param.name}", type=param.kind, choices=param.choices or None)
    steps = commands.add_parser("pipeline", help=pipeline.__doc__)
    steps.add_argument("--steps", required=True, help='JSON, e.g. [{"op": "resize", "width": 256}]')
    for command in commands.choices.values():
        command.add_argument("source", type=Path)
        command.add_argument("target", type=Path)
    args = vars(parser.parse_args(argv))
    op, source, target = args.pop("op"), args.pop("source"), args.pop("target")
    params = {key: value for key, value in args.items() if value is not None}
    try:
        image = load_image(source)
        result = pipeline(image, params["steps"]) if op == "pipeline" else TRANSFORMS[op](image, **params)
        result.save(target)
    except PreprocessError as error:
        parser.exit(2, f"error: {error}\n")
    print(f"{target}\t{result.width}×{result.height}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
