"""The re-ranker interface: candidates in, re-scored candidates out.

A query is answered in two stages. The vector backend returns a candidate pool
(the top ``pool`` gallery rows by cosine, filters applied inside the search);
then the re-rankers of a preset run one after the other, each taking the query
vectors and the pool and returning the pool re-scored (and possibly re-ordered
or trimmed). Re-rankers never see the whole gallery: what they know of it comes
through ``GalleryView`` (vectors and metadata of given ids, index-time state of
the hooks, more searches).

Index-time state (neighbour lists, per-camera statistics) is kept by
``IndexHook`` objects: the store calls each registered hook once per commit and
records the small dict it returns in the same SQL transaction as the rows,
without knowing what it holds.

A re-ranker must be batch independent: the ranked list of one query may not
depend on which other queries share the call (``same_person`` queries are the
explicit exception: they are pooled into one list on purpose).
"""
from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, Optional, Protocol, Sequence

import numpy as np

from ..errors import UnknownNameError

if TYPE_CHECKING:
    from ..index.backend import IdsLike


@dataclass(frozen=True)
class Candidates:
    """A candidate pool per query: ``ids`` (Q, P) int64 padded with -1, ``scores`` (Q, P) float32, higher is better.

    Rows are kept sorted by descending score (padding last, score -inf).
    """

    ids: np.ndarray
    scores: np.ndarray

    @staticmethod
    def sorted(ids: np.ndarray, scores: np.ndarray) -> "Candidates":
        """A pool with each row re-ordered by descending score (padding -1 ids last)."""
        ids = np.asarray(ids, np.int64)
        scores = np.where(ids >= 0, np.asarray(scores, np.float32), -np.inf).astype(np.float32)
        order = np.argsort(-scores, axis=1, kind="stable")
        return Candidates(np.take_along_axis(ids, order, 1), np.take_along_axis(scores, order, 1))

    def top(self, k: int) -> "Candidates":
        return Candidates(self.ids[:, :k], self.scores[:, :k])

    def then(self, ids: np.ndarray, scores: np.ndarray, k: int) -> "Candidates":
        """Each row, then row r of (``ids``, ``scores``) (the first stage past the pool, in its order) without
        the ids already in it, cut to ``k`` columns (-1 / -inf padding)."""
        out_i = np.full((len(self.ids), k), -1, np.int64)
        out_s = np.full((len(self.ids), k), -np.inf, np.float32)
        for r in range(len(self.ids)):
            tail = ~np.isin(ids[r], self.ids[r])
            top_i = np.concatenate([self.ids[r], ids[r][tail]])[:k]
            out_i[r, :len(top_i)] = top_i
            out_s[r, :len(top_i)] = np.concatenate([self.scores[r], scores[r][tail]])[:k]
        return Candidates(out_i, out_s)

    @property
    def valid(self) -> np.ndarray:
        return self.ids >= 0


class GalleryView(Protocol):
    """What a re-ranker or an index hook may ask of the committed gallery."""

    @property
    def count(self) -> int: ...

    def vectors(self, ids: IdsLike) -> np.ndarray:
        """Stored (L2-normalised) vectors of the given live ids, in order."""

    def fields(self, ids: IdsLike) -> dict[str, np.ndarray]:
        """The scalar fields (camera, timestamp, source, track) of the given ids, as arrays."""

    def search(self, queries: np.ndarray, k: int, where: Any = None, params: Any = None
               ) -> tuple[np.ndarray, np.ndarray]:
        """Top-k (similarities, ids) by cosine through the vector backend (a ``SearchFilter`` as ``where``,
        ``SearchParams`` or a dict of them as ``params``)."""

    def rows(self, ids: Sequence[int]) -> dict[int, dict[str, Any]]:
        """SQL rows (pid, camera, timestamp, track, source, extra...) of the given ids."""

    def knn(self, queries: np.ndarray, rows: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """Exact top-``k`` of given vectors (not the gallery's) for each query: (similarities, row numbers), best
        first, the lower row first among ties, -inf / -1 where there are fewer rows."""

    def track_members(self, tracks: Sequence[str]) -> dict[str, np.ndarray]:
        """Live crop ids of each named track (from footage ingest)."""

    def state(self, hook: str) -> Any:
        """The loaded index-time state of the hook called ``hook`` (None when the index keeps none)."""


@dataclass
class RerankContext:
    """Everything a re-ranker may use besides the queries and the pool.

    ``query_cameras``/``query_tracks``: per query, None when unknown. ``same_person``:
    the queries show one person and are answered as one pooled list (every row of
    the pool is then that list). ``query_attributes``: (Q, WIDTH) pedestrian
    attributes, for attribute fusion. ``k``: how many hits the caller wants.
    """

    gallery: GalleryView
    k: int
    query_cameras: list[Optional[str]] = field(default_factory=list)
    query_tracks: list[Optional[str]] = field(default_factory=list)
    same_person: bool = False
    query_attributes: Optional[np.ndarray] = None
    where: Any = None  # the SearchFilter of the first stage, for re-rankers that search again
    options: dict[str, Any] = field(default_factory=dict)


class Reranker(ABC):
    """One re-scoring step."""

    name: ClassVar[str]
    #: index-time hooks this re-ranker reads through ``GalleryView.state``
    hooks: ClassVar[tuple[str, ...]] = ()

    def pool_size(self, k: int) -> int:
        """How many first-stage candidates this step wants for ``k`` answers."""
        return k

    def first_stage_beam(self, where: Any, k: int) -> Optional[float]:
        """How wide an approximate first stage of ``k`` results this step needs, as a multiple of the index's
        default beam for ``k`` (``SearchParams.beam_scale``; ``where`` is the search's filter): None for no need
        of its own; below 1 only for a step that finds the first stage's misses itself or that needs the recall
        of fewer than ``k`` results."""
        return None

    @abstractmethod
    def rerank(self, queries: np.ndarray, pool: Candidates, ctx: RerankContext) -> Candidates:
        """Re-scored pool (same number of rows; sorted by descending score)."""


@dataclass(frozen=True)
class Pipeline:
    """A registered composition of re-rankers (a preset)."""

    name: str
    steps: tuple[Reranker, ...] = ()
    description: str = ""

    def pool_size(self, k: int) -> int:
        return max([k] + [s.pool_size(k) for s in self.steps])

    def first_stage_beam(self, where: Any = None, k: Optional[int] = None) -> float:
        """The first-stage beam the steps ask for (``Reranker.first_stage_beam``) for a search of ``k``
        results (default: the pool for 100 answers): their product, since each narrows the beam for a reason
        of its own (completing the first stage's misses; needing the recall of fewer results); 1 when none
        asks."""
        k = self.pool_size(100) if k is None else int(k)
        asked = [b for b in (s.first_stage_beam(where, k) for s in self.steps) if b is not None]
        return float(np.prod(asked)) if asked else 1.0

    @property
    def hooks(self) -> tuple[str, ...]:
        return tuple(dict.fromkeys(h for s in self.steps for h in s.hooks))

    def run(self, queries: np.ndarray, pool: Candidates, ctx: RerankContext) -> Candidates:
        for step in self.steps:
            pool = step.rerank(queries, pool, ctx)
        return pool

    def with_steps(self, *steps: Reranker) -> "Pipeline":
        """This pipeline with more steps appended (e.g. attribute fusion)."""
        return replace(self, steps=self.steps + steps)


class IndexHook(ABC):
    """Index-time state kept beside the vectors, one immutable version per commit."""

    name: ClassVar[str]

    @abstractmethod
    def empty_state(self) -> dict[str, Any]:
        """The state of an empty index."""

    @abstractmethod
    def prepare(
        self,
        folder: Path,
        generation: int,
        state: dict[str, Any],
        gallery: GalleryView,
        added_ids: np.ndarray,
        added_vectors: np.ndarray,
        added_fields: dict[str, np.ndarray],
        removed_ids: np.ndarray,
    ) -> dict[str, Any]:
        """Write this commit's state durably (files named with ``generation``); return the new state dict.

        ``gallery`` is the committed gallery *before* the change.
        """

    @abstractmethod
    def load(self, folder: Path, state: dict[str, Any]) -> Any:
        """The state object re-rankers read (``GalleryView.state(name)``)."""

    def observe(self, folder: Path, generation: int, state: dict[str, Any], gallery: GalleryView,
                vectors: np.ndarray, fields: dict[str, np.ndarray]) -> Optional[dict[str, Any]]:
        """Learn from context crops that are not gallery rows (never results); None = state unchanged.

        Like ``prepare``, it writes the new state durably for ``generation``; the
        store commits it with no row change (``IndexStore.observe``).
        """
        return None

    def files(self, state: dict[str, Any]) -> list[str]:
        """File names (inside the index folder) the state refers to, so cleanup keeps them."""
        return []

    def compact(self, folder: Path, generation: int, state: dict[str, Any], gallery: GalleryView) -> dict[str, Any]:
        """A state with the same content in fewer files (called by ``reid-engine compact``)."""
        return state


#: a query re-ranks its top ``pipeline.pool_size(min(k, RERANK_K))`` candidates; the rest of its top ``k``
#: follows in cosine order, so a top-k answer is a prefix of any longer one (the engine, ``MemoryGallery.query``)
RERANK_K = 100

_PIPELINES: dict[str, Pipeline] = {}
_HOOKS: dict[str, type[IndexHook]] = {}


def register_pipeline(pipeline: Pipeline) -> Pipeline:
    _PIPELINES[pipeline.name] = pipeline
    return pipeline


def get_pipeline(name: str) -> Pipeline:
    """The preset called ``name``; an unknown name raises ``UnknownNameError`` listing them."""
    try:
        return _PIPELINES[name]
    except (KeyError, TypeError):
        raise UnknownNameError(
            f"unknown re-ranking preset {name!r}; valid names: {', '.join(sorted(_PIPELINES))}"
        ) from None


def list_pipelines() -> list[str]:
    return sorted(_PIPELINES)


def register_hook(cls: type[IndexHook]) -> type[IndexHook]:
    _HOOKS[cls.name] = cls
    return cls


def get_hook(name: str) -> IndexHook:
    try:
        return _HOOKS[name]()
    except KeyError:
        raise UnknownNameError(f"unknown index hook {name!r}; valid names: {', '.join(sorted(_HOOKS))}") from None


def list_hooks() -> list[str]:
    return sorted(_HOOKS)


register_pipeline(Pipeline("none", (), "plain cosine similarity, no re-ranking"))
