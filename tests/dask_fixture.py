"""The real Dask cluster the scale-out tests share: a LocalCluster of 2 workers x 1 thread."""

from __future__ import annotations

import pytest


@pytest.fixture(scope="module")
def dask_client():
    distributed = pytest.importorskip("distributed")
    from imgsim_lab.scaleout.cluster import register_plugin

    cluster = distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=True,
                                       dashboard_address=":0")
    client = distributed.Client(cluster, set_as_default=False)
    register_plugin(client)
    yield client
    client.close()
    cluster.close()
