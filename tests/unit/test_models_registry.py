"""Registry, keys, baselines, the pipeline's embed and prefetch stages (no pretrained weights)."""

from __future__ import annotations

import io
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from imgsim_lab.models import (
    EmbeddingModel,
    ModelUnavailableError,
    available_models,
    get_model,
    register,
)
from imgsim_lab.models.base import make_key
from imgsim_lab.models.registry import clear_cache
from imgsim_lab.pipeline import EmbedOptions, embed_all, embed_stream, prefetch


def _img(seed: int, size: tuple[int, int] = (32, 32)) -> Image.Image:
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8))


def _solid(rgb: tuple[int, int, int]) -> Image.Image:
    return Image.new("RGB", (32, 32), rgb)


def test_builtin_names_registered():
    names = available_models()
    for n in ("efficientnet_lite0", "efficientnet_lite1", "efficientnet_lite2", "resnet18",
              "resnet50", "pixels", "color_hist"):
        assert n in names
    offline = available_models(offline_only=True)
    assert {"pixels", "color_hist"} <= set(offline) <= set(names)


def test_unknown_model_lists_choices():
    with pytest.raises(KeyError, match="pixels"):
        get_model("no_such_model")


def test_key_rules():
    assert make_key("pixels", 32, 32) == "pixels"
    assert make_key("pixels", 16, 32) == "pixels_16px"
    with pytest.raises(ValueError):
        make_key("bad name", 32, 32)


def test_get_model_caches_per_name_and_size():
    a = get_model("pixels")
    assert get_model("pixels") is a
    assert get_model("pixels", size=32) is a
    b = get_model("pixels", size=16)
    assert b is not a and b.key == "pixels_16px" and b.dim == 3 * 16 * 16
    assert a.key == "pixels" and a.size == a.default_size == 32 and a.dim == 3072


def test_register_decorator_and_function():
    class Const(EmbeddingModel):
        name, version, dim, default_size = "test_const", "c1", 4, 8

        def preprocess(self, img):
            return np.ones(4, np.float32)

        def _forward(self, batch):
            return batch

    @register("test_const")
    def make(size=None):
        return Const(size)

    try:
        m = get_model("test_const")
        assert "test_const" in available_models(offline_only=True)
        v = m.embed_images([_img(0), _img(1)])
        np.testing.assert_allclose(v, 0.5)
        register("test_const", lambda size=None: Const(size), available=lambda: False)
        assert "test_const" not in available_models(offline_only=True)
        assert get_model("test_const") is not m  # re-registration drops cached builds
    finally:
        from imgsim_lab.models import registry

        registry._REGISTRY.pop("test_const", None)
        clear_cache()


@pytest.mark.parametrize("name", ["pixels", "color_hist"])
def test_baseline_contract(name):
    m = get_model(name)
    imgs = [_img(i) for i in range(5)] + [_img(9, (50, 20)), Image.new("L", (40, 40), 7)]
    v = m.embed_images(imgs, batch_size=3)
    assert v.dtype == np.float32 and v.shape == (len(imgs), m.dim)
    np.testing.assert_allclose(np.linalg.norm(v, axis=1)[:-1], 1.0, rtol=1e-5)
    again = m.embed_batch(np.stack([m.preprocess(i) for i in imgs]))
    np.testing.assert_array_equal(v, again)
    assert m.version and m.key == name


def test_pixels_ignores_brightness_offset_and_is_3072d():
    m = get_model("pixels")
    a = np.asarray(_img(3), dtype=np.int16)
    brighter = Image.fromarray(np.clip(a // 2 + 60, 0, 255).astype(np.uint8))
    darker = Image.fromarray(np.clip(a // 2 + 10, 0, 255).astype(np.uint8))
    v = m.embed_images([brighter, darker, _img(4)])
    assert m.dim == 3072
    assert v[0] @ v[1] > 0.999
    assert abs(v[0] @ v[2]) < 0.2


def test_color_hist_similarity_is_bhattacharyya():
    m = get_model("color_hist")
    assert m.dim == 512
    red, red2, blue = _solid((250, 5, 5)), _solid((240, 10, 10)), _solid((5, 5, 250))
    half = Image.new("RGB", (32, 32), (250, 5, 5))
    half.paste(_solid((5, 5, 250)).crop((0, 0, 32, 16)), (0, 0))
    v = m.embed_images([red, red2, blue, half])
    assert v[0] @ v[1] == pytest.approx(1.0)
    assert v[0] @ v[2] == pytest.approx(0.0)
    assert v[0] @ v[3] == pytest.approx(np.sqrt(0.5), rel=1e-5)


def test_runner_sources_order_and_failures(tmp_path: Path):
    m = get_model("pixels")
    imgs = [_img(i) for i in range(7)]
    p = tmp_path / "a.png"
    imgs[1].save(p)
    buf = io.BytesIO()
    imgs[2].save(buf, format="PNG")
    items = [("img", imgs[0]), ("path", p), ("str", str(p)), ("bytes", buf.getvalue()),
             ("loader", lambda: imgs[3]), ("broken", b"not an image"), ("last", imgs[4])]
    batches = list(embed_stream(m, items, batch_size=3, workers=2))
    assert [len(b.keys) + len(b.failed) for b in batches] == [3, 3, 1]
    keys, vecs, failed = embed_all(m, items, batch_size=2)
    assert keys == ["img", "path", "str", "bytes", "loader", "last"]
    assert [k for k, _ in failed] == ["broken"]
    ref = m.embed_images([imgs[0], imgs[1], imgs[1], imgs[2], imgs[3], imgs[4]])
    np.testing.assert_allclose(vecs, ref, atol=1e-6)
    with pytest.raises(Exception):  # noqa: B017 - PIL's UnidentifiedImageError
        list(embed_stream(m, items, on_error="raise"))


def test_runner_empty_and_bad_batch_size():
    m = get_model("color_hist")
    assert list(embed_stream(m, [])) == []
    assert m.embed_images([]).shape == (0, 512)
    with pytest.raises(ValueError):
        list(embed_stream(m, [("a", _img(0))], batch_size=0))


def test_torchvision_without_weights_says_how(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    monkeypatch.delenv("IMGSIM_WEIGHTS_RESNET50", raising=False)
    assert "resnet50" not in available_models(offline_only=True)
    with pytest.raises(ModelUnavailableError) as exc:
        get_model("resnet50")
    msg = str(exc.value)
    assert "resnet50-11ad3fa6.pth" in msg and "IMGSIM_WEIGHTS_RESNET50" in msg
    assert "download.pytorch.org" in msg and str(tmp_path / "torch") in msg
    monkeypatch.setenv("IMGSIM_WEIGHTS_RESNET50", str(tmp_path / "missing.pth"))
    with pytest.raises(ModelUnavailableError, match="not a file"):
        get_model("resnet50")


def test_embed_options_object_and_keywords():
    m = get_model("pixels")
    items = [(i, _img(i)) for i in range(5)]
    a = [len(b.keys) for b in embed_stream(m, items, EmbedOptions(batch_size=2, workers=1))]
    b = [len(b.keys) for b in embed_stream(m, items, EmbedOptions(batch_size=4), batch_size=2)]
    assert a == b == [2, 2, 1]
    with pytest.raises(TypeError, match="bogus"):
        list(embed_stream(m, items, bogus=1))
    with pytest.raises(ValueError, match="on_error"):
        EmbedOptions(on_error="ignore")


def test_prefetch_runs_ahead_in_order_and_reraises():
    produced = []

    def gen():
        for i in range(10):
            produced.append(i)
            yield i

    p = prefetch(gen(), depth=2)
    deadline = time.time() + 5
    while len(produced) < 3 and time.time() < deadline:  # started before iteration
        time.sleep(0.01)
    assert 3 <= len(produced) <= 4  # depth items queued + one being handed over
    assert list(p) == list(range(10))

    def bad():
        yield 1
        raise RuntimeError("producer broke")

    it = iter(prefetch(bad()))
    assert next(it) == 1
    with pytest.raises(RuntimeError, match="producer broke"):
        next(it)


def test_prefetch_close_stops_the_producer():
    stop = threading.Event()

    def endless():
        i = 0
        while not stop.is_set():
            yield i
            i += 1

    p = prefetch(endless(), depth=1)
    it = iter(p)
    assert [next(it) for _ in range(3)] == [0, 1, 2]
    p.close()
    assert not p._thread.is_alive()
    stop.set()


def test_models_and_pipeline_import_without_torch():
    code = ("import sys; import imgsim_lab.models, imgsim_lab.pipeline, imgsim_lab.ingest; "
            "from imgsim_lab.models import get_model, available_models; "
            "from PIL import Image; available_models(offline_only=True); "
            "get_model('color_hist').embed_images([Image.new('RGB', (32, 32))]); "
            "bad = [m for m in ('torch', 'onnxruntime') if m in sys.modules]; "
            "assert not bad, bad")
    subprocess.run([sys.executable, "-c", code], check=True, env={"TORCH_HOME": "/nonexistent",
                                                                    "PATH": "/usr/bin:/bin",
                                                                    **_pythonpath()})


def _pythonpath() -> dict[str, str]:
    import os

    return {"PYTHONPATH": os.environ["PYTHONPATH"]} if "PYTHONPATH" in os.environ else {}
