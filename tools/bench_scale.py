"""Scale benchmark: build, open and query galleries of 100k and 1M crops end to end; prints one JSON line.

The gallery is synthetic rows that look like real embeddings plus the real
pku_reid_dev camera-02 crops: every synthetic identity's centre is a random mix
of two real OSNet embeddings plus noise, so synthetic rows sit in the same cone
as real features and compete with the true matches. Queries are the real
camera-01 images (encoded by the engine, one image per call: encode + search +
default re-ranking + SQL rows) and held-out synthetic crops (for mAP on the
labelled synthetic rows).

Each phase runs in its own process so that peak RSS (VmHWM) is that phase's:

    python tools/bench_scale.py --sizes 100000,1000000
    python tools/bench_scale.py --sizes 100000 --milvus --ray            # + Milvus Lite at 100k, Ray throughput
    python tools/bench_scale.py --sizes 100000 --old-checkout /tmp/old   # also the previous engine, same data
    python tools/bench_scale.py --sizes 1000000 --graph-rows 262144      # graphs as single-block adds make them
    python tools/bench_scale.py --sizes 1000000 --search '{"pool": 100}' # timed queries and mAP with these params

Beside the engine it measures, in the same run, brute-force NumPy top-k over
the same vectors, and (with --old-checkout, a checkout of an earlier commit) the
previous exact path.
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
DIM = 512
CROPS_PER_ID = 8
CAMERAS = [f"{c:02d}" for c in range(1, 9)]
CHUNK = 65536
SYN_QUERIES = 200

log = logging.getLogger("bench_scale")


def _reset_peak_rss() -> bool:
    """Start a new VmHWM period (Linux: clear_refs 5); False where it cannot."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return True
    except OSError:
        return False


def _peak_rss_mb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024.0
    return float("nan")


def _shared(rel: str) -> Path:
    if str(ROOT) not in sys.path:  # last: a phase run with PYTHONPATH (an old checkout) keeps importing that code
        sys.path.append(str(ROOT))
    from reid_engine.assets import shared_path

    return shared_path(rel)


def _pku_rows() -> list[dict[str, str]]:
    import csv

    root = _shared("data/pku_reid_dev")
    with open(root / "protocol_cross_camera.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    for r in rows:
        r["path"] = str(root / r["file"])
    return rows


def _real_features(work: Path, weights: Path) -> dict[str, np.ndarray]:
    """OSNet embeddings of the pku crops (cached), through the engine's own encoder."""
    cache = work / "pku_features.npz"
    if cache.exists():
        return dict(np.load(cache, allow_pickle=True))
    from reid_engine import create_encoder

    rows = _pku_rows()
    enc = create_encoder(None, weights)
    f = enc.encode([r["path"] for r in rows], batch_size=64)
    f /= np.linalg.norm(f, axis=1, keepdims=True)
    data = {
        "feats": f.astype(np.float32), "pid": np.array([r["pid"] for r in rows]),
        "role": np.array([r["role"] for r in rows]), "path": np.array([r["path"] for r in rows]),
    }
    np.savez(cache, **data)
    return data


#: identity spread and crop noise, as multiples of the real embeddings' own deviations (see _noise): chosen so
#: that plain cosine on a 20k gallery scores Rank-1 ~0.9 and mAP ~0.6, like real cross-camera sets
CENTRE_SPREAD = 1.0
CROP_NOISE = 1.15


def _noise(real: np.ndarray, g: np.ndarray) -> np.ndarray:
    """Noise shaped like real embeddings: random combinations of the real features' deviations from their mean."""
    dev = real - real.mean(axis=0)
    return (g / np.sqrt(len(real))).astype(np.float32) @ dev


def _centres(real: np.ndarray, idents: np.ndarray, seed: int) -> np.ndarray:
    """Each identity's centre: a random mix of two real embeddings plus shaped noise (deterministic per identity)."""
    a = np.empty(len(idents), np.int64)
    b = np.empty(len(idents), np.int64)
    w = np.empty((len(idents), 1), np.float32)
    g = np.empty((len(idents), len(real)), np.float32)
    for j, ident in enumerate(idents):
        r = np.random.default_rng((seed, int(ident)))
        a[j], b[j] = r.integers(0, len(real), 2)
        w[j] = r.uniform(0.2, 0.8)
        g[j] = r.standard_normal(len(real))
    c = w * real[a] + (1 - w) * real[b] + CENTRE_SPREAD * _noise(real, g)
    return c / np.linalg.norm(c, axis=1, keepdims=True)


def synthetic_chunk(real: np.ndarray, start: int, n: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Rows ``start .. start+n`` of the synthetic gallery: (vectors, identity labels); deterministic per row."""
    ids = np.arange(start, start + n) // CROPS_PER_ID
    uniq = np.unique(ids)
    centres = _centres(real, uniq, seed)
    rng = np.random.default_rng((seed, start, n))
    x = centres[np.searchsorted(uniq, ids)] + CROP_NOISE * _noise(real, rng.standard_normal((n, len(real))))
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    return x.astype(np.float32), ids.astype(np.int64)


def synthetic_queries(real: np.ndarray, n_gallery: int, seed: int = 1) -> tuple[np.ndarray, np.ndarray]:
    """Fresh crops (not in the gallery) of synthetic identities that have crops in the gallery."""
    n_ids = (n_gallery - 4096 - 296) // CROPS_PER_ID
    rng = np.random.default_rng(seed)
    idents = rng.choice(n_ids, SYN_QUERIES, replace=False)
    q = _centres(real, idents, 0) + CROP_NOISE * _noise(real, rng.standard_normal((SYN_QUERIES, len(real))))
    q /= np.linalg.norm(q, axis=1, keepdims=True)
    return q.astype(np.float32), idents.astype(np.int64)


# -- phases (each in its own process) ------------------------------------------------------------
def _folder(args: argparse.Namespace) -> Path:
    return Path(args.work) / f"index_{args.n}{'' if args.backend == 'faiss' else '_' + args.backend}"


def phase_build(args: argparse.Namespace) -> dict[str, Any]:
    from reid_engine import CropItem, Engine

    work = Path(args.work)
    real = _real_features(work, Path(args.weights))
    gal = real["role"] == "gallery"
    folder = _folder(args)
    shutil.rmtree(folder, ignore_errors=True)
    build_s = 0.0
    t0 = time.perf_counter()
    options = {"uri": str(folder.resolve()) + ".milvus.db"} if args.backend == "milvus" else None
    if options:
        Path(options["uri"]).unlink(missing_ok=True)
    if args.graph_rows and args.backend == "faiss":  # the layout of a gallery grown by single-block adds
        options = {"graph_rows": args.graph_rows, "background_graph_rows": args.graph_rows}
    eng = Engine.create(folder, weights=args.weights, backend=args.backend, backend_options=options)
    build_s += time.perf_counter() - t0
    n_syn = args.n - int(gal.sum()) - 4096
    done = 0
    while done < n_syn:
        m = min(CHUNK, n_syn - done)
        x, ids = synthetic_chunk(real["feats"], done, m)
        items = [CropItem(Path(f"syn/{done + j}.png"), {"pid": f"s{ids[j]}", "camera": CAMERAS[(done + j) % 8]})
                 for j in range(m)]
        t0 = time.perf_counter()  # only the engine's work counts, not making the synthetic rows
        eng.add_features(x, items, hashes=[f"syn{done + j:012d}" for j in range(m)])
        build_s += time.perf_counter() - t0
        done += m
        log.info("built %d / %d in %.0f s", done, n_syn, build_s)
    items = [CropItem(Path(p), {"pid": f"p{pid}", "camera": "02"})
             for p, pid in zip(real["path"][gal], real["pid"][gal])]
    t0 = time.perf_counter()
    eng.add_features(real["feats"][gal], items, hashes=[f"pku{j:06d}" for j in range(len(items))])
    build_s += time.perf_counter() - t0
    # the build's last merge finishes first, so the blocks below start from the same state every run
    t0 = time.perf_counter()
    eng.store.wait_for_merges()
    build_s += time.perf_counter() - t0
    build_peak = round(_peak_rss_mb())
    adds: dict[str, Any] = {}
    if not _reset_peak_rss():  # then the adds' peak below is the whole phase's
        adds["add_peak_rss_mb_includes_build"] = True
    # one more block of 4,096 crops on the full index: the cost of a commit (and of the merge it may trigger:
    # "merged": built in the background since the merge of a graph takes longer than the commit), then a second
    # block, committed while that merge is being built; then the wait for that merge to be built and committed;
    # then, for comparison, more blocks with merges inside the commit (the previous path) until one runs a merge
    for b, key in enumerate(("add4096", "add4096_second")):
        gen, started = eng.store.generation, eng.store.merges_started
        adds[f"{key}_s"] = _add_block(eng, real["feats"], n_syn, b)
        # the call committed a merge (a generation of its own) or started one in the background
        adds[f"{key}_merged"] = eng.store.generation > gen + 1 or eng.store.merges_started > started
        if b == 0:
            stats = eng.stats()
            if eng.store.merging:  # readers while the merge is built: single feature queries
                adds.update(_feature_query_latency(eng, real["feats"], args.n, "query_during_merge"))
    t1 = time.perf_counter()
    eng.store.wait_for_merges()
    adds["merge_wait_s"] = round(time.perf_counter() - t1, 2)
    if "query_during_merge_p50_ms" in adds:
        adds.update(_feature_query_latency(eng, real["feats"], args.n, "query_after_merge"))
    adds["merge_build_s"] = (eng.store.last_merge or {}).get("build_s")
    adds["add_peak_rss_mb"] = round(_peak_rss_mb())  # the two blocks and their background merge
    _reset_peak_rss()
    # the previous path, same index: merges inside the commit; blocks until one commit runs a merge
    eng.store.background_merges = False
    plain = []
    for b in range(2, 14):
        gen = eng.store.generation
        took = _add_block(eng, real["feats"], n_syn, b)
        if eng.store.generation > gen + 1:
            adds["inline_merge_add4096_s"] = took
            break
        plain.append(took)
    adds["inline_plain_add4096_s"] = round(float(np.median(plain)), 2) if plain else None
    adds["inline_add_peak_rss_mb"] = round(_peak_rss_mb())
    adds["n_queried"] = eng.store.count  # the gallery the query phase searches
    eng.close()
    return {"n": stats["crops"], "build_s": round(build_s, 1), **adds,
            "disk_mb": round(stats["bytes_on_disk"] / 2**20, 1), "build_peak_rss_mb": build_peak,
            "index": stats["backend"]}


def _add_block(eng: Any, real: np.ndarray, start: int, b: int) -> float:
    """Add the ``b``-th block of 4,096 new synthetic crops after row ``start``; seconds the call took."""
    from reid_engine import CropItem

    x, ids = synthetic_chunk(real, start + 4096 * b, 4096, seed=7)
    items = [CropItem(Path(f"new/{b}-{j}.png"), {"pid": f"n{ids[j]}", "camera": CAMERAS[j % 8]}) for j in range(4096)]
    t = time.perf_counter()
    eng.add_features(x, items, hashes=[f"new{b}-{j:012d}" for j in range(4096)])
    return round(time.perf_counter() - t, 2)


def _feature_query_latency(eng: Any, real: np.ndarray, n: int, name: str, count: int = 50) -> dict[str, float]:
    """p50 / p99 of single synthetic feature queries (search + default re-ranking + rows; no encoding)."""
    sq, _ = synthetic_queries(real, n)
    eng.query_features(sq[-1:], k=10)  # loads the re-ranking state
    lat = []
    for q in sq[:count]:
        t = time.perf_counter()
        eng.query_features(q[None], k=10)
        lat.append(1000 * (time.perf_counter() - t))
    return {f"{name}_p50_ms": round(float(np.percentile(lat, 50)), 1),
            f"{name}_p99_ms": round(float(np.percentile(lat, 99)), 1)}


def _map_at(ranked: np.ndarray, relevant: list[np.ndarray]) -> float:
    """Mean average precision of ranked id lists, counting every relevant id (missing ones score 0)."""
    aps = []
    for row, rel in zip(ranked, relevant):
        hit = np.isin(row, rel)
        if not len(rel):
            continue
        prec = np.cumsum(hit) / np.arange(1, len(row) + 1)
        aps.append(float((prec * hit).sum() / len(rel)))
    return 100.0 * float(np.mean(aps))


def phase_query(args: argparse.Namespace) -> dict[str, Any]:
    from reid_engine import Engine

    work = Path(args.work)
    real = _real_features(work, Path(args.weights))
    folder = _folder(args)
    t0 = time.perf_counter()
    eng = Engine.open(folder)  # the index; the encoder is loaded on the first query
    open_s = time.perf_counter() - t0
    qpaths = list(real["path"][real["role"] == "query"])
    t0 = time.perf_counter()
    eng.query(qpaths[:1], k=10)
    first_query_s = time.perf_counter() - t0  # loads the encoder and the re-ranking state
    eng.query(qpaths[1:3], k=10)
    out: dict[str, Any] = {"open_s": round(open_s, 3), "first_query_s": round(first_query_s, 2)}
    search = json.loads(args.search) if args.search else None
    if search:
        out["search"] = search
    for name, filt in (("query", {}), ("query_camera", {"cameras": ["02"]})):
        lat = []
        for p in qpaths[: args.queries]:
            t = time.perf_counter()
            eng.query([p], k=10, search_params=search, **filt)
            lat.append(1000 * (time.perf_counter() - t))
        out[f"{name}_p50_ms"] = round(float(np.percentile(lat, 50)), 1)
        out[f"{name}_p99_ms"] = round(float(np.percentile(lat, 99)), 1)
    # first-stage recall@10 against exact search, synthetic held-out queries
    sq, sid = synthetic_queries(real["feats"], args.n)
    _, approx = eng.store.search(sq, 10)
    _, exact = eng.store.search(sq, 10, params=_exact())
    out["recall_at_10"] = round(float(np.mean([len(np.intersect1d(a, e)) / 10 for a, e in zip(approx, exact)])), 4)
    cam = _camera_filter("02")
    _, approx = eng.store.search(sq, 10, where=cam)
    _, exact = eng.store.search(sq, 10, where=cam, params=_exact())
    out["recall_at_10_camera"] = round(float(np.mean([len(np.intersect1d(a, e)) / 10 for a, e in zip(approx, exact)])),
                                       4)
    # mAP of the default re-ranking on candidates vs with an exact first stage (labelled synthetic rows)
    rel = [eng.store.ids_where(_pid_clause(f"s{i}")) for i in sid]
    for label, params in (("map_default", search), ("map_default_exact", {**(search or {}), "exact": True})):
        res = eng.query_features(sq, k=100, search_params=params)
        ranked = np.array([[h.id for h in r.hits] + [-1] * (100 - len(r.hits)) for r in res])
        out[label] = round(_map_at(ranked, rel), 2)
    res = eng.query_features(sq, k=100, rerank="none")
    out["map_cosine"] = round(_map_at(np.array([[h.id for h in r.hits] for r in res]), rel), 2)
    out["query_peak_rss_mb"] = round(_peak_rss_mb())
    eng.close()
    return out


def _exact() -> Any:
    from reid_engine.index.backend import SearchParams

    return SearchParams(exact=True)


def _camera_filter(camera: str) -> Any:
    from reid_engine.index.backend import SearchFilter

    return SearchFilter(cameras=(camera,))


def _pid_clause(pid: str) -> Any:
    from reid_engine.index import db

    return db.filter_clause(pids=[pid])


def phase_numpy(args: argparse.Namespace) -> dict[str, Any]:
    """Brute-force NumPy top-10 over the same vectors (what a user would otherwise write)."""
    work = Path(args.work)
    real = _real_features(work, Path(args.weights))
    n = args.n
    gallery = np.empty((n, DIM), np.float32)
    done = 0
    while done < n:
        m = min(CHUNK, n - done)
        gallery[done : done + m] = synthetic_chunk(real["feats"], done, m)[0]
        done += m
    sq, _ = synthetic_queries(real["feats"], n)
    lat = []
    for q in sq[:50]:
        t = time.perf_counter()
        s = gallery @ q
        top = np.argpartition(-s, 10)[:10]
        top[np.argsort(-s[top])]
        lat.append(1000 * (time.perf_counter() - t))
    return {"numpy_p50_ms": round(float(np.percentile(lat, 50)), 1), "numpy_peak_rss_mb": round(_peak_rss_mb())}


PHASES = {"build": phase_build, "query": phase_query, "numpy": phase_numpy}


def _run_phase(phase: str, args: argparse.Namespace, n: int, python: str, cwd: Path,
               backend: str = "faiss") -> dict[str, Any]:
    cmd = [python, str(Path(__file__).resolve()), "--phase", phase, "--n", str(n), "--work", args.work,
           "--weights", args.weights, "--queries", str(args.queries), "--backend", backend]
    if args.graph_rows:
        cmd += ["--graph-rows", str(args.graph_rows)]
    if args.search:
        cmd += ["--search", args.search]
    env = dict(os.environ, PYTHONPATH=str(cwd))
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=cwd)
    if proc.returncode != 0:
        return {"error": proc.stderr.strip().splitlines()[-1] if proc.stderr.strip() else f"exit {proc.returncode}"}
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", default="100000,1000000")
    ap.add_argument("--work", default="/tmp/reid_bench_scale")
    ap.add_argument("--weights", default=None, help="OSNet ONNX weights (default: shared osnet_x0_25_msmt17.onnx)")
    ap.add_argument("--queries", type=int, default=200, help="single-image queries timed per setting")
    ap.add_argument("--old-checkout", default=None, help="a checkout of an earlier commit to compare (<= 100k)")
    ap.add_argument("--milvus", action="store_true", help="also a Milvus Lite backed index, at sizes <= 100k")
    ap.add_argument("--ray", action="store_true", help="also Ray vs local encoding throughput (tools/bench_ray.py)")
    ap.add_argument("--keep", action="store_true", help="keep the built indexes in --work (default: removed)")
    ap.add_argument("--graph-rows", type=int, default=None,
                    help="cap every graph at this many rows (262144: the layout single-block adds make, whose "
                         "background merges grow graphs to half the default cap)")
    ap.add_argument("--search", default=None, metavar="JSON",
                    help='per-query search parameters of the timed queries and the candidates\' mAP, e.g. '
                         '\'{"pool": 100, "ef_search": 64}\' (Engine.query search_params)')
    ap.add_argument("--backend", default="faiss", help=argparse.SUPPRESS)
    ap.add_argument("--phase", choices=sorted(PHASES), help=argparse.SUPPRESS)
    ap.add_argument("--n", type=int, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.search:
        from reid_engine.index.backend import SearchParams

        try:
            SearchParams(**json.loads(args.search))
        except (ValueError, TypeError) as exc:
            ap.error(f"--search {args.search!r}: expected a JSON object of search parameters ({exc})")
    logging.basicConfig(level=logging.INFO, format="%(message)s", stream=sys.stderr)
    args.weights = args.weights or str(_shared("weights/osnet/osnet_x0_25_msmt17.onnx"))
    Path(args.work).mkdir(parents=True, exist_ok=True)
    if args.phase:
        print(json.dumps(PHASES[args.phase](args)))
        return 0
    result: dict[str, Any] = {"bench": "scale", "machine_cores": os.cpu_count()}
    for n in [int(x) for x in args.sizes.split(",")]:
        row: dict[str, Any] = {}
        row.update(_run_phase("build", args, n, sys.executable, ROOT))
        row.update(_run_phase("query", args, n, sys.executable, ROOT))
        row.update(_run_phase("numpy", args, n, sys.executable, ROOT))
        if args.old_checkout and n <= 100_000:
            old_work = Path(args.work) / "old"
            old_args = argparse.Namespace(**{**vars(args), "work": str(old_work)})
            old_work.mkdir(exist_ok=True)
            if (Path(args.work) / "pku_features.npz").exists():
                shutil.copy(Path(args.work) / "pku_features.npz", old_work / "pku_features.npz")
            old = {**_run_phase("build", old_args, n, sys.executable, Path(args.old_checkout)),
                   **_run_phase("query", old_args, n, sys.executable, Path(args.old_checkout))}
            row["old"] = {k: v for k, v in old.items() if k.endswith(("_ms", "_s", "_mb", "error"))}
        if args.milvus and n <= 100_000:
            mil = {**_run_phase("build", args, n, sys.executable, ROOT, "milvus"),
                   **_run_phase("query", args, n, sys.executable, ROOT, "milvus")}
            mil.pop("index", None)
            row["milvus"] = mil
            shutil.rmtree(Path(args.work) / f"index_{n}_milvus", ignore_errors=True)
        result[str(n)] = row
        if not args.keep:
            shutil.rmtree(Path(args.work) / f"index_{n}", ignore_errors=True)
    if args.ray:
        proc = subprocess.run([sys.executable, str(ROOT / "tools" / "bench_ray.py")], capture_output=True, text=True,
                              cwd=ROOT)
        lines = proc.stdout.strip().splitlines()
        result["ray"] = json.loads(lines[-1]) if proc.returncode == 0 and lines else {"error": proc.stderr[-300:]}
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
