"""Sentences for people: why an image was refused, sizes in MB."""

from __future__ import annotations

import re

from imgsim_lab.images import ImageRejected

#: One human sentence per rejection code of :data:`imgsim_lab.images.REASONS`.
REASON_TEXT = {
    "empty": "the file is empty",
    "too_large_bytes": "the file is too large",
    "unsupported_format": "this image format is not supported (use JPEG, PNG, WebP, BMP, GIF or TIFF)",
    "not_an_image": "this is not an image file (not JPEG, PNG, WebP, BMP, GIF or TIFF)",
    "too_many_pixels": "the image has too many pixels",
    "too_small": "the image is too small",
    "corrupt": "the image file is damaged or truncated",
}


def megabytes(n: int) -> str:
    """``12.3 MB`` (decimal megabytes, as file managers and browsers show them)."""
    mb = n / 1e6
    return f"{mb:.1f} MB" if mb < 100 else f"{mb:.0f} MB"


def describe_rejection(exc: ImageRejected) -> str:
    """A sentence for a rejection: the reason in words, plus the detail when it helps."""
    text = REASON_TEXT.get(exc.reason, exc.reason.replace("_", " "))
    if exc.reason in ("not_an_image", "empty"):
        return text  # the detail shows raw bytes (b'this is '), which helps no one
    if exc.reason == "too_large_bytes":
        nums = [int(x) for x in re.findall(r"\d+", exc.detail)]
        if len(nums) >= 2:
            return f"{text}: {megabytes(nums[0])}, the limit is {megabytes(nums[-1])}"
    return f"{text} ({exc.detail})"
