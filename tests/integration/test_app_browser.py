"""The search app as a web page: ``imgsim app`` (Voila) driven by headless Chromium.

Ingests 200 CIFAR-10 images (or generated ones when CIFAR-10 is not set up) with two
models, plus a folder outside the data directory, into a tmp RocksDB store, serves the
page on a free loopback port, then: drops a real image on the drop zone (five results
with scores and previews), chooses the same file with "Choose files" (the duplicate
message), drops a non-image (the rejection), picks an oversize file with "Choose files"
(refused in the browser, the button keeps working), compares two models side by side,
switches the model (the query re-runs), and shows previews of the outside folder.
Another test visits the page 5 times and closes the tabs: their kernels are shut down.
Screenshots go to ``data/screenshots/`` of the repository.
"""

from __future__ import annotations

import base64
import os
import re
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from imgsim_lab.datasets import ImageItem, cifar10_items, is_complete
from imgsim_lab.ingest import ingest
from imgsim_lab.models import ModelUnavailableError, get_model
from imgsim_lab.store import open_store

pytestmark = [pytest.mark.browser, pytest.mark.integration, pytest.mark.slow, pytest.mark.timeout(300)]

REPO = Path(__file__).resolve().parents[2]
CHROMIUM = Path("/usr/bin/chromium")
CIFAR = REPO / "data" / "cifar10"
SCREENSHOTS = REPO / "data" / "screenshots"
IMGSIM = [sys.executable, "-m", "imgsim_lab.cli"]
NS = "browser"
TIMEOUT_MS = 90_000
_SERVER: dict[str, int] = {}  # the imgsim app process of this module
_OUTSIDE: dict[str, Path] = {}  # a query image beside the folder ingested from outside the data dir


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _generated(root: Path, n: int = 120) -> tuple[list[ImageItem], Path]:
    """Colored noise images with three labels, and a query image not among them."""
    rng = np.random.default_rng(0)
    items = []
    for i in range(n + 1):
        label = f"color{i % 3}"
        base = np.zeros(3)
        base[i % 3] = 200
        arr = np.clip(base + rng.normal(0, 50, (48, 48, 3)), 0, 255).astype(np.uint8)
        path = root / "custom_images" / label / f"{i:04d}.png"
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(arr).save(path)
        items.append(ImageItem(f"custom_images/{label}/{path.name}", label, path))
    query = root / "query.png"
    items[-1].path.rename(query)
    return items[:-1], query


def stop_group(proc: subprocess.Popen) -> None:
    """Stop a server started in its own process group: SIGTERM, then SIGKILL after 20 s."""
    if proc.poll() is not None:
        return
    os.killpg(proc.pid, signal.SIGTERM)
    try:
        proc.wait(timeout=20)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()


@pytest.fixture(scope="module")
def collection(tmp_path_factory: pytest.TempPathFactory) -> tuple[str, Path, str, Path]:
    """(store URL, data dir, model key, query image file) of a small ingested collection.

    Stored with the model and ``color_hist``; also holds 12 images of ``<tmp>/outside/photos``
    (outside the data dir), whose query is ``<tmp>/outside/query.png``.
    """
    data = tmp_path_factory.mktemp("appdata")
    outside = tmp_path_factory.mktemp("outside")
    rng = np.random.default_rng(1)
    for i in range(13):  # near-identical magenta squares: their own nearest neighbours for any model
        arr = np.clip(np.array([220, 30, 200]) + rng.normal(0, 6, (40, 40, 3)), 0, 255).astype(np.uint8)
        path = outside / "custom_images" / "magenta" / f"{i:04d}.png"
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(arr).save(path)
    _OUTSIDE["query"] = outside / "query.png"
    path.rename(_OUTSIDE["query"])
    if is_complete(CIFAR):
        (data / "cifar10").symlink_to(CIFAR, target_is_directory=True)
        items = cifar10_items("train", root=CIFAR, limit=200, seed=7)
        query = CIFAR / "test" / "dog" / "0003.jpg"
    else:
        items, query = _generated(data)
    try:
        model = get_model("efficientnet_lite0", size=96)
    except ModelUnavailableError:
        model = get_model("pixels")
    url = f"rocksdb:{data / 'kv'}"
    from imgsim_lab.datasets import folder_items

    outside_items = folder_items(outside / "custom_images", label_from_parent=True)
    with open_store(url, NS) as store:
        summary = ingest(items + outside_items, store, [model, get_model("color_hist")], progress=False)
    assert summary.added == len(items) + len(outside_items) == len(items) + 12
    return url, data, model.key, query


@pytest.fixture(scope="module")
def app_url(collection, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """``imgsim app`` on a free loopback port; its whole process group is stopped afterwards."""
    if not CHROMIUM.exists():
        pytest.skip(f"{CHROMIUM} is absent: install Debian's chromium (make system) to run browser tests")
    url, data, model_key, _ = collection
    port = _free_port()
    log_path = tmp_path_factory.mktemp("applog") / "voila.log"
    env = {**os.environ, "IMGSIM_DATA_DIR": str(data)}
    with open(log_path, "wb") as log:
        proc = subprocess.Popen([*IMGSIM, "app", "--port", str(port), "--kv", url, "--namespace", NS,
                                 "--model", model_key], cwd=REPO, env=env, stdout=log,
                                stderr=subprocess.STDOUT, start_new_session=True)
    try:
        deadline = time.monotonic() + 60
        while "imgsim search app: http" not in log_path.read_text(errors="replace"):
            if proc.poll() is not None or time.monotonic() > deadline:
                pytest.fail(f"imgsim app did not start:\n{log_path.read_text(errors='replace')[-3000:]}")
            time.sleep(0.25)
        _SERVER["pid"] = proc.pid
        yield f"http://127.0.0.1:{port}/"
    finally:
        stop_group(proc)


def _drop(page, data: bytes, name: str, mime: str) -> None:
    """Drop a file on the drop zone the way a browser does (a DataTransfer holding a File)."""
    page.evaluate("""([b64, name, mime]) => {
        const bytes = Uint8Array.from(atob(b64), c => c.charCodeAt(0));
        const dt = new DataTransfer();
        dt.items.add(new File([bytes], name, { type: mime }));
        const zone = document.querySelector(".imgsim-dropzone");
        for (const type of ["dragenter", "dragover", "drop"]) {
            zone.dispatchEvent(new DragEvent(type, { dataTransfer: dt, bubbles: true, cancelable: true }));
        }
    }""", [base64.b64encode(data).decode("ascii"), name, mime])


def _results(card) -> list[tuple[int, float, str]]:
    out = []
    for r in card.locator(".imgsim-result").all():
        score = float(r.locator(".imgsim-score").inner_text().split()[-1])
        out.append((int(r.get_attribute("data-id")), score, r.locator(".imgsim-source").inner_text()))
    return out


def test_upload_search_duplicate_and_reject_in_the_browser(collection, app_url: str,
                                                           tmp_path: Path) -> None:
    from playwright.sync_api import expect, sync_playwright

    _, _, _, query = collection
    data = query.read_bytes()
    errors: list[str] = []
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=str(CHROMIUM), args=[
            "--no-sandbox", "--disable-gpu", "--disable-background-networking"])
        try:
            page = browser.new_page(viewport={"width": 1280, "height": 900})
            page.on("pageerror", lambda exc: errors.append(str(exc)))
            page.goto(app_url, timeout=TIMEOUT_MS)
            status = page.locator(".imgsim-status")
            expect(status).to_contain_text("Ready", timeout=TIMEOUT_MS)

            # 1. a new image dropped on the drop zone: added, five results with scores
            _drop(page, data, "query.jpg", "image/jpeg")
            added = page.locator(".imgsim-card-added")
            expect(added.locator(".imgsim-result")).to_have_count(5, timeout=TIMEOUT_MS)
            feedback = added.locator(".imgsim-feedback").inner_text()
            new_id = int(re.search(r"added to the collection as id (\d+)", feedback).group(1))
            first = _results(added)
            assert all(-1.0 <= s <= 1.0 for _, s, _ in first)
            assert [s for _, s, _ in first] == sorted((s for _, s, _ in first), reverse=True)
            assert new_id not in [i for i, _, _ in first]
            expect(added.locator(".imgsim-result img")).to_have_count(5)  # previews of the matches
            expect(added.locator(".imgsim-query img")).to_have_count(1)

            # 2. the same file through the file chooser: duplicate, same results, never itself
            with page.expect_file_chooser() as chooser:
                page.locator(".imgsim-choose").click()
            chooser.value.set_files(str(query))
            dup = page.locator(".imgsim-card-duplicate")
            expect(dup.locator(".imgsim-feedback")).to_contain_text(
                f"already in the collection as id {new_id}", timeout=TIMEOUT_MS)
            expect(dup.locator(".imgsim-result")).to_have_count(5)
            assert [i for i, _, _ in _results(dup)] == [i for i, _, _ in first]
            page.screenshot(path=str(SCREENSHOTS / "app.png"), full_page=True)

            # 3. a non-image chosen through the drop zone's own file picker: rejected
            bad = tmp_path / "notes.txt"
            bad.write_text("not an image at all\n")
            page.locator(".imgsim-dropzone input[type=file]").set_input_files(str(bad))
            rejected = page.locator(".imgsim-card-rejected .imgsim-feedback")
            expect(rejected).to_contain_text("rejected: this is not an image file", timeout=TIMEOUT_MS)
            expect(page.locator(".imgsim-result")).to_have_count(0)
            page.screenshot(path=str(SCREENSHOTS / "app-rejected.png"), full_page=True)

            # 4. still working after the rejection
            _drop(page, data, "again.jpg", "image/jpeg")
            expect(page.locator(".imgsim-card-duplicate .imgsim-result")).to_have_count(5, timeout=TIMEOUT_MS)
            assert "Traceback" not in page.content()
        finally:
            browser.close()
    assert not errors, errors




def _browser(pw):
    return pw.chromium.launch(executable_path=str(CHROMIUM), args=[
        "--no-sandbox", "--disable-gpu", "--disable-background-networking"])


def _columns(card) -> dict[str, list[int]]:
    cols: dict[str, list[int]] = {}
    for r in card.locator(".imgsim-result").all():
        cols.setdefault(r.get_attribute("data-model"), []).append(int(r.get_attribute("data-id")))
    return cols


def test_choose_files_oversize_then_compare_models_and_switch(collection, app_url: str,
                                                              tmp_path: Path) -> None:
    """Oversize pick refused in the browser (limit in MB), the button still works; two models
    side by side with shared images marked; a model switch re-runs the query; previews of a
    folder outside the data dir."""
    from playwright.sync_api import expect, sync_playwright

    _, data_dir, model_key, query = collection
    outside_query = _OUTSIDE.get("query")
    huge = tmp_path / "huge.bmp"
    with open(huge, "wb") as f:  # 27 MB: only its size matters, it must never be read
        f.write(b"BM" + b"\0" * (27 * 1000 * 1000))
    errors: list[str] = []
    external: list[str] = []
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    with sync_playwright() as pw:
        browser = _browser(pw)
        try:
            page = browser.new_page(viewport={"width": 1400, "height": 1000})
            page.on("pageerror", lambda exc: errors.append(str(exc)))
            page.on("request", lambda r: external.append(r.url)
                    if not r.url.startswith(("http://127.0.0.1", "blob:", "data:")) else None)
            page.goto(app_url, timeout=TIMEOUT_MS)
            status = page.locator(".imgsim-status")
            expect(status).to_contain_text("Ready", timeout=TIMEOUT_MS)

            # 1. a 27 MB file through "Choose files": refused before upload, limit in MB
            with page.expect_file_chooser() as chooser:
                page.locator(".imgsim-choose").click()
            chooser.value.set_files(str(huge))
            refused = page.locator(".imgsim-card-rejected .imgsim-feedback")
            expect(refused).to_contain_text("huge.bmp was not uploaded: it is 27.0 MB, over the upload "
                                            "limit of 10.4 MB", timeout=TIMEOUT_MS)
            expect(status).to_contain_text("huge.bmp was not uploaded")
            page.screenshot(path=str(SCREENSHOTS / "app-oversize.png"), full_page=True)

            # 2. the same button keeps working: a normal pick is searched (this batch's status)
            with page.expect_file_chooser() as chooser:
                page.locator(".imgsim-choose").click()
            chooser.value.set_files(str(query))
            card = page.locator(".imgsim-card").first
            expect(card.locator(".imgsim-result")).to_have_count(5, timeout=TIMEOUT_MS)
            expect(page.locator(".imgsim-card-rejected")).to_have_count(0)
            expect(status).not_to_contain_text("huge.bmp")

            # 3. compare with color_hist: the current query re-runs, two columns of 5
            page.locator(".imgsim-compare-model", has_text="color_hist").locator("input").check()
            expect(page.locator(".imgsim-card .imgsim-result")).to_have_count(10, timeout=TIMEOUT_MS)
            card = page.locator(".imgsim-card").first
            cols = _columns(card)
            assert {k: len(v) for k, v in cols.items()} == {model_key: 5, "color_hist": 5}
            expect(card.locator(".imgsim-column-title")).to_have_text([model_key, "color_hist"])
            shared = set(cols[model_key]) & set(cols["color_hist"])
            expect(card.locator(".imgsim-result.imgsim-shared")).to_have_count(2 * len(shared))
            for r in card.locator(".imgsim-result").all():  # each card names its model
                assert r.locator(".imgsim-model").inner_text() == r.get_attribute("data-model")
            page.screenshot(path=str(SCREENSHOTS / "app-compare.png"), full_page=True)

            # 4. switch the model: the query re-runs under the new model, nothing stale stays
            page.locator(".imgsim-compare-model", has_text="color_hist").locator("input").uncheck()
            expect(page.locator(".imgsim-card .imgsim-result")).to_have_count(5, timeout=TIMEOUT_MS)
            page.locator("select").first.select_option("color_hist")
            expect(page.locator(f".imgsim-card .imgsim-result[data-model='{model_key}']")).to_have_count(
                0, timeout=TIMEOUT_MS)
            expect(page.locator(".imgsim-card .imgsim-result[data-model='color_hist']")).to_have_count(5)

            # 5. previews of images ingested from a folder outside the data dir
            if outside_query is not None:
                page.locator(".imgsim-dropzone input[type=file]").set_input_files(str(outside_query))
                card = page.locator(".imgsim-card").first
                expect(card.locator(".imgsim-result")).to_have_count(5, timeout=TIMEOUT_MS)
                outside = card.locator(".imgsim-result", has_text="custom_images/magenta/")
                expect(outside).to_have_count(5)  # all five from the folder outside the data dir
                expect(outside.locator("img")).to_have_count(5)  # ... each with its preview
                expect(card.locator(".imgsim-noimg")).to_have_count(0)
                page.screenshot(path=str(SCREENSHOTS / "app-outside-folder.png"), full_page=True)
            assert "Traceback" not in page.content()
        finally:
            browser.close()
    assert not errors, errors
    assert not external, external  # no CDN: the page renders offline


def test_closed_tabs_leave_no_kernels(collection, app_url: str) -> None:
    """5 visits, then every tab closed: at most one kernel remains shortly after."""
    import psutil
    from playwright.sync_api import expect, sync_playwright

    def kernels() -> int:
        n = 0
        for child in psutil.Process(_SERVER["pid"]).children(recursive=True):
            try:
                n += child.status() != psutil.STATUS_ZOMBIE and "ipykernel" in " ".join(child.cmdline())
            except psutil.Error:  # exited meanwhile
                pass
        return n

    before = kernels()
    with sync_playwright() as pw:
        browser = _browser(pw)
        try:
            ctx = browser.new_context()
            pages = []
            for _ in range(5):
                page = ctx.new_page()
                page.goto(app_url, timeout=TIMEOUT_MS)
                expect(page.locator(".imgsim-status")).to_contain_text("Ready", timeout=TIMEOUT_MS)
                pages.append(page)
            assert kernels() >= before + 5
            for page in pages:
                page.close(run_before_unload=True)
            # at most one of these five may remain (``before``: earlier tests' tabs, which their
            # browsers closed without an unload event, left to the idle culler)
            deadline = time.monotonic() + 30
            while kernels() > before + 1 and time.monotonic() < deadline:
                time.sleep(0.5)
            assert kernels() <= before + 1, f"{kernels() - before} of 5 kernels still running"
        finally:
            browser.close()


def test_search_notebook_in_jupyterlab(collection, tmp_path: Path) -> None:
    """JupyterLab itself: open 02_search.ipynb, run all cells, drop an image, see its top-5."""
    import shutil

    from playwright.sync_api import expect, sync_playwright

    if not CHROMIUM.exists():
        pytest.skip(f"{CHROMIUM} is absent")
    url, data, model_key, query = collection
    root = tmp_path / "lab"
    (root / "notebooks").mkdir(parents=True)
    shutil.copy(REPO / "notebooks" / "02_search.ipynb", root / "notebooks")  # autosave stays out of the repo
    port = _free_port()
    env = {**os.environ, "IMGSIM_DATA_DIR": str(data), "IMGSIM_KV_URL": url, "IMGSIM_NAMESPACE": NS,
           "IMGSIM_APP_MODEL": model_key, "IMGSIM_APP_ADD": "0",
           "JUPYTER_CONFIG_DIR": str(tmp_path / "jcfg"), "JUPYTER_RUNTIME_DIR": str(tmp_path / "jrt"),
           "JUPYTERLAB_WORKSPACES_DIR": str(tmp_path / "jws")}
    log_path = tmp_path / "lab.log"
    with open(log_path, "wb") as log:
        proc = subprocess.Popen([sys.executable, "-m", "jupyterlab", "--no-browser", f"--port={port}",
                                 "--ServerApp.ip=127.0.0.1", "--IdentityProvider.token=",
                                 "--ServerApp.password=", "--allow-root",
                                 f"--ServerApp.root_dir={root}", "--LabApp.news_url=None",
                                 "--LabApp.check_for_updates_class=jupyterlab.NeverCheckForUpdate"],
                                cwd=root, env=env, stdout=log, stderr=subprocess.STDOUT,
                                start_new_session=True)
    try:
        deadline = time.monotonic() + 90
        while f":{port}/" not in log_path.read_text(errors="replace"):
            if proc.poll() is not None or time.monotonic() > deadline:
                pytest.fail(f"jupyter lab did not start:\n{log_path.read_text(errors='replace')[-3000:]}")
            time.sleep(0.5)
        with sync_playwright() as pw:
            browser = _browser(pw)
            try:
                page = browser.new_page(viewport={"width": 1400, "height": 1000})
                page.goto(f"http://127.0.0.1:{port}/lab/tree/notebooks/02_search.ipynb", timeout=TIMEOUT_MS)
                expect(page.locator(".jp-Notebook")).to_be_visible(timeout=TIMEOUT_MS)
                select = page.locator(".jp-Dialog .jp-mod-accept", has_text="Select")
                try:  # Lab asks which kernel to start: the notebook's own (python3)
                    select.wait_for(timeout=20_000)
                    select.click()
                except Exception:  # noqa: BLE001 - no dialog: the kernel started by itself
                    pass
                page.locator(".lm-MenuBar-itemLabel", has_text="Run").first.click()
                page.locator(".lm-Menu-itemLabel", has_text="Run All Cells").first.click()
                status = page.locator(".imgsim-status")
                SCREENSHOTS.mkdir(parents=True, exist_ok=True)
                try:
                    expect(status).to_contain_text("Ready", timeout=TIMEOUT_MS)
                except AssertionError:
                    page.screenshot(path=str(SCREENSHOTS / "jupyterlab-failed.png"), full_page=True)
                    raise
                _drop(page, query.read_bytes(), "query.jpg", "image/jpeg")
                card = page.locator(".imgsim-card")
                expect(card.locator(".imgsim-result")).to_have_count(5, timeout=TIMEOUT_MS)
                expect(card.locator(".imgsim-result img")).to_have_count(5)
                SCREENSHOTS.mkdir(parents=True, exist_ok=True)
                page.screenshot(path=str(SCREENSHOTS / "jupyterlab-search.png"), full_page=True)
                assert "Traceback" not in page.content()
            finally:
                browser.close()
    finally:
        stop_group(proc)
