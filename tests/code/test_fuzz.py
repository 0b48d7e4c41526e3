"""Fuzzing: whatever the bytes or parameters, preprocess raises only PreprocessError (or succeeds)."""

from __future__ import annotations

import io
import math

import numpy as np
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

import preprocess
import transforms
from preprocess import PreprocessError, load_image
from tests.conftest import CHELSEA

SMALL = Image.open(CHELSEA).convert("RGB").resize((60, 40))
SEEDS = []
for fmt in ("JPEG", "PNG", "GIF", "WEBP", "TIFF", "BMP"):
    buffer = io.BytesIO()
    SMALL.save(buffer, fmt)
    SEEDS.append(buffer.getvalue())

FUZZ = settings(max_examples=250, deadline=2000, suppress_health_check=[HealthCheck.too_slow], derandomize=True)


def loads_or_refuses(data: bytes) -> None:
    try:
        image = load_image(data)
    except PreprocessError as error:
        assert str(error)
    else:
        assert image.mode == "RGB" and image.width * image.height <= preprocess.DEFAULT_MAX_PIXELS


@FUZZ
@given(st.binary(max_size=4096))
def test_arbitrary_bytes(data: bytes) -> None:
    loads_or_refuses(data)


@FUZZ
@given(
    st.sampled_from(SEEDS),
    st.lists(st.tuples(st.integers(0, 10**6), st.integers(0, 255)), max_size=12),
    st.integers(0, 10**6),
)
def test_mutated_real_images(seed: bytes, edits: list[tuple[int, int]], cut: int) -> None:
    """Real files with bytes overwritten and a random truncation: the hard cases for decoders."""
    data = bytearray(seed)
    for position, value in edits:
        data[position % len(data)] = value
    loads_or_refuses(bytes(data[: max(1, len(data) - cut % len(data))]))


ANYTHING = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-(10**9), 10**9),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=5),
    st.sampled_from([0, -1, 1, 4096, 4097, 100000, math.nan, math.inf, -math.inf, 1e6]),
)


@FUZZ
@given(st.sampled_from(sorted(transforms.TRANSFORMS)), st.lists(ANYTHING, max_size=4))
def test_transform_parameters(op: str, params: list) -> None:
    try:
        result = transforms.pipeline(SMALL, [{"op": op} | dict(zip(PARAMETERS[op], params, strict=False))])
    except PreprocessError as error:
        assert str(error)
    else:
        assert result.width * result.height <= 4096 * 4096 * 2 and np.asarray(result).size


PARAMETERS = {name: [p.name for p in t.params] for name, t in transforms.TRANSFORMS.items()}
