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
    store.raw_set(k.count, "42")                                   # wrong counter
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
    if hasattr(store, "repair"):
        # cluster: a record without its claim is a crashed writer's leftover, and is removed
        assert store.count() == 5 and store.get_records([ids[1]]) == [None]
        return
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
