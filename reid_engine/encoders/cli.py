"""``reid-engine convert-weights``: turn a batch-norm-folded ONNX export into a torchreid checkpoint.

The command object is ``convert_weights``; the main group registers it.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

import click

from ..clitypes import PathParam
from ..errors import ReidEngineError
from .builtin import OSNET_ARCHS


class _LibraryErrors(click.Command):
    """Library errors become one-line messages, also when the command runs on its own."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except ReidEngineError as exc:
            raise click.ClickException(str(exc)) from None


@click.command("convert-weights", cls=_LibraryErrors)
@click.argument("onnx_file", type=PathParam(exists=True, dir_okay=False, path_type=Path))
@click.option("--out", "out", required=True, type=PathParam(dir_okay=False, path_type=Path),
              help="Where to write the torchreid checkpoint (.pth).")
@click.option("--arch", default="osnet_x0_25", show_default=True, type=click.Choice(sorted(OSNET_ARCHS)),
              help="torchreid architecture the ONNX file was exported from.")
@click.option("--force", is_flag=True, help="Replace OUT if it exists.")
@click.option("--no-verify", is_flag=True, help="Skip checking the result against ONNX Runtime.")
def convert_weights(onnx_file: Path, out: Path, arch: str, force: bool, no_verify: bool) -> None:
    """Convert ONNX_FILE (torchreid export, batch norm folded) into a torchreid state dict."""
    from .convert import convert_onnx_weights

    written = convert_onnx_weights(onnx_file, out, arch=arch, overwrite=force, verify=not no_verify)
    checked = "" if no_verify else " (matches ONNX Runtime on probe crops)"
    click.echo(f"wrote {written}: {arch} state dict{checked}; use it with --encoder {arch} --weights {written}")
