"""Ingestion as a pipeline of stages: read and hash → skip known → decode → embed → write.

- **read and hash** (:func:`read_stage`, thread pool): the file's bytes and their SHA-256;
- **skip known** (:func:`dedupe_stage`): one store look-up per chunk; an image whose sha256
  is stored with an embedding of every requested model is a duplicate and is never decoded;
- **decode** (:func:`decode_stage`, thread pool): validation (:mod:`imgsim_lab.images`)
  and each model's preprocessing;
- **embed** (:func:`imgsim_lab.pipeline.embed_batches`): each model's forward on the batch;
- **write** (:func:`write_stage`, the one place records are written): one atomic batch per
  chunk (:meth:`Store.add_images`), so an interrupted run resumes by running it again: only
  what is missing is added, never a duplicate.

Read, dedupe and decode run on a :func:`~imgsim_lab.pipeline.prefetch` thread up to two
chunks ahead of embed and write, so decoding overlaps the forward. The caller updates
the index from the store afterwards (``SimilarityIndex.sync``, as ``imgsim ingest`` does).
"""

from __future__ import annotations

import logging
import time
from collections import Counter
from collections.abc import Iterable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import numpy as np
from tqdm.auto import tqdm

from imgsim_lab.datasets import ImageItem
from imgsim_lab.images import ImageRejected, Limits, decode, sha256_hex
from imgsim_lab.iterutil import chunked
from imgsim_lab.messages import describe_rejection
from imgsim_lab.models import EmbeddingModel
from imgsim_lab.pipeline import embed_batches, prefetch
from imgsim_lab.store import NewImage, Store

log = logging.getLogger(__name__)
events = logging.getLogger("imgsim_lab.ingest.events")

DEFAULT_BATCH_SIZE = 64
DEFAULT_WORKERS = 2
#: Chunks read/decoded ahead of the forward.
PREFETCH_CHUNKS = 2


@dataclass
class IngestSummary:
    """What one run did. ``embedded`` counts stored images that got a new model's vector."""

    added: int = 0
    duplicates: int = 0
    embedded: int = 0
    rejected: Counter = field(default_factory=Counter)
    seen: int = 0
    seconds: float = 0.0
    models: list[str] = field(default_factory=list)
    store: str = ""
    namespace: str = ""

    @property
    def images_per_s(self) -> float:
        return self.seen / self.seconds if self.seconds else 0.0

    def to_dict(self) -> dict:
        return {"added": self.added, "duplicates": self.duplicates, "embedded": self.embedded,
                "rejected": dict(sorted(self.rejected.items())),
                "rejected_total": sum(self.rejected.values()), "seen": self.seen,
                "seconds": round(self.seconds, 3), "images_per_s": round(self.images_per_s, 2),
                "models": self.models, "store": self.store, "namespace": self.namespace}


@dataclass
class _Entry:
    item: ImageItem
    sha256: str
    width: int = 0
    height: int = 0
    inputs: dict[str, np.ndarray] = field(default_factory=dict)  # model key -> preprocessed input


@dataclass
class _Chunk:
    entries: list[_Entry]
    duplicates: int = 0
    rejected: list[tuple[ImageItem, ImageRejected]] = field(default_factory=list)
    size: int = 0


def _read(item: ImageItem, limits: Limits) -> tuple[bytes, str]:
    try:
        size = item.path.stat().st_size if item.path is not None else 0
        if size > limits.max_bytes:  # never read a huge file just to reject it
            raise ImageRejected("too_large_bytes", f"{size} bytes > limit {limits.max_bytes}")
        data = item.read_bytes()
    except OSError as exc:
        raise ImageRejected("not_an_image", f"cannot read {item.source}: {exc.strerror or exc}") from None
    if len(data) > limits.max_bytes:
        raise ImageRejected("too_large_bytes", f"{len(data)} bytes > limit {limits.max_bytes}")
    return data, sha256_hex(data)


def _decode(entry: _Entry, data: bytes, models: Sequence[EmbeddingModel], limits: Limits) -> _Entry:
    img, info = decode(data, limits)
    entry.width, entry.height = info.width, info.height
    for m in models:
        entry.inputs[m.key] = m.preprocess(img)
    return entry


def read_stage(items: list[ImageItem], limits: Limits, pool: ThreadPoolExecutor,
               out: _Chunk) -> list[tuple[ImageItem, bytes, str]]:
    """Read and hash; rejections go to ``out``. Returns (item, bytes, sha256) in order."""
    reads = list(pool.map(lambda it: _try(_read, it, limits), items))
    got = []
    for it, (res, err) in zip(items, reads, strict=True):
        if err is not None:
            out.rejected.append((it, err))
        else:
            got.append((it, *res))
    return got


def dedupe_stage(read: list[tuple[ImageItem, bytes, str]], store: Store,
                 models: Sequence[EmbeddingModel], seen: set[str],
                 out: _Chunk) -> list[tuple[ImageItem, bytes, str]]:
    """Drop images seen earlier in this run or stored with every model's vector."""
    fresh = []
    for it, data, sha in read:
        if sha in seen:
            out.duplicates += 1
            events.info("duplicate %s (same bytes as an earlier file of this run)", it.source)
        else:
            seen.add(sha)
            fresh.append((it, data, sha))
    ids = store.ids_for_hashes([sha for _, _, sha in fresh])
    missing = np.ones(len(fresh), bool)
    known = [i for i, image_id in enumerate(ids) if image_id is not None]
    if known:
        complete = np.ones(len(known), bool)
        for m in models:
            complete &= store.has_embeddings(m.key, [ids[i] for i in known])
        for i, done in zip(known, complete, strict=True):
            if done:
                missing[i] = False
                out.duplicates += 1
                events.debug("duplicate %s: already stored as id %d", fresh[i][0].source, ids[i])
    return [f for f, need in zip(fresh, missing, strict=True) if need]


def decode_stage(todo: list[tuple[ImageItem, bytes, str]], models: Sequence[EmbeddingModel],
                 limits: Limits, pool: ThreadPoolExecutor, out: _Chunk) -> None:
    """Validate, decode and preprocess for every model into ``out.entries`` (in order)."""
    decoded = pool.map(lambda f: _try(_decode, _Entry(f[0], f[2]), f[1], models, limits), todo)
    for (it, _, _), (entry, err) in zip(todo, decoded, strict=True):
        if err is not None:
            out.rejected.append((it, err))
        else:
            out.entries.append(entry)


def _chunks(items: Iterable[ImageItem], store: Store, models: Sequence[EmbeddingModel],
            limits: Limits, batch_size: int, pool: ThreadPoolExecutor) -> Iterator[_Chunk]:
    """Read, hash, skip known and decode, chunk by chunk."""
    seen: set[str] = set()
    for items_chunk in chunked(items, batch_size):
        out = _Chunk([], size=len(items_chunk))
        fresh = dedupe_stage(read_stage(items_chunk, limits, pool, out), store, models, seen, out)
        decode_stage(fresh, models, limits, pool, out)
        yield out


def _try(fn, *args):
    try:
        return fn(*args), None
    except ImageRejected as exc:
        return None, exc


def ingest(items: Sequence[ImageItem] | Iterable[ImageItem], store: Store,
           models: Sequence[EmbeddingModel], *, batch_size: int = DEFAULT_BATCH_SIZE,
           limits: Limits | None = None, workers: int = DEFAULT_WORKERS,
           progress: bool = True) -> IngestSummary:
    """Add ``items`` to ``store`` with an embedding per model; see the module docstring."""
    if not models:
        raise ValueError("ingest needs at least one model")
    limits = limits or Limits()
    for m in models:
        store.register_model(m.key, m.dim, m.version)
    summary = IngestSummary(models=[m.key for m in models], store=store.url, namespace=store.namespace)
    total = len(items) if hasattr(items, "__len__") else None
    t0 = time.perf_counter()
    bar = tqdm(total=total, desc=f"ingest {'+'.join(summary.models)}", unit="img", disable=not progress)
    with (ThreadPoolExecutor(max_workers=workers, thread_name_prefix="imgsim-decode") as pool,
          prefetch(_chunks(items, store, models, limits, batch_size, pool), PREFETCH_CHUNKS,
                   name="imgsim-ingest-reader") as chunks):  # stopped before the pool on error
        for chunk in chunks:
            for it, err in chunk.rejected:
                summary.rejected[err.reason] += 1
                events.info("rejected %s: %s", it.source, describe_rejection(err))
            summary.duplicates += chunk.duplicates
            if chunk.entries:
                vectors = embed_batches(models, {m.key: [e.inputs[m.key] for e in chunk.entries]
                                                 for m in models})
                write_stage(chunk.entries, vectors, store, summary)
            summary.seen += chunk.size
            bar.update(chunk.size)
            bar.set_postfix(added=summary.added, dup=summary.duplicates,
                            rej=sum(summary.rejected.values()), refresh=False)
    bar.close()
    summary.seconds = time.perf_counter() - t0
    log.info("ingest done: %s", summary.to_dict())
    return summary


def write_stage(entries: list[_Entry], vectors: dict[str, np.ndarray], store: Store,
                summary: IngestSummary) -> None:
    """Write one chunk atomically: each entry with its vector of every model (``vectors[key][i]``)."""
    new = [NewImage(e.sha256, e.item.source, e.width, e.height, e.item.label,
                    {k: v[i] for k, v in vectors.items()},
                    path=str(e.item.path.resolve()) if e.item.path is not None else None)
           for i, e in enumerate(entries)]
    results = store.add_images(new)
    from imgsim_lab.adapters import derive_new  # derived models (BASE+NAME) of the new images

    derive_new(store, [r.id for r in results])
    for e, res in zip(entries, results, strict=True):
        e.inputs.clear()
        if res.created:
            summary.added += 1
            events.debug("added %s as id %d (%dx%d, label %s)", e.item.source, res.id,
                         e.width, e.height, e.item.label)
        elif res.embedded:
            summary.embedded += 1
            events.debug("embedded %s (id %d) with %s", e.item.source, res.id, ",".join(res.embedded))
        else:
            summary.duplicates += 1  # another process stored it meanwhile
            events.debug("duplicate %s: stored meanwhile as id %d", e.item.source, res.id)
