"""Cluster backend (``redis+cluster://``, ``rediss+cluster://``): a Kvrocks cluster or Redis Cluster.

Same key names as the single-node schema (:mod:`imgsim_lab.store.schema`); the keys
of one record (``<ns>:img:{id12}``, ``<ns>:emb:<model>:{id12}``) share the ``{id12}``
hash tag, so they live in one slot. Global keys (``seq``, ``ids``, ``eids:<model>``,
``models``, ``model:<model>``) and hash claims (``sha:<sha256>``) hash on their whole
name and each lives in its own slot: no command or script touches two of them, so they
need no common tag, and keeping the single-node names lets ``imgsim check`` and ``flush``
work unchanged. Two cluster-only differences:

- the number of images is ``ZCARD <ns>:ids`` and a model's count ``ZCARD <ns>:eids:<model>``:
  ``<ns>:count`` and the ``count`` field of the model facts are not written (one less
  derived value that could drift; ZADD/ZREM are idempotent, INCRBY is not);
- no Lua script spans slots: each script's KEYS are one record's keys, or one key.

Write protocol of :meth:`add_images` (per group of up to 1,024 images; every step is
one pipeline per primary, and is idempotent so it is retried as a whole on a
connection error, MOVED/ASK, TRYAGAIN or CLUSTERDOWN):

1. read the hash claims (GET ``sha:<sha256>``);
2. reserve ids for the unclaimed images with one ``INCRBY <ns>:seq k``;
3. write each new record with its embeddings in one Lua call on the record's slot;
   fill embeddings an already claimed record lacks (SET NX, only if the record exists);
4. claim each new image with ``SET sha:<sha256> <id> NX`` (a claim equal to our id
   counts as won, for retries). A loser deletes its record and embeddings (one Lua DEL
   on their slot) and goes round again: it now sees the winner's claim and fills it;
5. ZADD the ids of every record of the group to ``<ns>:ids`` and ``<ns>:eids:<model>``
   (idempotent, so this also repairs what a crashed writer left out).

Crash analysis: records are written before they are claimed, and deleted (by
:meth:`delete`) after the claim is removed, so a claim always names an existing record;
embeddings are written and deleted in the same atomic call as their record. A crash
leaves at most (a) burnt ids (gaps; ``last_id`` is still a watermark), (b) unclaimed
"orphan" records that no sorted set lists, invisible to iteration and counts, or
(c) a claimed record missing from the sorted sets, which the next add of the same image
repairs. :meth:`repair` removes orphans and rebuilds the sorted sets
(:meth:`rebuild_derived`, what ``imgsim check --repair`` calls); run it with writers stopped.

:meth:`register_model` writes the model facts (one key, once) before adding the name to
``<ns>:models``; a crash in between is healed by registering again.

Concurrent add and delete of the same image may leave a deleted id in a sorted set
(readers skip it; ``count`` is one too high) until :meth:`repair`.
"""

from __future__ import annotations

import hashlib
import logging
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field

import numpy as np
import redis
from redis.backoff import ExponentialBackoff
from redis.cluster import ClusterNode, RedisCluster
from redis.crc import key_slot
from redis.retry import Retry

from imgsim_lab.store.base import EncodedImage, Store
from imgsim_lab.store.errors import StoreAuthError, StoreConnectionError, StoreError
from imgsim_lab.store.redis_store import RETRIES, TRANSIENT, RedisStore, T
from imgsim_lab.store.resp import pack
from imgsim_lab.store.schema import AddResult, ModelInfo, Record, decode_many, now
from imgsim_lab.store.url import parse_cluster_url

log = logging.getLogger(__name__)

#: Images per round of the write protocol (a few pipelines per primary each).
GROUP = 1024
#: Rounds before giving up on an image that keeps being deleted or claimed under us.
MAX_ROUNDS = 5
#: Attempts of one pipeline step on redirections, TRYAGAIN, CLUSTERDOWN or lost connections.
STEP_ATTEMPTS = 8
#: Redirection and failover errors: refresh the slot map and retry the step.
REROUTE = (redis.exceptions.MovedError, redis.exceptions.AskError, redis.exceptions.TryAgainError,
           redis.exceptions.ClusterDownError)

# KEYS: the record, then embedding keys of it (one slot). ARGV[1] 'new' or 'fill',
# ARGV[2] number of record field/value arguments that follow, then one vector per
# embedding key. 'new' writes everything; 'fill' writes missing embeddings of an
# existing record. Returns -1 (no record) or per embedding 1 (written) / 0 (was there).
WRITE_LUA = """
local unpack = table.unpack or unpack
local nf = tonumber(ARGV[2])
local out = {}
if ARGV[1] == 'new' then
  redis.call('HSET', KEYS[1], unpack(ARGV, 3, 2 + nf))
  for i = 2, #KEYS do
    redis.call('SET', KEYS[i], ARGV[1 + nf + i])
    out[i - 1] = 1
  end
  return out
end
if redis.call('EXISTS', KEYS[1]) == 0 then return -1 end
for i = 2, #KEYS do
  out[i - 1] = redis.call('SET', KEYS[i], ARGV[1 + nf + i], 'NX') and 1 or 0
end
return out
"""

# KEYS: the record, then its embedding keys. Deletes them all; 1 if the record existed.
DROP_LUA = """
local unpack = table.unpack or unpack
local existed = redis.call('EXISTS', KEYS[1])
redis.call('DEL', unpack(KEYS))
return existed
"""

# KEYS[1]: a hash claim; ARGV[1]: an id. Deletes the claim only if it names that id.
UNCLAIM_LUA = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"""

# KEYS[1]: model facts; ARGV: dim, version. Writes them once; returns what is stored.
REGISTER_LUA = """
if redis.call('EXISTS', KEYS[1]) == 0 then
  redis.call('HSET', KEYS[1], 'dim', ARGV[1], 'version', ARGV[2])
end
return redis.call('HGETALL', KEYS[1])
"""

SCRIPTS = {name: (src, hashlib.sha1(src.encode()).hexdigest())
           for name, src in (("write", WRITE_LUA), ("drop", DROP_LUA), ("unclaim", UNCLAIM_LUA),
                             ("register", REGISTER_LUA))}

#: A packed command and the key that routes it (by its slot).
Routed = tuple[str, bytes]


def connect_cluster(url: str) -> RedisCluster:
    """A RESP2 cluster client on the URL's seed nodes, with bounded retries."""
    cu = parse_cluster_url(url)
    return RedisCluster(
        startup_nodes=[ClusterNode(h, p) for h, p in cu.nodes], username=cu.username,
        password=cu.password, ssl=cu.tls, protocol=2, socket_connect_timeout=5,
        socket_timeout=60, retry=Retry(ExponentialBackoff(cap=1.0, base=0.05), RETRIES))


def _auth_failure(exc: BaseException) -> bool:
    """Did the cluster client give up because a node refused the credentials?"""
    seen: BaseException | None = exc
    while seen is not None:
        if isinstance(seen, redis.exceptions.AuthenticationError):
            return True
        seen = seen.__cause__ or seen.__context__
    text = str(exc)
    return any(w in text for w in ("username-password", "WRONGPASS", "NOAUTH", "invalid password"))


def _script(name: str, keys: Sequence[str], args: Sequence) -> Routed:
    return keys[0], pack(["EVALSHA", SCRIPTS[name][1], len(keys), *keys, *args])


def _pairs(raw: list) -> dict:
    return dict(zip(raw[::2], raw[1::2], strict=True))


@dataclass
class _Image:
    """One distinct sha256 of a group: its first vector per model, and who gave it."""

    item: EncodedImage  # the first item with this sha256: its record fields
    first: int  # index of that item
    vectors: dict[str, tuple[bytes, int]] = field(default_factory=dict)
    id: int = 0
    created: bool = False
    added: set[str] = field(default_factory=set)  # models whose embedding we wrote
    present: list[str] = field(default_factory=list)  # models whose embedding it has


class RedisClusterStore(RedisStore):
    """Store on a Kvrocks cluster or Redis Cluster; see the module docstring."""

    backend = "redis-cluster"

    def __init__(self, url: str, redacted: str, namespace: str, read_only: bool = False) -> None:
        Store.__init__(self, redacted, namespace, read_only)  # not RedisStore's: no single client
        self._secret = parse_cluster_url(url).password  # scrubbed from error messages
        self._r: RedisCluster = self._call(connect_cluster, url)
        self._call(self._r.ping)

    def _call(self, fn: Callable[..., T], *args, **kwargs) -> T:
        try:
            return super()._call(fn, *args, **kwargs)
        except (redis.exceptions.RedisClusterException, redis.exceptions.ClusterError) as exc:
            if _auth_failure(exc):
                raise StoreAuthError(f"authentication to {self.url} failed: wrong user or password") from None
            raise StoreConnectionError(f"cannot use the cluster at {self.url}: "
                                       f"{self._scrub(str(exc))[:200]}. "
                                       "Are the nodes running?") from None

    # ------------------------------------------------------------ pipelines
    def _run(self, routed: Sequence[Routed]) -> list:
        """Replies of packed commands, each sent to the primary owning its key's slot.

        One pipeline per primary, all written before any is read. Callers send
        idempotent commands: the whole list is retried after a lost connection or a
        redirection (with a refreshed slot map) and after loading scripts on NOSCRIPT.
        """
        if not routed:
            return []
        for attempt in range(STEP_ATTEMPTS):
            try:
                replies = self._run_once(routed)
            except TRANSIENT:
                if attempt == STEP_ATTEMPTS - 1:
                    raise
                self._reroute(attempt)
                continue
            err = next((r for r in replies if isinstance(r, redis.exceptions.ResponseError)), None)
            if err is None:
                return replies
            if isinstance(err, redis.exceptions.NoScriptError):
                self._load_scripts()
            elif isinstance(err, REROUTE) and attempt < STEP_ATTEMPTS - 1:
                self._reroute(attempt)
            else:
                raise err
        raise redis.exceptions.ClusterDownError(f"gave up after {STEP_ATTEMPTS} attempts")

    def _run_once(self, routed: Sequence[Routed]) -> list:
        nm = self._r.nodes_manager
        slots = nm.slots_cache  # slot -> [primary, replicas...]; get_node_from_slot is slow per key
        groups: dict[str, tuple[ClusterNode, list[int]]] = {}
        for i, (key, _) in enumerate(routed):
            slot = key_slot(key.encode())
            owners = slots.get(slot)
            node = owners[0] if owners else nm.get_node_from_slot(slot)  # raises if not covered
            groups.setdefault(node.name, (node, []))[1].append(i)
        replies: list = [None] * len(routed)
        held = []
        ok = False
        try:
            for node, idx in groups.values():
                pool = self._r.get_redis_connection(node).connection_pool
                conn = pool.get_connection()
                held.append((pool, conn))
                conn.send_packed_command([b"".join(routed[i][1] for i in idx)], check_health=False)
            for (_, conn), (_, idx) in zip(held, groups.values(), strict=True):
                for i in idx:
                    try:
                        replies[i] = conn.read_response()
                    except redis.exceptions.ResponseError as exc:
                        replies[i] = exc
            ok = True
        finally:
            for pool, conn in held:
                if not ok:
                    conn.disconnect()
                pool.release(conn)
        return replies

    def _reroute(self, attempt: int) -> None:
        log.info("cluster %s: refreshing the slot map (attempt %d)", self.url, attempt + 1)
        time.sleep(min(1.0, 0.05 * 2**attempt))
        try:
            self._r.nodes_manager.initialize()
        except (redis.exceptions.RedisClusterException, *TRANSIENT) as exc:
            log.info("cluster %s: slot map refresh failed: %s", self.url, exc)

    def _load_scripts(self) -> None:
        for node in self._r.get_primaries():
            conn = self._r.get_redis_connection(node)
            for src, _ in SCRIPTS.values():
                conn.script_load(src)

    def _get_all(self, keys: Sequence[str], cmd: str = "GET") -> list:
        """One single-key command per key (GET, EXISTS, HGETALL, DEL), routed by slot."""
        head = b"*2\r\n$%d\r\n%s\r\n" % (len(cmd), cmd.encode())
        return self._call(self._run, [(k, b"%s$%d\r\n%s\r\n" % (head, len(k), k.encode())) for k in keys])

    # --------------------------------------------------------------- models
    def _register_model(self, name: str, dim: int, version: str) -> ModelInfo:
        key = self.keys.model(name)
        raw = self._call(self._run, [_script("register", [key], [dim, version])])[0]
        self._call(self._r.sadd, self.keys.models, name)  # after the facts: a crash is re-healed
        return self._model_from(name, _pairs(raw))

    def model_info(self) -> dict[str, ModelInfo]:
        names = sorted(n.decode() for n in self._call(self._r.smembers, self.keys.models))
        routed = [r for n in names for r in ((self.keys.model(n), pack(["HGETALL", self.keys.model(n)])),
                                              (self.keys.eids(n), pack(["ZCARD", self.keys.eids(n)])))]
        replies = self._call(self._run, routed)
        out = {}
        for i, n in enumerate(names):
            facts, count = _pairs(replies[2 * i]), replies[2 * i + 1]
            if facts:
                info = self._model_from(n, facts)
                out[n] = ModelInfo(n, info.dim, info.version, int(count))
        return out

    # --------------------------------------------------------------- writes
    def _add_encoded(self, batch: Sequence[EncodedImage]) -> list[AddResult]:
        return self._add_batches([list(batch)])

    def _add_batches(self, batches: list[list[EncodedImage]]) -> list[AddResult]:
        items = [it for b in batches for it in b]
        return [r for s in range(0, len(items), GROUP) for r in self._add_group(items[s : s + GROUP])]

    def _add_group(self, items: Sequence[EncodedImage]) -> list[AddResult]:
        images: dict[str, _Image] = {}
        for i, it in enumerate(items):
            img = images.setdefault(it.sha256, _Image(it, i))
            for model, data in it.vectors:
                img.vectors.setdefault(model, (data, i))
        pending = list(images.values())
        for _ in range(MAX_ROUNDS):
            if not pending:
                break
            pending = self._add_round(pending)
        if pending:
            raise StoreError(f"{self.url}: {len(pending)} images kept being claimed or deleted "
                             "by other writers; try again")
        self._index(list(images.values()))
        credit: list[set[str]] = [set() for _ in items]
        for img in images.values():
            for model in img.added:
                credit[img.vectors[model][1]].add(model)
        out = []
        for i, it in enumerate(items):
            img = images[it.sha256]
            out.append(AddResult(img.id, img.created and img.first == i,
                                 tuple(m for m, _ in it.vectors if m in credit[i])))
        return out

    def _add_round(self, images: list[_Image]) -> list[_Image]:
        """Steps 1-4 of the write protocol; returns the images to go round again."""
        claims = self._get_all([self.keys.sha(im.item.sha256) for im in images])
        fresh = [im for im, c in zip(images, claims, strict=True) if c is None]
        for im, c in zip(images, claims, strict=True):
            if c is not None:
                im.id = int(c)
        if fresh:
            top = int(self._call(self._r.incrby, self.keys.seq, len(fresh)))
            for k, im in enumerate(fresh, start=top - len(fresh) + 1):
                im.id = k
        is_fresh = {id(im) for im in fresh}
        t = repr(now())
        replies = self._call(self._run, [self._write_cmd(im, id(im) in is_fresh, t) for im in images])
        retry = []
        for im, rep in zip(images, replies, strict=True):
            if id(im) in is_fresh:
                continue
            if rep == -1:  # the record was deleted since we read its claim
                retry.append(im)
            else:
                im.added = {m for m, flag in zip(im.vectors, rep, strict=True) if flag == 1}
                im.present = list(im.vectors)
        won = self._claim(fresh)
        losers = [im for im, w in zip(fresh, won, strict=True) if not w]
        if losers:
            self._call(self._run, [self._drop_cmd(im.id, list(im.vectors)) for im in losers])
            log.info("cluster %s: %d images were claimed by another writer first", self.url, len(losers))
        for im, w in zip(fresh, won, strict=True):
            if w:
                im.created, im.added, im.present = True, set(im.vectors), list(im.vectors)
        return retry + losers

    def _write_cmd(self, im: _Image, new: bool, t: str) -> Routed:
        """Step 3 for one image: create its record with embeddings, or fill missing ones."""
        keys = [self.keys.img(im.id), *(self.keys.emb(m, im.id) for m in im.vectors)]
        fields: list = []
        if new:
            it = im.item
            fields = ["id", im.id, "sha256", it.sha256, "source", it.source, "width", it.width,
                      "height", it.height, "added", t]
            if it.label is not None:
                fields += ["label", it.label]
        return _script("write", keys, ["new" if new else "fill", len(fields), *fields,
                                       *(data for data, _ in im.vectors.values())])

    def _claim(self, fresh: list[_Image]) -> list[bool]:
        """Step 4: SET NX each hash claim; a claim that already names our id is ours (a retry)."""
        replies = self._call(self._run, [(k, pack(["SET", k, im.id, "NX"])) for im in fresh
                                         for k in (self.keys.sha(im.item.sha256),)])
        won = [r is not None for r in replies]
        lost = [i for i, w in enumerate(won) if not w]
        if lost:
            now_ids = self._get_all([self.keys.sha(fresh[i].item.sha256) for i in lost])
            for i, v in zip(lost, now_ids, strict=True):
                won[i] = v is not None and int(v) == fresh[i].id
        return won

    def _drop_cmd(self, image_id: int, models: Sequence[str]) -> Routed:
        return _script("drop", [self.keys.img(image_id), *(self.keys.emb(m, image_id) for m in models)], [])

    def _index(self, images: Sequence[_Image]) -> None:
        """Step 5: ZADD every record of the group to the id sets (idempotent; heals)."""
        routed = []
        ids = [im.id for im in images]
        if ids:
            routed.append(self._zcmd("ZADD", self.keys.ids, ids))
        by_model: dict[str, list[int]] = {}
        for im in images:
            for m in im.present:
                by_model.setdefault(m, []).append(im.id)
        routed += [self._zcmd("ZADD", self.keys.eids(m), mids) for m, mids in by_model.items()]
        self._call(self._run, routed)

    @staticmethod
    def _zcmd(cmd: str, key: str, ids: Sequence[int]) -> Routed:
        if cmd == "ZADD":
            return key, pack([cmd, key, *(x for i in ids for x in (i, i))])
        return key, pack([cmd, key, *ids])

    def _delete(self, ids: Sequence[int]) -> int:
        """Sorted sets first, then claims (only if they name the id), then records with embeddings."""
        models = sorted(n.decode() for n in self._call(self._r.smembers, self.keys.models))
        shas = self._call(self._run, [(self.keys.img(i), pack(["HGET", self.keys.img(i), "sha256"]))
                                      for i in ids])
        found = [(i, s.decode()) for i, s in zip(ids, shas, strict=True) if s is not None]
        if not found:
            return 0
        fids = [i for i, _ in found]
        routed = [self._zcmd("ZREM", self.keys.ids, fids),
                  *(self._zcmd("ZREM", self.keys.eids(m), fids) for m in models),
                  *(_script("unclaim", [self.keys.sha(s)], [i]) for i, s in found)]
        self._call(self._run, routed)
        return sum(self._call(self._run, [self._drop_cmd(i, models) for i in fids]))

    def flush(self) -> int:
        """DEL every key of the namespace, SCANning each primary."""
        self._check_writable()
        removed = 0
        for node in self._r.get_primaries():
            conn = self._r.get_redis_connection(node)
            batch: list[str] = []
            for key in conn.scan_iter(match=f"{self.namespace}:*", count=1000):
                batch.append(key.decode())
                if len(batch) >= 1000:
                    removed += sum(self._get_all(batch, "DEL"))
                    batch = []
            if batch:
                removed += sum(self._get_all(batch, "DEL"))
        self._dims.clear()
        return removed

    # ---------------------------------------------------------------- reads
    def count(self) -> int:
        return int(self._call(self._r.zcard, self.keys.ids))

    def get_records(self, ids: Sequence[int]) -> list[Record | None]:
        rows = self._get_all([self.keys.img(int(i)) for i in ids], "HGETALL")
        return [Record.from_fields(_pairs(f)) if f else None for f in rows]

    def ids_for_hashes(self, shas: Sequence[str]) -> list[int | None]:
        return [None if v is None else int(v) for v in self._get_all([self.keys.sha(s) for s in shas])]

    def _get_embeddings(self, model: str, dim: int, ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        vals = self._get_all([self.keys.emb(model, int(i)) for i in ids])
        return decode_many(ids, vals, dim, model)

    def has_embeddings(self, model: str, ids: Sequence[int]) -> np.ndarray:
        return np.array(self._get_all([self.keys.emb(model, int(i)) for i in ids], "EXISTS"), bool)

    # ---------------------------------------------------------------- repair
    def _scan(self, pattern: str) -> Iterator[str]:
        for node in self._r.get_primaries():
            for key in self._r.get_redis_connection(node).scan_iter(match=pattern, count=1000):
                yield key.decode()

    def repair(self) -> dict[str, int]:
        """Remove what a crashed writer can leave and rebuild the id sets. Stop writers first.

        Records whose hash claim names another id (or nothing: a record is claimed after
        it is written, so an unclaimed one is a crash leftover) are deleted with their
        embeddings; claims naming no record and embeddings without a record are removed;
        ``<ns>:ids`` and each ``<ns>:eids:<model>`` are made to list exactly what remains.
        Returns how many of each were fixed.
        """
        self._check_writable()
        fixed = {"orphan_records": 0, "dangling_claims": 0, "stray_embeddings": 0, "ids": 0, "eids": 0}
        models = sorted(n.decode() for n in self._call(self._r.smembers, self.keys.models))
        live: set[int] = set()
        orphans: list[int] = []
        rec_ids = [self.keys.id_from_key(k) for k in self._scan(f"{self.keys.img_prefix}*")]
        for s in range(0, len(rec_ids), 10000):
            chunk = rec_ids[s : s + 10000]
            shas = self._call(self._run, [(self.keys.img(i), pack(["HGET", self.keys.img(i), "sha256"]))
                                          for i in chunk])
            found = [(i, h.decode()) for i, h in zip(chunk, shas, strict=True) if h is not None]
            claims = self._get_all([self.keys.sha(h) for _, h in found])
            for (i, _), c in zip(found, claims, strict=True):
                if c is not None and c.isdigit() and int(c) == i:
                    live.add(i)
                else:
                    orphans.append(i)
        if orphans:
            self._call(self._run, [self._drop_cmd(i, models) for i in orphans])
        fixed["orphan_records"] = len(orphans)
        sha_keys = list(self._scan(f"{self.namespace}:sha:*"))
        vals = self._get_all(sha_keys)
        dangling = [(k, v) for k, v in zip(sha_keys, vals, strict=True)
                    if v is not None and (not v.isdigit() or int(v) not in live)]
        unclaims = [_script("unclaim", [k], [v]) for k, v in dangling]
        fixed["dangling_claims"] = sum(self._call(self._run, unclaims))
        emb_prefix = f"{self.namespace}:emb:"
        eids: dict[str, set[int]] = {m: set() for m in models}
        stray = []
        for k in self._scan(f"{emb_prefix}*"):
            i = self.keys.id_from_key(k)
            if i in live:
                eids.setdefault(k[len(emb_prefix) : k.rindex(":{")], set()).add(i)
            else:
                stray.append(k)
        fixed["stray_embeddings"] = sum(self._get_all(stray, "DEL"))
        fixed["ids"] = self._sync_zset(self.keys.ids, live)
        fixed["eids"] = sum(self._sync_zset(self.keys.eids(m), ids) for m, ids in eids.items())
        self._raise_seq(max(live, default=0))
        log.info("cluster %s ns=%s: repaired: %s", self.url, self.namespace, fixed)
        return fixed

    def rebuild_derived(self, record_ids: Sequence[int], embedding_ids: dict[str, Sequence[int]]) -> None:
        """Make the id sets list exactly these ids and the watermark cover them (slot by slot).

        Counts need no rewrite here: they are the sizes of the id sets.
        """
        self._check_writable()
        self._sync_zset(self.keys.ids, {int(i) for i in record_ids})
        for name, ids in embedding_ids.items():
            self._sync_zset(self.keys.eids(name), {int(i) for i in ids})
            self._call(self._r.sadd, self.keys.models, name)
        top = max([0, *record_ids, *(i for ids in embedding_ids.values() for i in ids)])
        self._raise_seq(int(top))

    def _raise_seq(self, top: int) -> None:
        """Move the id watermark up to ``top`` if it is below (never down)."""
        gap = top - self.last_id()
        if gap > 0:
            self._call(self._r.incrby, self.keys.seq, gap)

    def _sync_zset(self, key: str, want: set[int]) -> int:
        """Make the id set ``key`` hold exactly ``want``; returns members added plus removed."""
        have = {int(x) for x in self._call(self._r.zrange, key, 0, -1)}
        add, rem = sorted(want - have), sorted(have - want)
        routed = [self._zcmd(cmd, key, ids[s : s + 10000]) for cmd, ids in (("ZADD", add), ("ZREM", rem))
                  for s in range(0, len(ids), 10000)]
        self._call(self._run, routed)
        return len(add) + len(rem)
