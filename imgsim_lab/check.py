"""``imgsim check``: verify the store's invariants and, with ``repair``, fix what is safe.

Invariants (see :mod:`imgsim_lab.store.schema`), one function each:

1. every record parses (:func:`check_records`);
2. every record's sha256 claim points back at it, and every claim points at a record
   with that sha256 (:func:`check_claims`);
3. every record has an embedding of each model, of exactly ``4 × dim`` bytes, and every
   embedding belongs to a record (:func:`check_embeddings`);
4. no key of the namespace lies outside what the schema declares (:func:`check_strays`);
5. the watermark is ahead of every id; counters and id sets match (:func:`check_derived`).

What is checked is enumerated through the store's declared sets and id range
(:meth:`Store.inventory_records` …), never through ``SCAN MATCH``; a full scan only adds
strays, and only keys it returned are ever deleted. The whole store is read before
anything is repaired, so a connection error aborts with nothing changed. Repairs run
under the namespace's maintenance lock (writers excluded).

Safe repairs: delete dangling hash claims, orphan embeddings and embeddings of the wrong
length; claim an unclaimed record's hash; rewrite counters, the watermark and id sets.
Never touched: the claim and embeddings of a record that exists but does not parse.
Not repaired (reported): malformed records and missing embeddings — re-ingest the images.
"""

from __future__ import annotations

import logging
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field

from imgsim_lab.store import Keys, Record, Store
from imgsim_lab.store.errors import CorruptDataError
from imgsim_lab.store.schema import SHA_RE

log = logging.getLogger(__name__)


@dataclass
class Problem:
    kind: str
    detail: str
    repaired: bool = False
    fix: Callable[[], object] | None = field(default=None, repr=False, compare=False)

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


@dataclass
class Inventory:
    """What the store holds, read once: parsed records, unparsable record ids, claims, embeddings."""

    records: dict[int, Record] = field(default_factory=dict)
    unparsable: set[int] = field(default_factory=set)
    claims: dict[str, int | None] = field(default_factory=dict)
    embeddings: dict[str, list[int]] = field(default_factory=dict)
    seen_embeddings: set[tuple[str, int]] = field(default_factory=set)  # every one enumerated


def check_records(store: Store, inv: Inventory) -> list[Problem]:
    """Invariant 1: every record key holds a parsable record whose id is its key's id."""
    out = []
    for chunk in store.inventory_records():
        for image_id, fields in chunk:
            try:
                if fields is None:
                    raise CorruptDataError("unreadable")
                rec = Record.from_fields(fields)
                if rec.id != image_id:
                    raise CorruptDataError(f"id field {rec.id} differs from the key's id")
                inv.records[image_id] = rec
            except CorruptDataError as exc:
                inv.unparsable.add(image_id)
                out.append(Problem("bad_record", f"{store.keys.img(image_id)}: {exc} (kept: re-ingest it)"))
    return out


def check_claims(store: Store, inv: Inventory) -> list[Problem]:
    """Invariant 2: claims and records point at each other."""
    k = store.keys
    out = []
    for chunk in store.inventory_claims():
        for sha, val in chunk:
            try:
                inv.claims[sha] = int(val) if val is not None else None
            except ValueError:
                inv.claims[sha] = None
    for rec in inv.records.values():  # a claim the claim set does not list is still found
        if rec.sha256 not in inv.claims:
            inv.claims[rec.sha256] = store.ids_for_hashes([rec.sha256])[0]
    for sha, holder in sorted(inv.claims.items()):
        if holder is not None and holder in inv.unparsable:
            continue  # belongs to a record that exists: never removed (bad_record is reported)
        rec = inv.records.get(holder) if holder is not None else None
        if holder is None and not store.raw_get([k.sha(sha)])[0]:
            continue  # listed in the claim set only; the derived repair drops it
        if rec is None or rec.sha256 != sha:
            key = k.sha(sha)
            out.append(Problem("dangling_claim", f"{key} -> {holder} points at no record with that sha256",
                               fix=lambda key=key: store.raw_delete([key])))
    for rec in inv.records.values():
        holder = inv.claims.get(rec.sha256)
        if holder != rec.id:
            free = holder is None or (holder not in inv.records and holder not in inv.unparsable)
            fix = (lambda r=rec: store.raw_set(k.sha(r.sha256), str(r.id))) if free else None
            out.append(Problem("unclaimed_record", f"record {rec.id} ({rec.source}) is not the claim of its "
                               f"sha256 (claim: {holder})", fix=fix))
    return out


def check_embeddings(store: Store, inv: Inventory) -> list[Problem]:
    """Invariant 3: every record has each model's embedding of the right length, and back."""
    k = store.keys
    out = []
    for name, info in store.model_info().items():
        good: list[int] = []
        for chunk in store.inventory_embeddings(name):
            for image_id, nbytes in chunk:
                inv.seen_embeddings.add((name, image_id))
                key = k.emb(name, image_id)
                if image_id in inv.unparsable:
                    continue  # its record exists: keep
                if image_id not in inv.records:
                    out.append(Problem("orphan_embedding", f"{key} has no record",
                                       fix=lambda key=key: store.raw_delete([key])))
                elif nbytes != 4 * info.dim:
                    out.append(Problem("bad_embedding", f"{key}: {nbytes} bytes, expected {4 * info.dim}",
                                       fix=lambda key=key: store.raw_delete([key])))
                else:
                    good.append(image_id)
        good.sort()
        inv.embeddings[name] = good
        for image_id in sorted(set(inv.records) - set(good)):
            out.append(Problem("missing_embedding", f"record {image_id} ({inv.records[image_id].source}) "
                               f"has no {name} embedding: re-ingest it"))
    return out


def check_strays(store: Store, inv: Inventory) -> list[Problem]:
    """Invariant 4: a full scan (no MATCH) finds no record, claim or embedding the
    declared enumeration missed. Only keys the scan returned are repaired."""
    k = store.keys
    models = set(inv.embeddings)
    out = []
    emb_prefix = f"{k.ns}:emb:"
    sha_prefix = f"{k.ns}:sha:"
    for key in store.scan_keys():
        if key.startswith(k.img_prefix) or key.startswith(emb_prefix):
            try:
                image_id = Keys.id_from_key(key)
            except CorruptDataError:
                out.append(Problem("stray_key", f"{key}: not a key of the schema"))
                continue
            if key.startswith(k.img_prefix):
                if image_id not in inv.records and image_id not in inv.unparsable:
                    out.append(Problem("stray_record", f"{key}: a record beyond the id watermark "
                                       "(kept: re-ingest or delete it)"))
                continue
            model = key[len(emb_prefix) : -len(k.tag(image_id)) - 1]
            if (model, image_id) in inv.seen_embeddings or image_id in inv.unparsable:
                continue
            if model not in models:
                out.append(Problem("stray_key", f"{key}: embedding of unregistered model {model!r} (kept)"))
            elif image_id not in inv.records:
                out.append(Problem("orphan_embedding", f"{key} has no record (found by scan)",
                                   fix=lambda key=key: store.raw_delete([key])))
        elif key.startswith(sha_prefix):
            sha = key[len(sha_prefix):]
            if SHA_RE.match(sha) and sha not in inv.claims:
                holder = store.ids_for_hashes([sha])[0]
                inv.claims[sha] = holder
                if holder not in inv.records and holder not in inv.unparsable:
                    out.append(Problem("dangling_claim", f"{key} -> {holder} points at no record "
                                       "(found by scan)", fix=lambda key=key: store.raw_delete([key])))
    return out


def check_derived(store: Store, inv: Inventory) -> list[Problem]:
    """Invariant 5: counters, watermark and id sets agree with the records."""
    ids = sorted(inv.records)
    problems = store.derived_problems(ids, inv.embeddings)
    if not problems:
        return []
    claimed = sorted({r.sha256 for r in inv.records.values()}
                     | {s for s, h in inv.claims.items() if h in inv.unparsable})

    def fix() -> None:
        store.rebuild_derived(ids, inv.embeddings, claimed)

    return [Problem("derived", f"{'; '.join(problems)[:300]} (records: {len(ids)}, "
                    f"embeddings: { {m: len(v) for m, v in inv.embeddings.items()} })", fix=fix)]


def check_store(store: Store, repair: bool = False) -> CheckReport:
    """Verify every invariant; with ``repair``, fix the safe ones. Returns a report.

    Everything is read first; repairs run afterwards under :meth:`Store.maintenance`.
    A connection error raises (:class:`StoreConnectionError`) before anything changes.
    """
    report = CheckReport()
    inv = Inventory()
    guard = store.maintenance() if repair else _nothing()
    with guard:
        for step in (check_records, check_claims, check_embeddings, check_strays):
            report.problems += step(store, inv)
        report.records = len(inv.records)
        report.models = {m: len(v) for m, v in inv.embeddings.items()}
        if repair:
            for p in report.problems:
                if p.fix is not None:
                    p.fix()
                    p.repaired = True
        derived = check_derived(store, inv)
        if repair:
            for p in derived:
                p.fix()
                p.repaired = True
        report.problems += derived
    for p in report.problems:
        log.warning("check: %s: %s%s", p.kind, p.detail, " (repaired)" if p.repaired else "")
    log.info("check of %s ns=%s: %d records, %d problems (%d unrepaired)", store.url, store.namespace,
             report.records, len(report.problems), sum(not p.repaired for p in report.problems))
    return report


class _nothing:  # noqa: N801 - a tiny null context
    def __enter__(self) -> None:
        return None

    def __exit__(self, *exc: object) -> None:
        return None
