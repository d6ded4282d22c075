"""Validation and decoding of untrusted image bytes.

Formats are recognized by content (magic bytes), never by file name. :func:`probe` reads
only the header (cheap, so a decompression bomb costs nothing); :func:`decode` also
decodes every pixel, applies the EXIF orientation and returns an RGB image. Both raise
:class:`ImageRejected` -- and nothing else -- for bad input.
"""

from __future__ import annotations

import hashlib
import io
import logging
import os
import re
import threading
import unicodedata
import warnings
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageFile, ImageOps

log = logging.getLogger(__name__)

#: Stable rejection codes, in the order the checks run.
REASONS = ("empty", "too_large_bytes", "unsupported_format", "not_an_image",
           "too_many_pixels", "too_small", "corrupt")

#: Accepted formats: our name -> the Pillow plugins allowed to open it.
FORMATS: dict[str, tuple[str, ...]] = {
    "JPEG": ("JPEG", "MPO"),  # a JPEG with an MPF segment (many cameras) opens as MPO
    "PNG": ("PNG",),
    "WEBP": ("WEBP",),
    "BMP": ("BMP",),
    "GIF": ("GIF",),
    "TIFF": ("TIFF",),
}

_PIL_DIR = os.path.dirname(Image.__file__) + os.sep


def _from_decoder(exc: BaseException) -> bool:
    """Whether ``exc`` was raised by Pillow (or its C decoders) decoding the file.

    Pillow raises many kinds of errors on hostile input (OSError, SyntaxError, ValueError,
    struct.error, zlib.error, EOFError, IndexError...): each of them becomes a rejection.
    An exception raised in our own code is a bug and propagates.
    """
    tb = exc.__traceback__
    last = None
    while tb is not None:
        last = tb.tb_frame.f_code.co_filename
        tb = tb.tb_next
    return last is not None and last.startswith(_PIL_DIR)
_SWAP_ORIENTATIONS = {5, 6, 7, 8}
_EXIF_ORIENTATION = 0x0112
# Image.open may warn (DecompressionBombWarning); catch_warnings is process-global.
_open_lock = threading.Lock()


@dataclass(frozen=True)
class Limits:
    """Size limits for untrusted images."""

    max_bytes: int = 20 * 1024 * 1024
    max_pixels: int = 50_000_000
    min_side: int = 8

    def __post_init__(self) -> None:
        for name in ("max_bytes", "max_pixels", "min_side"):
            if getattr(self, name) < 1:
                raise ValueError(f"Limits.{name} must be >= 1")


class ImageRejected(ValueError):
    """Bad image bytes: ``reason`` is a code from :data:`REASONS`, ``detail`` says why."""

    def __init__(self, reason: str, detail: str) -> None:
        if reason not in REASONS:
            raise ValueError(f"unknown rejection reason {reason!r}")
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail

    def __reduce__(self):  # picklable across process pools
        return (type(self), (self.reason, self.detail))


@dataclass(frozen=True)
class ImageInfo:
    """What the header says. ``width``/``height`` are after EXIF orientation; ``mode`` is
    the file's own Pillow mode (decoded images are always RGB)."""

    format: str
    width: int
    height: int
    mode: str


def sha256_hex(data: bytes) -> str:
    """Hex SHA-256 of ``data``."""
    return hashlib.sha256(data).hexdigest()


def sha256_file(path: os.PathLike[str] | str) -> str:
    """Hex SHA-256 of a file, read in 4 MiB blocks (archives, model exports)."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 22), b""):
            h.update(block)
    return h.hexdigest()


def sniff_format(data: bytes) -> str | None:
    """The accepted format named by the magic bytes, else None."""
    head = data[:16]
    if head.startswith(b"\xff\xd8\xff"):
        return "JPEG"
    if head.startswith(b"\x89PNG\r\n\x1a\n"):
        return "PNG"
    if head[:4] == b"RIFF" and head[8:12] == b"WEBP":
        return "WEBP"
    if head.startswith(b"BM"):
        return "BMP"
    if head.startswith((b"GIF87a", b"GIF89a")):
        return "GIF"
    if head.startswith((b"II*\x00", b"MM\x00*", b"II+\x00", b"MM\x00+")):
        return "TIFF"
    return None


def _open(data: bytes, limits: Limits) -> tuple[Image.Image, str]:
    """Open the header only; check size and format. Returns (image, format)."""
    if not data:
        raise ImageRejected("empty", "no bytes")
    if len(data) > limits.max_bytes:
        raise ImageRejected("too_large_bytes",
                            f"{len(data)} bytes is over the limit of {limits.max_bytes}")
    fmt = sniff_format(data)
    if fmt is None:
        _reject_unknown(data)
    try:
        with _open_lock, warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always", Image.DecompressionBombWarning)
            img = Image.open(io.BytesIO(data), formats=FORMATS[fmt])
        for w in caught:  # our own pixel limit below decides
            log.debug("pillow warned: %s", w.message)
    except Image.DecompressionBombError as exc:
        raise ImageRejected("too_many_pixels", f"{fmt} header: {exc}") from None
    except Exception as exc:
        if not _from_decoder(exc):
            raise
        raise ImageRejected("corrupt", f"{fmt} header cannot be read: {exc}") from None
    width, height = img.size
    if width * height > limits.max_pixels:
        raise ImageRejected("too_many_pixels", f"{width}x{height} = {width * height} pixels "
                                               f"is over the limit of {limits.max_pixels}")
    if min(width, height) < limits.min_side:
        raise ImageRejected("too_small", f"{width}x{height} is smaller than "
                                         f"{limits.min_side} px on a side")
    return img, fmt


def _reject_unknown(data: bytes) -> None:
    """Raise for bytes that are not an accepted format: some other image, or not one."""
    try:
        with _open_lock, warnings.catch_warnings():
            warnings.simplefilter("ignore")
            other = Image.open(io.BytesIO(data)).format
    except Image.DecompressionBombError:
        other = "an image"
    except Exception as exc:  # UnidentifiedImageError and any other decoder error
        if not _from_decoder(exc):
            raise
        other = None
    if other:
        raise ImageRejected("unsupported_format",
                            f"{other} is not accepted (accepted: {', '.join(FORMATS)})")
    raise ImageRejected("not_an_image", f"unrecognized content starting {data[:8]!r}")


def _orientation(img: Image.Image) -> int:
    """EXIF orientation (1..8) from the header, 1 when absent or unreadable."""
    try:
        if img.format == "PNG":  # PngImageFile.getexif() would decode the pixels
            raw = img.info.get("exif")
            if not raw:
                return 1
            exif = Image.Exif()
            exif.load(raw)
        else:
            exif = img.getexif()
        value = int(exif.get(_EXIF_ORIENTATION, 1))
    except Exception as exc:  # a bad EXIF block must not reject the image
        log.debug("unreadable EXIF ignored: %s", exc)
        return 1
    return value if 1 <= value <= 8 else 1


def probe(data: bytes, limits: Limits = Limits()) -> ImageInfo:  # noqa: B008 - frozen
    """Check format, byte size and dimensions from the header, without decoding pixels."""
    img, fmt = _open(data, limits)
    width, height = img.size
    if _orientation(img) in _SWAP_ORIENTATIONS:
        width, height = height, width
    return ImageInfo(fmt, width, height, img.mode)


def decode(data: bytes, limits: Limits = Limits()  # noqa: B008 - frozen
           ) -> tuple[Image.Image, ImageInfo]:
    """Fully decode ``data`` (first frame) to an oriented RGB image, or raise ImageRejected."""
    img, fmt = _open(data, limits)
    mode = img.mode
    if ImageFile.LOAD_TRUNCATED_IMAGES:
        log.warning("PIL.ImageFile.LOAD_TRUNCATED_IMAGES was True; resetting it so truncated "
                    "images are rejected")
        ImageFile.LOAD_TRUNCATED_IMAGES = False
    try:
        img.load()
    except Image.DecompressionBombError as exc:
        raise ImageRejected("too_many_pixels", str(exc)) from None
    except Exception as exc:
        if not _from_decoder(exc):
            raise
        raise ImageRejected("corrupt", f"{fmt} data cannot be decoded: {exc}") from None
    try:
        img = ImageOps.exif_transpose(img)
    except Exception as exc:  # a bad EXIF block must not reject the image
        log.debug("EXIF orientation not applied: %s", exc)
    try:
        rgb = to_rgb(img)
    except Exception as exc:
        if not _from_decoder(exc):
            raise
        raise ImageRejected("unsupported_format", f"{fmt} mode {mode}: {exc}") from None
    return rgb, ImageInfo(fmt, rgb.width, rgb.height, mode)


def to_rgb(img: Image.Image) -> Image.Image:
    """Convert any Pillow mode to RGB: alpha over white, 16-bit and float scaled to 8 bits."""
    mode = img.mode
    if mode == "RGB" and "transparency" not in img.info:
        return img
    if mode.startswith("I;16") or mode in ("I", "F"):
        return Image.fromarray(_to_uint8(np.asarray(img), mode), "L").convert("RGB")
    if "A" in mode or "a" in mode or "transparency" in img.info:
        rgba = img.convert("RGBA")
        white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(white, rgba).convert("RGB")
    return img.convert("RGB")  # 1, L, P, CMYK (Pillow handles Adobe inversion), YCbCr, ...


def _to_uint8(arr: np.ndarray, mode: str) -> np.ndarray:
    """Scale one band to 0..255: 16-bit by /257; I and F by their apparent range."""
    a = arr.astype(np.float64)
    if mode.startswith("I;16"):
        scaled = a / 257.0
    else:
        finite = a[np.isfinite(a)]
        lo, hi = (float(finite.min()), float(finite.max())) if finite.size else (0.0, 0.0)
        if mode == "F" and lo >= 0 and hi <= 1:
            scaled = a * 255.0  # float images in 0..1
        elif lo >= 0 and hi <= 255:
            scaled = a  # already 8-bit values
        elif mode == "I" and lo >= 0 and hi <= 65535:
            scaled = a / 257.0  # 16-bit values widened to 32-bit
        else:
            scaled = (a - lo) * (255.0 / (hi - lo)) if hi > lo else np.zeros_like(a)
    scaled = np.nan_to_num(scaled, nan=0.0, posinf=255.0, neginf=0.0)
    return np.clip(np.rint(scaled), 0, 255).astype(np.uint8)


_UNSAFE_CHARS = re.compile(r"[^\w.()+,=@~-]+")
_WINDOWS_RESERVED = re.compile(r"^(con|prn|aux|nul|com[0-9]|lpt[0-9])(\..*)?$", re.IGNORECASE)


def safe_name(name: str, max_len: int = 120) -> str:
    """A single safe path component from an uploaded file name.

    Keeps the last path component, drops control/format characters, replaces anything
    outside letters, digits and ``._-()+,=@~`` with ``_``, collapses ``..``, strips leading
    dots (no hidden files), avoids Windows device names, and keeps the UTF-8 length
    within ``max_len`` bytes (the extension is kept when it fits). Never empty.
    """
    if max_len < 8:
        raise ValueError("max_len must be >= 8")
    text = unicodedata.normalize("NFC", str(name))
    text = "".join(ch for ch in text if unicodedata.category(ch)[0] not in ("C", "Z")
                   or ch == " ")
    parts = [p for p in re.split(r"[/\\]", text) if p.strip()]
    text = parts[-1] if parts else ""
    text = _UNSAFE_CHARS.sub("_", text)
    text = re.sub(r"\.{2,}", ".", text).strip("._ ")
    if _WINDOWS_RESERVED.match(text):
        text = "_" + text
    text = _truncate_utf8(text, max_len).rstrip(". ")
    return text or "file"


def _truncate_utf8(text: str, max_len: int) -> str:
    """Cut ``text`` to ``max_len`` UTF-8 bytes, keeping a short extension."""
    if len(text.encode("utf-8")) <= max_len:
        return text
    stem, dot, ext = text.rpartition(".")
    if not dot or not stem or len(ext.encode("utf-8")) > 16:
        stem, ext = text, ""
    suffix = f".{ext}" if ext else ""
    budget = max_len - len(suffix.encode("utf-8"))
    cut = stem.encode("utf-8")[:budget].decode("utf-8", errors="ignore").rstrip("._ ")
    return (cut or "file")[:budget] + suffix
