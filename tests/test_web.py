"""The web page in a real headless Chromium, driven as a person would: upload a crop, read the results, click one."""
from __future__ import annotations

import os
import re
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from .serve_fixtures import pets_index, pku_index, pku_people  # noqa: F401  (fixtures)

CHROMIUM = Path(os.environ.get("REID_ENGINE_CHROMIUM", "/usr/bin/chromium"))
ARGS = ["--no-sandbox", "--headless", "--disable-gpu", "--disable-background-networking",
        "--disable-component-update", "--disable-sync", "--no-first-run"]

sync_api = pytest.importorskip("playwright.sync_api", reason="playwright is not installed (pip install -e '.[test]')")
sync_api.expect.set_options(timeout=30_000)  # a first query may build re-ranking state; two shared cores
if not CHROMIUM.is_file():
    pytestmark = pytest.mark.skip(reason=f"no Chromium at {CHROMIUM} (apt-get install chromium, or set REID_ENGINE_CHROMIUM)")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _serve(index: Path):
    """``reid-engine serve`` in a child process; yields its base URL."""
    port = _free_port()
    exe = shutil.which("reid-engine") or sys.executable
    cmd = ([exe] if exe.endswith("reid-engine") else [exe, "-m", "reid_engine.cli"]) + [
        "serve", "--index", str(index), "--port", str(port)]
    env = {k: v for k, v in os.environ.items() if k != "REID_ENGINE_TOKEN"}
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=env)
    url = f"http://127.0.0.1:{port}"
    import urllib.request

    deadline = time.time() + 60
    while time.time() < deadline:
        try:
            with urllib.request.urlopen(url + "/healthz", timeout=1) as r:
                if r.status == 200:
                    break
        except OSError:
            if proc.poll() is not None:
                raise RuntimeError(f"server exited: {proc.stdout.read().decode()[-2000:]}")
            time.sleep(0.2)
    else:
        proc.kill()
        raise RuntimeError("server did not come up within 60 s")
    return proc, url


@pytest.fixture(scope="module")
def pku_server(pku_index):
    proc, url = _serve(pku_index)
    yield url
    proc.terminate()
    proc.wait(10)


@pytest.fixture(scope="module")
def browser():
    with sync_api.sync_playwright() as p:
        b = p.chromium.launch(executable_path=str(CHROMIUM), args=ARGS, headless=True)
        yield b
        b.close()


def _search_and_click(page, url: str, query: Path, person: str, shots: Path, name: str) -> None:
    expect = sync_api.expect
    page.goto(url)
    expect(page.locator("#index-info")).to_contain_text("64 crops")
    page.set_input_files("#file", str(query))
    expect(page.locator("#status")).to_contain_text(f"results for {query.name}")
    first = page.locator(".card").first
    expect(first.locator(".who")).to_have_text(f"person {person}")
    expect(first.locator(".rank")).to_have_text("#1")
    page.screenshot(path=str(shots / f"{name}_upload.png"), full_page=False)
    # click the third result: a new search from that crop, which comes back first at distance 0
    third = page.locator(".card").nth(2)
    crop_id = third.get_attribute("data-id")
    third.locator("button.thumb").click()
    expect(page.locator("#status")).to_contain_text(f"results for crop {crop_id}")
    expect(page.locator(".card").first).to_have_attribute("data-id", crop_id)
    expect(page.locator(".card").first.locator(".dist")).to_have_text("0.000")
    expect(page.locator("#drop-text")).to_have_text(f"query: crop {crop_id}")
    page.screenshot(path=str(shots / f"{name}_click.png"), full_page=False)


def test_search_by_upload_then_by_click(browser, pku_server, pku, tmp_path_factory):
    shots = tmp_path_factory.mktemp("screenshots")
    person = pku_people(pku)[3]
    query = pku / person / "01_1.png"
    for name, viewport in (("desktop", {"width": 1280, "height": 800}), ("phone", {"width": 390, "height": 844})):
        context = browser.new_context(viewport=viewport)
        page = context.new_page()
        errors: list[str] = []
        page.on("pageerror", lambda e: errors.append(str(e)))
        page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
        _search_and_click(page, pku_server, query, person, shots, name)
        assert not errors, errors
        # nothing sticks out sideways at this size
        assert page.evaluate("document.documentElement.scrollWidth") <= viewport["width"]
        context.close()
    print(f"screenshots in {shots}")


def test_filters_narrow_the_results(browser, pku_server, pku):
    expect = sync_api.expect
    page = browser.new_page(viewport={"width": 1280, "height": 800})
    page.goto(pku_server)
    expect(page.locator("#index-info")).to_contain_text("64 crops")
    page.fill("#k", "5")
    page.set_input_files("#file", str(pku / pku_people(pku)[0] / "01_2.png"))
    expect(page.locator(".card")).to_have_count(5)
    page.locator('input[name="camera"][value="02"]').uncheck()  # no camera left: nothing may match
    expect(page.locator("#status")).to_contain_text("0 results")
    page.close()


def test_crops_with_no_camera_follow_the_none_box(browser, pku, osnet_onnx, tmp_path_factory):
    """Crops indexed without a camera show as '(none)'; that box keeps or drops exactly them (its value is
    empty, which no camera filter may name)."""
    from reid_engine import Engine
    from reid_engine.ingest.crops import CropItem

    expect = sync_api.expect
    people = pku_people(pku)[:3]
    items = [CropItem(f, {"pid": p, "camera": "02"}) for p in people for f in sorted((pku / p).glob("02_*.png"))]
    items += [CropItem(f, {"pid": p}) for p in people for f in sorted((pku / p).glob("01_*.png"))[:2]]
    folder = tmp_path_factory.mktemp("mixed_cameras") / "idx"
    with Engine.create(folder, weights=osnet_onnx) as engine:
        engine.add(items, show_progress=False)
    n_none = 2 * len(people)
    proc, url = _serve(folder)
    try:
        page = browser.new_page(viewport={"width": 1280, "height": 800})
        page.goto(url)
        expect(page.locator("#index-info")).to_contain_text(f"{len(items)} crops")
        page.fill("#k", "50")
        page.set_input_files("#file", str(pku / people[0] / "01_1.png"))
        expect(page.locator(".card")).to_have_count(len(items))
        page.locator('input[name="camera"][value="02"]').uncheck()  # only the crops with no camera
        expect(page.locator("#status")).to_have_text(re.compile(rf"^{n_none} results "))
        metas = page.locator(".card .meta").all_inner_texts()
        assert len(metas) == n_none and all("camera -" in t and "camera 02" not in t for t in metas), metas
        page.locator('input[name="camera"][value="02"]').check()
        page.locator('input[name="camera"][value=""]').uncheck()  # every crop but those
        expect(page.locator("#status")).to_have_text(re.compile(rf"^{len(items) - n_none} results "))
        assert all("camera 02" in t for t in page.locator(".card .meta").all_inner_texts())
        page.close()
    finally:
        proc.terminate()
        proc.wait(10)


def test_candidates_and_search_beam_go_with_the_query(browser, pku_server, pku):
    """The Ranking box's candidates (the re-ranking's pool) and search beam are sent with the query, and the
    results follow: with 'kr' on a pool of 2 the answers past rank 2 are plain cosine's."""
    import json

    expect = sync_api.expect
    page = browser.new_page(viewport={"width": 1280, "height": 800})
    page.goto(pku_server)
    expect(page.locator("#index-info")).to_contain_text("64 crops")
    page.fill("#k", "8")
    page.select_option("#rerank", "none")
    page.set_input_files("#file", str(pku / pku_people(pku)[0] / "01_2.png"))
    expect(page.locator(".card")).to_have_count(8)

    def body_of(request) -> dict:
        try:  # a search from an upload is multipart; one from an indexed crop is JSON
            return json.loads(request.post_data or "{}")
        except (ValueError, UnicodeDecodeError):
            return {}

    def search(action, rerank):
        """The JSON search ``action`` starts (the form also searches on every change: those are skipped)."""
        with page.expect_response(lambda r: r.url.endswith("/query")
                                  and body_of(r.request).get("rerank") == rerank) as resp:
            action()
        return body_of(resp.value.request), json.loads(resp.value.text())

    page.fill("#pool", "2")
    page.fill("#ef-search", "48")
    sent, cosine = search(lambda: page.locator(".card").first.click(), "none")  # from an indexed crop (JSON)
    assert (sent["pool"], sent["ef_search"]) == (2, 48)
    sent, body = search(lambda: page.select_option("#rerank", "kr"), "kr")
    assert (sent["pool"], sent["ef_search"], sent["crop_ids"]) == (2, 48, [cosine["results"][0]["hits"][0]["id"]])
    want = [h["id"] for h in cosine["results"][0]["hits"]]
    got = [h["id"] for h in body["results"][0]["hits"]]
    assert got[2:] == want[2:] and sorted(got[:2]) == sorted(want[:2])
    page.close()


def test_track_view_on_footage(browser, pets_index, tmp_path_factory):
    expect = sync_api.expect
    proc, url = _serve(pets_index)
    try:
        page = browser.new_page(viewport={"width": 1280, "height": 800})
        page.goto(url)
        expect(page.locator("#index-info")).to_contain_text("tracks")
        crop = tmp_path_factory.mktemp("pets_query") / "query.png"
        import urllib.request

        crop.write_bytes(urllib.request.urlopen(url + "/crops/3/image").read())
        page.set_input_files("#file", str(crop))
        expect(page.locator(".card").first.locator(".track")).to_contain_text("track")
        page.locator(".card").first.get_by_role("button", name="appearances").click()
        expect(page.locator("#track-view")).to_be_visible()
        expect(page.locator("#track-status")).to_contain_text("appearances")
        expect(page.locator(".lane .cam").first).to_have_text("view1")
        expect(page.locator(".track-detail h3")).to_contain_text("camera view1")
        shots = tmp_path_factory.mktemp("screenshots_pets")
        page.screenshot(path=str(shots / "track_view.png"))
        print(f"screenshot in {shots}")
        page.close()
    finally:
        proc.terminate()
        proc.wait(10)


def test_api_docs_page_lists_the_operations_offline(browser, pku_server):
    page = browser.new_page(viewport={"width": 1280, "height": 800})
    page.goto(pku_server + "/docs")
    page.wait_for_selector(".op")
    text = page.inner_text("#ops")
    assert "/query" in text and "/crops/{crop_id}/image" in text and "post" in text.lower()
    page.close()
