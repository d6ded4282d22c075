"""Learned adapters and training-free transforms on stored embeddings: *derived models*.

A derived model's vectors are computed from the stored vectors of its base model(s) and
stored under the key ``BASE+NAME`` like any model's, so search, the app, the index,
``imgsim info``/``check`` and the benchmark use it as one. Kinds:

- ``adapter`` — a small head (linear or MLP) trained on the base vectors with the records'
  labels (:func:`train_adapter`, ``imgsim adapter train``);
- ``center``, ``whiten``, ``concat`` — fitted without labels (:func:`fit_transform`,
  ``imgsim adapter fit``).

Protocol hygiene: it is fitted only on the database side — by default the records whose
source has a ``train`` path component (CIFAR-10 train, a folder's ``train/``) — and it
remembers the sha256 of every record it saw, so an evaluation can refuse queries it was
trained on (:func:`check_queries_unseen`). See docs/adapters.md.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from imgsim_lab.adapters import transforms
from imgsim_lab.adapters.registry import (
    check_bases,
    delete_derived,
    derive,
    derive_new,
    list_derived,
    load_derived,
    load_spec,
    trained_hashes,
)
from imgsim_lab.adapters.spec import (
    DerivedModelError,
    DerivedSpec,
    StaleBaseError,
    derived_key,
    is_derived_key,
)
from imgsim_lab.store import Store

log = logging.getLogger(__name__)

__all__ = [
    "DerivedModelError", "DerivedSpec", "StaleBaseError", "check_bases", "check_queries_unseen",
    "delete_derived", "derive", "derive_new", "derived_key", "fit_transform", "is_derived_key",
    "list_derived", "load_derived", "load_spec", "train_adapter", "trained_hashes",
    "training_records",
]

TRAIN_ON = ("auto", "train", "all")


def _split_of(source: str) -> str | None:
    parts = source.replace("\\", "/").split("/")
    return "train" if "train" in parts[:-1] else ("test" if "test" in parts[:-1] else None)


def training_records(store: Store, bases: Sequence[str], train_on: str = "auto", need_labels: bool = True
                     ) -> tuple[np.ndarray, list[np.ndarray], list[str], list[str], str]:
    """Records to fit on: ``(ids, base vectors, labels, sha256s, split used)``.

    ``train_on``: ``train`` — records whose source has a ``train`` path component;
    ``all`` — every record; ``auto`` — ``train`` when there are such records, else
    ``all`` unless some record is marked ``test`` (then it refuses: say what to use).
    """
    if train_on not in TRAIN_ON:
        raise DerivedModelError(f"train_on must be one of {TRAIN_ON}, got {train_on!r}")
    recs = [r for chunk in store.iter_records() for r in chunk]
    splits = [_split_of(r.source) for r in recs]
    used = train_on
    if train_on == "auto":
        if "train" in splits:
            used = "train"
        elif "test" in splits:
            raise DerivedModelError("the store holds test-split records and no train split: pass "
                                    "train_on='all' (--train-on all) only if that is what you mean")
        else:
            used = "all"
    keep = [r for r, s in zip(recs, splits, strict=True) if used == "all" or s == "train"]
    if need_labels:
        keep = [r for r in keep if r.label is not None]
    if not keep:
        raise DerivedModelError(f"no {'labelled ' if need_labels else ''}records to fit on "
                                f"(train_on={used!r}) in namespace {store.namespace!r}")
    ids = np.array([r.id for r in keep], np.int64)
    have = np.ones(len(ids), bool)
    for b in bases:
        have &= store.has_embeddings(b, ids.tolist())
    if not have.all():
        log.warning("%d training records lack a base vector and are left out", int((~have).sum()))
    keep = [r for r, h in zip(keep, have, strict=True) if h]
    ids = ids[have]
    vecs = []
    for b in bases:
        got, v = store.get_embeddings(b, ids.tolist())
        if not np.array_equal(got, ids):
            raise DerivedModelError(f"base vectors of {b} changed while reading them; retry")
        vecs.append(v)
    return ids, vecs, [r.label for r in keep], [r.sha256 for r in keep], used


def _trained_on(store: Store, used: str, labels: Sequence[str], shas: Sequence[str]) -> dict[str, Any]:
    import hashlib

    digest = hashlib.sha256("".join(sorted(shas)).encode()).hexdigest()
    return {"store": store.url, "namespace": store.namespace, "split": used, "records": len(shas),
            "labels": sorted(set(labels)) if labels else [], "sha256_digest": digest}


def train_adapter(store: Store, name: str, base: str, config=None, *, train_on: str = "auto",
                  out_dir: str | Path | None = None, replace: bool = False,
                  progress: bool = True, recipe: dict | None = None) -> DerivedSpec:
    """Train an adapter head on ``base``'s stored vectors and labels; store it as ``base+name``.

    Writes its vectors for every record that has a ``base`` vector. With ``out_dir``, also
    writes ``<key>.safetensors``, ``<key>.json`` (spec, history) and ``<key>_loss.png``.
    """
    from imgsim_lab.adapters.training import TrainConfig, config_dict, train_head

    cfg = config or TrainConfig()
    key = derived_key(base, name)
    from imgsim_lab.adapters.registry import base_refs

    refs = base_refs(store, [base])
    ids, (x,), labels, shas, used = training_records(store, [base], train_on)
    classes = sorted(set(labels))
    y = np.searchsorted(classes, labels)
    log.info("training %s on %d records (%d labels, split %s)", key, len(ids), len(classes), used)
    res = train_head(x, y, cfg, progress=progress)
    spec = DerivedSpec(key=key, kind="adapter", bases=refs, dim=cfg.dim,
                       options={"train": config_dict(cfg), **({"recipe": recipe} if recipe else {})},
                       trained_on=_trained_on(store, used, labels, shas),
                       metrics={**res.summary(), "history": res.history})
    spec = _save(store, spec, res.tensors, shas, replace, progress)
    if out_dir is not None:
        _write_files(store, spec, res.tensors, Path(out_dir), res.history)
    return spec


def fit_transform(store: Store, name: str, kind: str, bases: Sequence[str], *,
                  dim: int | None = None, shrinkage: float = 0.0,
                  weights: Sequence[float] | None = None, train_on: str = "auto",
                  out_dir: str | Path | None = None, replace: bool = False,
                  progress: bool = True, recipe: dict | None = None) -> DerivedSpec:
    """Fit a training-free transform (``center``, ``whiten``, ``concat``) on the database side."""
    from imgsim_lab.adapters.registry import base_refs

    if kind not in ("center", "whiten", "concat"):
        raise DerivedModelError(f"transform kind must be center, whiten or concat, got {kind!r}")
    if kind != "concat" and len(bases) != 1:
        raise DerivedModelError(f"{kind} takes one base model, got {list(bases)}")
    if kind == "concat" and len(bases) < 2:
        raise DerivedModelError("concat needs at least two base models")
    key = derived_key(bases[0], name)
    refs = base_refs(store, bases)
    t0 = time.perf_counter()
    options: dict[str, Any] = {"recipe": recipe} if recipe else {}
    shas: list[str] = []
    labels: list[str] = []
    used = "none"
    if kind == "concat":
        tensors = transforms.fit_concat([r.dim for r in refs], weights)
        options["weights"] = [float(w) for w in tensors["weights"]]
    else:
        _, (x,), labels, shas, used = training_records(store, bases, train_on, need_labels=False)
        labels = [lab for lab in labels if lab is not None]
        if kind == "center":
            tensors = transforms.fit_center(x)
        else:
            tensors = transforms.fit_whiten(x, dim, shrinkage)
            options.update({"dim": int(tensors["proj"].shape[1]), "shrinkage": float(shrinkage)})
    spec = DerivedSpec(key=key, kind=kind, bases=refs, dim=0, options=options,
                       trained_on=_trained_on(store, used, labels, shas) if shas else {"split": "none"},
                       metrics={"fit_seconds": round(time.perf_counter() - t0, 3)})
    spec = _save(store, spec, tensors, shas, replace, progress)
    if out_dir is not None:
        _write_files(store, spec, tensors, Path(out_dir), None)
    return spec


def _save(store: Store, spec: DerivedSpec, tensors, shas, replace: bool, progress: bool) -> DerivedSpec:
    from imgsim_lab.adapters.registry import save_derived

    spec = save_derived(store, spec, tensors, shas, replace=replace)
    t0 = time.perf_counter()
    n = derive(store, spec.key, progress=progress)
    log.info("%s: %d vectors derived in %.1f s", spec.key, n, time.perf_counter() - t0)
    return spec


def _write_files(store: Store, spec: DerivedSpec, tensors, out: Path, history) -> None:
    from safetensors.numpy import save_file

    out.mkdir(parents=True, exist_ok=True)
    stem = spec.key.replace("+", "__")
    save_file({k: np.ascontiguousarray(v, np.float32) for k, v in tensors.items()},
              str(out / f"{stem}.safetensors"), metadata={"version": spec.version, "key": spec.key})
    (out / f"{stem}.json").write_text(spec.to_json() + "\n", encoding="utf-8")
    if history:
        from imgsim_lab.adapters.training import plot_history

        plot_history(history, out / f"{stem}_loss.png", title=f"{spec.key} ({spec.version})")


def check_queries_unseen(store: Store, key: str, query_sha256: Iterable[str]) -> None:
    """Refuse (``DerivedModelError``) to evaluate ``key`` on queries it or its bases were fitted on."""
    queries = set(query_sha256)
    todo, seen = [key], set()
    while todo:
        k = todo.pop()
        if k in seen or not is_derived_key(k):
            continue
        seen.add(k)
        overlap = queries & trained_hashes(store, k)
        if overlap:
            raise DerivedModelError(
                f"{k} was trained on {len(overlap)} of these {len(queries)} queries: evaluate it "
                "on images it has not seen (the test split) or retrain it on the database side only")
        todo.extend(b.key for b in load_spec(store, k).bases)
