"""preprocess.py: loading every mode and source, refusing bad files, transforms and their bounds."""

from __future__ import annotations

import io
import math
import subprocess
import sys
import time

import numpy as np
import pytest
from PIL import Image

import preprocess
import transforms
from preprocess import InputSpec, PreprocessError, load_image
from tests.conftest import CHELSEA, REPO


def encode(image: Image.Image, fmt: str, **options) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, fmt, **options)
    return buffer.getvalue()


@pytest.fixture
def photo() -> Image.Image:
    return Image.open(CHELSEA).convert("RGB")


# --------------------------------------------------------------------------- sources


def test_every_source_kind_gives_the_same_rgb_image(photo: Image.Image) -> None:
    data = CHELSEA.read_bytes()
    expected = np.asarray(load_image(CHELSEA))
    for source in (str(CHELSEA), data, bytearray(data), io.BytesIO(data), photo, np.asarray(photo)):
        image = load_image(source)
        assert image.mode == "RGB"
        assert np.array_equal(np.asarray(image), expected)


def test_numpy_arrays_of_other_types() -> None:
    gray16 = np.full((4, 5), 65535, dtype=np.uint16)
    assert load_image(gray16).getpixel((0, 0)) == (255, 255, 255)
    floats = np.full((4, 5, 3), 0.5)
    assert load_image(floats).getpixel((0, 0)) == (128, 128, 128)
    with pytest.raises(PreprocessError, match="shape"):
        load_image(np.zeros((4, 5, 2), dtype=np.uint8))
    with pytest.raises(PreprocessError, match="NaN"):
        load_image(np.full((4, 5), np.nan))


# --------------------------------------------------------------------------- modes


@pytest.mark.parametrize(
    ("image", "fmt", "expected"),
    [
        (Image.new("L", (8, 6), 100), "PNG", (100, 100, 100)),
        (Image.new("LA", (8, 6), (100, 0)), "PNG", (255, 255, 255)),  # fully transparent -> white
        (Image.new("RGBA", (8, 6), (10, 20, 30, 0)), "PNG", (255, 255, 255)),
        (Image.new("RGBA", (8, 6), (10, 20, 30, 255)), "PNG", (10, 20, 30)),
        (Image.new("CMYK", (8, 6), (0, 0, 0, 0)), "JPEG", (255, 255, 255)),
        (Image.new("1", (8, 6), 1), "PNG", (255, 255, 255)),
    ],
)
def test_modes_convert_to_rgb(image: Image.Image, fmt: str, expected: tuple[int, int, int]) -> None:
    loaded = load_image(encode(image, fmt))
    assert loaded.mode == "RGB"
    assert all(abs(a - b) <= 2 for a, b in zip(loaded.getpixel((3, 3)), expected, strict=True))


def test_palette_with_transparency_composites_on_white() -> None:
    image = Image.new("P", (8, 6), 0)
    image.putpalette([200, 0, 0] + [0, 0, 0] * 255)
    loaded = load_image(encode(image, "PNG", transparency=0))
    assert loaded.getpixel((0, 0)) == (255, 255, 255)


def test_16_bit_grayscale_png_scales_to_8_bits() -> None:
    image = Image.fromarray(np.full((6, 8), 32896, dtype=np.uint16))  # 32896 / 257 = 128
    data = encode(image, "PNG")
    assert Image.open(io.BytesIO(data)).mode.startswith("I")
    assert load_image(data).getpixel((0, 0)) == (128, 128, 128)


def test_animated_gif_gives_its_first_frame() -> None:
    frames = [Image.new("RGB", (8, 6), colour) for colour in ((255, 0, 0), (0, 0, 255))]
    data = encode(frames[0], "GIF", save_all=True, append_images=frames[1:])
    red, _, blue = load_image(data).getpixel((0, 0))
    assert red > 200 and blue < 50


# How a camera stores an upright scene under each EXIF orientation (the standard's table; 6: the camera
# was turned a quarter clockwise, so the file holds the scene turned a quarter counter-clockwise).
STORED_AS = {
    1: None,
    2: Image.Transpose.FLIP_LEFT_RIGHT,
    3: Image.Transpose.ROTATE_180,
    4: Image.Transpose.FLIP_TOP_BOTTOM,
    5: Image.Transpose.TRANSPOSE,
    6: Image.Transpose.ROTATE_90,
    7: Image.Transpose.TRANSVERSE,
    8: Image.Transpose.ROTATE_270,
}
MODEL_SPEC = InputSpec(343, 300, (0.5, 0.5, 0.5), (0.5, 0.5, 0.5))  # the shipped card's sizes


def stored(upright: Image.Image, orientation: int, fmt: str) -> bytes:
    """The file a camera writes for `upright` when held as `orientation` says."""
    exif = Image.Exif()
    exif[preprocess.EXIF_ORIENTATION] = orientation
    turn = STORED_AS[orientation]
    return encode(upright if turn is None else upright.transpose(turn), fmt, exif=exif, quality=95)


def as_model_loads(source: preprocess.ImageSource) -> np.ndarray:
    return np.asarray(preprocess.load_for_model(source, MODEL_SPEC), dtype=np.float32)


@pytest.fixture(scope="module")
def phone_photo() -> Image.Image:
    """A phone-sized photo: more than twice the model's input, so it is decoded reduced."""
    return Image.open(CHELSEA).convert("RGB").resize((2400, 1600), Image.Resampling.BICUBIC)


@pytest.mark.parametrize("orientation", range(1, 9))
@pytest.mark.parametrize(("fmt", "size"), [("JPEG", (2400, 1600)), ("PNG", (1050, 700))])
def test_a_reduced_photo_loads_upright_in_every_orientation(
    phone_photo: Image.Image, orientation: int, fmt: str, size: tuple[int, int]
) -> None:
    """JPEG: reduced in the decoder and then by boxes; PNG: decoded whole, then reduced by boxes."""
    upright = phone_photo.resize(size, Image.Resampling.BICUBIC)
    expected = as_model_loads(stored(upright, 1, fmt))
    assert min(expected.shape[:2]) < min(size) / 1.5  # the reduction this test is about took place
    loaded = as_model_loads(stored(upright, orientation, fmt))
    assert loaded.shape == expected.shape
    assert np.abs(loaded - expected).mean() < 1.0  # JPEG's blocks fall differently on a turned photo
    assert np.abs(loaded[:, ::-1] - expected).mean() > 10  # the photo is far from its mirror image


def test_a_turned_image_is_not_turned_again_when_loaded_again(phone_photo: Image.Image) -> None:
    """The upright copy drops the EXIF that said how to turn it, as Pillow's exif_transpose does."""
    once = load_image(stored(phone_photo, 6, "JPEG"))
    assert once.size == phone_photo.size
    assert load_image(once).size == phone_photo.size
    photo_object = Image.open(io.BytesIO(stored(phone_photo, 8, "JPEG")))
    assert load_image(photo_object).size == phone_photo.size


@pytest.mark.parametrize("fmt", ["PNG", "JPEG"])
def test_a_sideways_phone_photo_gets_the_upright_answer(fmt: str) -> None:
    """The shipped model, served and evaluated alike through `load_for_model`: the Bengal photo enlarged
    to phone size and stored sideways is named as the upright photo is. PNG keeps the same pixels either
    way; JPEG codes the turned photo's blocks differently, which moves the answer a little on its own."""
    from inference import PetClassifier
    from tests.conftest import EXAMPLES, MODEL_DIR

    bengal = next(path for path in EXAMPLES if path.name.startswith("Bengal"))
    upright = Image.open(bengal).convert("RGB").resize((2400, 1600), Image.Resampling.BICUBIC)
    classifier = PetClassifier.load(MODEL_DIR)
    answers = [classifier.predict(stored(upright, orientation, fmt)) for orientation in (1, 6)]
    (label, p_upright), (label_sideways, p_sideways) = (answer.top[0] for answer in answers)
    assert label_sideways == label
    assert abs(p_sideways - p_upright) <= 0.005
    unturned = classifier.predict(upright.transpose(Image.Transpose.ROTATE_90)).top[0][1]
    assert abs(unturned - p_upright) > 0.005  # seen sideways, the model's answer does move


# --------------------------------------------------------------------------- refusals


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (b"", "empty"),
        (b"just some text, not a picture", "not an image"),
        (b"<html><body>hello</body></html>", "not an image"),
        (b'<svg xmlns="http://www.w3.org/2000/svg"/>', "not an image"),
    ],
)
def test_non_images_are_refused_clearly(data: bytes, message: str) -> None:
    with pytest.raises(PreprocessError, match=message):
        load_image(data)


def test_truncated_jpeg_is_refused() -> None:
    data = CHELSEA.read_bytes()
    with pytest.raises(PreprocessError, match="truncated or corrupt"):
        load_image(data[: len(data) // 2])


def test_missing_and_empty_files(tmp_path) -> None:
    with pytest.raises(PreprocessError, match="No image file"):
        load_image(tmp_path / "nope.jpg")
    (tmp_path / "empty.jpg").write_bytes(b"")
    with pytest.raises(PreprocessError, match="empty"):
        load_image(tmp_path / "empty.jpg")


def bomb_png(width: int = 20000, height: int = 20000) -> bytes:
    """A PNG header that claims a huge image; the cap must refuse it before any pixel is decoded."""
    small = encode(Image.new("L", (1, 1)), "PNG")
    import struct
    import zlib

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    chunk = b"IHDR" + ihdr
    header = small[:8] + struct.pack(">I", len(ihdr)) + chunk + struct.pack(">I", zlib.crc32(chunk))
    return header + small[33:]


def test_decompression_bomb_is_refused_fast() -> None:
    started = time.perf_counter()
    with pytest.raises(PreprocessError, match="too large"):
        load_image(bomb_png())
    assert time.perf_counter() - started < 2


def test_four_band_images_are_capped_by_their_decoded_bytes(monkeypatch: pytest.MonkeyPatch) -> None:
    """RGBA and CMYK decode to 4 bytes a pixel and are converted beside themselves: 3/4 of the pixel cap."""
    monkeypatch.setenv("PETS_MAX_PIXELS", "1200")
    assert load_image(encode(Image.new("RGBA", (30, 30)), "PNG")).size == (30, 30)  # 900 ≤ 1200 × 3/4
    assert load_image(encode(Image.new("RGB", (40, 30)), "PNG")).size == (40, 30)  # 1200: at the cap
    with pytest.raises(PreprocessError, match="with transparency or in CMYK"):
        load_image(encode(Image.new("RGBA", (40, 30)), "PNG"))


def test_pixel_cap_is_configurable(monkeypatch: pytest.MonkeyPatch) -> None:
    data = encode(Image.new("RGB", (100, 100)), "PNG")
    assert load_image(data).size == (100, 100)
    monkeypatch.setenv("PETS_MAX_PIXELS", "5000")
    with pytest.raises(PreprocessError, match="too large"):
        load_image(data)
    assert load_image(data, pixel_cap=20_000).size == (100, 100)


# --------------------------------------------------------------------------- the model's input


SPEC = InputSpec(256, 224, (0.5, 0.5, 0.5), (0.25, 0.25, 0.25))


def test_model_input_shape_and_normalization() -> None:
    x = preprocess.model_input(Image.new("RGB", (400, 300), (255, 0, 128)), SPEC)
    assert x.shape == (1, 3, 224, 224) and x.dtype == np.float32
    assert np.allclose(x[0, :, 10, 10], [(1 - 0.5) / 0.25, (0 - 0.5) / 0.25, (128 / 255 - 0.5) / 0.25], atol=1e-5)


def test_model_input_resizes_shorter_side_then_centre_crops() -> None:
    image = Image.new("RGB", (512, 256), (0, 0, 0))
    image.paste((255, 255, 255), (0, 0, 64, 256))  # a white band on the left edge, cropped away
    assert preprocess.shorter_side_size(image.size, 256) == (512, 256)
    assert preprocess.model_input(image, SPEC).max() < 0  # only black is left after the centre crop


def test_model_input_from_the_crop_box_matches_resizing_the_whole_photo(photo: Image.Image) -> None:
    """Resampling the box directly gives the pixels of resize-then-crop (within Pillow's rounding)."""
    whole = photo.resize(preprocess.shorter_side_size(photo.size, SPEC.resize_shorter), Image.Resampling.BILINEAR)
    left, top = (whole.width - SPEC.crop) // 2, (whole.height - SPEC.crop) // 2
    reference = preprocess.to_tensor(whole.crop((left, top, left + SPEC.crop, top + SPEC.crop)), SPEC)
    assert np.abs(preprocess.model_input(photo, SPEC) - reference).max() <= 2 / 255 / min(SPEC.std) + 1e-6


# --------------------------------------------------------------------------- transforms


def test_resize_keeps_aspect_ratio_with_one_side(photo: Image.Image) -> None:
    assert transforms.resize(photo, width=226).size == (226, 150)
    assert transforms.resize(photo, height=150).size == (226, 150)
    assert transforms.resize(photo, width=10, height=20).size == (10, 20)


def test_resize_in_bands_gives_pillows_pixels(photo: Image.Image) -> None:
    """Resampling each band of rows from its own box: Pillow's resize, up to a rare rounding of one level."""
    for size in ((700, None), (100, 333)):
        banded = transforms._resize(photo, *size, band=16)
        whole = photo.resize(banded.size, Image.Resampling.LANCZOS)
        assert np.abs(np.asarray(banded, dtype=int) - np.asarray(whole)).max() <= 1


@pytest.mark.parametrize(
    "kwargs",
    [
        {},
        {"width": 0},
        {"width": -5},
        {"width": 4097},
        {"width": 100000},
        {"width": math.nan},
        {"height": math.inf},
        {"width": 10.5},
        {"width": "10"},
        {"width": True},
    ],
)
def test_resize_refuses_bad_sizes(photo: Image.Image, kwargs: dict) -> None:
    with pytest.raises(PreprocessError):
        transforms.resize(photo, **kwargs)


def test_crop_centre_and_box(photo: Image.Image) -> None:
    centred = transforms.crop(photo, 100, 50)
    assert centred.size == (100, 50)
    assert np.array_equal(np.asarray(centred), np.asarray(photo.crop((175, 125, 275, 175))))
    assert transforms.crop(photo, 10, 10, left=0, top=0).getpixel((0, 0)) == photo.getpixel((0, 0))
    for kwargs in ({"left": 445}, {"top": -1}, {"left": 1e9}):
        with pytest.raises(PreprocessError, match="between"):
            transforms.crop(photo, 10, 10, **{"left": 0, "top": 0} | kwargs)
    with pytest.raises(PreprocessError, match="width"):
        transforms.crop(photo, 1000, 10)


def test_grayscale_flip_rotate_blur_normalize(photo: Image.Image) -> None:
    gray = np.asarray(transforms.grayscale(photo))
    assert gray.shape == (300, 451, 3) and (gray[..., 0] == gray[..., 2]).all()
    assert np.array_equal(np.asarray(transforms.flip(transforms.flip(photo))), np.asarray(photo))
    assert transforms.flip(photo, "vertical").getpixel((0, 0)) == photo.getpixel((0, 299))
    assert transforms.rotate(photo, 90).size == (300, 451)
    assert transforms.rotate(photo, 90, expand=False).size == photo.size
    assert transforms.rotate(photo, -720).size == photo.size
    assert np.asarray(transforms.blur(photo, 10)).std() < np.asarray(photo).std()
    assert np.array_equal(np.asarray(transforms.blur(photo, 0)), np.asarray(photo))
    low_contrast = Image.new("RGB", (4, 4), (100, 100, 100))
    low_contrast.putpixel((0, 0), (120, 120, 120))
    assert transforms.normalize(low_contrast).getpixel((0, 0)) == (255, 255, 255)


@pytest.mark.parametrize(
    ("op", "kwargs", "message"),
    [
        ("rotate", {"angle": math.nan}, "angle"),
        ("rotate", {"angle": math.inf}, "angle"),
        ("blur", {"radius": -1}, "radius"),
        ("blur", {"radius": 1e6}, "radius"),
        ("blur", {"radius": 50.5}, "radius"),
        ("flip", {"direction": "diagonal"}, "direction"),
        ("normalize", {"cutoff": 50}, "cutoff"),
    ],
)
def test_absurd_parameters_get_specific_errors(photo: Image.Image, op: str, kwargs: dict, message: str) -> None:
    with pytest.raises(PreprocessError, match=message):
        transforms.TRANSFORMS[op](photo, **kwargs)


def test_pipeline_applies_steps_in_order(photo: Image.Image) -> None:
    steps = [{"op": "crop", "width": 200, "height": 100}, {"op": "rotate", "angle": 90}, {"op": "grayscale"}]
    result = transforms.pipeline(photo, steps)
    assert result.size == (100, 200)
    assert transforms.pipeline(photo, '[{"op": "resize", "width": 45}]').size == (45, 30)
    assert transforms.pipeline(photo, []).size == photo.size


@pytest.mark.parametrize(
    ("steps", "message"),
    [
        ('[{"op": "sharpen"}]', "unknown operation 'sharpen'"),
        ("[{'op': 'flip'}]", "not valid JSON"),
        ('{"op": "flip"}', "list of steps"),
        ('[{"op": "blur", "radius": 99}]', "Step 1 \\(blur\\): radius"),
        (
            '[{"op": "flip"}, {"op": "flip", "angle": 3}]',
            "Step 2 \\(flip\\): got parameters \\['angle'\\], but it takes direction",
        ),
        ([{"op": "flip"}] * 21, "at most 20"),
    ],
)
def test_pipeline_refuses_bad_steps(photo: Image.Image, steps, message: str) -> None:
    with pytest.raises(PreprocessError, match=message):
        transforms.pipeline(photo, steps)


def test_cli_applies_a_transform(tmp_path) -> None:
    out = tmp_path / "out.png"
    done = subprocess.run(
        [sys.executable, "transforms.py", "resize", str(CHELSEA), str(out), "--width", "100"],
        cwd=REPO,
        capture_output=True,
        text=True,
    )
    assert done.returncode == 0, done.stderr
    assert Image.open(out).size == (100, 67)
    bad = subprocess.run(
        [sys.executable, "transforms.py", "blur", str(CHELSEA), str(out), "--radius", "1e6"],
        cwd=REPO,
        capture_output=True,
        text=True,
    )
    assert bad.returncode == 2 and "radius must be between 0 and 50" in bad.stderr


def test_the_api_page_lists_each_transform_as_the_table_declares_it() -> None:
    page = (REPO / "docs" / "api.md").read_text()
    for transform in transforms.TRANSFORMS.values():
        assert transforms.api_row(transform) in page, transforms.api_row(transform)


def test_cli_options_follow_the_table(tmp_path) -> None:
    out = tmp_path / "out.png"
    done = subprocess.run(
        [sys.executable, "transforms.py", "rotate", str(CHELSEA), str(out), "--angle", "90", "--no-expand"],
        cwd=REPO,
        capture_output=True,
        text=True,
    )
    assert done.returncode == 0, done.stderr
    assert Image.open(out).size == Image.open(CHELSEA).size
