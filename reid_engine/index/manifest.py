"""The index folder's manifest.json: what built the index and what it holds."""
from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Optional

from ..errors import IndexCorruptError, IndexNotFoundError

FORMAT_VERSION = 2
MANIFEST_NAME = "manifest.json"


@dataclass
class Manifest:
    """Static facts of an index (encoder, dim, factory) and its latest counts."""

    encoder: dict[str, Any]
    dim: int
    factory: str = "Flat"
    normalization: str = "l2"
    metric: str = "inner_product"
    db_url: str = "sqlite:///{index}/crops.db"
    annotators: list[str] = field(default_factory=list)
    nfc: Optional[dict[str, Any]] = None  # format 1 only (gallery NFC vectors); unused since format 2
    backend: str = "faiss"  # the vector backend (index/backend.py) and its options
    backend_options: dict[str, Any] = field(default_factory=dict)
    hooks: list[str] = field(default_factory=list)  # index-time state kept per commit (rerank/base.IndexHook)
    search: dict[str, Any] = field(default_factory=dict)  # default SearchParams (nprobe, exact, refine...)
    counts: dict[str, int] = field(default_factory=dict)
    generation: int = 0
    created_at: float = 0.0
    updated_at: float = 0.0
    format_version: int = FORMAT_VERSION

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2, sort_keys=True)

    @classmethod
    def from_dict(cls, d: Any, where: Path) -> "Manifest":
        """A manifest from parsed JSON; any field of the wrong type is an IndexCorruptError naming it."""
        if not isinstance(d, dict):
            raise IndexCorruptError(f"{where}: expected a JSON object, found a {type(d).__name__}")
        version = d.get("format_version")
        if version != FORMAT_VERSION:
            raise IndexCorruptError(f"{where}: format version {version!r}, this reid-engine reads {FORMAT_VERSION}")
        known = set(cls.__dataclass_fields__)
        missing = {"encoder", "dim"} - set(d)
        if missing:
            raise IndexCorruptError(f"{where}: manifest lacks {', '.join(sorted(missing))}")
        values = {k: v for k, v in d.items() if k in known}
        for name, value in values.items():
            problem = _field_problem(name, value)
            if problem:
                raise IndexCorruptError(f"{where}: field {name!r} is {value!r}, expected {problem}")
        return cls(**values)


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


#: field -> (check, what is expected); fields absent here are free-form
_FIELD_CHECKS: dict[str, tuple[Any, str]] = {
    "encoder": (lambda v: isinstance(v, dict) and isinstance(v.get("name"), str) and v["name"] != "",
                "an object with the encoder's \"name\""),
    "dim": (lambda v: _is_int(v) and v > 0, "a positive integer"),
    "factory": (lambda v: isinstance(v, str), "a text"),
    "normalization": (lambda v: isinstance(v, str), "a text"),
    "metric": (lambda v: isinstance(v, str), "a text"),
    "db_url": (lambda v: isinstance(v, str) and v.strip() != "", "a database URL text"),
    "annotators": (lambda v: isinstance(v, list) and all(isinstance(x, str) for x in v), "a list of names"),
    "nfc": (lambda v: v is None or isinstance(v, dict), "null or an object"),
    "backend": (lambda v: isinstance(v, str) and v != "", "a backend name"),
    "backend_options": (lambda v: isinstance(v, dict), "an object"),
    "hooks": (lambda v: isinstance(v, list) and all(isinstance(x, str) for x in v), "a list of names"),
    "search": (lambda v: isinstance(v, dict), "an object"),
    "counts": (lambda v: isinstance(v, dict), "an object"),
    "generation": (lambda v: _is_int(v) and v >= 0, "a non-negative integer"),
    "created_at": (_is_number, "a number"),
    "updated_at": (_is_number, "a number"),
}


def _field_problem(name: str, value: Any) -> Optional[str]:
    check = _FIELD_CHECKS.get(name)
    if check is None or check[0](value):
        return None
    return str(check[1])


def read_manifest(folder: Path) -> Manifest:
    path = folder / MANIFEST_NAME
    if not path.is_file():
        if path.exists():
            raise IndexCorruptError(f"{path}: is not a file; expected the index's manifest")
        if folder.is_dir() and any(folder.glob("crops.db*")):
            raise IndexNotFoundError(
                f"{folder}: {MANIFEST_NAME} is missing but the folder holds an index database; restore "
                f"{MANIFEST_NAME} from a backup, or delete the folder {folder} to build the index again"
            )
        raise IndexNotFoundError(f"{folder}: no reid-engine index here (missing {MANIFEST_NAME})")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:  # ValueError: not JSON, or not UTF-8 text
        raise IndexCorruptError(
            f"{path}: unreadable manifest ({exc}); restore it from a backup or rebuild the index"
        ) from None
    return Manifest.from_dict(data, path)


def write_manifest(folder: Path, manifest: Manifest) -> None:
    """Write manifest.json atomically (temporary file + rename)."""
    path = folder / MANIFEST_NAME
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(manifest.to_json())
    with open(tmp, "rb") as f:
        os.fsync(f.fileno())
    os.replace(tmp, path)
