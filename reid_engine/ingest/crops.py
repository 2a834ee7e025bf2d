"""Folders of person crops and CSV manifests -> crop items with metadata."""
from __future__ import annotations

import csv
import hashlib
import math
import re
from collections import Counter
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Optional, Sequence, Union

import numpy as np

from ..assets import resolved
from ..errors import InvalidInputError
from ..images import IMAGE_SUFFIXES, file_sha256, list_images, special_file_kind

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
        return pixels_sha256(self.image)


def pixels_sha256(img: np.ndarray) -> str:
    """Identity of in-memory pixels (a crop cut from footage): hash of the shape and the bytes."""
    h = hashlib.sha256()
    h.update(str(img.shape).encode())
    h.update(np.ascontiguousarray(img).tobytes())
    return h.hexdigest()


def parse_time(value: Union[str, float, int, datetime, None]) -> Optional[float]:
    """ISO-8601 text, a datetime or epoch seconds -> epoch seconds (naive times are UTC)."""
    if value is None or (isinstance(value, str) and value.strip() == ""):
        return None
    if isinstance(value, bool):
        raise InvalidInputError(f"time {value!r}: expected ISO-8601 (e.g. 2024-05-01T12:00:00) or epoch seconds")
    if isinstance(value, (int, float, np.integer, np.floating)):
        return _finite_time(value)
    if isinstance(value, datetime):
        dt = value
    else:
        text = str(value).strip()
        try:
            number = float(text)
        except ValueError:
            number = None
        if number is not None:
            return _finite_time(number, text)
        try:
            dt = datetime.fromisoformat(text.replace("Z", "+00:00"))
        except ValueError:
            raise InvalidInputError(
                f"time {text!r}: expected ISO-8601 (e.g. 2024-05-01T12:00:00) or epoch seconds"
            ) from None
    if dt.tzinfo is None:
        dt = dt.replace(tzinfo=timezone.utc)
    return dt.timestamp()


#: epoch seconds of 0001-01-01 and 9999-12-31T23:59:59 UTC: the times a datetime can show
TIME_MIN, TIME_MAX = -62135596800.0, 253402300799.0


def _finite_time(value: Any, shown: Any = None) -> float:
    try:
        x = float(value)
    except OverflowError:
        x = math.inf
    what = shown if shown is not None else value
    if not math.isfinite(x):
        raise InvalidInputError(f"time {what!r}: expected a finite number of epoch seconds")
    if not TIME_MIN <= x <= TIME_MAX:  # a time no calendar shows would break every listing of the row
        raise InvalidInputError(f"time {what!r}: expected epoch seconds between years 1 and 9999")
    return x


#: frames are stored as 32-bit integers
FRAME_LIMIT = 2**31 - 1


def _frame_number(text: str, where: str) -> int:
    try:
        value = int(float(text)) if not text.strip().lstrip("+-").isdigit() else int(text)
    except (ValueError, OverflowError):
        raise InvalidInputError(f"{where}: frame {text!r} is not a number") from None
    if abs(value) > FRAME_LIMIT:
        raise InvalidInputError(f"{where}: frame {text!r} is out of range (at most {FRAME_LIMIT})")
    return value


def _meta_from_match(m: re.Match, where: str = "file name") -> dict[str, Any]:
    g = {k: v for k, v in m.groupdict().items() if v is not None}
    meta: dict[str, Any] = {}
    if "pid" in g:
        meta["pid"] = g["pid"]
    if "camera" in g:
        meta["camera"] = g["camera"]
    frame = g.get("frame", g.get("frame2"))
    if frame is not None:
        meta["frame"] = _frame_number(frame, f"{where}: --pattern group")
    if "track" in g:
        meta["track"] = g["track"]
    if "timestamp" in g:
        try:
            meta["timestamp"] = parse_time(g["timestamp"])
        except InvalidInputError as exc:
            raise InvalidInputError(f"{where}: --pattern group {exc}") from None
    return meta


def _compile(pattern: Optional[str]) -> Optional[re.Pattern]:
    if pattern is None or pattern == "none":
        return None
    text = PATTERNS.get(pattern, pattern)
    try:
        regex = re.compile(text)
    except re.error as exc:
        raise InvalidInputError(
            f"pattern {pattern!r}: not a valid regular expression ({exc}); named patterns: {', '.join(PATTERNS)}"
        ) from None
    unknown = sorted(set(regex.groupindex) - PATTERN_GROUPS)
    if unknown:  # a misspelt group (cam for camera) would be dropped from every crop
        raise InvalidInputError(
            f"pattern {pattern!r}: unknown group(s) {', '.join(unknown)}; expected {', '.join(sorted(PATTERN_GROUPS))}"
        )
    return regex


#: the named groups a --pattern may use (frame2: a second way of writing the frame in one pattern)
PATTERN_GROUPS = {"pid", "camera", "frame", "frame2", "track", "timestamp"}


def check_csv_header(header: Sequence[Optional[str]], where: Any) -> None:
    """Raise ``InvalidInputError`` when two columns share a name (compared without spaces and case):
    which of them a reader took would be a guess."""
    seen: Counter[str] = Counter(h.strip().lower() for h in header if h is not None)
    twice = sorted(name for name, n in seen.items() if n > 1 and name)
    if twice:
        raise InvalidInputError(f"{where}: column(s) {', '.join(map(repr, twice))} appear more than once in the header")


def check_csv_row(row: dict[Optional[str], Any], where: Any) -> None:
    """Raise ``InvalidInputError`` when a CSV row holds more non-empty cells than its header names."""
    extra = [v for v in row.get(None) or [] if isinstance(v, str) and v.strip()]
    if extra:
        raise InvalidInputError(f"{where}: {len(extra)} more cell(s) than the header has columns ({extra[0]!r}...)")


def _read_csv(path: Path, role: Optional[str]) -> list[CropItem]:
    try:
        # utf-8-sig: a byte-order mark (as Excel writes it) is not part of the first column's name
        with open(path, newline="", encoding="utf-8-sig") as f:
            reader = csv.DictReader(f)
            raw_header = list(reader.fieldnames or [])
            rows = list(reader)
    except UnicodeDecodeError as exc:
        raise InvalidInputError(f"{path}: not UTF-8 text (byte {exc.start}); save the manifest as UTF-8 CSV") from None
    except (OSError, csv.Error) as exc:
        raise InvalidInputError(f"{path}: cannot read the CSV manifest ({exc})") from None
    # header names are matched without surrounding spaces and case ("file, pid, role" works)
    check_csv_header(raw_header, path)
    by_name = {h.strip().lower(): h for h in raw_header if h is not None}
    cols: dict[str, str] = {}
    for key, names in _CSV_ALIASES.items():
        for n in names:
            if n in by_name:
                cols[key] = by_name[n]
                break
    if "path" not in cols:
        raise InvalidInputError(
            f"{path}: a manifest needs a 'file' (or 'path') column; found {[h.strip() for h in raw_header]}"
        )
    if role is not None and "role" not in cols:
        raise InvalidInputError(f"{path}: --role {role} given but the manifest has no 'role' column")

    def cell(r: dict[Optional[str], Any], key: str) -> str:
        value = r.get(cols[key]) if key in cols else None  # None: the row is shorter than the header
        return "" if value is None else str(value).strip()

    wanted = None if role is None else role.strip().lower()
    found_roles: Counter[str] = Counter()
    items = []
    for line, r in enumerate(rows, start=2):
        if not any((v or "").strip() for k, v in r.items() if k is not None and isinstance(v, str)):
            continue  # a blank line
        check_csv_row(r, f"{path}:{line}")
        if wanted is not None:
            row_role = cell(r, "role")
            found_roles[row_role] += 1
            if row_role.lower() != wanted:
                continue
        file = cell(r, "path")
        if not file:
            raise InvalidInputError(f"{path}:{line}: empty {cols['path']!r} cell; every row needs an image file")
        meta: dict[str, Any] = {}
        for key in ("pid", "camera", "track"):
            if cell(r, key):
                meta[key] = cell(r, key)
        if cell(r, "frame"):
            meta["frame"] = _frame_number(cell(r, "frame"), f"{path}:{line}")
        if cell(r, "timestamp"):
            try:
                meta["timestamp"] = parse_time(cell(r, "timestamp"))
            except InvalidInputError as exc:
                raise InvalidInputError(f"{path}:{line}: {exc}") from None
        items.append(CropItem(Path(file) if Path(file).is_absolute() else path.parent / file, meta))
    if wanted is not None and not items:
        seen = ", ".join(f"{r or '(empty)'!r} ({n})" for r, n in sorted(found_roles.items())) or "none"
        raise InvalidInputError(f"{path}: no row has role {role!r}; roles found: {seen}")
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
    kind = special_file_kind(src)
    if kind is not None:
        raise InvalidInputError(f"{src}: is {kind}; expected a folder, a CSV manifest or an image file")
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
                    meta = _meta_from_match(m, str(p))
            items.append(CropItem(p, meta))
    name = source_name if source_name is not None else str(resolved(src))
    for it in items:
        if camera is not None:
            it.meta["camera"] = str(camera)
        it.meta.setdefault("source", name)
    return items
