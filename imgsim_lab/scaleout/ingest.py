"""Ingest on a Dask cluster: partitions of the file list are embedded by the workers.

A run goes wave by wave (``wave_size`` items, so the client never holds more than one
wave's hashes), each wave in two steps:

1. **hash** — workers read and hash their partitions (``hash_partition_size`` files);
   the client looks the hashes up in the store *once*, before anything of the wave is
   written. A file whose bytes were seen earlier in the run, or which is stored with
   every requested model, is a duplicate and is never decoded. The rest (new images,
   images missing a model, and files that could not be read) are the wave's *primaries*.
2. **embed and write** — the primaries, in partitions of ``partition_size``, go to the
   workers, which run :func:`imgsim_lab.ingest.ingest` on them:

   - **server stores** (Kvrocks, Redis, either cluster): each worker writes its batches
     straight to the store through its own cached connection; the sha256 claim protocol
     keeps one record per image across workers, even when the same bytes land in two
     partitions or two runs overlap;
   - **embedded RocksDB** (one writer): a worker ingests into a private temporary
     RocksDB on its local disk and returns the records and vectors; the client, the
     store's only writer, adds them (``store.add_images``) as partitions complete.

The summary classifies every input item against the store as it was when the wave was
looked up, in input order — exactly what a serial run reports — so a partition that Dask
re-runs after a worker died (and whose first attempt wrote part of it) does not change
the counts: rejections are counted by the attempt that completes, everything else comes
from the lookup. One progress bar advances as partitions complete (``as_completed``).
"""

from __future__ import annotations

import hashlib
import logging
import tempfile
import time
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from imgsim_lab.datasets import ImageItem
from imgsim_lab.images import Limits
from imgsim_lab.ingest import DEFAULT_BATCH_SIZE, IngestSummary
from imgsim_lab.models import EmbeddingModel
from imgsim_lab.store import NewImage, Store

log = logging.getLogger(__name__)

DEFAULT_PARTITION_SIZE = 256
DEFAULT_HASH_PARTITION_SIZE = 2048
DEFAULT_WAVE_SIZE = 50_000
_PRIVATE_NS = "partition"


# --------------------------------------------------------------------------- pure decisions


@dataclass
class WavePlan:
    """How a wave's items split: duplicates counted now, primaries sent to the workers."""

    duplicates: int = 0
    primaries: list[int] = field(default_factory=list)  # item indexes, input order
    kind: dict[int, str] = field(default_factory=dict)   # index -> "new" | "partial" | "unread"


def plan_wave(shas: Sequence[str | None], known: dict[str, bool], seen: set[str]) -> WavePlan:
    """Classify items by hash (None: unreadable) against ``known`` (sha -> has every model).

    ``seen`` holds the hashes of earlier waves of this run and is updated in place.
    """
    plan = WavePlan()
    for i, sha in enumerate(shas):
        if sha is None:
            plan.primaries.append(i)
            plan.kind[i] = "unread"
        elif sha in seen or known.get(sha) is True:
            plan.duplicates += 1
            seen.add(sha)
        else:
            seen.add(sha)
            plan.primaries.append(i)
            plan.kind[i] = "partial" if sha in known else "new"
    return plan


def partition_counts(kinds: Sequence[str], rejected: int) -> tuple[int, int]:
    """``(added, embedded)`` of a finished partition with these item kinds.

    Unreadable files are always rejected; other rejections (undecodable bytes) fall on
    new images first — an image already stored was valid once (only tighter limits can
    reject it now).
    """
    c = Counter(kinds)
    rest = max(0, rejected - c["unread"])
    new_rejected = min(rest, c["new"])
    return c["new"] - new_rejected, max(0, c["partial"] - (rest - new_rejected))


def split(seq: Sequence[Any], size: int) -> list[list[Any]]:
    size = max(1, int(size))
    return [list(seq[i:i + size]) for i in range(0, len(seq), size)]


# --------------------------------------------------------------------------- worker tasks


def hash_partition(items: Sequence[ImageItem], max_bytes: int) -> list[str | None]:
    """SHA-256 of each file, None when it cannot be read or is over ``max_bytes``."""
    out: list[str | None] = []
    for it in items:
        try:
            if it.path is not None and it.path.stat().st_size > max_bytes:
                out.append(None)
                continue
            data = it.read_bytes()
        except (OSError, ValueError):
            out.append(None)
            continue
        out.append(None if len(data) > max_bytes else hashlib.sha256(data).hexdigest())
    return out


def model_specs(build_args: Sequence[tuple]) -> list[tuple[str, int, str]]:
    """``(key, dim, version)`` of each model, built (and cached) on this worker."""
    from imgsim_lab.scaleout.cluster import worker_plugin

    plugin = worker_plugin()
    return [(m.key, m.dim, m.version) for m in (plugin.model(a) for a in build_args)]


def ingest_partition(items: Sequence[ImageItem], build_args: Sequence[tuple], kv_url: str | None,
                     namespace: str, batch_size: int, limits: Limits) -> dict[str, Any]:
    """Run :func:`imgsim_lab.ingest.ingest` on ``items`` on this worker.

    With ``kv_url`` the worker writes to that server store; without, it ingests into a
    private temporary RocksDB and returns the records and vectors under ``"images"``.
    """
    from imgsim_lab.ingest import ingest
    from imgsim_lab.scaleout.cluster import worker_plugin
    from imgsim_lab.store import open_store

    plugin = worker_plugin()
    models = [plugin.model(a) for a in build_args]
    t0 = time.perf_counter()
    if kv_url is not None:
        store = plugin.store(kv_url, namespace)
        s = ingest(items, store, models, batch_size=batch_size, limits=limits, progress=False)
        return _result(s, t0)
    with tempfile.TemporaryDirectory(prefix="imgsim-dask-part-") as tmp, \
            open_store(f"rocksdb:{tmp}/kv", _PRIVATE_NS) as store:
        s = ingest(items, store, models, batch_size=batch_size, limits=limits, progress=False)
        images = _read_back(store, [m.key for m in models])
    out = _result(s, t0)
    out["images"] = images
    return out


def _result(s: IngestSummary, t0: float) -> dict[str, Any]:
    return {"added": s.added, "embedded": s.embedded, "duplicates": s.duplicates,
            "rejected": dict(s.rejected), "seconds": time.perf_counter() - t0}


def _read_back(store: Store, model_keys: Sequence[str]) -> list[tuple]:
    """Every record of a private store with its vectors: (sha, source, w, h, label, {model: vec})."""
    records = [r for chunk in store.iter_records() for r in chunk]
    ids = [r.id for r in records]
    vecs: dict[str, dict[int, Any]] = {}
    for key in model_keys:
        got_ids, got = store.get_embeddings(key, ids)
        vecs[key] = {int(i): got[j] for j, i in enumerate(got_ids)}
    return [(r.sha256, r.source, r.width, r.height, r.label,
             {k: vecs[k][r.id] for k in model_keys if r.id in vecs[k]}) for r in records]


# --------------------------------------------------------------------------- the client side


def _build_args(model: EmbeddingModel) -> tuple:
    args = getattr(model, "build_args", None)
    if args is None:
        return (model.name, model.size, {})
    name, size, options = args
    return (name, size, dict(options))


def _lookup(store: Store, shas: Iterable[str], model_keys: Sequence[str]) -> dict[str, bool]:
    """sha -> whether it is stored with every model (absent: not stored)."""
    import numpy as np

    unique = sorted(set(shas))
    known: dict[str, bool] = {}
    for part in split(unique, 4096):
        ids = store.ids_for_hashes(part)
        stored = [(sha, i) for sha, i in zip(part, ids, strict=True) if i is not None]
        if not stored:
            continue
        complete = np.ones(len(stored), bool)
        for key in model_keys:  # registered before the lookup
            complete &= store.has_embeddings(key, [i for _, i in stored])
        known.update({sha: bool(c) for (sha, _), c in zip(stored, complete, strict=True)})
    return known


def server_url(store: Store, kv_url: str | None) -> str | None:
    """The URL workers connect to (None for an embedded store: the client writes)."""
    if store.backend == "rocksdb":
        return None
    url = kv_url or store.url
    if "***" in url:  # redacted: the configured URL is the one, if it names this store
        from imgsim_lab.config import kv_url as configured
        from imgsim_lab.store import redact_url

        env = configured(None)
        url = env if redact_url(env) == store.url else url
    if "***" in url:
        raise ValueError(f"the store {store.url} needs credentials the workers must get: "
                         "pass the unredacted URL (kv_url=..., or --kv on the command line)")
    return url


def dask_ingest(items: Sequence[ImageItem], store: Store, models: Sequence[EmbeddingModel], *,
                client: Any, kv_url: str | None = None, batch_size: int = DEFAULT_BATCH_SIZE,
                limits: Limits | None = None, partition_size: int = DEFAULT_PARTITION_SIZE,
                hash_partition_size: int = DEFAULT_HASH_PARTITION_SIZE,
                wave_size: int = DEFAULT_WAVE_SIZE, progress: bool = True,
                workers: Sequence[str] | None = None) -> IngestSummary:
    """Ingest ``items`` into ``store`` on the Dask ``client``'s workers; see the module docstring.

    ``kv_url`` is the store's unredacted URL when it carries a password (``store.url``
    is redacted). ``workers`` restricts the tasks to these worker addresses. Returns the
    same :class:`IngestSummary` a serial :func:`imgsim_lab.ingest.ingest` of the same input
    would.
    """
    from distributed import as_completed
    from tqdm.auto import tqdm

    if not models:
        raise ValueError("ingest needs at least one model")
    items = list(items)
    limits = limits or Limits()
    url = server_url(store, kv_url)
    build = [_build_args(m) for m in models]
    for key, dim, version in client.submit(model_specs, build, pure=False, workers=workers).result():
        store.register_model(key, dim, version)
    keys = [m.key for m in models]
    summary = IngestSummary(models=keys, store=store.url, namespace=store.namespace)
    mode = "workers write" if url else "workers embed, client writes"
    log.info("dask ingest of %d items on %d workers (%s) into %s", len(items),
             len(workers) if workers else len(client.scheduler_info().get("workers", {})), mode, store.url)
    t0 = time.perf_counter()
    bar = tqdm(total=len(items), desc=f"ingest {'+'.join(keys)} (dask)", unit="img", disable=not progress)
    seen: set[str] = set()
    try:
        for w0 in range(0, len(items), max(1, wave_size)):
            wave = items[w0:w0 + wave_size]
            hparts = split(wave, hash_partition_size)
            futs = client.map(hash_partition, hparts, max_bytes=limits.max_bytes, pure=False,
                              workers=workers)
            shas = [sha for part in client.gather(futs) for sha in part]
            plan = plan_wave(shas, _lookup(store, (s for s in shas if s), keys), seen)
            summary.duplicates += plan.duplicates
            summary.seen += plan.duplicates
            bar.update(plan.duplicates)
            parts = split(plan.primaries, partition_size)
            futures = {}
            for idx in parts:
                fut = client.submit(ingest_partition, [wave[i] for i in idx], build, url, store.namespace,
                                    batch_size, limits, pure=False, workers=workers)
                futures[fut] = idx
            for fut in as_completed(list(futures), loop=client.loop):
                idx = futures.pop(fut)
                res = fut.result()
                _account(summary, res, [plan.kind[i] for i in idx])
                if url is None:
                    _client_write(store, res["images"])
                fut.release()
                bar.update(len(idx))
                bar.set_postfix(added=summary.added, dup=summary.duplicates,
                                rej=sum(summary.rejected.values()), refresh=False)
    finally:
        bar.close()
    summary.seconds = time.perf_counter() - t0
    log.info("dask ingest done: %s", summary.to_dict())
    return summary


def _account(summary: IngestSummary, res: dict[str, Any], kinds: Sequence[str]) -> None:
    rejected = Counter(res["rejected"])
    added, embedded = partition_counts(kinds, sum(rejected.values()))
    summary.rejected.update(rejected)
    summary.added += added
    summary.embedded += embedded
    summary.seen += len(kinds)
    if res["duplicates"]:
        log.debug("a partition found %d of its images stored meanwhile (a retried partition or "
                  "a concurrent ingest)", res["duplicates"])


def _client_write(store: Store, images: Sequence[tuple]) -> None:
    for part in split(images, 256):
        store.add_images([NewImage(sha, src, w, h, label, vecs) for sha, src, w, h, label, vecs in part])


def ingest_on_dask(target: str, items: Sequence[ImageItem], store: Store,
                   models: Sequence[EmbeddingModel], **kwargs: Any) -> IngestSummary:
    """:func:`dask_ingest` on ``target`` (``local:N`` or a scheduler address); the client is reused."""
    from imgsim_lab.scaleout.cluster import shared_client

    return dask_ingest(items, store, models, client=shared_client(target), **kwargs)


def ingest_function(dask: str | None):
    """``imgsim_lab.ingest.ingest``, or the same call run on the Dask cluster ``dask``.

    The hook notebooks use: ``ingest_function(p.dask)(items, store, models, batch_size=…)``.
    """
    if not dask:
        from imgsim_lab.ingest import ingest

        return ingest

    def run(items, store, models, *, batch_size=DEFAULT_BATCH_SIZE, limits=None, progress=True, **_):
        return ingest_on_dask(dask, items, store, models, batch_size=batch_size, limits=limits,
                              progress=progress)

    return run
