"""The search app's logic without widgets: one upload in, one :class:`Outcome` out.

:class:`SearchSession` searches through a read-only view of the store. When uploads are
added, an embedded RocksDB store is opened for writing only for the moment of the write
(RocksDB admits one writing process; another one holding it is reported, not fatal); a
Redis/Kvrocks store is written directly.
"""

from __future__ import annotations

import base64
import contextlib
import io
import logging
import os
import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath

from PIL import Image

from imgsim_lab import config
from imgsim_lab.images import ImageRejected, Limits, decode, safe_name, sha256_hex
from imgsim_lab.search import QueryResult, Searcher
from imgsim_lab.store import NewImage, Store, StoreError, StoreLockedError, open_store, parse_url

log = logging.getLogger(__name__)

#: Directory under the data dir where added uploads are kept, so results can show them.
UPLOADS_DIR = "uploads"
#: How long adding an upload waits for another process's RocksDB writer.
WRITE_LOCK_TIMEOUT = 2.0
_KEY_RE = re.compile(r"^(?P<name>.+)_(?P<size>\d+)px$")


@dataclass
class Outcome:
    """What became of one uploaded file.

    ``status`` is ``added``, ``duplicate``, ``searched`` (not added), ``rejected`` or
    ``error``; ``message`` is the sentence shown to the user.
    """

    name: str
    status: str
    message: str
    result: QueryResult | None = None
    preview: bytes | None = None  # JPEG thumbnail of the upload
    reason: str | None = None  # rejection code
    notes: list[str] = field(default_factory=list)


def split_model_key(key: str) -> tuple[str, int | None]:
    """``efficientnet_lite0_96px`` -> ``("efficientnet_lite0", 96)``; a bare name -> ``(name, None)``."""
    m = _KEY_RE.match(key)
    return (m["name"], int(m["size"])) if m else (key, None)


def project_cwd() -> Path:
    """Make the project root the working directory when run from inside it (e.g. ``notebooks/``).

    Relative defaults (``data``, ``rocksdb:data/kv``) then mean what they mean on the
    command line. Returns the working directory.
    """
    from imgsim_lab.datasets import repo_root

    root = repo_root()
    cwd = Path.cwd().resolve()
    if (root / "pyproject.toml").exists() and cwd != root and root in cwd.parents:
        os.chdir(root)
        log.info("working directory set to the project root %s", root)
    return Path.cwd()


def resolve_source(source: str, data_dir: Path) -> Path | None:
    """The file of a record's ``source`` under ``data_dir``, or None (missing, or escaping it).

    The check is on the path as written: absolute paths, drive letters and ``..`` are
    refused; symbolic links inside the data dir (a dataset linked in) are followed.
    """
    if not source or "\x00" in source or "\\" in source or ":" in source:
        return None
    parts = PurePosixPath(source).parts
    if not parts or parts[0] == "/" or any(p in ("..", ".") for p in parts):
        return None
    path = data_dir.joinpath(*parts)
    try:
        return path if path.is_file() else None
    except OSError:
        return None


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


class SearchSession:
    """A store, the model chosen among those it holds, and the upload handler."""

    def __init__(self, kv_url: str | None = None, namespace: str | None = None,
                 data_dir: str | os.PathLike[str] | None = None, limits: Limits | None = None) -> None:
        self.kv_url = config.kv_url(kv_url)
        self.namespace = config.namespace(namespace)
        self.data_dir = config.data_dir(data_dir)
        self.limits = limits or Limits()
        scheme, target = parse_url(self.kv_url)
        self.embedded = scheme == "rocksdb"
        if self.embedded and not (Path(target) / "CURRENT").exists():
            raise StoreError(f"no store at {target} yet: ingest a collection first, e.g. "
                             "`imgsim ingest cifar10:train --limit 1000`")
        self.store: Store = open_store(self.kv_url, self.namespace, read_only=self.embedded)
        self.searcher: Searcher | None = None
        self._thumbs: dict[int, bytes | None] = {}

    # ------------------------------------------------------------------ facts
    def model_keys(self) -> list[str]:
        """Model keys with at least one stored embedding, most embeddings first."""
        self.store.refresh()
        models = self.store.model_info()
        return sorted((k for k, m in models.items() if m.count), key=lambda k: (-models[k].count, k))

    def facts(self) -> dict:
        """Store facts for the app: images, models (dim, count) and the current index's mode."""
        self.store.refresh()
        info = self.store.info()
        info["index"] = None
        if self.searcher is not None and self.searcher._index is not None:
            st = self.searcher.index.stats()
            info["index"] = {"model": self.searcher.model.key, "mode": st["mode"], "ntotal": st["ntotal"]}
        return info

    def use_model(self, key: str) -> None:
        """Switch to the stored model ``key`` (builds the model and loads its index)."""
        name, size = split_model_key(key)
        searcher = Searcher(self.store, name, size=size, limits=self.limits)
        if searcher.model.key != key:
            raise ValueError(f"model {name!r} at {size or 'its default size'} is stored as "
                             f"{searcher.model.key!r}, not {key!r}")
        stored = self.store.model_info().get(key)
        if stored is not None and stored.version != searcher.model.version:
            raise ValueError(f"{key} vectors in the store were made by version {stored.version!r}, "
                             f"this code has {searcher.model.version!r}: re-ingest or use another namespace")
        searcher.index  # noqa: B018 - load or build the index now, not on the first upload
        self.searcher = searcher
        self._thumbs.clear()

    # ---------------------------------------------------------------- uploads
    def handle_upload(self, name: str, data: bytes, k: int = 5, add: bool = False) -> Outcome:
        """Validate, search and optionally add one uploaded file. Never raises."""
        shown = safe_name(name)
        try:
            if self.searcher is None:
                raise RuntimeError("no model selected")
            return self._handle(shown, data, k, add)
        except ImageRejected as exc:
            return Outcome(shown, "rejected", f"{shown} was rejected ({exc.reason}): {exc.detail}",
                           reason=exc.reason)
        except Exception as exc:  # noqa: BLE001 - shown in the app, which keeps working
            log.exception("upload %s failed", shown)
            return Outcome(shown, "error", f"{shown}: {type(exc).__name__}: {exc}")

    def _handle(self, name: str, data: bytes, k: int, add: bool) -> Outcome:
        assert self.searcher is not None
        if len(data) > self.limits.max_bytes:
            raise ImageRejected("too_large_bytes", f"{len(data)} bytes is over the limit of "
                                                   f"{self.limits.max_bytes}")
        preview = thumbnail(data, limits=self.limits)  # full validation, before anything else
        key = self.searcher.model.key
        self.store.refresh()
        sha = sha256_hex(data)
        stored_id = self.store.ids_for_hashes([sha])[0]
        notes: list[str] = []
        created: bool | None = None
        if add and stored_id is None:
            try:
                created = self._add(name, data, sha)
            except StoreLockedError as exc:
                notes.append(f"Not added: {exc}")
            self.store.refresh()
        result = self.searcher.search_bytes(data, k=k, add=False, source=name)
        if created:
            result.added, result.duplicate = True, False
            return Outcome(name, "added", f"{name}: new image, added to the collection as id "
                           f"{result.stored_id}.", result, preview, notes=notes)
        if result.duplicate:
            has_vec = self.store.has_embeddings(key, [result.stored_id])[0]
            how = ("searched with its stored embedding" if has_vec
                   else f"it has no {key} embedding, so it was embedded now")
            return Outcome(name, "duplicate", f"{name}: already in the collection as id "
                           f"{result.stored_id}; {how}.", result, preview, notes=notes)
        return Outcome(name, "searched", f"{name}: new image, searched without adding it.",
                       result, preview, notes=notes)

    def _add(self, name: str, data: bytes, sha: str) -> bool:
        """Embed and store an upload (its file kept under the data dir); True if created."""
        assert self.searcher is not None
        model = self.searcher.model
        vec, info = self.searcher.embed(data)
        rel = f"{UPLOADS_DIR}/{sha[:16]}-{name}"
        path = self.data_dir / rel
        fresh = not path.exists()
        if fresh:
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp = path.with_name(f".{path.name}.tmp")
            tmp.write_bytes(data)
            tmp.replace(path)
        try:
            with self._writer() as w:
                w.register_model(model.key, model.dim, model.version)
                res = w.add_images([NewImage(sha, rel, info.width, info.height, None, {model.key: vec})])[0]
        except BaseException:
            if fresh:
                path.unlink(missing_ok=True)
            raise
        log.info("upload %s added as id %d (created=%s)", rel, res.id, res.created)
        return res.created

    @contextlib.contextmanager
    def _writer(self) -> Iterator[Store]:
        """A writable store for one write: a brief RocksDB writer, or the Redis store itself."""
        if not self.embedded:
            yield self.store
            return
        with open_store(self.kv_url, self.namespace, lock_timeout=WRITE_LOCK_TIMEOUT) as w:
            yield w

    # ---------------------------------------------------------------- results
    def match_thumbnail(self, image_id: int, source: str | None) -> bytes | None:
        """A JPEG thumbnail of a stored image's file, or None when it is not on disk."""
        if image_id not in self._thumbs:
            path = resolve_source(source or "", self.data_dir)
            thumb = None
            if path is not None:
                try:
                    thumb = thumbnail(path.read_bytes(), max_side=160, limits=self.limits)
                except (OSError, ImageRejected) as exc:
                    log.warning("no preview of %s: %s", source, exc)
            if len(self._thumbs) > 2000:
                self._thumbs.clear()
            self._thumbs[image_id] = thumb
        return self._thumbs[image_id]

    def close(self) -> None:
        """Release the store."""
        self.store.close()
