"""The search app's logic without widgets: one upload in, one :class:`Outcome` out.

:class:`SearchSession` searches through a read-only view of the store with one or more
models side by side. When uploads are added, an embedded RocksDB store is opened for
writing only for the moment of the write (RocksDB admits one writing process; another
one holding it is reported, not fatal); a Redis/Kvrocks store is written directly.

An added upload gets an embedding from **every** model the collection holds, so
``imgsim check`` finds no ``missing_embedding`` afterwards; when one of those models
cannot run here, the upload is searched but not added, and the message says why.
"""

from __future__ import annotations

import base64
import contextlib
import io
import logging
import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from PIL import Image

from imgsim_lab import config
from imgsim_lab.datasets import Located, locate
from imgsim_lab.expansion import ExpansionConfig
from imgsim_lab.images import ImageRejected, Limits, decode, safe_name, sha256_hex
from imgsim_lab.messages import describe_rejection
from imgsim_lab.models.base import split_key
from imgsim_lab.search import QueryResult, Searcher
from imgsim_lab.store import NewImage, Store, StoreError, StoreLockedError, open_store, parse_url

log = logging.getLogger(__name__)

#: Directory under the data dir where added uploads are kept, so results can show them.
UPLOADS_DIR = "uploads"
#: How long adding an upload waits for another process's RocksDB writer.
WRITE_LOCK_TIMEOUT = 2.0
#: Models compared side by side at most.
MAX_MODELS = 3


@dataclass
class Outcome:
    """What became of one uploaded file (or one stored image searched again).

    ``status`` is ``added``, ``duplicate``, ``searched`` (not added), ``rejected`` or
    ``error``; ``message`` is the sentence shown to the user. ``results`` holds one
    :class:`QueryResult` per model compared (``result`` is the first model's).
    """

    name: str
    status: str
    message: str
    result: QueryResult | None = None
    preview: bytes | None = None  # JPEG thumbnail of the upload
    reason: str | None = None  # rejection code
    notes: list[str] = field(default_factory=list)
    results: dict[str, QueryResult] = field(default_factory=dict)


@dataclass(frozen=True)
class Thumb:
    """A result's preview: JPEG bytes, or why there is none (``missing`` path, or no file)."""

    jpeg: bytes | None
    missing: str | None = None


split_model_key = split_key  # (name, size) of a stored model key


def resolve_source(source: str, data_dir: Path) -> Path | None:
    """The file of a record's ``source`` under ``data_dir``, or None (missing, or escaping it).

    The check is on the path as written: absolute paths, drive letters and ``..`` are
    refused; symbolic links inside the data dir (a dataset linked in) are followed.
    """
    return locate(source, None, data_dir).path


def thumbnail(data: bytes, max_side: int = 256, limits: Limits | None = None) -> bytes:
    """A JPEG thumbnail of validated image bytes (raises ImageRejected for bad ones)."""
    img, _ = decode(data, limits or Limits())
    img.thumbnail((max_side, max_side), Image.Resampling.LANCZOS)
    out = io.BytesIO()
    img.save(out, "JPEG", quality=88)
    return out.getvalue()


def data_uri(jpeg: bytes) -> str:
    """``data:image/jpeg;base64,...`` for an ``<img src>``."""
    return "data:image/jpeg;base64," + base64.b64encode(jpeg).decode("ascii")


def warm_up(name: str, size: int | None = None) -> None:
    """Load a model in the background so the first upload is fast (when the library offers it)."""
    from imgsim_lab import models

    preload = getattr(models, "preload", None)
    if preload is not None:
        try:
            preload(name, size, background=True)
        except Exception as exc:  # noqa: BLE001 - only an optimisation
            log.debug("preload of %s failed: %s", name, exc)


class SearchSession:
    """A store, the models chosen among those it holds, and the upload handler."""

    def __init__(self, kv_url: str | None = None, namespace: str | None = None,
                 data_dir: str | os.PathLike[str] | None = None, limits: Limits | None = None) -> None:
        settings = config.Settings.from_env(kv_url=kv_url, namespace=namespace, data_dir=data_dir)
        self.kv_url = settings.kv_url
        self.namespace = settings.namespace
        self.data_dir = settings.data_dir
        self.limits = limits or settings.limits()
        scheme, target = parse_url(self.kv_url)
        self.embedded = scheme == "rocksdb"
        if self.embedded and not (Path(target) / "CURRENT").exists():
            raise StoreError(f"no store at {target} yet: ingest a collection first, e.g. "
                             f"`imgsim ingest cifar10:train --limit 1000 --kv {self.kv_url}`")
        self.store: Store = open_store(self.kv_url, self.namespace, read_only=self.embedded)
        self.searchers: dict[str, Searcher] = {}
        self.expansion = ExpansionConfig()  # αQE off until set_expansion
        self._thumbs: dict[int, Thumb] = {}

    @property
    def searcher(self) -> Searcher | None:
        """The first (primary) model's searcher."""
        return next(iter(self.searchers.values()), None)

    # ------------------------------------------------------------------ facts
    def model_keys(self) -> list[str]:
        """Model keys with at least one stored embedding, most embeddings first."""
        self.store.refresh()
        models = self.store.model_info()
        return sorted((k for k, m in models.items() if m.count), key=lambda k: (-models[k].count, k))

    def facts(self) -> dict:
        """Store facts for the app: images, models (dim, count) and each open index's mode."""
        self.store.refresh()
        info = self.store.info()
        info["indexes"] = {}
        for key, s in self.searchers.items():
            if s._index is not None:
                st = s.index.stats()
                info["indexes"][key] = {"mode": st["mode"], "ntotal": st["ntotal"]}
        return info

    def _searcher(self, key: str) -> Searcher:
        name, size = split_model_key(key)
        searcher = Searcher(self.store, name, size=size, limits=self.limits, expansion=self.expansion)
        if searcher.model.key != key:
            raise ValueError(f"model {name!r} at {size or 'its default size'} is stored as "
                             f"{searcher.model.key!r}, not {key!r}")
        stored = self.store.model_info().get(key)
        if stored is not None and stored.version != searcher.model.version:
            raise ValueError(f"{key} vectors in the store were made by version {stored.version!r}, "
                             f"this code has {searcher.model.version!r}: re-ingest or use another namespace")
        searcher.index  # noqa: B018 - load or build the index now, not on the first upload
        return searcher

    def use_models(self, keys: Sequence[str]) -> None:
        """Search with these stored models, side by side (the first is the primary one)."""
        keys = list(dict.fromkeys(keys))
        if not keys:
            raise ValueError("choose at least one model")
        if len(keys) > MAX_MODELS:
            raise ValueError(f"compare at most {MAX_MODELS} models at once")
        searchers = {k: self.searchers.get(k) or self._searcher(k) for k in keys}
        self.searchers = searchers

    def set_expansion(self, expansion: ExpansionConfig) -> None:
        """Query expansion (αQE) for every model's searches from now on (``n=0``: off)."""
        self.expansion = expansion
        for s in self.searchers.values():
            s.expansion = expansion

    def use_model(self, key: str) -> None:
        """Search with the stored model ``key`` alone."""
        self.use_models([key])

    # ---------------------------------------------------------------- uploads
    def handle_upload(self, name: str, data: bytes, k: int = 5, add: bool = False) -> Outcome:
        """Validate, search and optionally add one uploaded file. Never raises."""
        shown = safe_name(name)
        try:
            if not self.searchers:
                raise RuntimeError("no model selected")
            return self._handle(shown, data, k, add)
        except ImageRejected as exc:
            return Outcome(shown, "rejected", f"{shown} was rejected: {describe_rejection(exc)}.",
                           reason=exc.reason)
        except Exception as exc:  # noqa: BLE001 - shown in the app, which keeps working
            log.exception("upload %s failed", shown)
            return Outcome(shown, "error", f"{shown}: {type(exc).__name__}: {exc}")

    def _search_all(self, data: bytes, k: int, name: str) -> dict[str, QueryResult]:
        return {key: s.search_bytes(data, k=k, add=False, source=name) for key, s in self.searchers.items()}

    def _handle(self, name: str, data: bytes, k: int, add: bool) -> Outcome:
        if len(data) > self.limits.max_bytes:
            raise ImageRejected("too_large_bytes", f"{len(data)} bytes > limit {self.limits.max_bytes}")
        preview = thumbnail(data, limits=self.limits)  # full validation, before anything else
        self.store.refresh()
        sha = sha256_hex(data)
        stored_id = self.store.ids_for_hashes([sha])[0]
        notes: list[str] = []
        created = False
        completed: list[str] = []
        if add:
            try:
                if stored_id is None:
                    created = self._add(name, data, sha)
                else:
                    completed = self._complete(stored_id, data, sha)
            except StoreLockedError as exc:
                notes.append(f"Not added: {exc}")
            except _ModelsUnavailable as exc:
                notes.append(f"Not added: {exc}")
            self.store.refresh()
        results = self._search_all(data, k, name)
        first = next(iter(results.values()))
        if created:
            for r in results.values():
                r.added, r.duplicate = True, False
            return Outcome(name, "added", f"{name}: new image, added to the collection as id "
                           f"{first.stored_id}.", first, preview, notes=notes, results=results)
        if first.duplicate:
            if completed:
                how = f"its missing {', '.join(completed)} embedding(s) were computed and stored"
            else:
                missing = [key for key, r in results.items()
                           if not self.store.has_embeddings(key, [r.stored_id])[0]]
                how = ("searched with its stored embedding" if not missing else
                       f"it has no stored {', '.join(missing)} embedding, so it was embedded for this "
                       "search only (not stored)")
            return Outcome(name, "duplicate", f"{name}: already in the collection as id "
                           f"{first.stored_id}; {how}.", first, preview, notes=notes, results=results)
        return Outcome(name, "searched", f"{name}: new image, searched without adding it.",
                       first, preview, notes=notes, results=results)

    def search_stored(self, image_id: int, k: int = 5) -> Outcome:
        """Search a stored image (by id) with every chosen model. Never raises."""
        label = f"image #{image_id}"
        try:
            rec = self.store.get_records([image_id])[0]
            if rec is None:
                return Outcome(label, "error", f"There is no image with id {image_id} in the collection.")
            label = f"#{image_id} {rec.source}"
            results: dict[str, QueryResult] = {}
            from imgsim_lab.images import ImageInfo

            for key, s in self.searchers.items():
                r = QueryResult(rec.sha256, ImageInfo("stored", rec.width, rec.height, "RGB"),
                                stored_id=image_id, duplicate=True)
                r.matches = s.search_id(image_id, k=k)
                results[key] = r
            thumb = self.match_thumbnail(image_id, rec.source, rec.path)
            return Outcome(label, "duplicate", f"{label}: a stored image, searched with its stored "
                           "embeddings.", next(iter(results.values())), thumb.jpeg, results=results)
        except KeyError as exc:
            return Outcome(label, "error", f"{label}: {exc.args[0] if exc.args else exc}")
        except Exception as exc:  # noqa: BLE001
            log.exception("searching %s failed", label)
            return Outcome(label, "error", f"{label}: {type(exc).__name__}: {exc}")

    # ------------------------------------------------------------------ writes
    def _all_models(self) -> dict[str, object]:
        """Every model the collection holds embeddings of, built here (raises when one cannot run)."""
        from imgsim_lab.models import get_model

        out, failed = {}, []
        for key in self.model_keys():
            if key in self.searchers:
                out[key] = self.searchers[key].model
                continue
            name, size = split_model_key(key)
            try:
                out[key] = get_model(name, size=size)
            except Exception as exc:  # noqa: BLE001 - reported to the user
                failed.append(f"{key} ({exc})")
        if failed:
            raise _ModelsUnavailable("the collection also holds models that cannot run here, and an "
                                     "added image must get an embedding from each: " + "; ".join(failed))
        return out

    def _vectors(self, data: bytes, models: dict, only: Sequence[str] | None = None) -> dict:
        img, _ = decode(data, self.limits)
        return {key: m.embed_images([img])[0] for key, m in models.items()
                if only is None or key in only}

    def _add(self, name: str, data: bytes, sha: str) -> bool:
        """Embed with every model of the collection and store the upload; True if created.

        The file is kept under ``<data>/uploads/`` before the write and removed only when
        the store is known not to hold a record pointing at it.
        """
        models = self._all_models()
        vecs = self._vectors(data, models)
        _, info = decode(data, self.limits)
        rel = f"{UPLOADS_DIR}/{sha[:16]}-{name}"
        path = self.data_dir / rel
        fresh = not path.exists()
        if fresh:
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp = path.with_name(f".{path.name}.tmp")
            tmp.write_bytes(data)
            tmp.replace(path)
        created = False
        try:
            with self._writer() as w:
                for key, m in models.items():
                    w.register_model(key, m.dim, m.version)
                res = w.add_images([NewImage(sha, rel, info.width, info.height, None, vecs,
                                             path=str(path.resolve()))])[0]
            created = res.created
            log.info("upload %s added as id %d (created=%s, models %s)", rel, res.id, res.created,
                     ",".join(models))
        finally:
            if fresh and not self._record_uses(sha, rel):
                path.unlink(missing_ok=True)
        return created

    def _record_uses(self, sha: str, rel: str) -> bool:
        """Whether the store (as it is now) holds a record of ``sha`` whose source is ``rel``."""
        try:
            self.store.refresh()
            image_id = self.store.ids_for_hashes([sha])[0]
            if image_id is None:
                return False
            rec = self.store.get_records([image_id])[0]
            return rec is not None and rec.source == rel
        except Exception:  # noqa: BLE001 - unknown outcome: keep the file
            log.warning("cannot tell whether upload %s was stored; keeping its file", rel)
            return True

    def _complete(self, image_id: int, data: bytes, sha: str) -> list[str]:
        """Store the embeddings a stored image lacks among the collection's models."""
        models = self.model_keys()
        missing = [k for k in models if not self.store.has_embeddings(k, [image_id])[0]]
        if not missing:
            return []
        built = self._all_models()
        vecs = self._vectors(data, built, only=missing)
        rec = self.store.get_records([image_id])[0]
        with self._writer() as w:
            for key in missing:
                w.register_model(key, built[key].dim, built[key].version)
            w.add_images([NewImage(sha, rec.source if rec else "upload", rec.width if rec else 1,
                                   rec.height if rec else 1, rec.label if rec else None, vecs)])
        log.info("image %d: stored its missing %s embeddings", image_id, ",".join(missing))
        return missing

    @contextlib.contextmanager
    def _writer(self) -> Iterator[Store]:
        """A writable store for one write: a brief RocksDB writer, or the Redis store itself."""
        if not self.embedded:
            yield self.store
            return
        with open_store(self.kv_url, self.namespace, lock_timeout=WRITE_LOCK_TIMEOUT) as w:
            yield w

    # ---------------------------------------------------------------- results
    def match_thumbnail(self, image_id: int, source: str | None, path: str | None = None) -> Thumb:
        """A stored image's preview: its file found by recorded path or source, or why not."""
        if image_id not in self._thumbs:
            where: Located = locate(source, path, self.data_dir)
            thumb = Thumb(None, missing=where.missing)
            if where.path is not None:
                try:
                    thumb = Thumb(thumbnail(where.path.read_bytes(), max_side=160, limits=self.limits))
                except (OSError, ImageRejected) as exc:
                    log.warning("no preview of %s: %s", source, exc)
            if len(self._thumbs) > 2000:
                self._thumbs.clear()
            self._thumbs[image_id] = thumb
        return self._thumbs[image_id]

    def close(self) -> None:
        """Release the store."""
        self.store.close()


class _ModelsUnavailable(RuntimeError):
    """A model the collection holds cannot be built here, so an image cannot get all of them."""
