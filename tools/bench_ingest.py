"""Measure footage ingest on PETS 2009 S2.L1 view 1: detection, tracking, track queries, speed.

Prints one JSON line. Needs the shared assets (see /work/shared/ASSETS.md):

    python tools/bench_ingest.py                      # full video, detection on every frame and every 3rd
    python tools/bench_ingest.py --max-frames 150 --every 1   # quick run

Ground truth ``gt_every3rd.txt`` is ``frame,id,x,y,w,h,flag`` in the original 768x576
coordinates (x0.625 for the 480x360 video), video frame = frame - 1, flag 0 = outside
the annotated area (such boxes are ignored: a detection on them is neither right nor wrong).
"""
from __future__ import annotations

import argparse
import csv
import json
import logging
import sys
import tempfile
import time
from collections import Counter, defaultdict
from pathlib import Path
from typing import Any, Optional

import numpy as np
from scipy.optimize import linear_sum_assignment

from reid_engine import Engine
from reid_engine.assets import shared_path
from reid_engine.ingest.detect import DEFAULT_THRESHOLD, Detections, create_detector
from reid_engine.ingest.track import create_tracker

SCALE = 0.625
IOU = 0.5
#: PETS S2.L1 ground-truth ids that are the same actor re-entering (see shared/ASSETS.md)
SAME_ACTOR = {11: 3, 12: 4, 10: 6}


def read_gt(path: Path) -> dict[int, list[tuple[int, np.ndarray, int]]]:
    """Video frame -> [(gt id, (x1, y1, x2, y2) in video pixels, flag)]."""
    out: dict[int, list[tuple[int, np.ndarray, int]]] = defaultdict(list)
    for line in path.read_text().splitlines():
        if not line.strip():
            continue
        f, i, x, y, w, h, flag = line.split(",")[:7]
        box = np.array([float(x), float(y), float(x) + float(w), float(y) + float(h)]) * SCALE
        out[int(float(f)) - 1].append((int(float(i)), box, int(float(flag))))
    return out


def iou_matrix(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    a = np.asarray(a, np.float64).reshape(-1, 4)
    b = np.asarray(b, np.float64).reshape(-1, 4)
    tl = np.maximum(a[:, None, :2], b[None, :, :2])
    br = np.minimum(a[:, None, 2:], b[None, :, 2:])
    inter = np.prod(np.clip(br - tl, 0, None), axis=2)
    area_a = np.prod(a[:, 2:] - a[:, :2], axis=1)
    area_b = np.prod(b[:, 2:] - b[:, :2], axis=1)
    return inter / np.maximum(area_a[:, None] + area_b[None, :] - inter, 1e-9)


def match(a: np.ndarray, b: np.ndarray) -> list[tuple[int, int]]:
    """One-to-one pairs (i, j) with IoU >= 0.5, maximising total IoU."""
    if not len(a) or not len(b):
        return []
    m = iou_matrix(a, b)
    rows, cols = linear_sum_assignment(-m)
    return [(int(r), int(c)) for r, c in zip(rows, cols) if m[r, c] >= IOU]


def drop_ignored(boxes: np.ndarray, ignored: np.ndarray) -> np.ndarray:
    """Which boxes do not sit on an ignored (flag 0) ground-truth box."""
    keep = np.ones(len(boxes), bool)
    if len(boxes) and len(ignored):
        keep &= ~(iou_matrix(boxes, ignored) >= IOU).any(axis=1)
    return keep


class Recorder:
    """Collects the per-frame detections and track boxes of an ingest."""

    def __init__(self) -> None:
        self.dets: dict[int, Detections] = {}
        self.tracks: dict[int, list[tuple[str, np.ndarray]]] = {}

    def __call__(self, frame: int, dets: Detections, tracked: list[tuple[str, np.ndarray, float]]) -> None:
        self.dets[frame] = dets
        self.tracks[frame] = [(key, box) for key, box, _ in tracked]


def detection_metrics(rec: Recorder, gt: dict[int, list]) -> dict[str, Any]:
    tp = n_gt = n_det = 0
    frames = [f for f in sorted(gt) if f in rec.dets]
    for f in frames:
        care = np.array([b for _, b, flag in gt[f] if flag == 1]).reshape(-1, 4)
        ign = np.array([b for _, b, flag in gt[f] if flag == 0]).reshape(-1, 4)
        pairs = match(rec.dets[f].boxes, care)
        matched = {i for i, _ in pairs}
        unmatched = np.array([i for i in range(len(rec.dets[f])) if i not in matched], int)
        extra = int(drop_ignored(rec.dets[f].boxes[unmatched].reshape(-1, 4), ign).sum()) if len(unmatched) else 0
        tp += len(pairs)
        n_gt += len(care)
        n_det += len(pairs) + extra
    return {"recall": round(tp / max(n_gt, 1), 4), "precision": round(tp / max(n_det, 1), 4),
            "frames": len(frames), "gt_boxes": n_gt}


def tracking_metrics(rec: Recorder, gt: dict[int, list]) -> tuple[dict[str, Any], dict[str, Optional[int]]]:
    """MOT metrics over the annotated frames, and each track's majority ground-truth id."""
    import motmetrics as mm

    acc = mm.MOTAccumulator(auto_id=True)
    votes: dict[str, Counter] = defaultdict(Counter)
    numbers: dict[str, int] = {}  # motmetrics wants numeric hypothesis ids
    frames = [f for f in sorted(gt) if f in rec.tracks]
    for f in frames:
        care = [(i, b) for i, b, flag in gt[f] if flag == 1]
        ign = np.array([b for _, b, flag in gt[f] if flag == 0]).reshape(-1, 4)
        hyp = rec.tracks[f]
        hboxes = np.array([b for _, b in hyp]).reshape(-1, 4)
        gboxes = np.array([b for _, b in care]).reshape(-1, 4)
        # hypotheses on ignored people count neither way, unless they also cover an annotated one
        covered = (iou_matrix(hboxes, gboxes) >= IOU).any(axis=1) if len(gboxes) and len(hboxes) else np.zeros(len(hyp), bool)
        keep = drop_ignored(hboxes, ign) | covered
        hyp = [h for h, k in zip(hyp, keep) if k]
        hboxes = hboxes[keep]
        dist = 1.0 - iou_matrix(gboxes, hboxes) if len(gboxes) and len(hboxes) else np.zeros((len(gboxes), len(hboxes)))
        dist[dist > 1.0 - IOU] = np.nan
        acc.update([i for i, _ in care], [numbers.setdefault(k, len(numbers)) for k, _ in hyp], dist)
        for gi, hj in match(gboxes, hboxes):
            votes[hyp[hj][0]][care[gi][0]] += 1
    mh = mm.metrics.create()
    names = ["mota", "motp", "idf1", "num_switches", "num_fragmentations", "mostly_tracked", "num_unique_objects",
             "precision", "recall"]
    summary = mh.compute(acc, metrics=names, name="all")
    row = {k: float(summary[k].iloc[0]) for k in names}
    out = {
        "mota": round(row["mota"], 4), "idf1": round(row["idf1"], 4), "id_switches": int(row["num_switches"]),
        "fragmentations": int(row["num_fragmentations"]), "mostly_tracked": int(row["mostly_tracked"]),
        "gt_ids": int(row["num_unique_objects"]), "iou_distance_motp": round(row["motp"], 4),
        "frames": len(frames),
    }
    owner = {key: c.most_common(1)[0][0] for key, c in votes.items()}
    # the share of the tracks' annotated boxes that show the person each track is taken to be
    out["track_purity"] = round(sum(c.most_common(1)[0][1] for c in votes.values())
                                / max(1, sum(sum(c.values()) for c in votes.values())), 4)
    return out, owner


def query_metrics(engine: Engine, protocol: Path, owner: dict[str, Optional[int]]) -> dict[str, Any]:
    with open(protocol, newline="") as f:
        rows = [r for r in csv.DictReader(f) if r["role"] == "query"]
    files = [str(protocol.parent / r["file"]) for r in rows]
    feats = engine.encoder.encode(files)
    results = engine.query_tracks_features(feats, 5, query_labels=files)
    top1 = top5 = actor1 = 0
    actor = lambda i: SAME_ACTOR.get(i, i)  # noqa: E731
    for r, res in zip(rows, results):
        ids = [owner.get(h.track) for h in res.hits]
        pid = int(r["pid"])
        top1 += bool(ids) and ids[0] == pid
        top5 += pid in ids
        actor1 += bool(ids) and ids[0] is not None and actor(ids[0]) == actor(pid)
    n = max(len(rows), 1)
    out: dict[str, Any] = {"queries": len(rows), "top1_track_is_query_person": round(top1 / n, 4),
                           "top5_has_query_person": round(top5 / n, 4), "top1_same_actor": round(actor1 / n, 4)}
    # the same queries ranked over crops (not track means) with a re-ranking preset, each track counted at its
    # best crop: what the track-aware default re-ranking (track pooling) gives against plain cosine
    for preset in ("none", "default"):
        top1 = top5 = 0
        for r, res in zip(rows, engine.query_features(feats, 50, rerank=preset)):
            ids = [owner.get(t) for t in dict.fromkeys(h.track for h in res.hits)][:5]
            top1 += bool(ids) and ids[0] == int(r["pid"])
            top5 += int(r["pid"]) in ids
        out[f"crops_{preset}_top1_track"] = round(top1 / n, 4)
        out[f"crops_{preset}_top5_track"] = round(top5 / n, 4)
    return out


def run(args: argparse.Namespace) -> dict[str, Any]:
    gt = read_gt(args.gt)
    out: dict[str, Any] = {"video": str(args.video), "max_frames": args.max_frames, "threshold": args.threshold,
                           "tracker_options": args.tracker_options}
    with tempfile.TemporaryDirectory(prefix="bench-ingest-") as tmp:
        for n, every in enumerate(args.every):
            rec = Recorder()
            engine = Engine.create(Path(tmp) / f"every{every}", weights=args.weights)
            engine.encoder  # load the models before timing: the figure is the steady ingest rate
            detector = create_detector(threshold=args.threshold)
            create_tracker(fps=10.0)  # the tracking library's first import takes seconds
            t0 = time.perf_counter()
            report = engine.ingest_video(
                args.video, "view1", start_time="2009-01-01T00:00:00", every=every, max_frames=args.max_frames,
                detector=detector, show_progress=args.progress, observer=rec,
                tracker_options=args.tracker_options,
            )
            seconds = time.perf_counter() - t0
            stats = engine.stats()
            tracking, owner = tracking_metrics(rec, gt)
            block: dict[str, Any] = {
                "frames": report.frames, "seconds": round(seconds, 2),
                "video_frames_per_s": round((report.frames * every) / seconds, 2),
                "detected_frames_per_s": round(report.frames / seconds, 2),
                "crops": stats["crops"], "tracks": stats["tracks"], "tracking": tracking,
            }
            if n == 0:
                out["detection"] = detection_metrics(rec, gt)
                block["query"] = query_metrics(engine, args.protocol, owner)
                block["query"]["tracks_in_index"] = stats["tracks"]
            out[f"every{every}"] = block
            engine.close()
    return out


def main(argv: Optional[list[str]] = None) -> int:
    data = shared_path("data", "pets09_s2l1")
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--video", type=Path, default=shared_path("videos", "pets09_s2l1_view1_480x360.avi"))
    ap.add_argument("--gt", type=Path, default=data / "gt" / "gt_every3rd.txt")
    ap.add_argument("--protocol", type=Path, default=data / "protocol_setA_frames697-742.csv")
    ap.add_argument("--weights", type=Path, default=None, help="Encoder weights (default: the default encoder's).")
    ap.add_argument("--every", type=lambda s: [int(x) for x in s.split(",")], default=[1, 3],
                    help="Comma-separated detection strides; the first one is scored for detection and queries.")
    ap.add_argument("--max-frames", type=int, default=None, help="Frames to detect per run (quick runs).")
    ap.add_argument("--threshold", type=float, default=DEFAULT_THRESHOLD, help="Detection confidence threshold.")
    ap.add_argument("--tracker-option", action="append", default=[], metavar="KEY=VALUE",
                    help="Tracker setting, e.g. max_distance=0.3 or distance=iou (repeatable).")
    ap.add_argument("--progress", action="store_true", help="Show the ingest progress bar.")
    args = ap.parse_args(argv)
    args.tracker_options = {}
    for item in args.tracker_option:
        key, _, value = item.partition("=")
        try:
            args.tracker_options[key] = json.loads(value)
        except json.JSONDecodeError:
            args.tracker_options[key] = value
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr)
    print(json.dumps(run(args)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
