"""Partial fine-tuning of EfficientNet-Lite: its last blocks and head conv, trained on
activations cached once from the block before (CPU torch, minutes per epoch).

A network is split at block ``start``: the *trunk* (stem and blocks ``[:start]``, frozen)
runs once per image, through ONNX Runtime, and its output is cached as float16
(:func:`cache_activations`); the *tail* (blocks ``[start:]``, head conv, average pool)
and an adapter :class:`~imgsim_lab.adapters.heads.Head` are then trained together on the
cache (:func:`train_tail`) with the adapter losses, the same class-stratified validation
split and early stopping as :func:`~imgsim_lab.adapters.training.train_head`. Lower
learning rate for the pretrained tail than for the new head; batch norm of the tail
trains. The cache holds ``C·H·W`` half floats per image: lite0 at 160 px entering block
11 (its last stage but one) is 112×10×10, 22 KB.

``flip`` views (activations of the mirrored image) are a second view per training
sample, drawn at random per epoch, and are averaged with the plain view at test time,
as the ``*_flip`` models do.
"""

from __future__ import annotations

import copy
import logging
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import nn
from tqdm.auto import tqdm

from imgsim_lab.adapters.heads import Head, make_loss
from imgsim_lab.adapters.training import (
    TrainConfig,
    TrainResult,
    class_indices,
    retrieval_map,
    stratified_split,
    warmup_cosine,
)
from imgsim_lab.iterutil import chunked
from imgsim_lab.models.efficientnet_lite import EfficientNetLite
from imgsim_lab.models.onnx_backend import cache_dir, export_torch, load_runner
from imgsim_lab.models.torch_nets import Embedder
from imgsim_lab.pipeline import Source, load_image

log = logging.getLogger(__name__)


class Trunk(nn.Module):
    """Stem and blocks ``[:start]`` of an EfficientNet-Lite: normalized NCHW -> activations."""

    def __init__(self, net: Any, start: int) -> None:
        super().__init__()
        self.net, self.start = net, start

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        net = self.net
        x = net._swish(net._bn0(net._conv_stem(x)))
        for block in net._blocks[: self.start]:
            x = block(x)
        return x


class Tail(nn.Module):
    """Blocks ``[start:]``, head conv and average pool: activations -> (n, 1280) features.

    Holds its own copy of those layers, so training it leaves the base network as it was.
    In training mode each block drops its residual branch at the network's own scaled
    drop-connect rate, as the package's ``extract_features`` does.
    """

    def __init__(self, net: Any, start: int) -> None:
        super().__init__()
        if not 0 <= start < len(net._blocks):
            raise ValueError(f"start must be in [0, {len(net._blocks)}), got {start}")
        self.start = start
        self.blocks = nn.ModuleList(copy.deepcopy(b) for b in net._blocks[start:])
        self.conv_head = copy.deepcopy(net._conv_head)
        self.bn1 = copy.deepcopy(net._bn1)
        self.swish = copy.deepcopy(net._swish)
        self.n_blocks = len(net._blocks)
        self.drop_connect = float(net._global_params.drop_connect_rate or 0.0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for i, block in enumerate(self.blocks):
            rate = self.drop_connect * (self.start + i) / self.n_blocks if self.training else None
            x = block(x, drop_connect_rate=rate or None)
        x = self.swish(self.bn1(self.conv_head(x)))
        return x.mean(dim=(2, 3))


def trunk_runner(model: EfficientNetLite, start: int):
    """ONNX Runtime session of the trunk of ``model`` up to block ``start`` (exported once)."""
    net = model._network()
    if not 0 < start < len(net._blocks):
        raise ValueError(f"start must be in (0, {len(net._blocks)}), got {start}")
    path = cache_dir() / f"{model.name}-{model.size}px-{model.base_version}-trunk{start}.onnx"
    meta = {"model": model.name, "version": model.version, "size": model.size, "trunk_blocks": start,
            "input": f"uint8 (n, {model.size}, {model.size}, 3)"}

    def module() -> Embedder:
        return Embedder(Trunk(net, start), model.mean, model.std, flatten=False).eval()

    return load_runner(path, export_torch(module, (2, model.size, model.size, 3)), meta,
                       model.threads, model.ort_options)


def cache_activations(model: EfficientNetLite, sources: Sequence[Source], start: int, *,
                      flip: bool = False, batch_size: int = 32, workers: int = 2,
                      progress: bool = True) -> np.ndarray:
    """Trunk activations ``(n, C, H, W)`` float16 of each source (mirrored when ``flip``)."""
    runner = trunk_runner(model, start)

    def prepare(src: Source) -> np.ndarray:
        x = model.preprocess(load_image(src))
        return np.ascontiguousarray(x[:, ::-1]) if flip else x

    out: np.ndarray | None = None
    bar = tqdm(total=len(sources), unit="img", desc=f"cache {model.key} trunk{start}"
               f"{' flip' if flip else ''}", disable=not progress)
    with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="imgsim-decode") as ex:
        pos = 0
        for batch in (list(ex.map(prepare, c)) for c in chunked(sources, batch_size)):
            acts = np.asarray(runner(np.stack(batch)))
            if out is None:
                out = np.empty((len(sources), *acts.shape[1:]), np.float16)
            out[pos:pos + len(acts)] = acts
            pos += len(acts)
            bar.update(len(acts))
    bar.close()
    if out is None:
        raise ValueError("no sources to cache")
    return out


@dataclass
class FinetuneConfig(TrainConfig):
    """Settings of one partial fine-tuning: a :class:`TrainConfig` for the head (``lr``;
    proxies x10) plus the blocks to train and their learning rate (recorded with results)."""

    blocks: int = 2               # last blocks of the network to train (with the head conv)
    tail_lr: float = 2e-4         # the pretrained blocks
    epochs: int = 8               # at most
    batch_size: int = 128
    patience: int = 3

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.blocks < 1:
            raise ValueError(f"blocks must be >= 1, got {self.blocks}")


@dataclass
class FinetuneResult(TrainResult):
    """The trained tail and head (best epoch), per-epoch history and what it took.

    ``bridge`` holds the frozen blocks between the cache's block ``start`` and the tail:
    :meth:`embed` runs them, so it takes activations cached at ``start`` like training did.
    ``tensors`` stays empty: :meth:`weights` gives the tail's and head's.
    """

    tail: Tail = field(kw_only=True)
    head: Head = field(kw_only=True)
    bridge: nn.ModuleList = field(kw_only=True)
    start: int = field(kw_only=True)
    advance_seconds: float = 0.0

    def summary(self) -> dict[str, Any]:
        return {**super().summary(), "advance_seconds": round(self.advance_seconds, 2)}

    def embed(self, acts: np.ndarray, acts_flip: np.ndarray | None = None) -> np.ndarray:
        """L2-normalized embeddings of activations cached at block ``start`` (averaged with
        the mirrored view's when ``acts_flip`` is given)."""
        def one(a: np.ndarray) -> np.ndarray:
            return embed(self.tail, self.head, _run_blocks(self.bridge, a))

        e = one(acts)
        if acts_flip is None:
            return e
        e = e + one(acts_flip)
        return e / np.maximum(np.linalg.norm(e, axis=1, keepdims=True), 1e-12)

    def weights(self) -> dict[str, np.ndarray]:
        """Tail and head weights (best epoch) as numpy arrays, for safetensors."""
        out = {f"tail.{k}": v.detach().cpu().numpy().copy() for k, v in self.tail.state_dict().items()}
        out.update({f"head.{k}": v.detach().cpu().numpy().copy() for k, v in self.head.state_dict().items()})
        return out


def advance(model: EfficientNetLite, acts: np.ndarray, start: int, stop: int) -> np.ndarray:
    """Activations cached at block ``start`` carried to block ``stop`` through the frozen
    blocks between (run once per split; :func:`train_tail` then takes ``start=stop``)."""
    return _run_blocks(model._network()._blocks[start:stop], acts)


def _run_blocks(blocks: nn.ModuleList, acts: np.ndarray, batch: int = 512) -> np.ndarray:
    """Frozen ``blocks`` over cached activations, in eval mode (float16 out)."""
    if len(blocks) == 0:
        return acts
    blocks.eval()
    parts = []
    with torch.inference_mode():
        for s in range(0, len(acts), batch):
            x = torch.from_numpy(acts[s:s + batch].astype(np.float32))
            for b in blocks:
                x = b(x)
            parts.append(x.numpy().astype(np.float16))
    return np.concatenate(parts)


def embed(tail: Tail, head: Head, acts: np.ndarray, batch: int = 512) -> np.ndarray:
    """L2-normalized head outputs of activations entering the tail (eval mode, no gradients)."""
    tail.eval()
    head.eval()
    with torch.inference_mode():  # at least one (possibly empty) batch: the output keeps its dim
        return np.concatenate([head(tail(torch.from_numpy(acts[s:s + batch].astype(np.float32)))).numpy()
                               for s in range(0, max(1, len(acts)), batch)])


def train_tail(model: EfficientNetLite, acts: np.ndarray, y: np.ndarray, start: int,
               config: FinetuneConfig | None = None, *, acts_flip: np.ndarray | None = None,
               progress: bool = True, max_val_db: int = 20000) -> FinetuneResult:
    """Train the last ``config.blocks`` blocks of ``model`` and a head on activations ``acts``
    cached at block ``start`` (blocks in between are run frozen once, first)."""
    cfg = config or FinetuneConfig()
    net = model._network()
    first = len(net._blocks) - cfg.blocks
    if first < start:
        raise ValueError(f"the cache starts at block {start}: it can train at most "
                         f"{len(net._blocks) - start} blocks, not {cfg.blocks}")
    y = np.asarray(y, np.int64)
    if len(acts) != len(y) or (acts_flip is not None and acts_flip.shape != acts.shape):
        raise ValueError(f"{len(acts)} activations, {len(y)} labels"
                         f"{'' if acts_flip is None else f', {len(acts_flip)} flipped'}: they must match")
    classes, y = class_indices(y, "fine-tuning")
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    bridge = nn.ModuleList(copy.deepcopy(b) for b in net._blocks[start:first]).requires_grad_(False)
    t_adv = time.perf_counter()
    acts = _run_blocks(bridge, acts)
    acts_flip = _run_blocks(bridge, acts_flip) if acts_flip is not None else None
    advance_s = time.perf_counter() - t_adv
    torch.manual_seed(cfg.seed)
    rng = np.random.default_rng(cfg.seed)
    fit, val = stratified_split(y, cfg.val_fraction, cfg.seed)
    db_rows = fit if len(fit) <= max_val_db else np.sort(rng.choice(fit, max_val_db, replace=False))
    tail = Tail(net, first)
    head = Head(cfg.kind, 1280, cfg.dim, cfg.hidden, cfg.dropout)
    loss_fn = make_loss(cfg.loss, len(classes), cfg.dim, **cfg.loss_options())
    groups = [{"params": tail.parameters(), "lr": cfg.tail_lr}, {"params": head.parameters()}]
    if list(loss_fn.parameters()):
        groups.append({"params": loss_fn.parameters(), "lr": cfg.lr * 10, "weight_decay": 0.0})
    opt = torch.optim.AdamW(groups, lr=cfg.lr, weight_decay=cfg.weight_decay)
    steps = max(1, len(fit) // cfg.batch_size)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, warmup_cosine(cfg.epochs * steps))
    xt, yt = torch.from_numpy(acts), torch.from_numpy(y)
    xft = torch.from_numpy(acts_flip) if acts_flip is not None else None
    res = FinetuneResult(tail=tail, head=head, bridge=bridge, start=start, n_fit=len(fit), n_val=len(val),
                         advance_seconds=advance_s)
    best: tuple[dict, dict] | None = None
    bad = 0
    t0 = time.perf_counter()
    bar = tqdm(range(cfg.epochs), desc=f"fine-tune {cfg.blocks} blocks", unit="epoch",
               disable=not progress)
    for epoch in bar:
        tail.train()
        head.train()
        order = torch.from_numpy(rng.permutation(fit))
        total, seen = 0.0, 0
        for s in tqdm(range(steps), desc=f"epoch {epoch + 1}", unit="step", leave=False,
                      disable=not progress):
            idx = order[s * cfg.batch_size:(s + 1) * cfg.batch_size]
            xb = xt[idx]
            if xft is not None:
                swap = torch.from_numpy(rng.random(len(idx)) < 0.5)
                xb = torch.where(swap[:, None, None, None], xft[idx], xb)
            loss = loss_fn(head(tail(xb.float())), yt[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            total += float(loss.detach()) * len(idx)
            seen += len(idx)
        val_map = retrieval_map(embed(tail, head, acts[db_rows]), y[db_rows],
                                embed(tail, head, acts[val]), y[val])
        res.history.append({"epoch": epoch + 1, "train_loss": total / max(1, seen),
                            "val_mAP@100": val_map, "seconds": time.perf_counter() - t0})
        bar.set_postfix(loss=f"{total / max(1, seen):.4f}", val_map=f"{val_map:.4f}", refresh=False)
        log.info("epoch %d: loss %.4f, val mAP@100 %.4f, %.0f s", epoch + 1, total / max(1, seen),
                 val_map, time.perf_counter() - t0)
        if val_map > res.best_val_map:
            res.best_val_map, res.best_epoch, bad = val_map, epoch + 1, 0
            best = (copy.deepcopy(tail.state_dict()), copy.deepcopy(head.state_dict()))
        else:
            bad += 1
            if bad >= cfg.patience:
                res.stopped_early = True
                break
    bar.close()
    if best is not None:
        tail.load_state_dict(best[0])
        head.load_state_dict(best[1])
    tail.eval()
    head.eval()
    res.seconds = time.perf_counter() - t0
    return res
