"""Benchmark of k-reciprocal re-ranking: sparse (reid_engine) vs dense (torchreid).

Prints ONE JSON line:
  a) Q x G synthetic clustered 512-d features (default 3,368 x 19,732, 1,500
     identities, 6 cameras): wall time, peak memory and mAP of
     ``reid_engine.rerank.k_reciprocal_rerank`` and of torchreid's
     ``re_ranking``, each measured in its own subprocess;
  b) 1,000 queries x 1,000,000 gallery rows, candidate-restricted mode:
     completion, time per query of the first-stage search and of the re-ranking.

    python tools/bench_rerank.py            # full sizes (needs ~16 GB RAM for torchreid)
    python tools/bench_rerank.py --quick    # small sizes, seconds
    python tools/bench_rerank.py --part a --no-torchreid

Peak memory is the growth of the process's maximum resident set size
(VmHWM) over its resident size once the inputs are loaded.
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import resource
import subprocess
import sys
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

log = logging.getLogger("bench_rerank")
DIM = 512
K1, K2, LAMBDA = 20, 6, 0.3


def clustered_split(n_query: int, n_gallery: int, n_ids: int, n_cams: int, seed: int,
                    noise: float = 2.2, cam_shift: float = 0.6):
    """Unit features = identity centre + camera offset + noise; labels and cameras."""
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((n_ids, DIM), dtype=np.float32)
    cams = rng.standard_normal((n_cams, DIM), dtype=np.float32) * cam_shift

    def draw(n: int, pid: np.ndarray):
        cam = rng.integers(0, n_cams, n)
        x = centres[pid] + cams[cam] + noise * rng.standard_normal((n, DIM), dtype=np.float32)
        x /= np.linalg.norm(x, axis=1, keepdims=True)
        return x, pid, cam

    g_pid = np.concatenate([np.arange(n_ids), rng.integers(0, n_ids, n_gallery - n_ids)])
    q_pid = rng.integers(0, n_ids, n_query)
    qf, q_pid, q_cam = draw(n_query, q_pid)
    gf, g_pid, g_cam = draw(n_gallery, g_pid)
    return qf, gf, q_pid, g_pid, q_cam, g_cam


def rss_now() -> int:
    with open("/proc/self/statm") as fh:
        return int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def peak_rss() -> int:
    """This process's resident high-water mark (VmHWM).

    Unlike ru_maxrss, VmHWM belongs to the process's own address space, so a
    worker does not inherit the peak of the parent that spawned it.
    """
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def evaluate(distmat: np.ndarray, d: dict[str, np.ndarray]) -> tuple[float, float]:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        from torchreid.reid.metrics import evaluate_rank
    cmc, m_ap = evaluate_rank(distmat, d["q_pid"], d["g_pid"], d["q_cam"], d["g_cam"],
                              max_rank=10, use_metric_cuhk03=False)
    return 100.0 * float(cmc[0]), 100.0 * float(m_ap)


def worker(method: str, data_dir: Path, top_out: Path) -> dict[str, float]:
    """Run one method on the saved inputs; called in a fresh subprocess."""
    d = {k: np.load(data_dir / f"{k}.npy") for k in ("qf", "gf", "q_pid", "g_pid", "q_cam", "g_cam")}
    qf, gf = d["qf"], d["gf"]
    if method == "torchreid":
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            from torchreid.reid.utils.rerank import re_ranking
        base = rss_now()
        t0 = time.perf_counter()
        # Euclidean distances of unit vectors, as a torchreid user would pass them.
        qg = np.sqrt(np.maximum(2 - 2 * qf @ gf.T, 0))
        qq = np.sqrt(np.maximum(2 - 2 * qf @ qf.T, 0))
        gg = np.sqrt(np.maximum(2 - 2 * gf @ gf.T, 0))
        dist = re_ranking(qg, qq, gg, K1, K2, LAMBDA)
        seconds = time.perf_counter() - t0
        peak = peak_rss() - base
        del qg, qq, gg
        top = np.argsort(dist, axis=1)[:, :10]
    else:
        from reid_engine.rerank import k_reciprocal_rerank
        base = rss_now()
        t0 = time.perf_counter()
        _, pos = k_reciprocal_rerank(qf, gf, 100, k1=K1, k2=K2, lambda_value=LAMBDA)
        seconds = time.perf_counter() - t0
        peak = peak_rss() - base
        top = pos[:, :10]
        # Full rankings for the mAP only (not timed, not in the peak above).
        _, full = k_reciprocal_rerank(qf, gf, len(gf), k1=K1, k2=K2, lambda_value=LAMBDA)
        dist = np.empty(full.shape, np.float32)
        np.put_along_axis(dist, full, np.arange(full.shape[1], dtype=np.float32)[None], axis=1)
    np.save(top_out, top)
    r1, m_ap = evaluate(dist, d)
    return {"seconds": round(seconds, 2), "peak_mb": round(peak / 2**20, 1),
            "rank1": round(r1, 2), "mAP": round(m_ap, 2)}


def part_a(n_query: int, n_gallery: int, n_ids: int, with_torchreid: bool) -> dict[str, object]:
    out: dict[str, object] = {"queries": n_query, "gallery": n_gallery, "identities": n_ids,
                              "dim": DIM, "k1": K1, "k2": K2, "lambda": LAMBDA}
    with tempfile.TemporaryDirectory(prefix="bench_rerank_") as tmp:
        tmpd = Path(tmp)
        qf, gf, q_pid, g_pid, q_cam, g_cam = clustered_split(n_query, n_gallery, n_ids, 6, seed=0)
        for name, arr in dict(qf=qf, gf=gf, q_pid=q_pid, g_pid=g_pid, q_cam=q_cam,
                              g_cam=g_cam).items():
            np.save(tmpd / f"{name}.npy", arr)
        d = dict(q_pid=q_pid, g_pid=g_pid, q_cam=q_cam, g_cam=g_cam)
        out["no_rerank"] = dict(zip(("rank1", "mAP"), (round(v, 2) for v in
                                                       evaluate(1 - qf @ gf.T, d))))
        del qf, gf
        methods = ["sparse"] + (["torchreid"] if with_torchreid else [])
        for m in methods:
            log.info("part a: running %s", m)
            res = subprocess.run([sys.executable, __file__, "--worker", m, "--data", tmp],
                                 check=True, capture_output=True, text=True)
            out[m] = json.loads(res.stdout.strip().splitlines()[-1])
        if with_torchreid:
            a = np.load(tmpd / "top_sparse.npy")
            b = np.load(tmpd / "top_torchreid.npy")
            out["top10_same_set_fraction"] = round(float(
                (np.sort(a, 1) == np.sort(b, 1)).all(axis=1).mean()), 4)
            s, t = out["sparse"], out["torchreid"]
            out["speedup"] = round(t["seconds"] / s["seconds"], 1)
            out["memory_ratio"] = round(s["peak_mb"] / max(t["peak_mb"], 1e-9), 4)
            out["mAP_diff"] = round(s["mAP"] - t["mAP"], 3)
    return out


def part_b(n_query: int, n_gallery: int, candidates: int, chunk: int = 65536) -> dict[str, object]:
    from reid_engine.rerank import k_reciprocal_rerank, knn_search

    rng = np.random.default_rng(1)
    n_ids = max(n_gallery // 20, 1)
    centres = rng.standard_normal((n_ids, DIM), dtype=np.float32)
    gf = np.empty((n_gallery, DIM), np.float32)  # filled in chunks: no float64 temporaries
    g_pid = rng.integers(0, n_ids, n_gallery)
    for c0 in range(0, n_gallery, chunk):
        blk = centres[g_pid[c0:c0 + chunk]] + 1.6 * rng.standard_normal(
            (len(g_pid[c0:c0 + chunk]), DIM), dtype=np.float32)
        blk /= np.linalg.norm(blk, axis=1, keepdims=True)
        gf[c0:c0 + chunk] = blk
    q_pid = g_pid[rng.choice(n_gallery, n_query, replace=False)]
    qf = centres[q_pid] + 1.6 * rng.standard_normal((n_query, DIM), dtype=np.float32)
    qf /= np.linalg.norm(qf, axis=1, keepdims=True)

    t0 = time.perf_counter()
    _, first = knn_search(qf, gf, candidates)
    t_search = time.perf_counter() - t0
    t0 = time.perf_counter()
    _, pos = k_reciprocal_rerank(qf, gf, 10, k1=K1, k2=K2, lambda_value=LAMBDA,
                                 candidates=candidates)
    t_total = time.perf_counter() - t0
    t_rerank = max(t_total - t_search, 0.0)  # the call repeats the first-stage search
    return {
        "queries": n_query, "gallery": n_gallery, "candidates": candidates, "completed": True,
        "search_ms_per_query": round(1000 * t_search / n_query, 2),
        "rerank_ms_per_query": round(1000 * t_rerank / n_query, 2),
        "total_ms_per_query": round(1000 * t_total / n_query, 2),
        "rank1_plain": round(100 * float((g_pid[first[:, 0]] == q_pid).mean()), 2),
        "rank1_reranked": round(100 * float((g_pid[pos[:, 0]] == q_pid).mean()), 2),
        "peak_rss_mb": round(peak_rss() / 2**20, 1),
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="small sizes (a: 600 x 3,000; b: 200 x 50,000)")
    ap.add_argument("--part", choices=("a", "b", "all"), default="all")
    ap.add_argument("--no-torchreid", action="store_true", help="skip the dense reference in part a")
    ap.add_argument("--queries", type=int, default=3368)
    ap.add_argument("--gallery", type=int, default=19732)
    ap.add_argument("--identities", type=int, default=1500)
    ap.add_argument("--big-queries", type=int, default=1000)
    ap.add_argument("--big-gallery", type=int, default=1_000_000)
    ap.add_argument("--candidates", type=int, default=100)
    ap.add_argument("--worker", choices=("sparse", "torchreid"), help=argparse.SUPPRESS)
    ap.add_argument("--data", type=Path, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s", stream=sys.stderr)
    if args.worker:
        res = worker(args.worker, args.data, args.data / f"top_{args.worker}.npy")
        print(json.dumps(res))
        return 0
    if args.quick:
        args.queries, args.gallery, args.identities = 600, 3000, 250
        args.big_queries, args.big_gallery = 200, 50_000
    out: dict[str, object] = {}
    if args.part in ("a", "all"):
        out["a"] = part_a(args.queries, args.gallery, args.identities, not args.no_torchreid)
    if args.part in ("b", "all"):
        log.info("part b: %d x %d", args.big_queries, args.big_gallery)
        out["b"] = part_b(args.big_queries, args.big_gallery, args.candidates)
    print(json.dumps(out))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
