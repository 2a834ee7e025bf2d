"""The per-query lookups' fast paths against their obvious references: ids found in sorted id arrays
(``index.ids.positions``) against a binary search, and a pool's nearest columns
(``rerank.kreciprocal.nearest_columns``) against a full stable argsort."""
from __future__ import annotations

import numpy as np
import pytest

from reid_engine.index.ids import positions
from reid_engine.rerank.kreciprocal import k_reciprocal_pool_parts, nearest_columns


def _reference_positions(keys: np.ndarray, ids: np.ndarray) -> np.ndarray:
    out = np.full(ids.shape, -1, np.int64)
    for at, i in np.ndenumerate(ids):
        j = int(np.searchsorted(keys, i))
        if j < len(keys) and keys[j] == i:
            out[at] = j
    return out


@pytest.mark.parametrize("layout", ["run", "run from 0", "gaps", "one", "empty"])
def test_positions_equal_a_binary_search(layout: str, tmp_path) -> None:
    rng = np.random.default_rng(len(layout))
    keys = {"run": np.arange(7, 5007), "run from 0": np.arange(0, 300), "one": np.array([42]),
            "empty": np.zeros(0, np.int64),
            "gaps": np.sort(rng.choice(np.arange(1, 9000), 5000, replace=False))}[layout].astype(np.int64)
    np.save(tmp_path / "k.npy", keys)
    mapped = np.load(tmp_path / "k.npy", mmap_mode="r")  # segments keep their ids memory-mapped
    hi = int(keys[-1]) + 50 if len(keys) else 50
    ids = np.concatenate([rng.integers(-3, hi, 400), keys[:3], keys[-3:], [-1, 0, 2**62, -2**62]]).astype(np.int64)
    for k in (keys, mapped):
        got = positions(k, ids)
        np.testing.assert_array_equal(got, _reference_positions(keys, ids))
        assert got.dtype == np.int64
        np.testing.assert_array_equal(positions(k, ids.reshape(2, -1)), got.reshape(2, -1))
    if len(keys):
        assert (positions(keys, keys) == np.arange(len(keys))).all()
    assert positions(keys, np.zeros(0, np.int64)).shape == (0,)


def test_positions_in_a_run_with_one_id_removed_are_searched_not_subtracted() -> None:
    """A removed id leaves a gap: positions past it are one less than the subtraction would give."""
    keys = np.delete(np.arange(1, 101), 40).astype(np.int64)
    ids = np.arange(-2, 105)
    np.testing.assert_array_equal(positions(keys, ids), _reference_positions(keys, ids))
    assert positions(keys, np.array([41]))[0] == -1 and positions(keys, np.array([42]))[0] == 40


def _stable_first(sims: np.ndarray, m: int) -> np.ndarray:
    return np.argsort(-sims, axis=1, kind="stable")[:, :m]


@pytest.mark.parametrize("n, m", [(201, 21), (101, 21), (30, 7), (21, 21), (5, 9), (40, 1)])
def test_nearest_columns_equal_a_full_stable_sort(n: int, m: int) -> None:
    rng = np.random.default_rng(n * 31 + m)
    x = rng.normal(size=(n, 16)).astype(np.float32)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    sims = x @ x.T
    np.testing.assert_array_equal(nearest_columns(sims, m), _stable_first(sims, m))


def test_nearest_columns_keep_the_stable_order_of_ties() -> None:
    """Duplicate crops tie exactly: inside the first m, at the m-th place (where a partition alone would pick
    any of them), and values that are not finite."""
    rng = np.random.default_rng(5)
    x = rng.normal(size=(60, 8)).astype(np.float32)
    x[[3, 17, 18, 40]] = x[9]  # five copies: rows tie in every column
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    sims = x @ x.T
    for m in (1, 2, 3, 5, 6, 12, 59):
        np.testing.assert_array_equal(nearest_columns(sims, m), _stable_first(sims, m))
    rounded = np.round(sims, 1)  # many ties everywhere
    for m in (4, 10, 21):
        np.testing.assert_array_equal(nearest_columns(rounded, m), _stable_first(rounded, m))
    inside = np.array([[0.5, 0.9, 0.9, 0.1, 0.9, 0.2], [0.3, 0.35, 0.8, 0.8, 0.1, 0.0]])  # ties before the 3rd
    np.testing.assert_array_equal(nearest_columns(inside, 3), [[1, 2, 4], [2, 3, 1]])
    odd = sims.copy()
    odd[2, 5] = np.nan
    odd[4, 7] = -np.inf
    np.testing.assert_array_equal(nearest_columns(odd, 6), _stable_first(odd, 6))


def test_k_reciprocal_pool_parts_are_those_of_a_full_sort(monkeypatch) -> None:
    """The pool's k-reciprocal terms with the fast nearest columns equal those with the full sort, on a pool
    with duplicate crops."""
    from reid_engine.rerank import kreciprocal

    rng = np.random.default_rng(8)
    g = rng.normal(size=(200, 32)).astype(np.float32)
    g[50:55] = g[7]
    g /= np.linalg.norm(g, axis=1, keepdims=True)
    q = g[7] + 0.3 * rng.normal(size=32).astype(np.float32)
    q /= np.linalg.norm(q)
    fast = k_reciprocal_pool_parts(q, g, 20, 6)
    monkeypatch.setattr(kreciprocal, "nearest_columns", _stable_first)
    full = k_reciprocal_pool_parts(q, g, 20, 6)
    for a, b in zip(fast, full):
        np.testing.assert_array_equal(a, b)
