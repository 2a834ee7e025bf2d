"""Decode, detect, track and encode on a Ray cluster; commit on this process, in order.

The driver (this process) is the index's one writer. Workers never touch the
index: they return features (crops) or checkpoints (footage), and the driver
commits them through the same code a local run uses (``Engine.add_features``
for crops; the ingest pipeline's own commit for footage), in source order. So
the sha256 dedup, the ids, and crash/resume behave exactly as in a local run: a
killed driver leaves the last committed block, and a re-run resumes from it.

Work is streamed: at most ``max_in_flight`` crop chunks (or ``max_ahead``
checkpoints per video) wait in the cluster, never the whole source. The model
files (weights, detector) and the images or videos must be readable at the same
paths on every node (shared storage).
"""
from __future__ import annotations

import collections
import hashlib
import logging
import re
import sys
import time
from dataclasses import asdict
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterable, Iterator, Optional, Sequence, Union, cast

import numpy as np
import sqlalchemy as sa
from tqdm.auto import tqdm

from ..encoders.base import EncodeResult
from ..errors import ImageReadError, InvalidInputError, UnsupportedOperationError
from ..ingest.crops import CropItem, parse_time, scan_source

if TYPE_CHECKING:
    from ..encoders.base import Encoder
    from ..engine import AddReport, Engine
    from ..ingest.pipeline import IngestReport

log = logging.getLogger(__name__)

PathLike = Union[str, Path]
#: CPUs of the local cluster started when no address is given
LOCAL_CPUS = 2
#: what ray.init takes as a cluster's address: a Ray Client URL, a head node's HOST:PORT, or "auto"
_RAY_ADDRESS = re.compile(r"auto|(ray://)?[A-Za-z0-9_.\-\[\]:]+:[0-9]{1,5}")


# -- cluster ---------------------------------------------------------------------------------------
def connect(address: Optional[str] = None, num_cpus: Optional[int] = None) -> Any:
    """The ``ray`` module, connected to ``address`` (e.g. ``ray://head:10001`` or ``auto``) or a local cluster."""
    if address and not _RAY_ADDRESS.fullmatch(address):
        raise InvalidInputError(f"Ray address {address!r}: expected ray://HOST:PORT, HOST:PORT or auto")
    try:
        import ray
    except ImportError:
        raise UnsupportedOperationError("distributed runs need Ray: pip install 'ray>=2.9'") from None
    if not ray.is_initialized():
        kwargs: dict[str, Any] = {"include_dashboard": False, "log_to_driver": False, "configure_logging": False}
        if address:
            try:
                ray.init(address=address, **kwargs)
            except (ConnectionError, RuntimeError, ValueError) as exc:
                first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
                raise InvalidInputError(f"Ray address {address!r}: cannot connect ({first})") from None
        else:
            ray.init(num_cpus=num_cpus or LOCAL_CPUS, **kwargs)
        log.info("Ray cluster: %s", ray.cluster_resources())
    return ray


def _cluster_cpus(ray: Any) -> int:
    return max(1, int(ray.cluster_resources().get("CPU", 1)))


def _encoder_spec(engine: "Engine") -> dict[str, Any]:
    """What a worker needs to build the index's encoder (and check it is the same one)."""
    enc = engine.encoder  # resolves the weights the index was built with, or fails here, not on a worker
    info = enc.describe()
    return {"name": info["name"], "weights": str(Path(info["weights_path"]).resolve()),
            "weights_sha256": info["weights_sha256"], "annotators": list(engine.store.manifest.annotators)}


def _build_encoder(spec: dict[str, Any], device: Optional[str]) -> Any:
    from ..encoders import create_encoder
    from ..errors import EncoderMismatchError

    enc = create_encoder(spec["name"], spec["weights"], device)
    if enc.describe()["weights_sha256"] != spec["weights_sha256"]:
        raise EncoderMismatchError(f"{spec['weights']}: differs on this node from the index's weights")
    return enc


def pixels_key(image: np.ndarray) -> str:
    """Identity of an in-memory crop (shape and pixels), to match features to crops."""
    h = hashlib.sha1(str(image.shape).encode())
    h.update(np.ascontiguousarray(image).tobytes())
    return h.hexdigest()


# -- crops ----------------------------------------------------------------------------------------
class _EncodeWorker:
    """A Ray actor holding the encoder (and annotators): encodes chunks of crops."""

    def __init__(self, spec: dict[str, Any], device: Optional[str], batch_size: int):
        from ..annotators import create_annotator

        self.encoder = _build_encoder(spec, device)
        self.annotators = [create_annotator(n, device) for n in spec["annotators"]]
        self.batch_size = batch_size

    def encode(self, inputs: list[Any]) -> dict[str, Any]:
        res = self.encoder.encode_files(inputs, batch_size=self.batch_size, show_progress=False, strict=False)
        notes = {}
        for ann in self.annotators:
            notes[ann.name] = ann.annotate([inputs[i] for i in res.ok])
        return {"features": np.asarray(res.features, np.float32), "ok": list(res.ok),
                "failures": list(res.failures), "notes": notes}


def _as_items(source: Union[PathLike, Iterable[Union[CropItem, PathLike]]]) -> Iterator[CropItem]:
    if isinstance(source, (str, Path)):
        yield from scan_source(source)
        return
    for it in source:
        yield it if isinstance(it, CropItem) else CropItem(Path(it))


def index_with_ray(
    engine: "Engine",
    items: Union[PathLike, Iterable[Union[CropItem, PathLike]]],
    address: Optional[str] = None,
    *,
    workers: Optional[int] = None,
    chunk_size: int = 64,
    max_in_flight: Optional[int] = None,
    commit_every: int = 4096,
    batch_size: int = 32,
    strict: bool = False,
    device: Optional[str] = None,
    show_progress: Optional[bool] = None,
) -> "AddReport":
    """Encode crops on a Ray cluster and add them to ``engine``'s index, like ``Engine.add``.

    ``items``: crop items or image paths (any iterable, consumed lazily), or a folder / CSV
    manifest / image path (read with ``scan_source``). ``address``: a running cluster
    (``ray.init(address)``); None starts a local one with ``LOCAL_CPUS`` CPUs. ``workers``
    encoder actors (default: one per cluster CPU) take chunks of ``chunk_size`` crops, at
    most ``max_in_flight`` chunks at a time (default 2 per worker); results are committed
    in source order every ``commit_every`` crops. Files already indexed (same sha256) are
    skipped before any work is sent out.
    """
    from ..engine import AddReport

    if chunk_size < 1 or commit_every < 1:
        raise InvalidInputError("chunk_size and commit_every must be positive")
    t0 = time.perf_counter()
    ray = connect(address)
    spec = _encoder_spec(engine)
    n_workers = workers or _cluster_cpus(ray)
    actor_cls = ray.remote(num_cpus=1)(_EncodeWorker)
    actors = [actor_cls.remote(spec, device, batch_size) for _ in range(n_workers)]
    limit = max_in_flight or 2 * n_workers
    report = AddReport()
    quiet = not (show_progress or (show_progress is None and sys.stderr.isatty()))
    total = len(items) if isinstance(items, Sequence) and not isinstance(items, (str, Path)) else None
    bar = tqdm(total=total, desc="encode (ray)", unit="crop", disable=quiet, dynamic_ncols=True)
    source = _as_items(items)
    seen: set[str] = set()
    pending: collections.deque = collections.deque()
    buf_feats: list[np.ndarray] = []
    buf_items: list[CropItem] = []
    buf_hashes: list[str] = []
    next_actor = 0

    def flush() -> None:
        if buf_items:
            ids = engine.add_features(np.concatenate(buf_feats), list(buf_items), list(buf_hashes))
            report.ids.extend(ids)
            report.added += len(ids)
            buf_feats.clear()
            buf_items.clear()
            buf_hashes.clear()

    def submit(chunk: list[CropItem]) -> None:
        """Hash on the driver, drop what is indexed already, send the rest out."""
        nonlocal next_actor
        hashed: list[tuple[CropItem, str]] = []
        for it in chunk:
            try:
                hashed.append((it, it.sha256()))
            except OSError as exc:
                reason = f"{it.path}: cannot read ({exc.strerror or exc})"
                if strict:
                    raise ImageReadError(reason) from None
                log.warning("skipping %s", reason)
                report.failed.append((str(it.path), reason))
        known = engine.store.known_hashes([h for _, h in hashed])
        todo = []
        for it, h in hashed:
            if h in known or h in seen:
                report.duplicates += 1
            else:
                seen.add(h)
                todo.append((it, h))
        bar.update(len(chunk) - len(todo))
        if todo:
            inputs = [it.image if it.image is not None else str(it.path) for it, _ in todo]
            ref = actors[next_actor % n_workers].encode.remote(inputs)
            next_actor += 1
            pending.append((todo, ref))

    def collect() -> None:
        todo, ref = pending.popleft()
        res = ray.get(ref)
        for pos, reason in res["failures"]:
            if strict:
                raise ImageReadError(reason)
            report.failed.append((str(todo[pos][0].path), reason))
        for j, pos in enumerate(res["ok"]):
            it, h = todo[pos]
            if res["notes"]:
                extra = dict(it.meta.get("extra") or {})
                extra.update({name: notes[j] for name, notes in res["notes"].items()})
                it = CropItem(it.path, {**it.meta, "extra": extra}, it.image)
            buf_items.append(it)
            buf_hashes.append(h)
        if len(res["ok"]):
            buf_feats.append(res["features"])
        bar.update(len(todo))
        if len(buf_items) >= commit_every:
            flush()

    try:
        chunk: list[CropItem] = []
        for it in source:
            chunk.append(it)
            if len(chunk) >= chunk_size:
                submit(chunk)
                chunk = []
                while len(pending) >= limit:  # back-pressure: wait for the oldest chunk
                    collect()
        if chunk:
            submit(chunk)
        while pending:
            collect()
        flush()
    finally:
        bar.close()
        for a in actors:
            ray.kill(a)
    report.seconds = time.perf_counter() - t0
    log.info("%s: %s (ray, %d workers)", engine.path, report.summary(), n_workers)
    return report


# -- footage --------------------------------------------------------------------------------------
class _LookupEncoder:
    """Stands in for the index's encoder on the driver: returns features the workers computed."""

    def __init__(self, dim: int):
        self.dim = dim
        self.features: dict[str, np.ndarray] = {}

    def encode_files(self, images: Sequence[Any], batch_size: int = 32, show_progress: Optional[bool] = None,
                     strict: bool = False) -> EncodeResult:
        ok, rows, failures = [], [], []
        for i, im in enumerate(images):
            f = self.features.get(pixels_key(im)) if isinstance(im, np.ndarray) else None
            if f is None:
                failures.append((i, f"crop {i}: no feature came back from the cluster"))
            else:
                ok.append(i)
                rows.append(f)
        feats = np.stack(rows).astype(np.float32) if rows else np.zeros((0, self.dim), np.float32)
        return EncodeResult(feats, ok, failures)


def _detector_spec(detector: Union[None, str, Any], detector_weights: Optional[PathLike], threshold: float) -> dict:
    if detector is not None and not isinstance(detector, str):
        raise InvalidInputError("with Ray, name the detector (and its weights): detector objects cannot be shipped")
    return {"name": detector, "weights": None if detector_weights is None else str(Path(detector_weights).resolve()),
            "threshold": threshold}


def _stub_tracks(open_tracks: dict[int, Any]) -> dict[int, Any]:
    """Open tracks without their crops: the driver's commit only needs where they start."""
    from ..ingest.pipeline import _Track
    from ..ingest.select import BestCrops

    return {tid: _Track(t.local_id, t.start_frame, t.end_frame, BestCrops(1, 1), t.n_frames, t.best_score)
            for tid, t in open_tracks.items()}


def _ingest_task(job: dict[str, Any]) -> Iterator[dict[str, Any]]:
    """One video on a worker: yields a checkpoint (finished tracks, progress, detections, features) per commit."""
    from ..ingest import pipeline as pl
    from ..ingest.detect import create_detector
    from ..ingest.video import iter_frames, probe
    from ..index import db

    o = job["options"]
    det = create_detector(job["detector"]["name"], job["detector"]["weights"], job["detector"]["threshold"])
    enc = _build_encoder(job["encoder"], job.get("device"))
    info = probe(job["source"], o["fps"])
    p = pl._Progress(**job["progress"])
    report = pl.IngestReport(source=p.key, camera=p.camera)
    memory = sa.create_engine("sqlite://")  # the stored detections of a resumed run, for the pipeline's replay
    db.ingest_detections.create(memory)
    if job["chunks"]:
        with memory.begin() as conn:
            conn.execute(db.ingest_detections.insert(), job["chunks"])

    class _Store:
        sql = memory

    class _Shell:
        store = _Store()

    # the pipeline's replay only reads engine.store.sql: a shell stands in for the engine
    run = pl._Run(cast("Engine", _Shell()), info, p, det, o["tracker"], o["tracker_options"], o["every"],
                  o["crops_per_track"], o["min_track_frames"], o["min_crop_height"], o["batch_size"], report, None)
    replayed = pl._replay(run, job["source"]) if job["resume"] else 0

    def checkpoint(frames: int) -> dict[str, Any]:
        crops = [c.crop for tr in run.finished if tr.n_frames >= run.min_track_frames for c in tr.crops.best()]
        feats = {}
        if crops:
            res = enc.encode_files(crops, batch_size=o["batch_size"], show_progress=False, strict=False)
            feats = {pixels_key(crops[i]): res.features[j] for j, i in enumerate(res.ok)}
        out = {"progress": asdict(p), "finished": list(run.finished), "open": _stub_tracks(run.open),
               "chunk": list(run.chunk), "id_base": run.id_base, "features": feats, "frames": frames,
               "replayed": replayed}
        run.finished, run.chunk = [], []
        return out

    stop = o["end_frame"]
    if o["max_frames"] is not None:
        stop = min(stop if stop is not None else sys.maxsize, p.next_frame + o["max_frames"] * o["every"])
    since, frames, last = 0, 0, time.perf_counter()
    for f, frame in iter_frames(job["source"], p.next_frame, stop, o["every"]):
        dets = pl._stored(det.detect(frame))
        run.step(f, frame, dets, replay=False)
        p.next_frame = f + o["every"]
        p.frames_done += 1
        since += 1
        frames += 1
        if since >= o["checkpoint_frames"] or time.perf_counter() - last >= o["checkpoint_seconds"]:
            yield checkpoint(frames)
            since, frames, last = 0, 0, time.perf_counter()
    reached_end = stop is None or (info.frame_count is not None and stop >= info.frame_count) or p.next_frame < stop
    run.close_all()
    if reached_end:
        p.done = True
    else:
        p.segment_start = p.next_frame
        p.id_base += run.max_id
    yield checkpoint(frames)


def _plan_source(engine: "Engine", source: PathLike, camera: Optional[str], det: Any, o: dict[str, Any],
                 planned_prefixes: set[str]) -> tuple[Optional[dict[str, Any]], "IngestReport", Any]:
    """The driver's part of ``ingest_video`` before the frame loop: the progress row to start from.

    Returns (job fields, report, video info); job None when the source is already done.
    """
    from ..index import db
    from ..ingest import pipeline as pl
    from ..ingest.video import fingerprint, probe, same_content

    info = probe(source, o["fps"])
    if info.stream:
        raise InvalidInputError(f"{source}: live streams cannot be spread over Ray; ingest them directly")
    file_print = fingerprint(source)
    stem = Path(str(source).rstrip("/")).stem or "stream"
    camera = str(camera) if camera else stem
    start_ts = parse_time(o["start_time"])
    key = info.source
    settings = pl._settings(det, o["tracker"], o["tracker_options"], o["every"], info.fps, start_ts,
                            o["crops_per_track"], o["min_track_frames"], o["min_crop_height"])
    settings[pl.FINGERPRINT_KEY] = file_print
    report = pl.IngestReport(source=key, camera=camera)
    store = engine.store
    with store.sql.connect() as conn:
        before = pl._load_progress(conn, key)
    if before is not None and not same_content((before["settings"] or {}).get(pl.FINGERPRINT_KEY), file_print):
        log.warning("%s: the file changed since it was ingested: ingesting it again", key)
        report.replaced = engine.remove(sources=[key])
        with store.sql.begin() as conn:
            pl._forget_source(conn, key)
    with store.sql.begin() as conn:
        old = pl._load_progress(conn, key)
        if old is not None:
            n_crops = conn.execute(
                sa.select(sa.func.count()).select_from(db.crops).where(db.crops.c.source == key)
            ).scalar_one()
            if n_crops == 0 and (old["done"] or old["id_base"] > 0):
                pl._forget_source(conn, key)
                old = None
        if old is not None and old["done"]:
            report.already_done = report.done = True
            return None, report, info
        if old is not None:
            diffs = pl._settings_diff(old["settings"] or {}, settings)
            if diffs:
                raise InvalidInputError(
                    f"{key}: an unfinished ingest with other settings exists ({'; '.join(diffs)}); "
                    f"resume with the same settings, or remove its crops first (reid-engine remove --source ...)"
                )
            if old["camera"] != camera:
                raise InvalidInputError(f"{key}: was being ingested as camera {old['camera']!r}, not {camera!r}")
            p = pl._Progress(**{k: old[k] for k in pl._Progress.__dataclass_fields__})
            p.settings = {**(p.settings or {}), pl.FINGERPRINT_KEY: file_print}
            chunks = [dict(r) for r in conn.execute(
                sa.select(db.ingest_detections).where(db.ingest_detections.c.source_key == key)
            ).mappings()]
        else:
            # the first free prefix, counting those of earlier videos of this run not committed yet
            base, n = f"{camera}/{stem}", 1
            prefix = base
            while pl._unique_prefix(conn, key, prefix) != prefix or prefix in planned_prefixes:
                n += 1
                prefix = f"{base}~{n}"
            start = o["start_frame"]
            p = pl._Progress(key, key, camera, prefix, info.fps, info.frame_count, start_ts, settings,
                             next_frame=start, segment_start=start, decode_from=start)
            chunks = []
    planned_prefixes.add(p.track_prefix)
    if old is not None:
        report.resumed_from = p.next_frame
    job = {"source": str(source), "progress": asdict(p), "chunks": chunks, "resume": old is not None}
    return job, report, info


def ingest_with_ray(
    engine: "Engine",
    videos: Sequence[PathLike],
    address: Optional[str] = None,
    *,
    cameras: Optional[Sequence[Optional[str]]] = None,
    start_time: Union[None, str, float] = None,
    every: int = 1,
    start_frame: int = 0,
    end_frame: Optional[int] = None,
    max_frames: Optional[int] = None,
    fps: Optional[float] = None,
    detector: Optional[str] = None,
    detector_weights: Optional[PathLike] = None,
    threshold: Optional[float] = None,
    tracker: Optional[str] = None,
    tracker_options: Optional[dict[str, Any]] = None,
    crops_per_track: int = 4,
    min_track_frames: int = 3,
    min_crop_height: int = 24,
    checkpoint_frames: int = 300,
    checkpoint_seconds: float = 60.0,
    batch_size: int = 32,
    max_parallel: Optional[int] = None,
    max_ahead: int = 4,
    device: Optional[str] = None,
    show_progress: Optional[bool] = None,
) -> list["IngestReport"]:
    """Ingest video files on a Ray cluster, one video per task; the same index as ``ingest_video`` on each.

    Options are those of ``reid_engine.ingest.pipeline.ingest_video`` (``cameras[i]`` names
    video i's camera). Each task decodes, detects, tracks and encodes its video and streams
    one checkpoint per ``checkpoint_frames`` frames; this process commits the checkpoints
    video after video, in order, each as the local pipeline would (same rows, ids, tracks
    and progress), so an interrupted run resumes exactly. ``max_parallel`` videos run at
    once (default: the cluster's CPUs); a task stops when ``max_ahead`` of its checkpoints
    wait uncommitted.
    """
    from ..engine import Engine
    from ..ingest import pipeline as pl
    from ..ingest.detect import DEFAULT_THRESHOLD, create_detector

    if every < 1 or crops_per_track < 1 or checkpoint_frames < 1 or max_ahead < 1:
        raise InvalidInputError("every, crops_per_track, checkpoint_frames and max_ahead must be positive")
    if start_frame < 0 or (end_frame is not None and end_frame <= start_frame):
        raise InvalidInputError(f"frame range {start_frame}..{end_frame}: expected 0 <= start < end")
    if max_frames is not None and max_frames < 1:
        raise InvalidInputError(f"max_frames {max_frames}: expected a positive integer")
    cams = list(cameras) if cameras is not None else [None] * len(videos)
    if len(cams) != len(videos):
        raise InvalidInputError(f"{len(cams)} cameras for {len(videos)} videos")
    thr = DEFAULT_THRESHOLD if threshold is None else threshold
    dspec = _detector_spec(detector, detector_weights, thr)
    det = create_detector(dspec["name"], dspec["weights"], thr)  # for the settings a resume must match
    o: dict[str, Any] = {"start_time": start_time, "every": every, "start_frame": start_frame, "end_frame": end_frame,
         "max_frames": max_frames, "fps": fps, "tracker": tracker or "norfair",
         "tracker_options": dict(tracker_options or {}), "crops_per_track": crops_per_track,
         "min_track_frames": min_track_frames, "min_crop_height": min_crop_height,
         "checkpoint_frames": checkpoint_frames, "checkpoint_seconds": checkpoint_seconds, "batch_size": batch_size}
    if parse_time(start_time) is None:
        log.warning("no start time given: crops carry offsets into the videos but no timestamps")
    ray = connect(address)
    espec = _encoder_spec(engine)
    task = ray.remote(num_cpus=1)(_ingest_task).options(
        num_returns="streaming", _generator_backpressure_num_objects=max_ahead)
    lookup = _LookupEncoder(engine.store.manifest.dim)
    # the index's add path, fed with the cluster's features (the lookup duck-types the encoder's encode_files)
    committer = Engine(engine.store, cast("Encoder", lookup), device)
    quiet = not (show_progress or (show_progress is None and sys.stderr.isatty()))
    planned: set[str] = set()
    reports: list[Optional[IngestReport]] = [None] * len(videos)
    running: collections.deque = collections.deque()
    parallel = max_parallel or _cluster_cpus(ray)
    bar = tqdm(total=len(videos), desc="ingest (ray)", unit="video", disable=quiet, dynamic_ncols=True)
    todo = collections.deque(enumerate(videos))

    def launch() -> None:
        while todo and len(running) < parallel:
            i, video = todo.popleft()
            job, rep, info = _plan_source(engine, video, cams[i], det, o, planned)
            reports[i] = rep
            if job is None:
                bar.update(1)
                continue
            job.update(detector=dspec, encoder=espec, options=o, device=device)
            running.append((i, job, rep, info, task.remote(job), time.perf_counter()))

    try:
        launch()
        while running:
            i, job, rep, info, gen, t_start = running.popleft()
            p0 = pl._Progress(**job["progress"])
            run = pl._Run(committer, info, p0, det, o["tracker"], o["tracker_options"], every, crops_per_track,
                          min_track_frames, min_crop_height, batch_size, rep, None)
            for ref in gen:
                ck = ray.get(ref)
                lookup.features = ck["features"]
                run.p = pl._Progress(**ck["progress"])
                run.finished, run.open, run.chunk, run.id_base = ck["finished"], ck["open"], ck["chunk"], ck["id_base"]
                run.commit()
                rep.frames += ck["frames"]
                rep.replayed = ck["replayed"]
                bar.set_postfix(video=Path(job["source"]).name, crops=rep.crops, refresh=False)
            rep.done = run.p.done
            rep.seconds = time.perf_counter() - t_start
            bar.update(1)
            log.info("%s", rep.summary())
            launch()
    finally:
        bar.close()
        for item in running:
            ray.cancel(item[4], force=True)
    return [r for r in reports if r is not None]
