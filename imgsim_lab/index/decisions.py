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
#: Training points per IVF list we actually sample: k-means is part of every rebuild, and
#: the exact re-rank absorbs the slightly coarser centroids.
TRAIN_POINTS_PER_CENTROID = 16
#: Bytes per id stored next to each code (int64).
ID_BYTES = 8
#: Rough per-entry cost of IndexIDMap2's reverse hash map (std::unordered_map<int64, int64>).
IDMAP2_ENTRY_BYTES = 48
#: Hot-set bookkeeping per cached vector: its slot entry plus up to 2 frequency entries.
HOT_ENTRY_BYTES = 3 * 64
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
    """IVF lists: about sqrt(n) as a power of two, with >= 39 training points per list.

    Fewer lists than the usual 4·sqrt(n) keep k-means (part of every rebuild) cheap;
    the exact re-rank recovers the recall.
    """
    if n < 2 * MIN_POINTS_PER_CENTROID:
        return 1
    target = math.sqrt(n)
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


def training_size(n: int, nlist: int, minimum: int = 8192) -> int:
    """Vectors to train on: 16 per IVF list and >= ``minimum`` (for the PCA), at most ``n``."""
    return int(min(n, max(minimum, TRAIN_POINTS_PER_CENTROID * nlist)))


def code_bytes(factory: str, dim: int) -> int:
    """Bytes of one stored code (without its id) for a factory string we produce."""
    m = re.match(r"^(?:PCA(?:R)?(\d+),)?(?:OPQ\d+(?:_\d+)?,)?IVF\d+(?:_HNSW\d+)?,(\w+)$", factory)
    if not m:
        raise ValueError(f"unsupported factory {factory!r}")
    d = int(m.group(1)) if m.group(1) else dim
    codec = m.group(2)
    if codec == "SQ8":
        return d
    if codec == "SQ4":
        return (d + 1) // 2
    if codec in ("SQfp16", "SQbf16"):
        return 2 * d
    if codec == "Flat":
        return 4 * d
    pq = re.match(r"^PQ(\d+)(?:x(\d+))?$", codec)
    if pq:
        return int(pq.group(1)) * int(pq.group(2) or 8) // 8
    raise ValueError(f"unsupported codec {codec!r} in {factory!r}")


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
    return int(max(k_fetch, minimum, math.ceil(k_fetch * factor)))


def widen(k_fetch: int, available: int, growth: int = 4) -> int:
    """The next, larger candidate count when too few results survived (capped at ``available``)."""
    return int(min(max(k_fetch * growth, k_fetch + 1), max(available, 1)))


def hot_capacity(budget_bytes: int, index_bytes: int, dim: int, hot_fraction: float) -> int:
    """Full vectors the hot set may hold: its share of the budget, minus what the index overran."""
    share = int(budget_bytes * hot_fraction)
    spare = max(0, budget_bytes - index_bytes)
    per_vector = dim * 4 + 2 * ID_BYTES + HOT_ENTRY_BYTES  # vector, id, count, table entries
    return max(0, min(share, spare) // per_vector)


def needs_retrain(n_now: int, n_trained: int, growth: float) -> bool:
    """Retrain when the collection grew past ``growth`` x the size it was trained at."""
    return n_trained > 0 and n_now > growth * n_trained
