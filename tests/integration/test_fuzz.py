"""Hostile input: mutated image bytes and file names, fuzzed with hypothesis (bounded)."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from imgsim_lab.images import ImageRejected, Limits, decode, safe_name
from imgsim_lab.models import get_model

pytestmark = [pytest.mark.faults]


def _seed(fmt: str) -> bytes:
    rng = np.random.default_rng(1)
    img = Image.fromarray(rng.integers(0, 255, (24, 40, 3), dtype=np.uint8))
    buf = io.BytesIO()
    img.save(buf, fmt)
    return buf.getvalue()


SEEDS = [_seed(f) for f in ("JPEG", "PNG", "GIF", "BMP", "WEBP", "TIFF")]
MODEL = get_model("pixels")
LIMITS = Limits(max_pixels=4_000_000)


@st.composite
def mutated(draw) -> bytes:
    data = bytearray(draw(st.sampled_from(SEEDS)))
    for _ in range(draw(st.integers(1, 8))):
        op = draw(st.sampled_from(["flip", "cut", "insert", "dims"]))
        pos = draw(st.integers(0, max(0, len(data) - 1)))
        if op == "flip" and data:
            data[pos] ^= draw(st.integers(1, 255))
        elif op == "cut":
            del data[pos : pos + draw(st.integers(1, 64))]
        elif op == "insert":
            data[pos:pos] = draw(st.binary(min_size=1, max_size=32))
        elif op == "dims" and len(data) > 24:  # header fields: sizes of a bomb
            data[16:24] = draw(st.binary(min_size=8, max_size=8))
    return bytes(data)


@settings(max_examples=300, deadline=3000, suppress_health_check=[HealthCheck.too_slow])
@given(mutated())
def test_mutated_images_end_as_a_vector_or_a_clean_rejection(data):
    try:
        img, info = decode(data, LIMITS)
    except ImageRejected as exc:
        assert exc.reason and exc.detail
        return
    assert img.mode == "RGB" and img.width * img.height <= LIMITS.max_pixels
    vec = MODEL.embed_images([img])[0]
    assert vec.shape == (MODEL.dim,) and np.isfinite(vec).all()


@settings(max_examples=300, deadline=1000)
@given(st.text(min_size=0, max_size=3000) | st.sampled_from(
    ["../../etc/passwd", "..", ".", "a/../../b", "x\x00y.png", "/abs/path.jpg", "C:\\win\\x.png",
     "é" * 5000]))
def test_upload_names_never_leave_the_data_directory(tmp_path_factory, name):
    root = tmp_path_factory.getbasetemp() / "uploads"
    safe = safe_name(name)
    assert safe and "/" not in safe and "\\" not in safe and "\x00" not in safe and safe not in (".", "..")
    assert len(safe.encode()) <= 120
    target = (root / safe).resolve()
    assert target.parent == root.resolve()
    assert Path(safe).name == safe
