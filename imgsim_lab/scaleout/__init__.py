"""Scale-out on a Dask cluster: ingest partitions and experiment cells run on workers.

- :mod:`~imgsim_lab.scaleout.cluster` — ``local:N`` / ``tcp://host:8786`` addresses, the
  client, and the worker plugin that caches models and store connections per worker;
- :mod:`~imgsim_lab.scaleout.ingest` — :func:`dask_ingest`, the distributed ingest;
- :mod:`~imgsim_lab.experiments.dask_grid` — :func:`run_experiment_dask`, grid cells in
  parallel (in experiments, beside the serial runner);
- :mod:`~imgsim_lab.scaleout.bench` — workers against one process, images per second.

Importing this package does not import dask; the functions do.
"""
