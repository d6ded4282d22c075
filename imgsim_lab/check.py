"""``imgsim check``: verify the store's invariants and, with ``repair``, fix what is safe.

Invariants (see :mod:`imgsim_lab.store.schema`):

1. every record parses (id, sha256, source, width, height, added are valid);
2. every record's sha256 claim points back at it, and every claim points at a record
   with that sha256;
3. every record has an embedding of each model, of exactly ``4 × dim`` bytes, and every
   embedding belongs to a record;
4. the id sequence is at or ahead of every id; the counters and id sets match.

Safe repairs: delete dangling hash claims, orphan embeddings and embeddings of the wrong
length; claim an unclaimed record's hash; rewrite counters, the watermark and id sets.
Not repaired (reported): malformed records and missing embeddings — re-ingest the images.
"""

from __future__ import annotations

import logging
from collections import defaultdict
from dataclasses import dataclass, field

from imgsim_lab.store import Keys, Record, Store
from imgsim_lab.store.errors import CorruptDataError

log = logging.getLogger(__name__)


@dataclass
class Problem:
    kind: str
    detail: str
    repaired: bool = False

    def to_dict(self) -> dict:
        return {"kind": self.kind, "detail": self.detail, "repaired": self.repaired}


@dataclass
class CheckReport:
    records: int = 0
    models: dict[str, int] = field(default_factory=dict)
    problems: list[Problem] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return all(p.repaired for p in self.problems)

    def to_dict(self) -> dict:
        counts: dict[str, int] = defaultdict(int)
        for p in self.problems:
            counts[p.kind] += 1
        return {"ok": self.ok, "records": self.records, "models": self.models,
                "problems": len(self.problems), "by_kind": dict(counts),
                "unrepaired": sum(not p.repaired for p in self.problems),
                "details": [p.to_dict() for p in self.problems[:200]]}


def _id_of(keys: Keys, key: str) -> int | None:
    try:
        return keys.id_from_key(key)
    except CorruptDataError:
        return None


def check_store(store: Store, repair: bool = False) -> CheckReport:
    """Verify every invariant; with ``repair``, fix the safe ones. Returns a report."""
    k = store.keys
    report = CheckReport()
    problems = report.problems

    def problem(kind: str, detail: str, fixed: bool = False) -> None:
        problems.append(Problem(kind, detail, fixed))
        log.warning("check: %s: %s%s", kind, detail, " (repaired)" if fixed else "")

    backend_repair = getattr(store, "repair", None)  # the cluster backend cleans crash leftovers itself
    if repair and backend_repair is not None:
        log.info("check: backend repair of %s: %s", store.url, backend_repair())

    records: dict[int, Record] = {}
    for key in store.raw_scan(k.img_prefix):
        image_id = _id_of(k, key)
        fields = store.raw_record(image_id) if image_id is not None else None
        try:
            if fields is None:
                raise CorruptDataError("unreadable key")
            rec = Record.from_fields(fields)
            if rec.id != image_id:
                raise CorruptDataError(f"id field {rec.id} differs from the key's id")
            records[image_id] = rec
        except CorruptDataError as exc:
            problem("bad_record", f"{key}: {exc}")
    report.records = len(records)

    # hash claims, both ways
    claims: dict[str, int | None] = {}
    claim_keys = list(store.raw_scan(f"{k.ns}:sha:"))
    for key, val in zip(claim_keys, store.raw_get(claim_keys), strict=True):
        sha = key.rsplit(":", 1)[-1]
        try:
            claims[sha] = int(val) if val is not None else None
        except ValueError:
            claims[sha] = None
        rec = records.get(claims[sha]) if claims[sha] is not None else None
        if rec is None or rec.sha256 != sha:
            if repair:
                store.raw_delete([key])
            problem("dangling_claim", f"{key} -> {val!r} points at no record with that sha256", repair)
    for rec in records.values():
        if claims.get(rec.sha256) != rec.id:
            holder = claims.get(rec.sha256)
            fixed = repair and (holder is None or holder not in records)
            if fixed:
                store.raw_set(k.sha(rec.sha256), str(rec.id))
            problem("unclaimed_record", f"record {rec.id} ({rec.source}) is not the claim of its sha256 "
                    f"(claim: {holder})", fixed)

    # embeddings of each model
    emb_ids: dict[str, list[int]] = {}
    for name, info in store.model_info().items():
        keys = list(store.raw_scan(k.emb_prefix(name)))
        good: list[int] = []
        for s in range(0, len(keys), 1000):
            chunk = keys[s : s + 1000]
            for key, val in zip(chunk, store.raw_get(chunk), strict=True):
                image_id = _id_of(k, key)
                if image_id is None or image_id not in records:
                    if repair:
                        store.raw_delete([key])
                    problem("orphan_embedding", f"{key} has no record", repair)
                elif val is None or len(val) != 4 * info.dim:
                    if repair:
                        store.raw_delete([key])
                    problem("bad_embedding", f"{key}: {None if val is None else len(val)} bytes, "
                            f"expected {4 * info.dim}", repair)
                else:
                    good.append(image_id)
        good.sort()
        emb_ids[name] = good
        report.models[name] = len(good)
        for image_id in sorted(set(records) - set(good)):
            problem("missing_embedding", f"record {image_id} ({records[image_id].source}) has no "
                    f"{name} embedding: re-ingest it")

    # derived data: counters, watermark, id sets
    derived_ok = store.count() == len(records) and store.last_id() >= max(records, default=0)
    infos = store.model_info()
    derived_ok &= all(infos[n].count == len(ids) for n, ids in emb_ids.items())
    if store.backend != "rocksdb":  # the id sets only exist on Redis-protocol stores
        derived_ok &= list(store.all_ids()) == sorted(records)
        derived_ok &= all(list(store.embedding_ids(n)) == ids for n, ids in emb_ids.items())
    if not derived_ok:
        if repair:
            store.rebuild_derived(sorted(records), emb_ids)
        problem("derived", f"counters/watermark/id sets disagree with {len(records)} records "
                f"and embeddings {report.models}", repair)
    log.info("check of %s ns=%s: %d records, %d problems (%d unrepaired)", store.url, store.namespace,
             report.records, len(problems), sum(not p.repaired for p in problems))
    return report
