"""torchvision models from a local state dict (randomly initialized here: no internet)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torchvision import models as tvm

from imgsim_lab.models import ModelUnavailableError, available_models, get_model
from imgsim_lab.models.registry import clear_cache


@pytest.fixture(scope="module")
def resnet18_file(tmp_path_factory) -> Path:
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("weights") / "resnet18-f37072fd.pth"
    torch.save(tvm.resnet18().state_dict(), path)
    return path


@pytest.fixture(autouse=True)
def _isolated(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch_home"))
    for n in ("RESNET18", "RESNET50"):
        monkeypatch.delenv(f"IMGSIM_WEIGHTS_{n}", raising=False)
    clear_cache()
    yield
    clear_cache()


def _check_embeds(m, dim: int) -> None:
    rng = np.random.default_rng(0)
    imgs = [Image.fromarray(rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)) for _ in range(3)]
    v = m.embed_images(imgs, batch_size=2)
    assert v.shape == (3, dim) and v.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(v, axis=1), 1.0, rtol=1e-5)
    np.testing.assert_allclose(m.embed_images(imgs), v, atol=1e-5)


def test_env_var(resnet18_file, monkeypatch):
    assert "resnet18" not in available_models(offline_only=True)
    with pytest.raises(ModelUnavailableError, match="IMGSIM_WEIGHTS_RESNET18"):
        get_model("resnet18")
    monkeypatch.setenv("IMGSIM_WEIGHTS_RESNET18", str(resnet18_file))
    assert "resnet18" in available_models(offline_only=True)
    m = get_model("resnet18", size=64)
    assert (m.dim, m.default_size, m.key) == (512, 224, "resnet18_64px")
    assert m.version.startswith("resnet18-f37072fd-")
    _check_embeds(m, 512)


def test_torch_cache_dir_and_option(resnet18_file, tmp_path):
    ckpt = tmp_path / "torch_home" / "hub" / "checkpoints"
    ckpt.mkdir(parents=True)
    (ckpt / resnet18_file.name).write_bytes(resnet18_file.read_bytes())
    a = get_model("resnet18", size=32)
    b = get_model("resnet18", size=32, weights=str(resnet18_file))
    assert a.version == b.version  # same bytes -> same version
    _check_embeds(a, 512)


def test_resnet50_2048d(tmp_path, monkeypatch):
    path = tmp_path / "resnet50-random.pth"
    torch.save(tvm.resnet50().state_dict(), path)
    monkeypatch.setenv("IMGSIM_WEIGHTS_RESNET50", str(path))
    m = get_model("resnet50", size=32)
    assert m.dim == 2048 and m.key == "resnet50_32px"
    _check_embeds(m, 2048)


def test_wrong_state_dict_is_unavailable(resnet18_file):
    with pytest.raises(ModelUnavailableError, match="not a resnet50 state dict"):
        get_model("resnet50", weights=str(resnet18_file))


def _cifar_or_random(n: int = 8) -> list[Image.Image]:
    root = Path("data/cifar10/test")
    files = sorted(root.glob("*/*.jpg"))[::211][:n] if root.is_dir() else []
    if files:
        return [Image.open(f).convert("RGB") for f in files]
    rng = np.random.default_rng(1)
    return [Image.fromarray(rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)) for _ in range(n)]


@pytest.mark.slow
@pytest.mark.parametrize("arch", ["resnet18", "resnet34", "resnet50", "resnet101", "efficientnet_b0",
                                  "mobilenet_v3_large", "convnext_tiny"])
def test_onnxruntime_matches_torch(arch, tmp_path, monkeypatch):
    """Every torchvision architecture, random weights: ONNX Runtime = torch (min cosine >= 0.9999).

    Freshly initialized EfficientNet/MobileNet features are ~1e-13 (pure rounding noise), so
    the BatchNorm statistics are first estimated on the test images (train-mode passes),
    which gives features of normal scale that differ between images.
    """
    imgs = _cifar_or_random()
    torch.manual_seed(0)
    net = tvm.get_model(arch)
    x = torch.stack([torch.from_numpy(np.asarray(i.resize((64, 64)), np.float32)).permute(2, 0, 1)
                     for i in imgs]) / 255.0
    x = (x - torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)) / torch.tensor(
        [0.229, 0.224, 0.225]).view(1, 3, 1, 1)
    for mod in net.modules():
        if isinstance(mod, torch.nn.modules.batchnorm._BatchNorm):
            mod.momentum = None  # cumulative average
    net.train()
    with torch.no_grad():
        for _ in range(2):
            net(x)
    path = tmp_path / f"{arch}-random.pth"
    torch.save(net.eval().state_dict(), path)
    monkeypatch.setenv("IMGSIM_ONNX_CACHE", str(tmp_path / "onnx"))
    ort = get_model(arch, size=64, weights=str(path))
    ref = get_model(arch, size=64, weights=str(path), backend="torch")
    assert (ort.backend, ref.backend) == ("onnxruntime", "torch") and ort.version == ref.version
    a, b = ort.embed_images(imgs), ref.embed_images(imgs)
    assert (a @ a.T).min() < 0.9999  # the images do get different vectors
    assert (a * b).sum(1).min() >= 0.9999


def test_onnx_cache_reexports_missing_or_corrupt(resnet18_file, tmp_path, monkeypatch):
    from imgsim_lab.models import onnx_backend

    monkeypatch.setenv("IMGSIM_ONNX_CACHE", str(tmp_path / "onnx"))
    imgs = _cifar_or_random(3)
    m = get_model("resnet18", size=32, weights=str(resnet18_file))
    ref = m.embed_images(imgs)
    path = m.onnx_path()
    assert path.parent == tmp_path / "onnx" and onnx_backend.is_valid(path)
    good = path.read_bytes()
    for damage in ("flip", "truncate", "manifest"):
        if damage == "flip":
            data = bytearray(good)
            data[len(data) // 2] ^= 0xFF
            path.write_bytes(bytes(data))
        elif damage == "truncate":
            path.write_bytes(good[: len(good) // 3])
        else:
            onnx_backend.manifest_path(path).unlink()
        assert not onnx_backend.is_valid(path)
        clear_cache()
        again = get_model("resnet18", size=32, weights=str(resnet18_file))
        np.testing.assert_allclose(again.embed_images(imgs), ref, atol=1e-5)
        assert onnx_backend.is_valid(path), damage
