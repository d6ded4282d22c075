"""``imgsim check``: damage a store on purpose, see every problem reported, then repaired."""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys

import numpy as np
import pytest

from imgsim_lab.check import check_store
from imgsim_lab.store import CorruptDataError, NewImage

pytestmark = pytest.mark.integration


def _fill(store, n=6):
    store.register_model("m", 4, "v1")
    items = [NewImage(hashlib.sha256(bytes([i])).hexdigest(), f"s{i}", 2, 2,
                      embeddings={"m": np.full(4, i, np.float32)}) for i in range(n)]
    return [r.id for r in store.add_images(items)]


def test_clean_store_passes(store):
    _fill(store)
    report = check_store(store)
    assert report.ok and report.records == 6 and report.models == {"m": 6} and not report.problems


def test_damage_is_reported_and_safe_parts_repaired(store):
    ids = _fill(store)
    k = store.keys
    store.raw_set(k.emb("m", ids[0]), b"\x00" * 7)               # wrong length
    store.raw_set(k.emb("m", 999), np.zeros(4, np.float32).tobytes())  # orphan embedding
    store.raw_set(k.sha("f" * 64), "12345")                       # dangling claim
    store.raw_delete([k.sha(store.get_records([ids[1]])[0].sha256)])  # unclaimed record
    store.raw_delete([k.emb("m", ids[2])])                         # missing embedding
    if store.backend == "rocksdb":
        store.raw_set(k.count, "42")                               # wrong counter
    else:
        store.raw_set(k.seq, "2")                                  # watermark behind the ids
    # reading a bad vector is reported, never used
    with pytest.raises(CorruptDataError, match=f"image {ids[0]}"):
        store.get_embeddings("m", [ids[0]])
    report = check_store(store)
    assert {p.kind for p in report.problems} == {
        "bad_embedding", "orphan_embedding", "dangling_claim", "unclaimed_record", "missing_embedding",
        "derived"}
    assert not report.ok
    repaired = check_store(store, repair=True)
    assert {p.kind for p in repaired.problems if not p.repaired} == {"missing_embedding"}
    after = check_store(store)
    assert {p.kind for p in after.problems} == {"missing_embedding"}
    assert store.count() == 6 and store.info()["models"]["m"]["count"] == 4
    assert store.ids_for_hashes([store.get_records([ids[1]])[0].sha256]) == [ids[1]]


def test_cli_check_json(tmp_path):
    from imgsim_lab.store import open_store

    url = f"rocksdb:{tmp_path / 'kv'}"
    with open_store(url) as s:
        _fill(s)
        s.raw_set(s.keys.count, "1")
    out = subprocess.run([sys.executable, "-m", "imgsim_lab.cli", "check", "--kv", url, "--json",
                          str(tmp_path / "r.json")], capture_output=True, text=True, timeout=120)
    assert out.returncode == 1 and "derived" in out.stdout
    assert json.loads((tmp_path / "r.json").read_text())["by_kind"] == {"derived": 1}
    out = subprocess.run([sys.executable, "-m", "imgsim_lab.cli", "check", "--kv", url, "--repair"],
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stdout + out.stderr


def test_repair_keeps_claim_and_embeddings_of_an_unparsable_record(store):
    ids = _fill(store)
    k = store.keys
    victim = store.get_records([ids[2]])[0]
    store.raw_delete([k.img(ids[2])])
    store.raw_set(k.img(ids[2]), b"\x80 not a record")  # exists, but does not parse
    report = check_store(store, repair=True)
    kinds = {p.kind for p in report.problems}
    assert "bad_record" in kinds and "dangling_claim" not in kinds and "orphan_embedding" not in kinds
    assert store.raw_get([k.sha(victim.sha256)])[0] == str(ids[2]).encode()  # claim kept
    assert store.raw_get([k.emb("m", ids[2])])[0] is not None  # embedding kept


def test_check_finds_what_the_declared_sets_miss_and_never_uses_scan_match(store):
    """A stray embedding beyond the watermark is found by the full scan (no MATCH)."""
    _fill(store)
    k = store.keys
    stray = k.emb("m", store.last_id() + 500)
    store.raw_set(stray, np.zeros(4, np.float32).tobytes())
    report = check_store(store)
    assert [p.kind for p in report.problems] == ["orphan_embedding"], report.to_dict()
    check_store(store, repair=True)
    assert store.raw_get([stray]) == [None] and check_store(store).ok


def test_scripts_take_every_key_from_keys():
    """No key name is built inside Lua (Kvrocks locks only declared keys; clusters route by them)."""
    import re

    from imgsim_lab.store.scripts import SCRIPTS

    for name, (src, _) in SCRIPTS.items():
        for call in re.finditer(r"redis\.call\('(\w+)',\s*([^,)]+)", src):
            first = call.group(2).strip()
            assert ".." not in first and "ARGV" not in first, (name, call.group(0))


def test_connection_error_aborts_check_and_repairs_nothing(tmp_path):
    from servers import RedisServer

    from imgsim_lab.store import StoreConnectionError, open_store

    server = RedisServer(tmp_path / "redis", persist=True).start()
    try:
        s = open_store(server.url, "conn")
        _fill(s)
        s.raw_set(s.keys.sha("e" * 64), "999")  # a dangling claim a repair would delete
        server.kill()
        with pytest.raises(StoreConnectionError, match="cannot reach"):
            check_store(s, repair=True)
        out = subprocess.run([sys.executable, "-m", "imgsim_lab.cli", "check", "--kv", server.url,
                              "--namespace", "conn", "--repair"], capture_output=True, text=True, timeout=120)
        assert out.returncode == 2 and "cannot reach the store" in out.stderr
        assert "Traceback" not in out.stderr
        server.start()
        s.close()
        with open_store(server.url, "conn") as again:
            assert again.raw_get([again.keys.sha("e" * 64)]) == [b"999"]  # nothing was repaired
    finally:
        server.stop()


@pytest.mark.parametrize("command", ["info", "check", "search"])
def test_read_only_commands_never_create_a_store(tmp_path, command):
    path = tmp_path / "typo" / "kv"
    args = [sys.executable, "-m", "imgsim_lab.cli", command, "--kv", f"rocksdb:{path}"]
    if command == "search":
        from imagegen import image_bytes

        (tmp_path / "q.png").write_bytes(image_bytes(1))
        args += [str(tmp_path / "q.png"), "--model", "pixels"]
    out = subprocess.run(args, capture_output=True, text=True, timeout=120)
    assert out.returncode == 2, out.stdout + out.stderr
    assert f"no store at rocksdb:{path}" in out.stderr and "Traceback" not in out.stderr
    assert not path.exists() and not path.parent.exists()


def test_cli_ingest_search_check_repair_flush_on_every_backend(store_url, namespace, tmp_path):
    """Ingest and search through the CLI, then check, repair and flush, on each of the five backends."""
    from imagegen import make_folder

    folder = make_folder(tmp_path / "imgs", 16)
    env = {**__import__("os").environ, "IMGSIM_NAMESPACE": namespace, "IMGSIM_DATA_DIR": str(tmp_path / "d")}

    def cli(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-m", "imgsim_lab.cli", *args, "--kv", store_url], env=env,
                              capture_output=True, text=True, timeout=300)

    out = cli("ingest", str(folder), "--model", "pixels", "--no-index", "--json", "-")
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout)["added"] == 16
    res = cli("search", str(folder / "green" / "img0004.png"), "--model", "pixels", "--k", "3", "--json")
    assert res.returncode == 0, res.stderr
    got = json.loads(res.stdout)
    assert got["duplicate"] and len(got["matches"]) == 3 and got["stored_id"] not in {
        m["id"] for m in got["matches"]}
    from imgsim_lab.store import open_store  # check, repair and flush in-process (CLI: test_cli)

    with open_store(store_url, namespace) as s:
        before = sorted(s.scan_keys())
        assert check_store(s).ok and not check_store(s, repair=True).problems
        assert sorted(s.scan_keys()) == before  # a clean repair changes nothing
        s.flush()
        assert s.count() == 0 and not list(s.scan_keys())
