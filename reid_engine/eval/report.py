"""Evaluation reports: dataset statistics, a JSON document and readable text tables."""
from __future__ import annotations

import json
import math
import os
import platform
import time
from pathlib import Path
from typing import Any, Mapping, Optional, Sequence, Union

import numpy as np

from ..errors import InvalidInputError
from .datasets import Split
from .metrics import EvalResult

REPORT_VERSION = 1


def dataset_statistics(split: Split) -> dict[str, Any]:
    """Counts of a split: identities, crops and cameras of query, gallery and both."""
    q_pids = {s.pid for s in split.query}
    g_pids = {s.pid for s in split.gallery}
    cams = {s.camid for s in split.query} | {s.camid for s in split.gallery}
    stats: dict[str, Any] = {
        "name": split.name,
        "format": split.format,
        "protocol": split.protocol,
        "root": str(split.root) if split.root else None,
        "num_ids": len(q_pids | g_pids),
        "num_query_ids": len(q_pids),
        "num_gallery_ids": len(g_pids),
        "num_query": len(split.query),
        "num_gallery": len(split.gallery),
        "num_cameras": len(cams),
        "query_cameras": sorted({s.camid for s in split.query}),
        "gallery_cameras": sorted({s.camid for s in split.gallery}),
        "clothes_changing": split.clothes_changing,
    }
    clothes = {(s.pid, s.clothes_id) for s in split.query + split.gallery if s.clothes_id is not None}
    if clothes:
        stats["num_outfits"] = len(clothes)
    return stats


def _plain(value: Any) -> Any:
    """JSON-safe copy: numpy scalars and arrays, paths, NaN -> None."""
    if isinstance(value, Mapping):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, np.ndarray):
        return [_plain(v) for v in value.tolist()]
    if isinstance(value, np.generic):
        return _plain(value.item())
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def build_report(
    result: EvalResult,
    split: Split,
    settings: Mapping[str, Any],
    timings: Optional[Mapping[str, float]] = None,
) -> dict[str, Any]:
    """One JSON-ready document: metrics in percent, settings, timings, dataset statistics.

    The headline figures (rank1, mAP, mINP, ...) also sit at the top level so
    that scripts can read ``doc["rank1"]`` directly.
    """
    metrics = result.to_dict(percent=True)
    doc: dict[str, Any] = {
        "rank1": metrics["rank1"],
        "mAP": metrics["mAP"],
        "mINP": metrics["mINP"],
        "unit": "percent",
        "metrics": metrics,
        "settings": dict(settings),
        "dataset": dataset_statistics(split),
        "timings": {k: round(float(v), 4) for k, v in (timings or {}).items()},
        "report_version": REPORT_VERSION,
        "created_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "platform": {"python": platform.python_version(), "numpy": np.__version__},
    }
    return _plain(doc)


def report_folder(path: Union[str, Path]) -> Path:
    """Create the report folder ``path`` (and its parents); InvalidInputError naming it when that fails."""
    folder = Path(path)
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise InvalidInputError(
            f"{folder}: cannot create the report folder ({exc.strerror or exc}); expected a writable folder"
        ) from None
    return folder


def write_json_report(report: Mapping[str, Any], path: Union[str, Path]) -> Path:
    """Write the report as indented JSON (through a temporary file and a rename)."""
    out = Path(path)
    report_folder(out.parent)
    tmp = out.with_name(out.name + ".tmp")
    try:
        tmp.write_text(json.dumps(_plain(report), indent=2, sort_keys=False) + "\n", encoding="utf-8")
        os.replace(tmp, out)
    except OSError as exc:
        raise InvalidInputError(f"{out}: cannot write the report ({exc.strerror or exc})") from None
    return out


def _table(header: Sequence[str], rows: Sequence[Sequence[str]], right: Sequence[bool]) -> str:
    widths = [max(len(str(h)), *(len(str(r[i])) for r in rows)) if rows else len(str(h)) for i, h in enumerate(header)]

    def line(cells: Sequence[str]) -> str:
        return "  ".join(str(c).rjust(w) if r else str(c).ljust(w) for c, w, r in zip(cells, widths, right)).rstrip()

    rule = "  ".join("-" * w for w in widths)
    return "\n".join([line(header), rule, *(line(r) for r in rows)])


def format_table(report: Mapping[str, Any]) -> str:
    """A short human-readable summary of one report (as built by :func:`build_report`)."""
    m = report["metrics"]
    d = report["dataset"]
    s = report.get("settings", {})
    title = f"{d['name']}" + (f" ({d['protocol']})" if d.get("protocol") else "")
    lines = [
        f"dataset   {title}: {d['num_query']} query / {d['num_gallery']} gallery crops, "
        f"{d['num_ids']} identities, {d['num_cameras']} cameras",
    ]
    described = [f"{k}={v}" for k, v in s.items() if k in ("encoder", "rerank", "fusion", "k") and v is not None]
    if described:
        lines.append("settings  " + ", ".join(described))
    lines.append(
        f"queries   {m['num_valid']} scored, {m['num_skipped']} skipped (no correct match in the gallery)"
    )
    lines.append("")
    keys = [k for k in ("rank1", "rank5", "rank10", "rank20", "mAP", "mINP") if k in m]
    header = [k.replace("rank", "Rank-") if k.startswith("rank") else k for k in keys]
    lines.append(_table(header, [[f"{m[k]:.2f}" for k in keys]], [True] * len(keys)))
    lines.append("(percent)")
    if s.get("exact") is False:
        lines.append(
            f"mAP and mINP are lower bounds: each ranked list holds the top {s.get('k')} of {d['num_gallery']} "
            f"gallery crops (pass -k {d['num_gallery']} for exact figures)"
        )
    t = report.get("timings") or {}
    if t:
        lines.append("")
        lines.append("timings   " + ", ".join(f"{k} {v:.2f}s" for k, v in t.items()))
    return "\n".join(lines)


def format_sweep_table(rows: Sequence[Mapping[str, Any]]) -> str:
    """Table of a settings sweep: one row per (rerank, fusion) with Rank-1/5, mAP, mINP in percent."""
    header = ["rerank", "fusion", "Rank-1", "Rank-5", "mAP", "mINP", "seconds"]
    body = [
        [
            str(r.get("rerank") or "none"),
            str(r.get("fusion") or "none"),
            f"{r['rank1']:.2f}",
            f"{r['rank5']:.2f}",
            f"{r['mAP']:.2f}",
            f"{r['mINP']:.2f}",
            f"{r.get('seconds', float('nan')):.2f}",
        ]
        for r in rows
    ]
    return _table(header, body, [False, False, True, True, True, True, True])
