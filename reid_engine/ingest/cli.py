"""``reid-engine ingest``: index the people of a video file or stream.

Registered on the ``reid-engine`` group through ``cli/plugins.py``; it parses
options, calls :func:`reid_engine.ingest.pipeline.ingest_video` and formats the result.
"""
from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any, Optional

import click

from ..clitypes import PathParam
from ..engine import Engine, discard_new_index_on_failure
from .crops import parse_time
from .detect import DEFAULT_DETECTOR, DEFAULT_THRESHOLD, list_detectors
from .track import DEFAULT_TRACKER, list_trackers
from .video import is_stream, probe


@click.command("ingest")
@click.argument("videos", nargs=-1, required=True, metavar="VIDEO...")
@click.option("--camera", default=None, help="Camera name stored with every crop (default: the video's file name).")
@click.option("--index", "index_path", required=True, metavar="PATH",
              help="Index folder, or a bare name under indexes/; created when missing.")
@click.option("--encoder", default=None, metavar="NAME", help="Encoder for a new index (see `reid-engine encoders`).")
@click.option("--weights", type=PathParam(dir_okay=False, path_type=Path), default=None,
              help="Encoder weights (for a new index, or to check an existing one).")
@click.option("--start-time", default=None, metavar="ISO-8601",
              help="When frame 0 was shot; crop timestamps are start + frame / fps.")
@click.option("--every", default=1, show_default=True, type=click.IntRange(1), help="Detect on every Nth frame.")
@click.option("--fps", default=None, type=click.FloatRange(min=0, min_open=True),
              help="Frame rate for timestamps (default: the container's).")
@click.option("--start-frame", default=0, show_default=True, type=click.IntRange(0), help="First frame to process.")
@click.option("--end-frame", default=None, type=click.IntRange(1), help="Stop before this frame.")
@click.option("--max-frames", default=None, type=click.IntRange(1),
              help="Process at most this many frames in this run.")
@click.option("--detector", default=None, help=f"Detector: {', '.join(list_detectors())} (default {DEFAULT_DETECTOR}).")
@click.option("--detector-weights", type=PathParam(dir_okay=False, path_type=Path), default=None,
              help="Detector weights (.xml OpenVINO IR or .onnx with SSD output [1,1,N,7]).")
@click.option("--threshold", default=DEFAULT_THRESHOLD, show_default=True, type=click.FloatRange(0, 1),
              help="Detection confidence threshold.")
@click.option("--tracker", default=None, help=f"Tracker: {', '.join(list_trackers())} (default {DEFAULT_TRACKER}).")
@click.option("--crops-per-track", default=4, show_default=True, type=click.IntRange(1),
              help="Best crops kept per track.")
@click.option("--checkpoint-frames", default=300, show_default=True, type=click.IntRange(1),
              help="Processed frames between commits (what an interruption can lose).")
@click.option("--device", default=None, help="cpu, cuda, cuda:N for the encoder (default: cuda when available).")
@click.option("--checkpoint-seconds", default=60.0, show_default=True, type=click.FloatRange(min=1),
              help="Also commit progress after this much processing time (a kill loses at most that much work).")
@click.option("--ray", "ray_address", is_flag=False, flag_value="", default=None, metavar="[ADDRESS]",
              help="Spread decoding, detection, tracking and encoding over a Ray cluster (one video per task; "
                   "without ADDRESS a local cluster); this process commits in order.")
@click.option("--json", "as_json", is_flag=True, help="Print the summary as JSON.")
def ingest_cmd(
    videos: tuple[str, ...], camera: Optional[str], index_path: str, encoder: Optional[str], weights: Optional[Path],
    start_time: Optional[str], every: int, fps: Optional[float], start_frame: int, end_frame: Optional[int],
    max_frames: Optional[int], detector: Optional[str], detector_weights: Optional[Path], threshold: float,
    tracker: Optional[str], crops_per_track: int, checkpoint_frames: int, device: Optional[str],
    checkpoint_seconds: float, ray_address: Optional[str], as_json: bool,
) -> None:
    """Detect, track and index the people of each VIDEO (a file or a stream URL); re-running resumes."""
    options: dict[str, Any] = dict(
        start_time=start_time, every=every, fps=fps, start_frame=start_frame, end_frame=end_frame,
        max_frames=max_frames, detector=detector, detector_weights=detector_weights, threshold=threshold,
        tracker=tracker, crops_per_track=crops_per_track, checkpoint_frames=checkpoint_frames,
        checkpoint_seconds=checkpoint_seconds, show_progress=True if sys.stderr.isatty() else False,
    )
    if camera is not None and len(videos) > 1:
        raise click.UsageError("--camera names the camera of one video; give one video per run, or none")
    if camera is not None and not camera.strip():
        raise click.BadParameter(f"{camera!r}: expected a camera name, not an empty one", param_hint="--camera")
    # the videos and start time are checked before the index is opened: a run that cannot start leaves no new,
    # empty index behind
    parse_time(start_time)
    for video in videos:
        if not is_stream(video):
            probe(video, fps)
    with discard_new_index_on_failure(index_path), \
            Engine.open_or_create(index_path, encoder=encoder, weights=weights, device=device) as engine:
        if ray_address is not None:
            from ..distributed import ingest_with_ray

            with engine.store.writing():
                reports = ingest_with_ray(engine, list(videos), ray_address or None,
                                          cameras=[camera] if camera else None, device=device, **options)
        else:
            reports = [engine.ingest_video(video, camera, **options) for video in videos]
        stats = engine.stats()
    if as_json:
        docs = [r.to_dict() for r in reports]
        click.echo(json.dumps({"index": stats["path"], **(docs[0] if len(docs) == 1 else {"videos": docs}),
                               "total_crops": stats["crops"], "total_tracks": stats["tracks"]}))
    else:
        for report in reports:
            click.echo(report.summary())
        click.echo(f"the index holds {stats['crops']} crops in {stats['tracks']} tracks")
