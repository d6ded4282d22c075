"""Redis-protocol backend (``redis://`` and ``rediss://``): Apache Kvrocks or Redis.

Only commands Kvrocks supports are used: strings, hashes, sets, sorted sets, SCAN,
pipelines and EVAL. A batch of records is added by one Lua script, so the hash claim,
the record, its embeddings and the counters change together or not at all, and
concurrent writers of the same image create exactly one record. Connections speak
RESP2 (``protocol=2``): Kvrocks does unless configured otherwise.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator, Sequence
from typing import TypeVar

import numpy as np
import redis
from redis.backoff import ExponentialBackoff
from redis.retry import Retry

from imgsim_lab.store.base import READ_BATCH, EncodedImage, Store
from imgsim_lab.store.errors import (
    CorruptDataError,
    StoreAuthError,
    StoreConnectionError,
    StoreError,
)
from imgsim_lab.store.resp import pack, run_packed
from imgsim_lab.store.schema import AddResult, ModelInfo, Record, decode_many, now

log = logging.getLogger(__name__)
T = TypeVar("T")

RETRIES = 3
TRANSIENT = (redis.exceptions.ConnectionError, redis.exceptions.TimeoutError)

# ARGV: ns, time, n, then per image: sha, source, width, height, has_label, label, n_emb,
# then per embedding: model, bytes. Returns per image {id, created, model...}.
# Few redis.call()s per image (their overhead dominates): claims are read with one MGET,
# ids come from one read of the sequence, and hash claims, embeddings, id sets and
# counters are written with one multi-key command each per batch.
ADD_LUA = """
local ns, t, n = ARGV[1], ARGV[2], tonumber(ARGV[3])
local unpack = table.unpack or unpack
local p = 4
local items = {}
local shakeys = {}
for i = 1, n do
  local it = {sha = ARGV[p], src = ARGV[p+1], w = ARGV[p+2], h = ARGV[p+3],
              haslabel = ARGV[p+4], label = ARGV[p+5], emb = {}}
  local ne = tonumber(ARGV[p+6])
  p = p + 7
  for j = 1, ne do
    it.emb[j] = {ARGV[p], p + 1}
    p = p + 2
  end
  items[i] = it
  shakeys[i] = ns .. ':sha:' .. it.sha
end
local claimed = redis.call('MGET', unpack(shakeys))
local seq = tonumber(redis.call('GET', ns .. ':seq') or '0')
local new_in_batch = {}
local created_n = 0
local msets = {}
local zids = {}
local zemb = {}
local out = {}
for i = 1, n do
  local it = items[i]
  local id = claimed[i] and tonumber(claimed[i]) or new_in_batch[it.sha]
  local created = 0
  if not id then
    seq = seq + 1
    id = seq
    created = 1
    created_n = created_n + 1
    new_in_batch[it.sha] = id
    local ikey = ns .. ':img:' .. string.format('{%012d}', id)
    if it.haslabel == '1' then
      redis.call('HSET', ikey, 'id', id, 'sha256', it.sha, 'source', it.src, 'width', it.w,
                 'height', it.h, 'added', t, 'label', it.label)
    else
      redis.call('HSET', ikey, 'id', id, 'sha256', it.sha, 'source', it.src, 'width', it.w,
                 'height', it.h, 'added', t)
    end
    msets[#msets + 1] = shakeys[i]
    msets[#msets + 1] = id
    zids[#zids + 1] = id
    zids[#zids + 1] = id
  end
  local tag = string.format('{%012d}', id)
  local res = {id, created}
  for j = 1, #it.emb do
    local model, argi = it.emb[j][1], it.emb[j][2]
    local ekey = ns .. ':emb:' .. model .. ':' .. tag
    local pending = zemb[model] and zemb[model].seen[ekey]
    if not pending and (created == 1 or redis.call('EXISTS', ekey) == 0) then
      if not zemb[model] then zemb[model] = {z = {}, seen = {}} end
      zemb[model].seen[ekey] = true
      local z = zemb[model].z
      z[#z + 1] = id
      z[#z + 1] = id
      msets[#msets + 1] = ekey
      msets[#msets + 1] = ARGV[argi]
      res[#res + 1] = model
    end
  end
  out[i] = res
end
local CH = 4000
for s = 1, #msets, CH do
  redis.call('MSET', unpack(msets, s, math.min(s + CH - 1, #msets)))
end
if created_n > 0 then
  redis.call('SET', ns .. ':seq', seq)
  redis.call('INCRBY', ns .. ':count', created_n)
  for s = 1, #zids, CH do
    redis.call('ZADD', ns .. ':ids', unpack(zids, s, math.min(s + CH - 1, #zids)))
  end
end
for model, e in pairs(zemb) do
  for s = 1, #e.z, CH do
    redis.call('ZADD', ns .. ':eids:' .. model, unpack(e.z, s, math.min(s + CH - 1, #e.z)))
  end
  redis.call('HINCRBY', ns .. ':model:' .. model, 'count', #e.z / 2)
end
return out
"""

# ARGV: ns, then model names...; KEYS unused. Deletes ids given after a '--' marker.
DELETE_LUA = """
local ns = ARGV[1]
local nm = tonumber(ARGV[2])
local removed = 0
for i = 3 + nm, #ARGV do
  local id = tonumber(ARGV[i])
  local tag = string.format('{%012d}', id)
  local ikey = ns .. ':img:' .. tag
  local sha = redis.call('HGET', ikey, 'sha256')
  if sha then
    removed = removed + 1
    redis.call('DEL', ikey)
    local shakey = ns .. ':sha:' .. sha
    if tonumber(redis.call('GET', shakey)) == id then redis.call('DEL', shakey) end
    redis.call('ZREM', ns .. ':ids', id)
    redis.call('DECR', ns .. ':count')
    for j = 3, 2 + nm do
      local model = ARGV[j]
      if redis.call('DEL', ns .. ':emb:' .. model .. ':' .. tag) == 1 then
        redis.call('ZREM', ns .. ':eids:' .. model, id)
        redis.call('HINCRBY', ns .. ':model:' .. model, 'count', -1)
      end
    end
  end
end
return removed
"""

REGISTER_LUA = """
local key = ARGV[1] .. ':model:' .. ARGV[2]
if redis.call('EXISTS', key) == 0 then
  redis.call('HSET', key, 'dim', ARGV[3], 'version', ARGV[4], 'count', 0)
  redis.call('SADD', ARGV[1] .. ':models', ARGV[2])
end
return redis.call('HGETALL', key)
"""


def connect(url: str, redacted: str, **kwargs) -> redis.Redis:
    """A redis-py client speaking RESP2 with bounded retries of transient errors."""
    try:
        client = redis.Redis.from_url(
            url, protocol=2, socket_connect_timeout=5, socket_timeout=60,
            retry=Retry(ExponentialBackoff(cap=1.0, base=0.05), RETRIES),
            retry_on_error=list(TRANSIENT), health_check_interval=30, **kwargs)
    except ValueError as exc:
        raise StoreError(f"invalid Redis URL {redacted}: {exc}") from None
    return client


class RedisStore(Store):
    """Store on a Redis-protocol server; see the module docstring."""

    backend = "redis"

    def __init__(self, url: str, redacted: str, namespace: str, read_only: bool = False,
                 client: redis.Redis | None = None) -> None:
        super().__init__(redacted, namespace, read_only)
        from urllib.parse import unquote, urlsplit

        password = urlsplit(url).password
        self._secret = unquote(password) if password else None
        self._r = client or connect(url, redacted)
        self._add = self._r.register_script(ADD_LUA)
        self._del = self._r.register_script(DELETE_LUA)
        self._reg = self._r.register_script(REGISTER_LUA)
        self._call(self._r.ping)

    def _call(self, fn: Callable[..., T], *args, **kwargs) -> T:
        """Run one client call, turning connection failures into clear store errors."""
        try:
            return fn(*args, **kwargs)
        except redis.exceptions.AuthenticationError:
            raise StoreAuthError(f"authentication to {self.url} failed: wrong user or password") from None
        except redis.exceptions.ResponseError as exc:
            text = str(exc)
            if "NOAUTH" in text or "WRONGPASS" in text or "NOPERM" in text:
                raise StoreAuthError(f"{self.url} refused the credentials or command: "
                                     f"{text.split(' ', 1)[0]}") from None
            raise StoreError(f"{self.url} answered an error: {text[:200]}") from None
        except TRANSIENT as exc:
            raise StoreConnectionError(
                f"cannot reach the store at {self.url} after {RETRIES} retries: "
                f"{type(exc).__name__}: {self._scrub(str(exc))[:300]}. Is the server running?") from None

    def _scrub(self, text: str) -> str:
        """Remove the password from a message, whatever the library put in it."""
        secret = getattr(self, "_secret", None)
        return text.replace(secret, "***") if secret else text

    def close(self) -> None:
        self._r.close()

    # ----------------------------------------------------------------- models
    def _register_model(self, name: str, dim: int, version: str) -> ModelInfo:
        raw = self._call(self._reg, args=[self.namespace, name, dim, version])
        f = dict(zip(raw[::2], raw[1::2], strict=True))
        return self._model_from(name, f)

    @staticmethod
    def _model_from(name: str, f: dict) -> ModelInfo:
        try:
            return ModelInfo(name, int(f[b"dim"]), f[b"version"].decode(), int(f.get(b"count", 0)))
        except (KeyError, ValueError, UnicodeDecodeError) as exc:
            raise CorruptDataError(f"model facts of {name!r} are malformed: {exc}") from None

    def model_info(self) -> dict[str, ModelInfo]:
        names = sorted(n.decode() for n in self._call(self._r.smembers, self.keys.models))
        pipe = self._r.pipeline(transaction=False)
        for n in names:
            pipe.hgetall(self.keys.model(n))
        rows = self._call(pipe.execute) if names else []
        return {n: self._model_from(n, f) for n, f in zip(names, rows, strict=True) if f}

    # ----------------------------------------------------------------- writes
    def _add_encoded(self, batch: Sequence[EncodedImage]) -> list[AddResult]:
        return self._add_batches([list(batch)])

    def _add_batches(self, batches: list[list[EncodedImage]]) -> list[AddResult]:
        commands = [self._pack_add(b) for b in batches if b]

        def send() -> list:
            try:
                return run_packed(self._r, commands, RETRIES)
            except redis.exceptions.NoScriptError:  # server restarted or SCRIPT FLUSH
                self._r.script_load(ADD_LUA)
                return run_packed(self._r, commands, RETRIES)

        replies = self._call(send)
        return [AddResult(int(r[0]), bool(int(r[1])), tuple(m.decode() for m in r[2:]))
                for rows in replies for r in rows]

    def _pack_add(self, batch: Sequence[EncodedImage]) -> bytes:
        args: list = ["EVALSHA", self._add.sha, 0, self.namespace, repr(now()), len(batch)]
        for it in batch:
            args += [it.sha256, it.source, it.width, it.height,
                     "0" if it.label is None else "1", it.label or "", len(it.vectors)]
            for model, data in it.vectors:
                args += [model, data]
        return pack(args)

    def _delete(self, ids: Sequence[int]) -> int:
        models = list(self.model_info())
        return int(self._call(self._del, args=[self.namespace, len(models), *models, *ids]))

    def flush(self) -> int:
        self._check_writable()
        removed = 0
        batch: list[bytes] = []
        for key in self._r.scan_iter(match=f"{self.namespace}:*", count=1000):
            batch.append(key)
            if len(batch) >= 1000:
                removed += self._call(self._r.delete, *batch)
                batch = []
        if batch:
            removed += self._call(self._r.delete, *batch)
        self._dims.clear()
        return removed

    # ------------------------------------------------------------------ reads
    def _int(self, key: str) -> int:
        v = self._call(self._r.get, key)
        try:
            return int(v) if v is not None else 0
        except ValueError:
            raise CorruptDataError(f"{key} holds {v[:20]!r}, not an integer") from None

    def count(self) -> int:
        return self._int(self.keys.count)

    def last_id(self) -> int:
        return self._int(self.keys.seq)

    def get_records(self, ids: Sequence[int]) -> list[Record | None]:
        pipe = self._r.pipeline(transaction=False)
        for i in ids:
            pipe.hgetall(self.keys.img(int(i)))
        rows = self._call(pipe.execute) if len(ids) else []
        return [Record.from_fields(f) if f else None for f in rows]

    def ids_for_hashes(self, shas: Sequence[str]) -> list[int | None]:
        if not shas:
            return []
        vals = self._call(self._r.mget, [self.keys.sha(s) for s in shas])
        return [None if v is None else int(v) for v in vals]

    def _get_embeddings(self, model: str, dim: int, ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        if not len(ids):
            return ids.astype(np.int64), np.empty((0, dim), np.float32)
        vals = self._call(self._r.mget, [self.keys.emb(model, int(i)) for i in ids])
        return decode_many(ids, vals, dim, model)

    def has_embeddings(self, model: str, ids: Sequence[int]) -> np.ndarray:
        if not len(ids):
            return np.zeros(0, bool)
        pipe = self._r.pipeline(transaction=False)
        for i in ids:
            pipe.exists(self.keys.emb(model, int(i)))
        return np.array(self._call(pipe.execute), bool)

    def _ids_after(self, zkey: str, after_id: int, limit: int) -> list[int]:
        raw = self._call(self._r.zrangebyscore, zkey, f"({int(after_id)}", "+inf", start=0, num=limit)
        return [int(x) for x in raw]

    def iter_embeddings(self, model: str, after_id: int = 0,
                        chunk_size: int = 4096) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        dim = self.model_dim(model)
        zkey = self.keys.eids(model)
        last = int(after_id)
        while True:
            ids = self._ids_after(zkey, last, chunk_size)
            if not ids:
                return
            arr = np.array(ids, np.int64)
            parts = [self._get_embeddings(model, dim, arr[s : s + READ_BATCH])
                     for s in range(0, len(arr), READ_BATCH)]
            yield np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts])
            last = ids[-1]

    def iter_records(self, after_id: int = 0, chunk_size: int = 1000) -> Iterator[list[Record]]:
        last = int(after_id)
        while True:
            ids = self._ids_after(self.keys.ids, last, chunk_size)
            if not ids:
                return
            yield [r for r in self.get_records(ids) if r is not None]
            last = ids[-1]

    def embedding_ids(self, model: str) -> np.ndarray:
        """Ids in the model's id set (what iteration will visit)."""
        raw = self._call(self._r.zrangebyscore, self.keys.eids(model), "-inf", "+inf")
        return np.array([int(x) for x in raw], np.int64)

    def all_ids(self, after_id: int = 0) -> np.ndarray:
        raw = self._call(self._r.zrangebyscore, self.keys.ids, f"({int(after_id)}", "+inf")
        return np.array([int(x) for x in raw], np.int64)

    # ------------------------------------------------------------ raw access
    def raw_scan(self, prefix: str) -> Iterator[str]:
        for key in self._r.scan_iter(match=prefix.replace("{", "[{]").replace("}", "[}]") + "*", count=1000):
            yield key.decode("utf-8", "replace")

    def raw_get(self, keys: Sequence[str]) -> list[bytes | None]:
        if not keys:
            return []
        pipe = self._r.pipeline(transaction=False)
        for k in keys:
            pipe.get(k)
        return self._call(pipe.execute, raise_on_error=False)

    def raw_record(self, image_id: int) -> dict | None:
        try:
            f = self._call(self._r.hgetall, self.keys.img(image_id))
        except StoreError:  # not a hash
            return {"_raw": "wrong type"}
        return {k.decode("utf-8", "replace"): v.decode("utf-8", "replace") for k, v in f.items()} or None

    def raw_delete(self, keys: Sequence[str]) -> int:
        self._check_writable()
        return int(self._call(self._r.delete, *keys)) if keys else 0

    def raw_set(self, key: str, value: bytes | str) -> None:
        self._check_writable()
        self._call(self._r.set, key, value)

    def rebuild_derived(self, record_ids: Sequence[int], embedding_ids: dict[str, Sequence[int]]) -> None:
        self._check_writable()
        k = self.keys
        top = max([self.last_id(), *record_ids, *(i for ids in embedding_ids.values() for i in ids)])
        pipe = self._r.pipeline(transaction=True)
        pipe.set(k.count, len(record_ids))
        pipe.set(k.seq, top)
        pipe.delete(k.ids)
        for s in range(0, len(record_ids), 4000):
            pipe.zadd(k.ids, {str(i): i for i in record_ids[s : s + 4000]})
        for name, ids in embedding_ids.items():
            pipe.delete(k.eids(name))
            for s in range(0, len(ids), 4000):
                pipe.zadd(k.eids(name), {str(i): i for i in ids[s : s + 4000]})
            pipe.hset(k.model(name), "count", len(ids))
            pipe.sadd(k.models, name)
        self._call(pipe.execute)
