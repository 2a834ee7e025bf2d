"""``reid-engine eval``: score a model on a dataset through the engine.

The command object is registered on the ``reid-engine`` group by the CLI
package; it parses options, calls :func:`evaluate_dataset` or :func:`sweep`
and formats the output.
"""
from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Optional

import click

from ..clitypes import PathParam
from ..errors import ReidEngineError
from .cache import ENV_CACHE_DIR
from .datasets import list_formats, read_dataset
from .report import format_sweep_table, format_table
from .runner import evaluate_dataset, sweep


def _names(values: tuple[str, ...], option: str) -> list[str]:
    """Repeated and/or comma-separated option values, in order; an empty one is a usage error naming ``option``."""
    out: list[str] = []
    for text in values:
        parts = [v.strip() for v in text.split(",")]
        if not all(parts):
            raise click.BadParameter(f"{text!r}: expected a name (or comma-separated names), not an empty one",
                                     param_hint=option)
        out.extend(parts)
    return out


def _default_report_dir(name: str) -> Path:
    return Path("reid-eval") / re.sub(r"[^A-Za-z0-9._-]+", "_", name)


@click.command("eval")
@click.argument("dataset", type=PathParam(exists=True, path_type=Path))
@click.option("--format", "fmt", default=None, metavar="NAME",
              help="Dataset layout: " + ", ".join(f.name for f in list_formats()) + " (default: detected).")
@click.option("--protocol", default=None, metavar="NAME",
              help="A layout's protocol: cuhk03_np labeled|detected, ltcc/prcc clothes_changing|standard|same_clothes.")
@click.option("--query-camera", "query_cameras", multiple=True, metavar="CAM",
              help="Query camera(s) for layouts without roles (repeat or comma-separate).")
@click.option("--gallery-camera", "gallery_cameras", multiple=True, metavar="CAM",
              help="Gallery camera(s) (default: every camera that is not a query camera).")
@click.option("--encoder", default=None, metavar="NAME", help="Registered encoder (see `reid-engine encoders`).")
@click.option("--weights", type=PathParam(exists=True, dir_okay=False, path_type=Path), default=None,
              help="Weights file; its type picks the runtime when --encoder is not given.")
@click.option("--device", default=None, help="cpu, cuda, cuda:N (default: cuda when available).")
@click.option("--rerank", "reranks", multiple=True, metavar="PRESET",
              help="Re-ranking preset (default: the engine's own); with --sweep several, comma-separated "
                   "(default: every preset).")
@click.option("--fusion", "fusions", multiple=True, metavar="MODE",
              help="Fusion mode passed to the engine's query (with --sweep: several).")
@click.option("-k", "--k", "k", type=int, default=None,
              help="Ranked-list length asked from the engine (default: the whole gallery up to 5000 crops, else 100).")
@click.option("--exclude-same-camera", is_flag=True,
              help="Query with the engine's same-camera filter (drops every same-camera gallery crop).")
@click.option("--query-context/--no-query-context", default=True, show_default=True,
              help="Show the index the query crops as context (never results) so that its per-camera "
                   "statistics know the query cameras, as an index of every camera's footage would.")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON document (metrics in percent, settings).")
@click.option("--report", "report_dir", type=PathParam(file_okay=False, path_type=Path), default=None,
              help="Write report.json (and the --visualize page) into this folder.")
@click.option("--visualize", type=click.IntRange(min=0), default=0, metavar="N",
              help="HTML page of the N worst and N best queries (default folder: reid-eval/<dataset>).")
@click.option("--sweep", "do_sweep", is_flag=True, help="Score a grid of re-ranking presets x fusion modes.")
@click.option("--cache-dir", type=PathParam(file_okay=False, path_type=Path), default=None,
              help=f"Embedding cache folder (default: ${ENV_CACHE_DIR}, else ~/.cache/reid-engine/embeddings).")
@click.option("--no-cache", is_flag=True, help="Encode everything; read and write no cache.")
@click.option("--batch-size", type=click.IntRange(min=1), default=32, show_default=True, help="Encoder batch size.")
def eval_command(
    dataset: Path,
    fmt: Optional[str],
    protocol: Optional[str],
    query_cameras: tuple[str, ...],
    gallery_cameras: tuple[str, ...],
    encoder: Optional[str],
    weights: Optional[Path],
    device: Optional[str],
    reranks: tuple[str, ...],
    fusions: tuple[str, ...],
    k: Optional[int],
    exclude_same_camera: bool,
    query_context: bool,
    as_json: bool,
    report_dir: Optional[Path],
    visualize: int,
    do_sweep: bool,
    cache_dir: Optional[Path],
    no_cache: bool,
    batch_size: int,
) -> None:
    """Score a model on DATASET (a dataset folder or a protocol CSV): Rank-1/5/10/20, mAP, mINP."""
    try:
        split = read_dataset(
            dataset,
            fmt,
            protocol=protocol,
            query_cameras=_names(query_cameras, "--query-camera") or None,
            gallery_cameras=_names(gallery_cameras, "--gallery-camera") or None,
        )
        if no_cache and cache_dir is not None:
            raise click.UsageError("--cache-dir and --no-cache contradict each other: give one")
        cache = False if no_cache else cache_dir
        rerank_names = _names(reranks, "--rerank")
        fusion_names = _names(fusions, "--fusion")
        if do_sweep:
            ignored = [name for name, given in (("--exclude-same-camera", exclude_same_camera),
                                                ("--report", report_dir is not None), ("--visualize", visualize > 0))
                       if given]
            if ignored:
                raise click.UsageError(f"{', '.join(ignored)}: not with --sweep (score one setting to use them)")
            rows = sweep(
                split,
                reranks=rerank_names or None,
                fusions=fusion_names or [None],
                encoder=encoder,
                weights=weights,
                device=device,
                k=k,
                cache_dir=cache,
                batch_size=batch_size,
                query_context=query_context,
            )
            if as_json:
                doc = {"dataset": split.name, "protocol": split.protocol, "unit": "percent", "rows": rows}
                click.echo(json.dumps(doc, indent=2))
            else:
                click.echo(f"{split.name}" + (f" ({split.protocol})" if split.protocol else ""))
                click.echo(format_sweep_table(rows))
            return
        if len(rerank_names) > 1 or len(fusion_names) > 1:
            raise click.UsageError("several --rerank/--fusion values need --sweep")
        if visualize and report_dir is None:
            report_dir = _default_report_dir(split.name)
        run = evaluate_dataset(
            split,
            encoder=encoder,
            weights=weights,
            device=device,
            rerank=rerank_names[0] if rerank_names else None,
            fusion=fusion_names[0] if fusion_names else None,
            k=k,
            exclude_same_camera=exclude_same_camera,
            cache_dir=cache,
            report_dir=report_dir,
            visualize=visualize,
            batch_size=batch_size,
            query_context=query_context,
            extra_settings={"dataset": str(dataset), "format": split.format, "protocol": split.protocol},
        )
    except ReidEngineError as exc:
        raise click.ClickException(str(exc)) from None
    if as_json:
        click.echo(json.dumps(run.report, indent=2))
    else:
        click.echo(format_table(run.report))
    if run.report_path is not None:
        click.echo(f"report: {run.report_path}", err=True)
    if run.html_path is not None:
        click.echo(f"ranked lists: {run.html_path}", err=True)


__all__ = ["eval_command"]
