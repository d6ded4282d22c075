"""Ingest on a real ``distributed.LocalCluster`` (2 worker processes x 1 thread).

Against redis-server (the session fixture), Apache Kvrocks (started here), the Redis
Cluster fixture (marker ``cluster``) and an embedded RocksDB (workers embed, the client
writes): the same records and summary as a serial
ingest, ``check`` clean, a worker killed mid-run, two overlapping runs.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import threading
import time
import uuid
from pathlib import Path

import numpy as np
import pytest
from imagegen import image_bytes, make_folder

from imgsim_lab.check import check_store
from imgsim_lab.datasets import ImageItem, folder_items
from imgsim_lab.ingest import ingest
from imgsim_lab.models import get_model
from imgsim_lab.store import open_store

distributed = pytest.importorskip("distributed")

from imgsim_lab.scaleout.cluster import PLUGIN_NAME  # noqa: E402
from imgsim_lab.scaleout.ingest import dask_ingest  # noqa: E402

pytestmark = [pytest.mark.integration, pytest.mark.slow]
REPO = Path(__file__).resolve().parents[2]
COUNTED = ("added", "duplicates", "embedded", "rejected", "rejected_total", "seen", "models")


@pytest.fixture(scope="module")
def pixels():
    return get_model("pixels")


@pytest.fixture(scope="module")
def items(tmp_path_factory: pytest.TempPathFactory) -> list[ImageItem]:
    """90 images, 6 byte-identical copies, 4 bad files and one path that cannot be read."""
    folder = make_folder(tmp_path_factory.mktemp("dask") / "imgs", 90, duplicates=6, bad=True)
    gone = ImageItem("imgs/red/gone.png", "red", folder / "red" / "gone.png")  # listed, then deleted
    return sorted(folder_items(folder, label_from_parent=True) + [gone], key=lambda it: it.source)


def counted(summary) -> dict:
    d = summary.to_dict()
    return {k: d[k] for k in COUNTED}


def contents(store, model: str) -> dict[str, tuple]:
    """sha256 -> (source, width, height, label, vector bytes): what the store holds, ids aside."""
    recs = [r for chunk in store.iter_records() for r in chunk]
    ids, vecs = store.get_embeddings(model, [r.id for r in recs])
    by_id = {int(i): v.tobytes() for i, v in zip(ids, vecs, strict=True)}
    out = {r.sha256: (r.source, r.width, r.height, r.label, by_id.get(r.id)) for r in recs}
    assert len(out) == len(recs), "two records share a sha256"
    return out


def serial_reference(url: str, items, pixels) -> tuple[dict, dict]:
    with open_store(url, f"serial{uuid.uuid4().hex[:8]}") as store:
        s = ingest(items, store, [pixels], batch_size=8, progress=False)
        return counted(s), contents(store, pixels.key)


@pytest.mark.parametrize("backend", ["redis", "kvrocks", "rocksdb",
                                     pytest.param("cluster", marks=pytest.mark.cluster)])
def test_dask_ingest_equals_serial_and_check_is_clean(backend, request, tmp_path, items, pixels,
                                                       dask_client) -> None:
    url = {"redis": lambda: request.getfixturevalue("redis_url"),
           "kvrocks": lambda: request.getfixturevalue("kvrocks_url"),
           "cluster": lambda: request.getfixturevalue("cluster_url"),
           "rocksdb": lambda: f"rocksdb:{tmp_path / 'kv'}"}[backend]()
    ref_summary, ref_contents = serial_reference(
        f"rocksdb:{tmp_path / 'serial'}" if backend == "rocksdb" else url, items, pixels)
    assert ref_summary["added"] == 90 and ref_summary["duplicates"] == 6
    assert ref_summary["rejected"] == {"corrupt": 1, "empty": 1, "not_an_image": 2, "too_small": 1}
    with open_store(url, f"dask{uuid.uuid4().hex[:8]}") as store:
        s = dask_ingest(items, store, [pixels], client=dask_client, batch_size=8, partition_size=10,
                        hash_partition_size=25, wave_size=60, progress=False)
        assert counted(s) == ref_summary
        assert contents(store, pixels.key) == ref_contents
        assert check_store(store).ok, check_store(store).problems
        again = dask_ingest(items, store, [pixels], client=dask_client, batch_size=8, partition_size=10,
                            progress=False)
        assert (again.added, again.duplicates, again.embedded) == (0, 96, 0)
        assert again.rejected == s.rejected
    loads = dask_client.run(lambda dask_worker: dask_worker.plugins[PLUGIN_NAME].model_loads)
    assert all(n <= 1 for n in loads.values()), loads  # once per worker, not per partition


def test_adding_a_model_counts_embedded_like_serial(redis_url, tmp_path, items, pixels, dask_client) -> None:
    hist = get_model("color_hist")
    ns = f"emb{uuid.uuid4().hex[:8]}"
    first = items[:40]
    with open_store(redis_url, f"{ns}s") as serial, open_store(redis_url, f"{ns}d") as dist:
        ingest(first, serial, [pixels], progress=False)
        ingest(first, dist, [pixels], progress=False)
        ref = ingest(items, serial, [pixels, hist], batch_size=8, progress=False)
        got = dask_ingest(items, dist, [pixels, hist], client=dask_client, partition_size=10, progress=False)
        assert counted(got) == counted(ref) and got.embedded > 0
        assert contents(dist, hist.key) == contents(serial, hist.key)
        assert check_store(dist).ok


def _worker_pids(client) -> dict[str, int]:
    return client.run(os.getpid)


def test_killed_worker_is_rescheduled_nothing_lost_or_duplicated(redis_url, tmp_path, pixels,
                                                                 dask_client) -> None:
    folder = make_folder(tmp_path / "many", 400, duplicates=10, bad=True)
    many = folder_items(folder, label_from_parent=True)
    ref_summary, ref_contents = serial_reference(redis_url, many, pixels)
    ns = f"kill{uuid.uuid4().hex[:8]}"
    result: dict = {}
    watcher = open_store(redis_url, ns)

    def run() -> None:
        with open_store(redis_url, ns) as store:
            try:
                result["summary"] = dask_ingest(many, store, [pixels], client=dask_client, batch_size=4,
                                                partition_size=8, progress=False)
            except BaseException as exc:  # noqa: BLE001 - reported by the assertion below
                result["error"] = exc

    pids = _worker_pids(dask_client)
    t = threading.Thread(target=run)
    t.start()
    deadline = time.monotonic() + 120
    while watcher.count() == 0 and time.monotonic() < deadline:
        time.sleep(0.005)
    victim = sorted(pids.values())[0]
    at_kill = watcher.count()
    os.kill(victim, signal.SIGKILL)
    t.join(300)
    assert not t.is_alive() and "error" not in result, result
    assert 0 < at_kill < 400, f"the worker was killed after {at_kill} of 400 images, not mid-ingest"
    assert victim not in _worker_pids(dask_client).values()
    assert counted(result["summary"]) == ref_summary
    assert contents(watcher, pixels.key) == ref_contents
    assert check_store(watcher).ok, check_store(watcher).problems
    watcher.close()
    dask_client.wait_for_workers(2, timeout=60)


def test_two_overlapping_ingests_store_one_record_per_sha(redis_url, tmp_path, pixels, dask_client) -> None:
    a, b = tmp_path / "a", tmp_path / "b"
    for i in range(0, 80):
        (a / f"{i:03d}.png").parent.mkdir(exist_ok=True)
        (a / f"{i:03d}.png").write_bytes(image_bytes(i))
    for i in range(40, 120):
        (b / f"{i:03d}.png").parent.mkdir(exist_ok=True)
        (b / f"{i:03d}.png").write_bytes(image_bytes(i))
    ns = f"both{uuid.uuid4().hex[:8]}"
    summaries = {}

    def run(name: str, folder: Path) -> None:
        with open_store(redis_url, ns) as store:
            summaries[name] = dask_ingest(folder_items(folder), store, [pixels], client=dask_client,
                                          batch_size=4, partition_size=8, progress=False)

    threads = [threading.Thread(target=run, args=(n, f)) for n, f in (("a", a), ("b", b))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(300)
    assert set(summaries) == {"a", "b"}
    with open_store(redis_url, ns) as store:
        got = contents(store, pixels.key)
        assert len(got) == store.count() == 120
        assert check_store(store).ok, check_store(store).problems
        ids, vecs = store.get_embeddings(pixels.key, store.all_ids().tolist())
        assert len(ids) == 120 and np.isfinite(vecs).all()


def _cli(*args: str) -> subprocess.CompletedProcess:
    import sys

    return subprocess.run([sys.executable, "-m", "imgsim_lab.cli", *args], capture_output=True, text=True,
                          cwd=REPO, timeout=600)


def test_cli_ingest_dask_local_matches_serial_json_and_check_is_clean(redis_url, tmp_path) -> None:
    folder = make_folder(tmp_path / "cli", 40, duplicates=3, bad=True)
    ns_s, ns_d = f"clis{uuid.uuid4().hex[:6]}", f"clid{uuid.uuid4().hex[:6]}"
    common = ["--model", "pixels", "--kv", redis_url, "--batch-size", "8", "--no-index"]
    serial = _cli("ingest", str(folder), *common, "--namespace", ns_s, "--json", str(tmp_path / "s.json"))
    assert serial.returncode == 0, serial.stderr
    dist = _cli("ingest", str(folder), *common, "--namespace", ns_d, "--dask", "local:2",
                "--partition-size", "8", "--json", str(tmp_path / "d.json"))
    assert dist.returncode == 0, dist.stderr
    s, d = (json.loads((tmp_path / f).read_text()) for f in ("s.json", "d.json"))
    assert {k: d[k] for k in COUNTED} == {k: s[k] for k in COUNTED} and d["added"] == 40
    check = _cli("check", "--kv", redis_url, "--namespace", ns_d)
    assert check.returncode == 0, check.stdout + check.stderr
    bad = _cli("ingest", str(folder), *common, "--dask", "local:zero")
    assert bad.returncode == 2 and "expected local:N or tcp://HOST:PORT" in bad.stderr
