"""Training an adapter head on arrays of base vectors and labels (CPU torch, minutes).

``train_head(x, y)`` holds out a seeded, class-stratified validation split of the training
records, trains with AdamW and a cosine learning-rate schedule, evaluates retrieval on the
validation split after every epoch (mAP@100 of validation queries against the rest) and
stops early when it has not improved for ``patience`` epochs, keeping the best epoch's
weights. ``x_alt`` (e.g. the vectors of horizontally flipped images) is a second view of
each training vector, drawn at random per sample and epoch.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm

from imgsim_lab import evaluation as ev
from imgsim_lab.adapters.heads import HEAD_KINDS, LOSSES, Head, make_loss

log = logging.getLogger(__name__)


@dataclass
class TrainConfig:
    """Settings of one adapter training (all recorded in the adapter's spec)."""

    kind: str = "mlp"              # linear | mlp
    dim: int = 256                 # output dimension
    hidden: int = 1024             # MLP hidden width
    loss: str = "cos_softmax"      # cos_softmax | proxy_anchor | supcon
    epochs: int = 30               # at most
    batch_size: int = 256
    lr: float = 1e-3
    weight_decay: float = 1e-4
    dropout: float = 0.1
    scale: float = 16.0            # cos_softmax logit scale
    margin: float = 0.1            # cos_softmax margin
    temperature: float = 0.1       # supcon
    val_fraction: float = 0.1      # held out from the training records for early stopping
    patience: int = 4              # epochs without validation improvement before stopping
    seed: int = 0
    threads: int | None = None     # torch threads (None: leave as is)

    def __post_init__(self) -> None:
        if self.kind not in HEAD_KINDS:
            raise ValueError(f"adapter kind must be one of {HEAD_KINDS}, got {self.kind!r}")
        if self.loss not in LOSSES:
            raise ValueError(f"loss must be one of {LOSSES}, got {self.loss!r}")
        if not 0.0 < self.val_fraction < 0.5:
            raise ValueError(f"val_fraction must be in (0, 0.5), got {self.val_fraction}")
        if self.dim <= 0 or self.epochs <= 0 or self.batch_size <= 1:
            raise ValueError("dim, epochs must be positive and batch_size > 1")

    def loss_options(self) -> dict[str, float]:
        if self.loss == "cos_softmax":
            return {"scale": self.scale, "margin": self.margin}
        if self.loss == "supcon":
            return {"temperature": self.temperature}
        return {}


@dataclass
class TrainResult:
    """The exported head, the per-epoch history and what the training took."""

    tensors: dict[str, np.ndarray] = field(default_factory=dict)
    history: list[dict[str, float]] = field(default_factory=list)
    best_epoch: int = 0
    best_val_map: float = 0.0
    seconds: float = 0.0
    n_fit: int = 0
    n_val: int = 0
    stopped_early: bool = False

    def summary(self) -> dict[str, Any]:
        return {"best_epoch": self.best_epoch, "best_val_mAP@100": round(self.best_val_map, 5),
                "epochs_run": len(self.history), "train_seconds": round(self.seconds, 2),
                "n_fit": self.n_fit, "n_val": self.n_val, "stopped_early": self.stopped_early}


def class_indices(y: np.ndarray, what: str) -> tuple[np.ndarray, np.ndarray]:
    """``(classes, index of each label in classes)``; refuses fewer than two classes."""
    classes = np.unique(y)
    if len(classes) < 2:
        raise ValueError(f"{what} needs at least two labels, got {len(classes)}")
    return classes, np.searchsorted(classes, y)


def stratified_split(y: np.ndarray, fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Indices ``(fit, val)``: ``fraction`` of each class (at least one if it has two) held out."""
    rng = np.random.default_rng(seed)
    fit, val = [], []
    for c in np.unique(y):
        idx = rng.permutation(np.flatnonzero(y == c))
        k = int(round(len(idx) * fraction))
        k = min(max(k, 1 if len(idx) > 1 else 0), len(idx) - 1)
        val.append(idx[:k])
        fit.append(idx[k:])
    return np.sort(np.concatenate(fit)), np.sort(np.concatenate(val))


def retrieval_map(db: np.ndarray, db_y: np.ndarray, q: np.ndarray, q_y: np.ndarray,
                  depth: int = 100) -> float:
    """mAP@depth of queries ``q`` against database ``db`` (L2-normalized, same-label relevant)."""
    rows, _ = ev.exact_topk(db, q, min(depth, len(db)))
    labels = np.where(rows == ev.PAD, ev.PAD, db_y[np.maximum(rows, 0)])
    return ev.mean_average_precision(ev.relevance(q_y, labels), depth)


def warmup_cosine(total_steps: int, warmup_share: float = 0.05) -> Callable[[int], float]:
    """Learning-rate factor per step: linear warm-up over ``warmup_share`` of the steps,
    then cosine decay to 0."""
    warmup = max(1, int(total_steps * warmup_share))

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        return 0.5 * (1.0 + math.cos(math.pi * (step - warmup) / max(1, total_steps - warmup)))

    return factor


def _embed(head: Head, x: np.ndarray, batch: int = 4096) -> np.ndarray:
    head.eval()
    with torch.no_grad():
        return np.concatenate([head(torch.from_numpy(x[i:i + batch])).numpy()
                               for i in range(0, len(x), batch)]) if len(x) else np.zeros((0, 1))


def train_head(x: np.ndarray, y: np.ndarray, config: TrainConfig | None = None, *,
               x_alt: np.ndarray | None = None, progress: bool = True,
               max_val_db: int = 20000) -> TrainResult:
    """Train an adapter on vectors ``x`` (n, d) with integer labels ``y`` (n,)."""
    cfg = config or TrainConfig()
    x = np.ascontiguousarray(x, np.float32)
    y = np.asarray(y, np.int64)
    if x.ndim != 2 or len(x) != len(y):
        raise ValueError(f"x must be (n, d) with one label per row, got {x.shape} and {y.shape}")
    classes, y = class_indices(y, "training an adapter")
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    torch.manual_seed(cfg.seed)
    rng = np.random.default_rng(cfg.seed)
    fit, val = stratified_split(y, cfg.val_fraction, cfg.seed)
    db_rows = fit if len(fit) <= max_val_db else np.sort(rng.choice(fit, max_val_db, replace=False))
    head = Head(cfg.kind, x.shape[1], cfg.dim, cfg.hidden, cfg.dropout)
    loss_fn = make_loss(cfg.loss, len(classes), cfg.dim, **cfg.loss_options())
    proxy_params = list(loss_fn.parameters())
    groups = [{"params": head.parameters()}]
    if proxy_params:  # proxies learn faster (as in the Proxy-Anchor paper)
        groups.append({"params": proxy_params, "lr": cfg.lr * 10, "weight_decay": 0.0})
    opt = torch.optim.AdamW(groups, lr=cfg.lr, weight_decay=cfg.weight_decay)
    steps_per_epoch = max(1, len(fit) // cfg.batch_size)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, warmup_cosine(cfg.epochs * steps_per_epoch))
    xt, yt = torch.from_numpy(x), torch.from_numpy(y)
    xat = torch.from_numpy(np.ascontiguousarray(x_alt, np.float32)) if x_alt is not None else None
    res = TrainResult(tensors={}, n_fit=len(fit), n_val=len(val))
    best_state, bad = None, 0
    t0 = time.perf_counter()
    bar = tqdm(range(cfg.epochs), desc=f"train {cfg.kind}/{cfg.loss}", unit="epoch", disable=not progress)
    for epoch in bar:
        head.train()
        order = torch.from_numpy(rng.permutation(fit))
        total, seen = 0.0, 0
        for s in range(steps_per_epoch):
            idx = order[s * cfg.batch_size:(s + 1) * cfg.batch_size]
            xb = xt[idx]
            if xat is not None:
                swap = torch.from_numpy(rng.random(len(idx)) < 0.5)
                xb = torch.where(swap[:, None], xat[idx], xb)
            loss = loss_fn(head(xb), yt[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            total += float(loss.detach()) * len(idx)
            seen += len(idx)
        val_map = retrieval_map(_embed(head, x[db_rows]), y[db_rows], _embed(head, x[val]), y[val])
        res.history.append({"epoch": epoch + 1, "train_loss": total / max(1, seen),
                            "val_mAP@100": val_map, "seconds": time.perf_counter() - t0})
        bar.set_postfix(loss=f"{total / max(1, seen):.4f}", val_map=f"{val_map:.4f}", refresh=False)
        if val_map > res.best_val_map:
            res.best_val_map, res.best_epoch, bad = val_map, epoch + 1, 0
            best_state = {k: v.clone() for k, v in head.state_dict().items()}
        else:
            bad += 1
            if bad >= cfg.patience:
                res.stopped_early = True
                log.info("early stop after epoch %d (best %d, val mAP@100 %.4f)", epoch + 1,
                         res.best_epoch, res.best_val_map)
                break
    bar.close()
    if best_state is not None:
        head.load_state_dict(best_state)
    head.eval()
    res.tensors = head.export()
    res.seconds = time.perf_counter() - t0
    return res


def plot_history(history: list[dict[str, float]], path: str | Path, title: str = "") -> Path:
    """Training loss and validation mAP@100 per epoch, as a PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    ep = [h["epoch"] for h in history]
    fig, ax = plt.subplots(figsize=(6, 3.6))
    ax.plot(ep, [h["train_loss"] for h in history], "o-", color="tab:blue", label="train loss")
    ax.set_xlabel("epoch")
    ax.set_ylabel("train loss", color="tab:blue")
    ax2 = ax.twinx()
    ax2.plot(ep, [h["val_mAP@100"] for h in history], "s-", color="tab:orange", label="val mAP@100")
    ax2.set_ylabel("validation mAP@100", color="tab:orange")
    ax.set_title(title or "adapter training")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def config_dict(cfg: TrainConfig) -> dict[str, Any]:
    return {k: v for k, v in asdict(cfg).items() if k != "threads"}
