"""imgsim-lab: a Jupyter-centric research workbench for image similarity search.

Subpackages: ``store`` (Kvrocks/Redis and embedded RocksDB), ``models`` (embedding
models), ``index`` (hybrid FAISS search), plus ingestion, datasets and the notebook app.
"""

import logging

__version__ = "0.1.0"

logging.getLogger(__name__).addHandler(logging.NullHandler())
