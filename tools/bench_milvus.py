"""Milvus Lite as the vector backend at scale: build time, query latency, recall@10 against exact search.

    python tools/bench_milvus.py --n 100000            # one JSON line

The gallery is synthetic but shaped like ReID features (many identities, a few
views each, unit length): ``n / 8`` identity centres in ``dim`` dimensions and
each crop a noisy copy of one centre. Vectors go in through the backend
interface in commits of ``commit`` rows, as the store adds them; queries are
fresh noisy views, one per call (what an interactive user does).
"""
from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path
from typing import Any, Optional

import numpy as np

from reid_engine.index.backend import Changes, SearchParams, get_backend


def synthetic_gallery(n: int, dim: int, seed: int = 0, noise: float = 0.6) -> tuple[np.ndarray, np.ndarray, np.random.Generator]:
    """(vectors (n, dim) float32 unit rows, identity centres) of a ReID-like gallery."""
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((max(1, n // 8), dim)).astype(np.float32)
    centres /= np.linalg.norm(centres, axis=1, keepdims=True)
    x = np.empty((n, dim), np.float32)
    for s in range(0, n, 20_000):
        e = min(n, s + 20_000)
        lab = rng.integers(0, len(centres), e - s)
        blk = centres[lab] + noise * rng.standard_normal((e - s, dim)).astype(np.float32) / np.sqrt(dim)
        x[s:e] = blk / np.linalg.norm(blk, axis=1, keepdims=True)
    return x, centres, rng


def exact_top_k(x: np.ndarray, q: np.ndarray, k: int) -> np.ndarray:
    """Ids (row numbers) of the exact top-k by inner product, in blocks of the gallery."""
    best_s = np.full((len(q), 0), -np.inf, np.float32)
    best_i = np.zeros((len(q), 0), np.int64)
    for s in range(0, len(x), 50_000):
        sims = q @ x[s : s + 50_000].T
        top = np.argpartition(-sims, min(k, sims.shape[1] - 1), axis=1)[:, :k]
        cand_s = np.concatenate([best_s, np.take_along_axis(sims, top, 1)], axis=1)
        cand_i = np.concatenate([best_i, top + s], axis=1)
        order = np.argsort(-cand_s, axis=1)[:, :k]
        best_s, best_i = np.take_along_axis(cand_s, order, 1), np.take_along_axis(cand_i, order, 1)
    return best_i


def bench_milvus(
    n: int = 100_000,
    dim: int = 512,
    queries: int = 200,
    k: int = 10,
    commit: int = 4096,
    seed: int = 0,
    uri: Optional[str] = None,
    options: Optional[dict[str, Any]] = None,
) -> dict[str, Any]:
    """Build an ``n``-vector Milvus index through the backend interface and measure it."""
    x, centres, rng = synthetic_gallery(n, dim, seed)
    lab = rng.integers(0, len(centres), queries)
    q = centres[lab] + 0.6 * rng.standard_normal((queries, dim)).astype(np.float32) / np.sqrt(dim)
    q = (q / np.linalg.norm(q, axis=1, keepdims=True)).astype(np.float32)
    cams = np.array([f"c{i % 100:02d}" for i in range(n)], dtype=object)
    with tempfile.TemporaryDirectory(prefix="bench-milvus-") as tmp:
        opts = dict(options or {})
        if uri:
            opts["uri"] = uri
        b = get_backend("milvus")(Path(tmp), dim, opts)
        t0 = time.perf_counter()
        b.load(b.empty_state())
        start_s = time.perf_counter() - t0
        gen = 0
        t0 = time.perf_counter()
        for s in range(0, n, commit):
            e = min(n, s + commit)
            gen += 1
            b.load(b.prepare(gen, Changes(np.arange(s, e), x[s:e], {"camera": cams[s:e],
                                                                    "timestamp": np.arange(s, e, dtype=np.float64)})))
        build_s = time.perf_counter() - t0
        lat = []
        got = np.zeros((queries, k), np.int64)
        b.search(q[:1], k)  # first call loads segments
        for i in range(queries):
            t = time.perf_counter()
            got[i] = b.search(q[i : i + 1], k)[1][0]
            lat.append(time.perf_counter() - t)
        t = time.perf_counter()
        got_exact = b.search(q[:20], k, params=SearchParams(exact=True))[1]
        exact_s = (time.perf_counter() - t) / 20
        truth = exact_top_k(x, q, k)
        recall = float(np.mean([len(set(a) & set(r)) / k for a, r in zip(got, truth)]))
        recall_exact = float(np.mean([len(set(a) & set(r)) / k for a, r in zip(got_exact, truth[:20])]))
        desc = b.describe()
        b.close()
    lat_ms = np.array(lat) * 1000
    return {
        "bench": "milvus", "backend": f"milvus-lite ({desc['index_type']})", "n": n, "dim": dim, "k": k,
        "index_params": desc["index_params"], "search_params": desc["search_params"],
        "startup_s": round(start_s, 2), "build_s": round(build_s, 2), "add_per_s": round(n / build_s),
        "query_p50_ms": round(float(np.percentile(lat_ms, 50)), 2),
        "query_p99_ms": round(float(np.percentile(lat_ms, 99)), 2),
        f"recall@{k}": round(recall, 4), "exact_query_ms": round(exact_s * 1000, 2),
        f"exact_recall@{k}": round(recall_exact, 4), "bytes_on_disk": desc["bytes_on_disk"],
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=100_000)
    ap.add_argument("--dim", type=int, default=512)
    ap.add_argument("--queries", type=int, default=200)
    ap.add_argument("--uri", default=None, help="Milvus server (default: a Milvus Lite file in a temporary folder)")
    ap.add_argument("--index", default="auto", help="auto, FLAT, IVF_FLAT or HNSW")
    a = ap.parse_args()
    print(json.dumps(bench_milvus(a.n, a.dim, a.queries, uri=a.uri, options={"index": a.index})))


if __name__ == "__main__":
    main()
