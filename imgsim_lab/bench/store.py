"""``imgsim bench store``: bulk versus one-command-per-round-trip writes and reads.

Reports wall-clock throughput and, because shared machines are loaded, CPU time per
vector (this process plus the servers' ``used_cpu_*``): ``*_cpu_us_per_vector`` and
``*_cpu_bound_mb_per_s`` (what one client core and one server core sustain) do not
depend on how busy the machine is.

``--rounds R`` runs the four phases R times in turn and reports medians (each round under
``rounds``): the naive path is bound by round-trip latency and swings most with the load.

Bulk: :meth:`Store.add_images` (one MULTI or WriteBatch per 256 records) and
:meth:`Store.iter_embeddings` (MGET / multi-get of 1,000). Naive, the way the original
demo did it: one SET per vector, then SCAN plus one GET per key. Both in one run, in a
namespace of its own (``imgsim-bench-<pid>-<random>``), flushed afterwards; a
``--namespace`` that holds anything is refused, never flushed.

``--compare-kv URL2`` repeats the measurement on a second store in the same run (e.g. a
cluster next to a single node) and adds its result as ``compare`` with the ratios
second/first as ``compare_ratios``.
"""

from __future__ import annotations

import argparse
import hashlib
import logging
import os
import time
import uuid

import numpy as np
from tqdm.auto import tqdm

from imgsim_lab.store import NewImage, Store, StoreError, open_store

NAME = "store"
HELP = "bulk vs naive write/read throughput of the store (vectors per second)"
log = logging.getLogger(__name__)
#: Throughputs compared by ``--compare-kv`` (ratio = second URL / first URL).
RATIO_FIELDS = ("bulk_write_per_s", "bulk_read_per_s", "naive_write_per_s", "naive_read_per_s",
                "bulk_write_cpu_bound_mb_per_s", "bulk_read_cpu_bound_mb_per_s")


#: The CLI adds ``--kv`` and ``--namespace`` (this module never imports the CLI).
STORE_ARGS = True


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--n", type=int, default=60000, help="vectors (default 60000)")
    parser.add_argument("--dim", type=int, default=1280, help="dimension (default 1280)")
    parser.add_argument("--naive-n", type=int, default=None,
                        help="vectors for the naive way (default: same as --n)")
    parser.add_argument("--compare-kv", metavar="URL2", action="append", default=None,
                        help="run the same measurement on another store URL too and report its "
                             "throughput relative to --kv (repeatable: e.g. a Kvrocks node, a "
                             "Kvrocks cluster and a Redis Cluster next to redis-server)")
    parser.add_argument("--read-rounds", type=int, default=3,
                        help="with --compare-kv: afterwards, every store holds the n vectors at "
                             "once and their bulk reads alternate for this many rounds, so the "
                             "cluster/single-node read ratios are measured side by side "
                             "(default 3; 0: skip)")
    parser.add_argument("--rounds", type=int, default=1,
                        help="run the bulk and naive phases this many times in turn on each store "
                             "and report the medians (and every round under 'rounds'), so each "
                             "bulk/naive ratio is of measurements taken side by side (default 1)")


def _naive_write(store: Store, vecs: np.ndarray, ns: str) -> None:
    """One SET per vector, one round trip each (through the store's raw access)."""
    for i, v in enumerate(vecs):
        store.raw_set(f"{ns}:naive:{i:012d}", v.tobytes())


def _naive_read(store: Store, ns: str, dim: int) -> int:
    """A full key scan, then one GET per key."""
    n = 0
    prefix = f"{ns}:naive:"
    for key in [k for k in store.scan_keys() if k.startswith(prefix)]:
        np.frombuffer(store.raw_get([key])[0], np.float32, dim)
        n += 1
    return n


def bench_namespace() -> str:
    """A namespace of the benchmark's own, never a user's."""
    return f"imgsim-bench-{os.getpid()}-{uuid.uuid4().hex[:6]}"


def run_store_bench(url: str | None, n: int, dim: int, naive_n: int | None = None,
                    namespace: str | None = None, rounds: int = 1) -> dict:
    """Measure bulk and naive throughput in one run; returns the JSON-able result.

    With ``rounds`` > 1 the four phases run that many times in turn (the namespace flushed
    between rounds), so each bulk/naive ratio is of two measurements taken minutes apart at
    most; every figure reported is then the median over the rounds, and ``rounds`` lists
    each round's."""
    if rounds < 1:
        raise ValueError(f"rounds must be at least 1, got {rounds}")
    ns = namespace or bench_namespace()
    naive_n = n if naive_n is None else naive_n
    vecs, items = _bench_items(n, dim)
    per_round = []
    with open_store(url, ns) as store:
        _refuse_unless_empty(store)
        for _ in range(rounds):
            store.register_model("bench", dim, "random")
            phases: dict[str, dict[str, float]] = {}
            phases["bulk_write"] = _measure(store, lambda: _bulk_write(store, items))
            phases["bulk_read"] = _measure(store, lambda: _bulk_read(store))
            got = phases["bulk_read"]["count"]
            assert got == n, f"read back {got} of {n} vectors"
            phases["naive_write"] = _measure(
                store, lambda: _naive_write(store, vecs[:naive_n], ns) or naive_n)
            phases["naive_read"] = _measure(store, lambda: _naive_read(store, ns, dim))
            got = phases["naive_read"]["count"]
            assert got == naive_n, f"naive read {got} of {naive_n}"
            backend, shown_url = store.backend, store.url
            server = store.info().get("server", backend)
            store.flush()
            per_round.append(_figures(phases, n, dim))
    result = {"backend": backend, "server": server, "url": shown_url, "n": n, "dim": dim, "naive_n": naive_n,
              **{k: float(np.median([r[k] for r in per_round])) for k in per_round[0]}}
    if rounds > 1:
        result["rounds"] = per_round
    log.info("store bench: %s", {k: round(v, 2) if isinstance(v, float) else v for k, v in result.items()
                                 if k != "rounds"})
    return result


def _figures(phases: dict[str, dict[str, float]], n: int, dim: int) -> dict[str, float]:
    """One round's throughputs, CPU per vector and bulk/naive ratios."""
    mb = n * dim * 4 / 1e6
    result: dict[str, float] = {}
    for name, ph in phases.items():
        result[f"{name}_per_s"] = ph["count"] / ph["wall_s"]
        result[f"{name}_s"] = ph["wall_s"]
        cpu = ph["client_cpu_s"] + ph.get("server_cpu_s", 0.0)
        result[f"{name}_cpu_us_per_vector"] = 1e6 * cpu / ph["count"]
        result[f"{name}_client_cpu_us_per_vector"] = 1e6 * ph["client_cpu_s"] / ph["count"]
    for name in ("bulk_write", "bulk_read"):
        result[f"{name}_mb_per_s"] = mb / result[f"{name}_s"]
        # what one core of client plus one of server could do: independent of other load
        result[f"{name}_cpu_bound_mb_per_s"] = 4 * dim / result[f"{name}_cpu_us_per_vector"]
    result["write_bulk_over_naive"] = result["bulk_write_per_s"] / result["naive_write_per_s"]
    result["read_bulk_over_naive"] = result["bulk_read_per_s"] / result["naive_read_per_s"]
    result["write_cpu_naive_over_bulk"] = (result["naive_write_cpu_us_per_vector"]
                                           / result["bulk_write_cpu_us_per_vector"])
    result["read_cpu_naive_over_bulk"] = (result["naive_read_cpu_us_per_vector"]
                                          / result["bulk_read_cpu_us_per_vector"])
    return result


def _refuse_unless_empty(store: Store) -> None:
    """The benchmark writes and flushes a namespace of its own: never one that holds anything."""
    if store.count() or store.model_info() or store.last_id():
        raise StoreError(f"namespace {store.namespace!r} of {store.url} is not empty: the benchmark "
                         "writes and flushes a namespace of its own; leave --namespace out")


def _bulk_write(store: Store, items: list[NewImage], step: int = 4096) -> int:
    with tqdm(total=len(items), desc="bulk write", unit="vector", leave=False) as bar:
        for s in range(0, len(items), step):
            batch = items[s : s + step]
            store.add_images(batch)
            bar.update(len(batch))
    return len(items)


def _bulk_read(store: Store) -> int:
    return sum(len(ids) for ids, _ in store.iter_embeddings("bench", chunk_size=8192))


def _bench_items(n: int, dim: int) -> tuple[np.ndarray, list[NewImage]]:
    rng = np.random.default_rng(0)
    vecs = rng.standard_normal((n, dim), dtype=np.float32)
    vecs /= np.linalg.norm(vecs, axis=1, keepdims=True)
    items = [NewImage(hashlib.sha256(f"bench:{i}".encode()).hexdigest(), f"bench/class{i % 10}/{i}.png",
                      32, 32, label=f"class{i % 10}", embeddings={"bench": vecs[i]}) for i in range(n)]
    return vecs, items


def kind_of(row: dict) -> tuple[str, bool]:
    """``(server, is_cluster)`` of a result row: ``("kvrocks", True)`` for a Kvrocks cluster."""
    return row["server"], row["backend"].endswith("-cluster")


def interleaved_reads(urls: list[str], n: int, dim: int, rounds: int,
                      namespace: str | None = None) -> dict:
    """Every store holds the same ``n`` vectors at once; then their bulk reads alternate,
    ``rounds`` times, in :func:`read_order`. Returns MB/s per store and round, the order of
    each round, and per server kind the cluster over single-node ratio of each round (both
    measured back to back) with its median."""
    _, items = _bench_items(n, dim)
    mb = n * dim * 4 / 1e6
    stores, rows = [], []
    try:
        for url in urls:
            store = open_store(url, namespace or bench_namespace())
            try:
                _refuse_unless_empty(store)
            except StoreError:
                store.close()  # never flushed: not ours
                raise
            stores.append(store)
            store.register_model("bench", dim, "random")
            _bulk_write(store, items)
            rows.append({"url": store.url, "backend": store.backend,
                         "server": store.info().get("server", store.backend), "read_mb_per_s": []})
        orders = read_order([kind_of(r) for r in rows], rounds)
        for order in tqdm(orders, desc="interleaved reads", leave=False):
            for i in order:
                t0 = time.perf_counter()
                got = _bulk_read(stores[i])
                assert got == n, f"read back {got} of {n} vectors from {stores[i].url}"
                rows[i]["read_mb_per_s"].append(mb / (time.perf_counter() - t0))
    finally:
        for store in stores:
            store.flush()
            store.close()
    pairs = {}
    for row in rows:
        server, cluster = kind_of(row)
        single = next((r for r in rows if kind_of(r) == (server, False)), None)
        if cluster and single is not None:
            per_round = [c / s for c, s in zip(row["read_mb_per_s"], single["read_mb_per_s"], strict=True)]
            pairs[server] = {"cluster_url": row["url"], "single_url": single["url"],
                             "per_round": per_round, "median": float(np.median(per_round))}
    return {"n": n, "rounds": rounds, "stores": rows,
            "read_order": [[rows[i]["url"] for i in o] for o in orders], "cluster_over_single_read": pairs}


def read_order(kinds: list[tuple[str, bool]], rounds: int) -> list[list[int]]:
    """Per round the order in which the stores (``(server, is_cluster)`` each) are read: each
    cluster right beside the single node of its server, the two swapping places every round,
    so a ratio never compares reads taken at different moments or always in the same order."""
    singles = {server: i for i, (server, cluster) in enumerate(kinds) if not cluster}
    units: list[list[int]] = []
    placed: set[int] = set()
    for i, (server, cluster) in enumerate(kinds):
        if i in placed:
            continue
        unit = [i]
        if not cluster:
            unit += [j for j, (s, c) in enumerate(kinds) if c and s == server]
        elif server in singles:
            continue  # read beside its single node
        placed.update(unit)
        units.append(unit)
    return [[i for u in units for i in (u if r % 2 == 0 else u[::-1])] for r in range(rounds)]


def _measure(store: Store, fn) -> dict[str, float]:
    """Wall time, this process's CPU time and the servers' CPU time (where known) of ``fn()``."""
    srv0 = store.server_cpu_seconds()
    w0, c0 = time.perf_counter(), time.process_time()
    count = fn()
    out = {"count": count, "wall_s": time.perf_counter() - w0, "client_cpu_s": time.process_time() - c0}
    srv1 = store.server_cpu_seconds()
    if srv0 is not None and srv1 is not None:
        out["server_cpu_s"] = srv1 - srv0
    return out


def ratios(result: dict, other: dict) -> dict:
    """Per-field throughput ratios other/result."""
    out = {k: other[k] / result[k] for k in RATIO_FIELDS if result.get(k)}
    log.info("store bench: %s over %s: %s", other["url"], result["url"],
             {k: round(v, 2) for k, v in out.items()})
    return out


def compare(result: dict, others: list[dict]) -> dict:
    """``result`` with the first other store as ``compare`` (+ ``compare_ratios``) and all of
    them, each with its ratios, in ``compares``."""
    if not others:
        return result
    rows = [{**o, "ratios": ratios(result, o)} for o in others]
    return {**result, "compare": others[0], "compare_ratios": rows[0]["ratios"], "compares": rows}


def run(args: argparse.Namespace) -> dict:
    result = run_store_bench(args.kv, args.n, args.dim, args.naive_n, args.namespace, args.rounds)
    others = [run_store_bench(url, args.n, args.dim, args.naive_n, args.namespace, args.rounds)
              for url in args.compare_kv or ()]
    out = compare(result, others)
    if others and args.read_rounds > 0:
        out["interleaved_read"] = interleaved_reads([args.kv, *args.compare_kv], args.n, args.dim,
                                                    args.read_rounds, args.namespace)
    return out
