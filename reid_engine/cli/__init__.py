"""The ``reid-engine`` command line: thin wrappers over the library."""
from __future__ import annotations

import logging
import sys
from typing import Any

import click

from ..errors import ReidEngineError
from ..service.errors import RequestError, message_of, outcome_of


class ReidGroup(click.Group):
    """A click group that turns library errors into one-line messages with the exit code of the service's error map."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except RequestError as exc:
            raise click.UsageError(message_of(exc), ctx=click.get_current_context(silent=True) or ctx) from None
        except ReidEngineError as exc:
            err = click.ClickException(message_of(exc))
            # click types exit_code as a ClassVar, but reads it from the instance it catches
            err.exit_code = outcome_of(exc).exit_code  # type: ignore[misc]
            raise err from None


@click.group(cls=ReidGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.option("-v", "--verbose", count=True, help="More log output (-vv for debug).")
@click.option("-q", "--quiet", is_flag=True, help="Only errors.")
@click.version_option(package_name="reid-engine")
def main(verbose: int, quiet: bool) -> None:
    """Person re-identification: index person crops, query by image, evaluate."""
    level = logging.ERROR if quiet else (logging.WARNING, logging.INFO, logging.DEBUG)[min(verbose, 2)]
    logging.basicConfig(level=level, format="%(levelname)s %(name)s: %(message)s", stream=sys.stderr)


from . import commands as _commands  # noqa: E402,F401  registers the core commands
from . import plugins as _plugins  # noqa: E402,F401  registers commands defined beside their capability

__all__ = ["main"]
