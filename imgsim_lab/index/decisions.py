"""Small pure decisions behind the index (autofaiss style): mode, factory, sizes, depths.

Every function is deterministic and side-effect free so it can be unit-tested on
numbers alone; :mod:`imgsim_lab.index.similarity` only composes them.
"""

from __future__ import annotations

import math
import re

#: Default memory budget when none is given: 2 GiB.
DEFAULT_BUDGET_BYTES = 2 << 30
#: faiss' k-means warns below this many training points per centroid (used to size nlist).
MIN_POINTS_PER_CENTROID = 39
#: :func:`nlist_for` stops growing with sqrt(n) here, until sqrt(n) / 4 reaches it (n ~ 1M).
NLIST_FLAT_FROM = 256
#: Training points per IVF list we actually sample: k-means is part of every rebuild, and
#: the exact re-rank absorbs the slightly coarser centroids.
TRAIN_POINTS_PER_CENTROID = 16
#: Bytes per id stored next to each code (int64).
ID_BYTES = 8
#: Rough per-entry cost of IndexIDMap2's reverse hash map (std::unordered_map<int64, int64>).
IDMAP2_ENTRY_BYTES = 48
#: Codecs of a flat compressed index (every code scanned, ids in an IDMap): RaBitQ (one bit per
#: dimension, optionally fast-scan) and fast-scan PQ. Neither needs k-means over the collection.
RABITQ_RE = r"RaBitQ(?:fs(?:_\d+)?)?"
FLAT_CODEC_RE = RABITQ_RE + r"|PQ\d+x4fs"
#: Training sample of a flat scan of codes: RaBitQ's centroid and fast-scan PQ's 16 centroids
#: per sub-quantizer (<= PQ_POINTS_PER_CENTROID x 16 points each) need no more.
FLAT_TRAIN_POINTS = 2048
#: Bytes of RaBitQ's per-vector factors (two float32) next to its sign bits.
RABITQ_FACTOR_BYTES = 8
#: Collections up to this size get flat RaBitQ among the tune's candidates (a flat scan grows
#: with n; the tune's timing decides whether it is fast enough).
FLAT_SCAN_MAX_N = 2_000_000
#: PCA output dimensions we consider for budget mode, largest first.
PCA_DIMS = (384, 256, 192, 128, 96, 64, 48, 32)
#: Default upper bound of the PCA output (more dimensions cost rebuild speed and latency).
MAX_PCA_DIM = 128


def raw_vector_bytes(n: int, dim: int) -> int:
    """Bytes of ``n`` float32 vectors of ``dim``."""
    return int(n) * int(dim) * 4


def resolve_budget(memory_budget: int | float | None, n: int, dim: int,
                   default: int = DEFAULT_BUDGET_BYTES) -> int:
    """The budget in bytes: an int is bytes, a float in (0, 1] a fraction of the raw vectors.

    ``None`` means ``default`` bytes.
    """
    if memory_budget is None:
        return int(default)
    if isinstance(memory_budget, float) and memory_budget <= 1.0:
        if memory_budget <= 0.0:
            raise ValueError(f"a fractional memory_budget must be in (0, 1], got {memory_budget}")
        return max(1, int(memory_budget * raw_vector_bytes(max(n, 1), dim)))
    if int(memory_budget) <= 0:
        raise ValueError(f"memory_budget must be positive, got {memory_budget}")
    return int(memory_budget)


def exact_index_bytes(n: int, dim: int) -> int:
    """Memory of the exact index (flat float32 + id map + reverse map)."""
    return raw_vector_bytes(n, dim) + int(n) * (ID_BYTES + IDMAP2_ENTRY_BYTES)


def choose_mode(n: int, dim: int, budget_bytes: int, requested: str = "auto") -> str:
    """``exact`` when the exact index fits the budget (or is requested), else ``budget``."""
    if requested not in ("auto", "exact", "budget"):
        raise ValueError(f"mode must be auto, exact or budget, got {requested!r}")
    if requested != "auto":
        return requested
    return "exact" if exact_index_bytes(n, dim) <= budget_bytes else "budget"


def nlist_for(n: int) -> int:
    """IVF lists: about sqrt(n) up to :data:`NLIST_FLAT_FROM` lists, then flat until sqrt(n) / 4
    overtakes it (~1M vectors), as a power of two with >= 39 training points per list.

    Fewer lists than the usual 4·sqrt(n) keep k-means and each vector's assignment (nlist x d'
    flops, part of every rebuild) cheap; the exact re-rank recovers the recall. On 1M
    synthetic vectors ``PCA128,IVF256,SQ8`` rebuilt 1.6x faster than ``IVF1024`` (session 28,
    docs/index.md "Rebuild speed").
    """
    if n < 2 * MIN_POINTS_PER_CENTROID:
        return 1
    target = max(min(math.sqrt(n), NLIST_FLAT_FROM), math.sqrt(n) / 4)
    nlist = 2 ** round(math.log2(target))
    while nlist > 1 and nlist * MIN_POINTS_PER_CENTROID > n:
        nlist //= 2
    return int(min(max(nlist, 1), 65536))


def nprobe_for(nlist: int, target_fraction: float = 0.05, minimum: int = 32) -> int:
    """Lists to visit: 5 % of them, at least ``minimum``, at most all.

    Real CIFAR-10 embeddings are less clustered than the synthetic set: at 5,000 lite0
    vectors (64 lists) recall@10 was 0.980 at nprobe 16, 0.993 at 24, 0.997 at 32.
    """
    return int(min(nlist, max(minimum, math.ceil(nlist * target_fraction))))


#: Training sample cap: k-means costs points x lists x dim per iteration, and it is part of
#: every rebuild; with an exact re-rank more points buy no measurable recall.
MAX_TRAIN_POINTS = 20_000
#: Vectors the PCA covariance is computed on (a 1280 x 1280 covariance needs a few thousand).
PCA_TRAIN_POINTS = 8192
#: PQ sub-quantizers train on at most this many points per centroid (faiss' default is 256):
#: 4-bit fast-scan PQ then trains each of its sub-quantizers on 1024 points, 8-bit on 16384.
PQ_POINTS_PER_CENTROID = 64
#: k-means iterations of the PQ sub-quantizers (faiss' default is 25).
PQ_KMEANS_ITER = 10


def training_size(n: int, nlist: int, minimum: int = PCA_TRAIN_POINTS,
                  maximum: int = MAX_TRAIN_POINTS) -> int:
    """Vectors to sample for training: 16 per IVF list but at most ``maximum``
    (:data:`MAX_TRAIN_POINTS`), at least ``minimum`` (for the PCA; an explicit larger minimum
    wins), and never more than ``n``."""
    return int(min(n, max(minimum, min(TRAIN_POINTS_PER_CENTROID * nlist, maximum))))


def sample_size(factory: str | None, n: int, nlist: int, minimum: int | None = None) -> int:
    """Vectors a build of ``factory`` samples to train on, never more than ``n``.

    With a PCA or an OPQ rotation (or an undecided factory: the default has a PCA), or an explicit
    ``minimum``: :func:`training_size` (at least ``minimum``, default :data:`PCA_TRAIN_POINTS`).
    Otherwise only what the codes need: 16 per IVF list, the PQ sub-quantizers' points, at least
    :data:`FLAT_TRAIN_POINTS` (a flat RaBitQ learns a centroid). On the 50k real vectors
    ``IVF256,PQ320x4fs`` trained in 0.95-1.01 s on 4,096 instead of 1.52 s on 8,192, at the same
    recall@10 (0.9940, 300 queries).
    """
    if factory is None or minimum is not None:
        return training_size(n, nlist, PCA_TRAIN_POINTS if minimum is None else minimum)
    p = factory_parts(factory)
    if p["pca"] or p["opq"]:
        return training_size(n, nlist)
    need = max(FLAT_TRAIN_POINTS, TRAIN_POINTS_PER_CENTROID * (p["nlist"] or 0),
               pq_training_points(p["codec"]) or 0)
    return int(min(n, need, MAX_TRAIN_POINTS))


def pca_training_size(n_sample: int) -> int:
    """Rows of the training sample the PCA is computed on (:data:`PCA_TRAIN_POINTS` at most)."""
    return int(min(n_sample, PCA_TRAIN_POINTS))


def pq_training_points(codec: str) -> int | None:
    """Points each PQ sub-quantizer of ``codec`` trains on at most (``None``: not a PQ codec):
    :data:`PQ_POINTS_PER_CENTROID` x its 2^nbits centroids."""
    pq = re.match(r"^PQ\d+(?:x(\d+))?(?:fs)?$", codec)
    if not pq:
        return None
    return PQ_POINTS_PER_CENTROID * (1 << int(pq.group(1) or 8))


def code_bytes(factory: str, dim: int) -> int:
    """Bytes of one stored code (without its id) for a factory string we produce."""
    m = re.match(r"^(?:PCA(?:R)?(\d+),)?(?:OPQ\d+(?:_\d+)?,)?IVF\d+(?:_HNSW\d+)?,(\w+)$", factory)
    if not m:
        raise ValueError(f"unsupported factory {factory!r}")
    d = int(m.group(1)) if m.group(1) else dim
    try:
        return _codec_bytes(m.group(2), d)
    except ValueError:
        raise ValueError(f"unsupported codec {m.group(2)!r} in {factory!r}") from None


def estimate_index_bytes(factory: str, n: int, dim: int) -> int:
    """Memory of an IVF index: codes + ids + centroids + transform matrix."""
    m = re.search(r"IVF(\d+)", factory)
    nlist = int(m.group(1)) if m else 1
    p = re.match(r"^PCA(?:R)?(\d+),", factory)
    d = int(p.group(1)) if p else dim
    transform = (dim * d + dim) * 4 if p else 0
    return int(n) * (code_bytes(factory, dim) + ID_BYTES) + nlist * d * 4 + transform + 2 * d * 4


def budget_factory(n: int, dim: int, index_budget: int, nlist: int | None = None,
                   max_pca_dim: int = MAX_PCA_DIM) -> str:
    """The compressed index for budget mode: PCA to d' then IVF with 8-bit scalar codes.

    d' is the largest of :data:`PCA_DIMS` (at most ``max_pca_dim`` and ``dim``) whose
    index fits ``index_budget``; if none fits, product quantization after PCA.
    Small ``dim`` (<= ``max_pca_dim``) skips the PCA.
    """
    nlist = nlist or nlist_for(n)
    if dim <= max_pca_dim:
        f = f"IVF{nlist},SQ8"
        if estimate_index_bytes(f, n, dim) <= index_budget:
            return f
    for d in PCA_DIMS:
        if d > min(max_pca_dim, dim) or d >= dim:
            continue
        f = f"PCA{d},IVF{nlist},SQ8"
        if estimate_index_bytes(f, n, dim) <= index_budget:
            return f
    d = min(64, dim)
    for m in (32, 16, 8, 4):
        if d % m:
            continue
        f = f"PCA{d},IVF{nlist},PQ{m}" if d < dim else f"IVF{nlist},PQ{m}"
        if estimate_index_bytes(f, n, dim) <= index_budget:
            return f
    return f"PCA{d},IVF{nlist},PQ4" if d < dim else f"IVF{nlist},PQ4"


def k_plus(k: int, margin: int, n_excluded: int = 0) -> int:
    """How many results to fetch so that ``k`` survive filtering: k + margin + known exclusions."""
    return int(k) + max(0, int(margin)) + max(0, int(n_excluded))


def rerank_depth(k_fetch: int, factor: float, minimum: int = 64) -> int:
    """Candidates taken from the compressed index for exact re-ranking."""
    return int(max(k_fetch, minimum, math.ceil(k_fetch * factor - 1e-9)))  # no float ceil creep


def widen(k_fetch: int, available: int, growth: int = 4) -> int:
    """The next, larger candidate count when too few results survived (capped at ``available``)."""
    return int(min(max(k_fetch * growth, k_fetch + 1), max(available, 1)))


def needs_retrain(n_now: int, n_trained: int, growth: float) -> bool:
    """Retrain when the collection grew past ``growth`` x the size it was trained at."""
    return n_trained > 0 and n_now > growth * n_trained


# ------------------------------------------------------------------ tuning (autofaiss style)
#: Collections above this many vectors get a quick tune of nprobe and re-rank depth after
#: a default build (when no tuned setting is stored).
AUTO_TUNE_MIN_N = 20_000
#: Re-rank depths (candidates read from the store for k=10) and nprobe values tried by a tune.
TUNE_DEPTHS = (50, 75, 100, 150, 200, 300, 400, 600, 800)
TUNE_NPROBES = (8, 16, 24, 32, 48, 64, 96, 128, 192, 256)
#: HNSW efSearch values tried for HNSW graphs over codes.
TUNE_EFS = (32, 64, 128, 256)


def factory_parts(factory: str) -> dict:
    """The pieces of a factory string we produce, as a dict.

    ``pca`` (output dim or None), ``opq`` (``OPQm_d`` or None), ``nlist`` (None for a
    graph), ``coarse_hnsw`` (M of an HNSW coarse quantizer or None), ``hnsw`` (M of an
    HNSW graph over codes or None) and ``codec`` (``SQ8``, ``PQ64``, ``PQ320x4fs``, ...).
    """
    m = re.match(r"^(?:PCA(?:R)?(\d+),)?(?:(OPQ\d+(?:_\d+)?),)?"
                 r"(?:IVF(\d+)(?:_HNSW(\d+))?,(\w+)|HNSW(\d+)_(\w+)|(" + FLAT_CODEC_RE + r"))$", factory)
    if not m:
        raise ValueError(f"unsupported factory {factory!r}")
    pca, opq, nlist, chnsw, codec_ivf, hnsw, codec_hnsw, codec_flat = m.groups()
    return {"pca": int(pca) if pca else None, "opq": opq, "nlist": int(nlist) if nlist else None,
            "coarse_hnsw": int(chnsw) if chnsw else None, "hnsw": int(hnsw) if hnsw else None,
            "codec": codec_ivf or codec_hnsw or codec_flat, "flat": codec_flat is not None}


def is_flat(factory: str) -> bool:
    """Whether ``factory`` scans every code (no IVF lists, no graph: nothing to probe)."""
    return factory_parts(factory)["flat"]


def _codec_bytes(codec: str, d: int) -> int:
    if codec == "SQ8":
        return d
    if codec == "SQ4":
        return (d + 1) // 2
    if codec in ("SQfp16", "SQbf16"):
        return 2 * d
    if codec == "Flat":
        return 4 * d
    pq = re.match(r"^PQ(\d+)(?:x(\d+))?(fs)?$", codec)
    if pq:
        return -(-int(pq.group(1)) * int(pq.group(2) or 8) // 8)
    if re.match(r"^" + RABITQ_RE + r"$", codec):  # one sign bit per dimension + 2 float32 factors
        return (d + 7) // 8 + RABITQ_FACTOR_BYTES
    raise ValueError(f"unsupported codec {codec!r}")


def factory_code_bytes(factory: str, dim: int) -> int:
    """Bytes of one code (without id or graph links) for any factory :func:`factory_parts` reads."""
    p = factory_parts(factory)
    d = p["pca"] or dim
    if p["opq"]:
        om = re.match(r"OPQ\d+(?:_(\d+))?", p["opq"])
        d = int(om.group(1)) if om.group(1) else d
    return _codec_bytes(p["codec"], d)


def factory_bytes(factory: str, n: int, dim: int) -> int:
    """Memory of an index built from ``factory`` over ``n`` vectors (codes, ids, links, tables).

    Graph links of an HNSW over codes: 2·M int32 neighbours on level 0 plus ~M/(M-1)·M/M on
    the upper levels, rounded to 2·M·4·1.05 bytes; its ids go through an IDMap (8 bytes).
    """
    p = factory_parts(factory)
    d_in = p["pca"] or dim
    transform = (dim * d_in + dim) * 4 if p["pca"] else 0
    d_codes = d_in
    if p["opq"]:
        om = re.match(r"OPQ\d+(?:_(\d+))?", p["opq"])
        d_codes = int(om.group(1)) if om.group(1) else d_in
        transform += d_in * d_codes * 4
    per = factory_code_bytes(factory, dim) + ID_BYTES
    fixed = transform + 2 * d_codes * 4
    if p["hnsw"]:
        per += int(2 * p["hnsw"] * 4 * 1.05)
    elif p["flat"]:
        fixed += d_codes * 4  # RaBitQ's centroid (PQ's tables are added below)
    else:
        fixed += p["nlist"] * d_codes * 4
        if p["coarse_hnsw"]:
            fixed += int(p["nlist"] * 2 * p["coarse_hnsw"] * 4 * 1.05)
    if re.match(r"^PQ\d+", p["codec"]):
        m = int(re.match(r"^PQ(\d+)", p["codec"]).group(1))
        nbits = int((re.match(r"^PQ\d+x(\d+)", p["codec"]) or re.match(r"()", "")).group(1) or 8)
        fixed += m * (1 << nbits) * (d_codes // max(m, 1)) * 4
    return int(n) * per + fixed


def supports_removal(factory: str) -> bool:
    """Whether faiss can remove ids from this index (HNSW graphs cannot: deletes need a rebuild)."""
    return factory_parts(factory)["hnsw"] is None


def candidate_factories(n: int, dim: int, index_budget: int, removable_only: bool = False,
                        quick: bool = False) -> list[str]:
    """The compressed indexes a tune measures, each fitting ``index_budget`` bytes.

    Levers: the PCA output (or none), the number of IVF lists (sqrt(n) and 4·sqrt(n)),
    an HNSW coarse quantizer for the larger list counts, SQ8 against OPQ+PQ, fast-scan
    PQ on the raw vectors (at sqrt(n), 2·sqrt(n) and 4·sqrt(n) lists), a flat RaBitQ scan (up
    to :data:`FLAT_SCAN_MAX_N` vectors) and HNSW graphs over
    SQ8 codes (no removal: only when ``removable_only`` is false). ``quick`` keeps the
    PCA + IVF + SQ8 family only.
    """
    base = nlist_for(n)
    nlists = sorted({base, min(base * 4, max(base, n // MIN_POINTS_PER_CENTROID))})
    pcas = [d for d in (128, 192, 256, 384) if d < dim] or [dim]
    out: list[str] = []
    for d in pcas:
        for nl in nlists:
            out.append(f"PCA{d},IVF{nl},SQ8" if d < dim else f"IVF{nl},SQ8")
    if dim <= 512:
        out += [f"IVF{nl},SQ8" for nl in nlists]
    if not quick:
        big = nlists[-1]
        d = 256 if dim > 256 else dim
        pre = f"PCA{d}," if d < dim else ""
        out.append(f"{pre}IVF{big}_HNSW32,SQ8")
        for m in (64, 128):
            if m <= d and d % m == 0:
                out.append(f"OPQ{m}_{d},IVF{base},PQ{m}")
        if dim % 4 == 0:  # fast-scan PQ at every list count: on real 50-60k collections the
            # shorter scans of more lists did not pay (IVF256/512 searched as fast as IVF1024 or
            # faster and built 3-5x faster; docs/index.md)
            for nl in sorted({*nlists, min(2 * base, big)}):
                out.append(f"IVF{nl},PQ{dim // 4}x4fs")
        if n <= FLAT_SCAN_MAX_N:  # no training and an encode of O(dim) per vector: the fastest
            # rebuild; one bit per dimension, so the re-rank depth carries the recall
            out += ["RaBitQ", "RaBitQfs_64"]  # plain: numpy encodes it (builders.fill); fast-scan
            # searches ~2x faster
        if not removable_only:
            for dd, m in ((128, 32), (256, 16)):
                if dd < dim:
                    out.append(f"PCA{dd},HNSW{m}_SQ8")
    seen: set[str] = set()
    fits = []
    for f in out:
        if f not in seen and factory_bytes(f, n, dim) <= index_budget:
            seen.add(f)
            fits.append(f)
    return fits


def candidate_probes(factory: str) -> list[int]:
    """nprobe (IVF) or efSearch (HNSW over codes) values a tune tries for ``factory``."""
    p = factory_parts(factory)
    if p["hnsw"]:
        return list(TUNE_EFS)
    if p["flat"]:
        return [1]  # every code is scanned: the re-rank depth is the only lever
    return [x for x in TUNE_NPROBES if x <= p["nlist"]] or [p["nlist"]]


def rerank_for(depth: int, k: int = 10, margin: int = 10, n_excluded: int = 1) -> tuple[int, float]:
    """``(rerank_min, rerank_factor)`` that give ``depth`` candidates for a k-query, scaling with k."""
    kp = k_plus(k, margin, n_excluded)
    return int(depth), max(1.0, float(depth) / kp)


def pick_fastest(rows: list[dict], target_recall: float, key: str = "recall_at_10") -> dict | None:
    """The fastest row (``p50_ms``) whose ``key`` meets ``target_recall``; else the most accurate.

    Rows without a ``p50_ms`` are ignored. The returned row carries ``meets_target``.
    """
    timed = [r for r in rows if r.get("p50_ms") is not None]
    if not timed:
        return None
    ok = [r for r in timed if r[key] >= target_recall]
    if ok:
        best = min(ok, key=lambda r: (r["p50_ms"], -r[key]))
        return {**best, "meets_target": True}
    best = max(timed, key=lambda r: (r[key], -r["p50_ms"]))
    return {**best, "meets_target": False}


#: A setting within this share of the fastest one's p50 counts as "as fast" when build time
#: decides between them (timings on a shared machine jitter by about this much). Used only
#: when the exact p50 is unknown: with it, :data:`FAST_ENOUGH_OF_EXACT` decides.
LATENCY_TOLERANCE = 0.25
#: The issue's latency target for budget search: p50 at most this fraction of the exact flat p50.
P50_TARGET_OF_EXACT = 0.2
#: A setting counts as fast enough for the build-time preference only when its tuned p50 is at
#: most this fraction of the exact p50: a 25 % safety margin below :data:`P50_TARGET_OF_EXACT`,
#: because the benchmark of record times it again minutes later on a shared machine (CIFAR-10's
#: choice: 0.20x in its tunes, 0.197x and 0.205x in two benchmarks). None that fast: the lowest
#: p50 over exact wins.
FAST_ENOUGH_OF_EXACT = 0.15


def p50_over_exact(row: dict, exact_p50_ms: float | None = None) -> float | None:
    """A row's p50 over the exact flat p50: the row's own interleaved ``exact_p50_ms`` when it
    has one (same minute, same load), else ``exact_p50_ms``; ``None`` when neither is known."""
    exact = row.get("exact_p50_ms") or exact_p50_ms
    if row.get("p50_ms") is None or not exact:
        return None
    return float(row["p50_ms"]) / float(exact)


def pick_setting(rows: list[dict], target_recall: float, exact_p50_ms: float | None = None,
                 tolerance: float = LATENCY_TOLERANCE, fast_enough: float = FAST_ENOUGH_OF_EXACT,
                 key: str = "recall_at_10") -> dict | None:
    """The setting a tune stores, among timed rows meeting ``target_recall``.

    With an exact p50 (``exact_p50_ms`` or the rows' own, see :func:`p50_over_exact`): the rows
    at most ``fast_enough`` x exact are safely fast, and the one that builds fastest
    (``build_s``; then p50) wins, since a rebuild is part of keeping an index; when none is,
    the row with the lowest p50 over exact wins (latency first: the target is at stake).
    Without one: the rows within ``tolerance`` of the fastest p50 count as equally fast and
    build time decides. No row meets the target: the most accurate (as :func:`pick_fastest`).
    The returned row carries ``meets_target``.
    """
    fastest = pick_fastest(rows, target_recall, key)
    if fastest is None or not fastest["meets_target"]:
        return fastest
    ok = [r for r in rows if r.get("p50_ms") is not None and r[key] >= target_recall]

    def by_build(r: dict) -> tuple[float, float, float]:
        return (math.inf if r.get("build_s") is None else r["build_s"], r["p50_ms"], -r[key])

    ratios = [p50_over_exact(r, exact_p50_ms) for r in ok]
    if all(x is not None for x in ratios):
        safe = [r for r, x in zip(ok, ratios, strict=True) if x <= fast_enough]
        if safe:
            return {**min(safe, key=by_build), "meets_target": True}
        best = min(zip(ok, ratios, strict=True), key=lambda rx: (rx[1], rx[0]["p50_ms"], -rx[0][key]))[0]
        return {**best, "meets_target": True}
    limit = fastest["p50_ms"] * (1 + tolerance)
    near = [r for r in ok if r["p50_ms"] <= limit]
    return {**min(near, key=by_build), "meets_target": True}


def frontier(recalls: dict[tuple[int, int], float], target_recall: float) -> list[tuple[int, int]]:
    """For each probe value, the smallest re-rank depth meeting ``target_recall`` (the settings
    worth timing: latency grows with both); probes whose deepest depth misses the target are
    kept at that deepest depth only if no probe meets it at all.

    ``recalls`` maps ``(probe, depth)`` to recall@10.
    """
    probes = sorted({p for p, _ in recalls})
    out = []
    for p in probes:
        depths = sorted(d for q, d in recalls if q == p)
        ok = [d for d in depths if recalls[(p, d)] >= target_recall]
        if ok:
            out.append((p, ok[0]))
    if out:
        # a larger probe only pays if it allows a smaller depth
        pruned, best_depth = [], None
        for p, d in out:
            if best_depth is None or d < best_depth:
                pruned.append((p, d))
                best_depth = d
        return pruned
    best = max(recalls, key=lambda pd: (recalls[pd], -pd[0], -pd[1]))
    return [best]


def should_auto_tune(n: int, mode: str, has_setting: bool, threshold: int = AUTO_TUNE_MIN_N) -> bool:
    """A default budget build tunes itself once its collection is large enough."""
    return mode == "budget" and not has_setting and n > threshold


def setting_fits(factory: str, n: int, dim: int, index_budget: int, slack: float = 1.1) -> bool:
    """A stored (tuned) factory is used only while it fits the budget (with 10 % growth slack)."""
    try:
        return factory_bytes(factory, n, dim) <= index_budget * slack
    except ValueError:
        return False


def with_margin(target_recall: float, queries: int, k: int = 10, z: float = 1.0) -> float:
    """The recall a tune requires on its held-out queries so the target holds on fresh ones:
    ``target + z`` standard errors of a recall@k measured over ``queries`` queries (capped at 1)."""
    t = min(max(float(target_recall), 0.0), 1.0)
    se = math.sqrt(t * (1 - t) / max(1, k * int(queries)))
    return min(1.0, t + z * se)
