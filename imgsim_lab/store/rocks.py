"""Embedded RocksDB backend (``rocksdb:PATH``) through rocksdict, in raw bytes mode.

RocksDB admits one writing process. The writer records who it is in
``PATH/imgsim-writer.json``; a second writer waits ``lock_timeout`` seconds, then fails
naming the holder. Readers in other processes open a *secondary* instance that catches
up with the writer on :meth:`RocksStore.refresh` (called by every counting or iterating
read), so searching works while another process ingests.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import socket
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np
from rocksdict import (
    AccessType,
    BlockBasedOptions,
    DBCompressionType,
    Options,
    Rdict,
    ReadOptions,
    WriteBatch,
)

from imgsim_lab.store.base import EncodedImage, Store
from imgsim_lab.store.config import StoreConfig
from imgsim_lab.store.errors import CorruptDataError, StoreError, StoreLockedError
from imgsim_lab.store.schema import (
    AddResult,
    Keys,
    ModelInfo,
    Record,
    chunk_rows,
    decode_many,
    now,
    record_fields,
)

log = logging.getLogger(__name__)

OWNER_FILE = "imgsim-writer.json"
DEFAULT_LOCK_TIMEOUT = StoreConfig().lock_timeout


def _options(create: bool) -> Options:
    opt = Options(raw_mode=True)
    opt.create_if_missing(create)
    opt.set_compression_type(DBCompressionType.none())  # float32 vectors do not compress
    opt.set_write_buffer_size(64 << 20)
    opt.increase_parallelism(os.cpu_count() or 2)
    opt.set_max_open_files(-1)  # required by secondary instances
    # reads from mapped files: no read syscall per block (a full scan of 50k 5 KB vectors
    # 0.25 s instead of 0.35-0.43 s)
    opt.set_allow_mmap_reads(True)
    table = BlockBasedOptions()
    table.set_bloom_filter(10, False)  # a claim lookup of a new image's hash mostly misses
    opt.set_block_based_table_factory(table)
    return opt


def _owner(path: Path) -> str:
    try:
        o = json.loads((path / OWNER_FILE).read_text())
        return (f"pid {o.get('pid')} on {o.get('host')} ({o.get('cmd', '?')[:200]}), "
                f"writing since {time.strftime('%Y-%m-%d %H:%M:%S', time.localtime(o.get('since', 0)))}")
    except (OSError, ValueError, AttributeError):
        return "another process (unknown: no owner file)"


SECONDARY_PREFIX = "imgsim-rocks-secondary-"


def _remove_stale_secondaries() -> None:
    """Remove secondary-reader temp dirs whose process is gone (killed kernels, failed opens)."""
    for d in Path(tempfile.gettempdir()).glob(f"{SECONDARY_PREFIX}*"):
        pid_text = d.name[len(SECONDARY_PREFIX):].split("-", 1)[0]
        if not pid_text.isdigit() or int(pid_text) == os.getpid():
            continue
        try:
            os.kill(int(pid_text), 0)
        except ProcessLookupError:
            shutil.rmtree(d, ignore_errors=True)
        except PermissionError:
            pass  # another user's live process


def _lock_contention(exc: Exception) -> bool:
    """Is this rocksdict error RocksDB failing to take the LOCK file (another writer)?

    RocksDB's PosixEnv::LockFile reports ``While lock file: <path>/LOCK: …`` (another
    process) or ``lock hold by current process`` (this one); nothing else is contention.
    """
    text = str(exc)
    return "LOCK" in text and ("While lock file" in text or "lock hold by current process" in text)


class RocksStore(Store):
    """Embedded store; see the module docstring for the locking rules."""

    backend = "rocksdb"

    def __init__(self, path: str | os.PathLike[str], namespace: str, read_only: bool = False,
                 lock_timeout: float = DEFAULT_LOCK_TIMEOUT) -> None:
        self.path = Path(path)
        super().__init__(f"rocksdb:{self.path}", namespace, read_only)
        self._lock = threading.RLock()
        self._secondary_dir: str | None = None
        if read_only:
            if not (self.path / "CURRENT").exists():
                raise StoreError(f"no RocksDB store at {self.path} yet: ingest something first")
            _remove_stale_secondaries()
            self._secondary_dir = tempfile.mkdtemp(prefix=f"{SECONDARY_PREFIX}{os.getpid()}-")
            try:
                self._db = Rdict(str(self.path), _options(False),
                                 access_type=AccessType.secondary(self._secondary_dir))
            except Exception as exc:  # noqa: BLE001 - rocksdict raises bare Exception
                shutil.rmtree(self._secondary_dir, ignore_errors=True)
                self._db = None
                raise StoreError(f"cannot open RocksDB store {self.path} read-only: {exc}") from None
        else:
            self._db = self._open_writer(lock_timeout)

    def _open_writer(self, timeout: float) -> Rdict:
        self.path.mkdir(parents=True, exist_ok=True)
        deadline = time.monotonic() + timeout
        waited = False
        while True:
            try:
                db = Rdict(str(self.path), _options(True))
                break
            except Exception as exc:  # rocksdict raises a bare Exception on lock errors
                if not _lock_contention(exc):
                    raise StoreError(f"cannot open RocksDB store {self.path}: {exc}") from exc
                if time.monotonic() >= deadline:
                    raise StoreLockedError(
                        f"RocksDB store {self.path} is held for writing by {_owner(self.path)}. "
                        "RocksDB admits one writing process at a time: wait for it to finish, "
                        "open the store read-only to search meanwhile, or run a Kvrocks server "
                        "(redis://host:6666) for shared writing.") from None
                if not waited:
                    log.info("waiting up to %.0fs for the writer of %s: %s",
                             timeout, self.path, _owner(self.path))
                    waited = True
                time.sleep(0.1)
        owner = {"pid": os.getpid(), "host": socket.gethostname(),
                 "cmd": " ".join(sys.argv) or sys.executable, "since": time.time()}
        (self.path / OWNER_FILE).write_text(json.dumps(owner))
        return db

    def close(self) -> None:
        db = getattr(self, "_db", None)
        if db is None:
            return
        self._db = None
        if not self.read_only:
            try:
                db.flush_wal(True)
            except Exception:  # noqa: BLE001 - best effort on close
                pass
        db.close()
        if not self.read_only:
            try:
                (self.path / OWNER_FILE).unlink()
            except OSError:
                pass
        if self._secondary_dir:
            shutil.rmtree(self._secondary_dir, ignore_errors=True)

    def __del__(self) -> None:
        try:
            self.close()
        except Exception:  # noqa: BLE001
            pass

    def refresh(self) -> None:
        if self.read_only and self._db is not None:
            self._db.try_catch_up_with_primary()

    # ---------------------------------------------------------------- helpers
    def _get(self, key: str) -> bytes | None:
        if self.read_only:
            return self._fresh_get(key.encode())
        return self._db.get(key.encode())

    def _read_many(self, keys: list[bytes]) -> list[bytes | None]:
        """Values of ``keys`` in order: one multi-get, or on a secondary one fresh iterator."""
        if not self.read_only or not keys:
            return self._db.get(keys)
        it = self._db.iter(ReadOptions())
        try:
            out = []
            for key in keys:
                it.seek(key)
                out.append(it.value() if it.valid() and it.key() == key else None)
            return out
        finally:
            del it

    def _fresh_get(self, key: bytes) -> bytes | None:
        """A point read through a new iterator. On a secondary that caught up with its primary,
        ``get`` can keep answering from an older view after the primary closed (seen: the
        watermark stuck at 951 while iterators saw 1201); a new iterator always reads the
        latest one."""
        it = self._db.iter(ReadOptions())
        try:
            it.seek(key)
            return it.value() if it.valid() and it.key() == key else None
        finally:
            del it

    def _int(self, key: str) -> int:
        v = self._get(key)
        try:
            return int(v) if v is not None else 0
        except ValueError as exc:
            raise CorruptDataError(f"{key} holds {v[:20]!r}, not an integer") from exc

    def _scan(self, prefix: str, start: str | None = None,
              readahead: int = 0) -> Iterator[tuple[bytes, bytes]]:
        """Keys and values under ``prefix`` in key order; a long scan reads ahead, bypassing the cache."""
        for keys, vals in self._scan_chunks(prefix, start, readahead, 64):
            yield from zip(keys, vals, strict=True)

    def _scan_chunks(self, prefix: str, start: str | None, readahead: int,
                     rows: int) -> Iterator[tuple[list[bytes], list[bytes]]]:
        """:meth:`_scan` as lists of at most ``rows`` keys and values: the hot loop only collects."""
        p = prefix.encode()
        opts = ReadOptions()
        if readahead:
            opts.fill_cache(False)
            opts.set_readahead_size(readahead)
        it = self._db.iter(opts)
        try:
            it.seek((start or prefix).encode())
            keys: list[bytes] = []
            vals: list[bytes] = []
            while it.valid():
                k = it.key()
                if not k.startswith(p):
                    break
                keys.append(k)
                vals.append(it.value())
                it.next()
                if len(keys) == rows:
                    yield keys, vals
                    keys, vals = [], []
            if keys:
                yield keys, vals
        finally:
            del it  # an abandoned scan frees its RocksDB iterator at once

    # ----------------------------------------------------------------- models
    def _register_model(self, name: str, dim: int, version: str) -> ModelInfo:
        with self._lock:
            cur = self.model_info().get(name)
            if cur is not None:
                return cur
            info = {"dim": dim, "version": version, "count": 0}
            self._db.put(self.keys.model(name).encode(), json.dumps(info).encode())
            return ModelInfo(name, dim, version, 0)

    def _forget_model(self, name: str) -> None:
        with self._lock:
            self._db.delete(self.keys.model(name).encode())

    def model_info(self) -> dict[str, ModelInfo]:
        self.refresh()
        out = {}
        plen = len(self.keys.model_prefix)
        for k, v in self._scan(self.keys.model_prefix):
            name = k.decode()[plen:]
            try:
                o = json.loads(v)
                out[name] = ModelInfo(name, int(o["dim"]), str(o["version"]), int(o["count"]))
            except (ValueError, KeyError, TypeError) as exc:
                raise CorruptDataError(f"model facts of {name!r} are malformed: {exc}") from exc
        return out

    # ----------------------------------------------------------------- writes
    def _add_encoded(self, batch: Sequence[EncodedImage]) -> list[AddResult]:
        k = self.keys
        with self._lock:
            claimed = self._db.get([k.sha(it.sha256).encode() for it in batch])
            seq = self._int(k.seq)
            count = self._int(k.count)
            models = self.model_info()
            wb = WriteBatch(raw_mode=True)
            new_ids: dict[str, int] = {}
            written: set[bytes] = set()
            model_delta: Counter[str] = Counter()
            results = []
            t = now()
            for item, got in zip(batch, claimed, strict=True):
                created = False
                if got is not None:
                    image_id = int(got)
                elif item.sha256 in new_ids:
                    image_id = new_ids[item.sha256]
                else:
                    seq += 1
                    count += 1
                    image_id = new_ids[item.sha256] = seq
                    created = True
                    rec = item.record(image_id, t)
                    wb.put(k.img(image_id).encode(), rec.to_json())
                    wb.put(k.sha(item.sha256).encode(), str(image_id).encode())
                ekeys = [k.emb(m, image_id).encode() for m, _ in item.vectors]
                present = [False] * len(ekeys) if created else [
                    e in written or v is not None for e, v in zip(ekeys, self._db.get(ekeys), strict=True)]
                embedded = []
                for (model, data), ekey, there in zip(item.vectors, ekeys, present, strict=True):
                    if there or ekey in written:
                        continue
                    wb.put(ekey, data if type(data) is bytes else bytes(data))  # raw mode: bytes only
                    written.add(ekey)
                    model_delta[model] += 1
                    embedded.append(model)
                results.append(AddResult(image_id, created, tuple(embedded)))
            wb.put(k.seq.encode(), str(seq).encode())
            wb.put(k.count.encode(), str(count).encode())
            for model, delta in model_delta.items():
                m = models[model]
                wb.put(k.model(model).encode(), json.dumps(
                    {"dim": m.dim, "version": m.version, "count": m.count + delta}).encode())
            self._db.write(wb)
        return results

    def _delete(self, ids: Sequence[int]) -> int:
        k = self.keys
        with self._lock:
            models = self.model_info()
            recs = self.get_records(ids)
            wb = WriteBatch(raw_mode=True)
            delta: Counter[str] = Counter()
            removed = 0
            for image_id, rec in zip(ids, recs, strict=True):
                if rec is None:
                    continue
                removed += 1
                wb.delete(k.img(image_id).encode())
                if self._get(k.sha(rec.sha256)) == str(image_id).encode():
                    wb.delete(k.sha(rec.sha256).encode())
                for m in models:
                    ekey = k.emb(m, image_id).encode()
                    if self._db.get(ekey) is not None:
                        wb.delete(ekey)
                        delta[m] += 1
            if removed:
                wb.put(k.count.encode(), str(self._int(k.count) - removed).encode())
                for m, d in delta.items():
                    info = models[m]
                    wb.put(k.model(m).encode(), json.dumps(
                        {"dim": info.dim, "version": info.version, "count": info.count - d}).encode())
                self._db.write(wb)
        return removed

    def flush(self) -> int:
        self._check_writable()
        removed = 0
        with self._lock:
            wb = WriteBatch(raw_mode=True)
            for key, _ in self._scan(self.keys.prefix):
                wb.delete(key)
                removed += 1
                if removed % 10000 == 0:
                    self._db.write(wb)
                    wb = WriteBatch(raw_mode=True)
            self._db.write(wb)
            self._dims.clear()
        return removed

    # ------------------------------------------------------------------ reads
    def count(self) -> int:
        self.refresh()
        return self._int(self.keys.count)

    def last_id(self) -> int:
        self.refresh()
        return self._int(self.keys.seq)

    def get_records(self, ids: Sequence[int]) -> list[Record | None]:
        ids = [int(i) for i in ids]
        vals = self._read_many([self.keys.img(i).encode() for i in ids]) if ids else []
        return [None if v is None else Record.from_json(v) for v in vals]

    def ids_for_hashes(self, shas: Sequence[str]) -> list[int | None]:
        self.refresh()
        vals = self._read_many([self.keys.sha(s).encode() for s in shas]) if shas else []
        return [None if v is None else int(v) for v in vals]

    def _get_embeddings(self, model: str, dim: int, ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        vals = self._read_many(self.keys.emb_keys(model, ids))
        return decode_many(ids, vals, dim, model)

    def has_embeddings(self, model: str, ids: Sequence[int]) -> np.ndarray:
        keys = self.keys.emb_keys(model, ids)
        return np.array([v is not None for v in self._read_many(keys)], bool) if keys else np.zeros(0, bool)

    def iter_embeddings(self, model: str, after_id: int = 0,
                        chunk_size: int = 4096) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        dim = self.model_dim(model)
        rows = chunk_rows(chunk_size, dim)
        self.refresh()
        # read ahead about one chunk (capped at 8 MB): long scans stream, short samples stay cheap
        readahead = min(8 << 20, chunk_size * 4 * dim) if chunk_size >= 1024 else 0
        start = self.keys.emb(model, int(after_id) + 1)
        for keys, vals in self._scan_chunks(self.keys.emb_prefix(model), start, readahead, rows):
            yield decode_many(self.keys.ids_from_keys(keys), vals, dim, model)  # one copy per chunk

    def iter_records(self, after_id: int = 0, chunk_size: int = 1000) -> Iterator[list[Record]]:
        self.refresh()
        chunk: list[Record] = []
        for _, val in self._scan(self.keys.img_prefix, self.keys.img(int(after_id) + 1)):
            chunk.append(Record.from_json(val))
            if len(chunk) == chunk_size:
                yield chunk
                chunk = []
        if chunk:
            yield chunk

    # ------------------------------------------------------------- inventory
    def _chunks(self, prefix: str, row, size: int = 1000) -> Iterator[list]:
        self.refresh()
        chunk: list = []
        for key, val in self._scan(prefix):
            try:
                image_id = self.keys.id_from_key(key)
            except CorruptDataError:
                continue  # not a record/embedding key: scan_keys reports it
            chunk.append(row(image_id, val))
            if len(chunk) == size:
                yield chunk
                chunk = []
        if chunk:
            yield chunk

    def inventory_records(self) -> Iterator[list[tuple[int, dict | None]]]:
        return self._chunks(self.keys.img_prefix, lambda i, v: (i, record_fields(v)))

    def inventory_embeddings(self, model: str) -> Iterator[list[tuple[int, int]]]:
        return self._chunks(self.keys.emb_prefix(model), lambda i, v: (i, len(v)))

    def inventory_claims(self) -> Iterator[list[tuple[str, bytes | None]]]:
        self.refresh()
        prefix = f"{self.namespace}:sha:"
        chunk = []
        for key, val in self._scan(prefix):
            chunk.append((key.decode("utf-8", "replace")[len(prefix):], val))
            if len(chunk) == 1000:
                yield chunk
                chunk = []
        if chunk:
            yield chunk

    def namespaces(self) -> dict[str, int]:
        self.refresh()
        names = sorted({k[:-4].decode("utf-8", "replace") for k, _ in self._scan("")
                        if k.endswith(b":seq") and b":" not in k[:-4]})
        return {ns: self._int(Keys(ns).count) for ns in names}

    def scan_keys(self) -> Iterator[str]:
        self.refresh()
        for key, _ in self._scan(self.keys.prefix):
            yield key.decode("utf-8", "replace")

    # ------------------------------------------------------------ raw access

    def raw_get(self, keys: Sequence[str]) -> list[bytes | None]:
        return self._read_many([k.encode() for k in keys]) if keys else []

    def raw_delete(self, keys: Sequence[str]) -> int:
        self._check_writable()
        with self._lock:
            existing = [k for k, v in zip(keys, self.raw_get(keys), strict=True) if v is not None]
            wb = WriteBatch(raw_mode=True)
            for k in existing:
                wb.delete(k.encode())
            self._db.write(wb)
        return len(existing)

    def raw_set(self, key: str, value: bytes | str) -> None:
        self._check_writable()
        self._db.put(key.encode(), value if isinstance(value, bytes) else value.encode())

    def rebuild_derived(self, record_ids: Sequence[int], embedding_ids: dict[str, Sequence[int]],
                        claimed: Sequence[str] | None = None) -> None:
        self._check_writable()
        k = self.keys
        with self._lock:
            models = self.model_info()
            wb = WriteBatch(raw_mode=True)
            wb.put(k.count.encode(), str(len(record_ids)).encode())
            top = max([self._int(k.seq), *record_ids, *(i for ids in embedding_ids.values() for i in ids)])
            wb.put(k.seq.encode(), str(top).encode())
            for name, ids in embedding_ids.items():
                m = models[name]
                wb.put(k.model(name).encode(),
                       json.dumps({"dim": m.dim, "version": m.version, "count": len(ids)}).encode())
            self._db.write(wb)
