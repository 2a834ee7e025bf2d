"""Core commands: index, query, info, remove, encoders, serve: each builds a service request, runs it, formats it."""
from __future__ import annotations

import json
import math
import sys
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Optional

import click

from ..clitypes import PathParam
from ..encoders import DEFAULT_ENCODER, list_encoders
from ..encoders.registry import default_weights_path
from ..attributes import FUSION_MODES, vocabulary_help
from ..attributes.search import DEFAULT_THRESHOLD
from ..ingest.crops import PATTERNS
from .. import service as svc
from ..results import QueryResult
from . import main

def _source_keys(values: tuple[str, ...]) -> tuple[str, ...]:
    """``--source`` values as the index records them: a folder or video named by a path that exists here is
    recorded by its absolute path (``--source gallery`` matched nothing)."""
    from ..assets import expand_user, resolved

    out = []
    for v in values:
        p = expand_user(v) if v.strip() else None
        out.append(str(resolved(p)) if p is not None and not p.is_absolute() and p.exists() else v)
    return tuple(out)


index_option = click.option(
    "--index", "index_path", required=True, metavar="PATH",
    help="Index folder, or a bare name resolved under indexes/.",
)
encoder_option = click.option(
    "--encoder", default=None, metavar="NAME", help="Registered encoder (see `reid-engine encoders`)."
)
weights_option = click.option(
    "--weights", type=PathParam(dir_okay=False, path_type=Path), default=None,
    help="Weights file; when --encoder is not given its type picks the model (.onnx, .xml, torchreid .pth/.pth.tar).",
)
device_option = click.option("--device", default=None, help="cpu, cuda, cuda:N (default: cuda when available).")


#: help of the search parameters' options: per query, and as a new index's stored defaults
_SEARCH_HELP = {
    False: ("IVF lists probed by this search (more: slower, closer to exact).",
            "Beam of this search in a graph index, used as given (more: slower, closer to exact; default: the "
            "index's, widened with the graph's size).",
            "First-stage candidates the re-ranking re-scores for each query (default: the preset's, 200 for the "
            "default); the rest of the top k follows in cosine order."),
    True: ("Default IVF lists probed per search, stored in a new index (per query: query --nprobe).",
           "Default graph beam per search, stored in a new index and used as given (default: the index's, widened "
           "with the graph's size; per query: query --ef-search).",
           "Default candidates the re-ranking re-scores per query, stored in a new index (default: the preset's; "
           "per query: query --pool)."),
}


def search_options(stored: bool) -> Any:
    """The first stage's search parameters (``SearchParams``) ``nprobe``, ``ef_search`` and ``pool`` as options,
    per query or (``stored``) as a new index's defaults."""
    nprobe, ef_search, pool = _SEARCH_HELP[stored]
    options = [
        click.option("--nprobe", default=None, type=click.IntRange(1, svc.NPROBE_MAX), help=nprobe),
        click.option("--ef-search", default=None, type=click.IntRange(1, svc.EF_SEARCH_MAX), help=ef_search),
        click.option("--pool", default=None, type=click.IntRange(1, svc.POOL_MAX), help=pool),
    ]

    def apply(f: Any) -> Any:
        for option in reversed(options):
            f = option(f)
        return f
    return apply


def _progress() -> Optional[bool]:
    return True if sys.stderr.isatty() else False


def _fmt_time(ts: Optional[float]) -> str:
    if ts is None:
        return "-"
    try:
        return datetime.fromtimestamp(ts, tz=timezone.utc).strftime("%Y-%m-%d %H:%M:%S")
    except (OverflowError, ValueError, OSError):  # a row written before times were range-checked
        return f"{ts:g}"


def _print_results(results: list[QueryResult]) -> None:
    for res in results:
        cam = f" (camera {res.camera})" if res.camera is not None else ""
        click.echo(f"query {res.query}{cam}: {len(res.hits)} hits")
        click.echo(
            f"{'rank':>4}  {'distance':>8}  {'camera':<8} {'pid':<8} {'time':<19}  {'frame':>6}  {'track':<6}  path"
        )
        for h in res.hits:
            click.echo(
                f"{h.rank:>4}  {h.distance:8.4f}  {str(h.camera or '-'):<8} {str(h.pid or '-'):<8} "
                f"{_fmt_time(h.timestamp):<19}  {str(h.frame if h.frame is not None else '-'):>6}  "
                f"{str(h.track or '-'):<6}  {h.path}"
            )
        click.echo("")


def _print_track_results(results: list[Any]) -> None:
    for res in results:
        cam = f" (camera {res.camera})" if res.camera is not None else ""
        click.echo(f"query {res.query}{cam}: {len(res.hits)} tracks")
        click.echo(f"{'rank':>4}  {'distance':>8}  {'camera':<8} {'from':<19}  {'to':<8}  {'frames':>11}  track")
        for h in res.hits:
            extra = h.extra or {}
            if h.start_time is not None:
                start, end = _fmt_time(h.start_time), _fmt_time(h.end_time)[-8:]
            else:  # footage ingested without --start-time: seconds into the video
                start, end = f"+{extra.get('start_offset', 0):.1f}s", f"+{extra.get('end_offset', 0):.1f}s"
            click.echo(
                f"{h.rank:>4}  {h.distance:8.4f}  {str(h.camera or '-'):<8} {start:<19}  {end:<8}  "
                f"{f'{h.start_frame}-{h.end_frame}':>11}  {h.track}"
            )
        click.echo("")


@main.command("index")
@click.argument("source", type=PathParam(path_type=Path))
@index_option
@encoder_option
@weights_option
@click.option("--factory", default=None,
              help="Index type of a new index: Flat (always exact) or IVF<n>,Flat; default: exact while the gallery "
                   "is small, then an IVF trained and re-trained automatically as it grows.")
@click.option("--db-url", default=None,
              help="SQLAlchemy URL for the crop table of a new index (default: SQLite in the index folder).")
@click.option("--backend", default=None, help="Vector backend of a new index: faiss (the default) or milvus.")
@click.option("--backend-uri", default=None, help="Milvus: a Milvus Lite file (./x.db) or http://HOST:19530.")
@search_options(stored=True)
@click.option("--ray", "ray_address", is_flag=False, flag_value="", default=None, metavar="[ADDRESS]",
              help="Decode and encode on a Ray cluster (without ADDRESS a local one); this process commits in order.")
@click.option("--glob", "glob_pattern", default="**/*", show_default=True, help="Which files of a folder to take.")
@click.option(
    "--pattern", default="auto", show_default=True,
    help="Metadata from each relative path: a regex with named groups pid, camera, frame, track, timestamp, "
         f"or one of {', '.join(PATTERNS)}, auto, none.",
)
@click.option("--camera", default=None, help="Camera of every crop (over what --pattern found).")
@click.option("--role", default=None, help="With a CSV manifest: only rows of this role (e.g. gallery).")
@click.option("--source-name", default=None,
              help="What to record as the crops' source (default: SOURCE's absolute path).")
@click.option("--strict", is_flag=True, help="Stop at the first unreadable image instead of skipping it.")
@click.option("--batch-size", default=32, show_default=True, type=click.IntRange(1))
@click.option("--commit-every", default=4096, show_default=True, type=click.IntRange(1),
              help="Crops per atomic commit.")
@click.option("--attributes", "with_attributes", is_flag=True,
              help="Also store pedestrian attributes of every crop (for query --fusion and --attr); new indexes only.")
@device_option
@click.option("--json", "as_json", is_flag=True, help="Print the summary as JSON.")
def index_cmd(
    source: Path, index_path: str, encoder: Optional[str], weights: Optional[Path], factory: Optional[str],
    db_url: Optional[str], backend: Optional[str], backend_uri: Optional[str], nprobe: Optional[int],
    ef_search: Optional[int], pool: Optional[int], ray_address: Optional[str], glob_pattern: str, pattern: str,
    camera: Optional[str], role: Optional[str], source_name: Optional[str], strict: bool, batch_size: int,
    commit_every: int, with_attributes: bool, device: Optional[str], as_json: bool,
) -> None:
    """Index the person crops of SOURCE (a folder, a CSV manifest or one image), adding to the index if it exists."""
    req = svc.IndexRequest(
        source=source, index=index_path, encoder=encoder, weights=weights, factory=factory, db_url=db_url,
        backend=backend, backend_uri=backend_uri, nprobe=nprobe, ef_search=ef_search, pool=pool, ray=ray_address,
        glob=glob_pattern, pattern=pattern,
        camera=camera, role=role, source_name=source_name, strict=strict,
        batch_size=batch_size, commit_every=commit_every, attributes=with_attributes, device=device,
    )
    doc = svc.run_index(req, show_progress=_progress())
    if as_json:
        click.echo(json.dumps({k: doc[k] for k in ("index", "added", "duplicates", "failed", "total", "seconds")}))
    else:
        click.echo(f"{doc['index']}: {doc['summary']}; {doc['total']} crops in the index")
        for failure in doc["failed"][:10]:
            click.echo(f"  unreadable: {failure['reason']}", err=True)


@main.command("query")
@click.argument("images", nargs=-1, required=False, type=PathParam(path_type=Path))
@index_option
@click.option("-k", "k", default=10, show_default=True, type=click.IntRange(1, svc.K_MAX), help="Hits per query.")
@click.option("--camera", "cameras", multiple=True, help="Only gallery crops from this camera (repeatable).")
@click.option("--exclude-camera", "exclude_cameras", multiple=True, help="Leave out this camera (repeatable).")
@click.option("--exclude-same-camera", is_flag=True, help="Leave out the query's own camera.")
@click.option("--query-camera", default=None, help="Camera of the query images (else looked up when they are indexed).")
@click.option("--source", "sources", multiple=True, help="Only crops from this source (repeatable).")
@click.option("--time-from", default=None, help="Only crops at or after this time (ISO-8601 or epoch seconds).")
@click.option("--time-to", default=None, help="Only crops at or before this time.")
@click.option("--rerank", default=None, metavar="PRESET",
              help="Re-ranking preset (default: 'default'; 'none' for plain cosine). See docs/rerank.md.")
@click.option("--fusion", default=None, metavar="MODE",
              help=f"Attribute fusion: {', '.join(FUSION_MODES)} (default: appearance). See docs/attributes.md.")
@click.option("--attr", "attr_terms", multiple=True, metavar="TERM",
              help="Only crops with this attribute (repeatable or comma-separated; without IMAGES: "
                   f"search by attributes alone): {vocabulary_help()}.")
@click.option("--attr-threshold", default=DEFAULT_THRESHOLD, show_default=True,
              type=click.FloatRange(0, 1, min_open=True, max_open=True),
              help="Probability an attribute term must reach.")
@weights_option
@device_option
@click.option("--tracks", "by_track", is_flag=True,
              help="One hit per track of ingested footage (camera, start and end time, best crop) instead of per crop.")
@click.option("--same-person", is_flag=True,
              help="The IMAGES show one person: answer with one list pooled over all of them.")
@search_options(stored=False)
@click.option("--exact", is_flag=True, help="Exhaustive first-stage search instead of the approximate index.")
@click.option("--save-crops", type=PathParam(file_okay=False, path_type=Path), default=None, metavar="DIR",
              help="Write the matched crops into DIR/<query>/.")
@click.option("--render", "render_dir", type=PathParam(file_okay=False, path_type=Path), default=None, metavar="DIR",
              help="Draw the matched boxes on their source frames into DIR/<query>/.")
@click.option("--json", "as_json", is_flag=True, help="One JSON document: per query, its hits with metadata.")
def query_cmd(
    images: tuple[Path, ...], index_path: str, k: int, cameras: tuple[str, ...], exclude_cameras: tuple[str, ...],
    exclude_same_camera: bool, query_camera: Optional[str], sources: tuple[str, ...], time_from: Optional[str],
    time_to: Optional[str], rerank: Optional[str], fusion: Optional[str], attr_terms: tuple[str, ...],
    attr_threshold: float, weights: Optional[Path], device: Optional[str], by_track: bool,
    same_person: bool, nprobe: Optional[int], ef_search: Optional[int], pool: Optional[int], exact: bool,
    save_crops: Optional[Path], render_dir: Optional[Path], as_json: bool,
) -> None:
    """Find the gallery crops (or, with --tracks, the appearances) most like each query IMAGE.

    With --attr and no IMAGES, list the crops whose attributes match (e.g. --attr male --attr backpack).
    """
    req = svc.QueryRequest(
        images=tuple(str(p) for p in images), k=k,
        filters=svc.Filters.build(cameras, exclude_cameras, _source_keys(sources), time_from, time_to),
        exclude_same_camera=exclude_same_camera, query_camera=query_camera, rerank=rerank, fusion=fusion,
        attributes=attr_terms, attribute_threshold=attr_threshold, by_track=by_track,
        same_person=same_person, nprobe=nprobe, ef_search=ef_search, pool=pool, exact=exact,
    )
    with svc.open_engine(index_path, weights=weights, device=device) as engine:
        results = svc.run_query(engine, req)
        index_str = str(engine.path)
    written: dict[str, list[str]] = {}
    if save_crops is not None or render_dir is not None:
        from ..ingest.show import render_hits, save_crops as write_crops

        if save_crops is not None:
            written["crops"] = [str(p) for p in write_crops(results, save_crops)]
        if render_dir is not None:
            written["rendered"] = [str(p) for p in render_hits(results, render_dir)]
    if as_json:
        doc: dict[str, Any] = {
            "index": index_str, "k": k, "tracks": by_track, "queries": [r.to_dict() for r in results]
        }
        click.echo(json.dumps({**doc, **written}))
    else:
        if by_track:
            _print_track_results(results)
        else:
            _print_results(results)  # type: ignore[arg-type]
        for what, files in written.items():
            click.echo(f"wrote {len(files)} {'crops' if what == 'crops' else 'rendered frames'}", err=True)


def _describe_backend(d: dict[str, Any]) -> str:
    """One line for `info`: backend, index type and its parameters, segments, removed vectors."""
    keys = ("graph_m", "graph_rows", "background_graph_rows", "ef_search", "nlist", "nprobe", "exact_threshold")
    params = [f"{k}={d[k]}" for k in keys if d.get(k)]
    segs = d.get("segments") or []
    kinds: dict[str, int] = {}
    for seg in segs:
        kinds[seg.get("kind", "?")] = kinds.get(seg.get("kind", "?"), 0) + 1
    seg_text = ", ".join(f"{n} {k}" for k, n in sorted(kinds.items())) or "none"
    text = f"{d.get('backend')} {d.get('index_type', '')} ({', '.join(params)}); {len(segs)} segments ({seg_text})"
    dims = sorted({int(s["graph_dim"]) for s in segs if s.get("graph_dim")})
    if dims and d.get("dim") and dims != [d["dim"]]:
        codes = sorted({str(s["graph_codes"]) for s in segs if s.get("graph_codes")})
        held = f" as {'/'.join(codes)} codes" if codes else ""
        text += f"; graphs over {'/'.join(map(str, dims))} of {d['dim']} dimensions{held} (re-scored with all)"
    if d.get("tombstones"):
        text += f"; {d['tombstones']} removed vectors not yet compacted"
    return text


@main.command("info")
@index_option
@click.option("--json", "as_json", is_flag=True)
def info_cmd(index_path: str, as_json: bool) -> None:
    """Counts, cameras, encoder and storage of an index."""
    with svc.open_engine(index_path) as engine:
        stats = svc.run_info(engine)
    if as_json:
        click.echo(json.dumps(stats))
        return
    for key, value in stats.items():
        if key == "time_range":
            value = f"{_fmt_time(value[0])} .. {_fmt_time(value[1])}"
        elif key == "cameras":
            value = ", ".join(f"{c or '-'}: {n}" for c, n in value.items()) or "-"
        elif key == "backend" and isinstance(value, dict):
            value = _describe_backend(value)
        click.echo(f"{key:>16}: {value}")


@main.command("remove")
@index_option
@click.option("--id", "ids", multiple=True, type=int, help="Crop id (repeatable).")
@click.option("--camera", "cameras", multiple=True, help="Every crop of this camera (repeatable).")
@click.option("--source", "sources", multiple=True, help="Every crop of this source (repeatable).")
@click.option("--json", "as_json", is_flag=True)
def remove_cmd(
    index_path: str, ids: tuple[int, ...], cameras: tuple[str, ...], sources: tuple[str, ...], as_json: bool
) -> None:
    """Remove crops by id, camera or source (criteria combine with AND)."""
    req = svc.RemoveRequest(ids=ids, cameras=cameras, sources=_source_keys(sources))
    with svc.open_engine(index_path) as engine:
        doc = svc.run_remove(engine, req)
    if as_json:
        click.echo(json.dumps(doc))
    else:
        click.echo(f"removed {doc['removed']} crops; {doc['total']} left")


@main.command("encoders")
@click.option("--json", "as_json", is_flag=True)
def encoders_cmd(as_json: bool) -> None:
    """List the registered encoders."""
    rows: list[dict[str, Any]] = []
    for spec in list_encoders():
        w = default_weights_path(spec)
        rows.append({
            "name": spec.name, "runtime": spec.runtime, "default": spec.name == DEFAULT_ENCODER,
            "default_weights": str(w) if w else None, "weights_available": bool(w and w.is_file()),
            "input": f"{spec.preprocess.height}x{spec.preprocess.width} {spec.preprocess.color}",
            "description": spec.description,
        })
    if as_json:
        click.echo(json.dumps(rows))
        return
    for r in rows:
        mark = "*" if r["default"] else " "
        if r["weights_available"]:
            weights = "weights: shared"
        else:
            weights = "weights: missing" if r["default_weights"] else "weights: yours"
        click.echo(f"{mark} {r['name']:<48} {r['runtime']:<12} {r['input']:<12} {weights:<16} {r['description']}")


@main.command("compact")
@index_option
@click.option("--json", "as_json", is_flag=True)
def compact_cmd(index_path: str, as_json: bool) -> None:
    """Drop removed crops from the vector files and merge segments."""
    with svc.open_engine(index_path) as engine:
        doc = svc.run_compact(engine)
    if as_json:
        click.echo(json.dumps(doc))
    else:
        click.echo(f"{doc['index']}: compacted; {doc['crops']} crops, generation {doc['generation']}")


@main.command("serve")
@index_option
@click.option("--host", default="127.0.0.1", show_default=True,
              help="Address to bind (0.0.0.0 exposes it to the network).")
@click.option("--port", default=8000, show_default=True, type=click.IntRange(0, 65535))
@click.option("--token", default=None, envvar="REID_ENGINE_TOKEN", show_envvar=True,
              help="Bearer token that enables the write endpoints (POST/DELETE /crops); without it they are off.")
@click.option("--cors", "cors_origins", multiple=True, metavar="ORIGIN",
              help="Allow cross-origin requests from this origin (repeatable; default: none).")
@click.option("--max-upload-mb", default=10.0, show_default=True, type=click.FloatRange(0.01, 1024),
              help="Largest accepted image upload.")
@click.option("--max-pixels", default=40_000_000, show_default=True, type=click.IntRange(1),
              help="Largest accepted image, in pixels (read from the header before decoding).")
@weights_option
@device_option
def serve_cmd(
    index_path: str, host: str, port: int, token: Optional[str], cors_origins: tuple[str, ...],
    max_upload_mb: float, max_pixels: int, weights: Optional[Path], device: Optional[str],
) -> None:
    """Serve the HTTP API (OpenAPI at /docs) and the web page for one index."""
    import uvicorn

    from ..encoders import resolve_device
    from ..errors import InvalidInputError
    from ..http import ServeConfig, check_listen, create_app

    if not math.isfinite(max_upload_mb):
        raise InvalidInputError(f"--max-upload-mb {max_upload_mb}: expected a number from 0.01 to 1024")
    resolve_device(device)  # a device that cannot be used is refused now, not at the first query
    check_listen(host, port)
    config = ServeConfig(
        index=index_path, token=token if token else None, cors_origins=tuple(cors_origins),
        max_upload_bytes=int(max_upload_mb * 1024 * 1024), max_pixels=max_pixels, weights=weights, device=device,
    )
    app = create_app(config)
    writes = "on (bearer token)" if config.token else "off (no --token)"
    click.echo(f"serving {app.state.engine_path} at http://{host}:{port}/  (API docs /docs; writes {writes})", err=True)
    uvicorn.run(app, host=host, port=port, log_level="warning")
