"""One table from error type to CLI exit code and HTTP status, and the JSON shape of an error."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import click

from .. import errors as E


class RequestError(E.InvalidInputError):
    """A request whose fields do not fit together (the CLI's usage errors: exit code 2)."""


class NotFoundError(E.ReidEngineError, LookupError):
    """A crop or track id that the index does not hold."""


class PayloadTooLargeError(E.InvalidInputError):
    """An upload over the size or pixel-count limit."""


class UnsupportedMediaError(E.ImageReadError):
    """Uploaded bytes that are not an image type the service accepts."""


class AuthError(E.ReidEngineError):
    """A write request without the server's bearer token."""


class WritesDisabledError(E.ReidEngineError):
    """A write request to a server started without a token."""


class NoPixelsError(NotFoundError):
    """A crop whose pixels cannot be had any more (file or video gone, or never recorded)."""


@dataclass(frozen=True)
class Outcome:
    """How an error surfaces: CLI exit code and HTTP status."""

    exit_code: int
    http_status: int


#: the one map; the most specific class of an error decides (looked up along its MRO)
ERROR_MAP: dict[type, Outcome] = {
    click.UsageError: Outcome(2, 400),
    RequestError: Outcome(2, 422),
    PayloadTooLargeError: Outcome(1, 413),
    UnsupportedMediaError: Outcome(1, 415),
    E.ImageReadError: Outcome(1, 400),
    E.UnknownNameError: Outcome(1, 400),
    E.InvalidInputError: Outcome(1, 400),
    NoPixelsError: Outcome(1, 404),
    NotFoundError: Outcome(1, 404),
    E.IndexNotFoundError: Outcome(1, 404),
    E.AttributesNotIndexedError: Outcome(1, 409),
    E.UnsupportedOperationError: Outcome(1, 409),
    E.EncoderMismatchError: Outcome(1, 409),
    E.IndexBusyError: Outcome(1, 503),
    E.WeightsError: Outcome(1, 500),
    E.IndexCorruptError: Outcome(1, 500),
    AuthError: Outcome(1, 401),
    WritesDisabledError: Outcome(1, 403),
    E.ReidEngineError: Outcome(1, 400),
}

UNEXPECTED = Outcome(1, 500)


def outcome_of(exc: BaseException) -> Outcome:
    """The exit code and HTTP status of an error (500 / exit 1 for anything unforeseen)."""
    for cls in type(exc).__mro__:
        if cls in ERROR_MAP:
            return ERROR_MAP[cls]
    return UNEXPECTED


def message_of(exc: BaseException) -> str:
    """The one-line message the CLI prints (without its ``Error: `` prefix)."""
    if isinstance(exc, click.ClickException):
        text = exc.format_message()
    else:
        text = str(exc) or type(exc).__name__
    return " ".join(text.split())


def error_body(exc: BaseException) -> dict[str, Any]:
    """The JSON document of an error: ``{"error": message, "type": class name}``."""
    return {"error": message_of(exc), "type": type(exc).__name__}
