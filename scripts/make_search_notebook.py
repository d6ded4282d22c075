"""Write notebooks/02_search.ipynb: the interactive search app (also served by ``imgsim app``).

Run ``.venv/bin/python scripts/make_search_notebook.py``; the notebook is written without outputs.
"""

from __future__ import annotations

import sys
from pathlib import Path

import nbformat
from nbformat.v4 import new_code_cell, new_notebook

OUT = Path(__file__).resolve().parents[1] / "notebooks" / "02_search.ipynb"

PARAMETERS = """# Image similarity search: drop images (or choose files) to see their nearest stored images.
# Parameters (papermill-style): `imgsim app` sets them through these environment variables.
import os

kv_url = os.environ.get("IMGSIM_KV_URL")  # None: rocksdb:data/kv
namespace = os.environ.get("IMGSIM_NAMESPACE")  # None: imgsim
model = os.environ.get("IMGSIM_APP_MODEL")  # a model key in the store; None: the largest one
k = int(os.environ.get("IMGSIM_APP_K", "5"))
add_uploads = os.environ.get("IMGSIM_APP_ADD", "1") != "0\""""

APP = """# Each upload is validated like an ingested image, embedded and compared by cosine similarity;
# the query and its exact duplicates never appear among the results. With "Add uploads" on, a new
# image is stored (an embedded RocksDB store is opened for writing only for that moment).
from imgsim_lab.app import SearchApp, project_cwd

project_cwd()  # relative paths (data/, rocksdb:data/kv) mean the project's, as on the command line
app = SearchApp(kv_url=kv_url, namespace=namespace, model=model, k=k, add_uploads=add_uploads)
app.display()"""


def build() -> nbformat.NotebookNode:
    """The notebook, without outputs."""
    nb = new_notebook()
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3 (imgsim-lab)",
                                 "language": "python"}
    nb.metadata["language_info"] = {"name": "python", "version": f"{sys.version_info.major}."
                                    f"{sys.version_info.minor}", "mimetype": "text/x-python",
                                    "file_extension": ".py", "pygments_lexer": "ipython3",
                                    "codemirror_mode": {"name": "ipython", "version": 3},
                                    "nbconvert_exporter": "python"}
    params = new_code_cell(PARAMETERS)
    params.metadata["tags"] = ["parameters"]
    nb.cells = [params, new_code_cell(APP)]
    for i, cell in enumerate(nb.cells):
        cell["id"] = f"search-{i}"
    nbformat.validate(nb)
    return nb


def main() -> int:
    OUT.parent.mkdir(parents=True, exist_ok=True)
    nbformat.write(build(), OUT)
    sys.stdout.write(f"wrote {OUT}\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
