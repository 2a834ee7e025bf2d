"""Core commands: index, query, info, remove, encoders."""
from __future__ import annotations

import functools
import json
import sys
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Optional

import click

from ..encoders import DEFAULT_ENCODER, list_encoders
from ..encoders.registry import default_weights_path
from ..engine import Engine, resolve_index_path
from ..attributes import ANNOTATOR_NAME as ATTRIBUTES, FUSION_MODES, AttributesNotIndexedError, vocabulary_help
from ..attributes.search import DEFAULT_THRESHOLD
from ..errors import InvalidInputError
from ..ingest import scan_source
from ..ingest.crops import PATTERNS
from ..results import QueryResult
from . import main

index_option = click.option(
    "--index", "index_path", required=True, metavar="PATH",
    help="Index folder, or a bare name resolved under indexes/.",
)
encoder_option = click.option("--encoder", default=None, metavar="NAME", help="Registered encoder (see `reid-engine encoders`).")
weights_option = click.option(
    "--weights", type=click.Path(dir_okay=False, path_type=Path), default=None,
    help="Weights file; when --encoder is not given its type picks the model (.onnx, .xml, torchreid .pth/.pth.tar).",
)
device_option = click.option("--device", default=None, help="cpu, cuda, cuda:N (default: cuda when available).")


def _progress() -> Optional[bool]:
    return True if sys.stderr.isatty() else False


def _fmt_time(ts: Optional[float]) -> str:
    if ts is None:
        return "-"
    return datetime.fromtimestamp(ts, tz=timezone.utc).strftime("%Y-%m-%d %H:%M:%S")


def _print_results(results: list[QueryResult]) -> None:
    for res in results:
        cam = f" (camera {res.camera})" if res.camera is not None else ""
        click.echo(f"query {res.query}{cam}: {len(res.hits)} hits")
        click.echo(f"{'rank':>4}  {'distance':>8}  {'camera':<8} {'pid':<8} {'time':<19}  {'frame':>6}  {'track':<6}  path")
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
@click.argument("source", type=click.Path(path_type=Path))
@index_option
@encoder_option
@weights_option
@click.option("--factory", default="Flat", show_default=True, help="FAISS index-factory string for a new index (e.g. Flat, HNSW32, IVF1024,PQ64).")
@click.option("--db-url", default=None, help="SQLAlchemy URL for the crop table of a new index (default: SQLite in the index folder).")
@click.option("--glob", "glob_pattern", default="**/*", show_default=True, help="Which files of a folder to take.")
@click.option(
    "--pattern", default="auto", show_default=True,
    help=f"Metadata from each relative path: a regex with named groups pid, camera, frame, track, timestamp, or one of {', '.join(PATTERNS)}, auto, none.",
)
@click.option("--camera", default=None, help="Camera of every crop (over what --pattern found).")
@click.option("--role", default=None, help="With a CSV manifest: only rows of this role (e.g. gallery).")
@click.option("--source-name", default=None, help="What to record as the crops' source (default: SOURCE's absolute path).")
@click.option("--strict", is_flag=True, help="Stop at the first unreadable image instead of skipping it.")
@click.option("--batch-size", default=32, show_default=True, type=click.IntRange(1))
@click.option("--commit-every", default=4096, show_default=True, type=click.IntRange(1), help="Crops per atomic commit.")
@click.option("--attributes", "with_attributes", is_flag=True,
              help="Also store pedestrian attributes of every crop (for query --fusion and --attr); new indexes only.")
@device_option
@click.option("--json", "as_json", is_flag=True, help="Print the summary as JSON.")
def index_cmd(
    source: Path, index_path: str, encoder: Optional[str], weights: Optional[Path], factory: str,
    db_url: Optional[str], glob_pattern: str, pattern: str, camera: Optional[str], role: Optional[str],
    source_name: Optional[str], strict: bool, batch_size: int, commit_every: int, with_attributes: bool,
    device: Optional[str], as_json: bool,
) -> None:
    """Index the person crops of SOURCE (a folder, a CSV manifest or one image), adding to the index if it exists."""
    items = scan_source(source, glob=glob_pattern, pattern=pattern, camera=camera, role=role, source_name=source_name)
    if not items:
        raise InvalidInputError(f"{source}: no images found (glob {glob_pattern!r})")
    engine = Engine.open_or_create(
        index_path, encoder=encoder, weights=weights, factory=factory, db_url=db_url, device=device,
        annotators=[ATTRIBUTES] if with_attributes else [],
    )
    if with_attributes and ATTRIBUTES not in engine.store.manifest.annotators:
        engine.close()
        raise AttributesNotIndexedError(
            f"{engine.path}: this index was built without attributes; "
            "--attributes needs a new index (rebuild it with --attributes)"
        )
    with engine:
        report = engine.add(items, strict=strict, batch_size=batch_size, show_progress=_progress(), commit_every=commit_every)
        total = engine.store.count
    if as_json:
        click.echo(json.dumps({
            "index": str(engine.path), "added": report.added, "duplicates": report.duplicates,
            "failed": [{"path": p, "reason": r} for p, r in report.failed], "total": total,
            "seconds": round(report.seconds, 3),
        }))
    else:
        click.echo(f"{engine.path}: {report.summary()}; {total} crops in the index")
        for path, reason in report.failed[:10]:
            click.echo(f"  unreadable: {reason}", err=True)


@main.command("query")
@click.argument("images", nargs=-1, required=False, type=click.Path(path_type=Path))
@index_option
@click.option("-k", "k", default=10, show_default=True, type=click.IntRange(1), help="Hits per query.")
@click.option("--camera", "cameras", multiple=True, help="Only gallery crops from this camera (repeatable).")
@click.option("--exclude-camera", "exclude_cameras", multiple=True, help="Leave out this camera (repeatable).")
@click.option("--exclude-same-camera", is_flag=True, help="Leave out the query's own camera.")
@click.option("--query-camera", default=None, help="Camera of the query images (else looked up when they are indexed).")
@click.option("--source", "sources", multiple=True, help="Only crops from this source (repeatable).")
@click.option("--time-from", default=None, help="Only crops at or after this time (ISO-8601 or epoch seconds).")
@click.option("--time-to", default=None, help="Only crops at or before this time.")
@click.option("--rerank", default=None, metavar="PRESET", help="Re-ranking preset (default: 'default'; 'none' for plain cosine). See docs/rerank.md.")
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
@click.option("--save-crops", type=click.Path(file_okay=False, path_type=Path), default=None, metavar="DIR",
              help="Write the matched crops into DIR/<query>/.")
@click.option("--render", "render_dir", type=click.Path(file_okay=False, path_type=Path), default=None, metavar="DIR",
              help="Draw the matched boxes on their source frames into DIR/<query>/.")
@click.option("--json", "as_json", is_flag=True, help="One JSON document: per query, its hits with metadata.")
def query_cmd(
    images: tuple[Path, ...], index_path: str, k: int, cameras: tuple[str, ...], exclude_cameras: tuple[str, ...],
    exclude_same_camera: bool, query_camera: Optional[str], sources: tuple[str, ...], time_from: Optional[str],
    time_to: Optional[str], rerank: Optional[str], fusion: Optional[str], attr_terms: tuple[str, ...],
    attr_threshold: float, weights: Optional[Path], device: Optional[str], by_track: bool,
    save_crops: Optional[Path], render_dir: Optional[Path], as_json: bool,
) -> None:
    """Find the gallery crops (or, with --tracks, the appearances) most like each query IMAGE.

    With --attr and no IMAGES, list the crops whose attributes match (e.g. --attr male --attr backpack).
    """
    if not images and not attr_terms:
        raise click.UsageError("give query IMAGES, or --attr terms to search by attributes alone")
    if by_track and (fusion is not None or attr_terms):
        raise click.UsageError("--fusion and --attr apply to crop queries, not to --tracks")
    with Engine.open(index_path, weights=weights, device=device) as engine:
        if by_track and rerank not in (None, "none"):
            raise click.UsageError("--rerank applies to crop queries, not to --tracks")
        filters: dict[str, Any] = dict(
            cameras=list(cameras) or None, exclude_cameras=list(exclude_cameras) or None,
            sources=list(sources) or None, time_from=time_from, time_to=time_to,
        )
        if not images:
            if fusion is not None or exclude_same_camera or rerank is not None:
                raise click.UsageError("--fusion, --rerank and --exclude-same-camera need query IMAGES")
            results = [engine.find(list(attr_terms), k, threshold=attr_threshold, **filters)]
        else:
            if by_track:
                search = engine.query_tracks
            else:
                search = functools.partial(engine.query, rerank=rerank, fusion=fusion)
                if attr_terms:
                    filters.update(attributes=list(attr_terms), attribute_threshold=attr_threshold)
            results = search(
                [str(p) for p in images], k,
                query_cameras=[query_camera] * len(images) if query_camera is not None else None,
                exclude_same_camera=exclude_same_camera, **filters,
            )
        index_str = str(engine.path)
    written: dict[str, list[str]] = {}
    if save_crops is not None or render_dir is not None:
        from ..ingest.show import render_hits, save_crops as write_crops

        if save_crops is not None:
            written["crops"] = [str(p) for p in write_crops(results, save_crops)]
        if render_dir is not None:
            written["rendered"] = [str(p) for p in render_hits(results, render_dir)]
    if as_json:
        doc: dict[str, Any] = {"index": index_str, "k": k, "tracks": by_track, "queries": [r.to_dict() for r in results]}
        click.echo(json.dumps({**doc, **written}))
    else:
        if by_track:
            _print_track_results(results)
        else:
            _print_results(results)
        for what, files in written.items():
            click.echo(f"wrote {len(files)} {'crops' if what == 'crops' else 'rendered frames'}", err=True)


@main.command("info")
@index_option
@click.option("--json", "as_json", is_flag=True)
def info_cmd(index_path: str, as_json: bool) -> None:
    """Counts, cameras, encoder and storage of an index."""
    with Engine.open(index_path) as engine:
        stats = engine.stats()
    if as_json:
        click.echo(json.dumps(stats))
        return
    for key, value in stats.items():
        if key == "time_range":
            value = f"{_fmt_time(value[0])} .. {_fmt_time(value[1])}"
        elif key == "cameras":
            value = ", ".join(f"{c or '-'}: {n}" for c, n in value.items()) or "-"
        click.echo(f"{key:>16}: {value}")


@main.command("remove")
@index_option
@click.option("--id", "ids", multiple=True, type=int, help="Crop id (repeatable).")
@click.option("--camera", "cameras", multiple=True, help="Every crop of this camera (repeatable).")
@click.option("--source", "sources", multiple=True, help="Every crop of this source (repeatable).")
@click.option("--json", "as_json", is_flag=True)
def remove_cmd(index_path: str, ids: tuple[int, ...], cameras: tuple[str, ...], sources: tuple[str, ...], as_json: bool) -> None:
    """Remove crops by id, camera or source (criteria combine with AND)."""
    if not (ids or cameras or sources):
        raise click.UsageError("say what to remove: --id, --camera or --source")
    with Engine.open(index_path) as engine:
        n = engine.remove(ids=list(ids) or None, cameras=list(cameras) or None, sources=list(sources) or None)
        total = engine.store.count
    if as_json:
        click.echo(json.dumps({"removed": n, "total": total}))
    else:
        click.echo(f"removed {n} crops; {total} left")


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
        weights = "weights: shared" if r["weights_available"] else ("weights: missing" if r["default_weights"] else "weights: yours")
        click.echo(f"{mark} {r['name']:<48} {r['runtime']:<12} {r['input']:<12} {weights:<16} {r['description']}")
