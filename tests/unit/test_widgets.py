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


def _facts(app: SearchApp) -> dict:
    """The facts panel as data: images, and per model (count, index mode)."""
    import html as html_mod
    import re

    text = app.facts.value
    out = {"images": int(re.search(r"<b class='imgsim-images'>(\d+)</b>", text).group(1))}
    for key, count, mode in re.findall(r"<tr data-model='([^']+)'><td>[^<]*</td><td class='imgsim-count'>"
                                       r"(\d+)</td><td>\d+</td><td class='imgsim-mode'>([^<]*)</td>", text):
        out[key] = (int(count), html_mod.unescape(mode))
    return out


@pytest.fixture
def collection(tmp_path: Path) -> tuple[str, Path]:
    """30 generated images in ``<tmp>/custom_images/<label>/`` stored with ``pixels`` and ``color_hist``."""
    for i in range(30):
        d = tmp_path / "custom_images" / f"c{i % 3}"
        d.mkdir(parents=True, exist_ok=True)
        (d / f"{i:03d}.png").write_bytes(_png(i))
    url = f"rocksdb:{tmp_path / 'kv'}"
    with open_store(url, NS) as store:
        ingest(folder_items(tmp_path / "custom_images", label_from_parent=True), store,
               [get_model("pixels"), get_model("color_hist")], progress=False)
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
    assert "not an image file" in bad.message and "b'" not in bad.message  # words, not raw bytes
    assert "rejected" in app.status.value

    # the app keeps working after a rejection; several files make one batch
    outs = app.handle_files([("a.png", _png(2000)), ("b.png", b""), ("c.png", _png(2001))])
    assert [o.status for o in outs] == ["added", "rejected", "added"]
    assert len(app.results.children) == 3
    assert "Batch of 3 files: 2 added, 1 rejected." in app.status.value  # the status is this batch's
    # 30 ingested + query.png + a.png + c.png, each with both models' embeddings
    assert _facts(app) == {"images": 33, "pixels": (33, "exact"), "color_hist": (33, "–")}


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
    assert "it is 99.0 MB, over the upload limit of 10.4 MB" in app.outcomes[1].message
    assert "Batch of 2 files: 1 added, 1 rejected." in app.status.value
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
    assert f"--kv rocksdb:{tmp_path / 'nothing'}" in app.status.value  # the command for this store
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


def _columns(html: str) -> dict[str, list[int]]:
    """Per model column of a rendered card, the result ids in order."""
    import re

    cols: dict[str, list[int]] = {}
    for i, key in re.findall(r"<div class='imgsim-result[^']*' data-id='(\d+)' data-model='([^']+)'>", html):
        cols.setdefault(key, []).append(int(i))
    return cols


def test_compare_two_models_side_by_side(app: SearchApp) -> None:
    app.compare["color_hist"].value = True
    assert app.models == ["pixels", "color_hist"]
    [out] = app.handle_files([("q.png", _png(7000))])
    assert list(out.results) == ["pixels", "color_hist"]
    html = app.results.children[0].value
    cols = _columns(html)
    assert {k: len(v) for k, v in cols.items()} == {"pixels": 5, "color_hist": 5}
    assert cols["pixels"] == [m.id for m in out.results["pixels"].matches]
    assert cols["color_hist"] == [m.id for m in out.results["color_hist"].matches]
    assert html.count("<div class='imgsim-model'>pixels</div>") == 5  # each card names its model
    assert html.count("<div class='imgsim-model'>color_hist</div>") == 5
    shared = set(cols["pixels"]) & set(cols["color_hist"])
    for i in set(cols["pixels"]) | set(cols["color_hist"]):  # exactly the ids in both columns are marked
        for key in cols:
            if i in cols[key]:
                marked = f"<div class='imgsim-result imgsim-shared' data-id='{i}' data-model='{key}'>" in html
                assert marked == (i in shared), (i, key)


def test_changing_model_or_k_reruns_the_current_query(app: SearchApp) -> None:
    [out] = app.handle_files([("q.png", _png(7100))])
    first = app.results.children[0].value
    assert set(_columns(first)) == {"pixels"}
    app.model.value = "color_hist"
    rerun = app.results.children[0].value
    cols = _columns(rerun)
    assert set(cols) == {"color_hist"} and len(cols["color_hist"]) == 5
    assert app.outcomes[0].results.keys() == {"color_hist"}
    assert "already in the collection" in app.outcomes[0].message  # it was added the first time
    app.k.value = 3
    assert {k: len(v) for k, v in _columns(app.results.children[0].value).items()} == {"color_hist": 3}
    assert app.session.store.count() == 31  # re-runs never add


def test_search_a_stored_image_with_two_models(app: SearchApp) -> None:
    app.compare["color_hist"].value = True
    out = app.search_stored(4)
    assert out.status == "duplicate" and set(out.results) == {"pixels", "color_hist"}
    assert all(4 not in [m.id for m in r.matches] and len(r.matches) == 5 for r in out.results.values())


def test_an_added_upload_gets_every_model_of_the_collection(app: SearchApp) -> None:
    from imgsim_lab.check import check_store

    [out] = app.handle_files([("q.png", _png(7200))])  # only pixels is selected
    assert out.status == "added"
    new_id = out.result.stored_id
    store = app.session.store
    store.refresh()
    assert store.has_embeddings("color_hist", [new_id])[0] and store.has_embeddings("pixels", [new_id])[0]
    assert store.model_info()["color_hist"].count == 31
    with open_store(app.session.kv_url, NS, read_only=True) as ro:
        report = check_store(ro)
    assert report.ok, [p.detail for p in report.problems]


def test_duplicate_message_says_what_happened(collection: tuple[str, Path]) -> None:
    """A stored image lacking the selected model's vector: searched only, or completed when adding."""
    url, data = collection
    extra = data / "lonely.png"
    extra.write_bytes(_png(7300))
    from imgsim_lab.datasets import ImageItem

    with open_store(url, NS) as store:  # stored with pixels only
        ingest([ImageItem("lonely.png", None, extra)], store, [get_model("pixels")], progress=False)
    app = SearchApp(kv_url=url, namespace=NS, model="color_hist", add_uploads=False, data_dir=data)
    try:
        [out] = app.handle_files([("lonely.png", extra.read_bytes())])
        assert out.status == "duplicate"
        assert "embedded for this search only (not stored)" in out.message
        app.add.value = True
        [out] = app.handle_files([("lonely.png", extra.read_bytes())])
        assert "missing color_hist embedding(s) were computed and stored" in out.message
        app.session.store.refresh()
        assert app.session.store.has_embeddings("color_hist", [out.result.stored_id])[0]
    finally:
        app.close()


def test_previews_of_a_folder_outside_the_data_dir_and_missing_files(tmp_path: Path) -> None:
    photos = tmp_path / "home" / "photos"
    for i in range(8):
        (photos / f"p{i % 2}").mkdir(parents=True, exist_ok=True)
        (photos / f"p{i % 2}" / f"{i}.png").write_bytes(_png(100 + i))
    data = tmp_path / "data"
    data.mkdir()
    url = f"rocksdb:{data / 'kv'}"
    with open_store(url, NS) as store:
        ingest(folder_items(photos, label_from_parent=True), store, [get_model("pixels")], progress=False)
        rec = store.get_records([1])[0]
        assert rec.path == str((photos / "p0" / "0.png").resolve())  # the file can be found again
    (photos / "p1" / "1.png").unlink()  # deleted after ingest
    app = SearchApp(kv_url=url, namespace=NS, model="pixels", k=7, add_uploads=False, data_dir=data)
    try:
        [out] = app.handle_files([("q.png", _png(999))])
        html = app.results.children[0].value
        assert len(out.result.matches) == 7
        assert html.count("data:image/jpeg;base64,") == 1 + 6  # the query and 6 of 7 matches
        assert html.count("file missing") == 1 and "no preview" not in html
    finally:
        app.close()


def test_upload_file_is_kept_exactly_when_a_record_points_at_it(app: SearchApp) -> None:
    data = _png(7400)
    [out] = app.handle_files([("keep.png", data)])
    rec = app.session.store.get_records([out.result.stored_id])[0]
    assert (app.session.data_dir / rec.source).is_file()
    assert rec.path == str((app.session.data_dir / rec.source).resolve())
    assert app.session._record_uses(out.result.sha256, rec.source)
    assert not app.session._record_uses(out.result.sha256, "uploads/other-name.png")
    # a failed write (another process holds the writer) leaves no file behind
    with open_store(app.session.kv_url, NS):
        [locked] = app.handle_files([("locked.png", _png(7401))])
    assert locked.status == "searched" and locked.notes
    assert not list((app.session.data_dir / "uploads").glob("*locked.png"))


def test_query_expansion_checkbox_reruns_with_expanded_queries(app: SearchApp) -> None:
    out = app.search_stored(4)
    plain = [m.id for m in out.results["pixels"].matches]
    assert not app.session.searcher.expansion.enabled
    app.expand.value = True  # re-runs the current query, expanded
    assert app.session.searcher.expansion.n == 5
    again = app.outcomes[-1].results["pixels"].matches
    got = [m.id for m in again]
    assert len(got) == 5 == len(set(got)) and 4 not in got
    expected = app.session.searcher.search_id(4, k=5)  # the same searcher, expanded
    assert got == [m.id for m in expected]
    assert [m.score for m in again] != [m.score for m in out.results["pixels"].matches] or got != plain
    app.compare["color_hist"].value = True  # a model loaded later is expanded too
    assert app.session.searchers["color_hist"].expansion.n == 5
    app.expand.value = False
    assert not any(s.expansion.enabled for s in app.session.searchers.values())
