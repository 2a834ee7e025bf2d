"""Run each request on an Engine: the one place the CLI and the HTTP API call the library."""
from __future__ import annotations

import hashlib
import logging
import os
from pathlib import Path
from typing import Any, Optional, Sequence, Union

import numpy as np

from ..attributes import ANNOTATOR_NAME as ATTRIBUTES
from ..attributes import FUSION_MODES, AttributesNotIndexedError, needs_attributes
from ..attributes.search import VOCABULARY
from ..engine import Engine, discard_new_index_on_failure
from ..errors import InvalidInputError, ReidEngineError, printable
from ..ingest import scan_source
from ..ingest.crops import CropItem
from ..results import Hit, QueryResult
from ..tracks import TrackResult, track_row
from . import media
from .errors import NotFoundError
from .requests import preset_names
from .requests import AddRequest, CropRequest, FindRequest, IndexRequest, QueryRequest, RemoveRequest, TrackRequest

log = logging.getLogger(__name__)

AnyResult = Union[QueryResult, TrackResult]


# -- index access (public Engine API, with the store as fallback) -------------------------------
def refresh(engine: Engine) -> None:
    """Pick up commits made by other processes, when the engine can."""
    fn = getattr(engine, "refresh", None)
    if callable(fn):
        fn()


def _rows(engine: Engine, ids: Sequence[int]) -> dict[int, dict[str, Any]]:
    fn = getattr(engine, "rows", None)
    return fn(list(ids)) if callable(fn) else engine.store.rows(list(ids))


def _vectors(engine: Engine, ids: Sequence[int]) -> np.ndarray:
    fn = getattr(engine, "vectors", None)
    return np.asarray(fn(list(ids)) if callable(fn) else engine.store.vectors(list(ids)), np.float32)


def crop_rows(engine: Engine, ids: Sequence[int]) -> dict[int, dict[str, Any]]:
    """The rows of the given crop ids; any id the index does not hold raises ``NotFoundError``."""
    rows = _rows(engine, ids)
    missing = [int(i) for i in ids if int(i) not in rows]
    if missing:
        raise NotFoundError(f"crop {missing[0]}: no such crop in the index" if len(missing) == 1
                            else f"crops {', '.join(map(str, missing[:10]))}: not in the index")
    return rows


def crop_dict(row: dict[str, Any]) -> dict[str, Any]:
    """A crop's metadata in the shape of a hit, without rank and distance."""
    d = Hit.from_row(0, 0.0, row).to_dict()
    d.pop("rank")
    d.pop("distance")
    return d


# -- requests ------------------------------------------------------------------------------------
def open_engine(index: str, weights: Optional[Path] = None, device: Optional[str] = None) -> Engine:
    """Open an existing index (a folder or a bare name under indexes/)."""
    return Engine.open(index, weights=weights, device=device)


def takes_features(req: QueryRequest) -> bool:
    """Whether ``run_query`` can take the embeddings of the request's images precomputed (crop queries
    whose fusion reads no attributes from the images)."""
    same_camera_lookup = req.exclude_same_camera and req.query_camera is None  # Engine.query looks it up
    return bool(req.images) and not req.by_track and not needs_attributes(req.fusion) and not same_camera_lookup


def run_query(engine: Engine, req: QueryRequest, features: Optional[np.ndarray] = None) -> list[AnyResult]:
    """The ranked answers of a query request, images first, then crop ids, in request order.

    ``features``: the embeddings of ``req.images`` in order (``engine.encoder.encode``), when the caller
    computed them itself, e.g. outside a lock it holds around the engine; only where ``takes_features``.
    """
    if features is not None and not takes_features(req):
        raise InvalidInputError("precomputed features apply to crop queries by image without attribute fusion")
    if req.attributes_only:
        return [run_find(engine, FindRequest(req.attributes, req.k, req.attribute_threshold, req.filters))]
    filters = req.filters.engine_kwargs()
    crop_opts: dict[str, Any] = dict(rerank=req.rerank, fusion=req.fusion)
    if req.attributes:
        crop_opts.update(attributes=list(req.attributes), attribute_threshold=req.attribute_threshold)
    if req.same_person:
        crop_opts["same_person"] = True
    params = req.search_params()
    search: dict[str, Any] = {"search_params": params} if params is not None else {}
    crop_opts.update(search)
    results: list[AnyResult] = []
    if req.images:
        n = len(req.images)
        qcams = [req.query_camera] * n if req.query_camera is not None else None
        common = dict(query_cameras=qcams, exclude_same_camera=req.exclude_same_camera, **filters)
        if req.by_track:
            found: list[AnyResult] = list(engine.query_tracks(list(req.images), req.k, **common, **search))
        elif features is not None:
            found = list(engine.query_features(np.asarray(features, np.float32), req.k, **common, **crop_opts))
        else:
            found = list(engine.query(list(req.images), req.k, **common, **crop_opts))
        for res, label in zip(found, req.image_labels()):
            res.query = printable(label)
        results.extend(found)
    if req.crop_ids:
        ids = [int(i) for i in req.crop_ids]
        rows = crop_rows(engine, ids)
        feats = _vectors(engine, ids)
        labels = [f"crop {i}" for i in ids]
        qcams = [req.query_camera if req.query_camera is not None else rows[i]["camera"] for i in ids]
        common = dict(query_labels=labels, query_cameras=qcams, exclude_same_camera=req.exclude_same_camera, **filters)
        if req.by_track:
            results.extend(engine.query_tracks_features(feats, req.k, **common, **search))
        else:
            if needs_attributes(req.fusion):
                crop_opts["query_attributes"] = [(rows[i].get("extra") or {}).get(ATTRIBUTES) for i in ids]
                has_attrs = ATTRIBUTES in engine.store.manifest.annotators  # else the engine says so
                if has_attrs and any(a is None for a in crop_opts["query_attributes"]):
                    raise AttributesNotIndexedError(
                        "attribute fusion from an indexed crop needs its stored attributes; this crop has none"
                    )
            results.extend(engine.query_features(feats, req.k, **common, **crop_opts))
    return results


def run_find(engine: Engine, req: FindRequest) -> QueryResult:
    """Crops whose attributes match every term of the request."""
    return engine.find(list(req.attributes), req.k, threshold=req.threshold, **req.filters.engine_kwargs())


def run_index(req: IndexRequest, show_progress: Optional[bool] = None) -> dict[str, Any]:
    """Scan the source, open or create the index and add the crops; a summary document."""
    items = scan_source(req.source, glob=req.glob, pattern=req.pattern, camera=req.camera, role=req.role,
                        source_name=req.source_name)
    if not items:
        raise InvalidInputError(f"{req.source}: no images found (glob {req.glob!r})")
    with discard_new_index_on_failure(req.index):
        return _index_items(req, items, show_progress)


def _index_items(req: IndexRequest, items: list[CropItem], show_progress: Optional[bool]) -> dict[str, Any]:
    engine = Engine.open_or_create(
        req.index, encoder=req.encoder, weights=req.weights, device=req.device,
        annotators=[ATTRIBUTES] if req.attributes else [], **req.create_options(),
    )
    with engine:
        if req.attributes and ATTRIBUTES not in engine.store.manifest.annotators:
            raise AttributesNotIndexedError(
                f"{engine.path}: this index was built without attributes; "
                "--attributes needs a new index (rebuild it with --attributes)"
            )
        if req.ray is not None:
            from ..distributed import index_with_ray

            with engine.store.writing():
                report = index_with_ray(engine, items, req.ray or None, commit_every=req.commit_every,
                                        batch_size=req.batch_size, strict=req.strict, device=req.device,
                                        show_progress=show_progress)
        else:
            report = engine.add(items, strict=req.strict, batch_size=req.batch_size, show_progress=show_progress,
                                commit_every=req.commit_every)
        total = int(engine.stats()["crops"])
    return {
        "index": str(engine.path), "added": report.added, "duplicates": report.duplicates,
        "failed": [{"path": p, "reason": r} for p, r in report.failed], "total": total,
        "seconds": round(report.seconds, 3), "summary": report.summary(), "ids": list(report.ids),
    }


_SUFFIX = {"png": ".png", "jpeg": ".jpg", "bmp": ".bmp", "webp": ".webp"}


def run_add(engine: Engine, req: AddRequest, folder: Path) -> dict[str, Any]:
    """Keep the uploaded files in ``folder`` (named by their sha256) and index them."""
    folder.mkdir(parents=True, exist_ok=True)
    items: list[CropItem] = []
    written: list[Path] = []  # files this call made: removed again when nothing is indexed
    for data, kind in zip(req.data, req.kinds):
        path = folder / f"{hashlib.sha256(data).hexdigest()}{_SUFFIX.get(kind, '.img')}"
        if not path.is_file():
            tmp = path.with_name(path.name + f".{os.getpid()}.tmp")
            tmp.write_bytes(data)
            os.replace(tmp, path)
            written.append(path)
        meta: dict[str, Any] = {"source": "upload"}
        for key in ("camera", "pid", "timestamp", "track"):
            if getattr(req, key) is not None:
                meta[key] = getattr(req, key)
        items.append(CropItem(path, meta))
    try:
        report = engine.add(items, strict=True, show_progress=False)
    except ReidEngineError:
        kept = engine.store.known_hashes([p.name.split(".")[0] for p in written])
        for p in written:  # an upload the failed add did not index leaves no file behind
            if p.name.split(".")[0] not in kept:
                p.unlink(missing_ok=True)
        raise
    return {
        "added": report.added, "duplicates": report.duplicates, "ids": list(report.ids),
        "failed": [{"path": label, "reason": r} for (_, r), label in zip(report.failed, req.labels)],
        "total": int(engine.stats()["crops"]),
    }


def run_remove(engine: Engine, req: RemoveRequest) -> dict[str, Any]:
    """Remove the matching crops; how many went and how many are left."""
    n = engine.remove(ids=list(req.ids) or None, cameras=list(req.cameras) or None, sources=list(req.sources) or None)
    return {"removed": int(n), "total": int(engine.stats()["crops"])}


def run_info(engine: Engine) -> dict[str, Any]:
    """The index's statistics."""
    return dict(engine.stats())


def capabilities(engine: Engine) -> dict[str, Any]:
    """What a client may ask of this index: presets, fusion modes, attribute terms."""
    has_attrs = ATTRIBUTES in engine.store.manifest.annotators
    return {
        "rerank_presets": preset_names(),
        "fusion_modes": list(FUSION_MODES) if has_attrs else [],
        "attributes": has_attrs,
        "attribute_terms": sorted(VOCABULARY) if has_attrs else [],
    }


def get_crop(engine: Engine, req: CropRequest) -> dict[str, Any]:
    """One crop's metadata."""
    return crop_dict(crop_rows(engine, [req.id])[int(req.id)])


def crop_image(engine: Engine, req: CropRequest) -> np.ndarray:
    """One crop's BGR pixels (cut from its frame for footage crops)."""
    return media.crop_pixels(crop_rows(engine, [req.id])[int(req.id)])


def _track_row(engine: Engine, key: str) -> dict[str, Any]:
    row = track_row(engine.store, key)
    if row is None:
        raise NotFoundError(f"track {key!r}: no such track in the index")
    return row


def get_track(engine: Engine, req: TrackRequest) -> dict[str, Any]:
    """A track: camera, source, time span and its indexed crops in frame order."""
    row = _track_row(engine, req.key)
    ids = [int(i) for i in row.get("crop_ids") or []]
    rows = _rows(engine, ids)
    crops = sorted((crop_dict(rows[i]) for i in ids if i in rows), key=lambda c: (c["frame"] is None, c["frame"] or 0))
    extra = row.get("extra") or {}
    return {
        "key": row["key"], "camera": row.get("camera"), "source": row.get("source"),
        "start_time": row.get("start_time"), "end_time": row.get("end_time"),
        "start_frame": row.get("start_frame"), "end_frame": row.get("end_frame"),
        "start_offset": extra.get("start_offset"), "end_offset": extra.get("end_offset"),
        "n_frames": int(row.get("n_frames") or 0), "best_crop": row.get("best_crop"), "crops": crops,
    }


def track_frame(engine: Engine, req: TrackRequest) -> np.ndarray:
    """The frame of one of the track's crops (default: the best) with its box drawn."""
    row = _track_row(engine, req.key)
    ids = [int(i) for i in row.get("crop_ids") or []]
    crop_id = req.crop_id if req.crop_id is not None else row.get("best_crop")
    if crop_id is None or int(crop_id) not in ids:
        raise NotFoundError(f"track {req.key!r}: crop {crop_id} is not one of its crops")
    crop = crop_rows(engine, [int(crop_id)])[int(crop_id)]
    return media.frame_with_box(crop, label=str(req.key).rsplit("/", 1)[-1])


def run_compact(engine: Engine) -> dict[str, Any]:
    """Compact the index (drop tombstones, merge segments) when its engine can."""
    fn = getattr(engine, "compact", None)
    if not callable(fn):
        from ..errors import UnsupportedOperationError

        raise UnsupportedOperationError(f"{engine.path}: this engine cannot compact its index")
    fn()
    stats = engine.stats()
    return {"index": str(engine.path), "crops": int(stats["crops"]), "generation": stats.get("generation")}
