"""Dataset readers: benchmark folders and user protocols -> query and gallery samples.

Every reader returns a :class:`Split` (query and gallery :class:`Sample` lists)
and is registered under a format name; :func:`read_dataset` detects the layout
when no format is given. Camera and person ids are integers: numeric labels keep
their value ("01" -> 1), other labels are numbered in sorted order and the
original text is kept in ``Sample.extra``.
"""
from __future__ import annotations

import csv
import logging
import re
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping, Optional, Sequence, Union

from ..assets import expand_user, resolved
from ..errors import InvalidInputError, UnknownNameError
from ..images import IMAGE_SUFFIXES
from ..ingest.crops import check_csv_header, check_csv_row

log = logging.getLogger(__name__)

PathLike = Union[str, Path]
CameraRule = Optional[Sequence[Union[str, int]]]


# -- data model -------------------------------------------------------------------------
@dataclass(frozen=True)
class Sample:
    """One labelled crop: image path, person id, camera id, optional clothes id."""

    path: Path
    pid: int
    camid: int
    clothes_id: Optional[int] = None
    extra: Mapping[str, Any] = field(default_factory=dict, compare=False, hash=False)


@dataclass(frozen=True)
class Split:
    """A query set and a gallery set scored together under one protocol.

    ``clothes_changing`` adds the clothes-changing rule to the metrics: gallery
    crops of the query's person in the query's clothes are ignored as well.
    """

    name: str
    query: tuple[Sample, ...]
    gallery: tuple[Sample, ...]
    format: str = ""
    root: Optional[Path] = None
    protocol: Optional[str] = None
    clothes_changing: bool = False

    def __post_init__(self) -> None:
        object.__setattr__(self, "query", tuple(self.query))
        object.__setattr__(self, "gallery", tuple(self.gallery))
        if not self.query:
            raise InvalidInputError(f"dataset {self.name}: the query set is empty")
        if not self.gallery:
            raise InvalidInputError(f"dataset {self.name}: the gallery set is empty")
        if self.clothes_changing and any(s.clothes_id is None for s in self.query + self.gallery):
            raise InvalidInputError(
                f"dataset {self.name}: the clothes-changing rule needs a clothes id on every sample"
            )


@dataclass(frozen=True)
class ReadOptions:
    """Reader options: a named protocol, or a camera rule for layouts without roles."""

    protocol: Optional[str] = None
    query_cameras: CameraRule = None
    gallery_cameras: CameraRule = None

    @property
    def has_camera_rule(self) -> bool:
        return bool(self.query_cameras) or bool(self.gallery_cameras)


@dataclass(frozen=True)
class DatasetFormat:
    """A registered dataset layout: how to recognise it and how to read it."""

    name: str
    description: str
    detect: Callable[[Path], bool] = field(repr=False)
    read: Callable[[Path, ReadOptions], Split] = field(repr=False)
    protocols: tuple[str, ...] = ()
    default_protocol: Optional[str] = None
    camera_rule: bool = False  # accepts query/gallery camera rules


_FORMATS: dict[str, DatasetFormat] = {}


def register_format(fmt: DatasetFormat, overwrite: bool = False) -> DatasetFormat:
    """Add a dataset format to the registry (detection tries formats in registration order)."""
    if fmt.name in _FORMATS and not overwrite:
        raise ValueError(f"dataset format {fmt.name!r} is already registered")
    _FORMATS[fmt.name] = fmt
    return fmt


def list_formats() -> list[DatasetFormat]:
    """Registered dataset formats, in detection order."""
    return list(_FORMATS.values())


def get_format(name: str) -> DatasetFormat:
    """The format registered under ``name``; unknown names list the valid ones."""
    key = name.strip().lower().replace("-", "_")
    if key in _FORMATS:
        return _FORMATS[key]
    raise UnknownNameError(f"unknown dataset format {name!r}: expected one of {', '.join(_FORMATS)}")


def detect_format(path: PathLike) -> str:
    """Name of the registered format whose layout ``path`` has."""
    p = expand_user(path)
    if not p.exists():
        raise InvalidInputError(f"{p}: no such dataset file or folder")
    for fmt in _FORMATS.values():
        if fmt.detect(p):
            return fmt.name
    raise InvalidInputError(
        f"{p}: not a dataset layout reid-engine recognises; expected one of {', '.join(_FORMATS)} "
        "(or name the format explicitly)"
    )


def _resolve_root(path: Path) -> Path:
    """``path`` itself, or its only subfolder when that one holds a known layout (an unpacked archive)."""
    if path.is_dir():
        if any(f.detect(path) for f in _FORMATS.values()):
            return path
        subdirs = [d for d in sorted(path.iterdir()) if d.is_dir() and not d.name.startswith(".")]
        hits = [d for d in subdirs if any(f.detect(d) for f in _FORMATS.values())]
        if len(hits) == 1 and len(subdirs) == 1:
            return hits[0]
    return path


def read_dataset(
    path: PathLike,
    format: Optional[str] = None,
    *,
    protocol: Optional[str] = None,
    query_cameras: CameraRule = None,
    gallery_cameras: CameraRule = None,
) -> Split:
    """Read a dataset folder or protocol CSV into a query/gallery :class:`Split`.

    ``format`` names a registered layout (detected when None); ``protocol``
    picks a reader's protocol (e.g. CUHK03 "detected", LTCC "standard");
    ``query_cameras``/``gallery_cameras`` split layouts that have no roles.
    """
    p = _resolve_root(resolved(expand_user(path)))
    if not p.exists():
        raise InvalidInputError(f"{p}: no such dataset file or folder")
    fmt = get_format(format) if format else get_format(detect_format(p))
    if format and not fmt.detect(p):
        raise InvalidInputError(f"{p}: not a {fmt.name} layout; expected {fmt.description}")
    opts = ReadOptions(
        protocol=protocol,
        query_cameras=_as_list(query_cameras),
        gallery_cameras=_as_list(gallery_cameras),
    )
    if opts.protocol is not None and fmt.protocols and opts.protocol not in fmt.protocols:
        raise UnknownNameError(
            f"unknown protocol {opts.protocol!r} for {fmt.name}: expected one of {', '.join(fmt.protocols)}"
        )
    if opts.protocol is not None and not fmt.protocols:
        raise InvalidInputError(f"format {fmt.name} has no named protocols (got {opts.protocol!r})")
    if opts.has_camera_rule and not fmt.camera_rule:
        raise InvalidInputError(
            f"format {fmt.name} defines its own query and gallery sets: query/gallery cameras do not apply"
        )
    split = fmt.read(p, opts)
    log.info(
        "%s (%s%s): %d query, %d gallery crops",
        split.name,
        fmt.name,
        f", {split.protocol}" if split.protocol else "",
        len(split.query),
        len(split.gallery),
    )
    return split


def _as_list(rule: Any) -> Optional[tuple[Union[str, int], ...]]:
    if rule is None:
        return None
    if isinstance(rule, (str, int)):
        return (rule,)
    out = tuple(rule)
    return out or None


# -- shared helpers -----------------------------------------------------------------------
def _images(folder: Path) -> list[Path]:
    """Image files directly inside ``folder``, sorted by name."""
    if not folder.is_dir():
        raise InvalidInputError(f"{folder}: no such folder")
    return sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)


def _first_image_name(folder: Path) -> str:
    if not folder.is_dir():
        return ""
    for p in sorted(folder.iterdir()):
        if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES:
            return p.name
    return ""


def _label_to_int(values: Iterable[str], what: str = "labels", where: Any = None) -> dict[str, int]:
    """Map labels to ints: numeric labels keep their value, others are numbered in sorted order."""
    labels = sorted(set(values))
    if all(re.fullmatch(r"-?\d+", v) for v in labels):
        mapping = {v: int(v) for v in labels}
        if len(set(mapping.values())) != len(mapping):  # "1" and "01" would merge silently
            by_number: dict[int, list[str]] = {}
            for v, n in mapping.items():
                by_number.setdefault(n, []).append(v)
            clash = next(vs for vs in by_number.values() if len(vs) > 1)
            place = f"{where}: " if where is not None else ""
            raise InvalidInputError(
                f"{place}{what} {' and '.join(map(repr, clash))} are different texts for the same number; "
                "write each label one way"
            )
        return mapping
    return {v: i for i, v in enumerate(labels)}


def _select_by_camera(
    samples: Sequence[Sample],
    opts: ReadOptions,
    camera_codes: Mapping[str, int],
    source: Path,
) -> tuple[list[Sample], list[Sample]]:
    """Split samples by a camera rule: query cameras vs gallery cameras (default: the others)."""
    if not opts.has_camera_rule:
        cams = ", ".join(sorted(camera_codes))
        raise InvalidInputError(
            f"{source}: no query/gallery roles in this layout; name the query camera(s) "
            f"and optionally the gallery camera(s) (cameras: {cams})"
        )

    def resolve(values: Optional[Sequence[Union[str, int]]]) -> Optional[set[int]]:
        if not values:
            return None
        by_number = {int(k): v for k, v in camera_codes.items() if re.fullmatch(r"-?\d+", k)}
        out: set[int] = set()
        for v in values:
            text = str(v).strip()
            if text in camera_codes:  # the label as written ("01", "garden")
                out.add(camera_codes[text])
            elif re.fullmatch(r"-?\d+", text) and int(text) in by_number:  # "1" for "01"
                out.add(by_number[int(text)])
            else:
                raise InvalidInputError(
                    f"{source}: camera {text!r} not found; cameras are {', '.join(sorted(camera_codes))}"
                )
        return out

    q_cams = resolve(opts.query_cameras)
    g_cams = resolve(opts.gallery_cameras)
    all_cams = set(camera_codes.values())
    if q_cams is None:
        q_cams = all_cams - (g_cams or set())
    if g_cams is None:
        g_cams = all_cams - q_cams
    if q_cams & g_cams:
        raise InvalidInputError(f"{source}: a camera cannot be both query and gallery ({sorted(q_cams & g_cams)})")
    query = [s for s in samples if s.camid in q_cams]
    gallery = [s for s in samples if s.camid in g_cams]
    return query, gallery


def _camera_rule_suffix(opts: ReadOptions) -> str:
    parts = []
    if opts.query_cameras:
        parts.append("query cam " + "+".join(str(c) for c in opts.query_cameras))
    if opts.gallery_cameras:
        parts.append("gallery cam " + "+".join(str(c) for c in opts.gallery_cameras))
    return ", ".join(parts)


# -- Market-1501, DukeMTMC-reID, CUHK03-NP: Market-style folders ------------------------------
_MARKET_RE = re.compile(r"^(-?\d+)_c(\d+)s\d+_")
_DUKE_RE = re.compile(r"^(-?\d+)_c(\d+)_f\d+")
_CUHK03NP_RE = re.compile(r"^(-?\d+)_c(\d+)_")
_MARKET_STYLE = ("bounding_box_test", "query")


def _market_style_samples(folder: Path, pattern: re.Pattern[str], what: str) -> list[Sample]:
    """Samples of one Market-style folder; junk crops (person id -1) are dropped, distractors (0) kept."""
    samples = []
    for p in _images(folder):
        m = pattern.match(p.name)
        if not m:
            raise InvalidInputError(f"{p}: file name does not follow the {what} pattern {pattern.pattern}")
        pid = int(m.group(1))
        if pid == -1:
            continue
        samples.append(Sample(path=p, pid=pid, camid=int(m.group(2))))
    return samples


def _is_market_style(path: Path, pattern: re.Pattern[str]) -> bool:
    if not path.is_dir() or not all((path / d).is_dir() for d in _MARKET_STYLE):
        return False
    name = _first_image_name(path / "query") or _first_image_name(path / "bounding_box_test")
    return bool(pattern.match(name))


def _read_market_style(
    path: Path, fmt: str, pattern: re.Pattern[str], what: str, protocol: Optional[str] = None
) -> Split:
    query = _market_style_samples(path / "query", pattern, what)
    gallery = _market_style_samples(path / "bounding_box_test", pattern, what)
    name = path.name if protocol is None else f"{path.parent.name}/{path.name}"
    return Split(name=name, query=tuple(query), gallery=tuple(gallery), format=fmt, root=path, protocol=protocol)


register_format(
    DatasetFormat(
        name="market1501",
        description="Market-1501: bounding_box_test (gallery), query; PID_cCAMsSEQ_FRAME_NN.jpg",
        detect=lambda p: _is_market_style(p, _MARKET_RE),
        read=lambda p, o: _read_market_style(p, "market1501", _MARKET_RE, "Market-1501"),
    )
)
register_format(
    DatasetFormat(
        name="dukemtmc",
        description="DukeMTMC-reID: bounding_box_test (gallery), query; PID_cCAM_fFRAME.jpg",
        detect=lambda p: _is_market_style(p, _DUKE_RE),
        read=lambda p, o: _read_market_style(p, "dukemtmc", _DUKE_RE, "DukeMTMC-reID"),
    )
)


# -- CUHK03 new protocol (cuhk03-np folders) ---------------------------------------------------
CUHK03_PROTOCOLS = ("labeled", "detected")


def _cuhk03_root(path: Path) -> Optional[tuple[Path, Optional[str]]]:
    """(folder holding the two variants, or a variant folder itself; variant named by the path)."""
    if path.name in CUHK03_PROTOCOLS and _is_market_style(path, _CUHK03NP_RE):
        return path, path.name
    if any(_is_market_style(path / v, _CUHK03NP_RE) for v in CUHK03_PROTOCOLS):
        return path, None
    return None


def _detect_cuhk03(path: Path) -> bool:
    if not path.is_dir():
        return False
    if (path / "cuhk-03.mat").exists() or (path / "cuhk03_release").is_dir():
        return True  # recognised so that reading explains what is not supported
    return _cuhk03_root(path) is not None


def _read_cuhk03(path: Path, opts: ReadOptions) -> Split:
    found = _cuhk03_root(path)
    if found is None:
        raise InvalidInputError(
            f"{path}: only the cuhk03-np folders are supported (labeled/ and detected/, each with "
            "bounding_box_test/ and query/); the original cuhk-03.mat release, the 20 classic "
            "splits and list-file layouts are not"
        )
    folder, variant = found
    if variant is not None:
        if opts.protocol not in (None, variant):
            raise InvalidInputError(f"{folder}: this is the {variant} variant, protocol {opts.protocol!r} asked")
        return _read_market_style(folder, "cuhk03_np", _CUHK03NP_RE, "CUHK03-NP", protocol=variant)
    variant = opts.protocol or "labeled"
    if not (folder / variant).is_dir():
        raise InvalidInputError(f"{folder}: no {variant}/ folder")
    return _read_market_style(folder / variant, "cuhk03_np", _CUHK03NP_RE, "CUHK03-NP", protocol=variant)


register_format(
    DatasetFormat(
        name="cuhk03_np",
        description="CUHK03 new protocol (cuhk03-np): labeled/ or detected/ with Market-style folders",
        detect=_detect_cuhk03,
        read=_read_cuhk03,
        protocols=CUHK03_PROTOCOLS,
        default_protocol="labeled",
    )
)


# -- MSMT17 (V1 and V2) -------------------------------------------------------------------------
_MSMT_TEST_DIRS = ("mask_test_v2", "test")  # V2 first, then V1


def _detect_msmt17(path: Path) -> bool:
    return (
        path.is_dir()
        and (path / "list_query.txt").is_file()
        and (path / "list_gallery.txt").is_file()
        and any((path / d).is_dir() for d in _MSMT_TEST_DIRS)
    )


def _msmt17_list(list_file: Path, image_dir: Path) -> list[Sample]:
    """Samples of one MSMT17 list file (``pid_folder/PID_IDX_CAM_DATE_FRAME_N.jpg label`` per line)."""
    samples = []
    try:
        text = list_file.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise InvalidInputError(f"{list_file}: not UTF-8 text (byte {exc.start})") from None
    for lineno, line in enumerate(text.splitlines(), 1):
        line = line.strip()
        if not line:
            continue
        parts = line.split()
        if len(parts) != 2 or not re.fullmatch(r"-?\d+", parts[1]):
            raise InvalidInputError(f"{list_file}:{lineno}: expected 'relative/path.jpg PID', got {line!r}")
        rel = parts[0]
        fields = Path(rel).name.split("_")
        if len(fields) < 3 or not fields[2].isdigit():
            raise InvalidInputError(
                f"{list_file}:{lineno}: {rel!r} does not follow PID_IDX_CAM_... (camera in the third field)"
            )
        samples.append(Sample(path=image_dir / rel, pid=int(parts[1]), camid=int(fields[2])))
    missing = [s.path for s in samples if not s.path.is_file()]
    if missing:
        raise InvalidInputError(f"{list_file}: {len(missing)} listed images are missing, e.g. {missing[0]}")
    return samples


def _read_msmt17(path: Path, opts: ReadOptions) -> Split:
    image_dir = next(path / d for d in _MSMT_TEST_DIRS if (path / d).is_dir())
    query = _msmt17_list(path / "list_query.txt", image_dir)
    gallery = _msmt17_list(path / "list_gallery.txt", image_dir)
    version = "v2" if image_dir.name == "mask_test_v2" else "v1"
    return Split(
        name=path.name, query=tuple(query), gallery=tuple(gallery), format="msmt17", root=path, protocol=version
    )


register_format(
    DatasetFormat(
        name="msmt17",
        description="MSMT17 V1 (test/) or V2 (mask_test_v2/) with list_query.txt and list_gallery.txt",
        detect=_detect_msmt17,
        read=_read_msmt17,
    )
)


# -- PRCC ----------------------------------------------------------------------------------------
PRCC_PROTOCOLS = ("clothes_changing", "same_clothes")
_PRCC_CAMERAS = {"A": 1, "B": 2, "C": 3}
_PRCC_CLOTHES = {"A": 0, "B": 0, "C": 1}  # A and B: the same clothes; C: other clothes


def _prcc_test_dir(path: Path) -> Optional[Path]:
    for cand in (path / "rgb" / "test", path / "test", path):
        if all((cand / v).is_dir() for v in "ABC"):
            return cand
    return None


def _prcc_view(test_dir: Path, view: str) -> list[Sample]:
    loose = _first_image_name(test_dir / view)
    if loose:
        raise InvalidInputError(f"{test_dir / view / loose}: an image outside any person folder")
    samples = []
    for person in sorted(d for d in (test_dir / view).iterdir() if d.is_dir()):
        if not person.name.isdigit():
            raise InvalidInputError(f"{person}: PRCC person folders are numbers")
        for p in _images(person):
            samples.append(
                Sample(
                    path=p,
                    pid=int(person.name),
                    camid=_PRCC_CAMERAS[view],
                    clothes_id=_PRCC_CLOTHES[view],
                    extra={"view": view},
                )
            )
    return samples


def _read_prcc(path: Path, opts: ReadOptions) -> Split:
    test_dir = _prcc_test_dir(path)
    if test_dir is None:
        raise InvalidInputError(f"{path}: expected PRCC's rgb/test/A, B and C folders")
    protocol = opts.protocol or "clothes_changing"
    query_view = "C" if protocol == "clothes_changing" else "B"
    return Split(
        name=f"prcc/{protocol}",
        query=tuple(_prcc_view(test_dir, query_view)),
        gallery=tuple(_prcc_view(test_dir, "A")),
        format="prcc",
        root=path,
        protocol=protocol,
    )


register_format(
    DatasetFormat(
        name="prcc",
        description="PRCC: rgb/test/A (gallery), B (same-clothes query), C (clothes-changing query)",
        detect=lambda p: p.is_dir() and _prcc_test_dir(p) is not None,
        read=_read_prcc,
        protocols=PRCC_PROTOCOLS,
        default_protocol="clothes_changing",
    )
)


# -- LTCC ----------------------------------------------------------------------------------------
LTCC_PROTOCOLS = ("clothes_changing", "standard")
_LTCC_RE = re.compile(r"^(\d+)_(\d+)_c(\d+)_")


def _ltcc_samples(folder: Path) -> list[Sample]:
    samples = []
    for p in _images(folder):
        m = _LTCC_RE.match(p.name)
        if not m:
            raise InvalidInputError(f"{p}: file name does not follow LTCC's PID_CLOTHES_cCAM_FRAME pattern")
        samples.append(Sample(path=p, pid=int(m.group(1)), camid=int(m.group(3)), clothes_id=int(m.group(2))))
    return samples


def _read_ltcc(path: Path, opts: ReadOptions) -> Split:
    protocol = opts.protocol or "clothes_changing"
    return Split(
        name=f"{path.name}/{protocol}",
        query=tuple(_ltcc_samples(path / "query")),
        gallery=tuple(_ltcc_samples(path / "test")),
        format="ltcc",
        root=path,
        protocol=protocol,
        clothes_changing=protocol == "clothes_changing",
    )


register_format(
    DatasetFormat(
        name="ltcc",
        description="LTCC: query/ and test/ (gallery); PID_CLOTHES_cCAM_FRAME.png",
        detect=lambda p: p.is_dir()
        and (p / "query").is_dir()
        and (p / "test").is_dir()
        and bool(_LTCC_RE.match(_first_image_name(p / "query"))),
        read=_read_ltcc,
        protocols=LTCC_PROTOCOLS,
        default_protocol="clothes_changing",
    )
)


# -- CSV manifests and protocols --------------------------------------------------------------------
MANIFEST_NAME = "manifest.csv"
_CSV_COLUMNS = {
    "file": ("file", "path", "image", "filename", "img_path"),
    "pid": ("pid", "person_id", "person", "identity"),
    "camid": ("camid", "camera", "cam", "camera_id", "cam_id"),
    "clothes_id": ("clothes_id", "clothes", "cloth_id", "clothes_label"),
    "role": ("role",),
}
_ROLES_SKIPPED = ("train", "ignore", "unused")


def _csv_file(path: Path) -> Optional[Path]:
    if path.is_file() and path.suffix.lower() == ".csv":
        return path
    if path.is_dir() and (path / MANIFEST_NAME).is_file():
        return path / MANIFEST_NAME
    return None


def _find_columns(header: Sequence[str], source: Path) -> dict[str, Optional[str]]:
    lowered = {h.strip().lower(): h for h in header}
    found: dict[str, Optional[str]] = {}
    for key, names in _CSV_COLUMNS.items():
        found[key] = next((lowered[n] for n in names if n in lowered), None)
    missing = [k for k in ("file", "pid", "camid") if found[k] is None]
    if missing:
        expected = "; ".join(f"{k}: {' or '.join(_CSV_COLUMNS[k])}" for k in missing)
        raise InvalidInputError(f"{source}: missing column(s) ({expected}); header is {list(header)}")
    return found


def _read_csv(path: Path, opts: ReadOptions) -> Split:
    source = _csv_file(path)
    if source is None:
        raise InvalidInputError(f"{path}: expected a .csv file or a folder with {MANIFEST_NAME}")
    try:
        with open(source, newline="", encoding="utf-8-sig") as fh:
            reader = csv.DictReader(fh)
            if reader.fieldnames is None:
                raise InvalidInputError(f"{source}: empty CSV file")
            check_csv_header(reader.fieldnames, source)
            cols = _find_columns(reader.fieldnames, source)
            rows = list(reader)
            for line, r in enumerate(rows, start=2):
                check_csv_row(r, f"{source}:{line}")
    except UnicodeDecodeError as exc:
        raise InvalidInputError(f"{source}: not UTF-8 text (byte {exc.start}); save the CSV as UTF-8") from None
    except (OSError, csv.Error) as exc:
        raise InvalidInputError(f"{source}: cannot read the CSV file ({exc})") from None
    rows = [r for r in rows if any(isinstance(v, str) and v.strip() for k, v in r.items() if k is not None)]
    if not rows:
        raise InvalidInputError(f"{source}: no rows")
    known = {c for c in cols.values() if c}

    def cell(row: dict[str, str], key: str, lineno: int) -> str:
        value = (row.get(cols[key]) or "").strip()  # type: ignore[arg-type]
        if key != "clothes_id" and not value:
            raise InvalidInputError(f"{source}:{lineno}: empty {cols[key]!r}")
        return value

    pid_codes = _label_to_int((cell(r, "pid", i) for i, r in enumerate(rows, 2)), "person ids", source)
    cam_codes = _label_to_int((cell(r, "camid", i) for i, r in enumerate(rows, 2)), "camera labels", source)
    clothes_cells = [cell(r, "clothes_id", i) for i, r in enumerate(rows, 2)] if cols["clothes_id"] else []
    clothes_codes = _label_to_int(c for c in clothes_cells if c)

    samples: list[Sample] = []
    roles: list[str] = []
    skipped = 0
    for i, row in enumerate(rows, 2):
        role = (row.get(cols["role"]) or "").strip().lower() if cols["role"] else ""
        if cols["role"]:
            if role in _ROLES_SKIPPED:
                skipped += 1
                continue
            if role not in ("query", "gallery"):
                raise InvalidInputError(
                    f"{source}:{i}: role {role!r}: expected query, gallery or one of {', '.join(_ROLES_SKIPPED)}"
                )
        file_text = cell(row, "file", i)
        img = expand_user(file_text)
        if not img.is_absolute():
            img = source.parent / img
        pid_text, cam_text = cell(row, "pid", i), cell(row, "camid", i)
        clothes_text = clothes_cells[i - 2] if clothes_cells else ""
        extra: dict[str, Any] = {k: v for k, v in row.items() if k not in known and k is not None}
        if not re.fullmatch(r"-?\d+", pid_text):
            extra["pid_label"] = pid_text
        if not re.fullmatch(r"-?\d+", cam_text):
            extra["camera_label"] = cam_text
        samples.append(
            Sample(
                path=img,
                pid=pid_codes[pid_text],
                camid=cam_codes[cam_text],
                clothes_id=clothes_codes[clothes_text] if clothes_text else None,
                extra=extra,
            )
        )
        roles.append(role)
    if skipped:
        log.info("%s: skipped %d rows whose role is one of %s", source, skipped, _ROLES_SKIPPED)
    missing = [s.path for s in samples if not s.path.is_file()]
    if missing:
        raise InvalidInputError(f"{source}: {len(missing)} listed images are missing, e.g. {missing[0]}")

    name = source.parent.name if source.name == MANIFEST_NAME else source.stem
    if cols["role"]:
        if opts.has_camera_rule:
            raise InvalidInputError(
                f"{source}: the file has a role column; query/gallery cameras apply only to files without one"
            )
        query = [s for s, r in zip(samples, roles) if r == "query"]
        gallery = [s for s, r in zip(samples, roles) if r == "gallery"]
        protocol = None
        for what, chosen in (("query", query), ("gallery", gallery)):
            if not chosen:
                found = Counter((r.get(cols["role"]) or "").strip().lower() for r in rows)  # type: ignore[arg-type]
                seen = ", ".join(f"{k or '(empty)'!r} ({n})" for k, n in sorted(found.items()))
                raise InvalidInputError(f"{source}: no row has role {what!r}; roles found: {seen}")
    else:
        query, gallery = _select_by_camera(samples, opts, cam_codes, source)
        protocol = _camera_rule_suffix(opts)
    return Split(
        name=name, query=tuple(query), gallery=tuple(gallery), format="csv", root=source, protocol=protocol
    )


register_format(
    DatasetFormat(
        name="csv",
        description=(
            "CSV manifest or protocol (file, pid|person_id, camid|camera, optional clothes_id, optional "
            f"role query/gallery); a folder with {MANIFEST_NAME} reads that file"
        ),
        detect=lambda p: _csv_file(p) is not None,
        read=_read_csv,
        camera_rule=True,
    )
)


# -- a folder per identity ----------------------------------------------------------------------------
#: camera token in a file name: ``c3``, ``cam3``, ``camera3`` after the start or a separator
#: (``0001_c3s1_...``, ``img_cam02_7.jpg``); otherwise a leading number before ``_`` (``02_5.png``)
CAMERA_TOKEN_RE = re.compile(r"(?:^|[_\-. ])(?:c|cam|camera)(\d+)", re.IGNORECASE)
CAMERA_LEADING_RE = re.compile(r"^(\d+)_")


def camera_from_name(name: str) -> Optional[str]:
    """Camera label in an image file name, by the documented pattern, or None."""
    m = CAMERA_TOKEN_RE.search(Path(name).stem)
    if m:
        return m.group(1)
    m = CAMERA_LEADING_RE.match(name)
    return m.group(1) if m else None


#: folders of the released datasets' own layouts: never a person's folder (a Market-1501 folder without query/
#: would otherwise be read as one person, bounding_box_test, and score 100)
_SPLIT_FOLDERS = {"query", "gallery", "bounding_box_test", "bounding_box_train", "gt_bbox", "gt_query", "train",
                  "test", "images_detected", "images_labeled", "mask_train_v2", "mask_test_v2"}


def _identity_dirs(folder: Path) -> list[Path]:
    return sorted(d for d in folder.iterdir() if d.is_dir() and not d.name.startswith("."))


def _check_identity_folder(folder: Path) -> None:
    """Raise ``InvalidInputError`` for an image beside the person folders (it would be skipped)."""
    loose = _first_image_name(folder)
    if loose:
        raise InvalidInputError(f"{folder / loose}: an image outside any person folder; expected {folder}/PID/*.jpg")


def _looks_like_identity_folders(folder: Path) -> bool:
    if not folder.is_dir():
        return False
    dirs = _identity_dirs(folder)
    if not dirs or any(d.name.lower() in _SPLIT_FOLDERS for d in dirs):
        return False
    for d in dirs[:20]:
        name = _first_image_name(d)
        if not name or camera_from_name(name) is None:
            return False
    return True


def _detect_folders(path: Path) -> bool:
    if (path / "query").is_dir() and (path / "gallery").is_dir():
        return _looks_like_identity_folders(path / "query") and _looks_like_identity_folders(path / "gallery")
    return _looks_like_identity_folders(path)


def _identity_samples(folder: Path, pid_codes: dict[str, int], cam_codes: dict[str, int]) -> list[Sample]:
    _check_identity_folder(folder)
    samples = []
    for person in _identity_dirs(folder):
        for p in _images(person):
            cam = camera_from_name(p.name)
            if cam is None:
                raise InvalidInputError(
                    f"{p}: no camera in the file name; expected e.g. 0001_c3_x.jpg, cam3_x.jpg or 03_x.jpg"
                )
            extra: dict[str, Any] = {}
            if not re.fullmatch(r"-?\d+", person.name):
                extra["pid_label"] = person.name
            samples.append(Sample(path=p, pid=pid_codes[person.name], camid=cam_codes[cam], extra=extra))
    return samples


def _labels_in(folders: Sequence[Path]) -> tuple[dict[str, int], dict[str, int]]:
    pids: list[str] = []
    cams: list[str] = []
    for folder in folders:
        for person in _identity_dirs(folder):
            pids.append(person.name)
            cams.extend(c for c in (camera_from_name(p.name) for p in _images(person)) if c is not None)
    where = folders[0].parent if len(folders) > 1 else folders[0]
    return _label_to_int(pids, "person folders", where), _label_to_int(cams, "camera labels", where)


def _read_folders(path: Path, opts: ReadOptions) -> Split:
    if (path / "query").is_dir() and (path / "gallery").is_dir():
        if opts.has_camera_rule:
            raise InvalidInputError(f"{path}: query/ and gallery/ folders set the roles; camera rules do not apply")
        pid_codes, cam_codes = _labels_in([path / "query", path / "gallery"])
        query = _identity_samples(path / "query", pid_codes, cam_codes)
        gallery = _identity_samples(path / "gallery", pid_codes, cam_codes)
        protocol = None
    else:
        pid_codes, cam_codes = _labels_in([path])
        samples = _identity_samples(path, pid_codes, cam_codes)
        query, gallery = _select_by_camera(samples, opts, cam_codes, path)
        protocol = _camera_rule_suffix(opts)
    return Split(
        name=path.name, query=tuple(query), gallery=tuple(gallery), format="folders", root=path, protocol=protocol
    )


register_format(
    DatasetFormat(
        name="folders",
        description=(
            "a folder per identity (ROOT/PID/*.jpg, or ROOT/query/PID and ROOT/gallery/PID) with the camera "
            "in the file name: c3 / cam3 / camera3 token, else a leading number (03_x.jpg)"
        ),
        detect=_detect_folders,
        read=_read_folders,
        camera_rule=True,
    )
)
