"""The search app as a web page: ``imgsim app`` (Voila) driven by headless Chromium.

Ingests 200 CIFAR-10 images (or generated ones when CIFAR-10 is not set up) into a tmp
RocksDB store, serves the page on a free loopback port, then: drops a real image on the
drop zone (five results with scores), chooses the same file with the file chooser (the
duplicate message), and drops a non-image (the rejection). Screenshots go to
``data/screenshots/`` of the repository.
"""

from __future__ import annotations

import base64
import os
import re
import signal
import socket
import subprocess
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
IMGSIM = REPO / ".venv" / "bin" / "imgsim"
NS = "browser"
TIMEOUT_MS = 90_000


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


@pytest.fixture(scope="module")
def collection(tmp_path_factory: pytest.TempPathFactory) -> tuple[str, Path, str, Path]:
    """(store URL, data dir, model key, query image file) of a small ingested collection."""
    data = tmp_path_factory.mktemp("appdata")
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
    with open_store(url, NS) as store:
        summary = ingest(items, store, [model], progress=False)
    assert summary.added == len(items)
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
        proc = subprocess.Popen([str(IMGSIM), "app", "--port", str(port), "--kv", url, "--namespace", NS,
                                 "--model", model_key], cwd=REPO, env=env, stdout=log,
                                stderr=subprocess.STDOUT, start_new_session=True)
    try:
        deadline = time.monotonic() + 60
        while "imgsim search app: http" not in log_path.read_text(errors="replace"):
            if proc.poll() is not None or time.monotonic() > deadline:
                pytest.fail(f"imgsim app did not start:\n{log_path.read_text(errors='replace')[-3000:]}")
            time.sleep(0.25)
        yield f"http://127.0.0.1:{port}/"
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


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
        score = float(r.locator(".imgsim-score").inner_text())
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
                page.locator(".widget-upload").click()
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
            expect(rejected).to_contain_text("rejected (not_an_image)", timeout=TIMEOUT_MS)
            expect(page.locator(".imgsim-result")).to_have_count(0)
            page.screenshot(path=str(SCREENSHOTS / "app-rejected.png"), full_page=True)

            # 4. still working after the rejection
            _drop(page, data, "again.jpg", "image/jpeg")
            expect(page.locator(".imgsim-card-duplicate .imgsim-result")).to_have_count(5, timeout=TIMEOUT_MS)
            assert "Traceback" not in page.content()
        finally:
            browser.close()
    assert not errors, errors


