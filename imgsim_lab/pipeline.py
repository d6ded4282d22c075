"""Stages that turn images into stored vectors: reader → validate/dedupe → decode → embed → write.

One background-thread primitive, :func:`prefetch`, runs a stage ahead of its consumer;
ingest (:mod:`imgsim_lab.ingest`), the benchmarks and index rebuilds use it. The embed
stages are here too:

- :func:`embed_stream` — ``(key, source)`` items to :class:`EmbeddedBatch` es, decoding and
  preprocessing in a thread pool (PIL and numpy release the GIL) up to
  ``EmbedOptions.prefetch`` batches ahead of the forward;
- :class:`ProcessEmbedder` — N spawned worker processes with one compute thread each;
- :func:`embed_batches` — the forward of several models over one batch of decoded inputs.

Ingest composes its own reader (read + hash), dedupe (store look-up) and writer
(``Store.add_images``) around the same decode and embed stages::

    for b in embed_stream(model, ((key, path) for key, path in files), EmbedOptions(batch_size=64)):
        store.add_images(...)                            # b.keys, b.vectors; b.failed: [(key, error)]
"""

from __future__ import annotations

import contextlib
import io
import logging
import os
import queue
import threading
from collections import deque
from collections.abc import Callable, Hashable, Iterable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field, fields, replace
from typing import Any, Generic, Literal, TypeVar, Union

import numpy as np
from PIL import Image
from tqdm.auto import tqdm

from imgsim_lab.iterutil import chunked
from imgsim_lab.models.base import EmbeddingModel, default_num_threads, set_thread_limit, stack

log = logging.getLogger(__name__)

T = TypeVar("T")

#: What an item's source may be: an image, encoded bytes, a file path, or a loader of those.
Source = Union[Image.Image, bytes, str, os.PathLike, Callable[[], "Source"]]  # noqa: UP007


# -- prefetch: the one background-thread stage ---------------------------------------------


class Prefetched(Generic[T]):
    """Iterates ``it`` on a background thread, at most ``depth`` items ahead of the consumer.

    The thread starts at construction (so a store read can overlap whatever the caller
    does first). Exhaust it, ``close()`` it or use it as a context manager; an exception
    of the producer is re-raised in the consumer, in order.
    """

    _DONE = object()

    def __init__(self, it: Iterable[T], depth: int = 2, name: str = "imgsim-prefetch") -> None:
        self._q: queue.Queue = queue.Queue(maxsize=max(1, depth))
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._work, args=(iter(it),), name=name, daemon=True)
        self._thread.start()

    def _put(self, x: Any) -> bool:
        while not self._stop.is_set():
            try:
                self._q.put(x, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def _work(self, it: Iterator[T]) -> None:
        try:
            for x in it:
                if not self._put(x):
                    return
        except BaseException as exc:  # noqa: BLE001 - re-raised in the consumer
            self._put(_Failure(exc))
            return
        finally:
            close = getattr(it, "close", None)
            if close is not None and self._stop.is_set():
                with contextlib.suppress(Exception):
                    close()
        self._put(self._DONE)

    def __iter__(self) -> Iterator[T]:
        try:
            while True:
                x = self._q.get()
                if x is self._DONE:
                    return
                if isinstance(x, _Failure):
                    raise x.exc
                yield x
        finally:
            self.close()

    def close(self) -> None:
        """Stop the producer (it finishes the item it is computing) and wait for it."""
        self._stop.set()
        while self._thread.is_alive():
            try:
                self._q.get(timeout=0.05)
            except queue.Empty:
                pass

    def __enter__(self) -> Prefetched[T]:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


@dataclass
class _Failure:
    exc: BaseException


def prefetch(it: Iterable[T], depth: int = 2, name: str = "imgsim-prefetch") -> Prefetched[T]:
    """Run ``it`` on a background thread up to ``depth`` items ahead; see :class:`Prefetched`."""
    return Prefetched(it, depth, name)


# -- decode ------------------------------------------------------------------------------


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


def _prepare(model: EmbeddingModel, src: Source) -> np.ndarray:
    return model.preprocess(load_image(src))


# -- embed -------------------------------------------------------------------------------


@dataclass
class EmbeddedBatch:
    """One batch of results, in input order: ``vectors[i]`` belongs to ``keys[i]``."""

    keys: list[Hashable]
    vectors: np.ndarray
    failed: list[tuple[Hashable, str]] = field(default_factory=list)


@dataclass(frozen=True)
class EmbedOptions:
    """How :func:`embed_stream` runs.

    ``workers`` decode threads (None: one per core) prepare up to ``prefetch`` batches
    ahead of the forward. Items that fail to load/preprocess are logged and reported in
    ``EmbeddedBatch.failed`` (``on_error="skip"``) or re-raised (``"raise"``).
    ``processes=N`` (N >= 2) runs N worker processes with one compute thread each instead
    (the model must come from ``get_model``; sources must be picklable).
    """

    batch_size: int = 64
    workers: int | None = None
    prefetch: int = 2
    on_error: Literal["skip", "raise"] = "skip"
    progress: bool = False
    total: int | None = None
    processes: int = 0

    def __post_init__(self) -> None:
        if self.batch_size < 1:
            raise ValueError("batch_size must be >= 1")
        if self.on_error not in ("skip", "raise"):
            raise ValueError(f"on_error must be 'skip' or 'raise', got {self.on_error!r}")


_OPTION_NAMES = {f.name for f in fields(EmbedOptions)}


def _options(options: EmbedOptions | None, overrides: dict[str, Any]) -> EmbedOptions:
    unknown = set(overrides) - _OPTION_NAMES
    if unknown:
        raise TypeError(f"unknown embed option(s): {', '.join(sorted(unknown))}")
    return replace(options or EmbedOptions(), **overrides)


def embed_batches(models: Sequence[EmbeddingModel],
                  inputs: dict[str, list[np.ndarray]]) -> dict[str, np.ndarray]:
    """The forward of each model over its stacked inputs: ``{model.key: (n, dim) vectors}``."""
    return {m.key: m.embed_batch(stack(inputs[m.key])) for m in models}


def embed_stream(model: EmbeddingModel, items: Iterable[tuple[Hashable, Source]],
                 options: EmbedOptions | None = None, **overrides: Any) -> Iterator[EmbeddedBatch]:
    """Embed ``(key, source)`` items; yield one :class:`EmbeddedBatch` per ``batch_size`` items.

    ``options`` (an :class:`EmbedOptions`) or its fields as keywords (``batch_size=32``).
    """
    opts = _options(options, overrides)
    if opts.processes and opts.processes > 1:
        with ProcessEmbedder(model, opts.processes) as pe:
            yield from pe.stream(items, opts)
        return
    pending: deque[tuple[list, list[Future]]] = deque()
    bar = tqdm(total=opts.total, unit="img", desc=f"embed {model.key}", disable=not opts.progress)

    def finish(keys: list, futs: list[Future]) -> EmbeddedBatch:
        ok_keys, arrays, failed = [], [], []
        for k, f in zip(keys, futs, strict=True):
            try:
                arrays.append(f.result())
                ok_keys.append(k)
            except Exception as exc:
                if opts.on_error == "raise":
                    raise
                log.warning("cannot embed %r: %s", k, exc)
                failed.append((k, f"{type(exc).__name__}: {exc}"))
        vecs = model.embed_batch(np.stack(arrays)) if arrays else np.zeros((0, model.dim), np.float32)
        bar.update(len(keys))
        return EmbeddedBatch(ok_keys, vecs, failed)

    ex = ThreadPoolExecutor(max_workers=opts.workers or default_num_threads(),
                            thread_name_prefix="imgsim-decode")
    try:
        for chunk in chunked(items, opts.batch_size):
            keys = [k for k, _ in chunk]
            pending.append((keys, [ex.submit(_prepare, model, s) for _, s in chunk]))
            if len(pending) > opts.prefetch:
                yield finish(*pending.popleft())
        while pending:
            yield finish(*pending.popleft())
    finally:
        ex.shutdown(wait=True, cancel_futures=True)
        bar.close()


def embed_all(model: EmbeddingModel, items: Iterable[tuple[Hashable, Source]],
              options: EmbedOptions | None = None, **overrides: Any
              ) -> tuple[list[Hashable], np.ndarray, list[tuple[Hashable, str]]]:
    """:func:`embed_stream` collected: (keys, (n, dim) vectors, failed)."""
    keys: list[Hashable] = []
    parts: list[np.ndarray] = []
    failed: list[tuple[Hashable, str]] = []
    for b in embed_stream(model, items, options, **overrides):
        keys.extend(b.keys)
        parts.append(b.vectors)
        failed.extend(b.failed)
    vecs = np.concatenate(parts) if parts else np.zeros((0, model.dim), dtype=np.float32)
    return keys, vecs, failed


# -- worker processes --------------------------------------------------------------------

_PROC_MODEL: EmbeddingModel | None = None


def _proc_init(name: str, size: int | None, options: dict, threads: int) -> None:
    global _PROC_MODEL
    from imgsim_lab.models.registry import get_model
    from imgsim_lab.threads import limit_native_threads

    set_thread_limit(threads)
    limit_native_threads(threads)
    _PROC_MODEL = get_model(name, size, **options).warm_up()


def _proc_embed(chunk: list[tuple[Hashable, Source]], on_error: str) -> EmbeddedBatch:
    assert _PROC_MODEL is not None
    m = _PROC_MODEL
    keys, arrays, failed = [], [], []
    for k, src in chunk:
        try:
            arrays.append(m.preprocess(load_image(src)))
            keys.append(k)
        except Exception as exc:
            if on_error == "raise":
                raise
            failed.append((k, f"{type(exc).__name__}: {exc}"))
    vecs = m.embed_batch(np.stack(arrays)) if arrays else np.zeros((0, m.dim), np.float32)
    return EmbeddedBatch(keys, vecs, failed)


def _proc_ready(_: int) -> bool:
    return _PROC_MODEL is not None


class ProcessEmbedder:
    """N spawned worker processes, one compute thread each, each holding the model.

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
        ctx = mp.get_context("spawn")  # fork is unsafe once an OpenMP/ORT pool exists
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

    def stream(self, items: Iterable[tuple[Hashable, Source]], options: EmbedOptions | int | None = None,
               **overrides: Any) -> Iterator[EmbeddedBatch]:
        """Like :func:`embed_stream`, with batches spread over the worker processes.

        ``options`` may also be a batch size (``stream(items, 32)``).
        """
        if isinstance(options, int):
            options, overrides = None, {"batch_size": options, **overrides}
        opts = _options(options, overrides)
        bar = tqdm(total=opts.total, unit="img", desc=f"embed {self.model.key}",
                   disable=not opts.progress)
        pending: deque = deque()
        try:
            for chunk in chunked(items, opts.batch_size):
                pending.append(self._pool.apply_async(_proc_embed, (chunk, opts.on_error)))
                if len(pending) >= self.processes + opts.prefetch:
                    yield self._done(pending.popleft().get(), bar)
            while pending:
                yield self._done(pending.popleft().get(), bar)
        finally:
            bar.close()

    @staticmethod
    def _done(b: EmbeddedBatch, bar: tqdm) -> EmbeddedBatch:
        bar.update(len(b.keys) + len(b.failed))
        for k, err in b.failed:
            log.warning("cannot embed %r: %s", k, err)
        return b
