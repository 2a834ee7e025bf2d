"""Re-ranking presets on the six development protocols, one query per call, with leave-one-set-out selection.

Computes (and caches) L2-normalised features of pku cam 01->02, pku cam 02->01,
PETS set A, PETS set B, viper and caviar4reid with OSNet x0.25 (ONNX) and
retail-0277 (OpenVINO) through ``reid_engine.encoders.create_encoder`` (the
encoders ``reid-engine eval`` uses). Each gallery goes into a ``MemoryGallery``
(the index hooks run as in an index) and every query is answered alone by the
engine's two-stage path: cosine top ``pipeline.pool_size(k)``, then the
pipeline, with k = the gallery size (a full ranking, as ``reid-engine eval``
asks). Scores follow torchreid's ``evaluate_rank`` (Rank-1, Rank-5, mAP).

The free parameters of the default (camera strength, Centralize's k1, alpha
and margin, the k-reciprocal step's head and tail: 504 grid points, each run
in a worker process) are chosen jointly by leave-one-set-out: for each
set, the grid point that scores best on the other five sets x two encoders
(objective: mAP + (Rank-1 + Rank-5) / 2 gains over cosine, minus ``--penalty``
(100) x every point lost past the targets of issue #14), then scored on the
held-out set. The query crops are shown to each gallery as camera context
(``MemoryGallery.observe``), as ``reid-engine eval`` does. The peers run as
published, on the full query and gallery sets:
torchreid ``re_ranking`` (k1=20, k2=6, lambda=0.3) and Pose2ID NFC (k1=k2=2).

    python tools/rerank_devsets.py                  # held-out table, both encoders
    python tools/rerank_devsets.py --markdown       # the same as markdown (docs/rerank.md)
    python tools/rerank_devsets.py --presets none,default,nfc,kr,qe --no-select   # presets only
    python tools/rerank_devsets.py --one-call       # also check: all queries in one call == one per call
    python tools/rerank_devsets.py --presets none,camera,default --no-select --distractors   # + other sets' crops
    python tools/rerank_devsets.py --presets none,default --no-select --distractors --site-shares 0.25,0.5,0.75
    python tools/rerank_devsets.py --two-camera-site   # step 0 on pku with both cameras in the gallery
    python tools/rerank_devsets.py --presets none --no-select --tail-pools 100,150,200   # the tail's pool

``--site-shares`` chooses the one parameter that only galleries with several sites
feel, ``SiteSplit``'s share, leave-one-set-out over the same objective (on the
plain galleries every share gives the same lists: one gallery camera). ``--tail-pools``
chooses the k-reciprocal tail's pool the same way, every other parameter as
shipped (the head keeps the first stage's best 100, so Rank-1 and Rank-5 do not
change); the grid's points with a tail use the shipped tail pool.

Tools are never imported by the package; this one needs onnxruntime, openvino and torchreid.
"""
from __future__ import annotations

import argparse
import csv
import itertools
import json
import logging
import multiprocessing as mp
import os
import sys
import warnings
from concurrent.futures import ProcessPoolExecutor
from dataclasses import replace as dc_replace
from pathlib import Path
from typing import Any

# The grid runs in forked worker processes, one per core: BLAS and OpenMP threads in each of them oversubscribe
# the cores (measured: 5x slower with 2 workers on 2 cores). Set before NumPy and FAISS load their thread pools,
# and only when run as a script (not when a test imports the tool).
if __name__ == "__main__":
    for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ.setdefault(_var, "1")

import numpy as np  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from reid_engine.assets import shared_path  # noqa: E402
from reid_engine.rerank import (KReciprocal, MemoryGallery, Pipeline, SiteMerge, SiteSplit, get_pipeline,  # noqa: E402
                                rerank_search)
from reid_engine.rerank.steps import POOL  # noqa: E402
from reid_engine.rerank.config import PRESETS  # noqa: E402
from reid_engine.rerank.presets import DEFAULT_CAMERA, DEFAULT_CENTRALIZE, DEFAULT_KRECIPROCAL, DEFAULT_SITE  # noqa: E402
from reid_engine.rerank.presets import default_pipeline  # noqa: E402

log = logging.getLogger("rerank_devsets")

PROTOCOLS = {
    "pku": "data/pku_reid_dev/protocol_cross_camera.csv",
    "petsA": "data/pets09_s2l1/protocol_setA_frames697-742.csv",
    "petsB": "data/pets09_s2l1/protocol_setB_frames232-280.csv",
    "viper": "data/viper/protocol_cross_camera.csv",
    "caviar": "data/caviar4reid/protocol_cross_camera.csv",
}
#: set name -> (protocol, swap query and gallery roles)
SETS = {
    "pku_01to02": ("pku", False),
    "pku_02to01": ("pku", True),
    "pets_A": ("petsA", False),
    "pets_B": ("petsB", False),
    "viper": ("viper", False),
    "caviar4reid": ("caviar", False),
}
MULTI_SHOT = ("pku_01to02", "pku_02to01", "pets_A", "pets_B", "caviar4reid")
ENCODERS = {
    "osnet": "weights/osnet/osnet_x0_25_msmt17.onnx",
    "retail0277": "weights/intel/person-reidentification-retail-0277/FP16/person-reidentification-retail-0277.xml",
}
#: the grid of the default's free parameters: camera-mean removal strength (CameraNormalize) and the
#: gated k-reciprocal step's lambda, gate share and gate margin (share > 1: no k-reciprocal step).
#: Every point is crossed with CENTRALIZE_GRID.
GRID = {"strength": (0.5, 1.0), "lambda_value": (0.5, 0.7, 0.85), "gate_share": (0.7, 0.9, 2.0),
        "gate_margin": (0.0, 0.05)}
#: the same step with a strong tail (KReciprocal ``head``/``tail_lambda``/``tail_share``): the first 5 answers
#: by the gated blend above (Rank-1 and Rank-5 are what the safety targets protect), the rest of the pool by
#: the published k-reciprocal blend (lambda 0.3), behind a gate of its own (share 0, 0.5, or the same as the
#: head's: ``None``); with ``gate_share`` 2.0 only the tail is re-ranked
TAIL_GRID = {"strength": (0.5, 1.0), "lambda_value": (0.85,), "gate_share": (0.7, 0.9, 2.0), "gate_margin": (0.0, 0.05),
             "head": (5,), "tail_lambda": (0.3,), "tail_share": (0.0, 0.5, None)}
#: Centralize's neighbour pooling (its track pooling has no free parameter): mutual neighbours in the top k1,
#: weight alpha past the query's best cosine + margin; alpha 0 pools tracks only (k1 and margin then unused)
CENTRALIZE_GRID = {"k1": (2, 4), "alpha": (0.0, 0.15, 0.3), "margin": (0.15, 0.2)}
CENTRALIZE_KEYS = tuple(CENTRALIZE_GRID)
CAMERA_KEYS = ("strength",)
KR_KEYS = ("lambda_value", "gate_share", "gate_margin", "head", "tail_lambda", "tail_share")


def _features(protocol: str, encoder: str, cache: Path) -> tuple[np.ndarray, list[dict[str, str]]]:
    path = shared_path(PROTOCOLS[protocol])
    with open(path, newline="") as fh:
        rows = list(csv.DictReader(fh))
    f = cache / f"{protocol}__{encoder}.npz"
    if f.exists():
        with np.load(f) as z:
            if list(z["files"]) == [r["file"] for r in rows]:
                feats = z["feats"]
                return feats / np.linalg.norm(feats, axis=1, keepdims=True), rows
    from reid_engine.encoders import create_encoder

    enc = create_encoder(weights=shared_path(ENCODERS[encoder]))
    log.info("encoding %d crops of %s with %s (%s)", len(rows), protocol, enc.name, enc.runtime)
    feats = enc.encode([path.parent / r["file"] for r in rows], batch_size=32).astype(np.float32)
    cache.mkdir(parents=True, exist_ok=True)
    np.savez(f, feats=feats, files=np.array([r["file"] for r in rows]))
    return feats / np.linalg.norm(feats, axis=1, keepdims=True), rows


def load_set(name: str, encoder: str, cache: Path) -> dict[str, Any]:
    """Query/gallery features and labels of one development set."""
    protocol, swap = SETS[name]
    x, rows = _features(protocol, encoder, cache)
    role = np.array([r["role"] for r in rows])
    pid = np.array([int(r["pid"]) for r in rows])
    cam = np.array([str(r["camid"]) for r in rows])
    q, g = role == "query", role == "gallery"
    if swap:
        q, g = g, q
    return {"qf": x[q], "gf": x[g], "q_pid": pid[q], "g_pid": pid[g], "q_cam": cam[q], "g_cam": cam[g]}


def load_two_camera_site(query_camera: str, encoder: str, cache: Path) -> dict[str, Any]:
    """pku as one site of two cameras: every crop of both cameras in the gallery, the crops of ``query_camera``
    ("1" or "2") as queries; a query's same-camera matches are junk (``evaluate_rank``, as in Market-1501)."""
    x, rows = _features("pku", encoder, cache)
    pid = np.array([int(r["pid"]) for r in rows])
    cam = np.array([str(r["camid"]) for r in rows])
    q = cam == str(query_camera)
    if not q.any():
        raise ValueError(f"query camera {query_camera!r}: pku has cameras {sorted(set(cam))}")
    return {"qf": x[q], "gf": x, "q_pid": pid[q], "g_pid": pid, "q_cam": cam[q], "g_cam": cam}


def without_site_steps(pipeline: Pipeline) -> Pipeline:
    """``pipeline`` without step 0 (``SiteSplit`` / ``SiteMerge``)."""
    steps = tuple(s for s in pipeline.steps if not isinstance(s, (SiteSplit, SiteMerge)))
    return dc_replace(pipeline, steps=steps, name=f"{pipeline.name} without step 0")


def two_camera_site(encoders: list[str], cache: Path) -> list[dict[str, Any]]:
    """Step 0 on a real site of two cameras that look unlike each other (pku, both cameras in the gallery), with
    and without every other protocol's crops as distractors: whether each pku camera stays linked to the other,
    and Rank-1 / Rank-5 / mAP of cosine, the default and the default without step 0."""
    default = get_pipeline("default")
    pipes = {"cosine": get_pipeline("none"), "default": default, "default without step 0": without_site_steps(default)}
    out = []
    for enc in encoders:
        for qcam in ("1", "2"):
            plain = load_two_camera_site(qcam, enc, cache)
            for distractors in (False, True):
                data = with_distractors(plain, "pku_01to02", enc, cache) if distractors else plain
                gal = build_gallery(data, query_context=False)  # the query camera's crops are rows already
                links = gal.state("camera_links")
                linked = bool(links.linked(qcam, np.array(["1", "2"]), **DEFAULT_SITE).all())
                scores = {name: evaluate(rank_pipeline(gal, data, pipe), data) for name, pipe in pipes.items()}
                out.append({"encoder": enc, "query_camera": qcam, "distractors": distractors,
                            "site_kept_together": linked, **scores})
    return out


def with_distractors(data: dict[str, Any], name: str, encoder: str, cache: Path, seed: int = 0) -> dict[str, Any]:
    """``data`` with every crop of the other protocols added to its gallery, in a random order: people who are
    never a match (pid above every real one), under their own cameras (``d:<protocol>:<camid>``). PETS sets
    A and B show the same people, so neither is a distractor for the other."""
    own = SETS[name][0]
    same_people = {own} | ({"petsA", "petsB"} if own in ("petsA", "petsB") else set())
    feats, cams = [], []
    for protocol in PROTOCOLS:
        if protocol not in same_people:
            x, rows = _features(protocol, encoder, cache)
            feats.append(x)
            cams += [f"d:{protocol}:{r['camid']}" for r in rows]
    extra = np.vstack(feats)
    order = np.random.default_rng(seed).permutation(len(data["gf"]) + len(extra))
    first = int(max(data["g_pid"].max(), data["q_pid"].max())) + 1
    return dict(data, gf=np.vstack([data["gf"], extra])[order],
                g_pid=np.concatenate([data["g_pid"], first + np.arange(len(extra))])[order],
                g_cam=np.concatenate([data["g_cam"], np.array(cams)])[order])


def build_gallery(data: dict[str, Any], block: int = 128, query_context: bool = True) -> MemoryGallery:
    """The gallery in a MemoryGallery, added in blocks (the hooks update incrementally, as in an index);
    with ``query_context`` the query crops are then shown as context, as ``reid-engine eval`` does."""
    gal = MemoryGallery(data["gf"].shape[1])
    n = len(data["gf"])
    for s in range(0, n, block):
        gal.add(np.arange(s, min(n, s + block)), data["gf"][s:s + block], {"camera": data["g_cam"][s:s + block]})
    if query_context:
        gal.observe(data["qf"], list(data["q_cam"]))
    return gal


def evaluate(order: np.ndarray, data: dict[str, Any]) -> tuple[float, float, float]:
    """Rank-1, Rank-5, mAP (%) of full rankings (gallery positions), torchreid's evaluate_rank."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        from torchreid.reid.metrics import evaluate_rank
    q, g = order.shape
    distmat = np.empty((q, g), np.float32)
    np.put_along_axis(distmat, order, np.broadcast_to(np.arange(g, dtype=np.float32), (q, g)), axis=1)
    all_c = {c: i for i, c in enumerate(sorted(set(data["q_cam"]) | set(data["g_cam"])))}
    cmc, m_ap = evaluate_rank(distmat, data["q_pid"], data["g_pid"],
                              np.array([all_c[c] for c in data["q_cam"]]), np.array([all_c[c] for c in data["g_cam"]]),
                              max_rank=10, use_metric_cuhk03=False)
    return 100.0 * float(cmc[0]), 100.0 * float(cmc[4]), 100.0 * float(m_ap)


def rank_pipeline(gal: MemoryGallery, data: dict[str, Any], pipeline: Pipeline, one_call: bool = False) -> np.ndarray:
    """Full ranked gallery positions per query through the two-stage path (one query per call by default)."""
    qf, cams = data["qf"], list(data["q_cam"])
    g = gal.count
    if one_call:
        return gal.query(pipeline, qf, g, query_cameras=cams).ids
    return np.concatenate([gal.query(pipeline, qf[i:i + 1], g, query_cameras=cams[i:i + 1]).ids
                           for i in range(len(qf))])


def peer_scores(data: dict[str, Any]) -> dict[str, tuple[float, float, float]]:
    """The peers on the full query and gallery sets: torchreid k-reciprocal and Pose2ID NFC."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        from torchreid.reid.utils import re_ranking
    qf, gf = data["qf"].astype(np.float64), data["gf"].astype(np.float64)
    d = re_ranking(2 - 2 * qf @ gf.T, 2 - 2 * qf @ qf.T, 2 - 2 * gf @ gf.T, k1=20, k2=6, lambda_value=0.3)
    out = {"kr (torchreid)": evaluate(np.argsort(d, axis=1, kind="stable"), data)}
    _, pos = rerank_search(data["qf"], data["gf"], len(gf), PRESETS["nfc"])
    out["NFC (Pose2ID)"] = evaluate(pos, data)
    return out


#: ``--narrow``: Centralize where every fold of the full grid's selection put it (2026-11-30; 112 points)
NARROW_CENTRALIZE_GRID = {"k1": (2, 4), "alpha": (0.3,), "margin": (0.2,)}


def grid_points(narrow: bool = False) -> list[dict[str, Any]]:
    """Every point of (GRID + TAIL_GRID) x CENTRALIZE_GRID (``narrow``: NARROW_CENTRALIZE_GRID), one per
    distinct pipeline."""
    cen_grid = NARROW_CENTRALIZE_GRID if narrow else CENTRALIZE_GRID
    pts = [dict(zip(grid, v), **dict(zip(cen_grid, c)))
           for grid in (GRID, TAIL_GRID) for v in itertools.product(*grid.values())
           for c in itertools.product(*cen_grid.values())]
    seen, out = set(), []
    for p in pts:  # parameters of a part that never runs do not matter: keep one point
        cen = (p["alpha"], p["k1"], p["margin"]) if p["alpha"] > 0 else (0.0,)
        if p["gate_share"] > 1 and "tail_lambda" not in p:
            key: tuple = (p["strength"], "no kr")
        elif p["gate_share"] > 1:  # a tail gate at share 0 is always open, whatever the margin
            key = (p["strength"], "tail only", p["gate_margin"] if p["tail_share"] else None, p["tail_share"])
            if p["tail_share"] is None:  # the tail's gate is the head's, which never opens
                key = (p["strength"], "no kr")
        else:
            key = tuple(v for k, v in p.items() if k not in CENTRALIZE_KEYS)
        key += cen
        if key not in seen:
            seen.add(key)
            out.append(p)
    return out


def with_site_share(pipeline: Pipeline, share: float) -> Pipeline:
    """``pipeline`` with its ``SiteSplit`` reading camera links at ``share``."""
    steps = tuple(SiteSplit(share, s.min_links) if isinstance(s, SiteSplit) else s for s in pipeline.steps)
    return dc_replace(pipeline, steps=steps, name=f"{pipeline.name}@site_share={share}")


def with_tail_pool(pipeline: Pipeline, pool: int) -> Pipeline:
    """``pipeline`` with its k-reciprocal tail re-ranking a pool of ``pool`` candidates; its head keeps the
    pool of ``POOL`` it was chosen with (the first stage's best ``POOL`` by cosine)."""
    def swap(s: Any) -> Any:
        if not isinstance(s, KReciprocal):
            return s
        return KReciprocal(s.k1, s.k2, s.lambda_value, pool, s.gate_margin, s.gate_share, s.gate_top, s.head,
                           s.tail_lambda, s.tail_share, head_pool=POOL if pool > POOL else None)
    return dc_replace(pipeline, steps=tuple(swap(s) for s in pipeline.steps), name=f"{pipeline.name}@tail_pool={pool}")


def pipeline_for(point: dict[str, Any]) -> Pipeline:
    cam = dict(DEFAULT_CAMERA, **{k: v for k, v in point.items() if k in CAMERA_KEYS})
    cen = dict(DEFAULT_CENTRALIZE, **{k: v for k, v in point.items() if k in CENTRALIZE_KEYS})
    # a point without a tail has none, and no use for a tail pool larger than its head's
    kr = dict(DEFAULT_KRECIPROCAL, head=0, tail_lambda=None, tail_share=None, pool=POOL, head_pool=None)
    if point.get("tail_lambda") is not None:  # the tail re-ranks the shipped tail pool (--tail-pools)
        kr.update(pool=DEFAULT_KRECIPROCAL["pool"], head_pool=DEFAULT_KRECIPROCAL["head_pool"])
    kr.update({k: v for k, v in point.items() if k in KR_KEYS})
    return default_pipeline(cam, cen, kreciprocal=kr, name="default@" + ",".join(f"{k}={v}" for k, v in point.items()))


_GRID_INPUT: dict[str, Any] = {}


def _grid_point(i: int) -> dict[tuple[str, str], tuple[float, float, float]]:
    """Scores of grid point ``i`` on every (set, encoder) pair (run in a worker process)."""
    g = _GRID_INPUT
    pipe = pipeline_for(g["points"][i])
    return {p: evaluate(rank_pipeline(g["gals"][p], g["datas"][p], pipe), g["datas"][p]) for p in g["pairs"]}


#: weight of every point lost past the safety targets in the objective: they are the issue's constraints
#: (never worse than cosine), the gains over cosine come second
PENALTY = 100.0


def objective(scores: list[tuple[float, float, float]], bases: list[tuple[float, float, float]],
              penalty: float = PENALTY) -> float:
    """Gains over cosine (mAP + (R1 + R5) / 2), minus ``penalty`` x every loss past the targets
    (R1 -0.5, R5 -1, mAP 0)."""
    total = 0.0
    for (r1, r5, m), (b1, b5, bm) in zip(scores, bases):
        total += (m - bm) + 0.5 * (r1 - b1) + 0.5 * (r5 - b5)
        total -= penalty * (max(0.0, (b1 - 0.5) - r1) + max(0.0, (b5 - 1.0) - r5) + max(0.0, bm - m))
    return total


Scores = dict[tuple[str, str], tuple[float, float, float]]


def leave_one_set_out(candidates: dict[int, Scores], sets: list[str], base: Scores, penalty: float
                      ) -> tuple[dict[str, int], Scores, int]:
    """For each set, the candidate (numbered; ties: the lowest number) with the best ``objective`` on the other
    sets' pairs, and that candidate's scores on the set's own pairs; plus the best candidate on all sets."""
    def best(pairs: list[tuple[str, str]]) -> int:
        return max(candidates, key=lambda i: (objective([candidates[i][p] for p in pairs], [base[p] for p in pairs],
                                                        penalty), -i))

    every = list(next(iter(candidates.values())))
    chosen = {s: best([p for p in every if p[0] != s]) for s in sets}
    held = {p: candidates[chosen[p[0]]][p] for p in every}
    return chosen, held, best(every)


def choose_one(what: str, values: list[Any], variant: Any, gals: dict, datas: dict, sets: list[str], base: Scores,
               penalty: float) -> tuple[list[Scores], Scores]:
    """One parameter of the shipped default chosen leave-one-set-out among ``values`` (``variant(value)``: the
    pipeline), the rest as shipped; prints the choices and returns every value's scores and the held-out ones."""
    by = {i: {p: evaluate(rank_pipeline(gals[p], datas[p], variant(v)), datas[p]) for p in gals}
          for i, v in enumerate(values)}
    chosen, held, every = leave_one_set_out(by, sets, base, penalty)
    print(f"{what} chosen per held-out set:")
    for s in sets:
        print(f"  without {s}: {values[chosen[s]]}")
    print(f"  on all sets (ship this): {values[every]}")
    return [by[i] for i in range(len(values))], held


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--encoders", default=",".join(ENCODERS))
    ap.add_argument("--sets", default=",".join(SETS))
    ap.add_argument("--presets", default="none,default,nfc,kr,qe")
    ap.add_argument("--no-select", action="store_true", help="skip the leave-one-set-out selection")
    ap.add_argument("--one-call", action="store_true", help="check that all queries in one call give the same lists")
    ap.add_argument("--cache", type=Path, default=Path("/tmp/reid_rerank_devsets"))
    ap.add_argument("--no-query-context", action="store_true",
                    help="do not show the galleries the query crops as camera context (reid-engine eval does)")
    ap.add_argument("--distractors", action="store_true",
                    help="add every crop of the other protocols to each gallery (never a match, own cameras)")
    ap.add_argument("--site-shares", default=None,
                    help="comma-separated SiteSplit shares to choose from leave-one-set-out (it only changes "
                         "galleries with several sites: use with --distractors)")
    ap.add_argument("--tail-pools", default=None,
                    help="comma-separated pool sizes of the default's k-reciprocal tail to choose from "
                         "leave-one-set-out, every other parameter as shipped (the head keeps its pool)")
    ap.add_argument("--two-camera-site", action="store_true",
                    help="only step 0 on pku as one site of two cameras (both in the gallery), with and without "
                         "the other protocols' crops as distractors")
    ap.add_argument("--narrow", action="store_true",
                    help="select over the 112 grid points with Centralize at alpha 0.3, margin 0.2 (every fold of "
                         "the full 504-point selection chose them), not all 504")
    ap.add_argument("--markdown", action="store_true")
    ap.add_argument("--penalty", type=float, default=PENALTY, help="objective weight of a loss past the targets")
    ap.add_argument("--grid-cache", type=Path, default=None,
                    help="JSON file of grid scores: read when present (same sets and encoders), written after")
    ap.add_argument("--jobs", type=int, default=os.cpu_count() or 1, help="worker processes for the grid")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    encoders, sets = args.encoders.split(","), args.sets.split(",")
    if args.two_camera_site:
        print("| encoder, query camera, gallery | site kept together | cosine | default | default without step 0 |")
        print("|---|---|---|---|---|")
        for row in two_camera_site(encoders, args.cache):
            cells = [" / ".join(f"{v:.1f}" for v in row[k]) for k in ("cosine", "default", "default without step 0")]
            where = "pku + distractors" if row["distractors"] else "pku"
            print(f"| {row['encoder']}, {row['query_camera']}, {where} | {row['site_kept_together']} | "
                  + " | ".join(cells) + " |")
        return 0
    pairs = [(s, e) for e in encoders for s in sets]
    datas = {p: load_set(p[0], p[1], args.cache) for p in pairs}
    if args.distractors:
        datas = {p: with_distractors(d, p[0], p[1], args.cache) for p, d in datas.items()}
    gals = {p: build_gallery(datas[p], query_context=not args.no_query_context) for p in pairs}
    presets = {name: get_pipeline(name) for name in args.presets.split(",")}
    res: dict[str, dict[tuple[str, str], tuple[float, float, float]]] = {}
    for name, pipe in presets.items():
        res[name] = {p: evaluate(rank_pipeline(gals[p], datas[p], pipe), datas[p]) for p in pairs}
        log.info("preset %s done", name)
    peers = {p: peer_scores(datas[p]) for p in pairs}
    for peer in ("kr (torchreid)", "NFC (Pose2ID)"):
        res[peer] = {p: peers[p][peer] for p in pairs}
    base = res["none"] if "none" in res else {p: evaluate(rank_pipeline(gals[p], datas[p], get_pipeline("none")),
                                                           datas[p]) for p in pairs}
    if args.one_call:
        pipe = presets.get("default", get_pipeline("default"))
        for p in pairs:
            same = np.array_equal(rank_pipeline(gals[p], datas[p], pipe),
                                  rank_pipeline(gals[p], datas[p], pipe, one_call=True))
            print(f"one call == one query per call, {p[0]} {p[1]}: {same}")

    rows_out = list(res)
    if not args.no_select:
        points = grid_points(args.narrow)
        grid: dict[int, dict[tuple[str, str], tuple[float, float, float]]] = {}
        cached = json.loads(args.grid_cache.read_text()) if args.grid_cache and args.grid_cache.exists() else {}
        tag = "|distractors" if args.distractors else ""  # scores of other galleries are cached apart
        tag += f"|tail_pool={DEFAULT_KRECIPROCAL['pool']}"  # and those of another tail pool
        for i, pt in enumerate(points):
            got = cached.get(json.dumps(pt, sort_keys=True), {})
            if all(f"{s}|{e}{tag}" in got for s, e in pairs):
                grid[i] = {p: tuple(got[f"{p[0]}|{p[1]}{tag}"]) for p in pairs}
        todo = [i for i in range(len(points)) if i not in grid]
        _GRID_INPUT.update(points=points, pairs=pairs, gals=gals, datas=datas)
        # grid points in worker processes (forked: they inherit the galleries); one thread each (top of file)
        with ProcessPoolExecutor(max(1, args.jobs), mp_context=mp.get_context("fork")) as pool:
            for i, scores in zip(todo, pool.map(_grid_point, todo)):
                grid[i] = scores
                log.info("grid %d/%d %s", i + 1, len(points), points[i])
        if args.grid_cache:
            for i, pt in enumerate(points):
                cached.setdefault(json.dumps(pt, sort_keys=True), {}).update(
                    {f"{s}|{e}{tag}": list(v) for (s, e), v in grid[i].items()})
            args.grid_cache.write_text(json.dumps(cached))
        chosen, held, all_best = leave_one_set_out(grid, sets, base, args.penalty)
        res["default (held-out)"] = held
        rows_out.append("default (held-out)")
        print("parameters chosen per held-out set:")
        for s in sets:
            print(f"  without {s}: {points[chosen[s]]}")
        print(f"  on all sets (ship this): {points[all_best]}")

    if args.site_shares:
        shares = [float(x) for x in args.site_shares.split(",")]
        _, res["default, site share held-out"] = choose_one(
            "SiteSplit share", shares, lambda sh: with_site_share(get_pipeline("default"), sh), gals, datas, sets,
            base, args.penalty)
        rows_out.append("default, site share held-out")

    if args.tail_pools:
        sizes = [int(x) for x in args.tail_pools.split(",")]
        by_pool, res["default, tail pool held-out"] = choose_one(
            "tail pool", sizes, lambda n: with_tail_pool(get_pipeline("default"), n), gals, datas, sets, base,
            args.penalty)
        for n, scores in zip(sizes, by_pool):
            res[f"default, tail pool {n}"] = scores
        rows_out += [f"default, tail pool {n}" for n in sizes] + ["default, tail pool held-out"]

    for enc in encoders:
        print(f"\n{enc}: Rank-1 / Rank-5 / mAP %, one query per call")
        head = ["method"] + sets
        if args.markdown:
            print("| " + " | ".join(head) + " |")
            print("|---" * len(head) + "|")
        for name in rows_out:
            cells = [" / ".join(f"{v:.1f}" for v in res[name][(s, enc)]) for s in sets]
            print(("| " + " | ".join([f"`{name}`"] + cells) + " |") if args.markdown
                  else f"{name:<22}" + "".join(f"{c:>20}" for c in cells))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
