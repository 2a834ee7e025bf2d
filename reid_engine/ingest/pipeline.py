"""Footage -> detections -> tracks -> best crops -> index, resumable.

The video is read once, front to back. Every processed frame is run through the
detector and the tracker; each track keeps its best few crops. When a track
ends, its crops are encoded and added to the index together with a row in the
``tracks`` table (where, when, and the mean embedding of its crops).

Commits happen every ``checkpoint_frames`` processed frames or ``checkpoint_seconds``
of work, whichever comes first, each one a single
SQL transaction (via the engine's ``sql_hook``) holding the finished tracks'
crops and rows, the source's progress and the detections of the frames since the
last commit. An interrupted run therefore leaves a consistent index, and a
re-run resumes: the stored detections are replayed through a fresh tracker
(trackers are deterministic), frames are decoded again only from the start of
the tracks that were still open, and detection carries on where it stopped.
A finished source is skipped; the crops' pixel hashes are a second guard. A file whose
size or content (hash of its first and last MiB) changed since it was ingested is a new
source: its old crops and tracks are removed and it is ingested again.
"""
from __future__ import annotations

import hashlib
import logging
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Iterator, Optional, Union

import numpy as np
import sqlalchemy as sa
from sqlalchemy.engine import Connection
from tqdm.auto import tqdm

from ..errors import InvalidInputError
from ..index import db
from .crops import FRAME_LIMIT, CropItem, parse_time
from .detect import DEFAULT_THRESHOLD, Detections, Detector, create_detector
from .select import BestCrops, Candidate, cut, quality
from .track import TrackedBox, create_tracker
from .video import VideoInfo, fingerprint, iter_frames, probe, same_content

if TYPE_CHECKING:
    from ..engine import Engine

log = logging.getLogger(__name__)

#: called for each newly processed frame: (frame number, detections, [(track key, box, score)])
FrameObserver = Callable[[int, Detections, list[tuple[str, np.ndarray, float]]], None]


@dataclass
class IngestReport:
    """What one ``ingest_video`` call did."""

    source: str
    camera: str
    frames: int = 0  # frames detected in this call
    replayed: int = 0  # frames replayed from stored detections when resuming
    resumed_from: Optional[int] = None
    already_done: bool = False
    done: bool = False  # the whole source is ingested now
    tracks: int = 0  # tracks added
    crops: int = 0  # crops added
    duplicates: int = 0  # crops skipped because their pixels were already indexed
    replaced: int = 0  # crops of an earlier version of the file (its size or content changed), removed
    seconds: float = 0.0

    @property
    def fps(self) -> float:
        return self.frames / self.seconds if self.seconds > 0 else 0.0

    def summary(self) -> str:
        if self.already_done:
            return f"{self.source}: already ingested, nothing to do"
        resumed = f" (resumed at frame {self.resumed_from})" if self.resumed_from is not None else ""
        if self.replaced:
            resumed += f" (the file changed since it was ingested: its {self.replaced} earlier crops were replaced)"
        return (
            f"{self.source}{resumed}: {self.frames} frames at {self.fps:.1f} frames/s, "
            f"added {self.tracks} tracks with {self.crops} crops"
            + (f", {self.duplicates} crops already indexed" if self.duplicates else "")
            + ("" if self.done else "; not finished, run again to continue")
        )

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["fps"] = round(self.fps, 2)
        d["seconds"] = round(self.seconds, 3)
        return d


@dataclass
class _Track:
    local_id: int
    start_frame: int
    end_frame: int
    crops: BestCrops
    n_frames: int = 0
    best_score: float = 0.0


@dataclass
class _Progress:
    """The ``ingest_sources`` row of the source being ingested."""

    key: str
    source: str
    camera: str
    track_prefix: str
    fps: float
    frame_count: Optional[int]
    start_time: Optional[float]
    settings: dict[str, Any]
    next_frame: int = 0
    segment_start: int = 0
    id_base: int = 0
    decode_from: int = 0
    frames_done: int = 0
    done: bool = False

    def row(self) -> dict[str, Any]:
        d = asdict(self)
        d["updated_at"] = time.time()
        return d


def _load_progress(conn: Connection, key: str) -> Optional[dict[str, Any]]:
    row = conn.execute(sa.select(db.ingest_sources).where(db.ingest_sources.c.key == key)).mappings().first()
    return dict(row) if row else None


def _forget_source(conn: Connection, key: str) -> None:
    conn.execute(db.ingest_sources.delete().where(db.ingest_sources.c.key == key))
    conn.execute(db.ingest_detections.delete().where(db.ingest_detections.c.source_key == key))
    conn.execute(db.tracks.delete().where(db.tracks.c.source == key))


#: the longest track-key prefix ("camera/stem"): with "~N" and "/<track number>" a key must fit its column
PREFIX_MAX = db.TEXT_LIMITS["track"] - 28


def _short_prefix(prefix: str) -> str:
    """``prefix``, or when longer than ``PREFIX_MAX`` its head and a hash of the whole (keys of long names fit)."""
    if len(prefix) <= PREFIX_MAX:
        return prefix
    digest = hashlib.sha1(prefix.encode("utf-8", "surrogateescape")).hexdigest()[:8]
    return f"{prefix[: PREFIX_MAX - 9]}~{digest}"


def _unique_prefix(conn: Connection, key: str, prefix: str) -> str:
    """``prefix`` (shortened to fit), or ``prefix~N`` when another source already uses it (track keys stay
    unique)."""
    prefix = _short_prefix(prefix)
    taken = set(
        conn.execute(
            sa.select(db.ingest_sources.c.track_prefix).where(db.ingest_sources.c.key != key)
        ).scalars()
    )
    taken |= {
        str(t).rsplit("/", 1)[0]
        for t in conn.execute(
            sa.select(db.crops.c.track).distinct().where(db.crops.c.track.like(f"{prefix}%"))
        ).scalars()
    }
    if prefix not in taken:
        return prefix
    n = 2
    while f"{prefix}~{n}" in taken:
        n += 1
    return f"{prefix}~{n}"


#: key of ``ingest_sources.settings`` holding the file's fingerprint (not a setting: never compared as one)
FINGERPRINT_KEY = "source_file"
#: settings key of the frame a run was started at (a re-run of the same command resumes; another start is refused)
START_KEY = "first_frame"


def _settings_diff(old: dict[str, Any], new: dict[str, Any]) -> list[str]:
    keys = (set(old) | set(new)) - {FINGERPRINT_KEY, START_KEY}
    return [f"{k}: was {old.get(k)!r}, now {new.get(k)!r}" for k in sorted(keys) if old.get(k) != new.get(k)]


class _Run:
    """One ingest call: the tracker state, the open tracks and what waits for the next commit."""

    def __init__(
        self,
        engine: "Engine",
        info: VideoInfo,
        progress: _Progress,
        detector: Detector,
        tracker_name: str,
        tracker_options: dict[str, Any],
        every: int,
        crops_per_track: int,
        min_track_frames: int,
        min_crop_height: int,
        batch_size: int,
        report: IngestReport,
        observer: Optional[FrameObserver],
    ) -> None:
        self.engine = engine
        self.info = info
        self.p = progress
        self.detector = detector
        self.every = every
        self.crops_per_track = crops_per_track
        self.min_track_frames = min_track_frames
        self.min_crop_height = min_crop_height
        self.batch_size = batch_size
        self.report = report
        self.observer = observer
        self.min_gap = max(1, int(round(0.5 * info.fps / every)))  # kept crops at least ~0.5 s apart
        self.tracker = create_tracker(tracker_name, fps=info.fps / every, **tracker_options)
        self.open: dict[int, _Track] = {}
        self.finished: list[_Track] = []
        self.chunk: list[list[Any]] = []  # [frame, [[x1, y1, x2, y2, score], ...]] since the last commit
        self.max_id = 0
        self.id_base = progress.id_base  # track numbers of this tracker start after those of earlier segments

    def key_of(self, local_id: int) -> str:
        return f"{self.p.track_prefix}/{self.id_base + local_id}"

    # -- per frame --------------------------------------------------------------------
    def step(self, f: int, frame: Optional[np.ndarray], dets: Detections, replay: bool) -> list[TrackedBox]:
        """Advance the tracker by one processed frame; ``frame`` None skips crop cutting."""
        tracked = self.tracker.update(dets)
        for tb in tracked:
            self.max_id = max(self.max_id, tb.track_id)
            tr = self.open.get(tb.track_id)
            if tr is None:
                tr = self.open[tb.track_id] = _Track(tb.track_id, f, f, BestCrops(self.crops_per_track, self.min_gap))
            tr.end_frame = f
            tr.n_frames += 1
            tr.best_score = max(tr.best_score, tb.score)
            if frame is not None and tb.box[3] - tb.box[1] >= self.min_crop_height:
                crop = cut(frame, tb.box)
                if crop is not None:
                    tr.crops.offer(Candidate(quality(crop, tb.box, tb.score, frame.shape), f, tb.box, tb.score, crop))
        alive = self.tracker.alive_ids()
        for tid in [t for t in self.open if t not in alive]:
            tr = self.open.pop(tid)
            if not replay:  # tracks ending during a replay were committed by the interrupted run
                self.finished.append(tr)
        if not replay:
            self.chunk.append([f, _det_rows(dets)])
        return tracked

    def close_all(self) -> None:
        self.finished.extend(self.open.values())
        self.open.clear()

    # -- commits ----------------------------------------------------------------------
    def _when(self, frame: int) -> tuple[float, Optional[float]]:
        offset = frame / self.info.fps
        return offset, (None if self.p.start_time is None else self.p.start_time + offset)

    def commit(self) -> None:
        """Add the finished tracks and record progress, in one transaction."""
        items: list[CropItem] = []
        meta: dict[str, dict[str, Any]] = {}
        for tr in self.finished:
            kept = tr.crops.best()
            if tr.n_frames < self.min_track_frames or not kept:
                continue
            key = self.key_of(tr.local_id)
            start_off, start_ts = self._when(tr.start_frame)
            end_off, end_ts = self._when(tr.end_frame)
            meta[key] = dict(
                key=key, source=self.p.key, camera=self.p.camera, start_frame=tr.start_frame, end_frame=tr.end_frame,
                start_time=start_ts, end_time=end_ts, n_frames=tr.n_frames,
                extra={"start_offset": round(start_off, 3), "end_offset": round(end_off, 3),
                       "best_score": round(tr.best_score, 4)},
            )
            for c in kept:
                offset, ts = self._when(c.frame)
                x1, y1, x2, y2 = (float(v) for v in c.box)
                items.append(CropItem(
                    Path(f"{self.p.key}#frame={c.frame}"),
                    {
                        "camera": self.p.camera, "timestamp": ts, "frame": c.frame, "box": (x1, y1, x2 - x1, y2 - y1),
                        "track": key, "source": self.p.key, "offset": round(offset, 3),
                        "score": round(c.score, 4), "quality": round(c.quality, 4),
                    },
                    image=c.crop,
                ))
        self.finished.clear()
        self.p.decode_from = min((t.start_frame for t in self.open.values()), default=self.p.next_frame)
        progress_row = self.p.row()
        chunk, self.chunk = self.chunk, []
        # streams are never resumed, so their detections need not be kept for a replay
        keep_chunks = not self.p.done and self.p.segment_start < self.p.next_frame and not self.info.stream
        written = {"tracks": 0}

        def hook(conn: Connection, ids: list[int], rows: Any, feats: np.ndarray) -> None:
            by_track: dict[str, list[int]] = {}
            for j, row in enumerate(rows):
                if row.get("track") in meta:
                    by_track.setdefault(row["track"], []).append(j)
            now = time.time()
            track_rows = []
            for key, js in by_track.items():
                emb = feats[js].astype(np.float32).mean(axis=0)
                emb /= max(float(np.linalg.norm(emb)), 1e-12)
                best = max(js, key=lambda j: (rows[j]["extra"] or {}).get("quality", 0.0))
                track_rows.append({**meta[key], "best_crop": ids[best], "crop_ids": [ids[j] for j in js],
                                   "embedding": emb.tobytes(), "added_at": now})
            if track_rows:
                conn.execute(db.tracks.insert(), track_rows)
            written["tracks"] = len(track_rows)
            conn.execute(db.ingest_sources.delete().where(db.ingest_sources.c.key == self.p.key))
            conn.execute(db.ingest_sources.insert().values(**progress_row))
            if keep_chunks:
                if chunk:
                    conn.execute(db.ingest_detections.insert().values(
                        source_key=self.p.key, chunk_start=int(chunk[0][0]), data=chunk))
            else:
                conn.execute(db.ingest_detections.delete().where(db.ingest_detections.c.source_key == self.p.key))

        added = 0
        if items:
            rep = self.engine.add(items, batch_size=self.batch_size, show_progress=False,
                                  commit_every=len(items) + 1, sql_hook=hook)
            added = rep.added
            self.report.crops += rep.added
            self.report.duplicates += rep.duplicates
        if not added:  # nothing new to index: record the progress on its own
            with self.engine.store.sql.begin() as conn:
                hook(conn, [], [], np.zeros((0, self.engine.store.manifest.dim), np.float32))
        self.report.tracks += written["tracks"]


def _det_rows(dets: Detections) -> list[list[float]]:
    return [[round(float(v), 2) for v in b] + [round(float(s), 2)] for b, s in zip(dets.boxes, dets.scores)]


def _stored(dets: Detections) -> Detections:
    """Detections as they are stored (rounded), so a replay feeds the tracker exactly the same numbers."""
    arr = np.concatenate([dets.boxes.reshape(-1, 4), dets.scores.reshape(-1, 1)], axis=1).astype(np.float64)
    return _from_rows(np.round(arr, 2).tolist())


def _from_rows(rows: list[list[float]]) -> Detections:
    arr = np.asarray(rows, np.float32).reshape(-1, 5)
    return Detections(np.ascontiguousarray(arr[:, :4]), np.ascontiguousarray(arr[:, 4]))


def _settings(detector: Detector, tracker_name: str, tracker_options: dict[str, Any], every: int,
              fps: float, start_time: Optional[float], crops_per_track: int, min_track_frames: int,
              min_crop_height: int) -> dict[str, Any]:
    """What must not change between an interrupted run and its resumption."""
    return {
        "detector": detector.describe(), "tracker": {"name": tracker_name, **tracker_options}, "every": every,
        "fps": fps, "start_time": start_time, "crops_per_track": crops_per_track,
        "min_track_frames": min_track_frames, "min_crop_height": min_crop_height,
    }


def ingest_video(
    engine: "Engine",
    source: Union[str, Path],
    camera: Optional[str] = None,
    *,
    start_time: Union[None, str, float] = None,
    every: int = 1,
    start_frame: int = 0,
    end_frame: Optional[int] = None,
    max_frames: Optional[int] = None,
    fps: Optional[float] = None,
    detector: Union[None, str, Detector] = None,
    detector_weights: Union[None, str, Path] = None,
    threshold: float = DEFAULT_THRESHOLD,
    tracker: Optional[str] = None,
    tracker_options: Optional[dict[str, Any]] = None,
    crops_per_track: int = 4,
    min_track_frames: int = 3,
    min_crop_height: int = 24,
    checkpoint_frames: int = 300,
    checkpoint_seconds: float = 60.0,
    batch_size: int = 32,
    show_progress: Optional[bool] = None,
    observer: Optional[FrameObserver] = None,
) -> IngestReport:
    """Detect, track and index the people of a video file or stream URL.

    ``camera`` names the camera (default: the file's stem); ``start_time`` (ISO-8601
    or epoch seconds) is when frame 0 was shot, so each crop's timestamp is
    ``start_time + frame / fps``. ``every`` runs detection on every Nth frame.
    ``start_frame``/``end_frame``/``max_frames`` limit this call to part of the video;
    a later call without them continues. Re-running on a finished source does nothing,
    unless the file's size or content changed: then its old crops are replaced.
    Progress is committed every ``checkpoint_frames`` processed frames or
    ``checkpoint_seconds`` of work, so an interruption loses at most that much.
    """
    t0 = time.perf_counter()
    if not 1 <= every <= FRAME_LIMIT:
        raise InvalidInputError(f"every {every}: expected a positive integer up to {FRAME_LIMIT}")
    if start_frame < 0 or (end_frame is not None and end_frame <= start_frame):
        raise InvalidInputError(f"frame range {start_frame}..{end_frame}: expected 0 <= start < end")
    if max_frames is not None and max_frames < 1:
        raise InvalidInputError(f"max_frames {max_frames}: expected a positive integer")
    if crops_per_track < 1 or checkpoint_frames < 1:
        raise InvalidInputError("crops_per_track and checkpoint_frames must be positive")
    if not (isinstance(checkpoint_seconds, (int, float)) and checkpoint_seconds > 0):
        raise InvalidInputError(f"checkpoint_seconds {checkpoint_seconds!r}: expected a positive number")
    info = probe(source, fps)
    if info.frame_count is not None and start_frame >= info.frame_count:
        raise InvalidInputError(f"{source}: start frame {start_frame} is past the video's {info.frame_count} frames")
    file_print = None if info.stream else fingerprint(source)
    stem = Path(str(source).rstrip("/")).stem or "stream"
    camera = str(camera) if camera else stem
    if "," in camera:  # filters take comma-separated camera names: this one could never be selected
        raise InvalidInputError(
            f"{source}: camera {camera!r} holds a comma, which camera filters use to list names"
            + ("" if camera != stem else " (it is the file's name); pass --camera with a name without one")
        )
    if len(camera) > db.TEXT_LIMITS["camera"]:
        raise InvalidInputError(
            f"{source}: camera {camera[:20]!r}... is longer than {db.TEXT_LIMITS['camera']} characters"
            + ("" if camera != stem else " (it is the file's name); pass a shorter camera name")
        )
    start_ts = parse_time(start_time)
    key = info.source
    if info.stream:  # frame numbers restart with every connection: each run is its own source
        key = f"{info.source}@{time.strftime('%Y%m%dT%H%M%S', time.gmtime())}"
        stem = f"{stem}@{time.strftime('%Y%m%dT%H%M%S', time.gmtime())}"
    if start_ts is None:
        log.warning("%s: no start time given: crops carry offsets into the video but no timestamps", source)
    det = detector if detector is not None and not isinstance(detector, str) else create_detector(
        detector, detector_weights, threshold)
    tracker_name = tracker or "norfair"
    topts = dict(tracker_options or {})
    settings = _settings(det, tracker_name, topts, every, info.fps, start_ts,
                         crops_per_track, min_track_frames, min_crop_height)
    if file_print is not None:
        settings[FINGERPRINT_KEY] = file_print
    settings[START_KEY] = start_frame
    report = IngestReport(source=key, camera=camera)

    store = engine.store
    with store.sql.connect() as conn:
        before = _load_progress(conn, key)
    if before is not None and not same_content((before["settings"] or {}).get(FINGERPRINT_KEY), file_print):
        was = (before["settings"] or {}).get(FINGERPRINT_KEY) or {}
        log.warning("%s: the file changed since it was ingested (%s bytes, now %s): ingesting it again",
                    key, was.get("size"), (file_print or {}).get("size"))
        # crops first: a crash after this leaves a source with no crops, which the next run restarts
        report.replaced = engine.remove(sources=[key])
        with store.sql.begin() as conn:
            _forget_source(conn, key)
    with store.sql.begin() as conn:
        old = _load_progress(conn, key)
        if old is not None:
            n_crops = conn.execute(
                sa.select(sa.func.count()).select_from(db.crops).where(db.crops.c.source == key)
            ).scalar_one()
            if n_crops == 0 and (old["done"] or old["id_base"] > 0):
                log.info("%s: its crops were removed from the index; ingesting it again", key)
                _forget_source(conn, key)
                old = None
            elif n_crops == 0 and _settings_diff(old["settings"] or {}, settings):
                # an unfinished run that indexed nothing yet: nothing to keep, so other settings start it afresh
                log.info("%s: an unfinished ingest with no crops yet; starting again with the new settings", key)
                _forget_source(conn, key)
                old = None
        if old is not None and old["done"]:
            report.already_done = report.done = True
            report.seconds = time.perf_counter() - t0
            return report
        if old is not None:
            diffs = _settings_diff(old["settings"] or {}, settings)
            if diffs:
                raise InvalidInputError(
                    f"{key}: an unfinished ingest with other settings exists ({'; '.join(diffs)}); "
                    f"resume with the same settings, or remove its crops first (reid-engine remove --source ...)"
                )
            if old["camera"] != camera:
                raise InvalidInputError(f"{key}: was being ingested as camera {old['camera']!r}, not {camera!r}")
            first = (old["settings"] or {}).get(START_KEY)
            # 0 is the default ("where it stopped"); the run's own start repeats its command
            if start_frame not in (0, old["next_frame"], first):
                raise InvalidInputError(
                    f"{key}: an unfinished ingest stopped at frame {old['next_frame']}, so it cannot start at frame "
                    f"{start_frame}; resume without --start-frame, or remove its crops first "
                    "(reid-engine remove --source ...)"
                )
            p = _Progress(**{k: old[k] for k in _Progress.__dataclass_fields__})
            if file_print is not None:  # rows written before fingerprints were kept get one now
                p.settings = {**(p.settings or {}), FINGERPRINT_KEY: file_print}
        else:
            prefix = _unique_prefix(conn, key, f"{camera}/{stem}")
            p = _Progress(key, key, camera, prefix, info.fps, info.frame_count, start_ts, settings,
                          next_frame=start_frame, segment_start=start_frame, decode_from=start_frame)

    run = _Run(engine, info, p, det, tracker_name, topts, every, crops_per_track, min_track_frames,
               min_crop_height, batch_size, report, observer)
    if old is not None:
        if start_frame != p.next_frame:
            log.info("%s: continuing at frame %d, where the last run stopped", key, p.next_frame)
        report.resumed_from = p.next_frame
        report.replayed = _replay(run, source)

    stop = end_frame
    if max_frames is not None:
        stop = min(stop if stop is not None else sys.maxsize, p.next_frame + max_frames * every)
    total = None
    if info.frame_count is not None:
        last = info.frame_count if stop is None else min(stop, info.frame_count)
        total = max(0, -(-(last - p.next_frame) // every))
    quiet = not (show_progress or (show_progress is None and sys.stderr.isatty()))
    bar = tqdm(total=total, desc=f"ingest {camera}", unit="frame", disable=quiet, dynamic_ncols=True)
    since_commit = 0
    t_detect = last_commit = time.perf_counter()
    try:
        for f, frame in iter_frames(source if not info.stream else info.source, p.next_frame, stop, every):
            dets = _stored(det.detect(frame))
            tracked = run.step(f, frame, dets, replay=False)
            if observer is not None:
                observer(f, dets, [(run.key_of(t.track_id), t.box, t.score) for t in tracked])
            p.next_frame = f + every
            p.frames_done += 1
            report.frames += 1
            since_commit += 1
            bar.update(1)
            if since_commit >= checkpoint_frames or time.perf_counter() - last_commit >= checkpoint_seconds:
                run.commit()
                since_commit = 0
                last_commit = time.perf_counter()
                bar.set_postfix(tracks=report.tracks, crops=report.crops, refresh=False)
        reached_end = stop is None or (info.frame_count is not None and stop >= info.frame_count) or p.next_frame < stop
        run.close_all()
        if reached_end:
            p.done = True
        else:  # a range ends here: its open tracks were closed, a later call starts a fresh tracker
            p.segment_start = p.next_frame
            p.id_base += run.max_id
        run.commit()
    finally:
        bar.close()
    report.done = p.done
    report.seconds = time.perf_counter() - t_detect
    log.info("%s", report.summary())
    return report


def _replay(run: _Run, source: Union[str, Path]) -> int:
    """Rebuild the tracker and the open tracks of an interrupted run from its stored detections."""
    p = run.p
    with run.engine.store.sql.connect() as conn:
        chunks = conn.execute(
            sa.select(db.ingest_detections.c.data)
            .where(db.ingest_detections.c.source_key == p.key)
            .where(db.ingest_detections.c.chunk_start >= p.segment_start)
            .order_by(db.ingest_detections.c.chunk_start)
        ).scalars().all()
    stored = [(int(f), rows) for chunk in chunks for f, rows in chunk if int(f) < p.next_frame]
    if not stored:
        return 0
    log.info("%s: resuming at frame %d: replaying %d frames of stored detections", p.key, p.next_frame, len(stored))
    frames: Iterator[tuple[int, np.ndarray]] = iter_frames(source, p.decode_from, p.next_frame, run.every)
    pending: Optional[tuple[int, np.ndarray]] = None
    for f, rows in stored:
        dets = _from_rows(rows)
        frame = None
        if f >= p.decode_from:
            while pending is None or pending[0] < f:
                pending = next(frames, None)
                if pending is None:
                    raise InvalidInputError(f"{p.key}: frame {f} cannot be read again; the video changed?")
            if pending[0] == f:
                frame = pending[1]
        run.step(f, frame, dets, replay=True)
    run.chunk = []
    return len(stored)
