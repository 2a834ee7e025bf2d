"""The API routes: thin handlers that build a service request, run it on the engine and shape the JSON."""
from __future__ import annotations

import json
import math
import time
from pathlib import Path
from typing import Any, Optional
from urllib.parse import quote

import numpy as np
from fastapi import APIRouter, Depends, Path as PathParam, Query, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.exceptions import RequestValidationError
from fastapi.responses import Response
from pydantic import BaseModel, ValidationError
from starlette.datastructures import UploadFile

from .. import __version__
from .. import service as svc
from ..results import Hit
from ..service.errors import UnsupportedMediaError
from ..service.requests import QUERIES_MAX
from ..tracks import TrackResult
from . import schemas as S
from .deps import EngineHolder, ServeConfig, config, holder, require_writer
from .uploads import decode_upload

router = APIRouter()

ERRORS: dict[int | str, dict[str, Any]] = {
    code: {"model": S.ErrorOut, "description": text}
    for code, text in [(400, "Bad input"), (404, "Not found"), (409, "Not possible on this index"),
                       (413, "Upload too large"), (415, "Not an accepted image type"), (422, "Invalid request"),
                       (503, "Index busy")]
}
_IMAGE: dict[int | str, dict[str, Any]] = {200: {"content": {"image/jpeg": {}}, "description": "JPEG image"}}


# -- shaping ---------------------------------------------------------------------------------------
def _name(text: Optional[str]) -> Optional[str]:
    return None if text is None else Path(str(text)).name or str(text)


def track_url(key: str) -> str:
    """The URL of a track; "." and ".." segments are percent-encoded (clients would resolve them away)."""
    parts = [quote(part, safe="") for part in key.split("/")]
    return "/tracks/" + "/".join(p.replace(".", "%2E") if p in (".", "..") else p for p in parts)


def crop_out(d: dict[str, Any]) -> dict[str, Any]:
    """A crop dict (``Hit.to_dict`` shape) -> the API's crop document; server paths reduced to file names."""
    cid = int(d["id"])
    has_frame = d.get("box") is not None and d.get("source") is not None
    return {
        "id": cid, "name": _name(d.get("path")) or "", "sha256": d.get("sha256") or "", "pid": d.get("pid"),
        "camera": d.get("camera"), "timestamp": d.get("timestamp"), "frame": d.get("frame"), "box": d.get("box"),
        "track": d.get("track"), "source": _name(d.get("source")), "extra": d.get("extra"),
        "image_url": f"/crops/{cid}/image", "frame_url": f"/crops/{cid}/frame" if has_frame else None,
        "track_url": track_url(d["track"]) if d.get("track") else None,
    }


def _finite(x: float) -> float:
    return float(x) if math.isfinite(x) else 2.0  # cosine distances live in [0, 2]


def hit_out(hit: Hit) -> dict[str, Any]:
    return {**crop_out(hit.to_dict()), "rank": hit.rank, "distance": _finite(hit.distance)}


def result_out(res: Any) -> dict[str, Any]:
    if isinstance(res, TrackResult):
        tracks = []
        for h in res.hits:
            extra = h.extra or {}
            tracks.append({
                "rank": h.rank, "track": h.track, "distance": _finite(h.distance), "camera": h.camera,
                "source": _name(h.source), "start_time": h.start_time, "end_time": h.end_time,
                "start_frame": h.start_frame, "end_frame": h.end_frame, "start_offset": extra.get("start_offset"),
                "end_offset": extra.get("end_offset"), "n_frames": h.n_frames, "crop_ids": list(h.crop_ids),
                "best": hit_out(h.best), "track_url": track_url(h.track),
            })
        return {"query": res.query, "camera": res.camera, "kind": "tracks", "tracks": tracks}
    return {"query": res.query, "camera": res.camera, "kind": "crops", "hits": [hit_out(h) for h in res.hits]}


def _jpeg(img: np.ndarray, etag: Optional[str] = None) -> Response:
    headers = {"Cache-Control": "private, max-age=300"}
    if etag:
        headers["ETag"] = f'"{etag}"'
    return Response(svc.media.encode_jpeg(img), media_type="image/jpeg", headers=headers)


# -- request parsing -----------------------------------------------------------------------------------
_LIST_FIELDS = {"cameras", "exclude_cameras", "sources", "attributes", "crop_ids"}


def _validate(model: type[BaseModel], data: dict[str, Any]) -> Any:
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        raise RequestValidationError(exc.errors(include_url=False, include_context=False)) from None


async def _read_body(request: Request, cfg: ServeConfig) -> tuple[dict[str, Any], list[tuple[str, bytes]]]:
    """(fields, [(file name, bytes)]) of a JSON or multipart request."""
    ctype = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if ctype == "application/json":
        raw = await request.body()
        try:
            data = json.loads(raw or b"null")
        except (json.JSONDecodeError, UnicodeDecodeError):
            raise svc.RequestError("the request body is not valid JSON") from None
        except RecursionError:
            raise svc.RequestError("the request body nests JSON too deeply") from None
        if not isinstance(data, dict):
            raise svc.RequestError("the request body must be a JSON object")
        return data, []
    if ctype in ("multipart/form-data", "application/x-www-form-urlencoded"):
        form = await request.form(max_files=QUERIES_MAX, max_fields=256)
        fields: dict[str, Any] = {}
        files: list[tuple[str, bytes]] = []
        try:
            for key, value in form.multi_items():
                if key == "images":
                    if isinstance(value, UploadFile):
                        files.append((_name(value.filename) or f"upload {len(files)}", await value.read()))
                    else:
                        files.append((f"upload {len(files)}", str(value).encode()))
                elif key in _LIST_FIELDS:
                    fields.setdefault(key, []).append(value if isinstance(value, str) else "")
                else:
                    fields[key] = value if isinstance(value, str) else ""
        finally:
            await form.close()
        for key in ("time_from", "time_to", "query_camera", "rerank", "fusion"):
            if fields.get(key) == "":
                fields[key] = None
        for key in ("cameras", "exclude_cameras", "sources", "attributes", "crop_ids"):
            if key in fields:
                fields[key] = [v for v in fields[key] if v != ""]
        return fields, files
    raise UnsupportedMediaError(f"content type {ctype or 'none'!r}: send application/json or multipart/form-data")


def _decode_all(files: list[tuple[str, bytes]], cfg: ServeConfig) -> list[tuple[str, np.ndarray, str, bytes]]:
    out = []
    for name, data in files:
        img, kind = decode_upload(data, name, cfg.max_upload_bytes, cfg.max_pixels)
        out.append((name, img, kind, data))
    return out


def _filters(body: S.FilterFields) -> svc.Filters:
    return svc.Filters.build(body.cameras, body.exclude_cameras, body.sources, body.time_from, body.time_to)


def _query_schema() -> dict[str, Any]:
    return {"requestBody": {"required": True, "content": {
        "application/json": {"schema": {"$ref": "#/components/schemas/QueryBody"}},
        "multipart/form-data": {"schema": {"$ref": "#/components/schemas/QueryUpload"}},
    }}}


# -- routes ----------------------------------------------------------------------------------------
@router.get("/healthz", response_model=S.HealthOut, tags=["index"])
def healthz(h: EngineHolder = Depends(holder)) -> dict[str, Any]:
    """Liveness: the index answers and how many crops it holds."""
    with h.use() as engine:
        stats = svc.run_info(engine)
    return {"status": "ok", "crops": int(stats["crops"]), "generation": stats.get("generation")}


@router.get("/info", tags=["index"])
def info(h: EngineHolder = Depends(holder), cfg: ServeConfig = Depends(config)) -> dict[str, Any]:
    """Counts, cameras, time range, encoder, and what this index can be asked (presets, fusion, attributes)."""
    with h.use() as engine:
        stats = svc.run_info(engine)
        caps = svc.capabilities(engine)
    stats.pop("db_url", None)
    stats["path"] = _name(stats.get("path"))
    return {**stats, **caps, "writes": bool(cfg.token), "max_upload_bytes": cfg.max_upload_bytes,
            "max_pixels": cfg.max_pixels, "version": __version__}


@router.post("/query", response_model=S.QueryOut, responses=ERRORS, tags=["search"], openapi_extra=_query_schema())
async def query(request: Request) -> dict[str, Any]:
    """Rank the gallery for uploaded images (multipart ``images``) and/or indexed crops (``crop_ids``).

    Filters: cameras, exclude_cameras, sources, time_from, time_to, exclude_same_camera, attributes;
    ``rerank`` preset, ``fusion`` mode, ``by_track`` for one hit per appearance in footage.
    Without images or crop ids, ``attributes`` alone list the matching crops.
    """
    cfg: ServeConfig = request.app.state.config
    h: EngineHolder = request.app.state.holder
    fields, files = await _read_body(request, cfg)
    body: S.QueryBody = _validate(S.QueryBody, fields)
    t0 = time.perf_counter()

    def work() -> list[Any]:
        uploads = _decode_all(files, cfg)
        req = svc.QueryRequest(
            images=tuple(u[1] for u in uploads), labels=tuple(u[0] for u in uploads), crop_ids=tuple(body.crop_ids),
            k=body.k, filters=_filters(body), exclude_same_camera=body.exclude_same_camera,
            query_camera=body.query_camera, rerank=body.rerank, fusion=body.fusion, attributes=tuple(body.attributes),
            attribute_threshold=body.attribute_threshold, by_track=body.by_track, nprobe=body.nprobe,
            ef_search=body.ef_search, pool=body.pool, exact=body.exact,
        )
        encoder = h.concurrent_encoder() if svc.ops.takes_features(req) else None
        feats = encoder.encode(list(req.images)) if encoder is not None else None  # outside the engine lock
        with h.use() as engine:
            found = svc.run_query(engine, req, features=feats)
        return [result_out(r) for r in found]

    results = await run_in_threadpool(work)
    return {"k": body.k, "by_track": body.by_track, "results": results, "seconds": round(time.perf_counter() - t0, 4)}


@router.post("/find", response_model=S.ResultOut, responses=ERRORS, tags=["search"])
def find(body: S.FindBody, h: EngineHolder = Depends(holder)) -> dict[str, Any]:
    """Crops whose stored pedestrian attributes match every term, most probable first."""
    req = svc.FindRequest(tuple(body.attributes), body.k, body.threshold, _filters(body))
    with h.use() as engine:
        return result_out(svc.run_find(engine, req))


CropId = PathParam(ge=0, le=2**62, description="Crop id.")


@router.get("/crops/{crop_id}", response_model=S.CropOut, responses=ERRORS, tags=["crops"])
def get_crop(crop_id: int = CropId, h: EngineHolder = Depends(holder)) -> dict[str, Any]:
    """One crop's metadata."""
    with h.use() as engine:
        return crop_out(svc.get_crop(engine, svc.CropRequest(crop_id)))


@router.get("/crops/{crop_id}/image", responses={**ERRORS, **_IMAGE}, response_class=Response, tags=["crops"])
def crop_image(crop_id: int = CropId, h: EngineHolder = Depends(holder)) -> Response:
    """The crop's pixels as JPEG (cut from its video frame or frame image for footage crops)."""
    req = svc.CropRequest(crop_id)
    with h.use() as engine:
        sha = svc.get_crop(engine, req)["sha256"]
        img = svc.crop_image(engine, req)
    return _jpeg(img, sha)


@router.get("/crops/{crop_id}/frame", responses={**ERRORS, **_IMAGE}, response_class=Response, tags=["crops"])
def crop_frame(crop_id: int = CropId, h: EngineHolder = Depends(holder)) -> Response:
    """The frame the crop was cut from, with its box drawn (the crop outlined when there is no frame)."""
    req = svc.CropRequest(crop_id)
    with h.use() as engine:
        row = svc.ops.crop_rows(engine, [crop_id])[crop_id]
    img = svc.media.frame_with_box(row, label=f"#{req.id}")
    return _jpeg(img)


@router.get("/tracks/{key:path}/frame", responses={**ERRORS, **_IMAGE}, response_class=Response, tags=["tracks"])
def track_frame(
    key: str, crop: Optional[int] = Query(None, ge=0, le=2**62, description="Which of its crops (default: the best)."),
    h: EngineHolder = Depends(holder),
) -> Response:
    """A frame of the track with the person's box drawn."""
    req = svc.TrackRequest(key, crop)
    with h.use() as engine:
        img = svc.track_frame(engine, req)
    return _jpeg(img)


@router.get("/tracks/{key:path}", response_model=S.TrackOut, responses=ERRORS, tags=["tracks"])
def get_track(key: str, h: EngineHolder = Depends(holder)) -> dict[str, Any]:
    """One track of ingested footage: camera, time span, and its crops in frame order."""
    with h.use() as engine:
        doc = svc.get_track(engine, svc.TrackRequest(key))
    doc["source"] = _name(doc.get("source"))
    doc["crops"] = [crop_out(c) for c in doc["crops"]]
    doc["frame_url"] = track_url(doc["key"]) + "/frame"
    return doc


@router.post("/crops", response_model=S.AddOut,
             responses={**ERRORS, 401: {"model": S.ErrorOut}, 403: {"model": S.ErrorOut}},
             dependencies=[Depends(require_writer)], tags=["write"], openapi_extra={"requestBody": {
                 "required": True, "content": {"multipart/form-data": {"schema": {
                     "type": "object", "properties": {
                         "images": {"type": "array", "items": {"type": "string", "format": "binary"}},
                         "camera": {"type": "string"}, "pid": {"type": "string"}, "timestamp": {"type": "string"},
                         "track": {"type": "string"}}, "required": ["images"]}}}}})
async def add_crops(request: Request) -> dict[str, Any]:
    """Index uploaded crops (bearer token needed); ``camera``, ``pid``, ``timestamp``, ``track`` apply to all."""
    cfg: ServeConfig = request.app.state.config
    h: EngineHolder = request.app.state.holder
    fields, files = await _read_body(request, cfg)
    unknown = set(fields) - {"camera", "pid", "timestamp", "track"}
    if unknown:
        raise svc.RequestError(f"unknown fields {', '.join(sorted(unknown))}: expected camera, pid, timestamp, track")
    meta = {k: (v or None) if isinstance(v, str) else None for k, v in fields.items()}

    def work() -> dict[str, Any]:
        from ..ingest.crops import parse_time

        uploads = _decode_all(files, cfg)
        req = svc.AddRequest(
            images=tuple(u[1] for u in uploads), data=tuple(u[3] for u in uploads), kinds=tuple(u[2] for u in uploads),
            labels=tuple(u[0] for u in uploads), camera=meta.get("camera"), pid=meta.get("pid"),
            timestamp=parse_time(meta.get("timestamp")), track=meta.get("track"),
        )
        with h.use() as engine:
            folder = cfg.upload_dir or (engine.path / "uploads")
            return svc.run_add(engine, req, folder)

    return await run_in_threadpool(work)


@router.delete("/crops", response_model=S.RemoveOut,
               responses={**ERRORS, 401: {"model": S.ErrorOut}, 403: {"model": S.ErrorOut}},
               dependencies=[Depends(require_writer)], tags=["write"])
def remove_crops(
    id: list[int] = Query([], description="Crop ids (repeatable)."),
    camera: list[str] = Query([], description="Cameras (repeatable)."),
    source: list[str] = Query([], description="Sources (repeatable)."),
    h: EngineHolder = Depends(holder),
) -> dict[str, Any]:
    """Remove the crops matching every given criterion (bearer token needed)."""
    req = svc.RemoveRequest(ids=tuple(id), cameras=tuple(camera), sources=tuple(source))
    with h.use() as engine:
        return svc.run_remove(engine, req)
