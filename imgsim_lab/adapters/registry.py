"""Derived models kept in the store, next to the vectors they produce.

Keys (``<ns>`` the namespace, ``<key>`` the derived model key ``BASE+NAME``)::

    <ns>:derived                 JSON list of derived model keys, in creation order
    <ns>:derived:<key>           its spec (JSON, :class:`DerivedSpec`)
    <ns>:derived:<key>:tensors   its tensors (safetensors bytes; never pickled)
    <ns>:derived:<key>:trained   sha256 digests (32 raw bytes each, sorted) of the records
                                 it was fitted on (protocol hygiene)

Its vectors are ordinary embeddings ``<ns>:emb:<key>:{<id12>}`` of a registered model
(dim, version), written with :meth:`Store.add_images` for the existing records, so search,
the index, ``info`` and ``check`` treat it like any model. Creation order is dependency
order (a derived model's bases exist before it), so :func:`derive_new` fills chains.
"""

from __future__ import annotations

import json
import logging
import shutil
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import numpy as np
from safetensors.numpy import load as st_load
from safetensors.numpy import save as st_save

from imgsim_lab.adapters import transforms
from imgsim_lab.adapters.spec import (
    BaseRef,
    DerivedModelError,
    DerivedSpec,
    StaleBaseError,
    content_version,
)
from imgsim_lab.store import NewImage, Store

log = logging.getLogger(__name__)

CHUNK = 4096


def _list_key(store: Store) -> str:
    return f"{store.namespace}:derived"


def _spec_key(store: Store, key: str) -> str:
    return f"{store.namespace}:derived:{key}"


def list_derived(store: Store) -> list[str]:
    """Derived model keys of the namespace, in creation (= dependency) order."""
    raw = store.raw_get([_list_key(store)])[0]
    if raw is None:
        return []
    try:
        keys = json.loads(raw)
        if not isinstance(keys, list) or not all(isinstance(k, str) for k in keys):
            raise ValueError("not a list of strings")
    except ValueError as exc:
        raise DerivedModelError(f"{_list_key(store)} is malformed: {exc}") from exc
    return keys


def _write_list(store: Store, keys: Sequence[str]) -> None:
    store.raw_set(_list_key(store), json.dumps(list(keys)))


def load_spec(store: Store, key: str) -> DerivedSpec:
    """The spec of derived model ``key``; ``DerivedModelError`` if there is none."""
    raw = store.raw_get([_spec_key(store, key)])[0]
    if raw is None:
        known = ", ".join(list_derived(store)) or "none"
        raise DerivedModelError(f"no derived model {key!r} in namespace {store.namespace!r} "
                                f"(derived models: {known})")
    return DerivedSpec.from_json(raw)


@dataclass
class Derived:
    """A loaded derived model: spec and tensors."""

    spec: DerivedSpec
    tensors: dict[str, np.ndarray]

    def apply(self, bases: Sequence[np.ndarray]) -> np.ndarray:
        for b, ref in zip(bases, self.spec.bases, strict=True):
            if b.shape[1] != ref.dim:
                raise DerivedModelError(f"{self.spec.key}: base {ref.key} vectors have dim "
                                        f"{b.shape[1]}, expected {ref.dim}")
        return transforms.apply(self.spec.kind, self.tensors, bases)


_CACHE: dict[tuple[str, str, str], Derived] = {}


def load_derived(store: Store, key: str) -> Derived:
    """Spec and tensors of ``key`` (tensors cached per version in this process)."""
    spec = load_spec(store, key)
    ck = (store.namespace, key, spec.version)
    if ck not in _CACHE:
        raw = store.raw_get([f"{_spec_key(store, key)}:tensors"])[0]
        if raw is None:
            raise DerivedModelError(f"derived model {key!r} has a spec but no tensors: delete it and "
                                    "train or fit it again")
        try:
            tensors = {k: np.ascontiguousarray(v, np.float32) for k, v in st_load(bytes(raw)).items()}
        except Exception as exc:  # safetensors raises its own error types
            raise DerivedModelError(f"tensors of derived model {key!r} are corrupt: {exc}") from exc
        got = content_version(spec.kind, tensors, spec.options, spec.bases)
        if got != spec.version:
            raise DerivedModelError(f"tensors of derived model {key!r} hash to {got}, its spec says "
                                    f"{spec.version}: delete it and train or fit it again")
        _CACHE[ck] = Derived(spec, tensors)
    return _CACHE[ck]


def trained_hashes(store: Store, key: str) -> set[str]:
    """sha256 (hex) of every record derived model ``key`` was trained or fitted on."""
    raw = store.raw_get([f"{_spec_key(store, key)}:trained"])[0]
    if not raw:
        return set()
    raw = bytes(raw)
    return {raw[i:i + 32].hex() for i in range(0, len(raw), 32)}


def check_bases(store: Store, spec: DerivedSpec) -> None:
    """Refuse a derived model whose bases are gone or changed version (``StaleBaseError``)."""
    models = store.model_info()
    for b in spec.bases:
        cur = models.get(b.key)
        if cur is None:
            raise StaleBaseError(f"derived model {spec.key!r} needs base model {b.key!r}, which is "
                                 f"not in namespace {store.namespace!r}")
        if cur.version != b.version or cur.dim != b.dim:
            raise StaleBaseError(
                f"derived model {spec.key!r} was built on {b.key} version {b.version!r} (dim {b.dim}); "
                f"the store now holds version {cur.version!r} (dim {cur.dim}). Its vectors would not "
                f"match: retrain or refit it (`imgsim adapter delete {spec.key}` first)")


def base_refs(store: Store, bases: Sequence[str]) -> list[BaseRef]:
    """References (key, dim, current version) to stored base models."""
    models = store.model_info()
    missing = [b for b in bases if b not in models]
    if missing:
        raise DerivedModelError(f"base model(s) {missing} not in namespace {store.namespace!r}; "
                                f"stored models: {sorted(models) or 'none'}")
    return [BaseRef(b, models[b].dim, models[b].version) for b in bases]


def save_derived(store: Store, spec: DerivedSpec, tensors: dict[str, np.ndarray],
                 trained_sha256: Iterable[str] = (), replace: bool = False) -> DerivedSpec:
    """Store a new derived model (spec, tensors, training hashes) and register its model key.

    Sets ``spec.version`` from the content. An existing derived model of the same key is
    deleted first when ``replace``, else refused.
    """
    check_bases(store, spec)
    if spec.key in list_derived(store) or spec.key in store.model_info():
        if not replace:
            raise DerivedModelError(f"{spec.key!r} exists already: delete it first "
                                    f"(`imgsim adapter delete {spec.key}`) or pass --replace")
        delete_derived(store, spec.key)
    tensors = {k: np.ascontiguousarray(v, np.float32) for k, v in tensors.items()}
    spec.version = content_version(spec.kind, tensors, spec.options, spec.bases)
    spec.dim = transforms.output_dim(spec.kind, tensors, [b.dim for b in spec.bases])
    spec.created = round(time.time(), 3)
    digests = b"".join(sorted(bytes.fromhex(s) for s in set(trained_sha256)))
    base = _spec_key(store, spec.key)
    store.raw_set(f"{base}:tensors", st_save(tensors, metadata={"version": spec.version}))
    store.raw_set(f"{base}:trained", digests)
    store.raw_set(base, spec.to_json())
    store.register_model(spec.key, spec.dim, spec.version)
    _write_list(store, [*list_derived(store), spec.key])
    log.info("derived model %s saved (%s, dim %d)", spec.key, spec.version, spec.dim)
    return spec


def _base_vectors(store: Store, spec: DerivedSpec, ids: np.ndarray) -> tuple[np.ndarray, list[np.ndarray]]:
    """Ids (of ``ids``) that have every base's vector, and those vectors per base."""
    have = np.ones(len(ids), bool)
    for b in spec.bases:
        have &= store.has_embeddings(b.key, ids.tolist())
    ids = ids[have]
    parts = []
    for b in spec.bases:
        got, vecs = store.get_embeddings(b.key, ids.tolist())
        if not np.array_equal(got, ids):  # deleted meanwhile
            keep = np.isin(ids, got)
            ids = ids[keep]
            parts = [p[keep] for p in parts]
        parts.append(vecs[np.isin(got, ids)])
    return ids, parts


def derive(store: Store, key: str, ids: Iterable[int] | None = None, progress: bool = False) -> int:
    """Compute and store ``key``'s vectors for ``ids`` (default: every record) that lack them.

    Reads the bases' stored vectors, never images. Returns how many vectors were written.
    """
    d = load_derived(store, key)
    check_bases(store, d.spec)
    all_ids = store.all_ids() if ids is None else np.unique(np.asarray(list(ids), np.int64))
    written = 0
    from tqdm.auto import tqdm

    bar = tqdm(total=len(all_ids), desc=f"derive {key}", unit="vec", disable=not progress)
    for s in range(0, len(all_ids), CHUNK):
        chunk = all_ids[s:s + CHUNK]
        todo = chunk[~store.has_embeddings(key, chunk.tolist())] if len(chunk) else chunk
        if len(todo):
            got, bases = _base_vectors(store, d.spec, todo)
            if len(got):
                vecs = d.apply(bases)
                recs = store.get_records(got.tolist())
                new = [NewImage(r.sha256, r.source, r.width, r.height, r.label, {key: v})
                       for r, v in zip(recs, vecs, strict=True) if r is not None]
                written += sum(1 for r in store.add_images(new) if key in r.embedded)
        bar.update(len(chunk))
    bar.close()
    return written


def derive_new(store: Store, ids: Iterable[int]) -> dict[str, int]:
    """Give freshly written images their derived vectors (the ingest hook); cheap if none.

    A derived model whose bases changed version is skipped with an error logged (its
    vectors would be wrong); the ingest itself goes on.
    """
    keys = list_derived(store)
    if not keys:
        return {}
    ids = list(ids)
    out = {}
    for key in keys:
        try:
            out[key] = derive(store, key, ids)
        except StaleBaseError as exc:
            log.error("not deriving %s for new images: %s", key, exc)
    return out


def dependents(store: Store, key: str) -> list[str]:
    """Derived models that read ``key`` (directly)."""
    return [k for k in list_derived(store) if k != key
            and any(b.key == key for b in load_spec(store, k).bases)]


def delete_derived(store: Store, key: str, *, cascade: bool = False) -> dict[str, int]:
    """Remove derived model ``key``: its vectors, model facts, spec, tensors and index snapshot.

    Refused when other derived models read it, unless ``cascade`` (they go first).
    Returns the vectors removed per key.
    """
    known = list_derived(store)
    if key not in known and key not in store.model_info():
        raise DerivedModelError(f"no derived model {key!r} in namespace {store.namespace!r}")
    deps = dependents(store, key) if key in known else []
    removed: dict[str, int] = {}
    if deps and not cascade:
        raise DerivedModelError(f"derived model(s) {deps} are built on {key!r}: delete them first "
                                "or pass --cascade")
    for dep in deps:
        removed.update(delete_derived(store, dep, cascade=True))
    k = store.keys
    n = 0
    ids = store.all_ids()
    for s in range(0, len(ids), CHUNK):
        chunk = ids[s:s + CHUNK].tolist()
        has = store.has_embeddings(key, chunk)
        n += store.raw_delete([k.emb(key, i) for i, h in zip(chunk, has, strict=True) if h])
    # orphans (vectors without a record) are `imgsim check --repair`'s job; the facts go now
    base = _spec_key(store, key)
    store.raw_delete([base, f"{base}:tensors", f"{base}:trained"])
    store.forget_model(key)
    _write_list(store, [x for x in list_derived(store) if x != key])
    _drop_snapshots(store, key)
    removed[key] = n
    log.info("derived model %s deleted (%d vectors)", key, n)
    return removed


def _drop_snapshots(store: Store, key: str) -> None:
    """Remove the default index snapshot of ``key`` (a retrained model must not reuse it)."""
    from pathlib import Path

    from imgsim_lab.index.snapshot import default_dir

    path = getattr(store, "path", None)
    identity = f"rocksdb:{Path(path).resolve()}" if store.backend == "rocksdb" and path else store.url
    path = default_dir(identity, store.namespace, key)
    if path.is_dir():
        shutil.rmtree(path, ignore_errors=True)
        log.info("removed index snapshot %s", path)
