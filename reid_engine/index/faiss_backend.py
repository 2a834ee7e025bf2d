"""The default vector backend: append-only memory-mapped segments searched with FAISS and NumPy.

On disk (all files immutable once renamed into place, names carry the generation that wrote them):

- ``seg-<gen>-<token>.*``: one segment, the rows one commit added or one merge wrote:
  ``.vec.npy`` float32 (N, D); ``.ids.npy`` int64 (2, N): row ids, then the ids sorted;
  ``.aux.npy`` int32 (8, N): camera/source/track codes, their postings (rows sorted by code),
  the timestamp order and the row of each sorted id; ``.ts.npy`` float64 (2, N): timestamps
  (NaN = unknown), then sorted; ``.json``: vocabularies, posting offsets and, for an IVF
  segment, the CSR offsets of its inverted lists (rows grouped by coarse list).
  A graph segment has ``.hnsw`` (a FAISS HNSW index over its rows, in row order) and no
  ``.vec.npy``: its vectors are the graph's own storage, memory-mapped, so they are on disk and in
  memory once (state entry ``"vectors": "graph"``; older graph segments keep a ``.vec.npy``).
  A projected graph segment (state entry ``"proj": d``) keeps its vectors in ``.vec.npy`` and
  ``.proj.npy`` float32 (d, D): orthonormal rows; its graph holds the rows projected onto them
  (d < D), and a search re-scores the graph's candidates with the full vectors. A graph grown from
  another one usually shares its ``.vec.npy`` (a hard link to the same file, with the new rows
  appended): the one exception to immutability, and it never changes a byte any state can read,
  since rows are only appended past the rows of every state that names the file (``_append_rows``).
  So the state's row count, not the ``.npy`` header, says how many rows a segment has.
- ``tomb-<gen>-<token>.npy`` int64 (2, T): removed ids and the generation that removed them
  (a removal hides the id in segments written before it, so a re-added id lives again).
- ``quant-<gen>-<token>.npy`` float32 (nlist, D): the trained coarse quantizer.

A commit writes one small flat segment (searched exhaustively). Past ``exact_threshold`` (graph
modes) ``compact`` inserts the flat segments' rows into the growing graph (written as a new
segment; the old graph's files are left for readers) until it holds ``graph_rows`` (for a merge
built in the background, ``background_graph_rows``), then starts a new one, so each row is
inserted into a graph once. With an IVF factory it merges flat segments into IVF segments once
a quantizer is trained (again when the gallery has grown ``retrain_growth`` times) and merges IVF
segments tier by tier. Both drop removed rows. IVF
segments keep their own CSR lists rather than a FAISS IVF index because memory-mapping them is
zero-copy, all segments share one quantizer, and filters are evaluated list by list on the
stored codes.

A merge is planned on one state (``plan_merge``), built without the write lock (``build_merge``: it reads only
that state's immutable files) and applied to whatever state is committed when it is done (``apply_merge``: its
segments are swapped for the new one, later commits are kept); the store runs that in a background thread.
``compact`` does the three in a row.
"""
from __future__ import annotations

import ctypes
import functools
import json
import logging
import math
import mmap
import os
import re
import secrets
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator, Optional, Sequence

import faiss
import numpy as np

try:
    import fcntl
except ImportError:  # pragma: no cover - not on Linux: grown graphs copy their rows instead of appending
    fcntl = None  # type: ignore[assignment]

from ..errors import IndexCorruptError, InvalidInputError
from .backend import (FIELDS, Changes, IdsLike, SearchFilter, SearchParams, VectorBackend, is_positive_int,
                      register_backend)
from .ids import positions as id_positions
from .topk import copies, search_with_copies, top_k_rows

log = logging.getLogger(__name__)

FORMAT = 1
STR_FIELDS = ("camera", "source", "track")
#: below this many live vectors an exact search beats IVF on a 2-core machine (tools/bench_backend.py --threshold)
EXACT_THRESHOLD = 50_000
_NAME_RE = re.compile(r"^(seg|tomb|quant)-(\d{6,})-([0-9a-f]+)(\.[a-z.]+)?(\.tmp[0-9a-f]*)?$")
_FACTORY_RE = re.compile(r"^IVF(\d+),Flat$")
#: the most lists an "IVF<n>,Flat" factory may name (FAISS trains on about 39 vectors per list: 2^20 lists
#: already need 40M training vectors)
IVF_NLIST_MAX = 1 << 20
_HNSW_RE = re.compile(r"^HNSW(\d+)$")
#: links per node of the graphs "auto" builds (FAISS HNSW M) and the construction beam width
GRAPH_M = 32
GRAPH_EF_CONSTRUCTION = 40
#: a graph grows (new rows are added to it at merges) until it holds this many rows; then it is sealed and the
#: next merge starts a new graph. Every row is inserted into a graph once; a bigger cap means fewer graphs to
#: search per query and per commit, but more bytes rewritten per merge and more memory while one grows (at
#: merge time the growing graph is read into memory from its file). Tried on 2026-12-01 and not kept: 1,048,576
#: (with 8-bit codes a graph row costs ~0.45 KB instead of ~0.96 KB, so a 1M gallery fits one graph at the same
#: bytes per merge): two 1M builds took 565.1 / 654.2 s against 602.4 / 616.5 s with this cap (no gain past the
#: machine's noise), with the build's peak 0.8 GB higher and recall@10 0.9965 against 0.9985 (docs/storage.md)
GRAPH_ROWS = 1 << 19
#: a merge built in the background (while the process keeps serving from the memory-mapped graphs) grows a graph
#: only while it holds at most graph_rows / BACKGROUND_GROWTH_DIVISOR rows; past that it starts a new graph. Growing
#: copies the graph into memory beside its mapped file, which searches keep paged in: at 1M rows a copy of a
#: 512k-row graph of float rows (1.2 GB) lifted the peak to 4.3 GB, more than twice the vectors; with 8-bit codes
#: the copy of a 262k-row graph is about 0.11 GB (docs/storage.md). Inline merges (bulk adds, compact) grow up to
#: graph_rows
BACKGROUND_GROWTH_DIVISOR = 2
#: default search beam width of the graphs (measured: recall@10 0.97 at 100k on tools/bench_scale.py data)
GRAPH_EF_SEARCH = 128
#: graphs up to this many rows get a default beam of at least efSearch and twice the results wanted; a larger
#: graph gets (rows / GRAPH_BEAM_ROWS) ** GRAPH_BEAM_POWER times both. On tools/bench_scale.py data a 262k-row graph
#: needs a beam of ~5-6x the results for recall@100 0.98, a 32k one ~2x; on two graphs of 512k rows recall@10 is
#: 0.908 / 0.955 / 0.984 at beams 128 / 200 / 400 (camera filter, 1/8 of the rows: 0.835 / 0.907 / 0.958), and the
#: default re-ranking's mAP@100 on a pool searched with beams 790 / 1200 / 2400 / exact is 23.96 / 24.42 / 24.56 /
#: 24.80 (7.4 / 9.8 / 16.9 ms a pool search): power 0.65 gives the 1200
GRAPH_BEAM_ROWS = 32768
GRAPH_BEAM_POWER = 0.65


#: a new graph holds its rows projected onto the leading eigenvectors of their second moment, as few as leave
#: at most 1 - GRAPH_ENERGY of their variance out, when that takes at most GRAPH_PROJECT_SHARE of the dimensions;
#: a search re-scores the graph's candidates (GRAPH_REFINE times the results wanted, the beam at most) with the
#: full vectors. Inserting a row and walking the graph cost about the projected dimension: on tools/bench_scale.py
#: rows (OSNet x0.25, 512-d) that is 176 dimensions, and a 200k-row graph inserted 32k rows 1.9x faster at 192
#: dimensions (2.5x at 128), with the same recall@10 after re-scoring (docs/storage.md)
GRAPH_ENERGY = 0.99
GRAPH_PROJECT_SHARE = 0.75
GRAPH_REFINE = 4
#: rows sampled (evenly spread over a new graph's rows) to fit its projection
GRAPH_PROJECT_SAMPLE = 32768
#: the default beam of a projected graph is this many times that of a full one: its walk costs about d / D as
#: much per step. On the two 176-d graphs of a 1M tools/bench_scale.py index, beams of 1x / 1.5x / 2x gave a pool
#: of 100 with recall 0.9936 / 0.9971 / 0.9988 and the default re-ranking's mAP@100 26.75 / 26.96 / 27.18 (exact
#: first stage 27.50) in 7.7 / 10.2 / 13.2 ms a pool search; graphs over the full vectors gave 0.9940 and 27.06 in
#: 12.0 ms (same machine)
GRAPH_PROJECTED_BEAM = 2.0
#: how a projected graph keeps its rows ("sq8": 8-bit codes, one byte per dimension, FAISS IndexHNSWSQ with
#: per-dimension ranges trained on the projection's sample; "float": float32, IndexHNSWFlat). Its candidates are
#: re-scored with the full vectors either way, so the similarities a search returns stay exact. A walk and an
#: insertion read a quarter of the bytes per step: on 262k tools/bench_scale.py rows projected to 176 dimensions,
#: 4,096 searches for 32 candidates (beam 32) took 0.218 s against 0.340 s, inserting 32k rows 3.21 s against
#: 4.12 s, and the exact top 16 among the re-scored candidates was 0.672 against 0.674 (docs/storage.md)
GRAPH_CODES = "sq8"
_GRAPH_CODE_KINDS = ("sq8", "float")
_QT_8BIT: Any = faiss.ScalarQuantizer.QT_8bit
#: rows a batch search re-scores per block (one thread's share of the work at a time)
RESCORE_BLOCK = 2048


def graph_projection(sample: np.ndarray, energy: float = GRAPH_ENERGY, max_share: float = GRAPH_PROJECT_SHARE,
                     dims: Optional[int] = None) -> Optional[np.ndarray]:
    """Orthonormal rows (d, D): the leading eigenvectors of the sample's second moment ``X^T X``, the fewest (d
    rounded up to a multiple of 16) whose residual keeps at most ``1 - energy`` of the rows' variance about their
    mean (the spread that tells neighbours apart, not the mean direction every row shares); None when that needs
    more than ``max_share`` of the D dimensions or the sample has fewer rows than D (too few to tell). With
    ``dims``, exactly that many (None when it is D or more)."""
    x = np.asarray(sample, np.float64)
    n, dim = x.shape
    if dims is not None and dims >= dim:
        return None
    if dims is None and (n < dim or dim < 32):
        return None
    w, v = np.linalg.eigh(x.T @ x)
    w = np.clip(w[::-1], 0.0, None)
    v = v[:, ::-1]
    if dims is None:
        spread = float(w.sum()) - n * float(np.square(x.mean(axis=0)).sum())
        if spread <= 0.0:
            return None
        residual = float(w.sum()) - np.cumsum(w)
        d = int(np.argmax(residual <= (1.0 - energy) * spread)) + 1
        d = min(dim, -(-d // 16) * 16)
        if d > max_share * dim:
            return None
    else:
        d = dims
    return np.ascontiguousarray(v[:, :d].T, np.float32)


def _spread_sample(vectors: Any, rows: int, size: int = GRAPH_PROJECT_SAMPLE, blocks: int = 8) -> np.ndarray:
    """Up to ``size`` of rows 0..rows of ``vectors(a, b)``, read in ``blocks`` runs spread evenly over them."""
    if rows <= size:
        return np.asarray(vectors(0, rows), np.float32)
    run = size // blocks
    starts = np.linspace(0, rows - run, blocks).astype(np.int64)
    return np.concatenate([np.asarray(vectors(int(a), int(a) + run), np.float32) for a in starts])


def _rescore(vec: np.ndarray, q: np.ndarray, rows: np.ndarray, ids: np.ndarray, k: int,
             release: Optional[Path] = None) -> tuple[np.ndarray, np.ndarray]:
    """The best ``k`` of each query's candidate ``rows`` of ``vec`` (-1: none; ``ids``: their ids) by exact inner
    product with it: (similarities, ids), ties by ascending id, -inf / -1 where fewer.

    With ``release`` (the file ``vec`` maps: a batch search), the blocks of RESCORE_BLOCK rows are scored in
    threads, and the pages read are dropped from this process once the batch is scored: a batch re-scores rows all
    over the file, which would otherwise stay resident beside the graph (a commit's neighbour search touches most
    of them). Dropping them once, not after every block, maps each page about once per batch instead of once per
    block (docs/storage.md: "Re-scoring a batch")."""
    sims = np.full(rows.shape, -np.inf, np.float32)
    block = max(1, (RESCORE_BLOCK if release is not None else 8 * RESCORE_BLOCK) // max(rows.shape[1], 1))

    def score(i0: int) -> None:
        r = rows[i0:i0 + block]
        x = vec[np.maximum(r, 0).ravel()].reshape(*r.shape, vec.shape[1])
        s = np.einsum("qkd,qd->qk", x, q[i0:i0 + block], dtype=np.float32)
        sims[i0:i0 + block] = np.where(r >= 0, s, -np.inf)

    starts = range(0, len(q), block)
    pool = _rescore_pool() if release is not None and len(starts) > 1 else None
    if pool is None:
        for i0 in starts:
            score(i0)
    else:  # NumPy's gathers and products let go of the GIL: the blocks run side by side
        list(pool.map(score, starts))
    if release is not None:
        _release_pages(vec, release)
    return top_k_rows(sims, ids, k)


#: from this many queries an exact search scores its rows with NumPy's matrix product and keeps each query's best
#: in FAISS heaps (FAISS's own search takes its BLAS path from 20 queries too, with the same heaps); the matrix
#: product of the FAISS wheel was 2.4-3.6x slower on one machine: 4,096 queries against 4,096 rows took 0.50-0.55 s,
#: this 0.14-0.23 s (tools/bench_backend.py --knn)
KNN_BLAS_QUERIES = 20
#: similarities computed per block of a batch exact search (64 MB), over at most KNN_BLOCK_ROWS rows; under 1/16
#: of that in all, FAISS's own search
KNN_BLOCK_SCORES = 1 << 24
KNN_BLOCK_ROWS = 4096


def knn_inner_product(q: np.ndarray, x: np.ndarray, k: int, first: Optional[np.ndarray] = None,
                      find_copies: bool = True) -> tuple[np.ndarray, np.ndarray]:
    """Each query's ``k`` rows of ``x`` with the largest inner product: (similarities, row numbers), best first,
    the lowest float32 / -1 where ``x`` has fewer rows; the same answer as ``faiss.knn`` (its heaps, its order of
    ties), except that copies of one vector always tie (``topk.search_with_copies``): ``first`` is
    ``topk.copies(x)`` when known, else it is found (``find_copies``)."""
    if first is None and find_copies:
        first = copies(x)
    return search_with_copies(_knn_blocks, q, x, k, first)


def _knn_blocks(q: np.ndarray, x: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    q = np.ascontiguousarray(q, np.float32)
    if len(q) < KNN_BLAS_QUERIES or len(q) * len(x) < KNN_BLOCK_SCORES // 16:
        s, r = faiss.knn(q, np.ascontiguousarray(x, np.float32), k, metric=faiss.METRIC_INNER_PRODUCT)
        return s.astype(np.float32), r.astype(np.int64)
    heap = faiss.ResultHeap(len(q), k, keep_max=True)
    xb = min(len(x), KNN_BLOCK_ROWS)
    qb = max(1, KNN_BLOCK_SCORES // xb)
    for j0 in range(0, len(x), xb):
        xt = np.asarray(x[j0:j0 + xb], np.float32).T
        for i0 in range(0, len(q), qb):
            s = np.ascontiguousarray(q[i0:i0 + qb] @ xt)
            heap.heaps.addn(s.shape[1], faiss.swig_ptr(s), j0, i0, len(s))
    heap.finalize()
    return heap.D, heap.I


def graph_beam(ef: int, k: int, rows: int, scaled: bool = True) -> int:
    """HNSW beam width for ``k`` results from a graph of ``rows``: at least ``ef`` and twice ``k``, and with
    ``scaled`` (the index's default beam, not one the caller set) both widened with the graph's size."""
    factor = max(1.0, rows / GRAPH_BEAM_ROWS) ** GRAPH_BEAM_POWER if scaled else 1.0
    return int(min(4096, math.ceil(factor * max(ef, 2.0 * k))))
_BLOCK = 32768
_SUPPORTED = '"auto", "Flat", "HNSW<M>", "IVF<n>,Flat"'


# ---------------------------------------------------------------------------------------------
# small pure helpers


def _normalise(x: np.ndarray) -> np.ndarray:
    x = np.ascontiguousarray(x, dtype=np.float32)
    n = np.linalg.norm(x, axis=1, keepdims=True)
    n[n == 0] = 1.0
    return x / n


def _int_option(options: dict[str, Any], key: str, default: int) -> int:
    """A positive integer backend option (the default when absent); anything else is an InvalidInputError."""
    v = options.get(key, default)
    if not is_positive_int(v):
        raise InvalidInputError(f"faiss backend option {key}={v!r}: expected a positive integer")
    return int(v)


def _float_option(options: dict[str, Any], key: str, default: float) -> float:
    """A positive finite number backend option (the default when absent)."""
    v = options.get(key, default)
    if isinstance(v, bool) or not isinstance(v, (int, float, np.number)) or not math.isfinite(v) or v <= 0:
        raise InvalidInputError(f"faiss backend option {key}={v!r}: expected a positive number")
    return float(v)


def parse_factory(factory: Optional[str]) -> tuple[str, Optional[int]]:
    """("auto"|"flat"|"hnsw"|"ivf", graph M or fixed nlist or None) for a factory string.

    "auto" is exact below the exact threshold and HNSW graphs over the sealed segments above it.
    Other strings raise InvalidInputError.
    """
    if factory is None or factory == "auto":
        return "auto", GRAPH_M
    if factory == "Flat":
        return "flat", None
    h = _HNSW_RE.match(str(factory))
    if h and 4 <= int(h.group(1)) <= 128:
        return "hnsw", int(h.group(1))
    m = _FACTORY_RE.match(str(factory))
    if m and 1 <= int(m.group(1)) <= IVF_NLIST_MAX:
        return "ivf", int(m.group(1))
    if m:  # a quantizer of more lists could never be trained (it needs a few vectors per list)
        raise InvalidInputError(f"FAISS backend factory {factory!r}: expected IVF<n>,Flat with n from 1 to "
                                f"{IVF_NLIST_MAX}")
    raise InvalidInputError(f"FAISS backend factory {factory!r} is not supported; supported: {_SUPPORTED}")


def auto_nlist(n: int, factor: float = 4.0) -> int:
    """Coarse lists for an IVF over ``n`` vectors (factor * sqrt(n), at least 16)."""
    return int(max(16, round(factor * math.sqrt(max(n, 1)))))


def auto_nprobe(nlist: int) -> int:
    """Default lists probed for ``nlist`` lists (nlist / 128, at least 16).

    On the synthetic clustered 1M set (tools/bench_backend.py) recall@10 is already 1.0 at 8 probes;
    32 probes of 4096 lists keep a margin for real embeddings at ~12 ms per query on 2 cores.
    """
    return int(min(nlist, max(16, round(nlist / 128))))


_POOLS: dict[str, ThreadPoolExecutor] = {}
_POOL_LOCK = threading.Lock()
#: a search of fewer queries than this runs segments side by side in threads (one FAISS thread each); a larger
#: batch lets FAISS's OpenMP threads split the queries instead
SEGMENT_THREADS_BELOW = 20


def _shared_pool(name: str) -> Optional[ThreadPoolExecutor]:
    """The process's pool of threads called ``name`` (one per core, at most 8), made on first use; None on one
    core."""
    pool = _POOLS.get(name)
    if pool is None and (os.cpu_count() or 1) >= 2:
        with _POOL_LOCK:
            pool = _POOLS.get(name)
            if pool is None:
                pool = _POOLS[name] = ThreadPoolExecutor(max_workers=min(8, os.cpu_count() or 1),
                                                         thread_name_prefix=name)
    return pool


def _segment_pool() -> Optional[ThreadPoolExecutor]:
    """The shared pool that searches the segments of a small query side by side (None on one core)."""
    return _shared_pool("faiss-segments")


def _rescore_pool() -> Optional[ThreadPoolExecutor]:
    """The pool that re-scores the blocks of a batch search side by side (None on one core). Its own, not the
    segments' pool: a batch search may run inside that pool's threads."""
    return _shared_pool("faiss-rescore")


@contextmanager
def _threads(n: int) -> Iterator[None]:
    """Run FAISS with ``n`` OpenMP threads (one thread keeps single-query latency steady on a busy machine)."""
    old = faiss.omp_get_max_threads()
    faiss.omp_set_num_threads(n)
    try:
        yield
    finally:
        faiss.omp_set_num_threads(old)


def _fsync_dir(folder: Path) -> None:
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _write_durable(path: Path, write) -> None:
    tmp = path.with_name(path.name + ".tmp" + secrets.token_hex(3))
    try:
        with open(tmp, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def _save_npy(path: Path, arr: np.ndarray) -> None:
    _write_durable(path, lambda f: np.save(f, np.ascontiguousarray(arr), allow_pickle=False))


def _save_json(path: Path, obj: Any) -> None:
    _write_durable(path, lambda f: f.write(json.dumps(obj, separators=(",", ":")).encode()))


def _encode_strings(values: Optional[np.ndarray], n: int) -> tuple[np.ndarray, list[str]]:
    """int32 codes (-1 = None) and the sorted vocabulary of a string column."""
    if values is None:
        return np.full(n, -1, np.int32), []
    vals = [None if v is None or (isinstance(v, float) and math.isnan(v)) else str(v) for v in values]
    vocab = sorted({v for v in vals if v is not None})
    index = {v: i for i, v in enumerate(vocab)}
    return np.array([-1 if v is None else index[v] for v in vals], np.int32), vocab


# ---------------------------------------------------------------------------------------------
# segments


@dataclass
class _SegmentData:
    """What a writer needs for a segment, in final row order (vectors may come lazily in blocks)."""

    ids: np.ndarray
    codes: np.ndarray  # (3, N) int32
    vocab: dict[str, list[str]]
    ts: np.ndarray
    vectors: Any  # callable (i0, i1) -> float32 block
    lists: Optional[np.ndarray] = None  # CSR offsets (nlist + 1,) for an IVF segment
    #: (a segment's .vec.npy, n): the first n rows are that file's first n rows (appended to when no other merge
    #: has, else copied by the kernel)
    prefix: Optional[tuple[Path, int]] = None


class _Segment:
    """A memory-mapped segment (with its HNSW graph when it has one)."""

    def __init__(self, folder: Path, name: str, rows: int, dim: int, graph: bool = False,
                 vectors_in_graph: bool = False, proj: int = 0):
        self.name = name
        self.seq = int(name.split("-")[1])
        graph = graph or vectors_in_graph or proj > 0
        #: (d, D) rows the graph's vectors are projected onto (None: the graph holds the vectors themselves)
        self.proj: Optional[np.ndarray] = None
        #: the file ``vec`` is a read-only mapping of
        self.vec_path = folder / f"{name}{_GRAPH_SUFFIX if vectors_in_graph else _VEC_SUFFIX}"
        try:
            meta = json.loads((folder / f"{name}.json").read_text())
            # plain ndarray views of the maps: indexing a np.memmap costs ~0.25 ms a call
            self.vec = np.broadcast_to(np.float32(0), (rows, dim)) if vectors_in_graph else \
                _map_vectors(folder / f"{name}{_VEC_SUFFIX}", rows, dim)
            ids = np.asarray(np.load(folder / f"{name}.ids.npy", mmap_mode="r"))
            aux = np.asarray(np.load(folder / f"{name}.aux.npy", mmap_mode="r"))
            ts = np.asarray(np.load(folder / f"{name}.ts.npy", mmap_mode="r"))
        except (OSError, ValueError) as exc:
            raise IndexCorruptError(f"vector segment {name} in {folder} cannot be read ({exc})") from None
        if self.vec.shape != (rows, dim) or ids.shape != (2, rows) or aux.shape != (8, rows):
            raise IndexCorruptError(f"vector segment {name}: shapes {self.vec.shape} disagree with {rows} x {dim}")
        self.rows = rows
        self.ids, self.kid = ids[0], ids[1]
        self.codes = aux[0:3]
        self.post = aux[3:6]
        self.tso, self.kpos = aux[6], aux[7]
        self.ts, self.tss = ts[0], ts[1]
        self.ts_valid = int(meta["ts_valid"])
        self.vocab = {f: list(meta["vocab"][f]) for f in STR_FIELDS}
        self.vindex = {f: {v: i for i, v in enumerate(self.vocab[f])} for f in STR_FIELDS}
        self.poff = {f: np.asarray(meta["postings"][f], np.int64) for f in STR_FIELDS}
        self.lists = None if meta.get("lists") is None else np.asarray(meta["lists"], np.int64)
        self.kind = "ivf" if self.lists is not None else "flat"
        self.nbytes = sum((folder / f"{name}{s}").stat().st_size for s in _SEG_SUFFIXES
                          if not (vectors_in_graph and s == _VEC_SUFFIX))
        self.graph: Optional[Any] = None
        #: (projection, the vectors projected by it) for the last projection asked for (``projected``)
        self._projected: Optional[tuple[np.ndarray, np.ndarray]] = None
        if graph:
            path = folder / f"{name}{_GRAPH_SUFFIX}"
            try:  # the graph's vector storage is memory-mapped, so opening costs little
                self.graph = _read_mapped_graph(path)
            except RuntimeError as exc:
                raise IndexCorruptError(f"vector segment {name}: graph {path.name} cannot be read "
                                        f"({str(exc).splitlines()[0]})") from None
            gdim = proj or dim
            if self.graph.ntotal != rows or self.graph.d != gdim:
                raise IndexCorruptError(f"vector segment {name}: graph of {self.graph.ntotal} x {self.graph.d}, "
                                        f"expected {rows} x {gdim}")
            if proj:
                ppath = folder / f"{name}{_PROJ_SUFFIX}"
                try:
                    self.proj = np.ascontiguousarray(np.load(ppath), np.float32)
                except (OSError, ValueError) as exc:
                    raise IndexCorruptError(f"vector segment {name}: projection {ppath.name} cannot be read "
                                            f"({exc})") from None
                if self.proj.shape != (proj, dim):
                    raise IndexCorruptError(f"vector segment {name}: projection of shape {self.proj.shape}, "
                                            f"expected {(proj, dim)}")
                self.nbytes += ppath.stat().st_size
            self.kind = "graph"
            self.nbytes += path.stat().st_size
            if vectors_in_graph:
                self.vec = _graph_vectors(self.graph, rows, dim)

    def find(self, ids: np.ndarray) -> np.ndarray:
        """Row of each id in this segment, -1 when absent (ignores tombstones)."""
        j = id_positions(self.kid, ids)
        out = np.full(j.shape, -1, np.int64)
        hit = j >= 0
        out[hit] = self.kpos[j[hit]]
        return out

    def projected(self, proj: np.ndarray) -> np.ndarray:
        """The segment's vectors projected by ``proj`` (d, D): (rows, d), kept for the last projection asked for."""
        kept = self._projected
        if kept is None or kept[0] is not proj:
            kept = (proj, np.ascontiguousarray(np.asarray(self.vec, np.float32) @ proj.T))
            self._projected = kept
        return kept[1]

    @functools.cached_property
    def copies(self) -> Optional[np.ndarray]:
        """``topk.copies`` of the segment's vectors (found on the first exact search of the whole segment)."""
        return copies(self.vec)

    @functools.cached_property
    def _decode(self) -> dict[str, np.ndarray]:
        """Per string field, its vocabulary as an object array ending in None (code -1)."""
        return {f: np.array(self.vocab[f] + [None], dtype=object) for f in STR_FIELDS}

    def fields(self, rows: Any) -> dict[str, np.ndarray]:
        """Decoded FIELDS of some rows (object strings, float64 times)."""
        out: dict[str, np.ndarray] = {}
        for fi, f in enumerate(STR_FIELDS):
            out[f] = self._decode[f][np.asarray(self.codes[fi][rows])]
        out["timestamp"] = np.asarray(self.ts[rows], np.float64)
        return out


_VEC_SUFFIX = ".vec.npy"
_SEG_SUFFIXES = (_VEC_SUFFIX, ".ids.npy", ".aux.npy", ".ts.npy", ".json")
_GRAPH_SUFFIX = ".hnsw"
_PROJ_SUFFIX = ".proj.npy"


def _reserve_storage(index: Any, nbytes: int, used: int = 0) -> None:
    """Give an HNSW index's flat storage (``used`` bytes filled) its final capacity: adding block by block then
    never reallocates (a growing vector briefly holds its old and new buffers: up to 2x the vectors in memory)."""
    try:
        codes = faiss.downcast_index(index.storage).codes  # type: ignore[attr-defined]
        codes.resize(max(nbytes, used))
        codes.resize(used)  # the capacity stays, and the filled bytes
    except (AttributeError, RuntimeError, MemoryError):  # no room to be had (out of memory): FAISS grows it as it adds
        pass


def _file_mapped(start: int, end: int, path: Path) -> bool:
    """Whether bytes ``start..end`` of this process are a read-only mapping of the file ``path`` (Linux
    /proc/self/maps)."""
    try:
        lines = Path("/proc/self/maps").read_text().splitlines()
    except OSError:
        return False
    want = str(path.resolve())
    for line in lines:
        parts = line.split(maxsplit=5)
        if len(parts) == 6 and parts[5] == want and "w" not in parts[1]:
            lo, hi = (int(v, 16) for v in parts[0].split("-"))
            if lo <= start and end <= hi:
                return True
    return False


def _page_range(arr: np.ndarray) -> tuple[int, int]:
    """Addresses of the whole pages inside ``arr``'s bytes (lo >= hi when there are none)."""
    page = mmap.PAGESIZE
    start = arr.__array_interface__["data"][0]
    return -(-start // page) * page, (start + arr.nbytes) // page * page


def _release_pages(arr: np.ndarray, path: Path) -> None:
    """Drop this process's resident pages of ``arr`` when it is a read-only mapping of the file ``path`` (they are
    read back from the page cache when next touched). Lowers the peak memory of growing a graph, whose file is
    read into memory while its mapping was paged in by searches. Anything else is left alone."""
    if _file_mapped(*_page_range(arr), path):
        _drop_mapped(arr)


@functools.lru_cache(maxsize=1)
def _madvise() -> Optional[Any]:
    """libc's madvise, or None where it cannot be loaded."""
    try:
        return ctypes.CDLL(None, use_errno=True).madvise
    except (OSError, AttributeError):
        return None


def _drop_mapped(arr: np.ndarray) -> None:
    """Drop this process's resident pages of ``arr``, a view of a read-only file mapping that nothing else in the
    process uses (whole pages inside it only; read back from the page cache if touched again)."""
    lo, hi = _page_range(arr)
    madvise = _madvise()
    if hi > lo and madvise is not None:  # elsewhere the pages stay until the mapping is closed
        madvise(ctypes.c_void_p(lo), ctypes.c_size_t(hi - lo), 4)  # MADV_DONTNEED


#: bytes copied between drops of the source pages when a graph file is read into memory
_COPY_BLOCK = 1 << 26


def _copy_mapped(dst: np.ndarray, src: np.ndarray) -> None:
    """``dst[:] = src`` (1-d) in blocks, dropping each block of the mapped ``src`` once copied."""
    step = max(1, _COPY_BLOCK // max(src.itemsize, 1))
    for i0 in range(0, src.size, step):
        dst[i0:i0 + step] = src[i0:i0 + step]
        _drop_mapped(src[i0:i0 + step])


#: blocks in which a graph file is read through before FAISS maps it (``_read_mapped_graph``)
PREREAD_BLOCK = 1 << 23


def _read_mapped_graph(path: Path) -> Any:
    """The HNSW index in ``path`` with its codes and links memory-mapped (``IO_FLAG_MMAP_IFC``).

    FAISS maps the file with ``MADV_RANDOM`` and then touches every page of the links while it reads them, so on a
    cold page cache each 4 KB page is its own disk read: 1.8 s for a 512k-row graph (139 of its 229 MB). The file
    is first read through in large sequential blocks (0.34 s cold; 0.02 s when the pages are cached already), which
    also leaves the codes cached for the first query (docs/storage.md, "Opening on a cold page cache")."""
    block = memoryview(bytearray(PREREAD_BLOCK))
    try:
        with open(path, "rb", buffering=0) as fh:
            if hasattr(os, "posix_fadvise"):
                os.posix_fadvise(fh.fileno(), 0, 0, os.POSIX_FADV_SEQUENTIAL)
            while fh.readinto(block):
                pass
    except OSError:
        pass  # FAISS names what is wrong with the file below
    return faiss.read_index(str(path), faiss.IO_FLAG_MMAP_IFC)


def _graph_copy(path: Path, capacity_rows: int, m: int) -> Any:
    """A private, growable in-memory copy of the HNSW index in the file ``path`` (float rows or 8-bit codes, with
    the ranges they were coded with) whose storage already has room for ``capacity_rows`` rows. The file is
    memory-mapped and copied block by block (each block's pages dropped once copied) into buffers allocated at
    their final size, so the copy never holds the vectors twice: reading the file whole and then reserving the
    room reallocates, briefly holding the old and the new buffer (about 1 GB more at the peak of growing a
    512k-row graph of float rows). Byte for byte the index ``faiss.read_index`` gives (tested)."""
    mapped: Any = faiss.read_index(str(path), faiss.IO_FLAG_MMAP_IFC)  # SWIG proxies: attributes typed loosely
    try:
        src_store: Any = faiss.downcast_index(mapped.storage)
        index: Any = _empty_graph_like(mapped, src_store, m, path)
        old: Any = mapped.hnsw
        index.hnsw = old  # every field; the links are still a view of the mapping
        links_n = old.neighbors.size()
        index.hnsw.neighbors = faiss.MaybeOwnedVectorInt32()  # owned, so that adding can grow it
        links = index.hnsw.neighbors
        links.resize(links_n)
        if links_n:
            _copy_mapped(faiss.rev_swig_ptr(links.data(), links_n),
                         faiss.rev_swig_ptr(old.neighbors.data(), links_n))
        store: Any = faiss.downcast_index(index.storage)
        used = src_store.codes.size()
        _reserve_storage(index, capacity_rows * int(src_store.code_size), used)
        if store.codes.size() != used:  # the room could not be reserved (out of memory): grow as FAISS does
            store.codes.resize(used)
        if used:
            _copy_mapped(faiss.rev_swig_ptr(store.codes.data(), used), faiss.rev_swig_ptr(src_store.codes.data(), used))
        store.ntotal = mapped.ntotal
        index.ntotal = mapped.ntotal
        return index
    finally:
        del mapped  # unmaps the file


def _empty_graph_like(mapped: Any, src_store: Any, m: int, path: Path) -> Any:
    """An empty HNSW index of the same kind as ``mapped`` (float rows, or 8-bit codes with its trained ranges)."""
    if isinstance(mapped, faiss.IndexHNSWFlat) and isinstance(src_store, faiss.IndexFlat):
        return faiss.IndexHNSWFlat(mapped.d, m, mapped.metric_type)
    if isinstance(mapped, faiss.IndexHNSWSQ) and isinstance(src_store, faiss.IndexScalarQuantizer) \
            and src_store.sq.qtype == _QT_8BIT:
        index: Any = faiss.IndexHNSWSQ(mapped.d, _QT_8BIT, m, mapped.metric_type)
        store: Any = faiss.downcast_index(index.storage)
        store.sq.trained = src_store.sq.trained
        store.is_trained = index.is_trained = True
        return index
    raise IndexCorruptError(f"graph {path.name} holds a {type(mapped).__name__}, expected an IndexHNSWFlat or an "
                            f"8-bit IndexHNSWSQ")


def _new_graph(dim: int, m: int, codes: str, sample: np.ndarray) -> Any:
    """An empty HNSW index over ``dim`` dimensions keeping its rows as ``codes`` (GRAPH_CODES), its ranges trained
    on ``sample`` for 8-bit codes."""
    index: Any
    if codes == "sq8":
        index = faiss.IndexHNSWSQ(dim, _QT_8BIT, m, faiss.METRIC_INNER_PRODUCT)
        index.train(np.ascontiguousarray(sample, np.float32))
    else:
        index = faiss.IndexHNSWFlat(dim, m, faiss.METRIC_INNER_PRODUCT)
    index.hnsw.efConstruction = GRAPH_EF_CONSTRUCTION
    return index


def _graph_codes(graph: Any) -> np.ndarray:
    """A read-only byte view of an HNSW index's storage (float rows or codes; memory-mapped when the index was
    read with IO_FLAG_MMAP_IFC); valid while ``graph`` lives."""
    store: Any = faiss.downcast_index(graph.storage)
    n = int(store.ntotal) * int(store.code_size)
    if n == 0:
        return np.zeros(0, np.uint8)
    view = faiss.rev_swig_ptr(store.codes.data(), n)
    view.flags.writeable = False
    return view


def _codes_kind(graph: Any) -> str:
    """How an HNSW index keeps its rows: "sq8" or "float"."""
    return "sq8" if isinstance(graph, faiss.IndexHNSWSQ) else "float"


def _graph_vectors(graph: Any, rows: int, dim: int) -> np.ndarray:
    """A read-only (rows, dim) view of an HNSW index's flat storage (memory-mapped when the index was read
    with IO_FLAG_MMAP_IFC); valid while ``graph`` lives."""
    storage = faiss.downcast_index(graph.storage)
    if not isinstance(storage, faiss.IndexFlat) or storage.ntotal != rows:
        raise IndexCorruptError(f"graph storage of {type(storage).__name__} with {storage.ntotal} rows, "
                                f"expected a flat storage of {rows}")
    if rows == 0:
        return np.zeros((0, dim), np.float32)
    return _graph_codes(graph).view(np.float32).reshape(rows, dim)


def _npy_header(f: Any, what: str, dim: int) -> tuple[int, int]:
    """Check the .npy header at the start of the open file ``f`` (float32 rows of ``dim``): (the data's offset,
    the rows the header says)."""
    try:
        version = np.lib.format.read_magic(f)
        shape, fortran, dtype = (np.lib.format.read_array_header_1_0(f) if version == (1, 0)
                                 else np.lib.format.read_array_header_2_0(f))
    except ValueError as exc:
        raise IndexCorruptError(f"vector file {what} cannot be read ({exc})") from None
    if dtype != np.dtype("<f4") or fortran or len(shape) != 2 or shape[1] != dim:
        raise IndexCorruptError(f"vector file {what}: {dtype} {shape}, expected float32 rows of {dim}")
    return int(f.tell()), int(shape[0])


def _map_vectors(path: Path, rows: int, dim: int) -> np.ndarray:
    """The first ``rows`` rows of the float32 .npy file ``path``, memory-mapped read-only, as a plain ndarray
    view (indexing a np.memmap costs ~0.25 ms a call). The file may hold more rows than its header says and more
    than ``rows`` (a grown graph's file, shared with the graphs it grew from and into: ``_append_rows``)."""
    with open(path, "rb") as f:
        offset, first = _npy_header(f, path.name, dim)
        size = os.fstat(f.fileno()).st_size
    # the header counts the rows of the first segment that wrote the file, which every later one extends
    if first > rows:
        raise IndexCorruptError(f"vector file {path.name}: its header says {first} rows, expected at most {rows}")
    if size < offset + rows * dim * 4:
        raise IndexCorruptError(f"vector file {path.name} holds {(size - offset) // (4 * dim)} rows, expected {rows}")
    if rows == 0:
        return np.zeros((0, dim), np.float32)
    return np.asarray(np.memmap(path, np.float32, "r", offset, (rows, dim)))


def _append_rows(dst: Path, src: Path, rows: int, dim: int, write: Any) -> bool:
    """Make ``dst`` a hard link of the .npy file ``src``, whose first ``rows`` rows are a grown graph's first rows,
    and append the others (``write(f)``), durably: the merge then writes only its new rows instead of copying the
    graph's (2 KB a row). Only when ``src`` holds exactly ``rows`` rows, under an exclusive ``flock`` on it: rows
    already appended (by a merge not committed, or built by another process meanwhile) leave the file to that
    merge, and the caller copies instead (False; also where hard links or locks are not to be had). Bytes that
    any state names are never written: every state that names the file names at most its first rows, and the
    rows of a merge that is never committed stay as unread bytes past them."""
    if fcntl is None:  # pragma: no cover - not on Linux
        return False
    try:
        f = open(src, "r+b")
    except OSError:
        return False
    with f:
        try:
            fcntl.flock(f.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:  # another merge is appending to it
            return False
        try:
            offset, _ = _npy_header(f, src.name, dim)
            if os.fstat(f.fileno()).st_size != offset + rows * dim * 4:
                return False
            os.link(src, dst)
        except (OSError, IndexCorruptError):
            return False
        try:
            f.seek(0, os.SEEK_END)
            write(f)
            f.flush()
            os.fsync(f.fileno())
        except BaseException:
            dst.unlink(missing_ok=True)
            raise
    return True


def _copy_rows(f: Any, src: Path, rows: int, dim: int) -> None:
    """Append the first ``rows`` rows of the float32 .npy file ``src`` to the open file ``f``: copied inside the
    kernel (``os.copy_file_range``) where it can be, so the rows pass through no mapping of this process; else
    read and written in blocks."""
    f.flush()
    with open(src, "rb") as g:
        offset, _ = _npy_header(g, src.name, dim)
        left = rows * dim * 4
        copy = getattr(os, "copy_file_range", None)
        while left > 0 and copy is not None:
            try:
                done = copy(g.fileno(), f.fileno(), left, offset)
            except OSError:  # no kernel copy here (file system, kernel): the plain way below
                break
            if done <= 0:
                break
            offset, left = offset + done, left - done
        f.seek(0, os.SEEK_END)
        g.seek(offset)
        while left > 0:
            chunk = g.read(min(left, 1 << 24))
            if not chunk:
                raise IndexCorruptError(f"vector segment file {src.name} holds fewer than {rows} rows")
            f.write(chunk)
            left -= len(chunk)


def _write_segment(folder: Path, name: str, data: _SegmentData, dim: int, vectors: bool = True) -> None:
    """Write a segment's files durably (vectors streamed in blocks; not at all when ``vectors`` is False: a
    graph segment's vectors are in its graph)."""
    n = len(data.ids)
    kord = np.argsort(data.ids, kind="stable")
    post = np.empty((3, n), np.int32)
    poff = {}
    for fi, f in enumerate(STR_FIELDS):
        c = data.codes[fi]
        o = np.argsort(c, kind="stable")
        post[fi] = o
        poff[f] = np.searchsorted(c[o], np.arange(-1, len(data.vocab[f]) + 1)).tolist()
    tso = np.argsort(data.ts, kind="stable")  # NaN sort last
    aux = np.concatenate([data.codes, post, tso[None], kord[None]]).astype(np.int32)
    meta = {
        "rows": n,
        "vocab": data.vocab,
        "postings": poff,
        "ts_valid": int(np.count_nonzero(~np.isnan(data.ts))),
        "lists": None if data.lists is None else [int(v) for v in data.lists],
    }

    def write_rows(f: Any, start: int) -> None:
        for i0 in range(start, n, _BLOCK):
            block = np.ascontiguousarray(data.vectors(i0, min(n, i0 + _BLOCK)), np.float32)
            f.write(block.data.cast("B"))

    def write_vectors(f: Any) -> None:
        np.lib.format.write_array_header_1_0(f, {"descr": "<f4", "fortran_order": False, "shape": (n, dim)})
        start = 0
        if data.prefix is not None:
            start = data.prefix[1]
            _copy_rows(f, data.prefix[0], start, dim)
        write_rows(f, start)

    if vectors:
        path = folder / f"{name}{_VEC_SUFFIX}"
        prefix = data.prefix
        if prefix is None or not _append_rows(path, prefix[0], prefix[1], dim, lambda f: write_rows(f, prefix[1])):
            _write_durable(path, write_vectors)
    _save_npy(folder / f"{name}.ids.npy", np.stack([data.ids, data.ids[kord]]).astype(np.int64))
    _save_npy(folder / f"{name}.aux.npy", aux)
    _save_npy(folder / f"{name}.ts.npy", np.stack([data.ts, data.ts[tso]]).astype(np.float64))
    _save_json(folder / f"{name}.json", meta)


def _files_of(state: dict[str, Any]) -> set[str]:
    """Every file name a state refers to."""
    out: set[str] = set()
    for s in state.get("segments", []):
        out.update(s["name"] + suf for suf in _SEG_SUFFIXES if not (suf == _VEC_SUFFIX and s.get("vectors") == "graph"))
        if s.get("graph"):
            out.add(s["name"] + _GRAPH_SUFFIX)
        if s.get("proj"):
            out.add(s["name"] + _PROJ_SUFFIX)
    if state.get("tombstones"):
        out.add(state["tombstones"]["file"])
    if state.get("quantizer"):
        out.add(state["quantizer"]["file"])
    return out


# ---------------------------------------------------------------------------------------------
# filters compiled against one segment


#: a filter on a string field compares the rows' codes with each of up to this many codes; more go through a
#: lookup table
CODE_COMPARES = 8


def _in_codes(values: np.ndarray, codes: np.ndarray, n_codes: int) -> np.ndarray:
    """``np.isin(values, codes)`` for codes of a field with ``n_codes`` values (-1: none). ``np.isin`` sorts:
    2.3 ms over 512k rows for one code, where a comparison takes 0.03 ms (a lookup table 0.6 ms)."""
    values = np.asarray(values)
    if len(codes) <= CODE_COMPARES:
        out = np.zeros(values.shape, bool)
        for c in np.asarray(codes).tolist():
            out |= values == c
        return out
    table = np.zeros(n_codes + 1, bool)
    table[np.asarray(codes, np.int64) + 1] = True
    return table[values.astype(np.int64) + 1]


class _SegFilter:
    """A SearchFilter in one segment's codes; ``nothing`` when no row of the segment can pass."""

    def __init__(self, seg: _Segment, flt: SearchFilter):
        self.flt = flt
        self.nothing = False
        self.conds: list[tuple[int, np.ndarray]] = []  # (field index, allowed codes)
        self.excl: Optional[np.ndarray] = None
        for fi, (f, want) in enumerate(zip(STR_FIELDS, (flt.cameras, flt.sources, flt.tracks))):
            if want is not None:
                codes = np.array(sorted(seg.vindex[f][w] for w in set(want) if w in seg.vindex[f]), np.int32)
                if codes.size == 0:
                    self.nothing = True
                self.conds.append((fi, codes))
        if flt.exclude_cameras:
            ex = [seg.vindex["camera"][c] for c in set(flt.exclude_cameras) if c in seg.vindex["camera"]]
            self.excl = np.array(sorted(ex), np.int32) if ex else None
        self.timed = flt.time_from is not None or flt.time_to is not None
        if flt.ids is not None and flt.ids.size == 0:
            self.nothing = True

    def mask(self, seg: _Segment, rows: Any) -> np.ndarray:
        """Which of ``rows`` (a slice or row array) pass."""
        keep: Optional[np.ndarray] = None

        def both(m: np.ndarray) -> None:
            nonlocal keep
            keep = m if keep is None else keep & m

        for fi, codes in self.conds:
            both(_in_codes(seg.codes[fi][rows], codes, len(seg.vocab[STR_FIELDS[fi]])))
        if self.excl is not None:
            both(~_in_codes(seg.codes[0][rows], self.excl, len(seg.vocab["camera"])))
        if self.timed:
            t = np.asarray(seg.ts[rows])
            ok = ~np.isnan(t)
            if self.flt.time_from is not None:
                ok &= t >= self.flt.time_from
            if self.flt.time_to is not None:
                ok &= t <= self.flt.time_to
            both(ok)
        if self.flt.ids is not None:
            ids = np.asarray(seg.ids[rows])
            allow = self.flt.ids
            j = np.minimum(np.searchsorted(allow, ids), len(allow) - 1)
            both(allow[j] == ids)
        if keep is None:
            n = len(range(seg.rows)[rows]) if isinstance(rows, slice) else len(rows)
            keep = np.ones(n, bool)
        return keep

    def candidates(self, seg: _Segment, limit: int) -> tuple[Optional[np.ndarray], float]:
        """(rows of the most selective condition when at most ``limit``, else None; estimated pass fraction)."""
        n = max(seg.rows, 1)
        options: list[tuple[int, Any]] = []
        for fi, codes in self.conds:
            off = seg.poff[STR_FIELDS[fi]]
            spans = [(int(off[c + 1]), int(off[c + 2])) for c in codes]
            options.append((sum(b - a for a, b in spans), ("post", fi, spans)))
        if self.excl is not None:
            off = seg.poff["camera"]
            options.append((seg.rows - sum(int(off[c + 2] - off[c + 1]) for c in self.excl), None))
        if self.timed:
            valid = seg.tss[: seg.ts_valid]
            lo = 0 if self.flt.time_from is None else int(np.searchsorted(valid, self.flt.time_from, "left"))
            hi = seg.ts_valid if self.flt.time_to is None else int(np.searchsorted(valid, self.flt.time_to, "right"))
            options.append((max(0, hi - lo), ("time", lo, max(lo, hi))))
        if self.flt.ids is not None:
            pos = seg.find(self.flt.ids)
            pos = np.sort(pos[pos >= 0])
            options.append((len(pos), ("rows", pos)))
        if not options:
            return None, 1.0
        frac = float(np.prod([c / n for c, _ in options]))
        best = min((o for o in options if o[1] is not None), key=lambda o: o[0], default=None)
        if best is None or best[0] > limit:
            return None, frac
        kind = best[1][0]
        if kind == "post":
            _, fi, spans = best[1]
            rows = np.concatenate([np.asarray(seg.post[fi][a:b]) for a, b in spans] or [np.zeros(0, np.int32)])
        elif kind == "time":
            rows = np.asarray(seg.tso[best[1][1]:best[1][2]])
        else:
            rows = best[1][1]
        rows = np.sort(rows.astype(np.int64))
        return rows[self.mask(seg, rows)], frac


# ---------------------------------------------------------------------------------------------
# the visible state


@dataclass
class _View:
    state: dict[str, Any]
    segments: list[_Segment] = field(default_factory=list)
    dead: list[Optional[np.ndarray]] = field(default_factory=list)  # per segment: bool mask or None
    ndead: list[int] = field(default_factory=list)
    tomb_ids: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))
    tomb_gen: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))
    centroids: Optional[np.ndarray] = None
    quantizer: Optional[Any] = None  # faiss.IndexFlatIP over the centroids
    count: int = 0

    @property
    def nlist(self) -> int:
        return 0 if self.centroids is None else len(self.centroids)


@dataclass(eq=False)
class _MergeJob:
    """A merge planned on one visible state (``view``), built off the write lock, applied to a later state."""

    seq: int  # the generation of the state it was planned on: names its files
    view: _View
    merge: set[int]  # positions in view.segments
    retrain: bool
    base: Optional[int]  # the graph segment that grows, or None
    consumed: list[str]  # names of the segments it replaces
    planned_on: str  # how sealed segments were made when planned (graph, quantizer): must be unchanged to apply
    files: list[str] = field(default_factory=list)  # what it wrote (segment names and file names)
    segment: Optional[dict[str, Any]] = None  # the new segment's state entry (None: every row was removed)
    changes: dict[str, Any] = field(default_factory=dict)  # state entries it sets (graph, quantizer, search)
    built: bool = False


def _sealing(state: dict[str, Any]) -> dict[str, Any]:
    """The parts of a state that say how sealed segments are made: a merge applies only if they are unchanged."""
    return {"graph": state.get("graph"), "quantizer": state.get("quantizer")}


@register_backend
class FaissBackend(VectorBackend):
    """Append-only segments of L2-normalised float32 vectors; exact search below a size, IVF above it."""

    name = "faiss"

    def __init__(self, folder: Path, dim: int, options: dict[str, Any]):
        super().__init__(folder, dim, options)
        if self.dim <= 0:
            raise InvalidInputError(f"dimension {dim}: expected a positive integer")
        self.mode, size = parse_factory(self.options.get("factory"))
        #: links per node of the segment graphs ("auto" and "HNSW<M>"), or the fixed nlist of "IVF<n>,Flat"
        self.graph_m: Optional[int] = size if self.mode in ("auto", "hnsw") else None
        self.fixed_nlist: Optional[int] = size if self.mode == "ivf" else None
        o = self.options
        self.exact_threshold = _int_option(o, "exact_threshold", EXACT_THRESHOLD)
        self.flat_limit = _int_option(o, "flat_limit", 32768)
        self.merge_factor = _int_option(o, "merge_factor", 8)
        self.graph_rows = _int_option(o, "graph_rows", GRAPH_ROWS)
        #: the largest graph a background merge grows (it starts a new graph past it)
        self.background_graph_rows = _int_option(o, "background_graph_rows",
                                                 max(1, self.graph_rows // BACKGROUND_GROWTH_DIVISOR))
        #: the dimension new graphs project their rows to (None: chosen per graph by graph_projection; the
        #: vectors' own dimension or more: never projected)
        gd = o.get("graph_dims")
        if gd not in (None, "auto") and not is_positive_int(gd):
            raise InvalidInputError(f"faiss backend option graph_dims={gd!r}: expected \"auto\" or a positive integer")
        self.graph_dims: Optional[int] = None if gd in (None, "auto") else int(gd)
        #: how new projected graphs keep their rows (GRAPH_CODES)
        self.graph_codes = o.get("graph_codes", GRAPH_CODES)
        if self.graph_codes not in _GRAPH_CODE_KINDS:
            raise InvalidInputError(f"faiss backend option graph_codes={self.graph_codes!r}: expected one of "
                                    f"{', '.join(map(repr, _GRAPH_CODE_KINDS))}")
        self.retrain_growth = _float_option(o, "retrain_growth", 4.0)
        self.nlist_factor = _float_option(o, "nlist_factor", 4.0)
        self.train_points = _int_option(o, "train_points_per_list", 32)
        if "nprobe" in o and o["nprobe"] is not None:
            SearchParams(nprobe=o["nprobe"])  # validates
        self._view = _View(state=self.empty_state())
        self._cache: dict[str, _Segment] = {}
        self._lock = threading.Lock()
        #: merges being built (their files are not yet in any state: cleanup leaves them alone)
        self._building: set[_MergeJob] = set()
        self._gpu_res: Optional[Any] = None  # faiss.StandardGpuResources, made on first GPU search
        self._gpus = faiss.get_num_gpus()

    @classmethod
    def default_options(cls, dim: int) -> dict[str, Any]:
        return {"factory": "auto", "exact_threshold": EXACT_THRESHOLD, "flat_limit": 32768, "merge_factor": 8,
                "graph_rows": GRAPH_ROWS}

    def empty_state(self) -> dict[str, Any]:
        return {"format": FORMAT, "dim": self.dim, "segments": [], "tombstones": None, "quantizer": None,
                "search": {"nprobe": None}}

    # -- lifecycle ------------------------------------------------------------------------
    def load(self, state: dict[str, Any]) -> None:
        view = self._open(state)
        with self._lock:
            self._view = view
            self._cache = {s.name: s for s in view.segments}

    def _segment(self, entry: dict[str, Any]) -> _Segment:
        """The segment a state entry names, opened."""
        return _Segment(self.folder, entry["name"], int(entry["rows"]), self.dim, graph=bool(entry.get("graph")),
                        vectors_in_graph=entry.get("vectors") == "graph", proj=int(entry.get("proj") or 0))

    def _open(self, state: dict[str, Any]) -> _View:
        if state.get("format") != FORMAT or int(state.get("dim", -1)) != self.dim:
            raise IndexCorruptError(
                f"vector state format {state.get('format')!r} / dim {state.get('dim')!r} does not match "
                f"this backend (format {FORMAT}, dim {self.dim})"
            )
        view = _View(state=json.loads(json.dumps(state)))
        for s in state["segments"]:
            seg = self._cache.get(s["name"]) or self._segment(s)
            view.segments.append(seg)
        if state.get("tombstones"):
            t = np.load(self.folder / state["tombstones"]["file"])
            view.tomb_ids, view.tomb_gen = t[0].copy(), t[1].copy()
        for seg in view.segments:
            applies = view.tomb_ids[view.tomb_gen > seg.seq]
            pos = seg.find(applies) if applies.size else np.zeros(0, np.int64)
            pos = pos[pos >= 0]
            if pos.size:
                d = np.zeros(seg.rows, bool)
                d[pos] = True
                view.dead.append(d)
            else:
                view.dead.append(None)
            view.ndead.append(int(pos.size))
        view.count = sum(s.rows for s in view.segments) - sum(view.ndead)
        q = state.get("quantizer")
        if q:
            old = self._view
            if old.state.get("quantizer") and old.state["quantizer"]["file"] == q["file"]:
                view.centroids, view.quantizer = old.centroids, old.quantizer
            else:
                view.centroids = np.ascontiguousarray(np.load(self.folder / q["file"]), np.float32)
                view.quantizer = faiss.IndexFlatIP(self.dim)
                view.quantizer.add(view.centroids)
        return view

    def prepare(self, generation: int, changes: Changes) -> dict[str, Any]:
        view = self._view
        state = json.loads(json.dumps(view.state))
        self.folder.mkdir(parents=True, exist_ok=True)
        add_ids = np.asarray(changes.add_ids, np.int64).reshape(-1)
        rm = np.unique(np.asarray(changes.remove_ids, np.int64).reshape(-1))
        if add_ids.size:
            if changes.add_vectors is None:
                raise InvalidInputError("changes add ids without vectors")
            vec = np.asarray(changes.add_vectors)
            if vec.ndim != 2 or vec.shape != (add_ids.size, self.dim):
                raise InvalidInputError(f"vectors of shape {vec.shape}: expected ({add_ids.size}, {self.dim})")
            if not np.all(np.isfinite(vec)):
                raise InvalidInputError("vectors contain NaN or infinite values")
            if np.unique(add_ids).size != add_ids.size:
                raise InvalidInputError("changes add the same id twice")
            clash = self._contains(view, add_ids) & ~np.isin(add_ids, rm)
            if clash.any():
                raise InvalidInputError(f"ids already in the index: {add_ids[clash][:10].tolist()}")
        rm = rm[self._contains(view, rm)] if rm.size else rm
        names: list[str] = []
        if rm.size:
            ids = np.concatenate([view.tomb_ids, rm])
            gens = np.concatenate([view.tomb_gen, np.full(rm.size, generation, np.int64)])
            order = np.lexsort((-gens, ids))
            ids, gens = ids[order], gens[order]
            first = np.r_[True, ids[1:] != ids[:-1]]
            fname = self._new_name("tomb", generation) + ".npy"
            _save_npy(self.folder / fname, np.stack([ids[first], gens[first]]))
            names.append(fname)
            state["tombstones"] = {"file": fname, "count": int(first.sum())}
        try:
            if add_ids.size:
                order = np.argsort(add_ids, kind="stable")
                x = _normalise(vec)[order]
                data = self._data_from_changes(add_ids[order], changes.add_fields, order, x)
                name = self._new_name("seg", generation)
                _write_segment(self.folder, name, data, self.dim)
                names.append(name)
                state["segments"].append({"name": name, "rows": int(add_ids.size), "kind": "flat"})
        except BaseException:
            self._remove_files(names)
            raise
        _fsync_dir(self.folder)
        return state

    def _data_from_changes(self, ids: np.ndarray, flds: dict[str, np.ndarray], order: np.ndarray,
                           x: np.ndarray) -> _SegmentData:
        n = ids.size
        codes = np.empty((3, n), np.int32)
        vocab = {}
        for fi, f in enumerate(STR_FIELDS):
            col = flds.get(f)
            if col is not None and len(col) != n:
                raise InvalidInputError(f"field {f!r} has {len(col)} values for {n} vectors")
            c, vocab[f] = _encode_strings(None if col is None else np.asarray(col, dtype=object)[order], n)
            codes[fi] = c
        t = flds.get("timestamp")
        if t is None:
            ts = np.full(n, np.nan)
        else:
            if len(t) != n:
                raise InvalidInputError(f"field 'timestamp' has {len(t)} values for {n} vectors")
            ts = np.array([np.nan if v is None else float(v) for v in np.asarray(t, dtype=object)[order]], np.float64)
        return _SegmentData(ids=ids, codes=codes, vocab=vocab, ts=ts, vectors=lambda a, b: x[a:b])

    def _new_name(self, kind: str, generation: int) -> str:
        return f"{kind}-{int(generation):06d}-{secrets.token_hex(4)}"

    def files(self, state: dict[str, Any]) -> set[str]:
        return _files_of(state)

    def discard(self, state: dict[str, Any]) -> None:
        self._remove_files(sorted(_files_of(state) - _files_of(self._view.state)))

    def _remove_files(self, names: Sequence[str]) -> None:
        for n in names:
            if n.startswith("seg-") and "." not in n:
                for suf in _SEG_SUFFIXES + (_GRAPH_SUFFIX, _PROJ_SUFFIX):
                    (self.folder / (n + suf)).unlink(missing_ok=True)
            else:
                (self.folder / n).unlink(missing_ok=True)

    def cleanup(self, state: dict[str, Any], grace_seconds: float = 60.0) -> None:
        keep = _files_of(state)
        building = tuple(f for job in list(self._building) for f in job.files)
        now = time.time()
        if not self.folder.is_dir():
            return
        for p in sorted(self.folder.iterdir()):
            if p.name in keep or not _NAME_RE.match(p.name) or p.name.startswith(building or ("\0",)):
                continue
            try:
                if now - p.stat().st_mtime >= grace_seconds:
                    p.unlink()
                    log.debug("removed unreferenced vector file %s", p.name)
            except FileNotFoundError:
                pass
            except OSError as exc:  # best effort: the file is no longer part of the index; a later cleanup retries
                log.warning("%s: cannot remove this unreferenced vector file (%s)", p, exc.strerror or exc)

    def close(self) -> None:
        with self._lock:
            self._view = _View(state=self.empty_state())
            self._cache = {}

    # -- compaction ---------------------------------------------------------------------------
    def compact(self, generation: int, force: bool = False) -> Optional[dict[str, Any]]:
        job = self.plan_merge(generation, force=force)
        if job is None:
            return None
        self.build_merge(job)
        return self.apply_merge(job, generation)

    def plan_merge(self, generation: int, force: bool = False, background: bool = False) -> Optional["_MergeJob"]:
        """The merge due on the visible state (all segments with ``force``), or None. Its new segment is named
        with ``generation``, so removals committed after that generation hide its rows like any older segment's.
        A ``background`` merge grows no graph past ``background_graph_rows``."""
        view = self._view
        if view.count == 0 and not view.segments:
            return None
        plan = self._plan(view, force, self.background_graph_rows if background else self.graph_rows)
        if plan is None:
            return None
        merge, retrain, base = plan
        return _MergeJob(seq=int(generation), view=view, merge=merge, retrain=retrain, base=base,
                         consumed=[view.segments[i].name for i in sorted(merge)],
                         planned_on=json.dumps(_sealing(view.state), sort_keys=True))

    def build_merge(self, job: "_MergeJob", threads: Optional[int] = None) -> None:
        """Write the merged segment (and a new quantizer) of ``job``; needs no write lock: it only reads the
        immutable files of the state it was planned on and writes files no state refers to yet."""
        view = job.view
        self._building.add(job)
        try:
            centroids = view.centroids
            changes: dict[str, Any] = {}
            if job.retrain and self.graph_m is not None:  # graphs need no training: sealed segments get one
                changes["graph"] = {"m": self.graph_m, "ef_construction": GRAPH_EF_CONSTRUCTION}
                changes["search"] = {**view.state["search"],
                                     "ef_search": self.options.get("ef_search") or GRAPH_EF_SEARCH}
            elif job.retrain:
                centroids = self._train(view)
                qname = self._new_name("quant", job.seq) + ".npy"
                job.files.append(qname)
                _save_npy(self.folder / qname, centroids)
                changes["quantizer"] = {"file": qname, "nlist": len(centroids), "trained_rows": view.count}
                changes["search"] = {**view.state["search"],
                                     "nprobe": self.options.get("nprobe") or auto_nprobe(len(centroids))}
            graph = bool(changes.get("graph", view.state.get("graph")))
            name = self._new_name("seg", job.seq)
            job.files.append(name)
            with _threads(threads or faiss.omp_get_max_threads()):
                rows, proj = self._merge(view, job.merge, centroids, name, graph=graph, base=job.base)
            if rows:
                kind = "graph" if graph else "ivf" if centroids is not None and self.mode != "flat" else "flat"
                store = {"graph": True, "proj": proj} if proj else {"graph": True, "vectors": "graph"}
                job.segment = {"name": name, "rows": rows, "kind": kind, **(store if graph else {})}
            else:
                self._remove_files([name])
                job.files.remove(name)
            job.changes = changes
            job.built = True
            _fsync_dir(self.folder)
        except BaseException:
            self.abandon_merge(job)
            raise

    def apply_merge(self, job: "_MergeJob", generation: int) -> Optional[dict[str, Any]]:
        """The visible state with the built ``job`` in place of the segments it merged, to commit as
        ``generation`` (writer only); None, with the job's files removed, when a commit since the plan merged
        one of those segments or changed how segments are sealed."""
        view = self._view
        present = {s["name"] for s in view.state["segments"]}
        missing = [f for f in _files_of({"segments": [job.segment] if job.segment else [],
                                         "quantizer": job.changes.get("quantizer")})
                   if not (self.folder / f).exists()]
        if (not job.built or not set(job.consumed) <= present or missing
                or json.dumps(_sealing(view.state), sort_keys=True) != job.planned_on):
            log.info("merge of %d segments planned at generation %d no longer applies; dropped",
                     len(job.consumed), job.seq)
            self.abandon_merge(job)
            return None
        self._building.discard(job)
        state = json.loads(json.dumps(view.state))
        state.update(json.loads(json.dumps(job.changes)))
        consumed = set(job.consumed)
        kept = [s for s in state["segments"] if s["name"] not in consumed]
        stays = [seg for seg in view.segments if seg.name not in consumed]
        if job.segment is not None:
            kept.append(job.segment)
            seg = self._segment(job.segment)
            self._cache.setdefault(seg.name, seg)
            stays.append(seg)
        state["segments"] = kept
        # tombstones that still hide a row of a segment that stays (the merged one included: removals committed
        # after the plan hide its rows, which carry the plan's generation)
        if view.tomb_ids.size:
            alive = np.zeros(view.tomb_ids.size, bool)
            for seg in stays:
                alive |= (seg.find(view.tomb_ids) >= 0) & (view.tomb_gen > seg.seq)
            if alive.all():
                pass
            elif alive.any():
                fname = self._new_name("tomb", generation) + ".npy"
                _save_npy(self.folder / fname, np.stack([view.tomb_ids[alive], view.tomb_gen[alive]]))
                state["tombstones"] = {"file": fname, "count": int(alive.sum())}
            else:
                state["tombstones"] = None
        _fsync_dir(self.folder)
        base = job.view.segments[job.base].name if job.base is not None else None
        log.info("compacted %d segments into %s (%d rows)%s", len(job.consumed),
                 job.segment["name"] if job.segment else "nothing", job.segment["rows"] if job.segment else 0,
                 " after training" if job.retrain else f" by growing {base}" if base else "")
        return state

    def abandon_merge(self, job: "_MergeJob") -> None:
        """Remove what a merge that will not be committed wrote."""
        self._building.discard(job)
        self._remove_files(job.files)
        job.files.clear()
        job.segment = None
        job.built = False

    def _wants_ivf(self, live: int) -> bool:
        """Whether the sealed segments should be approximate (IVF lists or graphs) at this size."""
        if self.mode == "flat":
            return False
        if self.mode == "hnsw":
            return live >= min(self.exact_threshold, 1024)
        if self.mode == "ivf":
            return live >= min(self.exact_threshold, 30 * (self.fixed_nlist or 1)) and live >= (self.fixed_nlist or 1)
        return live >= self.exact_threshold

    def _plan(self, view: _View, force: bool, grow_to: int) -> Optional[tuple[set[int], bool, Optional[int]]]:
        """(segments to merge, whether to train a new quantizer, the graph segment that grows by the others'
        rows, to at most ``grow_to`` rows, or None), or None when nothing is worth doing."""
        segs = view.segments
        trained = view.centroids is not None or bool(view.state.get("graph"))
        retrain = False
        if self._wants_ivf(view.count):
            if not trained:
                retrain = True
            elif self.mode == "auto" and self.graph_m is None:
                trained_rows = int(view.state["quantizer"].get("trained_rows", 0))
                retrain = view.count >= self.retrain_growth * max(trained_rows, 1)
        if retrain or force:
            every = set(range(len(segs)))
            sealed = "graph" if self.graph_m is not None else "ivf"
            if not retrain and len(segs) <= 1 and not any(view.ndead) and (
                    not segs or segs[0].kind == (sealed if trained and self.mode != "flat" else "flat")):
                return None
            return (every, retrain, None) if segs else None
        merge: set[int] = set()
        # segments that are mostly removed rows
        for i, s in enumerate(segs):
            if view.ndead[i] and view.ndead[i] >= 0.3 * s.rows:
                merge.add(i)
        flat = [i for i, s in enumerate(segs) if s.kind == "flat"]
        flat_rows = sum(segs[i].rows for i in flat)
        # sealed (graph or IVF) segments exist: the flat ones are merged into them once they are many or large
        flat_due = trained and self.mode != "flat" and bool(flat) and (
            flat_rows >= self.flat_limit or len(flat) > self.merge_factor)
        if flat_due:
            merge.update(flat)
        base: Optional[int] = None
        if trained and self.mode != "flat" and view.state.get("graph"):
            base = self._growing_graph(view, merge, grow_to) if flat_due else None
            if base is not None:
                merge.add(base)
        elif trained and self.mode != "flat":
            ivf = [i for i, s in enumerate(segs) if s.kind == "ivf"]
            tiers: dict[int, list[int]] = {}
            for i in ivf:
                # tier t holds about flat_limit * merge_factor**t rows (rounded on a log scale)
                ratio = max(segs[i].rows, 1) / self.flat_limit
                tier = max(0, round(math.log(ratio) / math.log(self.merge_factor))) if self.merge_factor > 1 else 0
                tiers.setdefault(tier, []).append(i)
            for members in tiers.values():
                if len(members) >= self.merge_factor:
                    merge.update(members)
        else:
            if len(flat) > self.merge_factor:
                by_size = sorted(flat, key=lambda i: segs[i].rows)
                merge.update(by_size[: len(flat) - self.merge_factor // 2 + 1])
        if len(merge) == 1:
            (i,) = merge
            if not view.ndead[i] and not (segs[i].kind == "flat" and trained and self.mode != "flat"):
                return None
        return (merge, False, base) if merge else None

    def _growing_graph(self, view: _View, merge: set[int], grow_to: int) -> Optional[int]:
        """The graph segment the rows of segments ``merge`` are added to: the largest one with no removed rows
        that stays within ``grow_to`` rows (None: they start a new graph)."""
        adding = sum(view.segments[i].rows - view.ndead[i] for i in merge)
        room = [i for i, s in enumerate(view.segments)
                if s.kind == "graph" and i not in merge and not view.ndead[i] and s.rows + adding <= grow_to]
        return max(room, key=lambda i: (view.segments[i].rows, view.segments[i].seq), default=None)

    def _build_graph(self, name: str, rows: int, vectors: Any, grow: Optional[_Segment] = None) -> int:
        """Build the HNSW graph of a segment's rows (``vectors(a, b)``: rows a..b in the segment's order) and
        write it durably; return the dimension it was projected to (0: the graph's storage is the segment's
        vectors). With ``grow`` (a graph segment whose rows are this segment's first rows) its graph is read
        and only the remaining rows are inserted, projected as it was; a new graph is projected as
        ``graph_projection`` finds on a sample of its rows (or to the ``graph_dims`` option)."""
        assert self.graph_m is not None  # only graph modes build graphs
        t0 = time.perf_counter()
        start = 0
        # building reads no graph's vectors but the ones it copies: the graphs' pages that searches brought in
        # are dropped from this process (read back from the page cache when next searched), so the graph being
        # built is the only one held in memory meanwhile
        for seg in self._view.segments:
            if seg.graph is not None:
                graph_file = self.folder / f"{seg.name}{_GRAPH_SUFFIX}"
                if seg.vec_path != graph_file:  # else ``vec`` is the graph's storage: released just below
                    _release_pages(_graph_codes(seg.graph), graph_file)
                _release_pages(seg.vec, seg.vec_path)
        proj: Optional[np.ndarray]
        if grow is not None:
            path = self.folder / f"{grow.name}{_GRAPH_SUFFIX}"
            try:  # a private copy in memory, with room for the rows to add: the mapped one stays for readers
                index = _graph_copy(path, rows, self.graph_m)
            except RuntimeError as exc:
                raise IndexCorruptError(f"vector segment {grow.name}: graph {path.name} cannot be read "
                                        f"({str(exc).splitlines()[0]})") from None
            start = grow.rows
            if index.ntotal != start:
                raise IndexCorruptError(f"vector segment {grow.name}: graph of {index.ntotal} rows, expected {start}")
            proj = grow.proj
        else:
            sample = _spread_sample(vectors, rows)
            proj = graph_projection(sample, dims=self.graph_dims)
            if proj is None:  # the graph's storage is the segment's vectors: float rows
                index = _new_graph(self.dim, self.graph_m, "float", sample)
            else:
                index = _new_graph(len(proj), self.graph_m, self.graph_codes, sample @ proj.T)
            store: Any = faiss.downcast_index(index.storage)
            _reserve_storage(index, rows * int(store.code_size))
        with _threads(faiss.omp_get_max_threads()):
            for i0 in range(start, rows, _BLOCK):
                block = np.asarray(vectors(i0, min(rows, i0 + _BLOCK)), np.float32)
                index.add(np.ascontiguousarray(block if proj is None else block @ proj.T, np.float32))
        if proj is not None:
            _save_npy(self.folder / f"{name}{_PROJ_SUFFIX}", proj)
        path = self.folder / f"{name}{_GRAPH_SUFFIX}"
        tmp = path.with_name(path.name + ".tmp" + secrets.token_hex(4))
        faiss.write_index(index, str(tmp))
        with open(tmp, "rb") as fh:
            os.fsync(fh.fileno())
        os.replace(tmp, path)
        log.info("built the HNSW%d graph of %s (%d rows, %d inserted, %d dimensions) in %.1f s", self.graph_m, name,
                 rows, rows - start, index.d, time.perf_counter() - t0)
        return 0 if proj is None else len(proj)

    def _train(self, view: _View) -> np.ndarray:
        """Spherical k-means centroids on a sample of the live vectors."""
        live = view.count
        nlist = self.fixed_nlist or auto_nlist(live, self.nlist_factor)
        nlist = max(1, min(nlist, live))
        n_train = min(live, max(nlist * self.train_points, 1000))
        rng = np.random.default_rng(live)
        pick = np.sort(rng.choice(live, n_train, replace=False))
        sample = self._gather_live(view, pick)
        km = faiss.Kmeans(self.dim, nlist, niter=10, spherical=True, seed=1234, verbose=False,
                          max_points_per_centroid=max(self.train_points, 40), min_points_per_centroid=1)
        km.train(sample)
        log.info("trained IVF quantizer: %d lists on %d of %d vectors", nlist, n_train, live)
        assert km.centroids is not None  # set by train()
        return _normalise(km.centroids)

    def _gather_live(self, view: _View, pick: np.ndarray) -> np.ndarray:
        """Vectors of the live rows at positions ``pick`` (sorted) of the live-row enumeration."""
        out = np.empty((len(pick), self.dim), np.float32)
        start = 0
        done = 0
        for seg, dead in zip(view.segments, view.dead):
            alive_rows = np.arange(seg.rows) if dead is None else np.flatnonzero(~dead)
            lo, hi = np.searchsorted(pick, [start, start + len(alive_rows)])
            if hi > lo:
                out[done:done + hi - lo] = seg.vec[alive_rows[pick[lo:hi] - start]]
                done += hi - lo
            start += len(alive_rows)
        return out

    def _merge(self, view: _View, merge: set[int], centroids: Optional[np.ndarray], name: str,
               graph: bool = False, base: Optional[int] = None) -> tuple[int, int]:
        """Write the live rows of segments ``merge`` as one new segment (with its graph when ``graph``); return
        its row count and its graph's projected dimension (0: none). With ``base`` (a graph segment in ``merge``
        with no removed rows) the new segment is that graph grown by the other segments' rows: its rows first, in
        their order, and only the others inserted."""
        picked = sorted(merge) if base is None else [base] + sorted(merge - {base})
        segs = [view.segments[i] for i in picked]
        deads = [view.dead[i] for i in picked]
        ivf = centroids is not None and self.mode != "flat"
        same_quant = view.centroids is not None and centroids is view.centroids
        src_seg, src_row, ids_l, lists_l = [], [], [], []
        vocab = {f: sorted({v for s in segs for v in s.vocab[f]}) for f in STR_FIELDS}
        vidx = {f: {v: i for i, v in enumerate(vocab[f])} for f in STR_FIELDS}
        codes_l, ts_l = [], []
        quant = None
        if ivf and not same_quant:
            assert centroids is not None  # ivf implies centroids
            quant = faiss.IndexFlatIP(self.dim)
            quant.add(centroids)
        for si, (seg, dead) in enumerate(zip(segs, deads)):
            rows = np.arange(seg.rows) if dead is None else np.flatnonzero(~dead)
            src_seg.append(np.full(rows.size, si, np.int32))
            src_row.append(rows)
            ids_l.append(np.asarray(seg.ids)[rows])
            c = np.empty((3, rows.size), np.int32)
            for fi, f in enumerate(STR_FIELDS):
                remap = np.array([vidx[f][v] for v in seg.vocab[f]] + [-1], np.int32)
                c[fi] = remap[np.asarray(seg.codes[fi])[rows]]
            codes_l.append(c)
            ts_l.append(np.asarray(seg.ts)[rows])
            if ivf:
                if seg.kind == "ivf" and same_quant:
                    assert seg.lists is not None  # an ivf segment has its list offsets
                    lst = np.repeat(np.arange(len(seg.lists) - 1), np.diff(seg.lists))[rows]
                else:
                    lst = np.empty(rows.size, np.int64)
                    with _threads(faiss.omp_get_max_threads()):
                        for i0 in range(0, rows.size, _BLOCK):
                            blk = np.ascontiguousarray(seg.vec[rows[i0:i0 + _BLOCK]])
                            qz = quant if quant is not None else view.quantizer
                            assert qz is not None  # same_quant: the view's quantizer
                            lst[i0:i0 + _BLOCK] = qz.search(blk, 1)[1][:, 0]
                lists_l.append(lst)
        ids = np.concatenate(ids_l) if ids_l else np.zeros(0, np.int64)
        if ids.size == 0:
            return 0, 0
        if ivf:
            assert centroids is not None  # ivf implies centroids
            lists = np.concatenate(lists_l)
            order = np.lexsort((ids, lists))
            offsets = np.searchsorted(lists[order], np.arange(len(centroids) + 1))
        elif base is not None:  # the grown graph's rows keep their places; the added ones follow by id
            kept = segs[0].rows
            order = np.r_[np.arange(kept), kept + np.argsort(ids[kept:], kind="stable")]
            offsets = None
        else:
            order = np.argsort(ids, kind="stable")
            offsets = None
        s_seg = np.concatenate(src_seg)[order]
        s_row = np.concatenate(src_row)[order]

        def vectors(a: int, b: int) -> np.ndarray:
            out = np.empty((b - a, self.dim), np.float32)
            ss, rr = s_seg[a:b], s_row[a:b]
            for si, seg in enumerate(segs):
                sel = np.flatnonzero(ss == si)
                if sel.size:
                    out[sel] = seg.vec[rr[sel]]
                    # the pages read are dropped from this process (a merge reads each row once): a grown
                    # graph's rows would otherwise stay in memory beside the graph being built
                    lo, hi = int(rr[sel].min()), int(rr[sel].max()) + 1
                    _release_pages(seg.vec[lo:hi], seg.vec_path)
            return out

        # a grown graph's rows start with its base's, in their order: those are copied from the base's file
        grown = segs[0] if base is not None and deads[0] is None else None
        prefix = (grown.vec_path, grown.rows) if grown is not None and grown.vec_path.name.endswith(_VEC_SUFFIX) \
            else None
        data = _SegmentData(ids=ids[order], codes=np.concatenate(codes_l, axis=1)[:, order], vocab=vocab,
                            ts=np.concatenate(ts_l)[order], vectors=vectors, lists=offsets, prefix=prefix)
        proj = 0
        if graph:  # the graph first: unless projected, the segment's vectors are its storage
            proj = self._build_graph(name, int(ids.size), vectors, grow=segs[0] if base is not None else None)
        _write_segment(self.folder, name, data, self.dim, vectors=not graph or proj > 0)
        return int(ids.size), proj

    # -- reading ------------------------------------------------------------------------------
    @property
    def count(self) -> int:
        return self._view.count

    @staticmethod
    def _locate(view: _View, ids: np.ndarray) -> Iterator[tuple[_Segment, np.ndarray, np.ndarray]]:
        """Per segment: (segment, row of each id or -1, which ids are live rows there)."""
        for seg, dead in zip(view.segments, view.dead):
            pos = seg.find(ids)
            hit = pos >= 0
            if dead is not None:
                hit[hit] &= ~dead[pos[hit]]
            yield seg, pos, hit

    def _contains(self, view: _View, ids: np.ndarray) -> np.ndarray:
        out = np.zeros(ids.shape, np.bool_)
        for _, _, hit in self._locate(view, ids):
            out |= hit
        return out

    def contains(self, ids: IdsLike) -> np.ndarray:
        return self._contains(self._view, np.asarray(ids, np.int64).reshape(-1))

    def _live_rows(self, ids: IdsLike) -> tuple[int, list[tuple[_Segment, np.ndarray, np.ndarray]]]:
        """How many ids were asked and, per segment holding some of them live: (segment, their rows there, where
        they are among the ids). An id that is not live raises ``InvalidInputError``."""
        arr = np.asarray(ids, np.int64).reshape(-1)
        found = np.zeros(arr.size, np.bool_)
        parts = []
        for seg, pos, hit in self._locate(self._view, arr):
            if hit.any():
                parts.append((seg, pos[hit], hit))
                found |= hit
        if not found.all():
            raise InvalidInputError(f"ids not in the index: {arr[~found][:10].tolist()}")
        return arr.size, parts

    def reconstruct(self, ids: IdsLike) -> np.ndarray:
        n, parts = self._live_rows(ids)
        out = np.empty((n, self.dim), np.float32)
        for seg, rows, at in parts:
            out[at] = seg.vec[rows]
        return out

    def stored_fields(self, ids: IdsLike) -> dict[str, np.ndarray]:
        """Camera, time, source and track of live ids, from the segments' codes (no SQL read)."""
        n, parts = self._live_rows(ids)
        out = {f: np.full(n, None, dtype=object) for f in STR_FIELDS}
        out["timestamp"] = np.full(n, np.nan, np.float64)
        for seg, rows, at in parts:
            for name, values in seg.fields(rows).items():
                out[name][at] = values
        return {name: out[name] for name in FIELDS}

    def track_members(self, tracks: Sequence[str]) -> dict[str, np.ndarray]:
        """Live ids of each named track, from the segments' posting lists (no SQL read)."""
        view = self._view
        fi = STR_FIELDS.index("track")
        found: dict[str, list[np.ndarray]] = {str(t): [] for t in tracks}
        for seg, dead in zip(view.segments, view.dead):
            off = seg.poff["track"]
            for t, parts in found.items():
                c = seg.vindex["track"].get(t)
                if c is None:
                    continue
                rows = np.asarray(seg.post[fi][int(off[c + 1]):int(off[c + 2])], np.int64)
                if dead is not None:
                    rows = rows[~dead[rows]]
                parts.append(np.asarray(seg.ids)[rows])
        return {t: np.sort(np.concatenate(parts)).astype(np.int64) if parts else np.zeros(0, np.int64)
                for t, parts in found.items()}

    def live_ids(self) -> np.ndarray:
        view = self._view
        parts = [np.asarray(seg.ids) if dead is None else np.asarray(seg.ids)[~dead]
                 for seg, dead in zip(view.segments, view.dead)]
        return np.sort(np.concatenate(parts)) if parts else np.zeros(0, np.int64)

    def describe(self) -> dict[str, Any]:
        view = self._view
        q = view.state.get("quantizer")
        ivf = q is not None and self.mode != "flat"
        folder_bytes = 0
        for n in _files_of(view.state):
            try:
                folder_bytes += (self.folder / n).stat().st_size
            except FileNotFoundError:
                pass
        return {
            "backend": self.name,
            "factory": self.options.get("factory", "auto"),
            "index_type": ("hnsw" if view.state.get("graph") else "ivf_flat" if ivf else "flat"),
            "graph_m": (view.state.get("graph") or {}).get("m"),
            "graph_rows": self.graph_rows if self.graph_m is not None else None,
            "background_graph_rows": self.background_graph_rows if self.graph_m is not None else None,
            "ef_search": self._defaults(view).get("ef_search") if view.state.get("graph") else None,
            "metric": "inner_product",
            "dim": self.dim,
            "count": view.count,
            "nlist": view.nlist if ivf else None,
            "nprobe": self._defaults(view).get("nprobe") if ivf else None,
            "trained_rows": q.get("trained_rows") if q else None,
            "exact_threshold": self.exact_threshold,
            "segments": [{"name": s.name, "kind": s.kind, "rows": s.rows, "removed": d,
                          **({"graph_dim": int(s.graph.d), "graph_codes": _codes_kind(s.graph)}
                             if s.graph is not None else {})}
                         for s, d in zip(view.segments, view.ndead)],
            "tombstones": int(view.tomb_ids.size),
            "bytes_on_disk": folder_bytes,
        }

    def _defaults(self, view: _View) -> dict[str, Any]:
        d = dict(view.state.get("search") or {})
        if self.options.get("nprobe"):
            d["nprobe"] = int(self.options["nprobe"])
        if d.get("nprobe") is None and view.nlist:
            d["nprobe"] = auto_nprobe(view.nlist)
        if self.options.get("ef_search"):
            d["ef_search"] = int(self.options["ef_search"])
        if view.state.get("graph") and d.get("ef_search") is None:
            d["ef_search"] = GRAPH_EF_SEARCH
        if self.mode == "flat":
            d["exact"] = True
        return d

    def search(self, queries: np.ndarray, k: int, where: Optional[SearchFilter] = None,
               params: Optional[SearchParams] = None) -> tuple[np.ndarray, np.ndarray]:
        view = self._view
        q = np.asarray(queries)
        if q.ndim != 2 or q.shape[1] != self.dim:
            raise InvalidInputError(f"queries of shape {q.shape}: expected (Q, {self.dim})")
        if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k < 1:
            raise InvalidInputError(f"k={k!r}: expected a positive integer")
        k = int(k)
        q = np.ascontiguousarray(q, np.float32)
        scaled = params is None or params.ef_search is None  # a beam the caller chose is used as given
        p = (params or SearchParams()).merged(self._defaults(view))
        flt = None if where is None or where.is_empty else where
        nq = len(q)
        if nq == 0 or view.count == 0:
            return np.full((nq, k), -np.inf, np.float32), np.full((nq, k), -1, np.int64)
        graphs = bool(view.state.get("graph"))
        approx = (view.quantizer is not None or graphs) and p.exact is not True and self.mode != "flat"
        order = None
        if approx and any(s.kind == "ivf" for s in view.segments):
            nprobe = int(min(p.nprobe or auto_nprobe(view.nlist), view.nlist))
            want = view.nlist if flt is not None else nprobe
            assert view.quantizer is not None  # approx implies a quantizer
            with _threads(1 if nq < 20 else faiss.omp_get_max_threads()):
                order = view.quantizer.search(q, want)[1]
        def one(seg: _Segment, dead: Optional[np.ndarray], nd: int) -> Optional[tuple[np.ndarray, np.ndarray]]:
            sf = _SegFilter(seg, flt) if flt is not None else None
            if sf is not None and sf.nothing:
                return None
            if approx and seg.kind == "graph":
                return self._search_graph(seg, dead, q, k, sf, int(p.ef_search or GRAPH_EF_SEARCH), scaled,
                                          float(p.beam_scale or 1.0))
            if order is not None and seg.kind == "ivf":
                return self._search_ivf(seg, dead, nd, q, k, sf, order, nprobe, view.nlist)
            return self._search_exact(seg, dead, nd, q, k, sf)

        def one_thread(args: tuple[_Segment, Optional[np.ndarray], int]) -> Optional[tuple[np.ndarray, np.ndarray]]:
            with _threads(1):
                return one(*args)

        todo = [(seg, dead, nd) for seg, dead, nd in zip(view.segments, view.dead, view.ndead) if seg.rows != nd]
        tail: list[tuple[_Segment, Optional[np.ndarray], int]] = []
        proj = self._tail_projection(view) if approx and p.approx_tail and flt is None and \
            nq >= SEGMENT_THREADS_BELOW else None
        if proj is not None:  # the flat tail of an approximate index, searched as one through a projection
            tail = [t for t in todo if t[0].kind == "flat"]
            todo = [t for t in todo if t[0].kind != "flat"]
        pool = _segment_pool() if nq < SEGMENT_THREADS_BELOW and len(todo) > 1 else None
        if pool is not None:  # a few queries: the segments side by side, one FAISS thread each
            found = list(pool.map(one_thread, todo))
        else:
            with _threads(1 if nq < SEGMENT_THREADS_BELOW else faiss.omp_get_max_threads()):
                found = [one(*t) for t in todo]
                if tail:
                    assert proj is not None  # a tail is only split off with one
                    found.append(self._search_tail(tail, proj, q, k, int(p.ef_search or 2 * k)))
        sims = [f[0] for f in found if f is not None]
        ids = [f[1] for f in found if f is not None]
        if not sims:
            return np.full((nq, k), -np.inf, np.float32), np.full((nq, k), -1, np.int64)
        return top_k_rows(np.concatenate(sims, 1), np.concatenate(ids, 1), k)

    @staticmethod
    def _tail_projection(view: _View) -> Optional[np.ndarray]:
        """The projection of the newest projected graph, which ``approx_tail`` searches the flat tail through."""
        graphs = [s for s in view.segments if s.proj is not None]
        return max(graphs, key=lambda s: s.seq).proj if graphs else None

    def _search_tail(self, tail: list[tuple[_Segment, Optional[np.ndarray], int]], proj: np.ndarray,
                     q: np.ndarray, k: int, want: int) -> Optional[tuple[np.ndarray, np.ndarray]]:
        """The flat segments ``tail`` searched as one like a projected graph: each query's best ``want`` rows by
        inner product in the projection (exact there, where a graph walk is approximate), re-scored with the full
        vectors: (similarities, ids) of the best ``k``, None when every row was removed."""
        live = [slice(None) if dead is None else ~dead for _, dead, _ in tail]
        xp = np.concatenate([seg.projected(proj)[keep] for (seg, _, _), keep in zip(tail, live)])
        vec = np.concatenate([np.asarray(seg.vec, np.float32)[keep] for (seg, _, _), keep in zip(tail, live)])
        ids = np.concatenate([np.asarray(seg.ids)[keep] for (seg, _, _), keep in zip(tail, live)])
        if not len(ids):
            return None
        qp = np.ascontiguousarray(q @ proj.T, np.float32)
        _, rows = self._knn(qp, xp, min(len(xp), max(want, k)), find_copies=False)
        found = np.where(rows >= 0, ids[np.maximum(rows, 0)], -1)
        return _rescore(vec, q, rows, found, k)  # k columns, -inf / -1 where fewer

    # exact search in one segment
    def _search_exact(self, seg: _Segment, dead: Optional[np.ndarray], nd: int, q: np.ndarray, k: int,
                      sf: Optional[_SegFilter]) -> tuple[np.ndarray, np.ndarray]:
        if sf is None and (dead is None or nd <= max(256, seg.rows // 8)):
            kk = min(seg.rows, k + nd)
            s, r = self._knn(q, seg.vec, kk, seg.copies, find_copies=False)
            i = np.where(r >= 0, np.asarray(seg.ids)[np.maximum(r, 0)], -1)
            if dead is not None:
                bad = (r < 0) | dead[np.maximum(r, 0)]
                s = np.where(bad, -np.inf, s)
                i = np.where(bad, -1, i)
            return top_k_rows(s, i, k)
        rows = None
        if sf is not None:
            rows, _ = sf.candidates(seg, limit=seg.rows // 4)
        if rows is None:
            keep = np.ones(seg.rows, bool) if sf is None else sf.mask(seg, slice(0, seg.rows))
            if dead is not None:
                keep &= ~dead
            rows = np.flatnonzero(keep)
        elif dead is not None:
            rows = rows[~dead[rows]]
        return self._scan_rows(seg, rows, q, k)

    def knn(self, queries: np.ndarray, rows: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """Exact top-k of given vectors: the segments' exact search (``_knn``: FAISS heaps over NumPy's matrix
        product, or the GPU); missing results are -inf / -1."""
        q = np.ascontiguousarray(queries, np.float32)
        if len(q) == 0 or len(rows) == 0:
            return np.full((len(q), k), -np.inf, np.float32), np.full((len(q), k), -1, np.int64)
        s, r = self._knn(q, np.ascontiguousarray(rows, np.float32), k)
        return top_k_rows(s, r, k)  # the heaps keep the lower rows among ties; this lists them first too

    def _knn(self, q: np.ndarray, x: np.ndarray, k: int, first: Optional[np.ndarray] = None,
             find_copies: bool = True) -> tuple[np.ndarray, np.ndarray]:
        """Exact top-k rows of ``x`` (copies of a vector tie: ``knn_inner_product``)."""
        if first is None and find_copies:
            first = copies(x)
        if self._gpus > 0 and len(x) * len(q) >= 1 << 22:  # pragma: no cover - no GPU here
            try:
                if self._gpu_res is None:
                    self._gpu_res = faiss.StandardGpuResources()
                res = self._gpu_res

                def gpu(qq: np.ndarray, xx: np.ndarray, kk: int) -> tuple[np.ndarray, np.ndarray]:
                    return faiss.knn_gpu(res, qq, np.ascontiguousarray(xx), kk, metric=faiss.METRIC_INNER_PRODUCT)
                return search_with_copies(gpu, q, x, k, first)
            except Exception as exc:  # a GPU failure falls back to the CPU, with a trace in the log
                log.warning("GPU search failed, using the CPU: %s", exc)
        return knn_inner_product(q, x, k, first, find_copies=False)

    def _scan_rows(self, seg: _Segment, rows: np.ndarray, q: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """Exact top-k among ``rows`` (sorted) of a segment, in blocks."""
        best_s = np.full((len(q), 0), -np.inf, np.float32)
        best_i = np.zeros((len(q), 0), np.int64)
        for i0 in range(0, rows.size, _BLOCK):
            r = rows[i0:i0 + _BLOCK]
            x = seg.vec[r] if r.size < seg.rows else seg.vec
            kk = min(k, r.size)
            # a flat segment knows whether it holds copies (a graph's rows are not all read for that)
            s, loc = self._knn(q, np.ascontiguousarray(x), kk, find_copies=seg.kind != "flat" or seg.copies is not None)
            ids = np.where(loc >= 0, np.asarray(seg.ids)[r[np.maximum(loc, 0)]], -1)
            best_s, best_i = top_k_rows(np.concatenate([best_s, s], 1), np.concatenate([best_i, ids], 1), k)
        return best_s, best_i

    # approximate search in one graph segment
    def _search_graph(self, seg: _Segment, dead: Optional[np.ndarray], q: np.ndarray, k: int,
                      sf: Optional[_SegFilter], ef: int, scaled: bool = True, scale: float = 1.0
                      ) -> tuple[np.ndarray, np.ndarray]:
        """HNSW search of one segment; removed rows and filters are excluded inside the graph walk.

        ``scale`` multiplies the default beam (``scaled``; never below k), not one the caller set.

        A selective filter is answered exactly over its few rows instead; a broader one is a bitmap the
        walk checks before it admits a result.
        """
        keep: Optional[np.ndarray] = None
        if sf is not None:
            rows, _ = sf.candidates(seg, limit=max(4096, seg.rows // 50))
            if rows is not None:
                if dead is not None:
                    rows = rows[~dead[rows]]
                return self._scan_rows(seg, rows, q, k)
            keep = sf.mask(seg, slice(0, seg.rows))
        if dead is not None:
            keep = ~dead if keep is None else keep & ~dead
        params = faiss.SearchParametersHNSW()  # type: ignore[attr-defined]  # missing from faiss's stub
        # the beam holds results that pass the filter, so it needs no widening by the filter's selectivity, only
        # enough room for k of them (twice k: a beam barely wider than k loses recall at its tail), widened with
        # the graph's size like an unfiltered walk
        params.efSearch = graph_beam(ef, k, seg.rows, scaled)
        if scaled:  # the default beam: wider over projected rows (each step is cheaper), times the caller's scale
            widen = (GRAPH_PROJECTED_BEAM if seg.proj is not None else 1.0) * scale
            params.efSearch = max(k, min(4096, math.ceil(params.efSearch * widen)))
        packed = None
        if keep is not None:
            packed = np.packbits(keep, bitorder="little")
            params.sel = faiss.IDSelectorBitmap(len(packed), faiss.swig_ptr(packed))
        kk = min(k, seg.rows)
        assert seg.graph is not None  # only graph segments come here
        if seg.proj is None:
            sims, rows_found = seg.graph.search(q, kk, params=params)
        else:  # the projected graph's best candidates, re-scored with the full vectors: GRAPH_REFINE x k with the
            # default beam; the whole beam with one the caller chose or one as wide as the graph (then exact)
            whole = not scaled or params.efSearch >= seg.rows
            want = min(seg.rows, max(kk, params.efSearch if whole else min(params.efSearch, GRAPH_REFINE * k)))
            _, rows_found = seg.graph.search(np.ascontiguousarray(q @ seg.proj.T, np.float32), want, params=params)
        del packed  # the selector reads the bitmap until the search returns
        found = np.asarray(rows_found, np.int64)
        ids = np.where(found >= 0, np.asarray(seg.ids)[np.maximum(found, 0)], -1)
        if seg.proj is not None:
            sims, ids = _rescore(seg.vec, q, found, ids, kk,
                                 release=seg.vec_path if len(q) >= SEGMENT_THREADS_BELOW else None)
        sims = np.where(ids >= 0, np.asarray(sims, np.float32), -np.inf).astype(np.float32)
        if kk < k:
            sims = np.concatenate([sims, np.full((len(q), k - kk), -np.inf, np.float32)], 1)
            ids = np.concatenate([ids, np.full((len(q), k - kk), -1, np.int64)], 1)
        return sims, ids

    # approximate search in one IVF segment
    def _search_ivf(self, seg: _Segment, dead: Optional[np.ndarray], nd: int, q: np.ndarray, k: int,
                    sf: Optional[_SegFilter], order: np.ndarray, nprobe: int,
                    nlist: int) -> tuple[np.ndarray, np.ndarray]:
        per_list = seg.rows / max(nlist, 1)
        target = nprobe * per_list  # rows an unfiltered search scans in this segment
        if sf is not None:
            rows, frac = sf.candidates(seg, limit=int(max(2 * target, 4096)))
            if rows is not None:
                if dead is not None:
                    rows = rows[~dead[rows]]
                return self._scan_rows(seg, rows, q, k)
        if sf is None:
            return self._search_ivf_lists(seg, dead, q, k, order[:, :nprobe])
        out_s = np.full((len(q), k), -np.inf, np.float32)
        out_i = np.full((len(q), k), -1, np.int64)
        frac = max(frac, 1e-6)
        for qi in range(len(q)):
            probe = order[qi][order[qi] >= 0]
            n_lists = min(len(probe), int(math.ceil(nprobe / frac)))
            assert seg.lists is not None  # an ivf segment has its list offsets
            while True:
                rows = _list_rows(seg.lists, probe[:n_lists])
                if sf is not None:
                    rows = rows[sf.mask(seg, rows)]
                if dead is not None:
                    rows = rows[~dead[rows]]
                # a filter concentrated away from the nearest lists: probe further until enough rows passed
                if sf is None or rows.size >= 0.5 * target or n_lists >= len(probe):
                    break
                n_lists = min(len(probe), 2 * n_lists)
            if rows.size == 0:
                continue
            sc, loc = self._knn(q[qi:qi + 1], seg.vec[rows], min(k, rows.size))
            ok = loc[0] >= 0
            s, i = top_k_rows(sc[:, ok], np.asarray(seg.ids[rows[loc[0][ok]]])[None], k)
            out_s[qi], out_i[qi] = s[0], i[0]
        return out_s, out_i


    def _search_ivf_lists(self, seg: _Segment, dead: Optional[np.ndarray], q: np.ndarray, k: int,
                          probes: np.ndarray, chunk: int = 1024) -> tuple[np.ndarray, np.ndarray]:
        """Unfiltered IVF search, list by list: each probed list is scored once for every query that
        probes it (one matrix product on a memory-mapped slice, no copy), then each query keeps its top k.

        This is what makes a batch (e.g. the new rows of a commit looking for their neighbours) cost
        about the rows it probes, not one pass per query.
        """
        out_s = np.full((len(q), k), -np.inf, np.float32)
        out_i = np.full((len(q), k), -1, np.int64)
        offsets = seg.lists
        assert offsets is not None  # an ivf segment has its list offsets
        for c0 in range(0, len(q), chunk):
            qc = q[c0:c0 + chunk]
            pr = probes[c0:c0 + chunk]
            lists = pr.reshape(-1)
            owner = np.repeat(np.arange(len(qc)), pr.shape[1])
            ok = lists >= 0
            lists, owner = lists[ok], owner[ok]
            by = np.argsort(lists, kind="stable")
            lists, owner = lists[by], owner[by]
            starts = np.flatnonzero(np.r_[True, lists[1:] != lists[:-1]]) if lists.size else np.zeros(0, np.int64)
            ends = np.r_[starts[1:], lists.size]
            cand_s, cand_i, cand_q = [], [], []
            for a, b in zip(starts, ends):
                lo, hi = int(offsets[lists[a]]), int(offsets[lists[a] + 1])
                if hi <= lo:
                    continue
                who = owner[a:b]
                sc = qc[who] @ seg.vec[lo:hi].T
                if dead is not None:
                    sc[:, dead[lo:hi]] = -np.inf
                kk = min(k, hi - lo)
                if kk < hi - lo:
                    part = np.argpartition(-sc, kk - 1, axis=1)[:, :kk]
                    sc = np.take_along_axis(sc, part, 1)
                else:
                    part = np.broadcast_to(np.arange(hi - lo), sc.shape)
                cand_s.append(sc.reshape(-1))
                cand_i.append(np.asarray(seg.ids[lo:hi])[part].reshape(-1))
                cand_q.append(np.repeat(who, kk))
            if not cand_s:
                continue
            cs, ci, cq = np.concatenate(cand_s), np.concatenate(cand_i), np.concatenate(cand_q)
            keep = np.isfinite(cs)
            cs, ci, cq = cs[keep], ci[keep], cq[keep]
            srt = np.lexsort((ci, -cs, cq))
            cs, ci, cq = cs[srt], ci[srt], cq[srt]
            first = np.searchsorted(cq, np.arange(len(qc)))
            rank = np.arange(cq.size) - first[cq]
            take = rank < k
            out_s[c0 + cq[take], rank[take]] = cs[take]
            out_i[c0 + cq[take], rank[take]] = ci[take]
        return out_s, out_i


def _list_rows(offsets: np.ndarray, lists: np.ndarray) -> np.ndarray:
    """Rows of some CSR lists, concatenated in the order given."""
    lo, hi = offsets[lists], offsets[lists + 1]
    lens = hi - lo
    total = int(lens.sum())
    if total == 0:
        return np.zeros(0, np.int64)
    starts = np.cumsum(lens) - lens
    return np.repeat(lo - starts, lens) + np.arange(total)
