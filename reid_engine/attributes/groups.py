"""The attribute layout, named in one place: what the model outputs and which cues survive a change of clothes.

Every other module (annotator, fusion, search, evaluation) refers to these
names and to the vector layout below; nothing else spells them out.
"""
from __future__ import annotations

from typing import Any, Mapping, Optional, Sequence

import numpy as np

from ..errors import InvalidInputError

#: binary attributes in the order of the model's first output
BINARY: tuple[str, ...] = (
    "is_male",
    "has_bag",
    "has_backpack",
    "has_hat",
    "has_longsleeves",
    "has_longpants",
    "has_longhair",
    "has_coat_jacket",
)

#: clothes-invariant: the person, not the outfit
INVARIANT: tuple[str, ...] = ("is_male", "has_longhair")
#: carried items: invariant to a change of clothes but not to a change of day (a weaker cue)
BELONGINGS: tuple[str, ...] = ("has_bag", "has_backpack", "has_hat")
#: clothing-dependent binary attributes
CLOTHING: tuple[str, ...] = ("has_longsleeves", "has_longpants", "has_coat_jacket")
#: clothing-dependent colours, sampled where the model points (CIE Lab)
COLOURS: tuple[str, ...] = ("top_color", "bottom_color")
#: the model's colour sampling points, normalised (x, y) in the crop
POINTS: tuple[str, ...] = ("top_point", "bottom_point")

GROUPS: dict[str, tuple[str, ...]] = {
    "invariant": INVARIANT,
    "belongings": BELONGINGS,
    "clothing": CLOTHING + COLOURS,
}

# -- the dense vector kept per crop: 8 probabilities, two Lab colours, two points ----------------------
#: (name, width) of each field of an attribute vector, in order
LAYOUT: tuple[tuple[str, int], ...] = tuple(
    [(n, 1) for n in BINARY] + [(c, 3) for c in COLOURS] + [(p, 2) for p in POINTS]
)
SLICES: dict[str, slice] = {}
_pos = 0
for _name, _width in LAYOUT:
    SLICES[_name] = slice(_pos, _pos + _width)
    _pos += _width
#: length of an attribute vector
WIDTH = _pos
#: column of each binary attribute in a vector
COLUMN: dict[str, int] = {n: SLICES[n].start for n in BINARY}


def note_to_vector(note: Optional[Mapping[str, Any]]) -> np.ndarray:
    """A stored per-crop dict -> float32 vector of length WIDTH; missing fields are NaN."""
    v = np.full(WIDTH, np.nan, np.float32)
    if not note:
        return v
    for name, width in LAYOUT:
        value = note.get(name)
        if value is None:
            continue
        arr = np.asarray(value, dtype=np.float32).reshape(-1)
        if arr.size == width:
            v[SLICES[name]] = arr
    return v


def vector_to_note(v: np.ndarray, digits: int = 4) -> dict[str, Any]:
    """A float vector -> the JSON-able dict stored in a row's ``extra`` (rounded; NaN fields left out)."""
    v = np.asarray(v, dtype=np.float64).reshape(-1)
    if v.size != WIDTH:
        raise InvalidInputError(f"attribute vector of length {v.size}: expected {WIDTH}")
    note: dict[str, Any] = {}
    for name, width in LAYOUT:
        part = v[SLICES[name]]
        if np.isnan(part).any():
            continue
        note[name] = round(float(part[0]), digits) if width == 1 else [round(float(x), digits) for x in part]
    return note


def notes_to_matrix(notes: Sequence[Optional[Mapping[str, Any]]]) -> np.ndarray:
    """(N, WIDTH) float32 matrix of stored dicts (NaN where a crop has no attributes)."""
    if not notes:
        return np.zeros((0, WIDTH), np.float32)
    return np.stack([note_to_vector(n) for n in notes])


def probabilities(matrix: np.ndarray, names: Sequence[str] = BINARY) -> np.ndarray:
    """The probability columns of ``names`` from (..., WIDTH) vectors."""
    return np.asarray(matrix)[..., [COLUMN[n] for n in names]]
