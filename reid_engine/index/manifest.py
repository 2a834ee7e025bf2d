"""The index folder's manifest.json: what built the index and what it holds."""
from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Optional

from ..errors import IndexCorruptError, IndexNotFoundError

FORMAT_VERSION = 1
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
    nfc: Optional[dict[str, Any]] = None  # gallery NFC kept at index time: k1, k2, weight
    counts: dict[str, int] = field(default_factory=dict)
    generation: int = 0
    created_at: float = 0.0
    updated_at: float = 0.0
    format_version: int = FORMAT_VERSION

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2, sort_keys=True)

    @classmethod
    def from_dict(cls, d: dict[str, Any], where: Path) -> "Manifest":
        version = d.get("format_version")
        if version != FORMAT_VERSION:
            raise IndexCorruptError(f"{where}: format version {version!r}, this reid-engine reads {FORMAT_VERSION}")
        known = set(cls.__dataclass_fields__)
        missing = {"encoder", "dim"} - set(d)
        if missing:
            raise IndexCorruptError(f"{where}: manifest lacks {', '.join(sorted(missing))}")
        return cls(**{k: v for k, v in d.items() if k in known})


def read_manifest(folder: Path) -> Manifest:
    path = folder / MANIFEST_NAME
    if not path.is_file():
        raise IndexNotFoundError(f"{folder}: no reid-engine index here (missing {MANIFEST_NAME})")
    try:
        data = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise IndexCorruptError(f"{path}: unreadable manifest ({exc})") from None
    return Manifest.from_dict(data, path)


def write_manifest(folder: Path, manifest: Manifest) -> None:
    """Write manifest.json atomically (temporary file + rename)."""
    path = folder / MANIFEST_NAME
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(manifest.to_json())
    with open(tmp, "rb") as f:
        os.fsync(f.fileno())
    os.replace(tmp, path)
