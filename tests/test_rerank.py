"""Re-ranking: every fast path against a small, obviously-correct reference."""
from __future__ import annotations

import warnings
from dataclasses import FrozenInstanceError

import numpy as np
import pytest

from reid_engine.errors import InvalidInputError, UnknownNameError
from reid_engine.rerank import (
    PRESETS,
    RerankConfig,
    centralize,
    centralize_queries,
    database_augmentation,
    get_preset,
    k_reciprocal_rerank,
    knn_search,
    query_expansion,
    rerank_search,
    update_centralized,
)


def clustered(n_ids: int, per_id: int, dim: int, noise: float, seed: int):
    """Unit vectors around random identity centres, and their identity labels."""
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((n_ids, dim))
    pid = np.repeat(np.arange(n_ids), per_id)
    x = centres[pid] + noise * rng.standard_normal((len(pid), dim))
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    return x.astype(np.float32), pid


def split(x: np.ndarray, pid: np.ndarray, n_query: int, seed: int):
    rng = np.random.default_rng(seed)
    is_q = np.zeros(len(x), bool)
    is_q[rng.choice(len(x), n_query, replace=False)] = True
    return x[is_q], x[~is_q], pid[is_q], pid[~is_q]


def mean_ap(order: np.ndarray, q_pid: np.ndarray, g_pid: np.ndarray) -> float:
    """Mean average precision of full rankings (gallery positions, best first)."""
    aps = []
    for row, p in zip(order, q_pid):
        hits = g_pid[row] == p
        if hits.any():
            ranks = np.nonzero(hits)[0] + 1
            aps.append(np.mean(np.arange(1, len(ranks) + 1) / ranks))
    return float(np.mean(aps))


def euclid(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return np.sqrt(np.maximum(2.0 - 2.0 * a @ b.T, 0.0))


@pytest.fixture(scope="module")
def torchreid_re_ranking():
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        from torchreid.reid.utils.rerank import re_ranking
    return re_ranking


# ---------------------------------------------------------------- kNN helper


def test_knn_search_matches_argsort_across_blocks():
    x, _ = clustered(20, 5, 16, 1.0, seed=0)
    q = x[:13]
    sims, idx, mins = knn_search(q, x, 7, return_min=True, query_block=4, base_block=9)
    dense = q @ x.T
    ref = np.argsort(-dense, axis=1, kind="stable")[:, :7]
    np.testing.assert_array_equal(idx, ref)
    np.testing.assert_allclose(sims, np.take_along_axis(dense, ref, 1), atol=1e-6)
    np.testing.assert_allclose(mins, dense.min(axis=1), atol=1e-6)
    assert knn_search(q, x[:3], 10)[1].shape == (13, 3)  # k clipped to the base size


# ------------------------------------------------------- k-reciprocal re-ranking


@pytest.mark.parametrize("seed,k1,k2,lam", [(0, 20, 6, 0.3), (1, 20, 6, 0.3), (2, 6, 3, 0.5),
                                            (3, 3, 1, 0.2)])
def test_sparse_kr_agrees_with_torchreid_dense(torchreid_re_ranking, seed, k1, k2, lam):
    x, pid = clustered(50, 5, 48, 1.3, seed)  # 250 points
    qf, gf, q_pid, g_pid = split(x, pid, 60, seed + 100)
    ref = torchreid_re_ranking(euclid(qf, gf), euclid(qf, qf), euclid(gf, gf), k1, k2, lam)
    dist, pos = k_reciprocal_rerank(qf, gf, len(gf), k1=k1, k2=k2, lambda_value=lam)

    ref_order = np.argsort(ref, axis=1, kind="stable")
    assert abs(mean_ap(pos, q_pid, g_pid) - mean_ap(ref_order, q_pid, g_pid)) < 1e-3
    same_top10 = (np.sort(pos[:, :10], 1) == np.sort(ref_order[:, :10], 1)).all(axis=1)
    assert same_top10.mean() >= 0.99
    # The distances themselves are the textbook ones.
    np.testing.assert_allclose(dist, np.take_along_axis(ref, pos, 1), atol=1e-5)
    assert (np.diff(dist, axis=1) >= 0).all()


@pytest.mark.parametrize("nq,block", [(60, 16), (60, 37), (0, 50), (250, 64)])
def test_symmetric_neighbour_pass_matches_knn_search(nq, block):
    # The one-pass neighbour lists serve rows and columns of each block; with
    # small blocks both sides, the mixed query/gallery boundary and ragged
    # last blocks are exercised.
    from reid_engine.rerank import kreciprocal
    x, _ = clustered(50, 5, 48, 1.3, seed=5)
    idx, sims, mins, qg = kreciprocal._self_neighbours(x, nq, 21, block=block)
    ref_sims, ref, ref_min = knn_search(x, x, 21, return_min=True)
    np.testing.assert_array_equal(idx, ref)
    np.testing.assert_allclose(sims, ref_sims, atol=1e-6)
    np.testing.assert_allclose(mins, ref_min, atol=1e-6)
    np.testing.assert_allclose(qg, x[:nq] @ x[nq:].T, atol=1e-6)


@pytest.mark.parametrize("keep_qg_bytes", [1 << 30, 0])
def test_sparse_kr_with_small_blocks_agrees_with_torchreid(torchreid_re_ranking, monkeypatch,
                                                           keep_qg_bytes):
    from reid_engine.rerank import kreciprocal
    monkeypatch.setattr(kreciprocal, "SELF_BLOCK", 24)
    monkeypatch.setattr(kreciprocal, "QG_MAX_BYTES", keep_qg_bytes)
    x, pid = clustered(50, 5, 48, 1.3, 4)
    qf, gf, q_pid, g_pid = split(x, pid, 60, 104)
    ref = torchreid_re_ranking(euclid(qf, gf), euclid(qf, qf), euclid(gf, gf), 20, 6, 0.3)
    for k in (5, 30, len(gf)):  # heap, partition and full-sort selection of the top k
        dist, pos = k_reciprocal_rerank(qf, gf, k, block_size=7)
        ref_order = np.argsort(ref, axis=1, kind="stable")[:, :k]
        assert (np.sort(pos, 1) == np.sort(ref_order, 1)).all(axis=1).mean() >= 0.99
        np.testing.assert_allclose(dist, np.take_along_axis(ref, pos, 1), atol=1e-5)
        assert (np.diff(dist, axis=1) >= 0).all()


def test_kr_changes_the_ranking_and_beats_plain_cosine():
    # Guard against a re-ranker that silently returns the cosine order.
    x, pid = clustered(50, 6, 48, 1.4, seed=7)
    qf, gf, q_pid, g_pid = split(x, pid, 60, seed=8)
    _, pos = k_reciprocal_rerank(qf, gf, len(gf))
    _, base = knn_search(qf, gf, len(gf))
    assert (pos[:, :10] != base[:, :10]).any()
    assert mean_ap(pos, q_pid, g_pid) > mean_ap(base, q_pid, g_pid)


def test_candidate_mode_equals_exact_mode_when_candidates_cover_gallery():
    x, pid = clustered(30, 6, 32, 1.2, seed=3)
    qf, gf, _, _ = split(x, pid, 40, seed=4)
    exact = k_reciprocal_rerank(qf, gf, 25, k1=8, k2=3)
    cand = k_reciprocal_rerank(qf, gf, 25, k1=8, k2=3, candidates=len(gf), candidate_block=64)
    np.testing.assert_array_equal(cand[1], exact[1])
    np.testing.assert_allclose(cand[0], exact[0], atol=1e-6)


def test_candidate_mode_small_k_returns_valid_rankings():
    x, pid = clustered(40, 5, 32, 0.6, seed=5)
    qf, gf, q_pid, g_pid = split(x, pid, 30, seed=6)
    dist, pos = k_reciprocal_rerank(qf, gf, 5, k1=6, k2=2, candidates=20, candidate_block=7)
    assert dist.shape == pos.shape == (30, 5)
    assert all(len(set(row)) == 5 for row in pos.tolist())
    assert (np.diff(dist, axis=1) >= 0).all()
    assert (g_pid[pos[:, 0]] == q_pid).mean() > 0.8
    # Results come from the union of the block's top-20 candidates only.
    _, top = knn_search(qf, gf, 20)
    for b0 in range(0, 30, 7):
        assert set(pos[b0:b0 + 7].ravel()) <= set(top[b0:b0 + 7].ravel())


def test_kr_rejects_bad_parameters():
    x, _ = clustered(5, 4, 8, 0.5, seed=0)
    with pytest.raises(InvalidInputError):
        k_reciprocal_rerank(x[:3], x, 5, lambda_value=1.5)
    with pytest.raises(InvalidInputError):
        k_reciprocal_rerank(x[:3], x[:, :4], 5)
    with pytest.raises(InvalidInputError):
        k_reciprocal_rerank(x[:3], x, 5, candidates=0)


# ------------------------------------------------ neighbour feature centralization


def nfc_reference(x: np.ndarray, k1: int, k2: int) -> np.ndarray:
    """Loops over a dense similarity matrix: obviously right, only for tiny sets."""
    sim = x @ x.T
    np.fill_diagonal(sim, -np.inf)
    top = [list(np.argsort(-sim[i], kind="stable")) for i in range(len(x))]
    out = x.astype(np.float64).copy()
    for i in range(len(x)):
        for j in top[i][:k1]:
            if i in top[j][:k2]:
                out[i] += x[j]
    return out / np.linalg.norm(out, axis=1, keepdims=True)


@pytest.mark.parametrize("k1,k2", [(2, 2), (2, 3), (4, 1), (5, 5)])
def test_centralize_matches_dense_reference(k1, k2):
    x, _ = clustered(12, 4, 16, 0.8, seed=k1 * 10 + k2)
    cent, state = centralize(x, k1, k2)
    np.testing.assert_allclose(cent, nfc_reference(x, k1, k2), atol=1e-5)
    assert state.indices.shape == (len(x), max(k1, k2))
    assert not (state.indices == np.arange(len(x))[:, None]).any()  # self excluded
    assert np.abs(cent - x).max() > 0.05  # it did change the features


def test_centralize_pulls_identities_together():
    x, pid = clustered(20, 5, 32, 1.5, seed=11)
    cent, _ = centralize(x, 2, 2)

    def spread(f):
        return np.mean([np.linalg.norm(f[pid == p] - f[pid == p].mean(0), axis=1).mean()
                        for p in range(20)])

    assert spread(cent) < spread(x)


@pytest.mark.parametrize("n_old,n_new,k1,k2", [(80, 1, 2, 2), (80, 17, 2, 3), (5, 30, 3, 3),
                                               (2, 4, 2, 2), (0, 10, 2, 2)])
def test_incremental_nfc_equals_full_recompute(n_old, n_new, k1, k2):
    x, _ = clustered(25, 5, 24, 1.0, seed=n_old + n_new)
    rng = np.random.default_rng(0)
    x = x[rng.permutation(len(x))][: n_old + n_new]
    old, new = x[:n_old], x[n_old:]
    full_cent, full_state = centralize(x, k1, k2)
    old_cent, old_state = centralize(old, k1, k2)

    upd = update_centralized(old, old_state, new)
    merged = np.concatenate([old_cent, np.zeros_like(new)])
    merged[upd.rows] = upd.vectors
    np.testing.assert_allclose(merged, full_cent, atol=1e-6)
    np.testing.assert_array_equal(upd.state.indices, full_state.indices)
    np.testing.assert_allclose(upd.state.sims, full_state.sims, atol=1e-6)
    assert set(range(n_old, n_old + n_new)) <= set(upd.rows.tolist())


def test_incremental_nfc_recomputes_only_affected_rows():
    x, _ = clustered(100, 4, 32, 0.6, seed=21)
    old, new = x[:-1], x[-1:]
    _, state = centralize(old, 2, 2)
    upd = update_centralized(old, state, new)
    assert len(upd.rows) < 20  # one added crop touches its neighbourhood only


def test_incremental_nfc_checks_state_size():
    x, _ = clustered(5, 4, 8, 0.5, seed=0)
    _, state = centralize(x[:10], 2, 2)
    with pytest.raises(InvalidInputError):
        update_centralized(x[:12], state, x[12:])


def test_query_centralization_modes():
    x, _ = clustered(10, 6, 16, 0.8, seed=2)
    q, g = x[:20], x[20:]
    np.testing.assert_allclose(centralize_queries(q, mode="batch"), centralize(q, 2, 2)[0])
    joint = centralize_queries(q, g, mode="joint")
    np.testing.assert_allclose(joint, nfc_reference(np.concatenate([q, g]), 2, 2)[:20], atol=1e-5)
    # gallery mode: j counts when j is in q's top-k1 gallery rows and q would enter j's top-k2
    sim_qg, sim_gg = q @ g.T, g @ g.T
    np.fill_diagonal(sim_gg, -np.inf)
    kth = -np.sort(-sim_gg, axis=1)[:, 1]
    ref = q.astype(np.float64).copy()
    for i in range(len(q)):
        for j in np.argsort(-sim_qg[i])[:2]:
            if sim_qg[i, j] >= kth[j]:
                ref[i] += g[j]
    ref /= np.linalg.norm(ref, axis=1, keepdims=True)
    np.testing.assert_allclose(centralize_queries(q, g, mode="gallery"), ref, atol=1e-5)
    with pytest.raises(InvalidInputError):
        centralize_queries(q, g, mode="sideways")


# ----------------------------------------------------- query expansion and DBA


def test_query_expansion_matches_naive():
    x, _ = clustered(8, 5, 16, 0.9, seed=4)
    q, g = x[:6], x[6:]
    got = query_expansion(q, g, n=3, alpha=3.0)
    ref = []
    for v in q:
        s = g @ v
        top = np.argsort(-s)[:3]
        e = v + sum(max(s[j], 0) ** 3 * g[j] for j in top)
        ref.append(e / np.linalg.norm(e))
    np.testing.assert_allclose(got, np.array(ref), atol=1e-5)
    np.testing.assert_array_equal(query_expansion(q, g, n=0), q)


def test_database_augmentation_matches_naive():
    g, _ = clustered(8, 5, 16, 0.9, seed=5)
    got = database_augmentation(g, n=2, alpha=1.0)
    ref = []
    for i, v in enumerate(g):
        s = g @ v
        s[i] = -np.inf
        top = np.argsort(-s)[:2]
        e = v + sum(max(s[j], 0) * g[j] for j in top)
        ref.append(e / np.linalg.norm(e))
    np.testing.assert_allclose(got, np.array(ref), atol=1e-5)
    with pytest.raises(InvalidInputError):
        database_augmentation(g, n=-1)


# ----------------------------------------------------------- presets and search


def test_presets_and_unknown_name():
    for name in ("none", "nfc", "kr", "nfc+kr", "qe", "default"):
        assert isinstance(get_preset(name), RerankConfig)
    assert get_preset("kr") == RerankConfig(kr=True, kr_k1=20, kr_k2=6, kr_lambda=0.3)
    assert get_preset("nfc") == RerankConfig(nfc=True, nfc_k1=2, nfc_k2=2, nfc_query="batch")
    with pytest.raises(UnknownNameError) as info:
        get_preset("k-reciprocal")
    for name in PRESETS:
        assert name in str(info.value)
    with pytest.raises(FrozenInstanceError):
        get_preset("none").kr = True  # type: ignore[misc]
    with pytest.raises(InvalidInputError):
        RerankConfig(nfc_query="nowhere")
    with pytest.raises(InvalidInputError):
        RerankConfig(kr_k1=0)


def test_rerank_search_none_is_cosine_ranking():
    x, _ = clustered(10, 5, 16, 1.0, seed=9)
    q, g = x[:7], x[7:]
    dist, pos = rerank_search(q, g, 5, get_preset("none"))
    ref = np.argsort(-(q @ g.T), axis=1, kind="stable")[:, :5]
    np.testing.assert_array_equal(pos, ref)
    np.testing.assert_allclose(dist, 1 - np.take_along_axis(q @ g.T, ref, 1), atol=1e-6)
    assert dist.dtype == np.float32 and pos.dtype == np.int64


@pytest.mark.parametrize("name", sorted(PRESETS))
def test_rerank_search_every_preset_shapes_and_order(name):
    x, pid = clustered(15, 6, 24, 1.0, seed=13)
    q, g, q_pid, g_pid = split(x, pid, 20, seed=14)
    dist, pos = rerank_search(q, g, 500, get_preset(name))  # k above G is clipped
    assert dist.shape == pos.shape == (20, len(g))
    assert (np.sort(pos, axis=1) == np.arange(len(g))).all()  # a permutation per query
    assert (np.diff(dist, axis=1) >= -1e-7).all()
    assert (g_pid[pos[:, 0]] == q_pid).mean() >= 0.8


def test_rerank_search_uses_stored_gallery_centralization():
    x, _ = clustered(15, 6, 24, 1.0, seed=15)
    q, g = x[:20], x[20:]
    cfg = get_preset("nfc")
    cent, state = centralize(g, cfg.nfc_k1, cfg.nfc_k2)
    computed = rerank_search(q, g, 10, cfg)
    given = rerank_search(q, g, 10, cfg, gallery_centralized=cent, gallery_state=state)
    np.testing.assert_array_equal(computed[1], given[1])
    # The stored vectors are really used: passing the raw gallery changes the result.
    other = rerank_search(q, g, 10, cfg, gallery_centralized=g)
    assert not np.array_equal(other[1], computed[1])
    with pytest.raises(InvalidInputError):
        rerank_search(q, g, 10, cfg, gallery_centralized=cent[:5])


def test_rerank_search_input_validation():
    x, _ = clustered(4, 4, 8, 0.5, seed=0)
    with pytest.raises(InvalidInputError):
        rerank_search(x[0], x, 3)
    with pytest.raises(InvalidInputError):
        rerank_search(x, x, 0)
    bad = x.copy()
    bad[0, 0] = np.nan
    with pytest.raises(InvalidInputError):
        rerank_search(bad, x, 3)
    d, p = rerank_search(x[:0], x, 3, get_preset("default"))
    assert d.shape == p.shape == (0, 3)
