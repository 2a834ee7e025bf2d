"""Evaluate a model through the engine: gallery into an index, queries through ``Engine``.

What is measured is what is served: the gallery is indexed with
``Engine.add_features`` and the queries are ranked by ``Engine.query_features``
(the second half of ``Engine.query``), with the same re-ranking and fusion
options users pass. Embeddings come from the engine's own encoder through the
on-disk :mod:`~reid_engine.eval.cache`, so a second run (or a sweep over
re-ranking settings) does not re-encode.

The engine calls are isolated in :func:`_index_gallery` and :func:`_search`.
"""
from __future__ import annotations

import logging
import tempfile
import time
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Optional, Sequence, Union

import numpy as np

from ..engine import DEFAULT_RERANK
from ..errors import InvalidInputError
from .cache import EmbeddingCache, cached_embeddings, default_cache_dir, hash_files
from .datasets import Split
from .metrics import EvalResult, evaluate_ranked
from .report import build_report, format_sweep_table, report_folder, write_json_report
from .visualize import write_ranked_lists_html

log = logging.getLogger(__name__)

PathLike = Union[str, Path]
EngineFactory = Callable[[Path], Any]  # folder -> a new, empty Engine

#: with k=None the whole gallery is ranked (exact metrics) up to this size; above it, top-DEFAULT_K
FULL_RANKING_MAX_GALLERY = 5000
DEFAULT_K = 100
#: queries per engine call when the full answer would hold more hits than this
MAX_HITS_PER_CALL = 2_000_000
REPORT_JSON = "report.json"


@dataclass
class Prepared:
    """A split whose gallery is indexed and whose query embeddings are ready."""

    split: Split
    engine: Any
    query_features: np.ndarray
    id_to_gallery: dict[int, list[int]]  # engine crop id -> gallery positions (identical files share one id)
    settings: dict[str, Any]
    timings: dict[str, float]
    encoded: int  # images encoded (not found in the cache)
    query_attributes: Optional[np.ndarray] = None  # (Q, WIDTH) pedestrian attributes, when fusion needs them


@dataclass
class EvalRun:
    """One evaluation: metrics, the ranked lists behind them, and the report."""

    result: EvalResult
    ranked: np.ndarray  # (Q, K) gallery positions, best first, -1 padded
    distances: np.ndarray  # (Q, K) the engine's distances, NaN padded
    report: dict[str, Any]
    report_path: Optional[Path] = None
    html_path: Optional[Path] = None
    extra: dict[str, Any] = field(default_factory=dict)


def default_engine_factory(
    encoder: Optional[str] = None,
    weights: Optional[PathLike] = None,
    device: Optional[str] = None,
    annotators: Sequence[str] = (),
) -> EngineFactory:
    """A factory that creates a Flat index with the given encoder, weights and annotators."""

    def make(folder: Path) -> Any:
        from ..engine import Engine  # the engine pulls in FAISS and SQLAlchemy: import on use

        return Engine.create(folder, encoder=encoder, weights=weights, device=device, annotators=annotators)

    return make


# -- engine calls ----------------------------------------------------------------------------------
def _index_gallery(
    engine: Any, split: Split, features: np.ndarray, hashes: Sequence[str], attributes: Optional[np.ndarray] = None
) -> dict[int, list[int]]:
    """Add the gallery to the engine's index; return crop id -> gallery positions.

    The index keeps one row per file content, so identical files of one camera are added once
    and share that row's place in every ranked list; copies labelled with another camera get a
    row of their own (the same-camera filter must see their camera). ``attributes`` (G, WIDTH)
    are stored as the rows' ``attributes`` annotation, as indexing would.
    """
    from ..attributes import ANNOTATOR_NAME
    from ..attributes.groups import vector_to_note
    from ..ingest.crops import CropItem

    keys: list[str] = []
    camera_of_content: dict[str, str] = {}
    for i, h in enumerate(hashes):
        cam = str(split.gallery[i].camid)
        first_cam = camera_of_content.setdefault(h, cam)
        keys.append(h if cam == first_cam else f"{h}|camera {cam}")
    first: dict[str, int] = {}
    groups: dict[str, list[int]] = {}
    for i, key in enumerate(keys):
        first.setdefault(key, i)
        groups.setdefault(key, []).append(i)
    unique = list(first.values())
    items = [
        CropItem(
            Path(split.gallery[i].path),
            {"pid": str(split.gallery[i].pid), "camera": str(split.gallery[i].camid), "source": split.name,
             **({"extra": {ANNOTATOR_NAME: vector_to_note(attributes[i])}} if attributes is not None else {})},
        )
        for i in unique
    ]
    ids = engine.add_features(features[unique], items, hashes=[keys[i] for i in unique])
    if len(ids) != len(unique):
        raise InvalidInputError(f"the engine indexed {len(ids)} of {len(unique)} gallery crops")
    if len(unique) < len(hashes):
        log.info("%s: %d gallery files are byte-identical copies", split.name, len(hashes) - len(unique))
    return {int(cid): groups[keys[i]] for cid, i in zip(ids, unique)}


def _query_options(
    rerank: Optional[str],
    fusion: Optional[str],
    exclude_same_camera: bool,
    query_attributes: Optional[np.ndarray] = None,
) -> dict[str, Any]:
    """Keyword options for ``Engine.query_features`` (rerank None = the engine's default preset)."""
    opts: dict[str, Any] = {"rerank": rerank}
    if fusion is not None:
        opts["fusion"] = fusion
        if _fusion_needs_attributes([fusion]):
            opts["query_attributes"] = query_attributes
    if exclude_same_camera:
        opts["exclude_same_camera"] = True
    return opts


def _search(
    engine: Any, split: Split, features: np.ndarray, k: int, options: dict[str, Any]
) -> list[list[tuple[int, float]]]:
    """Rank the gallery for every query through the engine: per query, (crop id, distance) best first.

    Answers do not depend on which queries share a call, so they go in large
    calls (chunked only when the answer would be very large).
    """
    n = len(features)
    step = n if n * k <= MAX_HITS_PER_CALL else max(1, MAX_HITS_PER_CALL // k)
    if step < n:
        log.info("querying in chunks of %d (the full answer would hold %d hits)", step, n * k)
    cams = [str(s.camid) for s in split.query]
    out: list[list[tuple[int, float]]] = []
    for start in range(0, n, step):
        chunk = slice(start, start + step)
        # per-query options (the queries' attributes) follow the chunk
        opts = {key: (val[chunk] if isinstance(val, np.ndarray) and len(val) == n else val)
                for key, val in options.items()}
        results = engine.query_features(
            features[chunk],
            k,
            query_labels=[str(s.path) for s in split.query[chunk]],
            query_cameras=cams[chunk],
            **opts,
        )
        out.extend([(int(h.id), float(h.distance)) for h in r.hits] for r in results)
    return out


# -- the runner ----------------------------------------------------------------------------------------
def _embeddings(
    engine: Any, paths: Sequence[Path], hashes: Sequence[str], cache: Optional[EmbeddingCache], batch_size: int
) -> tuple[np.ndarray, int]:
    encoder = engine.encoder
    return cached_embeddings(
        paths, lambda files: encoder.encode(files, batch_size=batch_size), cache, hashes=hashes
    )


def _attribute_vectors(
    engine: Any, paths: Sequence[Path], hashes: Sequence[str], cache_dir: Union[PathLike, None, bool], batch_size: int
) -> tuple[np.ndarray, int]:
    """(N, WIDTH) attributes from the engine's attribute model, through the same on-disk cache as embeddings."""
    model = engine.attribute_model()
    cache = None
    if cache_dir is not False:
        folder = default_cache_dir() if cache_dir in (None, True) else Path(cache_dir)  # type: ignore[arg-type]
        cache = EmbeddingCache(folder, f"attributes-{model.name}", model.weights_sha256)
    return cached_embeddings(paths, lambda files: model.predict(files, batch_size=batch_size), cache, hashes=hashes)


def prepare(
    split: Split,
    engine_factory: EngineFactory,
    workdir: Path,
    *,
    cache_dir: Union[PathLike, None, bool] = None,
    batch_size: int = 32,
    attributes: bool = False,
    query_context: bool = True,
) -> Prepared:
    """Create an index in ``workdir``, embed (or fetch cached) query and gallery crops, index the gallery.

    ``cache_dir``: folder of the embedding cache; None = the default folder,
    False = no cache. ``attributes``: also compute (or fetch) pedestrian
    attributes, stored with the gallery and kept for the queries (fusion modes).
    """
    timings: dict[str, float] = {}
    t0 = time.perf_counter()
    engine = engine_factory(Path(workdir) / "index")
    encoder = engine.encoder
    timings["load_model"] = time.perf_counter() - t0

    cache = None
    if cache_dir is not False:
        folder = default_cache_dir() if cache_dir in (None, True) else Path(cache_dir)  # type: ignore[arg-type]
        cache = EmbeddingCache(folder, encoder.name, encoder.weights_sha256)

    t0 = time.perf_counter()
    g_paths = [Path(s.path) for s in split.gallery]
    q_paths = [Path(s.path) for s in split.query]
    g_hashes = hash_files(g_paths)
    q_hashes = hash_files(q_paths)
    timings["hash"] = time.perf_counter() - t0

    t0 = time.perf_counter()
    g_feats, g_new = _embeddings(engine, g_paths, g_hashes, cache, batch_size)
    q_feats, q_new = _embeddings(engine, q_paths, q_hashes, cache, batch_size)
    timings["encode"] = time.perf_counter() - t0

    g_attrs = q_attrs = None
    if attributes:
        t0 = time.perf_counter()
        g_attrs, _ = _attribute_vectors(engine, g_paths, g_hashes, cache_dir, batch_size)
        q_attrs, _ = _attribute_vectors(engine, q_paths, q_hashes, cache_dir, batch_size)
        timings["attributes"] = time.perf_counter() - t0

    t0 = time.perf_counter()
    id_to_gallery = _index_gallery(engine, split, g_feats, g_hashes, g_attrs)
    add_context = getattr(engine, "add_context_features", None)
    if query_context and callable(add_context) and len(q_feats):
        add_context(q_feats, [str(s.camid) for s in split.query])
    timings["index"] = time.perf_counter() - t0

    settings = {
        "encoder": encoder.name,
        "weights": str(getattr(encoder, "weights", "")),
        "weights_sha256": encoder.weights_sha256,
        "dim": int(g_feats.shape[1]),
        "preprocess": encoder.preprocess_spec.to_dict() if hasattr(encoder, "preprocess_spec") else None,
        "cache": str(cache.path) if cache else None,
        "query_context": bool(query_context),
    }
    return Prepared(split, engine, q_feats, id_to_gallery, settings, timings, g_new + q_new, q_attrs)


def _resolve_k(k: Optional[int], num_gallery: int) -> int:
    if k is None:
        return num_gallery if num_gallery <= FULL_RANKING_MAX_GALLERY else DEFAULT_K
    if int(k) < 1:
        raise InvalidInputError(f"k {k}: expected a positive integer")
    return min(int(k), num_gallery)


def run_queries(
    prep: Prepared,
    *,
    rerank: Optional[str] = None,
    fusion: Optional[str] = None,
    k: Optional[int] = None,
    exclude_same_camera: bool = False,
    max_rank: int = 50,
) -> tuple[EvalResult, np.ndarray, np.ndarray, dict[str, Any], float]:
    """Query the prepared index under one setting; returns (result, ranked, distances, settings, seconds)."""
    split = prep.split
    n_indexed = len(prep.id_to_gallery)
    k_eff = _resolve_k(k, n_indexed)
    options = _query_options(rerank, fusion, exclude_same_camera, prep.query_attributes)
    t0 = time.perf_counter()
    answers = _search(prep.engine, split, prep.query_features, k_eff, options)
    seconds = time.perf_counter() - t0

    expanded: list[list[tuple[int, float]]] = []
    for answer in answers:
        row: list[tuple[int, float]] = []
        for cid, dist in answer:
            if cid not in prep.id_to_gallery:
                raise InvalidInputError(f"the engine returned crop id {cid}, which is not in the evaluation gallery")
            row.extend((g, dist) for g in prep.id_to_gallery[cid])
        expanded.append(row)
    width = max(1, max((len(r) for r in expanded), default=0))
    ranked = np.full((len(expanded), width), -1, dtype=np.int64)
    dists = np.full(ranked.shape, np.nan, dtype=np.float64)
    for qi, row in enumerate(expanded):
        if row:
            ranked[qi, : len(row)] = [g for g, _ in row]
            dists[qi, : len(row)] = [d for _, d in row]
    labels: dict[str, Any] = split_labels(split)  # keyword arrays, splatted next to the int options
    result = evaluate_ranked(ranked, max_rank=max_rank, clothes_changing=split.clothes_changing, **labels)
    exact = k_eff >= n_indexed and not exclude_same_camera
    settings = {
        "rerank": rerank if rerank is not None else DEFAULT_RERANK,
        "fusion": fusion,
        "k": k_eff,
        "exact": exact,
        "exclude_same_camera": exclude_same_camera,
        "rules": "clothes_changing" if split.clothes_changing else "market1501",
    }
    if not exact:
        log.warning("ranked lists hold the top %d of %d gallery crops: mAP and mINP are lower bounds", k_eff, n_indexed)
    return result, ranked, dists, settings, seconds


def split_labels(split: Split) -> dict[str, np.ndarray]:
    """Keyword arrays for the metric functions: q_pids, g_pids, q_camids, g_camids (+ clothes)."""
    labels = {
        "q_pids": np.array([s.pid for s in split.query], dtype=np.int64),
        "g_pids": np.array([s.pid for s in split.gallery], dtype=np.int64),
        "q_camids": np.array([s.camid for s in split.query], dtype=np.int64),
        "g_camids": np.array([s.camid for s in split.gallery], dtype=np.int64),
    }
    if split.clothes_changing:
        labels["q_clothes"] = np.array([s.clothes_id for s in split.query], dtype=np.int64)
        labels["g_clothes"] = np.array([s.clothes_id for s in split.gallery], dtype=np.int64)
    return labels


def evaluate_dataset(
    split: Split,
    engine_factory: Optional[EngineFactory] = None,
    *,
    encoder: Optional[str] = None,
    weights: Optional[PathLike] = None,
    device: Optional[str] = None,
    rerank: Optional[str] = None,
    fusion: Optional[str] = None,
    k: Optional[int] = None,
    exclude_same_camera: bool = False,
    cache_dir: Union[PathLike, None, bool] = None,
    report_dir: Optional[PathLike] = None,
    visualize: int = 0,
    index_dir: Optional[PathLike] = None,
    batch_size: int = 32,
    max_rank: int = 50,
    extra_settings: Optional[dict[str, Any]] = None,
    query_context: bool = True,
) -> EvalRun:
    """Score a model on a split through the engine; optionally write report.json and the HTML page.

    ``engine_factory(folder)`` makes an empty engine (default: ``Engine.create``
    with ``encoder``/``weights``/``device``). ``k=None`` ranks the whole gallery
    when it has at most FULL_RANKING_MAX_GALLERY crops (exact metrics), else the
    top DEFAULT_K. The index lives in a temporary folder unless ``index_dir``.
    """
    if visualize and report_dir is None:
        raise InvalidInputError("visualize needs a report folder for the page and its thumbnails")
    if report_dir is not None:
        report_folder(report_dir)  # an unwritable folder fails now, not after the whole run
    attrs = _fusion_needs_attributes([fusion])
    factory = engine_factory or default_engine_factory(encoder, weights, device, _annotators_for(attrs))
    t_all = time.perf_counter()
    with ExitStack() as stack:
        if index_dir is not None:
            workdir = Path(index_dir)
        else:
            workdir = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="reid-eval-")))
        prep = prepare(split, factory, workdir, cache_dir=cache_dir, batch_size=batch_size, attributes=attrs,
                       query_context=query_context)
        stack.callback(_close, prep.engine)
        result, ranked, dists, run_settings, seconds = run_queries(
            prep, rerank=rerank, fusion=fusion, k=k, exclude_same_camera=exclude_same_camera, max_rank=max_rank
        )
    timings = dict(prep.timings, query=seconds, total=time.perf_counter() - t_all)
    settings = {**prep.settings, **run_settings, "encoded_images": prep.encoded, **(extra_settings or {})}
    report = build_report(result, split, settings, timings)
    run = EvalRun(result, ranked, dists, report)
    if report_dir is not None:
        out = Path(report_dir)
        if visualize:
            run.html_path = write_ranked_lists_html(out, split, result, ranked, dists, n=int(visualize))
            report["visualization"] = run.html_path.name
        run.report_path = write_json_report(report, out / REPORT_JSON)
    return run


def _fusion_needs_attributes(fusions: Sequence[Optional[str]]) -> bool:
    """Whether any of the fusion modes reads attributes; names it does not know are the engine's to judge."""
    from ..attributes import MODES

    return any(f is not None and MODES.get(str(f).strip().lower().replace("_", "-")) is not None for f in fusions)


def _annotators_for(attributes: bool) -> tuple[str, ...]:
    from ..attributes import ANNOTATOR_NAME

    return (ANNOTATOR_NAME,) if attributes else ()


def _close(engine: Any) -> None:
    close = getattr(engine, "close", None)
    if callable(close):
        close()


def sweep(
    split: Split,
    engine_factory: Optional[EngineFactory] = None,
    *,
    reranks: Optional[Sequence[Optional[str]]] = None,
    fusions: Sequence[Optional[str]] = (None,),
    encoder: Optional[str] = None,
    weights: Optional[PathLike] = None,
    device: Optional[str] = None,
    k: Optional[int] = None,
    cache_dir: Union[PathLike, None, bool] = None,
    batch_size: int = 32,
    max_rank: int = 50,
    query_context: bool = True,
) -> list[dict[str, Any]]:
    """Score every (re-ranking preset, fusion mode) pair on one index and one set of embeddings.

    ``reranks=None`` takes every registered preset (``reid_engine.rerank.base.list_pipelines``).
    Returns one row per setting (metrics in percent, query seconds); see
    :func:`format_sweep_table`.
    """
    if reranks is None:
        from ..engine import resolve_pipeline
        from ..rerank.base import list_pipelines

        resolve_pipeline(None)  # registers the presets
        reranks = list_pipelines()
    attrs = _fusion_needs_attributes(list(fusions))
    factory = engine_factory or default_engine_factory(encoder, weights, device, _annotators_for(attrs))
    rows: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="reid-sweep-") as tmp:
        prep = prepare(split, factory, Path(tmp), cache_dir=cache_dir, batch_size=batch_size, attributes=attrs,
                       query_context=query_context)
        try:
            for rr in reranks:
                for fu in fusions:
                    result, _, _, settings, seconds = run_queries(
                        prep, rerank=rr, fusion=fu, k=k, max_rank=max_rank
                    )
                    m = result.to_dict(percent=True)
                    rows.append(
                        {
                            "rerank": rr,
                            "fusion": fu,
                            "k": settings["k"],
                            "rank1": m["rank1"],
                            "rank5": m["rank5"],
                            "mAP": m["mAP"],
                            "mINP": m["mINP"],
                            "seconds": seconds,
                        }
                    )
                    log.info("sweep %s/%s: rank-1 %.2f, mAP %.2f", rr, fu, m["rank1"], m["mAP"])
        finally:
            _close(prep.engine)
    return rows


__all__ = [
    "EvalRun",
    "Prepared",
    "default_engine_factory",
    "evaluate_dataset",
    "format_sweep_table",
    "prepare",
    "run_queries",
    "split_labels",
    "sweep",
]
