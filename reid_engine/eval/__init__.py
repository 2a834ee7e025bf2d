"""Evaluation: dataset readers, ReID metrics (CMC, mAP, mINP), reports and the engine-backed runner.

    from reid_engine.eval import read_dataset, evaluate_dataset
    split = read_dataset("../shared/data/pku_reid_dev", query_cameras=["01"], gallery_cameras=["02"])
    run = evaluate_dataset(split, weights="osnet_x0_25_msmt17.onnx")
    run.result.rank1, run.result.mAP      # fractions; run.report holds percent

The click command lives in ``reid_engine.eval.cli`` (imported by the CLI only).
"""
from .cache import EmbeddingCache, cached_embeddings, default_cache_dir, hash_files
from .datasets import (
    DatasetFormat,
    ReadOptions,
    Sample,
    Split,
    camera_from_name,
    detect_format,
    get_format,
    list_formats,
    read_dataset,
    register_format,
)
from .metrics import EvalResult, evaluate_distmat, evaluate_ranked
from .report import build_report, dataset_statistics, format_sweep_table, format_table, write_json_report
from .runner import EvalRun, default_engine_factory, evaluate_dataset, prepare, run_queries, split_labels, sweep
from .visualize import select_queries, write_ranked_lists_html

__all__ = [
    "DatasetFormat",
    "EmbeddingCache",
    "EvalResult",
    "EvalRun",
    "ReadOptions",
    "Sample",
    "Split",
    "build_report",
    "cached_embeddings",
    "camera_from_name",
    "dataset_statistics",
    "default_cache_dir",
    "default_engine_factory",
    "detect_format",
    "evaluate_dataset",
    "evaluate_distmat",
    "evaluate_ranked",
    "format_sweep_table",
    "format_table",
    "get_format",
    "hash_files",
    "list_formats",
    "prepare",
    "read_dataset",
    "register_format",
    "run_queries",
    "select_queries",
    "split_labels",
    "sweep",
    "write_json_report",
    "write_ranked_lists_html",
]
