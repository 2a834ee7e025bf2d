"""One exception family for the whole library.

The library raises these; only the CLI turns them into one-line messages.
"""
from __future__ import annotations


def one_line(text: str) -> str:
    """``text`` as one printable line: line breaks folded, undecodable file-name bytes escaped."""
    text = " ".join(part.strip() for part in str(text).splitlines() if part.strip())
    return printable(text)


def printable(text: str) -> str:
    """``text`` with the bytes of undecodable file names (surrogate escapes) shown as ``\\xNN``."""
    try:
        raw = text.encode("utf-8", "surrogateescape")
    except UnicodeEncodeError:  # a lone surrogate that is no file-name byte
        return text.encode("utf-8", "backslashreplace").decode("utf-8")
    return raw.decode("utf-8", "backslashreplace")


class ReidEngineError(Exception):
    """Base class of every error reid-engine raises on purpose; its message is always one line."""

    def __str__(self) -> str:
        return one_line(super().__str__())


class InvalidInputError(ReidEngineError, ValueError):
    """An argument or a file's content is not what was expected."""


class ImageReadError(InvalidInputError):
    """An image file is missing, unreadable or corrupt."""


class UnknownNameError(InvalidInputError, KeyError):
    """A registry lookup failed; the message lists the valid names."""

    def __str__(self) -> str:  # KeyError would quote the message
        return one_line(str(self.args[0])) if self.args else ""


class UnknownEncoderError(UnknownNameError):
    """No encoder is registered under that name."""


class WeightsError(ReidEngineError):
    """A weights file is missing, of the wrong kind, or does not fit the model."""


class IndexNotFoundError(ReidEngineError, FileNotFoundError):
    """No index exists at the given path or name."""


class IndexCorruptError(ReidEngineError):
    """The parts of an index (vectors, rows, manifest) disagree."""


class EncoderMismatchError(ReidEngineError):
    """The encoder asked for differs from the one the index was built with."""


class UnsupportedOperationError(ReidEngineError):
    """The index type cannot do what was asked (e.g. remove from HNSW)."""


class AttributesNotIndexedError(UnsupportedOperationError):
    """The index was built without the attribute annotator, so it cannot fuse or search by attributes."""


class IndexBusyError(ReidEngineError):
    """Another process holds the index's write lock."""


class ImageTooLargeError(ImageReadError):
    """An image's header announces more pixels than the configured limit."""


class DatabaseURLError(InvalidInputError):
    """A database URL is malformed or names a driver that is not installed."""


class DatabaseUnavailableError(ReidEngineError):
    """The index's database cannot be reached (server down, refused, permission)."""
