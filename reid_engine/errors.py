"""One exception family for the whole library.

The library raises these; only the CLI turns them into one-line messages.
"""
from __future__ import annotations


class ReidEngineError(Exception):
    """Base class of every error reid-engine raises on purpose."""


class InvalidInputError(ReidEngineError, ValueError):
    """An argument or a file's content is not what was expected."""


class ImageReadError(InvalidInputError):
    """An image file is missing, unreadable or corrupt."""


class UnknownNameError(InvalidInputError, KeyError):
    """A registry lookup failed; the message lists the valid names."""

    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0]) if self.args else ""


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
