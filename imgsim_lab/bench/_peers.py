"""Peer libraries beside ours in one ``imgsim bench search --peers`` run.

Each peer runs in its own process (its own virtualenv when it conflicts with ours:
``$IMGSIM_PEER_PYTHON_<NAME>``, else ``/work/peers-venv*/bin/python`` when present, else
this interpreter), on the same vectors, queries and ground truth, written once as
``.npy`` files. The worker half of this file needs only numpy and the peer library, so it
runs under any of those interpreters: ``python _peers.py WORKDIR PEER``.

Peers: ``hnswlib`` (HNSW32, every float32 vector in RAM), ``lancedb`` (IVF_PQ on disk +
``refine_factor``), ``autofaiss`` (``build_index`` with the same memory budget). Each
reports build seconds, resident RAM (VmRSS growth over the process after loading the
vectors, the vectors themselves freed), and recall@10 / p50 / p95 for a few settings.

A worker's stderr goes to ``WORKDIR/peer-<name>.log`` and, while it runs, the worker dumps its
Python stack there every ``STACK_DUMP_S`` seconds (``faulthandler``), so a slow or stuck peer
shows where it is. autofaiss at a 10 % budget on 1280-d vectors chooses
``OPQ256_1536,IVF1024_HNSW32,PQ256x8`` and trains it on every vector (its own estimate: ~17 min of
one idle core for 50k vectors; 62 min measured on the shared 2-core box), so its time limit is
longer than the others' (``TIMEOUT_S``).
"""

from __future__ import annotations

import faulthandler
import json
import logging
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

log = logging.getLogger(__name__)

K = 10
PEERS = ("hnswlib", "lancedb", "autofaiss")
#: Build threads for every peer, as for ours (cores - 1: a reader thread has the other core).
BUILD_THREADS = max(1, (os.cpu_count() or 2) - 1)
VENVS = {"hnswlib": None, "lancedb": "/work/peers-venv", "autofaiss": "/work/peers-venv-autofaiss"}
#: Default time limit per peer (seconds); ``run_peers(timeout_s=…)`` overrides it for all.
TIMEOUT_S = {"hnswlib": 900.0, "lancedb": 1800.0, "autofaiss": 5400.0}
#: A running worker writes its Python stack to its log this often ($IMGSIM_PEER_STACK_DUMP_S).
STACK_DUMP_S = float(os.environ.get("IMGSIM_PEER_STACK_DUMP_S", "300"))
#: What autofaiss is told the machine has for training (it sizes its training sample from it).
AUTOFAISS_MEMORY = "4G"


def _rss_mb() -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def _recall(found: list[list[int]], truth: np.ndarray) -> float:
    return float(np.mean([len(set(f[:K]) & set(t.tolist())) / K for f, t in zip(found, truth, strict=True)]))


def _timed(search, q: np.ndarray, qrows: np.ndarray, n_lat: int) -> tuple[list[list[int]], float, float]:
    found, times = [], []
    for i in range(len(q)):
        t = time.perf_counter()
        rows = search(q[i])
        times.append(time.perf_counter() - t)
        found.append([int(r) for r in rows if r != qrows[i]][:K])
    lat = np.array(times[:n_lat]) * 1000
    return found, float(np.percentile(lat, 50)), float(np.percentile(lat, 95))


# ----------------------------------------------------------------------------- workers
def run_hnswlib(x, q, qrows, truth, budget_bytes, n_lat, tmp):
    import hnswlib

    n, dim = x.shape
    t = time.perf_counter()
    index = hnswlib.Index(space="ip", dim=dim)
    index.init_index(max_elements=n, M=32, ef_construction=100, random_seed=0)
    index.set_num_threads(BUILD_THREADS)
    index.add_items(x, np.arange(n))
    build_s = time.perf_counter() - t
    index.set_num_threads(1)
    rows = []
    for ef in (64, 128, 256):
        index.set_ef(ef)
        found, p50, p95 = _timed(lambda v: index.knn_query(v, k=K + 1)[0][0], q, qrows, n_lat)
        rows.append({"setting": f"HNSW32 ef {ef}", "recall_at_10": _recall(found, truth), "p50_ms": p50,
                     "p95_ms": p95})
    return {"build_s": build_s, "settings": rows, "rss_mb_built": _rss_mb(),
            "index": "hnswlib HNSW32 (efConstruction 100), all vectors in RAM"}


def run_lancedb(x, q, qrows, truth, budget_bytes, n_lat, tmp):
    import lancedb
    import pyarrow as pa

    n, dim = x.shape
    t = time.perf_counter()
    db = lancedb.connect(str(Path(tmp) / "lance"))
    vec = pa.FixedSizeListArray.from_arrays(pa.array(x.ravel(), pa.float32()), dim)
    table = db.create_table("v", pa.table({"row": pa.array(np.arange(n)), "vector": vec}), mode="overwrite")
    table.create_index(metric="dot", num_partitions=256, num_sub_vectors=64, index_type="IVF_PQ")
    build_s = time.perf_counter() - t
    rows = []
    for nprobes, refine in ((32, None), (32, 10), (64, 20)):
        def search(v, nprobes=nprobes, refine=refine):
            s = table.search(v).nprobes(nprobes).limit(K + 1).select(["row"])
            if refine:
                s = s.refine_factor(refine)
            return s.to_arrow()["row"].to_numpy()
        found, p50, p95 = _timed(search, q, qrows, n_lat)
        rows.append({"setting": f"nprobes {nprobes}" + (f", refine_factor {refine}" if refine else ""),
                     "recall_at_10": _recall(found, truth), "p50_ms": p50, "p95_ms": p95})
    return {"build_s": build_s, "settings": rows, "rss_mb_built": _rss_mb(),
            "index": "LanceDB IVF_PQ (256 partitions, 64 sub-vectors, dot) on disk",
            "version": lancedb.__version__}


def run_autofaiss(x, q, qrows, truth, budget_bytes, n_lat, tmp):
    import faiss
    from autofaiss import build_index

    faiss.omp_set_num_threads(BUILD_THREADS)  # as OMP_NUM_THREADS: no oversubscription on a shared box
    t = time.perf_counter()
    # CPU only, in RAM (not memory-mappable), no direct map; progress logged (INFO) to the peer's log
    index, info = build_index(embeddings=x, save_on_disk=False, metric_type="ip",
                              max_index_memory_usage=f"{max(1, budget_bytes // (1 << 20))}MB",
                              current_memory_available=AUTOFAISS_MEMORY,
                              min_nearest_neighbors_to_retrieve=K + 1, max_index_query_time_ms=10,
                              use_gpu=False, should_be_memory_mappable=False, make_direct_map=False,
                              verbose=logging.INFO, nb_cores=BUILD_THREADS)
    build_s = time.perf_counter() - t
    faiss.omp_set_num_threads(1)
    found, p50, p95 = _timed(lambda v: index.search(v[None, :], K + 1)[1][0], q, qrows, n_lat)
    return {"build_s": build_s, "rss_mb_built": _rss_mb(),
            "index_bytes": int(faiss.serialize_index(index).size), "budget_bytes": int(budget_bytes),
            "index": str(info.get("index_key")) if isinstance(info, dict) else str(info),
            "info": {k: str(v) for k, v in (info or {}).items()} if isinstance(info, dict) else None,
            "settings": [{"setting": "autofaiss' own tuning", "recall_at_10": _recall(found, truth),
                          "p50_ms": p50, "p95_ms": p95}]}


def worker(workdir: str, peer: str) -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    faulthandler.dump_traceback_later(STACK_DUMP_S, repeat=True)  # to stderr = the peer's log
    d = Path(workdir)
    meta = json.loads((d / "meta.json").read_text())
    base = _rss_mb()
    x = np.load(d / "x.npy")
    q, qrows, truth = np.load(d / "q.npy"), np.load(d / "qrows.npy"), np.load(d / "truth.npy")
    loaded = _rss_mb()
    fn = {"hnswlib": run_hnswlib, "lancedb": run_lancedb, "autofaiss": run_autofaiss}[peer]
    res = fn(x, q, qrows, truth, meta["budget_bytes"], meta["latency_queries"], str(d / f"tmp-{peer}"))
    data_mb = x.nbytes / 2**20
    del x
    import gc

    gc.collect()
    # resident RAM of the index: growth over the process holding the input vectors, measured
    # while the index is alive (after its queries)
    res.update(peer=peer, rss_mb_after=_rss_mb(), rss_mb_base=base, rss_mb_loaded=loaded,
               resident_mb=res.get("rss_mb_built", loaded) - loaded, vectors_mb=data_mb)
    (d / f"result-{peer}.json").write_text(json.dumps(res))


# ------------------------------------------------------------------------------ driver
def _tail(path: Path, lines: int = 6) -> str:
    """The last lines of a peer's log, joined on one line."""
    return " | ".join(path.read_text(errors="replace").strip().splitlines()[-lines:])


def python_for(peer: str) -> str:
    env = os.environ.get(f"IMGSIM_PEER_PYTHON_{peer.upper()}")
    if env:
        return env
    venv = VENVS.get(peer)
    if venv and Path(venv, "bin", "python").exists():
        return str(Path(venv, "bin", "python"))
    return sys.executable


def run_peers(x: np.ndarray, q: np.ndarray, qrows: np.ndarray, truth_rows: np.ndarray, budget_bytes: int,
              workdir: str, peers: tuple[str, ...] = PEERS, latency_queries: int = 200,
              timeout_s: float | None = None) -> dict[str, dict]:
    """Run each peer in its own process on the same data; returns ``{peer: result or error}``.

    ``timeout_s``: limit per peer (default ``TIMEOUT_S[peer]``). Each result names its ``log``.
    """
    d = Path(workdir)
    d.mkdir(parents=True, exist_ok=True)
    np.save(d / "x.npy", np.ascontiguousarray(x, np.float32))
    np.save(d / "q.npy", np.ascontiguousarray(q, np.float32))
    np.save(d / "qrows.npy", np.asarray(qrows, np.int64))
    np.save(d / "truth.npy", np.asarray(truth_rows, np.int64))
    (d / "meta.json").write_text(json.dumps({"budget_bytes": int(budget_bytes),
                                             "latency_queries": int(latency_queries)}))
    out = {}
    for peer in peers:
        py = python_for(peer)
        limit = timeout_s if timeout_s is not None else TIMEOUT_S.get(peer, 900.0)
        log_path = d / f"peer-{peer}.log"
        t = time.perf_counter()
        env = {**os.environ, "OMP_NUM_THREADS": str(BUILD_THREADS), "PYTHONUNBUFFERED": "1"}
        with open(log_path, "w") as log_file:
            try:
                p = subprocess.run([py, __file__, str(d), peer], stdout=log_file, stderr=subprocess.STDOUT,
                                   timeout=limit, env=env)
                res_file = d / f"result-{peer}.json"
                if p.returncode == 0 and res_file.exists():
                    out[peer] = json.loads(res_file.read_text())
                else:
                    out[peer] = {"peer": peer, "error": f"exit {p.returncode}: " + _tail(log_path)}
            except subprocess.TimeoutExpired:
                out[peer] = {"peer": peer, "error": f"timed out after {limit:.0f} s (stack dumps in "
                                                    f"{log_path}): " + _tail(log_path)}
        out[peer].update(python=py, log=str(log_path))
        out[peer]["wall_s"] = time.perf_counter() - t
        log.info("peer %s: %s", peer, json.dumps(out[peer]))
    return out


if __name__ == "__main__":
    worker(sys.argv[1], sys.argv[2])
