"""The interactive search app: ipywidgets in JupyterLab, a web page through Voila.

>>> from imgsim_lab.app import SearchApp
>>> SearchApp(kv_url="rocksdb:data/kv", k=5).display()   # doctest: +SKIP

See ``notebooks/02_search.ipynb`` and ``imgsim app``.
"""

from imgsim_lab.app.session import Outcome, SearchSession, resolve_source, split_model_key
from imgsim_lab.app.ui import SearchApp

__all__ = ["Outcome", "SearchApp", "SearchSession", "resolve_source", "split_model_key"]
