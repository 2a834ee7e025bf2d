"""Reports: JSON document, text tables, and the self-contained HTML page of ranked lists."""
from __future__ import annotations

import json
import shutil
import subprocess
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pytest

from reid_engine.eval.datasets import Sample, Split
from reid_engine.eval.metrics import evaluate_distmat
from reid_engine.eval.report import (
    build_report,
    dataset_statistics,
    format_sweep_table,
    format_table,
    write_json_report,
)
from reid_engine.eval.runner import split_labels
from reid_engine.eval.visualize import PAGE_NAME, select_queries, write_ranked_lists_html



def write_crops(folder: Path, n: int, seed: int) -> list[Path]:
    import cv2

    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    paths = [folder / f"crop_{i:03d}.png" for i in range(n)]
    for p in paths:
        cv2.imwrite(str(p), rng.integers(0, 256, (64, 32, 3), dtype=np.uint8))
    return paths


@pytest.fixture
def scored(tmp_path: Path):
    """A 6-query, 24-crop split on real image files, its distances and its result."""
    paths = write_crops(tmp_path / "crops", 30, seed=4)
    rng = np.random.default_rng(4)
    query = [Sample(paths[i], pid=i % 3, camid=1) for i in range(6)]
    gallery = [Sample(paths[6 + j], pid=j % 4, camid=1 + (j % 3), clothes_id=None) for j in range(24)]
    split = Split("toy", query, gallery, format="csv", protocol="query cam 1")
    dist = rng.random((6, 24))
    result = evaluate_distmat(dist, **split_labels(split))
    ranked = np.argsort(dist, axis=1, kind="stable")
    dists = np.take_along_axis(dist, ranked, axis=1)
    return split, result, ranked, dists


def test_statistics_and_json_report(tmp_path: Path, scored):
    split, result, _, _ = scored
    stats = dataset_statistics(split)
    assert (stats["num_query"], stats["num_gallery"], stats["num_ids"], stats["num_cameras"]) == (6, 24, 4, 3)
    assert (stats["num_query_ids"], stats["num_gallery_ids"]) == (3, 4)
    report = build_report(result, split, {"encoder": "tiny", "rerank": None, "k": 24}, {"encode": 1.23456789})
    assert report["rank1"] == pytest.approx(100 * result.rank1) and report["unit"] == "percent"
    assert report["mINP"] == pytest.approx(100 * result.mINP)
    path = write_json_report(report, tmp_path / "out" / "report.json")
    loaded = json.loads(path.read_text())
    assert loaded["metrics"]["num_valid"] == result.num_valid
    assert loaded["settings"]["encoder"] == "tiny" and loaded["timings"]["encode"] == 1.2346
    assert loaded["dataset"]["num_gallery"] == 24
    assert not list((tmp_path / "out").glob("*.tmp"))


def test_json_report_has_no_nan(tmp_path: Path):
    doc = {"a": float("nan"), "b": np.float32(1.5), "c": np.arange(2), "d": Path("x")}
    loaded = json.loads(write_json_report(doc, tmp_path / "r.json").read_text())
    assert loaded == {"a": None, "b": 1.5, "c": [0, 1], "d": "x"}


def test_text_tables(scored):
    split, result, _, _ = scored
    text = format_table(build_report(result, split, {"encoder": "tiny", "k": 24}, {"query": 0.5}))
    assert f"{100 * result.mAP:.2f}" in text and f"{100 * result.rank1:.2f}" in text
    assert "Rank-1" in text and "mINP" in text and "encoder=tiny" in text and "(percent)" in text
    sweep = format_sweep_table(
        [
            {"rerank": "none", "fusion": None, "rank1": 74.66, "rank5": 90.0, "mAP": 60.57, "mINP": 30.1,
             "seconds": 0.2},
            {"rerank": "kr", "fusion": "attr", "rank1": 80.0, "rank5": 91.0, "mAP": 70.0, "mINP": 40.0, "seconds": 1.0},
        ]
    )
    lines = sweep.splitlines()
    assert len(lines) == 4 and lines[2].split()[:4] == ["none", "none", "74.66", "90.00"]
    assert lines[3].split()[:2] == ["kr", "attr"]


class PageParser(HTMLParser):
    """Collects images and table cells; fails on unbalanced tags."""

    VOID = {"img", "meta", "br", "link", "hr", "input"}

    def __init__(self) -> None:
        super().__init__()
        self.stack: list[str] = []
        self.imgs: list[dict[str, str]] = []
        self.rows: list[list[tuple[str, dict[str, str]]]] = []
        self.cell_class = ""

    def handle_starttag(self, tag, attrs):
        a = {k: v or "" for k, v in attrs}
        if tag not in self.VOID:
            self.stack.append(tag)
        if tag == "tr":
            self.rows.append([])
        if tag == "td":
            self.cell_class = a.get("class", "")
        if tag == "img":
            self.imgs.append(a)
            self.rows[-1].append((self.cell_class, a))

    def handle_endtag(self, tag):
        assert self.stack and self.stack[-1] == tag, f"unbalanced </{tag}> (open: {self.stack[-3:]})"
        self.stack.pop()


def parse_page(path: Path) -> PageParser:
    parser = PageParser()
    text = path.read_text(encoding="utf-8")
    assert text.startswith("<!DOCTYPE html>")
    parser.feed(text)
    parser.close()
    assert parser.stack == []
    return parser


def test_html_page_is_valid_and_self_contained(tmp_path: Path, scored):
    split, result, ranked, dists = scored
    out = tmp_path / "report"
    page = write_ranked_lists_html(out, split, result, ranked, dists, n=2, top=5)
    assert page == out / PAGE_NAME
    parsed = parse_page(page)
    assert len(parsed.rows) == 4  # 2 worst + 2 best
    for img in parsed.imgs:
        src = img["src"]
        assert not src.startswith(("/", "file:", "http")) and ".." not in src
        assert (out / src).is_file()
    by_path = {str(s.path): s for s in split.query + split.gallery}
    for row in parsed.rows:
        (qclass, qimg), hits = row[0], row[1:]
        assert qclass == "query"
        q = by_path[qimg["title"]]
        assert len(hits) == 5
        for cls, img in hits:
            g = by_path[img["title"]]
            assert cls == ("hit ok" if g.pid == q.pid else "hit wrong")
            assert not (g.pid == q.pid and g.camid == q.camid)  # ignored crops are not shown
    # the folder still works when moved
    moved = tmp_path / "elsewhere"
    shutil.move(str(out), moved)
    assert all((moved / img["src"]).is_file() for img in parse_page(moved / PAGE_NAME).imgs)


def test_worst_and_best_selection(scored):
    _, result, _, _ = scored
    worst, best = select_queries(result, 2)
    ap = result.ap
    valid = np.flatnonzero(result.valid)
    assert ap[worst[0]] == np.nanmin(ap) and ap[best[0]] == np.nanmax(ap)
    assert set(worst) <= set(valid) and set(best) <= set(valid)
    assert all(ap[w] <= ap[b] for w in worst for b in best)


def test_unreadable_image_gets_a_placeholder(tmp_path: Path, scored):
    split, result, ranked, dists = scored
    split.gallery[int(ranked[0, 0])].path.write_bytes(b"broken")
    page = write_ranked_lists_html(tmp_path / "r", split, result, ranked, dists, n=6)
    assert all((tmp_path / "r" / img["src"]).stat().st_size > 0 for img in parse_page(page).imgs)


CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
LOAD_CHECK = """<script>
window.addEventListener('load', function () {
  var imgs = Array.prototype.slice.call(document.images);
  var bad = imgs.filter(function (i) { return !(i.complete && i.naturalWidth > 0); });
  document.body.setAttribute('data-images', imgs.length + ':' + bad.length);
});
</script>"""


@pytest.mark.skipif(CHROMIUM is None, reason="chromium is not installed")
def test_page_loads_every_image_in_headless_chromium(tmp_path: Path, scored):
    split, result, ranked, dists = scored
    page = write_ranked_lists_html(tmp_path / "r", split, result, ranked, dists, n=3)
    n_imgs = len(parse_page(page).imgs)
    probe = page.with_name("probe.html")  # the page plus a script that reports unloaded images
    probe.write_text(page.read_text(encoding="utf-8").replace("</body>", LOAD_CHECK + "</body>"), encoding="utf-8")
    flags = [
        "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
        "--disable-component-update", "--disable-sync", "--no-first-run", "--disable-dev-shm-usage",
        f"--user-data-dir={tmp_path / 'profile'}",
    ]
    dom = subprocess.run(
        [CHROMIUM, *flags, "--dump-dom", probe.as_uri()], capture_output=True, text=True, timeout=90
    ).stdout
    assert f'data-images="{n_imgs}:0"' in dom
    shot = tmp_path / "shot.png"
    subprocess.run([CHROMIUM, *flags, "--window-size=1200,900", f"--screenshot={shot}", page.as_uri()],
                   capture_output=True, timeout=90)
    assert shot.is_file() and shot.stat().st_size > 10_000
    # and it notices a missing thumbnail
    gone = next((tmp_path / "r" / "ranked_lists_files").iterdir())
    gone.unlink()
    n_gone = sum(img["src"].endswith(gone.name) for img in parse_page(page).imgs)
    dom = subprocess.run(
        [CHROMIUM, *flags, "--dump-dom", probe.as_uri()], capture_output=True, text=True, timeout=90
    ).stdout
    assert n_gone >= 1 and f'data-images="{n_imgs}:{n_gone}"' in dom
