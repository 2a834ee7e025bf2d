"""Encode throughput and accuracy of OSNet x0.25 (MSMT17) on the pku_reid_dev crops, path by path.

Compares, on the same weights and the same 592 crops (repeated for stable timings):

* ``torchreid.FeatureExtractor`` loading the converted torchreid checkpoint (``model_path``);
* a raw ONNX Runtime session with the obvious per-image OpenCV/NumPy preprocessing loop;
* each reid-engine path: the default (``osnet_x0_25`` + .pth, runtime chosen automatically),
  torch, ONNX Runtime and OpenVINO; optionally the Intel OMZ models (``--intel``).

Paths run in interleaved rounds and the best round counts (the machine may be shared).
Every path's features of the 592 crops are scored (query camera 01 vs gallery camera 02,
cosine distance, Rank-1 / mAP %) and compared with ONNX Runtime's (max abs diff, min cosine).
Prints ONE JSON line on stdout; progress goes to stderr.

    python tools/bench_encode.py                 # full run
    python tools/bench_encode.py --quick         # one round, no repetition
"""
from __future__ import annotations

import argparse
import contextlib
import csv
import json
import logging
import os
import sys
import tempfile
import time
import warnings
from pathlib import Path
from typing import Callable

import cv2
import numpy as np

from reid_engine.assets import shared_path
from reid_engine.encoders import create_encoder
from reid_engine.encoders.convert import convert_onnx_weights

log = logging.getLogger("bench_encode")

MEAN = np.array([0.485, 0.456, 0.406], np.float32)
STD = np.array([0.229, 0.224, 0.225], np.float32)

Extract = Callable[[list[str]], np.ndarray]  # a batch of paths -> (B, D) features


def protocol(root: Path) -> tuple[list[str], np.ndarray, np.ndarray, np.ndarray]:
    with open(root / "protocol_cross_camera.csv", newline="") as f:
        rows = sorted(csv.DictReader(f), key=lambda r: (r["role"] != "query", r["file"]))
    files = [str(root / r["file"]) for r in rows]
    is_query = np.array([r["role"] == "query" for r in rows])
    return files, is_query, np.array([int(r["pid"]) for r in rows]), np.array([int(r["camid"]) for r in rows])


def rank1_map(features: np.ndarray, is_query: np.ndarray, pids: np.ndarray, cams: np.ndarray) -> tuple[float, float]:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        from torchreid.reid.metrics import evaluate_rank
    f = features / np.linalg.norm(features, axis=1, keepdims=True)
    dist = 1.0 - f[is_query] @ f[~is_query].T
    cmc, m_ap = evaluate_rank(dist, pids[is_query], pids[~is_query], cams[is_query], cams[~is_query],
                              max_rank=10, use_cython=False)
    return round(100 * float(cmc[0]), 1), round(100 * float(m_ap), 1)


# -- the paths -------------------------------------------------------------------------------------
def featureextractor_path(pth: Path) -> Extract:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        from torchreid.reid.utils import FeatureExtractor
    with contextlib.redirect_stdout(sys.stderr):  # it prints a greeting; stdout is for the JSON line
        extractor = FeatureExtractor(model_name="osnet_x0_25", model_path=str(pth), device="cpu", verbose=False)
    return lambda batch: extractor(batch).numpy()


def raw_onnxruntime_path(onnx_file: Path) -> Extract:
    import onnxruntime as ort

    session = ort.InferenceSession(str(onnx_file), providers=["CPUExecutionProvider"])
    name = session.get_inputs()[0].name

    def run(batch: list[str]) -> np.ndarray:
        arrays = []
        for path in batch:
            img = cv2.cvtColor(cv2.imread(path), cv2.COLOR_BGR2RGB)
            img = cv2.resize(img, (128, 256)).astype(np.float32) / 255.0
            arrays.append(((img - MEAN) / STD).transpose(2, 0, 1))
        return session.run(None, {name: np.stack(arrays)})[0]

    return run


class EnginePath:
    """A reid-engine encoder fed the whole list, batching and prefetching on its own."""

    def __init__(self, **kwargs) -> None:
        self.encoder = create_encoder(**kwargs)
        self.runtime = self.encoder.runtime


# -- timing -----------------------------------------------------------------------------------------
def time_batches(fn: Extract, files: list[str], batch_size: int) -> tuple[float, np.ndarray]:
    t0 = time.perf_counter()
    first = []
    for i in range(0, len(files), batch_size):
        out = fn(files[i : i + batch_size])
        if i < 592:
            first.append(np.asarray(out, np.float32))
    return time.perf_counter() - t0, np.concatenate(first)


def time_engine(path: EnginePath, files: list[str], batch_size: int) -> tuple[float, np.ndarray]:
    t0 = time.perf_counter()
    feats = path.encoder.encode(files, batch_size=batch_size, show_progress=False)
    return time.perf_counter() - t0, feats


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--repeat", type=int, default=4, help="times the 592 crops are repeated per round (default 4)")
    ap.add_argument("--rounds", type=int, default=3, help="interleaved rounds; the best counts (default 3)")
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--quick", action="store_true", help="--repeat 1 --rounds 1")
    ap.add_argument("--intel", action="store_true", help="also time and score the Intel retail-0277/0288 models")
    ap.add_argument("--skip", default="", help="comma-separated path names to leave out")
    ap.add_argument("-v", "--verbose", action="store_true")
    args = ap.parse_args()
    if args.quick:
        args.repeat, args.rounds = 1, 1
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING, stream=sys.stderr,
                        format="%(asctime)s %(name)s: %(message)s")
    log.setLevel(logging.INFO)
    root = shared_path("data", "pku_reid_dev")
    onnx_file = shared_path("weights", "osnet", "osnet_x0_25_msmt17.onnx")
    files, is_query, pids, cams = protocol(root)
    workload = files * args.repeat
    skip = {s.strip() for s in args.skip.split(",") if s.strip()}

    with tempfile.TemporaryDirectory() as tmp:
        pth = convert_onnx_weights(onnx_file, Path(tmp) / "osnet_x0_25_msmt17.pth")
        builders: dict[str, Callable[[], object]] = {
            "torchreid_featureextractor": lambda: featureextractor_path(pth),
            "raw_onnxruntime_session": lambda: raw_onnxruntime_path(onnx_file),
            "reid_engine_default": lambda: EnginePath(name="osnet_x0_25", weights=pth),
            "reid_engine_torch": lambda: EnginePath(name="osnet_x0_25", weights=pth, runtime="torch"),
            "reid_engine_onnxruntime": lambda: EnginePath(name="osnet_x0_25_msmt17.onnx", runtime="onnxruntime"),
            "reid_engine_openvino": lambda: EnginePath(name="osnet_x0_25_msmt17.onnx", runtime="openvino"),
        }
        if args.intel:
            for model in ("0277", "0288"):
                builders[f"reid_engine_intel_{model}"] = (
                    lambda m=model: EnginePath(name=f"intel.person-reidentification-retail-{m}"))
        paths: dict[str, object] = {}
        report: dict[str, dict] = {}
        for name, build in builders.items():
            if name in skip:
                continue
            t0 = time.perf_counter()
            paths[name] = build()
            report[name] = {"build_s": round(time.perf_counter() - t0, 2)}
            if isinstance(paths[name], EnginePath):
                report[name]["runtime"] = paths[name].runtime
            log.info("built %s in %.1f s", name, report[name]["build_s"])
        features: dict[str, np.ndarray] = {}
        for name, p in paths.items():  # warm-up (first-call allocations, lazy kernels)
            warm = files[: 2 * args.batch_size]
            if isinstance(p, EnginePath):
                time_engine(p, warm, args.batch_size)
            else:
                time_batches(p, warm, args.batch_size)
        for rnd in range(args.rounds):
            for name, p in paths.items():
                if isinstance(p, EnginePath):
                    seconds, feats = time_engine(p, workload, args.batch_size)
                else:
                    seconds, feats = time_batches(p, workload, args.batch_size)
                features[name] = feats[: len(files)]
                rate = len(workload) / seconds
                best = report[name].get("images_per_s", 0.0)
                report[name]["images_per_s"] = round(max(best, rate), 1)
                report[name].setdefault("rounds", []).append(round(rate, 1))
                log.info("round %d %s: %.0f images/s", rnd + 1, name, rate)

    reference = features.get("reid_engine_onnxruntime", features.get("raw_onnxruntime_session"))
    for name, feats in features.items():
        rank1, m_ap = rank1_map(feats, is_query, pids, cams)
        report[name].update(rank1=rank1, mAP=m_ap)
        if reference is not None and feats.shape == reference.shape and "intel" not in name:
            cos = (feats * reference).sum(1) / np.linalg.norm(feats, axis=1) / np.linalg.norm(reference, axis=1)
            report[name].update(max_abs_diff_vs_ort=float(f"{np.abs(feats - reference).max():.3g}"),
                                min_cosine_vs_ort=round(float(cos.min()), 7))
    speed = {}
    default = report.get("reid_engine_default")
    for base in ("raw_onnxruntime_session", "torchreid_featureextractor"):
        if default and base in report:
            speed[f"default_vs_{base}_best_rounds"] = round(default["images_per_s"] / report[base]["images_per_s"], 2)
            same_round = [a / b for a, b in zip(default["rounds"], report[base]["rounds"])]
            speed[f"default_vs_{base}_median_same_round"] = round(float(np.median(same_round)), 2)
    out = {
        "benchmark": "encode osnet_x0_25_msmt17 on pku_reid_dev",
        "images_per_round": len(workload),
        "rounds": args.rounds,
        "batch_size": args.batch_size,
        "cpus": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count(),
        "loadavg_at_end": [round(x, 2) for x in os.getloadavg()],
        "paths": report,
        "speedup": speed,
    }
    print(json.dumps(out))


if __name__ == "__main__":
    main()
