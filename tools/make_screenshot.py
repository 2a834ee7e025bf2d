"""Remake ``docs/web-page.png``: the web page at 1280x800 after a search, on a synthetic demo index.

No dataset image may appear in the repository, so the gallery is drawn here: simple person-like figures
(head, torso, arms, legs, some with a bag) in per-person colours on plain per-camera backgrounds, seen
by cameras "cam1" and "cam2" with timestamps. They are indexed with the ONNX OSNet weights, served by
``reid-engine serve`` on 127.0.0.1, and a held-out drawing of one person is uploaded as the query in a
headless Debian Chromium driven by playwright.

    python tools/make_screenshot.py                       # writes docs/web-page.png
    python tools/make_screenshot.py --out /tmp/page.png --keep /tmp/reid_demo
"""
from __future__ import annotations

import argparse
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import cv2
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from reid_engine.assets import shared_path  # noqa: E402

HOST = "127.0.0.1"
CHROMIUM = Path(os.environ.get("REID_ENGINE_CHROMIUM", "/usr/bin/chromium"))
CHROMIUM_ARGS = ["--no-sandbox", "--headless", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--no-first-run"]
ROOT = Path(__file__).resolve().parents[1]

# (shirt, trousers, skin, hair, bag) in BGR; bag None = no bag
PEOPLE = [
    ((40, 40, 200), (60, 50, 40), (140, 170, 220), (30, 30, 40), None),
    ((200, 120, 30), (40, 40, 40), (120, 150, 200), (20, 20, 20), (30, 90, 140)),
    ((60, 170, 60), (130, 110, 90), (150, 180, 225), (40, 60, 90), None),
    ((30, 200, 230), (90, 60, 30), (100, 130, 180), (25, 25, 25), (20, 20, 20)),
    ((160, 60, 150), (200, 200, 200), (140, 170, 220), (60, 90, 140), None),
    ((230, 230, 230), (30, 30, 120), (90, 120, 170), (15, 15, 15), (60, 140, 60)),
    ((20, 100, 230), (70, 70, 70), (150, 180, 225), (30, 50, 70), None),
    ((120, 120, 120), (120, 60, 20), (120, 150, 200), (50, 50, 50), (180, 60, 60)),
]
CAMERAS = {"cam1": (175, 190, 180), "cam2": (200, 185, 170)}  # plain background per camera
SHOTS = (3, 2)  # drawings per person in cam1, cam2: 8 x 5 = 40 gallery crops
T0 = 1714554000  # 2024-05-01 09:00:00 UTC


def draw_person(person: int, camera: str, shot: int, rng: np.random.Generator) -> np.ndarray:
    """A 128x64 BGR crop of one synthetic person: pose, size and lighting vary per shot."""
    shirt, trousers, skin, hair, bag = PEOPLE[person]
    h, w = 128, 64
    bg = np.array(CAMERAS[camera], np.float32) + rng.normal(0, 6, 3)
    img = np.empty((h, w, 3), np.float32)
    img[:] = bg
    img[96:] *= 0.85  # ground
    light = 0.8 + 0.35 * rng.random()
    cx = w // 2 + int(rng.integers(-4, 5))
    top = 8 + int(rng.integers(-3, 4))
    stride = int(rng.integers(0, 9))

    def col(c: tuple[int, int, int]) -> tuple[float, float, float]:
        return tuple(float(min(255, v * light)) for v in c)  # type: ignore[return-value]

    # legs (stride opens them), torso, arms, head with hair, optional bag
    cv2.line(img, (cx - 5, top + 62), (cx - 5 - stride, top + 108), col(trousers), 9)
    cv2.line(img, (cx + 5, top + 62), (cx + 5 + stride, top + 108), col(trousers), 9)
    cv2.rectangle(img, (cx - 13, top + 22), (cx + 13, top + 64), col(shirt), -1)
    swing = stride // 2
    cv2.line(img, (cx - 15, top + 25), (cx - 18 - swing, top + 58), col(shirt), 6)
    cv2.line(img, (cx + 15, top + 25), (cx + 18 + swing, top + 58), col(shirt), 6)
    cv2.circle(img, (cx - 18 - swing, top + 60), 3, col(skin), -1)
    cv2.circle(img, (cx + 18 + swing, top + 60), 3, col(skin), -1)
    cv2.circle(img, (cx, top + 11), 10, col(skin), -1)
    cv2.ellipse(img, (cx, top + 7), (10, 6), 0, 180, 360, col(hair), -1)
    if bag is not None:
        side = 1 if (person + shot) % 2 else -1
        cv2.rectangle(img, (cx + side * 14, top + 40), (cx + side * 24, top + 58), col(bag), -1)
    img += rng.normal(0, 4, img.shape)
    img = cv2.GaussianBlur(img, (3, 3), 0)
    return np.clip(img, 0, 255).astype(np.uint8)


def make_gallery(folder: Path, seed: int = 7) -> tuple[list[tuple[Path, dict]], Path]:
    """Write the gallery crops and one held-out query crop; ([(path, metadata)], query path)."""
    from reid_engine.ingest.crops import CropItem  # noqa: F401  (the metadata keys below are CropItem's)

    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    items = []
    for p in range(len(PEOPLE)):
        for ci, (camera, shots) in enumerate(zip(CAMERAS, SHOTS)):
            for s in range(shots):
                path = folder / f"p{p + 1:02d}_{camera}_{s}.png"
                cv2.imwrite(str(path), draw_person(p, camera, s, rng))
                ts = T0 + 3600 * ci + 240 * p + 17 * s + int(rng.integers(0, 10))
                items.append((path, {"pid": f"{p + 1:02d}", "camera": camera, "timestamp": float(ts)}))
    query = folder.parent / "query_p04_cam1.png"
    cv2.imwrite(str(query), draw_person(3, "cam1", 9, rng))
    return items, query


def build_index(index: Path, items: list[tuple[Path, dict]], weights: Path) -> None:
    from reid_engine import Engine
    from reid_engine.ingest.crops import CropItem

    if index.exists():
        shutil.rmtree(index)
    with Engine.create(index, weights=weights) as engine:
        engine.add([CropItem(path, meta) for path, meta in items], show_progress=False)


def free_port() -> int:
    with socket.socket() as s:
        s.bind((HOST, 0))
        return int(s.getsockname()[1])


def serve(index: Path, weights: Path) -> tuple[subprocess.Popen, str]:
    """``reid-engine serve`` on 127.0.0.1 in a child process, once /healthz answers; (process, base URL)."""
    port = free_port()
    exe = shutil.which("reid-engine")
    cmd = ([exe] if exe else [sys.executable, "-m", "reid_engine.cli"]) + [
        "serve", "--index", str(index), "--host", HOST, "--port", str(port), "--weights", str(weights)]
    env = {k: v for k, v in os.environ.items() if k != "REID_ENGINE_TOKEN"}
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env)
    url = f"http://{HOST}:{port}"
    deadline = time.time() + 90
    while time.time() < deadline:
        try:
            with urllib.request.urlopen(url + "/healthz", timeout=2) as r:
                if r.status == 200:
                    return proc, url
        except OSError:
            if proc.poll() is not None:
                raise RuntimeError(f"server exited with {proc.returncode}") from None
            time.sleep(0.2)
    proc.kill()
    raise RuntimeError("server did not answer /healthz within 90 s")


def screenshot(url: str, query: Path, out: Path, width: int, height: int) -> None:
    """Open the page, upload the query, wait for the result cards, save a viewport screenshot."""
    from playwright.sync_api import expect, sync_playwright

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS, headless=True)
        try:
            page = browser.new_page(viewport={"width": width, "height": height})
            page.goto(url)
            expect(page.locator("#index-info")).to_contain_text("crops", timeout=30_000)
            page.set_input_files("#file", str(query))
            expect(page.locator("#status")).to_contain_text(f"results for {query.name}", timeout=60_000)
            # every thumbnail decoded (polled from here: the page's CSP forbids wait_for_function's eval)
            deadline = time.time() + 30
            while not page.evaluate(
                "() => [...document.querySelectorAll('.card img')].every(i => i.complete && i.naturalWidth > 0)"
            ):
                if time.time() > deadline:
                    raise RuntimeError("thumbnails did not load within 30 s")
                page.wait_for_timeout(200)
            page.screenshot(path=str(out), full_page=False)
        finally:
            browser.close()


def shrink_png(path: Path, colours: int = 256) -> None:
    """Re-save as a palette PNG: the page has flat colours, so this keeps it sharp and small."""
    from PIL import Image

    with Image.open(path) as im:
        small = im.convert("RGB").quantize(colors=colours, method=Image.Quantize.MEDIANCUT, dither=Image.Dither.NONE)
    small.save(path, optimize=True)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=ROOT / "docs" / "web-page.png")
    ap.add_argument("--weights", type=Path, default=shared_path("weights", "osnet", "osnet_x0_25_msmt17.onnx"))
    ap.add_argument("--keep", type=Path, default=None, help="build the demo here and keep it (default: a temp dir)")
    ap.add_argument("--width", type=int, default=1280)
    ap.add_argument("--height", type=int, default=800)
    args = ap.parse_args(argv)
    if not CHROMIUM.is_file():
        raise SystemExit(f"no Chromium at {CHROMIUM} (apt-get install chromium, or set REID_ENGINE_CHROMIUM)")
    work = args.keep or Path(tempfile.mkdtemp(prefix="reid_demo_"))
    try:
        items, query = make_gallery(work / "crops")
        index = work / "demo"
        build_index(index, items, args.weights)
        proc, url = serve(index, args.weights)
        try:
            screenshot(url, query, args.out, args.width, args.height)
        finally:
            proc.terminate()
            try:
                proc.wait(15)
            except subprocess.TimeoutExpired:
                proc.kill()
        shrink_png(args.out)
    finally:
        if args.keep is None:
            shutil.rmtree(work, ignore_errors=True)
    print(f"{args.out}: {args.out.stat().st_size} bytes ({len(items)} synthetic crops)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
