"""Generated image corpora for the tests: distinct small images plus bad inputs."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
from PIL import Image

CLASSES = ("red", "green", "blue")


def image_bytes(i: int, fmt: str = "PNG", size: int = 32) -> bytes:
    """A distinct image: a class colour (i % 3) plus seeded noise."""
    rng = np.random.default_rng(i)
    base = np.zeros((size, size, 3), np.float32)
    base[..., i % 3] = 180
    arr = np.clip(base + rng.normal(0, 40, base.shape), 0, 255).astype(np.uint8)
    buf = io.BytesIO()
    Image.fromarray(arr, "RGB").save(buf, fmt)
    return buf.getvalue()


def make_folder(root: Path, n: int, duplicates: int = 0, bad: bool = False) -> Path:
    """``root/<class>/img<i>.png`` for n images, ``duplicates`` byte-identical copies, bad files."""
    for i in range(n):
        d = root / CLASSES[i % 3]
        d.mkdir(parents=True, exist_ok=True)
        (d / f"img{i:04d}.png").write_bytes(image_bytes(i))
    for j in range(duplicates):
        (root / CLASSES[j % 3] / f"copy{j:04d}.png").write_bytes(image_bytes(j))
    if bad:
        (root / "red" / "empty.jpg").write_bytes(b"")
        (root / "red" / "notes.jpg").write_text("this is text, not a JPEG")
        (root / "red" / "truncated.jpg").write_bytes(image_bytes(999, "JPEG", 64)[:300])
        (root / "red" / "tiny.png").write_bytes(_tiny())
    return root


def _tiny() -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (1, 1), (1, 2, 3)).save(buf, "PNG")
    return buf.getvalue()
