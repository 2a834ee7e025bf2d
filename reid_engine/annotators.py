"""Annotators: per-crop models run at index time whose outputs are stored with each row.

An annotator (for example a pedestrian-attribute model) takes the crops of one
commit block and returns one JSON-able dict per crop; the engine stores it in
the row's ``extra`` under the annotator's name. Indexes record which annotators
they run in their manifest, so later additions are annotated the same way.
"""
from __future__ import annotations

from typing import Any, Callable, Protocol, Sequence

from .errors import UnknownNameError
from .images import ImageLike


class Annotator(Protocol):
    """Computes per-crop metadata; ``name`` is the key it is stored under."""

    name: str

    def annotate(self, images: Sequence[ImageLike]) -> list[dict[str, Any]]:
        """One dict per image, in input order."""
        ...


_ANNOTATORS: dict[str, Callable[..., Annotator]] = {}


def register_annotator(name: str, factory: Callable[..., Annotator]) -> None:
    """Make an annotator available by name (``factory(device=...)`` builds it)."""
    _ANNOTATORS[name] = factory


def list_annotators() -> list[str]:
    return sorted(_ANNOTATORS)


def create_annotator(name: str, device: str | None = None) -> Annotator:
    """Build a registered annotator; unknown names list the valid ones."""
    if name not in _ANNOTATORS:
        raise UnknownNameError(
            f"unknown annotator {name!r}: expected one of {', '.join(list_annotators()) or '(none registered)'}"
        )
    return _ANNOTATORS[name](device=device)
