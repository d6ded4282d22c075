"""Overlapped embedding: decode + preprocess in threads while torch runs the forward.

PIL decoding/resizing and torch's kernels release the GIL, so a small thread pool
preparing the next batches keeps end-to-end throughput close to the forward alone.
The ingest pipeline uses :func:`embed_stream`::

    for b in embed_stream(model, ((key, path) for key, path in files), batch_size=64):
        store.put_many(model.key, b.keys, b.vectors)   # b.failed: [(key, error)]
"""

from __future__ import annotations

import io
import logging
import os
from collections import deque
from collections.abc import Callable, Hashable, Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Literal, Union

import numpy as np
import torch
from PIL import Image
from tqdm.auto import tqdm

from imgsim_lab.iterutil import chunked
from imgsim_lab.models.base import EmbeddingModel, default_num_threads, set_thread_limit

log = logging.getLogger(__name__)

#: What an item's source may be: an image, encoded bytes, a file path, or a loader of those.
Source = Union[Image.Image, bytes, str, os.PathLike, Callable[[], "Source"]]  # noqa: UP007


@dataclass
class EmbeddedBatch:
    """One batch of results, in input order: ``vectors[i]`` belongs to ``keys[i]``."""

    keys: list[Hashable]
    vectors: np.ndarray
    failed: list[tuple[Hashable, str]] = field(default_factory=list)


def load_image(src: Source) -> Image.Image:
    """Resolve a :data:`Source` to a fully decoded PIL image."""
    while callable(src) and not isinstance(src, Image.Image):
        src = src()
    if isinstance(src, Image.Image):
        return src
    if isinstance(src, bytes | bytearray | memoryview):
        img = Image.open(io.BytesIO(src))
    elif isinstance(src, str | os.PathLike):
        img = Image.open(src)
    else:
        raise TypeError(f"cannot load an image from {type(src).__name__}")
    img.load()
    return img


def _prepare(model: EmbeddingModel, src: Source) -> torch.Tensor:
    return model.preprocess(load_image(src))


def embed_stream(model: EmbeddingModel, items: Iterable[tuple[Hashable, Source]], *,
                 batch_size: int = 64, workers: int | None = None, prefetch: int = 2,
                 on_error: Literal["skip", "raise"] = "skip", progress: bool = False,
                 total: int | None = None, processes: int = 0) -> Iterator[EmbeddedBatch]:
    """Embed ``(key, source)`` items; yield one :class:`EmbeddedBatch` per ``batch_size`` items.

    ``workers`` decode threads (default: number of cores) prepare up to ``prefetch``
    batches ahead of the forward. Items that fail to load/preprocess are logged and
    reported in ``failed`` (``on_error="skip"``) or re-raised (``"raise"``).

    ``processes=N`` (N >= 2) instead runs N worker processes with one torch thread each,
    every one decoding and embedding whole batches (see docs/models.md for when that is
    faster). The model must come from :func:`get_model` and be registered on import, and
    sources must be picklable (paths, bytes, PIL images; not lambdas).
    """
    if batch_size < 1:
        raise ValueError("batch_size must be >= 1")
    if processes and processes > 1:
        yield from _embed_processes(model, items, batch_size, processes, prefetch, on_error,
                                    progress, total)
        return
    workers = workers or default_num_threads()
    pending: deque[tuple[list, list[Future]]] = deque()
    bar = tqdm(total=total, unit="img", desc=f"embed {model.key}", disable=not progress)

    def finish(keys: list, futs: list[Future]) -> EmbeddedBatch:
        ok_keys, tensors, failed = [], [], []
        for k, f in zip(keys, futs, strict=True):
            try:
                tensors.append(f.result())
                ok_keys.append(k)
            except Exception as exc:
                if on_error == "raise":
                    raise
                log.warning("cannot embed %r: %s", k, exc)
                failed.append((k, f"{type(exc).__name__}: {exc}"))
        if tensors:
            vecs = model.embed_batch(torch.stack(tensors))
        else:
            vecs = np.zeros((0, model.dim), dtype=np.float32)
        bar.update(len(keys))
        return EmbeddedBatch(ok_keys, vecs, failed)

    ex = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="imgsim-decode")
    try:
        for chunk in chunked(items, batch_size):
            keys = [k for k, _ in chunk]
            pending.append((keys, [ex.submit(_prepare, model, s) for _, s in chunk]))
            if len(pending) > prefetch:
                yield finish(*pending.popleft())
        while pending:
            yield finish(*pending.popleft())
    finally:
        ex.shutdown(wait=True, cancel_futures=True)
        bar.close()


# -- worker processes ---------------------------------------------------------------------

_PROC_MODEL: EmbeddingModel | None = None


def _proc_init(name: str, size: int | None, options: dict, threads: int) -> None:
    global _PROC_MODEL
    from imgsim_lab.models.registry import get_model

    set_thread_limit(threads)
    _PROC_MODEL = get_model(name, size, **options)


def _proc_embed(chunk: list[tuple[Hashable, Source]], on_error: str) -> EmbeddedBatch:
    assert _PROC_MODEL is not None
    m = _PROC_MODEL
    keys, tensors, failed = [], [], []
    for k, src in chunk:
        try:
            tensors.append(m.preprocess(load_image(src)))
            keys.append(k)
        except Exception as exc:
            if on_error == "raise":
                raise
            failed.append((k, f"{type(exc).__name__}: {exc}"))
    vecs = m.embed_batch(torch.stack(tensors)) if tensors else np.zeros((0, m.dim), np.float32)
    return EmbeddedBatch(keys, vecs, failed)


class ProcessEmbedder:
    """N spawned worker processes, one torch thread each, each holding the model.

    Each worker decodes, preprocesses and embeds whole batches. Use as a context manager
    and call :meth:`stream` as often as needed (the start-up cost, ~seconds, is paid once).
    """

    def __init__(self, model: EmbeddingModel, processes: int = 2, threads: int = 1) -> None:
        import multiprocessing as mp

        if model.build_args is None:
            raise ValueError("worker processes need a model built by get_model()")
        name, size, options = model.build_args
        self.model = model
        self.processes = processes
        ctx = mp.get_context("spawn")  # fork is unsafe once torch's OpenMP pool exists
        self._pool = ctx.Pool(processes, initializer=_proc_init,
                              initargs=(name, size, options, threads))
        # Block until every worker has built its model.
        self._pool.map(_proc_ready, range(processes), chunksize=1)

    def __enter__(self) -> ProcessEmbedder:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self._pool.terminate()
        self._pool.join()

    def stream(self, items: Iterable[tuple[Hashable, Source]], batch_size: int = 64,
               prefetch: int = 2, on_error: str = "skip", progress: bool = False,
               total: int | None = None) -> Iterator[EmbeddedBatch]:
        """Like :func:`embed_stream`, with batches spread over the worker processes."""
        bar = tqdm(total=total, unit="img", desc=f"embed {self.model.key}",
                   disable=not progress)
        pending: deque = deque()
        try:
            for chunk in chunked(items, batch_size):
                pending.append(self._pool.apply_async(_proc_embed, (chunk, on_error)))
                if len(pending) >= self.processes + prefetch:
                    yield self._done(pending.popleft().get(), bar)
            while pending:
                yield self._done(pending.popleft().get(), bar)
        finally:
            bar.close()

    @staticmethod
    def _done(b: EmbeddedBatch, bar: tqdm) -> EmbeddedBatch:
        bar.update(len(b.keys) + len(b.failed))
        _log_failed(b)
        return b


def _proc_ready(_: int) -> bool:
    return _PROC_MODEL is not None


def _embed_processes(model: EmbeddingModel, items: Iterable[tuple[Hashable, Source]],
                     batch_size: int, processes: int, prefetch: int, on_error: str,
                     progress: bool, total: int | None) -> Iterator[EmbeddedBatch]:
    with ProcessEmbedder(model, processes) as pe:
        yield from pe.stream(items, batch_size, prefetch, on_error, progress, total)


def _log_failed(b: EmbeddedBatch) -> None:
    for k, err in b.failed:
        log.warning("cannot embed %r: %s", k, err)


def embed_all(model: EmbeddingModel, items: Iterable[tuple[Hashable, Source]],
              **kwargs) -> tuple[list[Hashable], np.ndarray, list[tuple[Hashable, str]]]:
    """:func:`embed_stream` collected: (keys, (n, dim) vectors, failed)."""
    keys: list[Hashable] = []
    parts: list[np.ndarray] = []
    failed: list[tuple[Hashable, str]] = []
    for b in embed_stream(model, items, **kwargs):
        keys.extend(b.keys)
        parts.append(b.vectors)
        failed.extend(b.failed)
    vecs = np.concatenate(parts) if parts else np.zeros((0, model.dim), dtype=np.float32)
    return keys, vecs, failed
