"""Redis-protocol backend: Apache Kvrocks or Redis, one node or a cluster.

One class, :class:`RespStore`, holds the protocol; a :mod:`~imgsim_lab.store.transport`
(one node, or a cluster) carries it. Only commands Kvrocks supports are used (strings,
hashes, sets, sorted sets, SCAN, pipelines, MULTI/EXEC, EVAL); every Lua script takes
all its keys from KEYS (:mod:`~imgsim_lab.store.scripts`); connections speak RESP2.

Write protocol of :meth:`add_images`, per group of images (claim first):

1. read the hash claims (``GET <ns>:sha:<sha256>``), the maintenance lock, and renew
   this writer's lease in ``<ns>:writers``;
2. reserve ids for unclaimed images (script ``reserve``: ``INCRBY <ns>:seq`` and the
   range listed in ``<ns>:inflight{<ns>:seq}`` until it is indexed, so :meth:`last_id`,
   the committed watermark, never passes an id that is not listed yet);
3. **one node**: per batch of ``write_batch`` images one ``MULTI``: ``MSET`` of the new
   images' records (one JSON value each) and vectors (outside Lua: they cross at wire
   speed) and the ``commit`` script, which per image claims the hash (``SET`` if absent),
   lists it in ``<ns>:ids``, ``<ns>:eids:<model>`` and ``<ns>:shas``, fills a missing
   record or embeddings of an existing one (``SET NX``), and removes the record and
   vectors of an image whose claim another writer won — all or nothing. The
   commands are packed from key templates and each ``MULTI`` is sent as soon as it is
   packed, so the server runs one while the client packs the next; **cluster**: ``SET NX``
   the claims (listed in ``<ns>:shas`` first), then per block of 100 ids one ``record``
   script on the block's slot (records and embeddings if absent, vectors in ARGV), then
   ``ZADD`` the id sets; every node is sent its commands before any reply is read;
4. drop the in-flight reservation.

A claim equal to an id this call reserved is ours, so a call replayed after a lost reply
reports ``created`` right. On a cluster a crash can leave a claim whose record is not
written yet; the next add of that image completes the record at the claimed id, and
``imgsim check --repair`` removes what no one completes. Counts are ``ZCARD`` of the id
sets (exact and live; Kvrocks' ``DBSIZE`` is not).
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import socket
import sys
import time
import uuid
from collections.abc import Callable, Iterator, Sequence, Set
from dataclasses import dataclass
from functools import partial
from itertools import pairwise

import numpy as np

from imgsim_lab.store.base import EncodedImage, Store
from imgsim_lab.store.config import StoreConfig
from imgsim_lab.store.errors import CorruptDataError, StoreError, StoreLockedError
from imgsim_lab.store.resp import MAX_ID, KeyWire, bulk, command, pack
from imgsim_lab.store.schema import (
    BLOCK,
    AddResult,
    Keys,
    ModelInfo,
    Record,
    added_ending,
    chunk_rows,
    decode_many,
    now,
    record_fields,
    record_json_ending,
)
from imgsim_lab.store.scripts import SCRIPTS
from imgsim_lab.store.transport import Routed, connect

log = logging.getLogger(__name__)

#: Rounds before giving up on an image that keeps being claimed or deleted under us.
MAX_ROUNDS = 5
#: Members per ZADD/ZREM/SADD command.
CHUNK = 4000


def _pairs(raw: list) -> dict:
    return dict(zip(raw[::2], raw[1::2], strict=True))


_MSET, _MGET, _EVAL, _EVALSHA = bulk(b"MSET"), bulk(b"MGET"), bulk(b"EVAL"), bulk(b"EVALSHA")
_RECORD_SHA = bulk(SCRIPTS["record"][1].encode())
#: Scripts inside a MULTI are sent as EVAL with their source: a NOSCRIPT error there would
#: leave the transaction's other commands applied.
_COMMIT_SRC = bulk(SCRIPTS["commit"][0].encode())
_DIGITS = [bulk(b"%d" % i) for i in range(10)]


def _int_arg(i: int) -> bytes:
    return _DIGITS[i] if 0 <= i < 10 else bulk(b"%d" % i)


def record_command(wire: KeyWire, block: Sequence[tuple[int, EncodedImage, Sequence[tuple[str, bytes]]]],
                   t: float) -> bytes:
    """The ``record`` script (EVALSHA) for one block of ``(id, item, vectors)``: records
    stamped ``added=t``, packed from templates (equal to the generic packing, tested)."""
    keys: list[bytes] = []
    args: list[bytes] = [bulk(b"%d" % len(block))]
    nargs = 1
    ending = added_ending(t)
    for rid, item, vectors in block:
        keys.append(wire.img(rid))
        args += (bulk(b"%d" % rid), _int_arg(len(vectors)))
        for m, data in vectors:
            keys.append(wire.emb(m, rid))
            args += (b"$%d\r\n" % len(data), data, b"\r\n")
        args.append(bulk(record_json_ending(rid, item.values, ending)))
        nargs += 3 + len(vectors)
    return command(3 + len(keys) + nargs, [_EVALSHA, _RECORD_SHA, bulk(b"%d" % len(keys)), *keys, *args])


@dataclass(slots=True)
class _Image:
    """One distinct sha256 of a group: the first item with it, its first vector per model."""

    item: EncodedImage
    first: int
    vectors: dict[str, tuple[bytes, int]]  # model -> (vector, index of the item that gave it)
    id: int = 0
    fresh: bool = False  # id reserved by this call
    created: bool = False
    added: Set[str] = frozenset()


class RespStore(Store):
    """Store on a Redis-protocol server or cluster; see the module docstring."""

    def __init__(self, url: str, redacted: str, namespace: str, read_only: bool = False,
                 config: StoreConfig | None = None) -> None:
        super().__init__(redacted, namespace, read_only)
        self.config = config or StoreConfig.from_env()
        self._t = connect(url, redacted, self.config)
        self.backend = "redis" if self._t.single else "redis-cluster"
        self._writer = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
        self._leased = False
        k = self.keys
        self._inflight = f"{k.ns}:inflight{{{k.seq}}}"  # same slot as <ns>:seq
        self._wire = KeyWire(k)

    def close(self) -> None:
        if self._leased:
            with contextlib.suppress(StoreError):
                self._t.command("ZREM", self.keys.writers, self._writer)
        self._t.close()

    # --------------------------------------------------------------- helpers
    def _get_all(self, keys: Sequence[str], cmd: str = "GET") -> list:
        """One single-key command per key, grouped into MGET per block where it is GET."""
        if cmd == "GET" and keys:
            return self._mget(keys)
        head = b"*2\r\n$%d\r\n%s\r\n" % (len(cmd), cmd.encode())
        return self._t.run([(k, b"%s$%d\r\n%s\r\n" % (head, len(k), k.encode())) for k in keys])

    def _mget_single(self, keys: Sequence[bytes]) -> list:
        """One node: values of keys given as RESP bulk strings, one MGET per ``read_batch`` keys."""
        step = self.config.read_batch
        replies = self._t.run([(self.keys.seq, command(1 + len(part), [_MGET, *part]))
                               for part in (keys[s : s + step] for s in range(0, len(keys), step))])
        return [v for r in replies for v in r]

    def _mget(self, keys: Sequence[str]) -> list:
        """Values of keys: one MGET per slot group (one node: per ``read_batch`` keys)."""
        if self._t.single:
            return self._mget_single([bulk(k.encode()) for k in keys])
        by_tag: dict[str, list[int]] = {}
        for i, k in enumerate(keys):
            lo = k.find("{")
            hi = k.find("}", lo + 1) if lo >= 0 else -1
            by_tag.setdefault(k[lo + 1 : hi] if lo >= 0 and hi > lo + 1 else k, []).append(i)
        groups = list(by_tag.values())
        return self._run_groups(groups, [(keys[g[0]], pack(["MGET", *(keys[i] for i in g)]))
                                         for g in groups])

    def _run_groups(self, groups: list[list[int]], routed: list[Routed]) -> list:
        """Replies of one MGET per group of positions, put back in position order."""
        out: list = [None] * sum(len(g) for g in groups)
        for g, vals in zip(groups, self._t.run(routed), strict=True):
            for i, v in zip(g, vals, strict=True):
                out[i] = v
        return out

    def _mget_ids(self, ids: list[int], wire: Callable[[int], bytes], key: Callable[[int], str]) -> list:
        """Values of the keys of ``ids`` (``wire``: packed from its template, ``key``: as
        text), the bulk-read hot path: one MGET per ``read_batch`` keys on one node; on a cluster
        one per block of ids, sorted (a block's keys share a hash tag, hence a slot), without
        per-key grouping in Python. Ids no image can
        have (outside the templates' range) are read by their text keys: absent."""
        if not ids:
            return []
        if not (min(ids) > 0 and max(ids) < MAX_ID):
            return self._mget([key(i) for i in ids])
        if self._t.single:
            return self._mget_single([wire(i) for i in ids])
        blocks = np.asarray(ids, np.int64) // BLOCK
        order = None
        if (np.diff(blocks) < 0).any():  # not in id order: read sorted, answer in the caller's order
            order = np.argsort(blocks, kind="stable")
            blocks = blocks[order]
            ids = [ids[j] for j in order.tolist()]
        cuts = [0, *(np.flatnonzero(np.diff(blocks)) + 1).tolist(), len(ids)]
        wires = [wire(i) for i in ids]
        vals = [v for r in self._t.run([(key(ids[a]), command(1 + b - a, [_MGET, *wires[a:b]]))
                                        for a, b in pairwise(cuts)]) for v in r]
        if order is None:
            return vals
        out: list = [None] * len(vals)
        for j, v in zip(order.tolist(), vals, strict=True):
            out[j] = v
        return out

    def _record_values(self, ids: Sequence[int], raise_errors: bool = True) -> list:
        """Per id the stored record: its JSON value, the reply to ``HGETALL`` of a record
        written as a hash (before records were one value), an exception (``raise_errors``
        false), or ``None``. One MGET per block; only what it misses is read again
        (``MGET`` answers nil for a hash)."""
        ids = [int(i) for i in ids]
        vals = self._mget_ids(ids, self._wire.img, self.keys.img)
        missed = [j for j, v in enumerate(vals) if v is None]
        if missed:
            keys = [self.keys.img(ids[j]) for j in missed]
            rows = self._t.run([(key, pack(["HGETALL", key])) for key in keys], raise_errors=raise_errors)
            for j, row in zip(missed, rows, strict=True):
                vals[j] = _pairs(row) if isinstance(row, list) and row else (
                    row if isinstance(row, Exception) else None)
        return vals

    def _zcmd(self, cmd: str, key: str, members: Sequence) -> list[Routed]:
        members = list(members)
        out = []
        for s in range(0, len(members), CHUNK):
            part = members[s : s + CHUNK]
            args = [x for i in part for x in (i, i)] if cmd == "ZADD" else part
            out.append((key, pack([cmd, key, *args])))
        return out

    def _atomic(self, routed: list[Routed]) -> list:
        """One node: the commands in one MULTI/EXEC; returns EXEC's replies."""
        key = routed[0][0]
        replies = self._t.run([(key, pack(["MULTI"])), *routed, (key, pack(["EXEC"]))])
        return replies[-1]

    def _models(self) -> list[str]:
        return sorted(n.decode() for n in self._t.command("SMEMBERS", self.keys.models))

    # ---------------------------------------------------------------- models
    def _register_model(self, name: str, dim: int, version: str) -> ModelInfo:
        key = self.keys.model(name)
        raw = self._t.run([self._t.script("register", [key], [dim, version])])[0]
        self._t.command("SADD", self.keys.models, name)  # after the facts: a crash is healed by retrying
        return self._model_from(name, _pairs(raw), 0)

    def _forget_model(self, name: str) -> None:
        k = self.keys
        self._t.run([(k.models, pack(["SREM", k.models, name])),
                     *((key, pack(["DEL", key])) for key in (k.model(name), k.eids(name)))])

    @staticmethod
    def _model_from(name: str, f: dict, count: int) -> ModelInfo:
        try:
            return ModelInfo(name, int(f[b"dim"]), f[b"version"].decode(), int(count))
        except (KeyError, ValueError, UnicodeDecodeError) as exc:
            raise CorruptDataError(f"model facts of {name!r} are malformed: {exc}") from None

    def model_info(self) -> dict[str, ModelInfo]:
        names = self._models()
        routed = [r for n in names for r in ((self.keys.model(n), pack(["HGETALL", self.keys.model(n)])),
                                              (self.keys.eids(n), pack(["ZCARD", self.keys.eids(n)])))]
        replies = self._t.run(routed)
        return {n: self._model_from(n, _pairs(replies[2 * i]), replies[2 * i + 1])
                for i, n in enumerate(names) if replies[2 * i]}

    # ---------------------------------------------------------------- writes
    def _add_encoded(self, batch: Sequence[EncodedImage]) -> list[AddResult]:
        return self._add_batches([list(batch)])

    def _add_batches(self, batches: list[list[EncodedImage]]) -> list[AddResult]:
        items = [it for b in batches for it in b]
        step = self.config.write_group
        return [r for s in range(0, len(items), step) for r in self._add_group(items[s : s + step])]

    def _add_group(self, items: Sequence[EncodedImage]) -> list[AddResult]:
        images: dict[str, _Image] = {}
        for i, it in enumerate(items):
            img = images.get(it.sha256)
            if img is None:
                images[it.sha256] = _Image(it, i, {model: (data, i) for model, data in it.vectors})
            else:
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
        out = []
        for i, it in enumerate(items):
            img = images[it.sha256]
            added, vectors = img.added, img.vectors
            # each added vector is credited to the item that gave it (the first with that model)
            out.append(AddResult(img.id, img.created and img.first == i,
                                 tuple(m for m, _ in it.vectors if m in added and vectors[m][1] == i)))
        return out

    def _start_round(self, shas: Sequence[str]) -> list:
        """Step 1: claims, the maintenance lock, and this writer's lease, in one round trip."""
        k = self.keys
        lease = time.time() + self.config.writer_lease
        claim_keys = [k.sha(sh) for sh in shas]
        if self._t.single:
            step = self.config.read_batch
            reads = [(k.maint, pack(["MGET", *claim_keys[s : s + step]])) for s in range(0, len(shas), step)]
        else:
            reads = [(key, pack(["GET", key])) for key in claim_keys]
        replies = self._t.run([(k.writers, pack(["ZADD", k.writers, lease, self._writer])),
                               (k.maint, pack(["GET", k.maint])), *reads])
        self._leased = True
        if replies[1] is not None:
            raise StoreLockedError(f"namespace {self.namespace!r} of {self.url} is under maintenance "
                                   f"by {replies[1].decode('utf-8', 'replace')}: try again when it ends")
        if self._t.single:
            return [v for vals in replies[2:] for v in vals]
        return replies[2:]

    def _reserve(self, n: int) -> tuple[int, str]:
        """Step 2: ``n`` new ids; returns the first and the in-flight member to drop later."""
        k = self.keys
        expiry = time.time() + self.config.writer_lease
        lo = int(self._t.run([self._t.script("reserve", [k.seq, self._inflight],
                                             [n, self._writer, f"{expiry:.0f}"])])[0])
        return lo, f"{lo}:{self._writer}:{expiry:.0f}"

    def _add_round(self, images: list[_Image]) -> list[_Image]:
        claims = self._start_round([im.item.sha256 for im in images])
        fresh = []
        for im, c in zip(images, claims, strict=True):
            if c is None:
                fresh.append(im)
            else:
                im.id, im.fresh = int(c), False
        member = None
        if fresh:
            lo, member = self._reserve(len(fresh))
            for j, im in enumerate(fresh):
                im.id, im.fresh = lo + j, True
        done = [(self._inflight, pack(["ZREM", self._inflight, member]))] if member else []
        try:
            if self._t.single:
                retry = self._commit_single(images, done)
                done = []  # sent after the commits, in the same round trip
                return retry
            return self._commit_cluster(images)
        finally:
            if done:
                self._t.run(done)

    def _commit_single(self, images: list[_Image], after: list[Routed]) -> list[_Image]:
        """Step 3 on one node: per batch of ``write_batch`` images one MULTI with the MSET of
        new vectors and the commit script; all batches (then ``after``) in one round trip."""
        step = self.config.write_batch
        batches = [images[s : s + step] for s in range(0, len(images), step)]
        sizes: list[int] = []

        def blocks() -> Iterator[list[Routed]]:
            for b in batches:
                block = self._commit_block(b)
                sizes.append(len(block))
                yield block
            yield after

        replies = self._t.run_stream(blocks())
        retry = []
        pos = 0
        for batch, size in zip(batches, sizes, strict=True):
            pos += size
            rows = replies[pos - 1][-1]  # EXEC's replies; the commit script's is the last
            if isinstance(rows, Exception):
                raise StoreError(f"{self.url}: commit failed: {rows}")
            retry += self._commit_results(batch, rows)
        return retry

    def _commit_block(self, images: list[_Image]) -> list[Routed]:
        """One MULTI: MSET of the fresh images' vectors (ids this call reserved), then the
        ``commit`` script, which claims the hashes and writes records and id sets (and, for
        the other images, what their records lack). Packed from templates
        (:class:`~.resp.KeyWire`): this is the bulk-write hot path."""
        k, w = self.keys, self._wire
        models = sorted(set().union(*(im.vectors for im in images)))
        midx = {m: _int_arg(i + 1) for i, m in enumerate(models)}
        one, zero = _int_arg(1), _int_arg(0)
        claims, keys, args, mset = [], [], [], []
        nargs = nmset = 0
        ending = added_ending(now())
        for im in images:
            rid = im.id
            claims.append(w.sha(im.item.sha256))
            ikey = w.img(rid)
            keys.append(ikey)
            args += (bulk(b"%d" % rid), one if im.fresh else zero, _int_arg(len(im.vectors)))
            nargs += 3 + len(im.vectors)
            for m, (data, _) in im.vectors.items():
                ekey = w.emb(m, rid)
                keys.append(ekey)
                args.append(midx[m])
                if im.fresh:
                    mset += (ekey, b"$%d\r\n" % len(data), data, b"\r\n")
                    nmset += 2
                else:
                    args += (b"$%d\r\n" % len(data), data, b"\r\n")
                    nargs += 1
            rec = bulk(record_json_ending(rid, im.item.values, ending))
            if im.fresh:
                mset += (ikey, rec)
                nmset += 2
            else:
                args.append(rec)
                nargs += 1
        head = [bulk(x.encode()) for x in (k.ids, k.shas, *(k.eids(m) for m in models))]
        nkeys = len(head) + len(claims) + len(keys)
        script = command(3 + nkeys + 2 + nargs,
                         [_EVAL, _COMMIT_SRC, bulk(b"%d" % nkeys), *head, *claims, *keys,
                          _int_arg(len(models)), bulk(b"%d" % len(images)), *args])
        routed = [(k.ids, command(1 + nmset, [_MSET, *mset]))] if mset else []
        return [(k.ids, pack(["MULTI"])), *routed, (k.ids, script), (k.ids, pack(["EXEC"]))]

    @staticmethod
    def _commit_results(images: list[_Image], rows: list) -> list[_Image]:
        retry = []
        for im, row in zip(images, rows, strict=True):
            if row == 1:  # a fresh image that holds its claim
                im.created, im.added = True, set(im.vectors)
                continue
            rid, state, *written = (int(x) for x in row)
            if state == 1:
                im.created, im.added = True, set(im.vectors)
            elif state == 0:
                im.added = {m for m, w in zip(im.vectors, written, strict=True) if w}
            else:  # -1: another writer's claim won (its id), -2: the claim changed
                im.id = rid
                retry.append(im)
        return retry

    def _commit_cluster(self, images: list[_Image]) -> list[_Image]:
        """Step 3 on a cluster: claims, then one record script per block, then the id sets."""
        k = self.keys
        fresh = [im for im in images if im.fresh]
        if fresh:
            self._t.run([r for s in range(0, len(fresh), CHUNK)
                         for r in [(k.shas, pack(["SADD", k.shas, *(im.item.sha256
                                                                    for im in fresh[s : s + CHUNK])]))]])
            won = self._t.run([(k.sha(im.item.sha256), pack(["SET", k.sha(im.item.sha256), im.id, "NX"]))
                               for im in fresh])
            lost = [im for im, w in zip(fresh, won, strict=True) if w is None]
            if lost:
                now_ids = self._mget([k.sha(im.item.sha256) for im in lost])
                for im, v in zip(lost, now_ids, strict=True):
                    if v is None or int(v) != im.id:  # not a replay of our own claim
                        im.fresh = False
                        im.id = 0 if v is None else int(v)
        retry = [im for im in images if im.id == 0]
        todo = [im for im in images if im.id != 0]
        blocks: dict[int, list[_Image]] = {}
        for im in todo:
            blocks.setdefault(Keys.block(im.id), []).append(im)
        t = now()
        routed = [(k.img(group[0].id),
                   record_command(self._wire, [(im.id, im.item, [(m, d) for m, (d, _) in im.vectors.items()])
                                               for im in group], t))
                  for group in blocks.values()]
        replies = self._t.run(routed)
        for group, rows in zip(blocks.values(), replies, strict=True):
            for im, row in zip(group, rows, strict=True):
                flags = [int(x) for x in row[1:]]
                if im.fresh:
                    im.created, im.added = True, set(im.vectors)
                else:
                    im.added = {m for m, w in zip(im.vectors, flags, strict=True) if w}
        by_model: dict[str, list[int]] = {}
        for im in todo:
            for m in im.vectors:
                by_model.setdefault(m, []).append(im.id)
        self._t.run([*self._zcmd("ZADD", k.ids, [im.id for im in todo]),
                     *(r for m, ids in by_model.items() for r in self._zcmd("ZADD", k.eids(m), ids))])
        return retry

    def _delete(self, ids: Sequence[int]) -> int:
        """Unlist, then drop records with embeddings, then unclaim (a claim may outlive its
        record for a moment, never the reverse); one MULTI on one node."""
        k = self.keys
        self._start_round([])
        models = self._models()
        fields = [record_fields(v) for v in self._record_values(ids)]
        found = [(int(i), f["sha256"]) for i, f in zip(ids, fields, strict=True)
                 if f is not None and isinstance(f.get("sha256"), str)]
        if not found:
            return 0
        fids = [i for i, _ in found]
        unlist = [*self._zcmd("ZREM", k.ids, fids),
                  *(r for m in models for r in self._zcmd("ZREM", k.eids(m), fids))]
        blocks: dict[int, list[int]] = {}
        for i in fids:
            blocks.setdefault(Keys.block(i), []).append(i)
        drop = [self._t.script("drop", [*(k.img(i) for i in b), *(k.emb(m, i) for i in b for m in models)],
                               [len(b)]) for b in blocks.values()]
        unclaim = [self._t.script("unclaim", [k.sha(s)], [i]) for i, s in found]
        if self._t.single:
            srem = (k.shas, pack(["SREM", k.shas, *(s for _, s in found)]))
            replies = self._atomic([*unlist, *drop, *unclaim, srem])
            return sum(int(r) for r in replies[len(unlist) : len(unlist) + len(drop)])
        self._t.run(unlist)
        removed = sum(int(r) for r in self._t.run(drop))
        gone = self._t.run(unclaim)
        freed = [s for (_, s), g in zip(found, gone, strict=True) if int(g)]
        if freed:
            self._t.run([(k.shas, pack(["SREM", k.shas, *freed]))])
        return removed

    def flush(self) -> int:
        """DEL every key of the namespace (found by a full SCAN, filtered here)."""
        self._check_writable()
        keys = list(self._t.scan_keys(self.keys.prefix))
        removed = sum(int(r) for r in self._get_all(keys, "DEL")) if keys else 0
        self._dims.clear()
        return removed

    # ----------------------------------------------------------------- reads
    def _int(self, key: str) -> int:
        v = self._t.command("GET", key)
        try:
            return int(v) if v is not None else 0
        except ValueError:
            raise CorruptDataError(f"{key} holds {v[:20]!r}, not an integer") from None

    def count(self) -> int:
        return int(self._t.command("ZCARD", self.keys.ids))

    def embedding_count(self, model: str, upto: int) -> int:
        return int(self._t.command("ZCOUNT", self.keys.eids(model), "-inf", int(upto)))

    def seq(self) -> int:
        """The highest id handed out (some may still be in flight)."""
        return self._int(self.keys.seq)

    def last_id(self) -> int:
        """The committed watermark: below every id reserved but not yet listed."""
        seq, inflight = self._t.run([(self.keys.seq, pack(["GET", self.keys.seq])),
                                     (self._inflight, pack(["ZRANGE", self._inflight, 0, -1]))])
        try:
            top = int(seq) if seq is not None else 0
        except ValueError:
            raise CorruptDataError(f"{self.keys.seq} holds {seq[:20]!r}, not an integer") from None
        t = time.time()
        for m in inflight:  # "<lo>:<writer>:<expiry>"
            text = m.decode("ascii", "replace")
            lo, expiry = text.split(":", 1)[0], text.rsplit(":", 1)[1]
            if float(expiry) > t:
                top = min(top, int(lo) - 1)
        return top

    def get_records(self, ids: Sequence[int]) -> list[Record | None]:
        return [None if v is None else Record.from_fields(v) if isinstance(v, dict) else Record.from_json(v)
                for v in self._record_values(ids)]

    def ids_for_hashes(self, shas: Sequence[str]) -> list[int | None]:
        vals = self._mget([self.keys.sha(s) for s in shas]) if len(shas) else []
        return [None if v is None else int(v) for v in vals]

    def _get_embeddings(self, model: str, dim: int, ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        vals = self._mget_ids(ids.tolist(), partial(self._wire.emb, model), partial(self.keys.emb, model))
        return decode_many(ids, vals, dim, model)

    def has_embeddings(self, model: str, ids: Sequence[int]) -> np.ndarray:
        """Whether each id has a vector for ``model``. On a cluster also whether it is listed
        in ``<ns>:eids:<model>`` and its record in ``<ns>:ids``: a writer that died between the
        record script and the id sets (which live on other nodes) leaves vectors or records
        that are not listed yet, and only a re-add lists them."""
        if not len(ids):
            return np.zeros(0, bool)
        have = np.array(self._get_all([self.keys.emb(model, int(i)) for i in ids], "EXISTS"), bool)
        if not self._t.single:
            n = len(ids)
            listed = self._t.run([(z, pack(["ZSCORE", z, int(i)]))
                                  for z in (self.keys.eids(model), self.keys.ids) for i in ids])
            have &= np.array([a is not None and b is not None for a, b in zip(listed[:n], listed[n:],
                                                                               strict=True)], bool)
        return have

    def _ids_after(self, zkey: str, after_id: int, limit: int) -> list[int]:
        raw = self._t.command("ZRANGEBYSCORE", zkey, f"({int(after_id)}", "+inf", "LIMIT", 0, limit)
        return [int(x) for x in raw]

    def iter_embeddings(self, model: str, after_id: int = 0,
                        chunk_size: int = 4096) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        dim = self.model_dim(model)
        chunk_size = chunk_rows(chunk_size, dim)
        zkey = self.keys.eids(model)
        last = int(after_id)
        while True:
            ids = self._ids_after(zkey, last, chunk_size)
            if not ids:
                return
            arr = np.array(ids, np.int64)
            yield self._get_embeddings(model, dim, arr)
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
        raw = self._t.command("ZRANGEBYSCORE", self.keys.eids(model), "-inf", "+inf")
        return np.array([int(x) for x in raw], np.int64)

    def all_ids(self, after_id: int = 0) -> np.ndarray:
        raw = self._t.command("ZRANGEBYSCORE", self.keys.ids, f"({int(after_id)}", "+inf")
        return np.array([int(x) for x in raw], np.int64)

    # ------------------------------------------------------------- inventory
    def _candidate_ids(self, zkey: str) -> Iterator[list[int]]:
        """Ids 1..seq (every id ever handed out) plus any listed above it, in chunks."""
        top = self.seq()
        extra = sorted(i for i in (int(x) for x in self._t.command("ZRANGE", zkey, 0, -1)) if i > top)
        step = 2000
        for s in range(1, top + 1, step):
            yield list(range(s, min(s + step, top + 1)))
        if extra:
            yield extra

    def inventory_records(self) -> Iterator[list[tuple[int, dict | None]]]:
        for ids in self._candidate_ids(self.keys.ids):
            out = []
            for i, v in zip(ids, self._record_values(ids, raise_errors=False), strict=True):
                if isinstance(v, Exception):
                    out.append((i, {"_raw": f"unreadable: {str(v)[:80]}"}))
                elif v is not None:
                    out.append((i, record_fields(v)))
            if out:
                yield out

    def inventory_embeddings(self, model: str) -> Iterator[list[tuple[int, int]]]:
        for ids in self._candidate_ids(self.keys.eids(model)):
            keys = [self.keys.emb(model, i) for i in ids]
            rows = self._t.run([(key, pack(["STRLEN", key])) for key in keys], raise_errors=False)
            out = [(i, -1 if isinstance(n, Exception) else int(n)) for i, n in zip(ids, rows, strict=True)
                   if isinstance(n, Exception) or int(n) > 0]
            if out:
                yield out

    def inventory_claims(self) -> Iterator[list[tuple[str, bytes | None]]]:
        shas = sorted(s.decode("utf-8", "replace") for s in self._t.command("SMEMBERS", self.keys.shas))
        for s in range(0, len(shas), 2000):
            part = shas[s : s + 2000]
            yield list(zip(part, self._t.run([(self.keys.sha(h), pack(["GET", self.keys.sha(h)]))
                                              for h in part], raise_errors=False), strict=True))

    def namespaces(self) -> dict[str, int]:
        names = sorted({k[:-4] for k in self._t.scan_keys("") if k.endswith(":seq") and ":" not in k[:-4]})
        return {ns: int(self._t.command("ZCARD", Keys(ns).ids)) for ns in names}

    def scan_keys(self) -> Iterator[str]:
        return self._t.scan_keys(self.keys.prefix)

    def derived_problems(self, record_ids: Sequence[int],
                         embedding_ids: dict[str, Sequence[int]]) -> list[str]:
        out = []
        if list(self.all_ids()) != sorted(record_ids):
            out.append(f"{self.keys.ids} does not list exactly the {len(record_ids)} records")
        for name, ids in embedding_ids.items():
            if list(self.embedding_ids(name)) != sorted(ids):
                out.append(f"{self.keys.eids(name)} does not list exactly the {len(ids)} embeddings")
        top = max([0, *record_ids, *(i for ids in embedding_ids.values() for i in ids)])
        if self.seq() < top:
            out.append(f"watermark {self.seq()} is behind id {top}")
        return out

    def rebuild_derived(self, record_ids: Sequence[int], embedding_ids: dict[str, Sequence[int]],
                        claimed: Sequence[str] | None = None) -> None:
        """Make the id sets list exactly these ids (and ``<ns>:shas`` these claims), and the
        watermark cover them (never moved down)."""
        self._check_writable()
        k = self.keys
        routed = self._sync_set(k.ids, {int(i) for i in record_ids}, zset=True)
        for name, ids in embedding_ids.items():
            routed += self._sync_set(k.eids(name), {int(i) for i in ids}, zset=True)
            routed.append((k.models, pack(["SADD", k.models, name])))
        if claimed is not None:
            routed += self._sync_set(k.shas, set(claimed), zset=False)
        top = max([0, *record_ids, *(i for ids in embedding_ids.values() for i in ids)])
        gap = int(top) - self.seq()
        if gap > 0:
            routed.append((k.seq, pack(["INCRBY", k.seq, gap])))
        self._t.run(routed)

    def _sync_set(self, key: str, want: set, zset: bool) -> list[Routed]:
        if zset:
            have = {int(x) for x in self._t.command("ZRANGE", key, 0, -1)}
        else:
            have = {x.decode() for x in self._t.command("SMEMBERS", key)}
        add, rem = sorted(want - have), sorted(have - want)
        if zset:
            return [*self._zcmd("ZADD", key, add), *self._zcmd("ZREM", key, rem)]
        return [(key, pack([cmd, key, *part])) for cmd, xs in (("SADD", add), ("SREM", rem))
                for part in (xs[s : s + CHUNK] for s in range(0, len(xs), CHUNK)) if part]

    @contextlib.contextmanager
    def maintenance(self) -> Iterator[None]:
        """Take ``<ns>:maint`` (SET NX, expiring), then wait for live writers' leases to end.

        Writers check the lock at every round and stop; a second repair is refused. Both
        errors name the holder.
        """
        self._check_writable()
        k = self.keys
        token = json.dumps({"pid": os.getpid(), "host": socket.gethostname(),
                            "cmd": " ".join(sys.argv)[:200], "since": round(time.time()),
                            "id": uuid.uuid4().hex[:8]})
        ttl = int(1000 * max(600, 10 * self.config.maintenance_wait))
        if self._t.command("SET", k.maint, token, "NX", "PX", ttl) is None:
            holder = self._t.command("GET", k.maint)
            raise StoreLockedError(f"namespace {self.namespace!r} of {self.url} is already under "
                                   f"maintenance by {(holder or b'?').decode('utf-8', 'replace')}")
        try:
            deadline = time.monotonic() + self.config.maintenance_wait
            while True:
                live = [w.decode() for w in self._t.command("ZRANGEBYSCORE", k.writers, time.time(), "+inf")
                        if w.decode() != self._writer]
                if not live:
                    break
                if time.monotonic() > deadline:
                    raise StoreLockedError(f"namespace {self.namespace!r} of {self.url} has live writers "
                                           f"({', '.join(live[:5])}): stop them, then repair")
                time.sleep(0.2)
            yield
        finally:
            self._t.run([self._t.script("unclaim", [k.maint], [token])])

    def server_cpu_seconds(self) -> float | None:
        """Sum of ``used_cpu_user + used_cpu_sys`` over the server(s) (``INFO cpu``)."""
        total = 0.0
        for text in self._t.info_all("cpu"):
            fields = dict(line.split(":", 1) for line in text.splitlines() if ":" in line)
            try:
                total += float(fields["used_cpu_user"]) + float(fields["used_cpu_sys"])
            except (KeyError, ValueError):
                return None
        return total

    def info(self) -> dict:
        """:meth:`Store.info` plus ``server``: ``kvrocks`` or ``redis`` (from ``INFO server``)."""
        out = super().info()
        text = self._t.command("INFO", "server")
        raw = text.decode("utf-8", "replace") if isinstance(text, bytes) else str(text)
        out["server"] = "kvrocks" if "kvrocks_version" in raw else "redis"
        return out

    # ------------------------------------------------------------ raw access
    def raw_get(self, keys: Sequence[str]) -> list[bytes | None]:
        if not keys:
            return []
        return [None if isinstance(v, Exception) else v
                for v in self._t.run([(key, pack(["GET", key])) for key in keys], raise_errors=False)]

    def raw_delete(self, keys: Sequence[str]) -> int:
        self._check_writable()
        return sum(int(r) for r in self._get_all(list(keys), "DEL")) if keys else 0

    def raw_set(self, key: str, value: bytes | str) -> None:
        self._check_writable()
        self._t.command("SET", key, value)

