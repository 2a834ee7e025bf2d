"""Benchmark a vector backend the way the store drives it; prints ONE JSON line.

Synthetic clustered data with identity labels (groups of identities of crops, 8 cameras), built in
chunks through prepare/load/compact/cleanup, then: open time, add-4096 time on the full index,
single-query latency with and without a camera filter (~1/8 of rows), recall@10 against exact
search, and NumPy brute-force top-k latency in the same run.

    python tools/bench_backend.py --n 1000000
    python tools/bench_backend.py --threshold      # exact vs IVF latency by gallery size
    python tools/bench_backend.py --knn            # batch exact search: the backend's path vs faiss.knn and NumPy
"""
from __future__ import annotations

import argparse
import json
import resource
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from reid_engine.index.backend import Changes, SearchFilter, SearchParams, get_backend
from reid_engine.index.store import folder_bytes

CAMERAS = 8


class Synthetic:
    """Rows generated chunk by chunk: group centre -> identity centre -> noisy crop, L2-normalised."""

    def __init__(self, n: int, dim: int, seed: int = 0, per_identity: int = 32, per_group: int = 64):
        self.n, self.dim, self.seed = n, dim, seed
        rng = np.random.default_rng(seed)
        n_id = max(1, n // per_identity)
        n_grp = max(1, n_id // per_group)
        groups = self._unit(rng.standard_normal((n_grp, dim), dtype=np.float32))
        self.centres = np.empty((n_id, dim), np.float32)
        for i0 in range(0, n_id, 65536):
            i1 = min(n_id, i0 + 65536)
            u = rng.standard_normal((i1 - i0, dim), dtype=np.float32) / np.sqrt(dim)
            self.centres[i0:i1] = self._unit(groups[rng.integers(0, n_grp, i1 - i0)] + 1.0 * u)

    @staticmethod
    def _unit(x: np.ndarray) -> np.ndarray:
        return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)

    def crops(self, labels: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        e = rng.standard_normal((len(labels), self.dim), dtype=np.float32) * (0.8 / np.sqrt(self.dim))
        return self._unit(self.centres[labels] + e)

    def chunk(self, i0: int, i1: int) -> tuple[np.ndarray, np.ndarray, dict]:
        rng = np.random.default_rng([self.seed, i0])
        labels = rng.integers(0, len(self.centres), i1 - i0)
        cams = rng.integers(0, CAMERAS, i1 - i0)
        fields = {
            "camera": np.array([f"cam{c}" for c in cams], dtype=object),
            "source": np.array(["synthetic"] * (i1 - i0), dtype=object),
            "track": np.array([f"t{lab}" for lab in labels], dtype=object),
            "timestamp": rng.uniform(0, 86400, i1 - i0),
        }
        return np.arange(i0, i1, dtype=np.int64) + 1, self.crops(labels, rng), fields

    def queries(self, q: int) -> np.ndarray:
        rng = np.random.default_rng([self.seed, 10**9])
        return self.crops(rng.integers(0, len(self.centres), q), rng)


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


class Writer:
    """The store's commit protocol, minus SQL."""

    def __init__(self, backend):
        self.b = backend
        self.gen = 0
        self.state = backend.empty_state()
        backend.load(self.state)

    def commit(self, changes: Changes) -> None:
        self.gen += 1
        self.state = self.b.prepare(self.gen, changes)
        self.b.load(self.state)
        st = self.b.compact(self.gen + 1)
        if st is not None:
            self.gen += 1
            self.state = st
            self.b.load(st)
            self.b.cleanup(self.state, grace_seconds=0)


def timed(fn, reps: int) -> list[float]:
    out = []
    for i in range(reps):
        t = time.perf_counter()
        fn(i)
        out.append(time.perf_counter() - t)
    return out


def recall(got: np.ndarray, ref: np.ndarray) -> float:
    hits = sum(len(set(a[a >= 0]) & set(r[r >= 0])) for a, r in zip(got, ref))
    return hits / max(1, int((ref >= 0).sum()))


def numpy_topk_ms(x: np.ndarray, q: np.ndarray, k: int) -> float:
    """p50 of brute-force top-k with NumPy over the same vectors held as one matrix (single queries)."""

    def one(i: int) -> None:
        s = x @ q[i]
        np.sort(s[np.argpartition(-s, k)[:k]] if len(s) > k else s)

    return float(np.median(timed(one, len(q))) * 1e3)


def run(args) -> dict:
    folder = Path(args.folder) if args.folder else Path(tempfile.mkdtemp(prefix="bench_backend_"))
    folder.mkdir(parents=True, exist_ok=True)
    cls = get_backend(args.backend)
    opts = cls.default_options(args.dim)
    opts.update(json.loads(args.options))
    data = Synthetic(args.n + 16 * 4096, args.dim, args.seed)
    w = Writer(cls(folder, args.dim, opts))
    t0 = time.perf_counter()
    for i0 in range(0, args.n, args.chunk):
        ids, x, f = data.chunk(i0, min(args.n, i0 + args.chunk))
        w.commit(Changes(add_ids=ids, add_vectors=x, add_fields=f))
    build_s = time.perf_counter() - t0
    rss_build = peak_rss_mb()
    disk = folder_bytes(folder)

    t = time.perf_counter()
    reader = cls(folder, args.dim, opts)
    reader.load(w.state)
    open_s = time.perf_counter() - t
    reader.close()

    adds = []
    for r in range(args.adds):
        i0 = args.n + r * 4096
        ids, x, f = data.chunk(i0, i0 + 4096)
        t = time.perf_counter()
        w.commit(Changes(add_ids=ids, add_vectors=x, add_fields=f))
        adds.append(time.perf_counter() - t)

    b = w.b
    q = data.queries(args.queries)
    cam = SearchFilter(cameras=("cam3",))
    k = args.k
    b.search(q[:5], k)  # warm the quantizer and page cache a little
    plain = timed(lambda i: b.search(q[i:i + 1], k), len(q))
    filt = timed(lambda i: b.search(q[i:i + 1], k, where=cam), len(q))
    got = np.concatenate([b.search(q[i:i + 1], k)[1] for i in range(len(q))])
    got_f = np.concatenate([b.search(q[i:i + 1], k, where=cam)[1] for i in range(len(q))])
    t = time.perf_counter()
    exact = b.search(q, k, params=SearchParams(exact=True))[1]
    exact_batch_s = time.perf_counter() - t
    exact_f = b.search(q, k, where=cam, params=SearchParams(exact=True))[1]
    rss_index = peak_rss_mb()  # before the NumPy baseline holds the vectors a second time
    # the committed vectors again, generated in the same blocks as they were added
    blocks = [(i0, min(args.n, i0 + args.chunk)) for i0 in range(0, args.n, args.chunk)]
    blocks += [(args.n + r * 4096, args.n + (r + 1) * 4096) for r in range(args.adds)]
    every = np.concatenate([data.chunk(i0, i1)[1] for i0, i1 in blocks])
    some = np.linspace(1, len(every), 50).astype(np.int64)  # ids are rows + 1
    if not np.allclose(b.reconstruct(some), every[some - 1], atol=1e-5):
        raise SystemExit("the regenerated vectors are not the committed ones")
    np_ms = numpy_topk_ms(every, q[: args.numpy_queries], k)
    del every
    d = b.describe()
    out = {
        "backend": args.backend, "n": args.n, "dim": args.dim, "chunk": args.chunk,
        "index_type": d["index_type"], "nlist": d["nlist"], "nprobe": d["nprobe"], "segments": len(d["segments"]),
        "build_s": round(build_s, 1), "disk_mb": round(disk / 2**20, 1),
        "vector_mb": round(args.n * args.dim * 4 / 2**20, 1), "open_ms": round(open_s * 1e3, 1),
        "add4096_s_mean": round(float(np.mean(adds)), 2) if adds else None,
        "add4096_s_max": round(float(np.max(adds)), 2) if adds else None,
        "add4096_s_p50": round(float(np.median(adds)), 2) if adds else None,
        "search_p50_ms": round(float(np.percentile(plain, 50)) * 1e3, 2),
        "search_p99_ms": round(float(np.percentile(plain, 99)) * 1e3, 2),
        "camera_filter_p50_ms": round(float(np.percentile(filt, 50)) * 1e3, 2),
        "camera_filter_p99_ms": round(float(np.percentile(filt, 99)) * 1e3, 2),
        "recall10": round(recall(got, exact), 4), "recall10_camera_filter": round(recall(got_f, exact_f), 4),
        "exact_batch_ms_per_query": round(exact_batch_s / len(q) * 1e3, 2),
        "numpy_bruteforce_p50_ms": round(np_ms, 2),
        "peak_rss_build_mb": round(rss_build, 1), "peak_rss_mb": round(rss_index, 1),
        "peak_rss_with_numpy_baseline_mb": round(peak_rss_mb(), 1),
    }
    b.close()
    (folder / "bench_state.json").write_text(json.dumps(w.state))
    if not args.folder and not args.keep:
        shutil.rmtree(folder, ignore_errors=True)
    return out


def threshold(args) -> dict:
    """Single-query p50 of exact vs IVF (default nprobe) search, and IVF recall, by gallery size."""
    cls = get_backend(args.backend)
    rows = []
    for n in (10_000, 20_000, 40_000, 80_000, 160_000):
        folder = Path(tempfile.mkdtemp(prefix="bench_thr_"))
        data = Synthetic(n, args.dim, args.seed)
        opts = dict(cls.default_options(args.dim), exact_threshold=n, **json.loads(args.options))
        w = Writer(cls(folder, args.dim, opts))
        for i0 in range(0, n, args.chunk):
            ids, x, f = data.chunk(i0, min(n, i0 + args.chunk))
            w.commit(Changes(add_ids=ids, add_vectors=x, add_fields=f))
        q = data.queries(args.queries)
        b = w.b
        ex = timed(lambda i, b=b, q=q: b.search(q[i:i + 1], args.k, params=SearchParams(exact=True)), len(q))
        ap = timed(lambda i, b=b, q=q: b.search(q[i:i + 1], args.k), len(q))
        ref = b.search(q, args.k, params=SearchParams(exact=True))[1]
        got = np.concatenate([b.search(q[i:i + 1], args.k)[1] for i in range(len(q))])
        d = b.describe()
        rows.append({"n": n, "exact_p50_ms": round(float(np.median(ex)) * 1e3, 2),
                     "ivf_p50_ms": round(float(np.median(ap)) * 1e3, 2), "recall10": round(recall(got, ref), 4),
                     "nlist": d["nlist"], "nprobe": d["nprobe"]})
        b.close()
        shutil.rmtree(folder, ignore_errors=True)
        print(json.dumps(rows[-1]), file=sys.stderr)
    return {"threshold": rows}


def knn(args) -> dict:
    """Batch exact top-k (a commit's new rows searching the flat segments for their neighbours): the backend's
    ``knn_inner_product`` against ``faiss.knn`` (the previous path) and NumPy's matrix product + argpartition,
    with the share of result ids the three agree on."""
    import faiss

    from reid_engine.index.faiss_backend import knn_inner_product

    data = Synthetic(args.knn_rows + args.knn_queries, args.dim, args.seed)
    _, x, _ = data.chunk(0, args.knn_rows)
    _, q, _ = data.chunk(args.knn_rows, args.knn_rows + args.knn_queries)
    rows = []
    for k in (10, 40):
        def engine(k: int = k) -> np.ndarray:
            return knn_inner_product(q, x, k)[1]

        def faiss_knn(k: int = k) -> np.ndarray:
            return faiss.knn(q, x, k, metric=faiss.METRIC_INNER_PRODUCT)[1]

        def numpy_knn(k: int = k) -> np.ndarray:
            out = []
            for i0 in range(0, len(q), 1024):
                s = q[i0:i0 + 1024] @ x.T
                top = np.argpartition(-s, k - 1, axis=1)[:, :k]
                order = np.argsort(-np.take_along_axis(s, top, 1), axis=1)
                out.append(np.take_along_axis(top, order, 1))
            return np.concatenate(out)

        got = {}
        row: dict = {"queries": len(q), "rows": len(x), "k": k}
        for name, fn in (("engine", engine), ("faiss_knn", faiss_knn), ("numpy", numpy_knn)):
            times = []
            for _ in range(args.knn_reps):
                t = time.perf_counter()
                got[name] = fn()
                times.append(time.perf_counter() - t)
            row[f"{name}_s"] = round(float(np.median(times)), 3)
        row["same_ids_as_faiss_knn"] = round(float((got["engine"] == got["faiss_knn"]).mean()), 5)
        row["same_ids_as_numpy"] = round(float((got["engine"] == got["numpy"]).mean()), 5)
        rows.append(row)
        print(json.dumps(row), file=sys.stderr)
    return {"knn": rows}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--backend", default="faiss")
    ap.add_argument("--n", type=int, default=100_000)
    ap.add_argument("--dim", type=int, default=512)
    ap.add_argument("--chunk", type=int, default=65536)
    ap.add_argument("--adds", type=int, default=16, help="4096-row commits timed on the full index")
    ap.add_argument("--queries", type=int, default=200)
    ap.add_argument("--numpy-queries", type=int, default=20)
    ap.add_argument("--k", type=int, default=10)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--options", default="{}", help="JSON backend options (e.g. '{\"nprobe\": 32}')")
    ap.add_argument("--folder", default=None, help="build here and keep it (default: a temporary folder)")
    ap.add_argument("--keep", action="store_true")
    ap.add_argument("--threshold", action="store_true", help="measure exact vs IVF latency by size instead")
    ap.add_argument("--knn", action="store_true", help="measure batch exact search (--knn-queries x --knn-rows)")
    ap.add_argument("--knn-queries", type=int, default=4096)
    ap.add_argument("--knn-rows", type=int, default=4096)
    ap.add_argument("--knn-reps", type=int, default=5)
    args = ap.parse_args()
    print(json.dumps(threshold(args) if args.threshold else knn(args) if args.knn else run(args)))


if __name__ == "__main__":
    main()
