"""The CIFAR-10 retrieval benchmark behind ``notebooks/03_benchmark.ipynb`` (and 01_ingest).

Protocol: the database is a class-balanced subset of the train split, ingested into the
store with each model; the queries are a class-balanced subset of the test split,
embedded with the same model and never stored; a result is relevant when it has the
query's class. Quality metrics come from exact (brute-force) cosine search over the
stored vectors; the index under test (exact or memory-budgeted) is measured against it
(recall@10, precision@k of its own results, per-query latency).
"""

from __future__ import annotations

import dataclasses
import logging
import os
import platform
import time
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np

from imgsim_lab import evaluation as ev
from imgsim_lab.datasets import ImageItem
from imgsim_lab.experiments.dataset import data_namespace, dataset_identity, load_items
from imgsim_lab.experiments.params import checked_params
from imgsim_lab.experiments.paths import resolve_data_dir, resolve_dataset, resolve_output_dir
from imgsim_lab.jsonio import write_json

log = logging.getLogger(__name__)

#: Models whose input size is their nature (the image's own 32 px): ``input_size`` skips them.
FIXED_SIZE_MODELS = frozenset({"pixels", "color_hist"})
KS = (1, 5, 10)


@dataclass
class BenchmarkParams:
    """Everything one benchmark run depends on (the notebook's ``parameters`` cell)."""

    dataset: str = "cifar10"            # "cifar10", or a folder holding train/<class>/ and test/<class>/
    data_dir: str | None = None         # <data_dir>/cifar10 (None: $IMGSIM_DATA_DIR or <repo>/data)
    cifar10_source: str | None = None   # archive to set CIFAR-10 up from (None: the shared local zip)
    db_size: int | None = 5000          # database images (class-balanced; None: the whole train split)
    query_size: int | None = 1000       # query images (class-balanced; None: the whole test split)
    models: list[str] = field(default_factory=lambda: ["efficientnet_lite0", "pixels", "color_hist"])
    input_size: int | None = None       # input px for learned models (None: each model's default)
    model_sizes: dict[str, int] = field(default_factory=dict)  # per-model size overrides
    index_mode: str = "exact"           # SimilarityIndex mode: exact | budget | auto
    memory_budget: float | int | None = None  # bytes, or a fraction of the raw vectors (budget mode)
    k: int = 10                         # results per query for precision / recall
    map_depth: int = 1000               # mAP@map_depth
    kv_url: str | None = None           # store URL (None: rocksdb:<output_dir>/kv)
    namespace: str | None = None        # None: derived from the data (dataset, db size, seed)
    seed: int = 0
    output_dir: str | None = None       # metrics.json and PNGs (None: <repo>/experiments/runs/adhoc)
    batch_size: int = 64
    latency_queries: int = 200          # single-query searches timed for p50/p95
    example_queries: int = 5            # queries drawn in the side-by-side example grid
    progress: bool = True
    dask: str | None = None             # Dask cluster to ingest on: local:N | tcp://host:8786
    derived: dict[str, dict] = field(default_factory=dict)  # recipes of derived models BASE+NAME
    full_map: bool = False              # also mAP over the whole database ("mAP@all")
    expand: int = 0                     # αQE: queries expanded with their top-N database results (0: off)
    expand_alpha: float = 3.0           # αQE weight exponent (cosine ** alpha)

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> BenchmarkParams:
        """Build from a dict, rejecting unknown keys (typos in YAML must not pass silently)."""
        p = checked_params(cls, values, "benchmark")
        if isinstance(p.models, str):
            p.models = [p.models]
        from imgsim_lab.expansion import ExpansionConfig

        ExpansionConfig(p.expand, p.expand_alpha)  # a bad setting is refused before any work
        return p

    def size_for(self, model: str) -> int | None:
        """The input size ``model`` runs at under these parameters (None: its default)."""
        if model in self.model_sizes:
            return int(self.model_sizes[model])
        return None if model in FIXED_SIZE_MODELS else self.input_size


# --------------------------------------------------------------------------- embedding


def _decoded(path: Path):
    from imgsim_lab.images import decode

    return decode(path.read_bytes())[0]


def embed_items(model, items: list[ImageItem], batch_size: int = 64,
                progress: bool = True) -> tuple[np.ndarray, float]:
    """Vectors of ``items`` in order (validated and decoded as ingest does) and images/s."""
    from imgsim_lab.pipeline import embed_stream

    t0 = time.perf_counter()
    parts = [b.vectors for b in embed_stream(
        model, ((i, partial(_decoded, it.path)) for i, it in enumerate(items)),
        batch_size=batch_size, on_error="raise", progress=progress, total=len(items))]
    seconds = time.perf_counter() - t0
    vecs = np.concatenate(parts) if parts else np.zeros((0, model.dim), np.float32)
    return vecs, (len(items) / seconds if seconds > 0 else 0.0)


def stored_database(store, model_key: str) -> tuple[np.ndarray, np.ndarray, list[str | None], list[str]]:
    """Every stored vector of ``model_key`` with its id, label and source, in id order."""
    ids_parts, vec_parts = [], []
    for ids, vecs in store.iter_embeddings(model_key):
        ids_parts.append(np.asarray(ids, np.int64))
        vec_parts.append(np.asarray(vecs, np.float32))
    if not ids_parts:
        return np.zeros(0, np.int64), np.zeros((0, store.model_dim(model_key)), np.float32), [], []
    ids = np.concatenate(ids_parts)
    records = store.get_records(ids.tolist())
    labels = [r.label if r else None for r in records]
    sources = [r.source if r else "" for r in records]
    return ids, np.concatenate(vec_parts), labels, sources


# --------------------------------------------------------------------------- one model


def _index_config(params: BenchmarkParams, out: Path, key: str):
    from imgsim_lab.index import IndexConfig

    tag = params.index_mode if params.memory_budget is None else f"{params.index_mode}-{params.memory_budget}"
    # queries are never stored, so a database vector identical to a query is a legitimate hit
    return IndexConfig(mode=params.index_mode, memory_budget=params.memory_budget,
                       snapshot_dir=out / "index" / tag / key, duplicate_threshold=None)


def _pad_hits(hits: list[list[Any]], k: int) -> tuple[np.ndarray, np.ndarray]:
    ids = np.full((len(hits), k), ev.PAD, np.int64)
    scores = np.full((len(hits), k), np.nan, np.float32)
    for i, row in enumerate(hits):
        ids[i, :len(row)] = [h.id for h in row[:k]]
        scores[i, :len(row)] = [h.score for h in row[:k]]
    return ids, scores


def evaluate_model(store, model, params: BenchmarkParams, queries: list[ImageItem],
                   classes: list[str], out: Path) -> dict[str, Any]:
    """Exact-search quality, index recall/latency and example results of one ingested model."""
    from imgsim_lab.index import SimilarityIndex

    ids, db, db_labels, db_sources = stored_database(store, model.key)
    qvecs, q_rate = embed_items(model, queries, params.batch_size, params.progress)
    if params.expand:  # every metric below ranks the expanded queries (settings checked in from_dict)
        from imgsim_lab.expansion import expand_against

        qvecs = expand_against(qvecs, db, params.expand, params.expand_alpha)
    q_codes, _ = ev.encode_labels([q.label for q in queries], classes)
    db_codes, _ = ev.encode_labels(db_labels, classes)
    depth = max(params.map_depth, params.k, 10)

    t0 = time.perf_counter()
    rows, scores = ev.exact_topk(db, qvecs, depth)
    exact_s = time.perf_counter() - t0
    safe = np.where(rows == ev.PAD, 0, rows)
    res_labels = np.where(rows == ev.PAD, ev.PAD, db_codes[safe] if len(db_codes) else ev.PAD)
    exact_ids = np.where(rows == ev.PAD, ev.PAD, ids[safe] if len(ids) else ev.PAD)
    quality = ev.retrieval_metrics(q_codes, res_labels, KS, params.map_depth, knn_k=5)
    if params.full_map and len(db):
        from imgsim_lab.adapters.evaluate import map_all

        quality["mAP@all"] = map_all(db, db_codes, qvecs, q_codes)
    per_class = ev.per_class_precision(q_codes, ev.relevance(q_codes, res_labels), classes, KS)

    t0 = time.perf_counter()
    index = SimilarityIndex(store, model.key, config=_index_config(params, out, model.key))
    index.sync()
    build_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    hits = index.search_batch(qvecs, k=params.k)
    batch_s = time.perf_counter() - t0
    idx_ids, _ = _pad_hits(hits, params.k)
    id_to_code = dict(zip(ids.tolist(), db_codes.tolist(), strict=True))
    idx_labels = np.vectorize(lambda i: id_to_code.get(int(i), ev.PAD), otypes=[np.int64])(idx_ids) \
        if idx_ids.size else idx_ids
    idx_rel = ev.relevance(q_codes, idx_labels)
    lat = []
    for q in qvecs[:params.latency_queries]:
        t = time.perf_counter()
        index.search(q, k=params.k)
        lat.append(time.perf_counter() - t)
    index_metrics = {f"P@{k}": float(ev.precision_at(idx_rel, k).mean()) for k in KS if k <= params.k}
    index_metrics.update({
        f"recall@{params.k}": ev.recall_against(idx_ids, exact_ids, params.k),
        "latency": ev.latency_percentiles(lat), "latency_queries": len(lat),
        "batch_ms_per_query": 1000 * batch_s / max(1, len(qvecs)), "build_s": build_s,
        "stats": {k: v for k, v in index.stats().items() if k != "snapshot_dir"},
    })
    examples = _examples(queries, q_codes, exact_ids[:, :5], scores[:, :5], ids, db_sources,
                         db_codes, params.example_queries, classes)
    return {"key": model.key, "name": model.name, "size": model.size, "dim": model.dim,
            "version": model.version, "db_count": int(len(ids)), "query_count": len(queries),
            "expansion": {"n": params.expand, "alpha": params.expand_alpha} if params.expand else None,
            "query_embed_images_per_s": q_rate, "exact_search_s": exact_s,
            "quality": quality, "per_class": per_class, "index": index_metrics,
            "examples": examples}


def example_query_indices(q_codes: np.ndarray, n: int) -> list[int]:
    """The first query of each class in turn (deterministic), ``n`` of them."""
    firsts: dict[int, int] = {}
    for i, c in enumerate(q_codes.tolist()):
        firsts.setdefault(c, i)
    picked = [firsts[c] for c in sorted(firsts)][:n]
    return picked


def _examples(queries, q_codes, top_ids, top_scores, ids, sources, db_codes, n, classes) -> list[dict]:
    pos = {int(i): r for r, i in enumerate(ids.tolist())}
    out = []
    for qi in example_query_indices(q_codes, n):
        hits = []
        for i, s in zip(top_ids[qi].tolist(), top_scores[qi].tolist(), strict=True):
            if i == ev.PAD:
                continue
            r = pos[int(i)]
            code = int(db_codes[r])
            hits.append({"id": int(i), "score": round(float(s), 4), "source": sources[r],
                         "label": classes[code] if code != ev.PAD else None})
        out.append({"query": queries[qi].source, "label": queries[qi].label, "hits": hits})
    return out


# --------------------------------------------------------------------------- the run


def environment() -> dict[str, Any]:
    """Facts that explain timings: cores, torch threads, load average, versions."""
    import torch

    return {"python": platform.python_version(), "torch": torch.__version__,
            "torch_threads": torch.get_num_threads(), "cpus": os.cpu_count(),
            "loadavg": [round(x, 2) for x in os.getloadavg()], "machine": platform.machine(),
            "time": time.strftime("%Y-%m-%dT%H:%M:%S%z")}


class DatabaseMismatchError(RuntimeError):
    """The store holds a different number of database vectors than the run selected."""


def check_database_size(store, model_key: str, expected: int, db_size: int, namespace: str) -> None:
    """Fail loudly unless the vectors searched are exactly the selected database images.

    ``expected`` is the number of distinct, valid selected files (byte-identical files are
    stored once); with neither duplicates nor rejections it equals ``db_size``.
    """
    stored = store.model_info().get(model_key)
    count = stored.count if stored else 0
    if count != expected:
        raise DatabaseMismatchError(
            f"namespace {namespace!r} holds {count} {model_key} vectors, but this run selected "
            f"{db_size} database images ({expected} distinct and valid): the store mixes data "
            "from another run; delete the namespace (imgsim flush --namespace ...) or use another")


def dataset_title(dataset: str) -> str:
    """``CIFAR-10``, or the folder's name, for titles and protocol text."""
    return "CIFAR-10" if dataset == "cifar10" else Path(dataset).name or str(dataset)


def protocol_markdown(p: BenchmarkParams) -> str:
    """The notebook's title and protocol paragraph, naming the dataset actually used."""
    name = dataset_title(p.dataset)
    db = "all" if p.db_size is None else f"{p.db_size:,}"
    q = "all" if p.query_size is None else f"{p.query_size:,}"
    where = "" if p.dataset == "cifar10" else f" (`{p.dataset}`)"
    return (f"# Benchmark: comparing models on {name} retrieval\n\n"
            f"**Protocol.** The database is a class-balanced subset ({db} images) of the {name}"
            f"{where} *train* split, ingested into the store with each model; the queries are a "
            f"class-balanced subset ({q} images) of its *test* split, embedded with the same model and "
            "never stored. A result is relevant when it has the query's class. Similarity is cosine "
            f"on L2-normalized vectors. Models: {', '.join(f'`{m}`' for m in p.models)}.")


def run_benchmark(params: BenchmarkParams | dict[str, Any]) -> dict[str, Any]:
    """Ingest, evaluate every model, write ``metrics.json`` and plots into ``output_dir``.

    Returns the metrics dict (also written to ``<output_dir>/metrics.json``), with the PNG
    paths under ``"plots"``.
    """
    from imgsim_lab.models import get_model
    from imgsim_lab.scaleout.ingest import ingest_function
    from imgsim_lab.store import open_store

    p = params if isinstance(params, BenchmarkParams) else BenchmarkParams.from_dict(params)
    p.dataset = resolve_dataset(p.dataset)
    ingest = ingest_function(p.dask)
    t_start = time.perf_counter()
    out = resolve_output_dir(p.output_dir)
    data_dir = resolve_data_dir(p.data_dir)
    db_items = load_items(p.dataset, "train", p.db_size, p.seed, data_dir, p.cifar10_source, p.progress)
    q_items = load_items(p.dataset, "test", p.query_size, p.seed, data_dir, p.cifar10_source, p.progress)
    classes = sorted({it.label for it in db_items + q_items if it.label is not None})
    kv_url = p.kv_url or f"rocksdb:{out / 'kv'}"
    identity = dataset_identity(p.dataset, db_items)
    namespace = p.namespace or data_namespace(p.dataset, p.db_size, p.seed, identity=identity)
    log.info("benchmark: %d database / %d query images, models %s, store %s ns %s",
             len(db_items), len(q_items), p.models, kv_url, namespace)
    result: dict[str, Any] = {"params": dataclasses.asdict(p), "kv_url": kv_url, "namespace": namespace,
                              "output_dir": str(out), "classes": classes, "dataset": dataset_title(p.dataset),
                              "dataset_identity": dataclasses.asdict(identity),
                              "db_images": len(db_items), "query_images": len(q_items),
                              "environment": environment(), "models": {}}
    paths = {it.source: str(it.path) for it in db_items + q_items}
    with open_store(kv_url, namespace) as store:
        for name in p.models:
            if "+" in name:  # a derived model (issue 18): fitted on the database, never on queries
                from imgsim_lab.experiments.derived import derived_benchmark_model

                model, extra = derived_benchmark_model(store, name, p, db_items, q_items)
                res = {**evaluate_model(store, model, p, q_items, classes, out), **extra}
                result["models"][name] = res
                continue
            model = get_model(name, size=p.size_for(name))
            summary = ingest(db_items, store, [model], batch_size=p.batch_size, progress=p.progress)
            check_database_size(store, model.key, identity.unique_files - sum(summary.rejected.values()),
                                len(db_items), namespace)
            res = evaluate_model(store, model, p, q_items, classes, out)
            res["ingest"] = summary.to_dict()
            res["ingest"]["reused"] = summary.added + summary.embedded == 0
            result["models"][name] = res
            log.info("%s: %s", model.key, {k: round(v, 4) for k, v in res["quality"].items()})
    result["seconds"] = time.perf_counter() - t_start
    result["plots"] = draw_benchmark_plots(result, out, paths)
    write_json(out / "metrics.json", result)
    return result


def draw_benchmark_plots(result: dict[str, Any], out: Path, paths: dict[str, str]) -> dict[str, str]:
    """precision@k per model, recall vs latency, example grid and per-class heatmap (PNGs)."""
    from imgsim_lab import plots

    models = result["models"]
    drawn = {"precision_at_k": plots.precision_at_k(
        {n: m["quality"] for n, m in models.items()}, out / "precision_at_k.png",
        title=f"precision@k ({result['db_images']} db / {result['query_images']} queries, exact cosine)")}
    points = [{"label": f"{m['key']} ({m['index']['stats']['mode']})",
               "recall": m["index"][f"recall@{result['params']['k']}"], **m["index"]["latency"]}
              for m in models.values()]
    drawn["recall_latency"] = plots.recall_latency(points, out / "recall_latency.png")
    if models:
        first = next(iter(models.values()))["examples"]
        queries = [plots.Thumb(paths.get(e["query"]), f"query: {e['label']}") for e in first]
        grid = {m["key"]: [[plots.Thumb(paths.get(h["source"]), f"{h['score']:.3f} {h['label']}",
                                        h["label"] == e["label"]) for h in e["hits"]]
                           for e in m["examples"]] for m in models.values()}
        drawn["examples"] = plots.example_grid(queries, grid, out / "examples.png")
        drawn["per_class"] = plots.per_class_heatmap(
            {m["key"]: m["per_class"] for m in models.values()}, out / "per_class_precision.png")
    return {k: str(v) for k, v in drawn.items()}


# --------------------------------------------------------------------------- tables


def metrics_table(result: dict[str, Any]) -> str:
    """A markdown table of the headline numbers of each model of one run."""
    k = result["params"]["k"]
    head = ["model", "key", "P@1", "P@5", "P@10", "mAP@1000", "5-NN acc", f"index R@{k}",
            "p50 ms", "p95 ms", "ingest img/s", "query embed img/s"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for name, m in result["models"].items():
        q, ix = m["quality"], m["index"]
        cells = [name, m["key"], q["P@1"], q["P@5"], q["P@10"], q.get("mAP@1000", q.get(
            f"mAP@{result['params']['map_depth']}")), q["knn5_accuracy"], ix[f"recall@{k}"],
            ix["latency"]["p50_ms"], ix["latency"]["p95_ms"],
            "reused" if m["ingest"].get("reused") else m["ingest"]["images_per_s"],
            m["query_embed_images_per_s"]]
        lines.append("| " + " | ".join(_fmt(c) for c in cells) + " |")
    return "\n".join(lines)


def per_class_table(result: dict[str, Any], metric: str = "P@10") -> str:
    """Markdown: one row per class, one column per model, ``metric`` of that class's queries."""
    models = result["models"]
    classes = sorted({c for m in models.values() for c in m["per_class"]})
    lines = ["| class | " + " | ".join(m["key"] for m in models.values()) + " |",
             "|---|" + "---|" * len(models)]
    for c in classes:
        vals = [m["per_class"].get(c, {}).get(metric) for m in models.values()]
        lines.append(f"| {c} | " + " | ".join(_fmt(v) for v in vals) + " |")
    return "\n".join(lines)


def examples_table(result: dict[str, Any], top: int = 5) -> str:
    """Markdown: for each example query, each model's top results (label and cosine score)."""
    models = result["models"]
    if not models:
        return ""
    n = len(next(iter(models.values()))["examples"])
    lines = ["| query | model | " + " | ".join(f"#{i + 1}" for i in range(top)) + " |",
             "|---|---|" + "---|" * top]
    for qi in range(n):
        for j, m in enumerate(models.values()):
            ex = m["examples"][qi]
            hits = [f"{'✓' if h['label'] == ex['label'] else '✗'} {h['label']} {h['score']:.3f}"
                    for h in ex["hits"][:top]]
            hits += [""] * (top - len(hits))
            q = f"{ex['query'].rsplit('/', 1)[-1]} ({ex['label']})" if j == 0 else ""
            lines.append(f"| {q} | {m['key']} | " + " | ".join(hits) + " |")
    return "\n".join(lines)


def _fmt(v: Any) -> str:
    if isinstance(v, float):
        return f"{v:.3f}" if abs(v) < 100 else f"{v:.0f}"
    return "" if v is None else str(v)
