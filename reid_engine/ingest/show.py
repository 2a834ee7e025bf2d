"""Showing answers: write the matched crops, or draw the matched boxes on their source frames."""
from __future__ import annotations

import logging
import re
import shutil
from pathlib import Path
from typing import Any, Optional, Sequence, Union

import cv2
import numpy as np

from ..errors import InvalidInputError
from ..images import IMAGE_SUFFIXES, read_image
from .crops import pixels_sha256
from .select import cut
from .video import FrameReader

log = logging.getLogger(__name__)


def _safe(text: Any) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", str(text)).strip("_") or "x"


def _query_folder(folder: Path, qi: int, query: str) -> Path:
    stem = Path(query).stem if not query.startswith("<") else "array"
    return folder / f"q{qi:03d}_{_safe(stem)}"


def _name(hit: Any, suffix: str) -> str:
    frame = f"_f{hit.frame:06d}" if hit.frame is not None else ""
    return f"{hit.rank:03d}_{_safe(hit.camera or 'nocam')}{frame}{suffix}"


def _frame_of(hit: Any, reader: FrameReader) -> Optional[np.ndarray]:
    """The source frame a hit was cut from, when its source is a readable video that still holds that crop."""
    source = getattr(hit, "source", None)
    if source is None or hit.frame is None or hit.box is None:
        return None
    if Path(source).suffix.lower() in IMAGE_SUFFIXES:
        return None
    frame = reader.read(source, int(hit.frame))
    crop = getattr(hit, "best", hit)  # a track hit shows its best crop
    if frame is not None and not frame_holds_crop(frame, crop.box, crop.sha256):
        log.warning("%s: the video changed since crop %d was indexed; nothing drawn or cut from it", source, crop.id)
        return None
    return frame


def frame_holds_crop(frame: np.ndarray, box: Sequence[float], sha256: str) -> bool:
    """Whether cutting ``box`` from ``frame`` gives the crop that was indexed (a video replaced at the same
    path would give another recording's pixels)."""
    crop = cut(frame, xyxy(box))
    return crop is not None and pixels_sha256(crop) == sha256


def _write(dest: Path, img: Optional[np.ndarray] = None, copy_of: Optional[Path] = None) -> Path:
    """Write ``img`` (or copy ``copy_of``) to ``dest``, creating its folder; InvalidInputError names the
    folder or file that cannot be written."""
    try:
        dest.parent.mkdir(parents=True, exist_ok=True)
        if copy_of is not None:
            shutil.copyfile(copy_of, dest)
        elif img is not None:  # encoded here, written by Python: any file name OpenCV cannot open works
            ok, buf = cv2.imencode(dest.suffix, img)
            if not ok:
                raise OSError(0, f"OpenCV cannot encode a {dest.suffix} image")
            dest.write_bytes(buf.tobytes())
    except OSError as exc:
        raise InvalidInputError(f"{dest}: cannot write ({exc.strerror or exc}); expected a writable folder") from None
    return dest


def xyxy(box: Sequence[float]) -> np.ndarray:
    """An (x, y, w, h) box as corners (x1, y1, x2, y2)."""
    x, y, w, h = (float(v) for v in box)
    return np.array([x, y, x + w, y + h], np.float32)


def draw_box(frame: np.ndarray, box: Optional[Sequence[float]], label: str = "") -> np.ndarray:
    """A copy of ``frame`` with an (x, y, w, h) box and its label drawn in red; no box: the whole image outlined.

    Corners are clipped to just outside the frame: a recorded box may reach past it (or past what
    OpenCV's 32-bit drawing takes)."""
    img = frame.copy()
    h, w = img.shape[:2]
    if box is None:
        x1, y1, x2, y2 = 0, 0, w - 1, h - 1
    else:
        xs = np.clip(xyxy(box), -2, [w + 1, h + 1, w + 1, h + 1])
        x1, y1, x2, y2 = (int(round(float(v))) for v in xs)
    cv2.rectangle(img, (x1, y1), (x2, y2), (0, 0, 255), 2)
    if label:
        (tw, th), base = cv2.getTextSize(label, cv2.FONT_HERSHEY_SIMPLEX, 0.5, 1)
        ty = y1 - 4 if y1 - th - base - 4 >= 0 else min(h - 2, y2 + th + 4)
        tx = max(0, min(x1, w - tw - 3))  # keep the label inside the frame
        cv2.rectangle(img, (tx, ty - th - 2), (tx + tw + 2, ty + base - 1), (0, 0, 255), -1)
        cv2.putText(img, label, (tx + 1, ty - 1), cv2.FONT_HERSHEY_SIMPLEX, 0.5, (255, 255, 255), 1, cv2.LINE_AA)
    return img


def save_crops(results: Sequence[Any], folder: Union[str, Path]) -> list[Path]:
    """Write each hit's crop as ``DIR/qNNN_<query>/<rank>_<camera>_f<frame>.<ext>``; returns the files.

    Crops indexed from image files are copied; crops of ingested footage are cut
    again from their source video (for a track hit: its best crop).
    """
    out: list[Path] = []
    folder = Path(folder)
    with FrameReader() as reader:
        for qi, res in enumerate(results):
            qdir = _query_folder(folder, qi, res.query)
            for hit in res.hits:
                crop_file = Path(hit.path)
                if crop_file.suffix.lower() in IMAGE_SUFFIXES and crop_file.is_file():
                    out.append(_write(qdir / _name(hit, crop_file.suffix.lower()), copy_of=crop_file))
                    continue
                frame = _frame_of(hit, reader)
                crop = None if frame is None else cut(frame, xyxy(hit.box))
                if crop is None:
                    log.warning("%s: no crop to write for hit %d (%s)", res.query, hit.rank, hit.path)
                    continue
                out.append(_write(qdir / _name(hit, ".jpg"), crop))
    return out


def _label(hit: Any) -> str:
    track = getattr(hit, "track", None)
    return f"#{hit.rank} d={hit.distance:.3f}" + (f" {track.rsplit('/', 1)[-1]}" if track else "")


def render_hits(results: Sequence[Any], folder: Union[str, Path]) -> list[Path]:
    """Draw each hit's box on the frame it came from: ``DIR/qNNN_<query>/<rank>_<camera>_f<frame>.jpg``.

    Hits without a source video (crops indexed from image files) are drawn on
    the crop itself when it exists, so every hit has a picture.
    """
    out: list[Path] = []
    folder = Path(folder)
    with FrameReader() as reader:
        for qi, res in enumerate(results):
            qdir = _query_folder(folder, qi, res.query)
            for hit in res.hits:
                frame = _frame_of(hit, reader)
                box = hit.box
                if frame is None:
                    crop_file = Path(hit.path)
                    if not (crop_file.suffix.lower() in IMAGE_SUFFIXES and crop_file.is_file()):
                        log.warning("%s: no frame to render for hit %d (%s)", res.query, hit.rank, hit.path)
                        continue
                    frame, box = read_image(crop_file), None
                img = draw_box(frame, box, _label(hit))
                out.append(_write(qdir / _name(hit, ".jpg"), img))
    return out
