"""Search by attributes: a small vocabulary of terms ("male", "long_hair", "not-hat") over stored probabilities.

A term names one binary attribute and a side: ``male`` holds when
P(is_male) >= threshold, ``female`` when P(is_male) <= 1 - threshold. Any term
can be negated with a ``not-`` (or ``no-``) prefix. Case, ``-``, ``_`` and
spaces are interchangeable ("Long hair" = "long-hair" = "long_hair"), and one
string may hold several comma-separated terms.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Iterable, Union

import numpy as np

from ..errors import InvalidInputError, UnknownNameError
from .groups import COLUMN

#: term -> (attribute, True when the attribute must be present)
VOCABULARY: dict[str, tuple[str, bool]] = {
    "male": ("is_male", True),
    "female": ("is_male", False),
    "long_hair": ("has_longhair", True),
    "short_hair": ("has_longhair", False),
    "bag": ("has_bag", True),
    "backpack": ("has_backpack", True),
    "hat": ("has_hat", True),
    "long_sleeves": ("has_longsleeves", True),
    "short_sleeves": ("has_longsleeves", False),
    "long_pants": ("has_longpants", True),
    "shorts": ("has_longpants", False),
    "coat": ("has_coat_jacket", True),
}
NEGATIONS = ("not_", "no_")
DEFAULT_THRESHOLD = 0.5


def _canonical(term: str) -> str:
    return re.sub(r"[\s\-_]+", "_", term.strip().lower())


def vocabulary_help() -> str:
    """One line naming the valid terms."""
    return f"{', '.join(VOCABULARY)} (prefix not- to negate, e.g. not-hat)"


def parse_term(term: str) -> tuple[str, bool]:
    """One term -> (attribute, wanted); unknown terms raise ``UnknownNameError`` listing the valid ones."""
    name = _canonical(term)
    positive = True
    for prefix in NEGATIONS:
        if name.startswith(prefix):
            name, positive = name[len(prefix) :], False
            break
    if name not in VOCABULARY:
        raise UnknownNameError(f"unknown attribute {term.strip()!r}; valid: {vocabulary_help()}")
    attribute, present = VOCABULARY[name]
    return attribute, present == positive


@dataclass(frozen=True)
class AttributeQuery:
    """Required attribute values and the probability a crop must reach for each."""

    terms: tuple[tuple[str, bool], ...]
    threshold: float = DEFAULT_THRESHOLD
    labels: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if not 0.0 < self.threshold < 1.0:
            raise InvalidInputError(f"attribute threshold {self.threshold}: expected a probability in (0, 1)")
        seen: dict[str, bool] = {}
        for attribute, wanted in self.terms:
            if seen.get(attribute, wanted) != wanted:
                raise InvalidInputError(f"contradictory attribute terms: {', '.join(self.labels) or attribute}")
            seen[attribute] = wanted

    @classmethod
    def parse(cls, terms: Union[str, Iterable[str]], threshold: float = DEFAULT_THRESHOLD) -> "AttributeQuery":
        """Terms (a list, or one comma-separated string) -> a query; empty terms are ignored."""
        if not isinstance(terms, str) and not isinstance(terms, Iterable):
            raise InvalidInputError(f"attribute terms {terms!r}: expected a list of terms or a comma-separated text")
        items = [terms] if isinstance(terms, str) else list(terms)
        if not all(isinstance(t, str) for t in items):
            raise InvalidInputError(f"attribute terms {items!r}: expected texts such as 'male'")
        words = [w for t in items for w in t.split(",") if w.strip()]
        if not words:
            raise InvalidInputError(f"no attribute terms given; valid: {vocabulary_help()}")
        parsed = tuple(dict.fromkeys(parse_term(w) for w in words))
        return cls(parsed, float(threshold), tuple(_canonical(w) for w in words))

    def describe(self) -> str:
        return ", ".join(self.labels) if self.labels else ", ".join(f"{'' if w else 'not-'}{a}" for a, w in self.terms)

    def term_probabilities(self, matrix: np.ndarray) -> np.ndarray:
        """(N, T) probability that each term holds for each crop (NaN where unknown)."""
        m = np.asarray(matrix, np.float32)
        cols = [m[:, COLUMN[a]] if w else 1.0 - m[:, COLUMN[a]] for a, w in self.terms]
        return np.stack(cols, axis=1) if cols else np.ones((len(m), 0), np.float32)

    def matches(self, matrix: np.ndarray) -> np.ndarray:
        """(N,) bool: every term reaches the threshold (crops without attributes never match)."""
        p = self.term_probabilities(matrix)
        with np.errstate(invalid="ignore"):
            return np.all(p >= self.threshold, axis=1)

    def scores(self, matrix: np.ndarray) -> np.ndarray:
        """(N,) joint probability of all terms (product, as if independent); NaN rows give 0."""
        return np.nan_to_num(np.prod(self.term_probabilities(matrix), axis=1), nan=0.0).astype(np.float32)


def rank_by_attributes(
    ids: np.ndarray, matrix: np.ndarray, query: AttributeQuery, k: int
) -> tuple[np.ndarray, np.ndarray]:
    """The best ``k`` matching crops: (ids, scores), by descending joint probability, ties by ascending id."""
    ids = np.asarray(ids, np.int64)
    ok = query.matches(matrix)
    cand = ids[ok]
    score = query.scores(np.asarray(matrix)[ok])
    order = np.lexsort((cand, -score))[: max(0, int(k))]
    return cand[order], score[order]
