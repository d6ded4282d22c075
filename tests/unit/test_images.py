"""Validation and decoding of untrusted image bytes, against a generated corpus."""

from __future__ import annotations

import io
import pickle
import random
import struct
import time
import zlib

import numpy as np
import pytest
from PIL import Image

from imgsim_lab.images import (
    REASONS,
    ImageInfo,
    ImageRejected,
    Limits,
    decode,
    probe,
    safe_name,
    sha256_hex,
)

RED, GREEN, BLUE, WHITE = (255, 0, 0), (0, 255, 0), (0, 0, 255), (255, 255, 255)


def encode(img: Image.Image, fmt: str, **kw) -> bytes:
    buf = io.BytesIO()
    img.save(buf, fmt, **kw)
    return buf.getvalue()


def noise(size: tuple[int, int] = (64, 48), seed: int = 0) -> Image.Image:
    arr = np.random.default_rng(seed).integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)
    return Image.fromarray(arr, "RGB")


def png_chunk(kind: bytes, payload: bytes) -> bytes:
    return struct.pack(">I", len(payload)) + kind + payload + struct.pack(
        ">I", zlib.crc32(kind + payload))


def png_declaring(width: int, height: int) -> bytes:
    """A tiny valid-looking PNG whose header declares ``width`` x ``height`` RGB pixels."""
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + png_chunk(b"IHDR", ihdr)
            + png_chunk(b"IDAT", zlib.compress(b"\0" * 64)) + png_chunk(b"IEND", b""))


def rejected(data: bytes, limits: Limits = Limits()) -> str:  # noqa: B008
    """The reason ``decode`` rejects ``data`` with (fails if it is accepted)."""
    with pytest.raises(ImageRejected) as info:
        decode(data, limits)
    assert info.value.reason in REASONS
    assert str(info.value) == f"{info.value.reason}: {info.value.detail}"
    return info.value.reason


def pixel(img: Image.Image, xy: tuple[int, int]) -> tuple[int, ...]:
    return tuple(img.getpixel(xy))


def close(a: tuple[int, ...], b: tuple[int, ...], tol: int) -> bool:
    return all(abs(x - y) <= tol for x, y in zip(a, b, strict=True))


# --------------------------------------------------------------------------- bad inputs

BAD = {
    "empty file": (lambda: b"", "empty"),
    "text named .jpg": (lambda: b"this is not a photo\n" * 10, "not_an_image"),
    "random bytes": (lambda: random.Random(1).randbytes(4096), "not_an_image"),
    "pdf": (lambda: b"%PDF-1.4\n%\xe2\xe3\xcf\xd3\n1 0 obj\n<<>>\nendobj\n", "not_an_image"),
    "truncated jpeg": (lambda: encode(noise(), "JPEG")[:1500], "corrupt"),
    "truncated png": (lambda: encode(noise(), "PNG")[:3000], "corrupt"),
    "jpeg magic only": (lambda: b"\xff\xd8\xff\xe0" + b"\0" * 40, "corrupt"),
    "1x1 png": (lambda: encode(Image.new("RGB", (1, 1)), "PNG"), "too_small"),
    "7x200 png": (lambda: encode(Image.new("RGB", (7, 200)), "PNG"), "too_small"),
    "ppm": (lambda: encode(noise(), "PPM"), "unsupported_format"),
    "ico": (lambda: encode(noise((32, 32)), "ICO"), "unsupported_format"),
    "tga": (lambda: encode(noise(), "TGA"), "unsupported_format"),
    "64M pixel header": (lambda: png_declaring(8000, 8000), "too_many_pixels"),
    "100M pixel header (pillow warns)": (lambda: png_declaring(10000, 10000), "too_many_pixels"),
    "10G pixel header (pillow raises)": (lambda: png_declaring(100000, 100000),
                                         "too_many_pixels"),
}


@pytest.mark.parametrize("name", list(BAD))
def test_bad_inputs_are_rejected_with_reason(name: str) -> None:
    make, reason = BAD[name]
    data = make()
    assert rejected(data) == reason
    try:
        probe(data)
    except ImageRejected as exc:
        assert exc.reason == reason
    else:  # probe reads the header only, so it may accept what a full decode finds corrupt
        assert reason == "corrupt"


def test_decompression_bomb_rejected_from_header_fast() -> None:
    data = png_declaring(100_000, 100_000)
    t0 = time.perf_counter()
    for _ in range(20):
        assert rejected(data) == "too_many_pixels"
    assert (time.perf_counter() - t0) / 20 < 0.05
    with pytest.raises(ImageRejected, match="too_many_pixels"):
        probe(data)


@pytest.mark.parametrize("fraction", [0.02, 0.1, 0.3, 0.5, 0.7, 0.9, 0.99])
@pytest.mark.parametrize("fmt", ["JPEG", "PNG", "WEBP", "GIF", "BMP", "TIFF"])
def test_truncated_files_are_rejected(fmt: str, fraction: float) -> None:
    data = encode(noise((96, 96), seed=3), fmt)
    assert rejected(data[: max(1, int(len(data) * fraction))]) in ("corrupt", "not_an_image")


def fuzz_format(fmt: str, n: int) -> dict[str, int]:
    """Decode ``n`` mutations of one valid file: each ends as a valid RGB image or as one of
    the declared reason codes; anything else (our own bug) propagates and fails the test."""
    good = encode(noise((40, 40), seed=5), fmt)
    rng = random.Random(fmt)
    outcomes: dict[str, int] = {}
    for _ in range(n):
        data = bytearray(good)
        for _ in range(rng.randint(1, 8)):
            op = rng.random()
            pos = rng.randrange(len(data))
            if op < 0.7:
                data[pos] = rng.randrange(256)
            elif op < 0.85:
                del data[pos : pos + rng.randint(1, 16)]
            else:
                data[pos:pos] = bytes(rng.randrange(256) for _ in range(rng.randint(1, 8)))
        try:
            img, info = decode(bytes(data))
        except ImageRejected as exc:
            assert exc.reason in REASONS, exc.reason
            outcomes[exc.reason] = outcomes.get(exc.reason, 0) + 1
            continue
        assert img.mode == "RGB" and img.size == (info.width, info.height)
        assert min(img.size) >= 8
        outcomes["decoded"] = outcomes.get("decoded", 0) + 1
    return outcomes


def _check_outcomes(fmt: str, outcomes: dict[str, int], n: int) -> None:
    assert sum(outcomes.values()) == n
    if fmt == "PNG":  # every chunk carries a CRC-32: any changed byte is rightly corrupt
        assert outcomes.get("corrupt", 0) >= n // 2, outcomes
        return
    # a decoder that rejects everything would pass a weaker test: most single-byte
    # changes land in pixel data, so some mutations must still decode
    assert outcomes.get("decoded", 0) >= n // 50, (fmt, outcomes)


@pytest.mark.parametrize("fmt", ["JPEG", "PNG", "WEBP", "GIF", "BMP", "TIFF"])
def test_mutated_bytes_never_raise_anything_else(fmt: str) -> None:
    _check_outcomes(fmt, fuzz_format(fmt, 300), 300)


@pytest.mark.slow
@pytest.mark.parametrize("fmt", ["JPEG", "PNG", "WEBP", "GIF", "BMP", "TIFF"])
def test_ten_thousand_mutations_per_format(fmt: str) -> None:
    _check_outcomes(fmt, fuzz_format(fmt, 10_000), 10_000)


def test_our_own_bugs_are_not_reported_as_corrupt_images(monkeypatch) -> None:
    """Only decoder exceptions become rejections: a bug in our code propagates."""
    import imgsim_lab.images as images

    def broken(img):
        raise KeyError("a bug in to_rgb")

    monkeypatch.setattr(images, "to_rgb", broken)
    with pytest.raises(KeyError, match="a bug in to_rgb"):
        decode(encode(noise((40, 40)), "PNG"))


def test_limits_are_configurable() -> None:
    data = encode(noise((64, 48)), "PNG")
    assert rejected(data, Limits(max_bytes=len(data) - 1)) == "too_large_bytes"
    assert rejected(data, Limits(max_pixels=64 * 48 - 1)) == "too_many_pixels"
    assert rejected(data, Limits(min_side=49)) == "too_small"
    assert decode(data, Limits(max_bytes=len(data), max_pixels=64 * 48, min_side=48))
    with pytest.raises(ValueError):
        Limits(max_bytes=0)


def test_rejection_pickles_and_is_a_value_error() -> None:
    exc = ImageRejected("corrupt", "broken")
    again = pickle.loads(pickle.dumps(exc))
    assert (again.reason, again.detail, str(again)) == ("corrupt", "broken", "corrupt: broken")
    assert isinstance(again, ValueError)
    with pytest.raises(ValueError):
        ImageRejected("nope", "unknown reason")


# --------------------------------------------------------------------------- good inputs


@pytest.mark.parametrize("fmt, kw", [("JPEG", {"quality": 95}), ("PNG", {}),
                                     ("WEBP", {"lossless": True}), ("BMP", {}),
                                     ("GIF", {}), ("TIFF", {})])
def test_formats_recognized_by_content(fmt: str, kw: dict) -> None:
    img = Image.new("RGB", (20, 10), RED)
    img.paste(BLUE, (10, 0, 20, 10))
    data = encode(img, fmt, **kw)
    info = probe(data)
    assert info == ImageInfo(fmt.upper(), 20, 10, info.mode)
    out, dinfo = decode(data)
    assert out.mode == "RGB" and out.size == (20, 10)
    assert dinfo.format == fmt.upper()
    assert close(pixel(out, (2, 5)), RED, 8) and close(pixel(out, (17, 5)), BLUE, 8)


def test_cmyk_jpeg_becomes_right_rgb() -> None:
    img = Image.new("CMYK", (16, 16), (0, 255, 255, 0))  # red
    img.paste((255, 0, 255, 0), (8, 0, 16, 16))  # green
    out, info = decode(encode(img, "JPEG", quality=95))
    assert info.mode == "CMYK"
    assert close(pixel(out, (2, 8)), RED, 12) and close(pixel(out, (13, 8)), GREEN, 12)


def test_16_bit_png_is_scaled_not_clipped() -> None:
    arr = np.array([[0, 257 * 64, 257 * 128, 65535]] * 8, dtype=np.uint16).repeat(4, axis=1)
    data = encode(Image.fromarray(arr), "PNG")
    out, info = decode(data)
    assert info.mode.startswith("I;16")
    row = [pixel(out, (x, 0)) for x in (0, 4, 8, 12)]
    assert row == [(0, 0, 0), (64, 64, 64), (128, 128, 128), (255, 255, 255)]


@pytest.mark.parametrize("values, expected", [
    (np.array([0, 1000, 65535], dtype=np.int32), [0, 4, 255]),  # 16-bit range in I
    (np.array([0, 128, 255], dtype=np.int32), [0, 128, 255]),  # 8-bit range in I
])
def test_int32_tiff(values: np.ndarray, expected: list[int]) -> None:
    arr = np.repeat(values[None, :], 8, axis=0).repeat(4, axis=1)
    out, info = decode(encode(Image.fromarray(arr, "I"), "TIFF"))
    assert info.mode == "I"
    assert [pixel(out, (x, 0))[0] for x in (0, 4, 8)] == expected


def test_float_tiff_in_unit_range() -> None:
    arr = np.repeat(np.array([[0.0, 0.5, 1.0]], dtype=np.float32), 8, axis=0).repeat(4, axis=1)
    out, info = decode(encode(Image.fromarray(arr, "F"), "TIFF"))
    assert info.mode == "F"
    assert [pixel(out, (x, 0))[0] for x in (0, 4, 8)] == [0, 128, 255]


def test_animated_gif_gives_first_frame() -> None:
    frames = [Image.new("RGB", (16, 16), c) for c in (RED, GREEN, BLUE)]
    data = encode(frames[0], "GIF", save_all=True, append_images=frames[1:], duration=50)
    assert Image.open(io.BytesIO(data)).n_frames == 3
    out, info = decode(data)
    assert info.format == "GIF" and pixel(out, (8, 8)) == RED


def test_exif_orientation_6_rotates() -> None:
    img = Image.new("RGB", (40, 20), RED)
    img.paste(BLUE, (20, 0, 40, 20))  # left red, right blue
    exif = Image.Exif()
    exif[0x0112] = 6  # display rotated 90 degrees clockwise
    data = encode(img, "JPEG", quality=95, exif=exif.tobytes())
    assert (probe(data).width, probe(data).height) == (20, 40)
    out, info = decode(data)
    assert out.size == (20, 40) and (info.width, info.height) == (20, 40)
    assert close(pixel(out, (10, 5)), RED, 10)  # the left edge is now the top
    assert close(pixel(out, (10, 35)), BLUE, 10)


def test_palette_png_with_transparency_on_white() -> None:
    img = Image.new("P", (16, 16), 0)
    img.putpalette([0, 0, 0, 255, 0, 0] + [0] * 762)
    img.paste(1, (8, 0, 16, 16))
    out, info = decode(encode(img, "PNG", transparency=0))
    assert info.mode == "P"
    assert pixel(out, (2, 2)) == WHITE and pixel(out, (12, 2)) == RED


@pytest.mark.parametrize("fmt", ["PNG", "WEBP", "TIFF"])
def test_rgba_composited_on_white(fmt: str) -> None:
    img = Image.new("RGBA", (16, 16), (0, 0, 0, 0))
    img.paste((255, 0, 0, 128), (8, 0, 16, 16))
    kw = {"lossless": True} if fmt == "WEBP" else {}
    out, info = decode(encode(img, fmt, **kw))
    assert info.mode == "RGBA"
    assert pixel(out, (2, 2)) == WHITE
    assert close(pixel(out, (12, 2)), (255, 127, 127), 2)


@pytest.mark.parametrize("mode, value, expected", [
    ("1", 1, WHITE), ("L", 77, (77, 77, 77)), ("LA", (77, 0), WHITE), ("LA", (77, 255), (77,) * 3),
])
def test_grey_modes(mode: str, value, expected: tuple[int, int, int]) -> None:
    out, info = decode(encode(Image.new(mode, (9, 9), value), "PNG"))
    assert info.mode == mode and pixel(out, (4, 4)) == expected


def test_probe_is_cheap_and_sha256() -> None:
    data = encode(noise((800, 600)), "PNG")
    assert probe(data) == ImageInfo("PNG", 800, 600, "RGB")
    assert sha256_hex(b"abc").startswith("ba7816bf")


# --------------------------------------------------------------------------- safe_name


@pytest.mark.parametrize("raw, expected", [
    ("photo.jpg", "photo.jpg"),
    ("../../etc/passwd", "passwd"),
    ("..\\..\\windows\\system.ini", "system.ini"),
    ("C:\\Users\\me\\My Photo.JPG", "My_Photo.JPG"),
    ("a\x00b.png", "ab.png"),
    ("evil\r\nname\t.gif", "evilname.gif"),
    ("..", "file"),
    ("", "file"),
    ("   ", "file"),
    ("/", "file"),
    (".hidden", "hidden"),
    ("a..b....jpg", "a.b.jpg"),
    ("con.jpg", "_con.jpg"),
    ("\u202egpj.exe", "gpj.exe"),
    ("café.png", "café.png"),
])
def test_safe_name(raw: str, expected: str) -> None:
    assert safe_name(raw) == expected


@pytest.mark.parametrize("raw", ["x" * 10_000, "x" * 10_000 + ".jpeg", "é" * 10_000 + ".png",
                                 "../" * 5000, "\x00" * 10_000, "a/" * 3000 + "b" * 9000])
def test_safe_name_bounded_single_component(raw: str) -> None:
    out = safe_name(raw)
    assert out and len(out.encode("utf-8")) <= 120
    assert "/" not in out and "\\" not in out and ".." not in out and "\x00" not in out
    assert not out.startswith(".") and out.isprintable()
    if raw.endswith((".jpeg", ".png")):
        assert out.endswith(raw[raw.rindex("."):])
    assert len(safe_name(raw, max_len=20).encode("utf-8")) <= 20


def test_big_endian_16_bit_tiff_and_cmyk_tiff() -> None:
    raw = np.array([0, 1000, 65535] * 8 * 3, dtype=">u2").tobytes()
    out, info = decode(encode(Image.frombytes("I;16B", (9, 8), raw), "TIFF"))
    assert info.mode == "I;16B" and [pixel(out, (x, 0))[0] for x in (0, 1, 2)] == [0, 4, 255]
    out, info = decode(encode(Image.new("CMYK", (9, 9), (255, 0, 255, 0)), "TIFF"))
    assert info.mode == "CMYK" and pixel(out, (4, 4)) == GREEN


def test_rgb_png_with_colour_key_transparency() -> None:
    img = Image.new("RGB", (16, 16), (0, 0, 0))
    img.paste(RED, (8, 0, 16, 16))
    out, _ = decode(encode(img, "PNG", transparency=(0, 0, 0)))
    assert pixel(out, (2, 2)) == WHITE and pixel(out, (12, 2)) == RED


def test_concurrent_decodes_agree() -> None:
    from concurrent.futures import ThreadPoolExecutor

    corpus = [encode(noise((64, 64), seed=i), fmt) for i, fmt in enumerate(["PNG", "BMP"] * 8)]
    corpus.append(png_declaring(100_000, 100_000))
    expected = [np.asarray(decode(d)[0]).tobytes() for d in corpus[:-1]]

    def run(data: bytes) -> bytes | str:
        try:
            return np.asarray(decode(data)[0]).tobytes()
        except ImageRejected as exc:
            return exc.reason

    with ThreadPoolExecutor(4) as pool:
        got = list(pool.map(run, corpus * 4))
    assert got == (expected + ["too_many_pixels"]) * 4
