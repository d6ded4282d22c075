"""Building faiss indexes from the store: exact (flat) or compressed (PCA + IVF + SQ8).

Rebuilds stream the store in large chunks on a reader thread while faiss (which
releases the GIL) encodes the previous chunk, so reading and encoding overlap.
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


def new_exact(dim: int) -> faiss.Index:
    """An empty exact index: inner product over float32, store ids via IndexIDMap2."""
    return faiss.IndexIDMap2(faiss.IndexFlatIP(dim))


def new_budget(dim: int, factory: str, sample: np.ndarray, kmeans_iter: int = 10) -> faiss.Index:
    """A trained compressed index for ``factory`` from ``sample``.

    ``factory`` is any string :func:`decisions.factory_parts` reads: ``[PCAd,][OPQm_d,]IVFn[_HNSWm],codec``
    or ``[PCAd,]HNSWm_codec`` (a graph over codes, wrapped in an IDMap for store ids).
    A leading PCA is computed with numpy (:func:`train_pca`), the rest by faiss.
    """
    parts = factory.split(",")
    if parts[0].startswith("PCA"):
        d = int(parts[0][3:])
        pca = train_pca(sample[: decisions.pca_training_size(len(sample))], d)
        inner = _inner(d, ",".join(parts[1:]))
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


#: OPQ rotation training: iterations and points (faiss' 50 x 256k take minutes on 1280-d).
OPQ_NITER, OPQ_TRAIN_POINTS = 8, 16384


def _inner(d: int, factory: str) -> faiss.Index:
    if factory.startswith("HNSW"):
        return faiss.index_factory(d, "IDMap," + factory, METRIC)
    index = faiss.index_factory(d, factory, METRIC)
    ivf = faiss.try_extract_index_ivf(index)
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
    """Every id held by an exact (IDMap) or IVF index, sorted."""
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
