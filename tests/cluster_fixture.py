"""Session fixtures for the server backends: redis-server, Apache Kvrocks, and a
three-master cluster of each, started once per test run on free loopback ports."""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest
from servers import (
    KVROCKS_HELP,
    KvrocksClusterServers,
    KvrocksServer,
    RedisClusterServers,
    kvrocks_binary,
)

#: The five backends every store-level suite runs on (see ``store_url`` in conftest.py).
BACKENDS = ("rocksdb", "redis", "kvrocks", "redis-cluster", "kvrocks-cluster")
SERVER_BACKENDS = BACKENDS[1:]


def need_kvrocks() -> str:
    binary = kvrocks_binary()
    if not binary:
        pytest.skip(KVROCKS_HELP)
    return binary


@pytest.fixture(scope="session")
def cluster_servers(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisClusterServers | None]:
    """Our own Redis Cluster, or ``None`` when ``$IMGSIM_TEST_CLUSTER_URL`` names an external one."""
    if os.environ.get("IMGSIM_TEST_CLUSTER_URL"):
        yield None
        return
    servers = RedisClusterServers(tmp_path_factory.mktemp("cluster")).start()
    yield servers
    servers.stop()


@pytest.fixture(scope="session")
def cluster_url(cluster_servers: RedisClusterServers | None) -> str:
    """``redis+cluster://`` URL of the Redis Cluster (or of ``$IMGSIM_TEST_CLUSTER_URL``)."""
    return os.environ.get("IMGSIM_TEST_CLUSTER_URL") or cluster_servers.url


@pytest.fixture(scope="session")
def kvrocks_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[KvrocksServer]:
    """One Apache Kvrocks node for the whole run (skips, saying how to get Kvrocks, if absent)."""
    server = KvrocksServer(tmp_path_factory.mktemp("kvrocks"), binary=need_kvrocks()).start()
    yield server
    server.stop()


@pytest.fixture(scope="session")
def kvrocks_url(kvrocks_server: KvrocksServer) -> str:
    return kvrocks_server.url


@pytest.fixture(scope="session")
def kvrocks_cluster_servers(tmp_path_factory: pytest.TempPathFactory) -> Iterator[KvrocksClusterServers]:
    """Three Kvrocks masters joined with ``CLUSTERX SETNODES``, for the whole run."""
    need_kvrocks()
    servers = KvrocksClusterServers(tmp_path_factory.mktemp("kvrocks-cluster")).start()
    yield servers
    servers.stop()


@pytest.fixture(scope="session")
def kvrocks_cluster_url(kvrocks_cluster_servers: KvrocksClusterServers) -> str:
    return kvrocks_cluster_servers.url


def server_url_of(request: pytest.FixtureRequest, backend: str) -> str:
    """The URL of one server backend's session server."""
    name = {"redis": "redis_url", "kvrocks": "kvrocks_url", "redis-cluster": "cluster_url",
            "kvrocks-cluster": "kvrocks_cluster_url"}[backend]
    return request.getfixturevalue(name)


def servers_of(request: pytest.FixtureRequest, backend: str):
    """The cluster servers object of a cluster backend (to kill and restart nodes), or None."""
    if backend == "redis-cluster":
        return request.getfixturevalue("cluster_servers")
    if backend == "kvrocks-cluster":
        return request.getfixturevalue("kvrocks_cluster_servers")
    return None


def backend_param(name: str):
    marks = []
    if "cluster" in name:
        marks.append(pytest.mark.cluster)
    if "kvrocks" in name:
        marks.append(pytest.mark.kvrocks)
    return pytest.param(name, marks=marks, id=name)
