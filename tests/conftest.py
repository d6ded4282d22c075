"""Shared fixtures: a real redis-server per session and a store per backend."""

from __future__ import annotations

import os
import sys
import uuid
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))

from cluster_fixture import (  # noqa: E402, F401
    BACKENDS,
    SERVER_BACKENDS,
    backend_param,
    cluster_servers,
    cluster_url,
    kvrocks_cluster_servers,
    kvrocks_cluster_url,
    kvrocks_server,
    kvrocks_url,
    server_url_of,
)
from dask_fixture import dask_client  # noqa: E402, F401
from servers import RedisServer  # noqa: E402

from imgsim_lab.store import open_store  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
SHARED_CIFAR = REPO.parent / "shared" / "datasets" / "cifar10-jpeg.zip"


@pytest.fixture(scope="session", autouse=True)
def isolated_data_dir(tmp_path_factory: pytest.TempPathFactory):
    """Snapshots, logs and uploads of the tests go to a temp dir, not the repository's data/.

    Set for the whole session so subprocesses (CLI, papermill kernels, Voila) inherit it;
    tests that keep an artifact for people to look at write it under REPO/data explicitly.
    """
    if os.environ.get("IMGSIM_DATA_DIR"):
        yield
        return
    os.environ["IMGSIM_DATA_DIR"] = str(tmp_path_factory.mktemp("data"))
    yield
    os.environ.pop("IMGSIM_DATA_DIR", None)


@pytest.fixture(scope="session")
def redis_url(tmp_path_factory: pytest.TempPathFactory):
    """A Redis-protocol server: ``$IMGSIM_TEST_REDIS_URL`` (e.g. a real Kvrocks) or our own."""
    external = os.environ.get("IMGSIM_TEST_REDIS_URL")
    if external:
        yield external
        return
    server = RedisServer(tmp_path_factory.mktemp("redis")).start()
    yield server.url
    server.stop()


@pytest.fixture
def namespace() -> str:
    return f"t{uuid.uuid4().hex[:10]}"


@pytest.fixture(params=[backend_param(b) for b in BACKENDS])
def store_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """A store URL on each of the five backends (servers shared by the whole run)."""
    if request.param == "rocksdb":
        return f"rocksdb:{tmp_path / 'kv'}"
    return server_url_of(request, request.param)


@pytest.fixture(params=[backend_param(b) for b in SERVER_BACKENDS])
def server_url(request: pytest.FixtureRequest) -> str:
    """A server shared by processes, on each of the four server backends."""
    return server_url_of(request, request.param)


@pytest.fixture
def store(store_url: str, namespace: str):
    s = open_store(store_url, namespace)
    yield s
    if s.backend != "rocksdb":
        s.flush()
    s.close()


@pytest.fixture(scope="session")
def cifar_zip() -> Path | None:
    return SHARED_CIFAR if SHARED_CIFAR.exists() else None
