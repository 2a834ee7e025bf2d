"""Folders of person crops and CSV manifests -> crop items with metadata."""
from __future__ import annotations

import csv
import hashlib
import re
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Optional, Union

import numpy as np

from ..errors import InvalidInputError
from ..images import IMAGE_SUFFIXES, file_sha256, list_images

#: named file-name patterns; groups among pid, camera, frame, track, timestamp
PATTERNS: dict[str, str] = {
    # Market-1501 / DukeMTMC-reID: 0001_c1s1_001051_00.jpg, 0001_c2_f0046182.jpg
    "market": r"(?:^|/)(?P<pid>-?\d+)_c(?P<camera>\d+)(?:s\d+_(?P<frame>\d+)|_f(?P<frame2>\d+))?",
    # PKU-Reid dev layout: PID/CAM_ORIENT.png
    "pid-folder": r"(?:^|/)(?P<pid>[^/]+)/(?P<camera>[^/_]+)_[^/]*$",
}

_CSV_ALIASES = {
    "path": ("file", "path", "image", "filename"),
    "pid": ("pid", "person_id", "person", "identity"),
    "camera": ("camid", "camera", "cam"),
    "timestamp": ("timestamp", "time", "datetime"),
    "frame": ("frame",),
    "track": ("track", "track_id"),
    "role": ("role",),
}


@dataclass
class CropItem:
    """One crop to index: a file (or an in-memory image) and its metadata."""

    path: Path
    meta: dict[str, Any] = field(default_factory=dict)
    image: Optional[np.ndarray] = None  # BGR pixels when the crop is not a file of its own

    def sha256(self) -> str:
        """Identity of the crop: hash of the file bytes, or of the pixels for in-memory crops."""
        if self.image is None:
            return file_sha256(self.path)
        h = hashlib.sha256()
        h.update(str(self.image.shape).encode())
        h.update(np.ascontiguousarray(self.image).tobytes())
        return h.hexdigest()


def parse_time(value: Union[str, float, int, datetime, None]) -> Optional[float]:
    """ISO-8601 text, a datetime or epoch seconds -> epoch seconds (naive times are UTC)."""
    if value is None or value == "":
        return None
    if isinstance(value, (int, float)):
        return float(value)
    if isinstance(value, datetime):
        dt = value
    else:
        text = str(value).strip()
        try:
            return float(text)
        except ValueError:
            pass
        try:
            dt = datetime.fromisoformat(text.replace("Z", "+00:00"))
        except ValueError:
            raise InvalidInputError(f"time {text!r}: expected ISO-8601 (e.g. 2024-05-01T12:00:00) or epoch seconds") from None
    if dt.tzinfo is None:
        dt = dt.replace(tzinfo=timezone.utc)
    return dt.timestamp()


def _meta_from_match(m: re.Match) -> dict[str, Any]:
    g = {k: v for k, v in m.groupdict().items() if v is not None}
    meta: dict[str, Any] = {}
    if "pid" in g:
        meta["pid"] = g["pid"]
    if "camera" in g:
        meta["camera"] = g["camera"]
    frame = g.get("frame", g.get("frame2"))
    if frame is not None:
        meta["frame"] = int(frame)
    if "track" in g:
        meta["track"] = g["track"]
    if "timestamp" in g:
        meta["timestamp"] = parse_time(g["timestamp"])
    return meta


def _compile(pattern: Optional[str]) -> Optional[re.Pattern]:
    if pattern is None or pattern == "none":
        return None
    text = PATTERNS.get(pattern, pattern)
    try:
        return re.compile(text)
    except re.error as exc:
        raise InvalidInputError(
            f"pattern {pattern!r}: not a valid regular expression ({exc}); named patterns: {', '.join(PATTERNS)}"
        ) from None


def _read_csv(path: Path, role: Optional[str]) -> list[CropItem]:
    try:
        with open(path, newline="") as f:
            reader = csv.DictReader(f)
            header = [h.strip() for h in (reader.fieldnames or [])]
            rows = list(reader)
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        raise InvalidInputError(f"{path}: cannot read the CSV manifest ({exc})") from None
    cols: dict[str, str] = {}
    for key, names in _CSV_ALIASES.items():
        for n in names:
            if n in header:
                cols[key] = n
                break
    if "path" not in cols:
        raise InvalidInputError(f"{path}: a manifest needs a 'file' (or 'path') column; found {header}")
    if role is not None and "role" not in cols:
        raise InvalidInputError(f"{path}: --role {role} given but the manifest has no 'role' column")
    items = []
    for line, r in enumerate(rows, start=2):
        if role is not None and r[cols["role"]] != role:
            continue
        file = r[cols["path"]]
        meta: dict[str, Any] = {}
        for key in ("pid", "camera", "track"):
            if key in cols and r[cols[key]] not in ("", None):
                meta[key] = r[cols[key]]
        if "frame" in cols and r[cols["frame"]] not in ("", None):
            try:
                meta["frame"] = int(float(r[cols["frame"]]))
            except ValueError:
                raise InvalidInputError(f"{path}:{line}: frame {r[cols['frame']]!r} is not a number") from None
        if "timestamp" in cols:
            meta["timestamp"] = parse_time(r[cols["timestamp"]])
        items.append(CropItem((path.parent / file), meta))
    return items


def scan_source(
    source: Union[str, Path],
    glob: str = "**/*",
    pattern: Optional[str] = "auto",
    camera: Optional[str] = None,
    role: Optional[str] = None,
    source_name: Optional[str] = None,
) -> list[CropItem]:
    """Crops under a folder, listed in a CSV manifest, or one image file, with their metadata.

    ``pattern`` is a regular expression searched in each path relative to the
    folder (named groups pid, camera, frame, track, timestamp), a named pattern
    (see ``PATTERNS``), "auto" (Market-1501 naming when it matches) or None.
    ``camera`` sets the camera of every crop (over what the pattern found).
    """
    src = Path(source)
    if not src.exists():
        raise InvalidInputError(f"{src}: no such folder or file")
    if src.is_file() and src.suffix.lower() == ".csv":
        items = _read_csv(src, role)
    elif src.is_file():
        if src.suffix.lower() not in IMAGE_SUFFIXES:
            raise InvalidInputError(f"{src}: expected a folder, a CSV manifest or an image file")
        items = [CropItem(src, {})]
    else:
        auto = pattern == "auto"
        regex = _compile("market" if auto else pattern)
        items = []
        for p in list_images(src, glob):
            meta: dict[str, Any] = {}
            if regex is not None:
                m = regex.search(p.relative_to(src).as_posix())
                if m:
                    meta = _meta_from_match(m)
            items.append(CropItem(p, meta))
    name = source_name if source_name is not None else str(src.resolve())
    for it in items:
        if camera is not None:
            it.meta["camera"] = str(camera)
        it.meta.setdefault("source", name)
    return items
