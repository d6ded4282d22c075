"""Building faiss indexes from the store: exact (flat) or compressed (PCA + IVF + SQ8, ...).

Rebuilds stream the store in large chunks on a reader thread while faiss (which
releases the GIL) encodes the previous chunk, so reading and encoding overlap. A new flat
RaBitQ index is filled with codes computed by numpy (:func:`rabitq_codes`, cache-blocked: about
10x faster than faiss' per-vector encoder here; :func:`fill`).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator

import faiss
import numpy as np
from tqdm.auto import tqdm

from imgsim_lab.index import decisions
from imgsim_lab.store import Store
from imgsim_lab.threads import blas_threads

log = logging.getLogger(__name__)

METRIC = faiss.METRIC_INNER_PRODUCT
#: Consecutive ids per run when sampling training vectors.
SAMPLE_BLOCK = 64
#: Rows per cache block in :func:`rabitq_codes` (64 x 1280 float32 = 320 KB: inside L2).
RABITQ_BLOCK = 64


def new_exact(dim: int) -> faiss.Index:
    """An empty exact index: inner product over float32, store ids via IndexIDMap2."""
    return faiss.IndexIDMap2(faiss.IndexFlatIP(dim))


def new_budget(dim: int, factory: str, sample: np.ndarray, kmeans_iter: int = 10) -> faiss.Index:
    """A trained compressed index for ``factory`` from ``sample``.

    ``factory`` is any string :func:`decisions.factory_parts` reads: ``[PCAd,][OPQm_d,]IVFn[_HNSWm],codec``,
    ``[PCAd,]HNSWm_codec`` (a graph over codes) or ``[PCAd,]codec`` (a flat scan of RaBitQ or
    fast-scan PQ codes); the last two are wrapped in an IDMap for store ids.
    A leading PCA is computed with numpy (:func:`train_pca`), the rest by faiss.
    """
    d, rest = _split_pca(dim, factory)
    if d != dim:
        pca = train_pca(sample[: decisions.pca_training_size(len(sample))], d)
        inner = _inner(d, rest)
        _set_iter(inner, kmeans_iter)
        inner.train(pca.apply(sample))
        index = faiss.IndexPreTransform(pca, inner)
        index.is_trained = True
        # the Python objects must outlive the C++ references
        index.referenced_objects = [pca, inner]
        return index
    index = _inner(dim, factory)
    _set_iter(index, kmeans_iter)
    index.train(sample)
    return index


def _split_pca(dim: int, factory: str) -> tuple[int, str]:
    """``(dimension after the leading PCA, the rest of the factory)``; ``(dim, factory)`` without one."""
    first, _, rest = factory.partition(",")
    return (int(first[3:]), rest) if first.startswith("PCA") else (dim, factory)


#: OPQ rotation training: iterations and points (faiss' 50 x 256k take minutes on 1280-d).
OPQ_NITER, OPQ_TRAIN_POINTS = 8, 16384


def _inner(d: int, factory: str) -> faiss.Index:
    if factory.startswith("HNSW"):  # ids through an IDMap
        return faiss.index_factory(d, "IDMap," + factory, METRIC)
    flat = decisions.is_flat(factory)
    index = faiss.index_factory(d, ("IDMap," if flat else "") + factory, METRIC)
    # the codes' owner: the IVF, or the flat index inside the IDMap
    ivf = faiss.downcast_index(index.index) if flat else faiss.try_extract_index_ivf(index)
    if isinstance(ivf, faiss.IndexIVFPQ):
        # polysemous training (codes ordered for Hamming filtering, by simulated annealing) took
        # 42 s for 4 sub-quantizers here and is useless under an exact re-rank
        ivf.do_polysemous_training = False
    pq = getattr(faiss.downcast_index(ivf), "pq", None) if ivf is not None else None
    cap = decisions.pq_training_points(decisions.factory_parts(factory)["codec"])
    if pq is not None and cap:  # each sub-quantizer trains on <= cap points, for fewer iterations
        pq.cp.max_points_per_centroid = max(1, cap // pq.ksub)
        pq.cp.niter = decisions.PQ_KMEANS_ITER
    if isinstance(index, faiss.IndexPreTransform):
        for i in range(index.chain.size()):
            vt = faiss.downcast_VectorTransform(index.chain.at(i))
            if isinstance(vt, faiss.OPQMatrix):
                vt.niter, vt.max_train_points = OPQ_NITER, OPQ_TRAIN_POINTS
    return index


def buildable(dim: int, factory: str) -> bool:
    """Whether this faiss can make ``factory`` (an untrained index; flat RaBitQ needs faiss 1.11+,
    its fast-scan variant a later one). Logs the reason when it cannot."""
    try:
        _inner(*_split_pca(dim, factory))
    except (RuntimeError, ValueError, AttributeError) as e:
        log.info("faiss %s cannot build %s (%s): not a candidate", faiss.__version__, factory,
                 str(e).splitlines()[0][:120])
        return False
    return True


def search_params(index: faiss.Index, probe: int | None) -> faiss.SearchParameters | None:
    """Search parameters setting ``probe`` (nprobe of an IVF, efSearch of a graph) through
    every wrapper (pre-transforms, IDMap) of ``index``; ``None`` when nothing takes it."""
    if probe is None:
        return None
    if isinstance(index, faiss.IndexPreTransform):
        inner = search_params(faiss.downcast_index(index.index), probe)
        return None if inner is None else faiss.SearchParametersPreTransform(index_params=inner)
    if isinstance(index, faiss.IndexIDMap | faiss.IndexIDMap2):
        return search_params(faiss.downcast_index(index.index), probe)
    if faiss.try_extract_index_ivf(index) is not None:
        return faiss.SearchParametersIVF(nprobe=int(probe))
    if isinstance(index, faiss.IndexHNSW):
        return faiss.SearchParametersHNSW(efSearch=int(probe))
    return None


def graph_of(index: faiss.Index) -> faiss.IndexHNSW | None:
    """The HNSW graph inside a (pre-transformed, id-mapped) index, or ``None``."""
    while True:
        if isinstance(index, faiss.IndexHNSW):
            return index
        if isinstance(index, faiss.IndexPreTransform | faiss.IndexIDMap | faiss.IndexIDMap2):
            index = faiss.downcast_index(index.index)
            continue
        return None


def train_pca(sample: np.ndarray, d_out: int) -> faiss.PCAMatrix:
    """A faiss PCAMatrix computed with numpy (float32 covariance + eigh: ~5x faster than faiss')."""
    x = np.asarray(sample, np.float32)
    mean = x.mean(0)
    xc = x - mean
    with blas_threads(max(1, faiss.omp_get_max_threads())):
        cov = (xc.T @ xc) / np.float32(max(len(x) - 1, 1))
        evals, evecs = np.linalg.eigh(cov)
    order = np.argsort(evals)[::-1][:d_out]
    pca = faiss.PCAMatrix(x.shape[1], d_out, 0, False)
    faiss.copy_array_to_vector(mean.astype(np.float32), pca.mean)
    faiss.copy_array_to_vector(evals[order].astype(np.float32), pca.eigenvalues)
    faiss.copy_array_to_vector(np.ascontiguousarray(evecs[:, order].T, np.float32).ravel(), pca.PCAMat)
    pca.prepare_Ab()
    pca.is_trained = True
    return pca


def _set_iter(index: faiss.Index, niter: int) -> None:
    ivf = faiss.try_extract_index_ivf(index)
    if ivf is not None:
        ivf.cp.niter = niter
        ivf.cp.min_points_per_centroid = min(decisions.TRAIN_POINTS_PER_CENTROID, 39)


def ivf_of(index: faiss.Index) -> faiss.IndexIVF | None:
    """The IVF inside a (pre-transformed) index, or ``None`` for flat ones."""
    return faiss.try_extract_index_ivf(index)


def index_ids(index: faiss.Index) -> np.ndarray:
    """Every id held by an exact (IDMap), IDMap-wrapped (flat codes, graph) or IVF index, sorted."""
    if isinstance(index, faiss.IndexPreTransform):
        return index_ids(faiss.downcast_index(index.index))
    if isinstance(index, faiss.IndexIDMap2 | faiss.IndexIDMap):
        return np.sort(faiss.vector_to_array(index.id_map).astype(np.int64))
    ivf = ivf_of(index)
    if ivf is None:
        raise TypeError(f"unsupported index type {type(index).__name__}")
    inv = ivf.invlists
    parts = []
    for lst in range(ivf.nlist):
        size = inv.list_size(lst)
        if size:
            parts.append(faiss.rev_swig_ptr(inv.get_ids(lst), size).copy())
    return np.sort(np.concatenate(parts)) if parts else np.empty(0, np.int64)


def index_bytes(index: faiss.Index, mode: str, factory: str, n: int, dim: int) -> int:
    """Memory held by the faiss index (codes, ids, quantizer, transform)."""
    if mode == "exact":
        return decisions.exact_index_bytes(n, dim)
    return decisions.factory_bytes(factory, n, dim)


def sample_vectors(store: Store, model: str, size: int, watermark: int, count: int,
                   seed: int = 0, block: int = SAMPLE_BLOCK) -> np.ndarray:
    """About ``size`` vectors: runs of ``block`` consecutive ids from random starting points.

    Short sequential runs read several times faster than single random ids and still
    spread over the whole id range. A collection of <= ``size`` vectors is read whole.
    """
    dim = store.model_dim(model)
    if count <= size:
        parts = [v for _, v in store.iter_embeddings(model, chunk_size=max(size, 1))]
        return np.concatenate(parts) if parts else np.empty((0, dim), np.float32)
    rng = np.random.default_rng(seed)
    starts = np.sort(rng.choice(max(watermark - block, 1), size=-(-size // block), replace=False))
    parts, got = [], 0
    for start in starts:
        for _, v in store.iter_embeddings(model, after_id=int(start), chunk_size=block):
            parts.append(v)
            got += len(v)
            break
    x = np.concatenate(parts) if parts else np.empty((0, dim), np.float32)
    return x[rng.permutation(len(x))[:size]]


def stream_into(index: faiss.Index, chunks: Iterator[tuple[np.ndarray, np.ndarray]], upto_id: int,
                total: int | None = None, desc: str = "index", skip: np.ndarray | None = None,
                timings: dict[str, float] | None = None) -> np.ndarray:
    """Add every ``(ids, vectors)`` chunk with ids <= ``upto_id`` to ``index``; returns the ids added.

    Ids in the sorted array ``skip`` are left out (already indexed). ``timings`` gets
    ``read_wait`` (seconds spent waiting for the next chunk: the part of reading that adding did
    not hide) and ``add`` (seconds inside faiss' add).
    """
    added = []
    wait = add = 0.0
    it = iter(chunks)
    with tqdm(total=total, desc=desc, unit="vec", leave=False,
              disable=total is None or total < 65536) as bar:
        while True:
            t = time.perf_counter()
            nxt = next(it, None)
            wait += time.perf_counter() - t
            if nxt is None:
                break
            ids, vecs = nxt
            keep = ids <= upto_id
            done = not keep.all()
            if skip is not None and len(skip):
                keep &= ~np.isin(ids, skip, assume_unique=True)
            if not keep.all():
                ids, vecs = ids[keep], vecs[keep]
            if len(ids):
                t = time.perf_counter()
                index.add_with_ids(vecs, ids)
                add += time.perf_counter() - t
                added.append(ids)
                bar.update(len(ids))
            if done:
                break
    if timings is not None:
        timings["read_wait"] = timings.get("read_wait", 0.0) + wait
        timings["add"] = timings.get("add", 0.0) + add
    return np.concatenate(added) if added else np.empty(0, np.int64)


def rabitq_codes(x: np.ndarray, center: np.ndarray, inner_product: bool = True,
                 scratch: np.ndarray | None = None, block: int | None = None) -> np.ndarray:
    """faiss' 1-bit RaBitQ codes of ``x`` (the layout of ``IndexRaBitQ``: the sign bits of
    ``x - center``, little-endian, then two float32 factors per vector), vectorized.

    The factors are faiss' ``or_minus_c_l2sqr`` (``|x-c|^2``, less ``|x|^2`` for inner
    product) and ``dp_multiplier`` (``|x-c| / <sign(x-c)/sqrt(d), (x-c)/|x-c|>``).
    :func:`fill` checks them against faiss' own encoder on every build. Rows are encoded
    ``block`` at a time (default :data:`RABITQ_BLOCK`) so that ``x - center`` and its signs
    stay in the core's cache while every per-row sum is taken from them (a whole chunk at once
    makes each of those passes a trip to RAM: ~4x slower). ``scratch``, a float32 array of at
    least ``block * dim`` items, is reused for ``x - center``.
    """
    x = np.asarray(x, np.float32)
    n, d = x.shape
    block = max(1, min(block or RABITQ_BLOCK, n))
    nb = (d + 7) // 8
    c = np.asarray(center, np.float32)
    if scratch is None or scratch.size < block * d:
        scratch = np.empty(block * d, np.float32)
    r_all = scratch[: block * d].reshape(block, d)
    pos_all = np.empty((block, d), np.bool_)
    ones = np.ones(d, np.float32)
    out = np.empty((n, nb + 8), np.uint8)
    nsq, dp, xx = np.empty(n, np.float32), np.empty(n, np.float32), np.zeros(n, np.float32)
    for s in range(0, n, block):
        e = min(s + block, n)
        r, pos, xb = r_all[: e - s], pos_all[: e - s], x[s:e]
        np.subtract(xb, c, out=r)
        np.greater(r, 0, out=pos)
        out[s:e, :nb] = np.packbits(pos, axis=1, bitorder="little")
        nsq[s:e] = np.einsum("ij,ij->i", r, r)
        if inner_product:
            xx[s:e] = np.einsum("ij,ij->i", xb, xb)
        np.abs(r, out=r)
        np.matmul(r, ones, out=dp[s:e])
    eps = np.finfo(np.float32).eps
    norm = np.sqrt(nsq)
    inv_norm = np.where(nsq < eps, np.float32(1), np.float32(1) / np.maximum(norm, eps))
    ndp = dp * inv_norm / np.float32(np.sqrt(d))
    inv_dp = np.where(np.abs(ndp) < eps, np.float32(1), np.float32(1) / np.where(ndp == 0, 1, ndp))
    first = nsq - xx if inner_product else nsq
    out[:, nb:] = np.stack([first, inv_dp * norm], axis=1).astype(np.float32).view(np.uint8)
    return out


def _rabitq_target(index: faiss.Index) -> faiss.Index | None:
    """The empty plain 1-bit RaBitQ index inside an IDMap, or ``None``."""
    if not isinstance(index, faiss.IndexIDMap) or index.ntotal:
        return None
    inner = faiss.downcast_index(index.index)
    if type(inner) is faiss.IndexRaBitQ and inner.rabitq.nb_bits == 1:
        return inner
    return None


def fill(index: faiss.Index, chunks: Iterator[tuple[np.ndarray, np.ndarray]], upto_id: int,
         total: int | None = None, desc: str = "index", timings: dict[str, float] | None = None,
         ) -> np.ndarray:
    """Add every chunk up to ``upto_id`` to a freshly trained ``index``; returns the ids added.

    A flat plain RaBitQ index gets numpy-computed codes (:func:`rabitq_codes`, checked against
    faiss' encoder on the first rows; faiss' own add when they differ). Anything else, the
    fast-scan RaBitQ included (its codes are packed in blocks by faiss), goes through
    :func:`stream_into`.
    """
    inner = _rabitq_target(index)
    target = index if inner is None else _NumpyRaBitQ(index, inner)
    return stream_into(target, chunks, upto_id, total, desc, timings=timings)  # type: ignore[arg-type]


class _NumpyRaBitQ:
    """What :func:`stream_into` adds to: each chunk is encoded by :func:`rabitq_codes` and its
    codes added to ``holder`` (an IDMap over the RaBitQ index ``flat``). The first chunk is
    also encoded by faiss; when the two disagree, every chunk goes through faiss instead."""

    def __init__(self, holder: faiss.IndexIDMap, flat: faiss.IndexRaBitQ) -> None:
        self.holder, self.flat = holder, flat
        self.center = faiss.vector_to_array(flat.center).astype(np.float32)
        self.inner_product = flat.metric_type == faiss.METRIC_INNER_PRODUCT
        self.use_faiss: bool | None = None  # decided on the first chunk

    def add_with_ids(self, vecs: np.ndarray, ids: np.ndarray) -> None:
        if self.use_faiss:
            self.holder.add_with_ids(vecs, ids)
            return
        codes = rabitq_codes(vecs, self.center, self.inner_product)  # one 320 KB block of scratch
        if self.use_faiss is None:
            head = np.ascontiguousarray(vecs[:16], np.float32)
            self.use_faiss = not _codes_agree(codes[:16], self.flat.sa_encode(head), self.flat.d)
            if self.use_faiss:
                log.warning("numpy RaBitQ codes differ from faiss' own; encoding with faiss")
                self.holder.add_with_ids(vecs, ids)
                return
        self.holder.add_sa_codes(codes, np.ascontiguousarray(ids, np.int64))


def _codes_agree(mine: np.ndarray, theirs: np.ndarray, d: int) -> bool:
    """Sign bits equal and factors within float rounding (faiss sums in another order)."""
    nb = (d + 7) // 8
    if mine.shape != theirs.shape or not np.array_equal(mine[:, :nb], theirs[:, :nb]):
        return False
    a = np.ascontiguousarray(mine[:, nb:]).view(np.float32)
    b = np.ascontiguousarray(theirs[:, nb:]).view(np.float32)
    return bool(np.allclose(a, b, rtol=1e-4, atol=1e-5))
