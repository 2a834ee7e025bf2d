"""HTML page of ranked lists for the worst and best queries (by average precision).

The page is self-contained: small JPEG thumbnails are written beside it and
linked by relative paths, so the folder can be moved or zipped as it is.
Correct matches are framed green, wrong ones red; gallery crops that the
metrics ignore (the query's person seen by the query's camera) are left out,
as in the scores.
"""
from __future__ import annotations

import hashlib
import html
import logging
from pathlib import Path
from typing import Optional, Sequence, Union

import cv2
import numpy as np

from ..assets import resolved
from ..errors import ImageReadError
from ..images import read_image
from .datasets import Sample, Split
from .metrics import EvalResult

log = logging.getLogger(__name__)

PAGE_NAME = "ranked_lists.html"
THUMBS_DIR = "ranked_lists_files"

_CSS = """
body { font-family: system-ui, sans-serif; margin: 1.5em; color: #222; }
h1 { font-size: 1.3em; } h2 { font-size: 1.1em; margin-top: 1.6em; }
table.ranked { border-collapse: separate; border-spacing: 6px 10px; }
td { vertical-align: top; text-align: center; }
figure { margin: 0; }
img { height: 128px; width: auto; display: block; margin: 0 auto; border: 4px solid transparent; }
td.query img { border-color: #3366cc; }
td.hit.ok img { border-color: #1a9c3a; }
td.hit.wrong img { border-color: #d62828; }
figcaption { font-size: 11px; line-height: 1.3; margin-top: 2px; white-space: nowrap; }
td.query figcaption { font-weight: bold; }
.legend span { display: inline-block; padding: 1px 6px; margin-right: 8px; border: 3px solid; }
.note { color: #666; font-size: 12px; }
"""


def _thumbnail(src: Path, folder: Path, max_height: int) -> str:
    """Write a JPEG thumbnail of ``src`` into ``folder`` once per version of the file; return its file name.

    The name hashes the path with the file's size and modification time: a file replaced since an earlier
    report gets a new thumbnail instead of the old picture."""
    try:
        st = src.stat()
        version = f"{st.st_size}:{st.st_mtime_ns}"
    except OSError:
        version = "missing"
    name = hashlib.sha1(f"{resolved(src)}|{version}".encode("utf-8")).hexdigest()[:20] + ".jpg"
    out = folder / name
    if out.is_file():
        return name
    try:
        img = read_image(src)
    except ImageReadError as exc:
        log.warning("thumbnail: %s; drawing a placeholder", exc)
        img = np.full((max_height, max_height // 2, 3), 200, np.uint8)
        cv2.line(img, (0, 0), (img.shape[1] - 1, img.shape[0] - 1), (0, 0, 255), 2)
    h, w = img.shape[:2]
    if h > max_height:
        img = cv2.resize(img, (max(1, round(w * max_height / h)), max_height), interpolation=cv2.INTER_AREA)
    ok, buf = cv2.imencode(".jpg", img, [cv2.IMWRITE_JPEG_QUALITY, 88])
    if not ok:
        raise ImageReadError(f"{src}: cannot encode a thumbnail")
    out.write_bytes(buf.tobytes())
    return name


def _caption(sample: Sample) -> str:
    return f"id {sample.pid} · cam {sample.camid}"


def select_queries(result: EvalResult, n: int) -> tuple[list[int], list[int]]:
    """Indices of the ``n`` worst and ``n`` best scored queries by AP (ties: lower index first)."""
    valid = np.flatnonzero(result.valid)
    ap = result.ap[valid]
    worst = valid[np.lexsort((valid, ap))][:n]
    best = valid[np.lexsort((valid, -ap))][:n]
    return worst.tolist(), best.tolist()


def write_ranked_lists_html(
    out_dir: Union[str, Path],
    split: Split,
    result: EvalResult,
    ranked_gallery_idx: np.ndarray,
    distances: Optional[np.ndarray] = None,
    n: int = 10,
    top: int = 10,
    thumb_height: int = 128,
    title: Optional[str] = None,
) -> Path:
    """Write ``ranked_lists.html`` (+ thumbnails) for the ``n`` worst and best queries; return its path."""
    out = Path(out_dir)
    thumbs = out / THUMBS_DIR
    thumbs.mkdir(parents=True, exist_ok=True)
    ranked = np.asarray(ranked_gallery_idx)
    dists = None if distances is None else np.asarray(distances, dtype=np.float64)
    worst, best = select_queries(result, n)
    heading = title or f"Ranked lists: {split.name}" + (f" ({split.protocol})" if split.protocol else "")

    def link(sample: Sample) -> str:
        return f"{THUMBS_DIR}/{_thumbnail(sample.path, thumbs, thumb_height)}"

    def figure(sample: Sample, caption_lines: Sequence[str], alt: str) -> str:
        caps = "<br>".join(html.escape(c) for c in caption_lines)
        return (
            f'<figure><img src="{html.escape(link(sample))}" alt="{html.escape(alt)}" '
            f'title="{html.escape(str(sample.path))}"><figcaption>{caps}</figcaption></figure>'
        )

    def row(qi: int) -> str:
        q = split.query[qi]
        cells = [
            '<td class="query">'
            + figure(
                q,
                [
                    f"query {qi}",
                    _caption(q),
                    f"AP {100 * result.ap[qi]:.1f}%",
                    f"{int(result.num_relevant[qi])} correct in gallery",
                ],
                f"query {qi}",
            )
            + "</td>"
        ]
        shown = 0
        for col, g in enumerate(ranked[qi]):
            if shown >= top:
                break
            if g < 0:
                continue
            s = split.gallery[int(g)]
            same = s.pid == q.pid
            ignored = same and (s.camid == q.camid or (split.clothes_changing and s.clothes_id == q.clothes_id))
            if ignored:
                continue
            shown += 1
            lines = [f"#{shown}"]
            if dists is not None:
                lines[0] += f"  d={dists[qi, col]:.4f}"
            lines.append(_caption(s))
            cls = "ok" if same else "wrong"
            alt = f"rank {shown} {'correct' if same else 'wrong'}"
            cells.append(f'<td class="hit {cls}">' + figure(s, lines, alt) + "</td>")
        return "<tr>" + "".join(cells) + "</tr>"

    def section(name: str, queries: Sequence[int]) -> str:
        if not queries:
            return f"<h2>{html.escape(name)}</h2><p class=\"note\">no scored queries</p>"
        rows = "\n".join(row(q) for q in queries)
        return f'<h2>{html.escape(name)}</h2>\n<table class="ranked">\n{rows}\n</table>'

    summary = (
        f"{result.num_valid} scored queries ({result.num_skipped} skipped), {len(split.gallery)} gallery crops. "
        f"Rank-1 {100 * result.rank1:.2f}%, mAP {100 * result.mAP:.2f}%, mINP {100 * result.mINP:.2f}%."
    )
    body = "\n".join(
        [
            f"<h1>{html.escape(heading)}</h1>",
            f"<p>{html.escape(summary)}</p>",
            '<p class="legend"><span style="border-color:#3366cc">query</span>'
            '<span style="border-color:#1a9c3a">correct match</span>'
            '<span style="border-color:#d62828">wrong match</span></p>',
            f'<p class="note">Top {top} of each ranked list; d is the distance (smaller is closer). '
            "Crops of the query's person from the query's camera are ignored, as in the metrics.</p>",
            section(f"{len(worst)} worst queries (lowest AP)", worst),
            section(f"{len(best)} best queries (highest AP)", best),
        ]
    )
    page = (
        "<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n"
        f"<title>{html.escape(heading)}</title>\n<style>{_CSS}</style>\n</head>\n<body>\n{body}\n</body>\n</html>\n"
    )
    path = out / PAGE_NAME
    path.write_text(page, encoding="utf-8")
    log.info("ranked lists: %s", path)
    return path
