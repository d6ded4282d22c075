"""The search app's logic, driven from Python against a real RocksDB store (no browser)."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from imgsim_lab.app import Outcome, SearchApp, resolve_source, split_model_key
from imgsim_lab.app.ui import render_outcome
from imgsim_lab.datasets import folder_items
from imgsim_lab.ingest import ingest
from imgsim_lab.models import get_model
from imgsim_lab.store import open_store

NS = "apptest"


def _png(seed: int, size: int = 32) -> bytes:
    rng = np.random.default_rng(seed)
    base = rng.integers(0, 256, 3)
    arr = np.clip(base + rng.normal(0, 40, (size, size, 3)), 0, 255).astype(np.uint8)
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, "PNG")
    return buf.getvalue()


@pytest.fixture
def collection(tmp_path: Path) -> tuple[str, Path]:
    """30 generated images in ``<tmp>/custom_images/<label>/`` stored with the ``pixels`` model."""
    for i in range(30):
        d = tmp_path / "custom_images" / f"c{i % 3}"
        d.mkdir(parents=True, exist_ok=True)
        (d / f"{i:03d}.png").write_bytes(_png(i))
    url = f"rocksdb:{tmp_path / 'kv'}"
    with open_store(url, NS) as store:
        ingest(folder_items(tmp_path / "custom_images", label_from_parent=True), store,
               [get_model("pixels")], progress=False)
    return url, tmp_path


@pytest.fixture
def app(collection: tuple[str, Path]):
    url, data = collection
    a = SearchApp(kv_url=url, namespace=NS, model="pixels", k=5, add_uploads=True, data_dir=data)
    yield a
    a.close()


def test_added_then_duplicate_then_rejected(app: SearchApp) -> None:
    assert "Ready" in app.status.value
    data = _png(1000)
    [first] = app.handle_files([("query.png", data)])
    assert first.status == "added", first.message
    assert "added to the collection as id" in first.message
    new_id = first.result.stored_id
    assert len(first.result.matches) == 5
    assert new_id not in [m.id for m in first.result.matches]
    assert all(m.record.source.startswith("custom_images/") for m in first.result.matches)
    scores = [m.score for m in first.result.matches]
    assert scores == sorted(scores, reverse=True) and all(-1.0 <= s <= 1.0 + 1e-6 for s in scores)
    assert (app.session.data_dir / "uploads").is_dir()

    [again] = app.handle_files([("same-bytes.png", data)])
    assert again.status == "duplicate"
    assert f"already in the collection as id {new_id}" in again.message
    assert "stored embedding" in again.message
    assert new_id not in [m.id for m in again.result.matches]
    assert [m.id for m in again.result.matches] == [m.id for m in first.result.matches]

    [bad] = app.handle_files([("notes.txt", b"this is not an image")])
    assert bad.status == "rejected" and bad.reason == "not_an_image"
    assert "rejected (not_an_image)" in bad.message
    assert "rejected" in app.status.value

    # the app keeps working after a rejection; several files make one batch
    outs = app.handle_files([("a.png", _png(2000)), ("b.png", b""), ("c.png", _png(2001))])
    assert [o.status for o in outs] == ["added", "rejected", "added"]
    assert len(app.results.children) == 3
    assert "3" in app.facts.value and "exact" in app.facts.value


def test_stored_collection_image_is_a_duplicate_and_never_its_own_match(
        app: SearchApp, collection: tuple[str, Path]) -> None:
    _, data_dir = collection
    path = data_dir / "custom_images" / "c1" / "004.png"
    [out] = app.handle_files([("004.png", path.read_bytes())])
    assert out.status == "duplicate"
    own = out.result.stored_id
    assert own is not None and own not in [m.id for m in out.result.matches]
    assert all(m.record.sha256 != out.result.sha256 for m in out.result.matches)
    html = app.results.children[0].value
    assert html.count("class='imgsim-result'") == 5
    assert "data:image/jpeg;base64," in html  # the matches' files were found and shown


def test_search_only_does_not_add(collection: tuple[str, Path]) -> None:
    url, data = collection
    app = SearchApp(kv_url=url, namespace=NS, add_uploads=False, data_dir=data)
    try:
        [out] = app.handle_files([("q.png", _png(3000))])
        assert out.status == "searched" and out.result.stored_id is None
        assert len(out.result.matches) == 5
        assert app.session.store.count() == 30
    finally:
        app.close()


def test_locked_store_is_reported_and_the_search_still_runs(app: SearchApp, collection) -> None:
    url, _ = collection
    with open_store(url, NS):  # another writer holds the RocksDB lock
        [out] = app.handle_files([("q.png", _png(4000))])
    assert out.status == "searched"
    assert out.notes and out.notes[0].startswith("Not added:") and "held for writing" in out.notes[0]
    assert len(out.result.matches) == 5


def test_drop_zone_message_reaches_the_handler(app: SearchApp) -> None:
    meta = {"kind": "file", "batch": "b1", "index": 0, "total": 2, "name": "dropped.png", "size": 1}
    app.drop._on_custom_msg(app.drop, meta, [memoryview(_png(5000))])
    app.drop._on_custom_msg(app.drop, {**meta, "index": 1, "name": "huge.jpg", "oversize": True,
                                       "size": 99_000_000}, [])
    assert [o.status for o in app.outcomes] == ["added", "rejected"]
    assert "over the upload limit" in app.outcomes[1].message
    app.drop._on_custom_msg(app.drop, {"kind": "other"}, [])  # ignored
    assert len(app.outcomes) == 2


def test_hostile_file_name_is_sanitized_and_escaped(app: SearchApp) -> None:
    [out] = app.handle_files([("<img src=x onerror=alert(1)>/../../evil\".png", _png(6000))])
    assert out.status == "added"
    html = render_outcome(out, app.session)
    assert "<img src=x" not in html and "onerror" not in html
    raw = render_outcome(Outcome("<b>x</b>", "rejected", "<script>alert(1)</script>"), None)
    assert "<script>" not in raw and "&lt;script&gt;" in raw and "<b>" not in raw
    rec = app.session.store.get_records([out.result.stored_id])[0]
    assert rec.source.startswith("uploads/") and ".." not in rec.source
    assert resolve_source(rec.source, app.session.data_dir) is not None


def test_app_reports_a_missing_store_instead_of_raising(tmp_path: Path) -> None:
    app = SearchApp(kv_url=f"rocksdb:{tmp_path / 'nothing'}", data_dir=tmp_path)
    assert "Cannot start" in app.status.value and "ingest" in app.status.value
    [out] = app.handle_files([("q.png", _png(1))])
    assert out.status == "error"
    app.close()


def test_resolve_source_refuses_escapes(tmp_path: Path) -> None:
    (tmp_path / "custom_images").mkdir()
    (tmp_path / "custom_images" / "x.jpg").write_bytes(b"x")
    (tmp_path.parent / "outside.jpg").write_bytes(b"x")
    assert resolve_source("custom_images/x.jpg", tmp_path) == tmp_path / "custom_images" / "x.jpg"
    for bad in ("../outside.jpg", "custom_images/../../outside.jpg", "/etc/passwd", "C:/x.jpg",
                "custom_images\\x.jpg", "", "custom_images/missing.jpg", "custom_images"):
        assert resolve_source(bad, tmp_path) is None, bad


def test_split_model_key() -> None:
    assert split_model_key("efficientnet_lite0_96px") == ("efficientnet_lite0", 96)
    assert split_model_key("pixels") == ("pixels", None)
