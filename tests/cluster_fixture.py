"""Session fixtures for the cluster backend: a real three-master Redis Cluster on loopback."""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest
from servers import RedisClusterServers


@pytest.fixture(scope="session")
def cluster_servers(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisClusterServers | None]:
    """Our own cluster, or ``None`` when ``$IMGSIM_TEST_CLUSTER_URL`` names an external one."""
    if os.environ.get("IMGSIM_TEST_CLUSTER_URL"):
        yield None
        return
    servers = RedisClusterServers(tmp_path_factory.mktemp("cluster")).start()
    yield servers
    servers.stop()


@pytest.fixture(scope="session")
def cluster_url(cluster_servers: RedisClusterServers | None) -> str:
    """``redis+cluster://`` URL of the test cluster (e.g. a real Kvrocks cluster, or ours)."""
    return os.environ.get("IMGSIM_TEST_CLUSTER_URL") or cluster_servers.url
