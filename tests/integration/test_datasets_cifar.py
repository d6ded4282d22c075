"""CIFAR-10 set-up from the real shared JPEG zip (skipped when the mirror is absent)."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from imgsim_lab.datasets import CIFAR10_CLASSES, cifar10_items, is_complete, setup_cifar10
from imgsim_lab.images import decode

SHARED_ZIP = Path("/work/shared/datasets/cifar10-jpeg.zip")
SHA256 = "f8103503de962e6a2113c9a20805c34ec8838220b43b00bfd6ec9261537fc912"

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(not SHARED_ZIP.is_file(), reason=f"{SHARED_ZIP} not present"),
]


def test_setup_real_cifar10_zip(tmp_path: Path) -> None:
    dest = tmp_path / "cifar10"
    summary = setup_cifar10(dest, source=SHARED_ZIP, progress=False, require_full=True)
    assert summary["counts"] == {"train": 50_000, "test": 10_000}
    assert summary["full"] is True and summary["source_sha256"] == SHA256
    assert all(summary["per_class"]["train"][c] == 5000 for c in CIFAR10_CLASSES)
    assert all(summary["per_class"]["test"][c] == 1000 for c in CIFAR10_CLASSES)
    assert is_complete(dest) and [p.name for p in tmp_path.iterdir()] == ["cifar10"]

    t0 = time.perf_counter()
    assert setup_cifar10(dest, source=SHARED_ZIP, progress=False)["skipped"] is True
    assert time.perf_counter() - t0 < 3.0

    items = cifar10_items("test", root=dest, limit=100, seed=0)
    assert len(items) == 100 and {it.label for it in items} == set(CIFAR10_CLASSES)
    assert items[0].source.startswith("cifar10/test/airplane/")
    img, info = decode(items[0].read_bytes())
    assert (info.format, img.size, img.mode) == ("JPEG", (32, 32), "RGB")
    assert len(cifar10_items("train", root=dest)) == 50_000
