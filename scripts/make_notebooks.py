#!/usr/bin/env python
"""Generate notebooks/01_ingest.ipynb, 02_search.ipynb and 03_benchmark.ipynb (without outputs).

The notebooks are thin: a ``parameters`` cell (papermill) and one or two calls into
``imgsim_lab`` per step, with the narrative in markdown. Edit this script, not the
notebooks, then run ``python scripts/make_notebooks.py`` (``--check`` exits 1 when a
committed notebook differs from what this script generates).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import nbformat
from nbformat.v4 import new_code_cell, new_markdown_cell, new_notebook

ROOT = Path(__file__).resolve().parent.parent
METADATA = {
    "kernelspec": {"name": "python3", "display_name": "Python 3 (imgsim-lab)", "language": "python"},
    "language_info": {"name": "python", "pygments_lexer": "ipython3", "file_extension": ".py",
                      "mimetype": "text/x-python", "codemirror_mode": {"name": "ipython", "version": 3},
                      "nbconvert_exporter": "python"},
}


def _build(cells: list[tuple[str, str]]) -> nbformat.NotebookNode:
    """Cells from ``(kind, source)``; ``kind`` is md, code or params. Ids are stable."""
    nb = new_notebook(metadata=METADATA)
    for i, (kind, source) in enumerate(cells):
        cid = f"cell-{i:02d}"
        source = source.strip("\n")
        if kind == "md":
            nb.cells.append(new_markdown_cell(source, id=cid))
        else:
            cell = new_code_cell(source, id=cid)
            if kind == "params":
                cell.metadata["tags"] = ["parameters"]
            nb.cells.append(cell)
    return nb


INGEST = [
    ("md", """
# 01 · Ingest images into the store

Sets CIFAR-10 up from the local archive when needed (`data/cifar10`) — or takes your own
folder of `<split>/<class>/` images (`dataset = "path/to/folder"`) — ingests a
class-balanced subset of one split into the KV store with every chosen model, then builds
(or catches up) each model's similarity index. Ingest is idempotent: running this again
adds only what is missing. Afterwards, `02_search.ipynb` searches this store.

All logic is in `imgsim_lab.experiments.run_ingest`; the cell below holds the parameters
(papermill overrides them: `papermill 01_ingest.ipynb out.ipynb -p limit 1000`).
"""),
    ("params", """
dataset = "cifar10"          # "cifar10", or a folder holding <split>/<class>/ images
split = "train"              # which split (sub-folder) to ingest
data_dir = None              # None: $IMGSIM_DATA_DIR, else <repo>/data
cifar10_source = None        # archive to set CIFAR-10 up from (None: the shared local zip)
limit = 5000                 # class-balanced subset size (None: the whole split)
models = ["efficientnet_lite0"]  # any of imgsim_lab.models.available_models(offline_only=True)
input_size = None            # input px of the learned models (None: each model's default)
kv_url = None                # None: $IMGSIM_KV_URL, else rocksdb:<data_dir>/kv
namespace = None             # None: $IMGSIM_NAMESPACE, else "imgsim"
index_mode = "auto"          # auto | exact | budget
memory_budget = None         # bytes, or a fraction of the raw vectors (budget mode)
seed = 0                     # seed of the subset
batch_size = 64
output_dir = None            # metrics.json goes here (None: <repo>/experiments/runs/ingest)
progress = True
dask = None                  # embed on a Dask cluster: "local:2" or "tcp://HOST:8786" (None: this kernel)
"""),
    ("code", """
from IPython.display import Markdown, display

from imgsim_lab.experiments import IngestParams, run_ingest
from imgsim_lab.experiments.ingest_run import ingest_table
from imgsim_lab.experiments.notebook import notebook_logging
from imgsim_lab.experiments.params import params_from_namespace

notebook_logging()
"""),
    ("md", "## Ingest and index"),
    ("code", """
result = run_ingest(params_from_namespace(IngestParams, globals()))
display(Markdown(ingest_table(result)))
"""),
    ("md", """
`added` are new images, `embedded` stored images that got a vector of a new model,
`duplicates` images already stored with every model (skipped without decoding). The
index mode is `exact` while the vectors fit the memory budget.
"""),
    ("code", """
print(f"store {result['kv_url']} namespace {result['namespace']}: {result['store']['images']} images")
print(f"metrics: {result['output_dir']}/metrics.json, {result['seconds']:.1f} s")
"""),
]

BENCHMARK = [
    ("md", """
# 03 · Benchmark: comparing models on image retrieval

The dataset is CIFAR-10 by default, or a folder of your own holding `train/<class>/` and
`test/<class>/` images (`dataset = "path/to/folder"`); the title below names the one used.

"""),
    ("params", """
dataset = "cifar10"          # "cifar10", or a folder holding train/<class>/ and test/<class>/
data_dir = None              # None: $IMGSIM_DATA_DIR, else <repo>/data
cifar10_source = None        # archive to set CIFAR-10 up from (None: the shared local zip)
db_size = 5000               # database images from train (class-balanced; None: all 50,000)
query_size = 1000            # query images from test (class-balanced; None: all 10,000)
models = ["efficientnet_lite0", "pixels", "color_hist"]
input_size = None            # input px of the learned models (None: each model's default)
model_sizes = {}             # per-model input px, e.g. {"efficientnet_lite1": 176}
index_mode = "exact"         # exact | budget | auto
memory_budget = None         # bytes, or a fraction of the raw vectors (budget mode)
k = 10                       # results per query (precision, recall@k)
map_depth = 1000             # mAP@map_depth
kv_url = None                # None: rocksdb:<output_dir>/kv
namespace = None             # None: named after the database subset, e.g. cifar10-train-5000-s0
seed = 0                     # seed of both subsets
output_dir = None            # None: <repo>/experiments/runs/adhoc
batch_size = 64
latency_queries = 200        # single-query searches timed for p50/p95
example_queries = 5          # queries shown side by side for every model
progress = True
dask = None                  # ingest on a Dask cluster: "local:2" or "tcp://HOST:8786" (None: this kernel)
derived = {}                 # recipes of derived models in `models` (BASE+NAME), see docs/adapters.md
full_map = False             # also mAP over the whole database (mAP@all)
"""),
    ("code", """
from IPython.display import Image, Markdown, display

from imgsim_lab.experiments import BenchmarkParams, run_benchmark
from imgsim_lab.experiments.benchmark import examples_table, metrics_table, per_class_table, protocol_markdown
from imgsim_lab.experiments.notebook import notebook_logging
from imgsim_lab.experiments.params import params_from_namespace

notebook_logging()
params = params_from_namespace(BenchmarkParams, globals())
display(Markdown(protocol_markdown(params)))
"""),
    ("md", """
**Metrics** (defined in `imgsim_lab/evaluation.py`): precision@1/5/10; mAP@1000 (AP over
the top 1000 normalized by the relevant items retrieved there, as in HashNet / DeepHash);
5-NN accuracy (majority vote, ties to the nearest); per-class precision. These come from
exact brute-force search, so they measure the *model*. The *index* under test
(`index_mode`, `memory_budget`) is measured against that exact search: recall@10 and
per-query latency p50/p95.

Logic lives in `imgsim_lab.experiments.run_benchmark`; `metrics.json` and the PNGs are
written to `output_dir`. Experiment grids run this notebook with papermill
(`imgsim experiments run experiments/NAME.yaml`).
"""),
    ("md", "## Run: ingest the database with each model, embed the queries, search, score"),
    ("code", """
result = run_benchmark(params)
display(Markdown(metrics_table(result)))
"""),
    ("md", """
`ingest img/s` is the embedding + store throughput of this run (`reused` when the
database was already in the store); `query embed img/s` is the same model on the queries.
"""),
    ("md", "## Precision@k per model"),
    ("code", "display(Image(filename=result['plots']['precision_at_k']))"),
    ("md", """
## Index recall against latency

Recall@10 of the index's results against exact search, against the per-query latency of a
single search (p50, whisker to p95). An exact index has recall 1 by construction, so
with `index_mode = "exact"` every point sits on the top line and only latency differs;
run a `budget` index (`experiments/cifar10_index.yaml`) to see the trade-off.
"""),
    ("code", "display(Image(filename=result['plots']['recall_latency']))"),
    ("md", """
## Comparing cosine results across models

The same query images, each model's top 5 with their cosine scores (green: same class).
Scores are not comparable across models — each embedding has its own similarity scale —
only the rankings are.
"""),
    ("code", """
display(Image(filename=result['plots']['examples']))
display(Markdown(examples_table(result)))
"""),
    ("md", "## Per-class precision@10"),
    ("code", """
display(Markdown(per_class_table(result, "P@10")))
display(Image(filename=result['plots']['per_class']))
"""),
    ("code", """
print(f"metrics: {result['output_dir']}/metrics.json ({result['seconds']:.1f} s, "
      f"{result['db_images']} database / {result['query_images']} query images)")
"""),
]

SEARCH = [
    ("md", """
# 02 · Search the collection

Drop images on the drop zone (or use **Choose files**): each is validated like an ingested
image, embedded, and compared by cosine similarity with every stored image. You see the
upload and its top-k stored images, with scores, labels and where each file is. The
query and its exact duplicates never appear among its results.

- **Model** picks the embedding; tick **Compare with** to see two or three models' top-k
  side by side — images found by more than one model are marked. Changing the model or
  *k* re-runs the current query.
- **Add uploads** stores new images (with every model of the collection) so later
  searches find them; off, uploads are only searched.
- **Stored id** searches an image that is already in the collection.

The collection comes from `imgsim ingest` or `01_ingest.ipynb`; `imgsim app` serves this
notebook as a web page (Voila), passing its settings through environment variables.
"""),
    ("params", """
import os

kv_url = os.environ.get("IMGSIM_KV_URL")  # None: rocksdb:<data dir>/kv
namespace = os.environ.get("IMGSIM_NAMESPACE")  # None: imgsim
model = os.environ.get("IMGSIM_APP_MODEL")  # a model key in the store; None: the largest one
compare = [m for m in os.environ.get("IMGSIM_APP_COMPARE", "").split(",") if m]  # models shown beside it
k = int(os.environ.get("IMGSIM_APP_K", "5"))
add_uploads = os.environ.get("IMGSIM_APP_ADD", "1") != "0"
"""),
    ("code", """
from imgsim_lab.app import SearchApp

app = SearchApp(kv_url=kv_url, namespace=namespace, model=model, compare=compare, k=k,
                add_uploads=add_uploads)
app.display()
"""),
]

NOTEBOOKS = {"01_ingest.ipynb": INGEST, "02_search.ipynb": SEARCH, "03_benchmark.ipynb": BENCHMARK}


def render(cells: list[tuple[str, str]]) -> str:
    nb = _build(cells)
    nbformat.validate(nb)
    return nbformat.writes(nb) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=ROOT / "notebooks", help="output directory")
    parser.add_argument("--check", action="store_true",
                        help="do not write; exit 1 if a notebook differs from the generated one")
    args = parser.parse_args(argv)
    stale = []
    for name, cells in NOTEBOOKS.items():
        text, path = render(cells), args.out / name
        if args.check:
            if not path.is_file() or path.read_text(encoding="utf-8") != text:
                stale.append(name)
            continue
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text, encoding="utf-8")
        print(f"wrote {path}")
    if stale:
        print(f"out of date (run scripts/make_notebooks.py): {', '.join(stale)}")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
