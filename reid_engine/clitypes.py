"""Click parameter types shared by the commands of ``cli/`` and those defined beside their capability.

Kept outside ``cli/`` so that a capability's command module can import it
without importing (and so registering) the whole command group.
"""
from __future__ import annotations

from typing import Any, Optional

import click

from .assets import expand_user
from .errors import InvalidInputError


class PathParam(click.Path):
    """``click.Path`` that refuses an empty value and expands a leading ``~``.

    An empty string would otherwise become ``Path(".")``: the current folder,
    which ``index ''`` would index and ``--report ''`` would write into.
    """

    def convert(self, value: Any, param: Optional[click.Parameter], ctx: Optional[click.Context]) -> Any:
        if isinstance(value, str):
            if not value.strip():
                self.fail(f"{value!r}: expected a path, not an empty value", param, ctx)
            try:
                value = str(expand_user(value))
            except InvalidInputError as exc:
                self.fail(str(exc), param, ctx)
        return super().convert(value, param, ctx)


__all__ = ["PathParam"]
