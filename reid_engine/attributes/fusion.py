"""Attribute fusion: re-score an appearance-ranked candidate pool with pedestrian attributes.

Pure functions over arrays. The engine finds a pool of candidates per query
with its (re-ranked) appearance search, then calls :func:`fuse_rank`, which
adds attribute terms to each candidate's appearance distance and re-sorts:

    fused = a * r_app + sum_i w_i * disagree_i + sum_c w_c * colour_c + sum_i l_i * contradiction_i

* ``r_app``: the appearance distance relative to the query's own pool,
  ``(d - d_rank1) / (d_rank20 - d_rank1)`` (:func:`relative_distance`), so one
  set of weights fits encoders and re-ranking presets whose distances have
  very different scales;
* ``disagree_i = p (1 - q) + q (1 - p)``: the chance two independent binary
  predictions p (query) and q (candidate) of attribute i disagree;
* ``colour_c``: chroma difference (Lab a, b) of the top / bottom clothing colour, / 100, at most 1;
* ``contradiction_i = conf(p) conf(q)`` when p and q fall on opposite sides of
  0.5, else 0, with ``conf(p) = clip((|2p - 1| - gate) / (1 - gate), 0, 1)``:
  a penalty that only confident, contradicting predictions pay;
* before any of this, the gallery side's probabilities can be smoothed over each
  crop's mutual appearance neighbours (:func:`smooth_attributes`, with the stored
  neighbour lists): crops of one person in one outfit are near each other, so
  their average prediction is steadier than any one crop's. The query side is
  never smoothed over the other queries of a call: answers stay batch independent.

A missing attribute (NaN) counts as unknown: probability 0.5, no confidence,
no colour term. :data:`MODES` holds the one set of weights used everywhere.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Mapping, Optional, Union

import numpy as np

from ..errors import InvalidInputError, UnknownNameError
from .groups import BELONGINGS, BINARY, CLOTHING, COLOURS, COLUMN, INVARIANT, SLICES, WIDTH

#: the fusion modes a query accepts
FUSION_MODES = ("appearance", "attributes", "clothes-change")
#: candidates re-scored per query: max(k, FUSION_POOL)
FUSION_POOL = 100


@dataclass(frozen=True)
class FusionConfig:
    """Weights of one fusion mode (see the module docstring for the formula)."""

    appearance: float = 1.0
    disagree: Mapping[str, float] = field(default_factory=dict)  # binary attribute -> weight
    colour: Mapping[str, float] = field(default_factory=dict)  # "top_color"/"bottom_color" -> weight
    contradiction: Mapping[str, float] = field(default_factory=dict)  # binary attribute -> penalty
    gate: float = 0.5  # |2p - 1| below this is no confidence at all
    smooth: tuple[str, ...] = ()  # attributes averaged over each side's appearance neighbours
    smooth_k: int = 3  # neighbours per crop for the smoothing (mutual within its own side)
    scale_rank: Optional[int] = 20  # appearance distances in units of each query's rank-1..rank-N spread

    def __post_init__(self) -> None:
        if self.appearance < 0:
            raise InvalidInputError(f"FusionConfig.appearance must be >= 0, got {self.appearance}")
        if not 0.0 <= self.gate < 1.0:
            raise InvalidInputError(f"FusionConfig.gate must be in [0, 1), got {self.gate}")
        for what, names, valid in (
            ("disagree", self.disagree, BINARY),
            ("contradiction", self.contradiction, BINARY),
            ("colour", self.colour, COLOURS),
            ("smooth", {n: 0.0 for n in self.smooth}, BINARY),
        ):
            for name, w in names.items():
                if name not in valid:
                    raise InvalidInputError(
                        f"FusionConfig.{what}: unknown attribute {name!r}; valid: {', '.join(valid)}"
                    )
                if w < 0:
                    raise InvalidInputError(f"FusionConfig.{what}[{name!r}] must be >= 0, got {w}")
        if self.scale_rank is not None and self.scale_rank < 2:
            raise InvalidInputError(f"FusionConfig.scale_rank must be >= 2 or None, got {self.scale_rank}")
        if self.smooth_k < 1:
            raise InvalidInputError(f"FusionConfig.smooth_k must be >= 1, got {self.smooth_k}")

    @property
    def is_identity(self) -> bool:
        """True when fusion cannot change the appearance order."""
        return not (any(self.disagree.values()) or any(self.colour.values()) or any(self.contradiction.values()))


#: one set of weights for every data set, encoder and re-ranking preset (chosen once; see docs/attributes.md)
MODES: dict[str, Optional[FusionConfig]] = {
    "appearance": None,
    # every cue, the person's and the outfit's
    "attributes": FusionConfig(
        appearance=1.0,
        contradiction={
            "is_male": 3.0, "has_longhair": 3.0, **{n: 1.0 for n in BELONGINGS}, **{n: 1.0 for n in CLOTHING}
        },
        colour={"top_color": 0.2, "bottom_color": 0.2},
        gate=0.3,
        smooth=BINARY,
        smooth_k=6,
    ),
    # the outfit may have changed: appearance counts half as much, clothing cues not at all,
    # invariant attributes by their confidence, belongings a third as much
    "clothes-change": FusionConfig(
        appearance=0.5,
        contradiction={"is_male": 1.5, "has_longhair": 1.5, **{n: 0.5 for n in BELONGINGS}},
        gate=0.3,
        smooth=INVARIANT + BELONGINGS,
        smooth_k=6,
    ),
}


def resolve_fusion(mode: Union[None, str, FusionConfig]) -> Optional[FusionConfig]:
    """A mode name or a config -> a config, or None for appearance only; unknown names list the valid ones."""
    if mode is None or isinstance(mode, FusionConfig):
        return mode
    name = str(mode).strip().lower().replace("_", "-")
    if name not in MODES:
        raise UnknownNameError(f"unknown fusion mode {str(mode)!r}; valid modes: {', '.join(FUSION_MODES)}")
    return MODES[name]


def needs_attributes(mode: Union[None, str, FusionConfig]) -> bool:
    """Whether a fusion mode reads attributes (everything but appearance)."""
    return resolve_fusion(mode) is not None


# -- the terms ------------------------------------------------------------------------------------
def confidence(p: np.ndarray, gate: float) -> np.ndarray:
    """Confidence of binary probabilities in [0, 1]: 0 up to |2p - 1| = gate, then linear to 1; NaN -> 0."""
    c = (np.abs(2.0 * np.asarray(p, np.float32) - 1.0) - gate) / (1.0 - gate)
    return np.nan_to_num(np.clip(c, 0.0, 1.0), nan=0.0)


def disagreement(p: np.ndarray, q: np.ndarray) -> np.ndarray:
    """Chance that two independent binary predictions disagree; NaN counts as 0.5."""
    p = np.nan_to_num(np.asarray(p, np.float32), nan=0.5)
    q = np.nan_to_num(np.asarray(q, np.float32), nan=0.5)
    return p * (1.0 - q) + q * (1.0 - p)


def contradiction(p: np.ndarray, q: np.ndarray, gate: float) -> np.ndarray:
    """conf(p) * conf(q) where p and q are on opposite sides of 0.5, else 0."""
    opposite = (np.asarray(p) - 0.5) * (np.asarray(q) - 0.5) < 0
    return np.where(opposite, confidence(p, gate) * confidence(q, gate), 0.0).astype(np.float32)


def colour_distance(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Chroma difference of Lab colours (..., 3): |(a, b) - (a', b')| / 100, capped at 1; 0 where either is unknown.

    Lightness is left out: it follows each camera's exposure more than the garment.
    """
    a = np.asarray(a, np.float32)
    b = np.asarray(b, np.float32)
    d = np.linalg.norm(a[..., 1:] - b[..., 1:], axis=-1) / 100.0
    return np.nan_to_num(np.minimum(d, 1.0), nan=0.0).astype(np.float32)


def attribute_distance(query_attrs: np.ndarray, cand_attrs: np.ndarray, config: FusionConfig) -> np.ndarray:
    """The attribute part of the fused distance: (Q, WIDTH) x (Q, P, WIDTH) -> (Q, P)."""
    qa = np.asarray(query_attrs, np.float32)[:, None, :]
    ca = np.asarray(cand_attrs, np.float32)
    out = np.zeros(ca.shape[:2], np.float32)
    for name, w in config.disagree.items():
        if w:
            out += w * disagreement(qa[..., COLUMN[name]], ca[..., COLUMN[name]])
    for name, w in config.contradiction.items():
        if w:
            out += w * contradiction(qa[..., COLUMN[name]], ca[..., COLUMN[name]], config.gate)
    for name, w in config.colour.items():
        if w:
            out += w * colour_distance(qa[..., SLICES[name]], ca[..., SLICES[name]])
    return out


def relative_distance(app_dist: np.ndarray, rank: int) -> np.ndarray:
    """Each row's distances minus its best, over its rank-1..rank-``rank`` spread (the last valid one if fewer).

    Appearance distances of different encoders and re-ranking presets have very
    different scales; in these units one set of attribute weights fits them all.
    Rows without a spread (one candidate, or all equal) are only shifted.
    """
    d = np.asarray(app_dist, np.float32)
    if d.size == 0:
        return d.copy()
    finite = np.isfinite(d)
    n_valid = finite.sum(axis=1)
    best = np.where(n_valid > 0, d[:, 0], 0.0)
    ref = np.clip(np.minimum(rank, n_valid) - 1, 0, None)
    spread = np.take_along_axis(np.where(finite, d, 0.0), ref[:, None], 1)[:, 0] - best
    spread = np.where(spread > 1e-6, spread, 1.0)
    return ((d - best[:, None]) / spread[:, None]).astype(np.float32)


def fused_distance(
    app_dist: np.ndarray, query_attrs: np.ndarray, cand_attrs: np.ndarray, config: FusionConfig
) -> np.ndarray:
    """(Q, P) fused distances of ascending candidate pools; padded candidates (inf distance) stay inf."""
    d = np.asarray(app_dist, np.float32)
    if config.scale_rank is not None:
        d = relative_distance(d, config.scale_rank)
    return (config.appearance * d + attribute_distance(query_attrs, cand_attrs, config)).astype(np.float32)


def fuse_rank(
    app_dist: np.ndarray,
    positions: np.ndarray,
    query_attrs: np.ndarray,
    cand_attrs: np.ndarray,
    k: int,
    config: Optional[FusionConfig],
) -> tuple[np.ndarray, np.ndarray]:
    """Re-score each query's candidate pool and keep the best ``k``.

    ``app_dist`` (Q, P) ascending appearance distances (inf for padding),
    ``positions`` (Q, P) candidate ids (-1 for padding), ``query_attrs``
    (Q, WIDTH), ``cand_attrs`` (Q, P, WIDTH). Returns (distances, positions),
    both (Q, min(k, P)), sorted by fused distance; ties keep the appearance
    order. ``config=None`` (appearance) only cuts the pool to ``k``.
    """
    d = np.asarray(app_dist, np.float32)
    pos = np.asarray(positions)
    if d.shape != pos.shape or d.ndim != 2:
        raise InvalidInputError(f"distances {d.shape} and positions {pos.shape}: expected two equal (Q, P) shapes")
    k = min(int(k), d.shape[1])
    if config is None or config.is_identity and config.appearance > 0:
        return d[:, :k], pos[:, :k]
    qa = np.asarray(query_attrs, np.float32)
    ca = np.asarray(cand_attrs, np.float32)
    if qa.shape != (d.shape[0], WIDTH) or ca.shape != (*d.shape, WIDTH):
        raise InvalidInputError(
            f"attributes {qa.shape} / {ca.shape}: expected ({d.shape[0]}, {WIDTH}) "
            f"and ({d.shape[0]}, {d.shape[1]}, {WIDTH})"
        )
    fused = fused_distance(d, qa, ca, config)
    fused[(pos < 0) | ~np.isfinite(d)] = np.inf
    order = np.argsort(fused, axis=1, kind="stable")[:, :k]
    return np.take_along_axis(fused, order, 1), np.take_along_axis(pos, order, 1)


# -- attribute-aware smoothing over appearance neighbours -------------------------------------------------
def neighbour_lists(feats: np.ndarray, k: int) -> np.ndarray:
    """(N, min(k, N-1)) row numbers of each row's nearest other rows by inner product (exact, dense)."""
    f = np.asarray(feats, np.float32)
    n = len(f)
    k = min(int(k), max(0, n - 1))
    if k == 0:
        return np.zeros((n, 0), np.int64)
    out = np.empty((n, k), np.int64)
    for start in range(0, n, 1024):  # blocks keep the similarity matrix small
        s = f[start : start + 1024] @ f.T
        rows = np.arange(start, min(n, start + 1024))
        s[rows - start, rows] = -np.inf
        part = np.argpartition(-s, k - 1, axis=1)[:, :k]
        order = np.argsort(-np.take_along_axis(s, part, 1), axis=1, kind="stable")
        out[start : start + len(rows)] = np.take_along_axis(part, order, 1)
    return out


def smooth_attributes(attrs: np.ndarray, neighbours: np.ndarray, names: tuple[str, ...]) -> np.ndarray:
    """Average the named probability columns over each row and its mutual neighbours.

    ``neighbours`` (N, k) row numbers (-1 = none): j counts for i when each is
    in the other's list (so one crop of another person that happens to look
    alike does not count). NaN values are left out of the averages.
    """
    a = np.asarray(attrs, np.float32)
    out = a.copy()
    nb = np.asarray(neighbours, np.int64)
    if not names or nb.size == 0 or len(a) == 0:
        return out
    n = len(nb)
    valid = nb >= 0
    safe = np.where(valid, nb, 0)
    back = (nb[safe] == np.arange(n)[:, None, None]).any(axis=2) & valid  # (N, k): is i in j's list too?
    for name in names:
        col = COLUMN[name]
        own = a[:, col]
        stack = np.concatenate([own[:, None], np.where(back, own[safe], np.nan)], axis=1)
        known = ~np.isnan(stack)
        total = np.where(known, stack, 0.0).sum(axis=1)
        count = known.sum(axis=1)
        out[:, col] = np.where(count > 0, total / np.maximum(count, 1), np.nan)
    return out
