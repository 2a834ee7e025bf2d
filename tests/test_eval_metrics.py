"""Metrics against a hand-computed case, a brute-force reference and torchreid itself."""
from __future__ import annotations

import time
import warnings

import numpy as np
import pytest

from reid_engine.errors import InvalidInputError
from reid_engine.eval.metrics import evaluate_distmat, evaluate_ranked

with warnings.catch_warnings():
    warnings.simplefilter("ignore")
    from torchreid.reid.metrics import evaluate_rank


def brute_force(ranked, q_pids, g_pids, q_cams, g_cams, max_rank=50, q_clothes=None, g_clothes=None):
    """Textbook per-query loop over (possibly truncated) ranked lists: (cmc, mAP, mINP, n_valid)."""
    cmcs, aps, inps = [], [], []
    for q, order in enumerate(ranked):
        def junk(g):
            same_cam = g_cams[g] == q_cams[q]
            same_clothes = q_clothes is not None and g_clothes[g] == q_clothes[q]
            return g_pids[g] == q_pids[q] and (same_cam or same_clothes)

        n_rel = sum(1 for g in range(len(g_pids)) if g_pids[g] == q_pids[q] and not junk(g))
        if n_rel == 0:
            continue
        kept = [g for g in order if g >= 0 and not junk(g)]
        hits = [i for i, g in enumerate(kept) if g_pids[g] == q_pids[q]]
        cmc = np.zeros(max_rank)
        if hits and hits[0] < max_rank:
            cmc[hits[0]:] = 1
        cmcs.append(cmc)
        aps.append(sum((j + 1) / (p + 1) for j, p in enumerate(hits)) / n_rel)
        inps.append(n_rel / (hits[-1] + 1) if len(hits) == n_rel else 0.0)
    return np.mean(cmcs, axis=0), float(np.mean(aps)), float(np.mean(inps)), len(aps)


def random_problem(seed, n_q=40, n_g=200, n_ids=25, n_cams=4):
    rng = np.random.default_rng(seed)
    q_pids = rng.integers(1, n_ids, n_q)
    g_pids = rng.integers(0, n_ids + 5, n_g)  # 0: distractors; ids above n_ids: never queried
    q_cams = rng.integers(1, n_cams + 1, n_q)
    g_cams = rng.integers(1, n_cams + 1, n_g)
    dist = rng.random((n_q, n_g))
    return dist, q_pids, g_pids, q_cams, g_cams


def test_hand_computed_case():
    # one query (person 1, camera 1); gallery in distance order:
    # g0 person 2 (wrong), g1 person 1 cam 1 (junk), g2 person 1 cam 2 (correct),
    # g3 person 3 (wrong), g4 person 1 cam 3 (correct)
    dist = np.array([[0.1, 0.2, 0.3, 0.4, 0.5]])
    g_pids = np.array([2, 1, 1, 3, 1])
    g_cams = np.array([1, 1, 2, 1, 3])
    r = evaluate_distmat(dist, np.array([1]), g_pids, np.array([1]), g_cams, max_rank=4)
    # after dropping the junk crop: wrong, correct, wrong, correct -> matches at ranks 2 and 4
    assert r.cmc.tolist() == [0.0, 1.0, 1.0, 1.0]
    assert r.mAP == pytest.approx((1 / 2 + 2 / 4) / 2)
    assert r.mINP == pytest.approx(2 / 4)
    assert r.first_match.tolist() == [1]
    assert (r.num_queries, r.num_valid, r.num_skipped) == (1, 1, 0)


def test_skipped_queries_are_counted():
    dist = np.array([[0.1, 0.2], [0.3, 0.1], [0.5, 0.6]])
    q_pids, g_pids = np.array([1, 2, 7]), np.array([1, 2])
    q_cams, g_cams = np.array([1, 1, 1]), np.array([2, 1])  # query 1's only match is junk; query 2 has none
    r = evaluate_distmat(dist, q_pids, g_pids, q_cams, g_cams)
    assert (r.num_queries, r.num_valid, r.num_skipped) == (3, 1, 2)
    assert r.rank1 == 1.0 and r.mAP == 1.0
    assert np.isnan(r.ap[1]) and np.isnan(r.ap[2])
    assert r.valid.tolist() == [True, False, False]


def test_no_valid_query_raises():
    with pytest.raises(InvalidInputError, match="no query has a correct match"):
        evaluate_distmat(np.ones((1, 2)), np.array([5]), np.array([1, 2]), np.array([1]), np.array([1, 1]))


@pytest.mark.parametrize("seed", range(6))
def test_equals_torchreid(seed):
    dist, qp, gp, qc, gc = random_problem(seed)
    cmc_ref, map_ref = evaluate_rank(dist, qp, gp, qc, gc, max_rank=50, use_cython=False)
    r = evaluate_distmat(dist, qp, gp, qc, gc, max_rank=50, block_size=7)
    assert r.num_valid > 10
    np.testing.assert_allclose(r.cmc, cmc_ref, atol=1e-6)
    assert r.mAP == pytest.approx(map_ref, abs=1e-6)


def test_equals_torchreid_float32_and_string_ids():
    dist, qp, gp, qc, gc = random_problem(11)
    dist = dist.astype(np.float32)
    cmc_ref, map_ref = evaluate_rank(dist, qp, gp, qc, gc, max_rank=20, use_cython=False)
    r = evaluate_distmat(dist, qp.astype(str), gp.astype(str), qc.astype(str), gc.astype(str), max_rank=20)
    np.testing.assert_allclose(r.cmc, cmc_ref, atol=1e-6)
    assert r.mAP == pytest.approx(map_ref, abs=1e-6)


@pytest.mark.parametrize("seed", range(4))
def test_minp_and_cmc_against_brute_force(seed):
    dist, qp, gp, qc, gc = random_problem(100 + seed)
    ranked = np.argsort(dist, axis=1, kind="stable")
    cmc, mAP, mINP, n_valid = brute_force(ranked, qp, gp, qc, gc)
    r = evaluate_distmat(dist, qp, gp, qc, gc)
    np.testing.assert_allclose(r.cmc, cmc, atol=1e-12)
    assert (r.mAP, r.mINP, r.num_valid) == (pytest.approx(mAP), pytest.approx(mINP), n_valid)


def test_ties_rank_lower_gallery_index_first():
    rng = np.random.default_rng(3)
    dist, qp, gp, qc, gc = random_problem(5)
    dist = rng.integers(0, 4, dist.shape).astype(np.float64)  # many exact ties
    ranked = np.argsort(dist, axis=1, kind="stable")
    cmc, mAP, mINP, _ = brute_force(ranked, qp, gp, qc, gc)
    r = evaluate_distmat(dist, qp, gp, qc, gc)
    np.testing.assert_allclose(r.cmc, cmc, atol=1e-12)
    assert r.mAP == pytest.approx(mAP) and r.mINP == pytest.approx(mINP)


@pytest.mark.parametrize("ties", [False, True])
def test_ranked_full_lists_equal_distmat_exactly(ties):
    dist, qp, gp, qc, gc = random_problem(21)
    if ties:
        dist = np.round(dist * 5)
    full = evaluate_distmat(dist, qp, gp, qc, gc, block_size=9)
    ranked = evaluate_ranked(np.argsort(dist, axis=1, kind="stable"), qp, gp, qc, gc, block_size=13)
    assert np.array_equal(full.cmc, ranked.cmc)
    assert full.mAP == ranked.mAP and full.mINP == ranked.mINP
    assert np.array_equal(full.ap, ranked.ap, equal_nan=True)
    assert np.array_equal(full.first_match, ranked.first_match)


@pytest.mark.parametrize("k", [1, 5, 30])
def test_ranked_top_k_counts_missing_matches_as_never_retrieved(k):
    dist, qp, gp, qc, gc = random_problem(31)
    top = np.argsort(dist, axis=1, kind="stable")[:, :k]
    cmc, mAP, mINP, n_valid = brute_force(top, qp, gp, qc, gc)
    r = evaluate_ranked(top, qp, gp, qc, gc)
    full = evaluate_distmat(dist, qp, gp, qc, gc)
    np.testing.assert_allclose(r.cmc, cmc, atol=1e-12)
    assert r.mAP == pytest.approx(mAP) and r.mINP == pytest.approx(mINP) and r.num_valid == n_valid
    assert r.mAP <= full.mAP and r.mINP <= full.mINP  # truncation can only lose
    np.testing.assert_allclose(r.cmc[: k - 1], full.cmc[: k - 1], atol=1e-12)  # ranks inside the list agree


def test_ranked_padding_and_bad_input():
    q_pids, g_pids = np.array([1]), np.array([1, 2, 1])
    q_cams, g_cams = np.array([1]), np.array([2, 2, 3])
    r = evaluate_ranked(np.array([[1, 0, -1, -1]]), q_pids, g_pids, q_cams, g_cams, max_rank=3)
    assert r.cmc.tolist() == [0.0, 1.0, 1.0]
    assert r.mAP == pytest.approx((1 / 2) / 2)  # one of the two matches retrieved, at rank 2
    assert r.mINP == 0.0
    with pytest.raises(InvalidInputError, match="twice"):
        evaluate_ranked(np.array([[1, 1]]), q_pids, g_pids, q_cams, g_cams)
    with pytest.raises(InvalidInputError, match="expected 0..2"):
        evaluate_ranked(np.array([[3]]), q_pids, g_pids, q_cams, g_cams)
    with pytest.raises(InvalidInputError, match="integer"):
        evaluate_ranked(np.array([[0.0]]), q_pids, g_pids, q_cams, g_cams)
    with pytest.raises(InvalidInputError, match="shape"):
        evaluate_ranked(np.array([0, 1]), q_pids, g_pids, q_cams, g_cams)


def test_distmat_input_checks():
    with pytest.raises(InvalidInputError, match="shape"):
        evaluate_distmat(np.zeros((2, 3)), [1], [1, 2, 3], [1], [2, 2, 2])
    with pytest.raises(InvalidInputError, match="NaN"):
        evaluate_distmat(np.array([[np.nan, 1.0]]), [1], [1, 1], [1], [2, 2])
    with pytest.raises(InvalidInputError, match="camera ids"):
        evaluate_distmat(np.zeros((1, 2)), [1], [1, 2], [1], [2])
    with pytest.raises(InvalidInputError, match="max_rank"):
        evaluate_distmat(np.zeros((1, 1)), [1], [1], [1], [2], max_rank=0)


def test_clothes_changing_rule():
    # query: person 1, camera 1, clothes 0; gallery sorted by distance
    dist = np.array([[0.1, 0.2, 0.3, 0.4]])
    g_pids = np.array([1, 2, 1, 1])
    g_cams = np.array([2, 2, 1, 3])
    g_clothes = np.array([0, 5, 1, 1])  # g0 same clothes (ignored in CC), g2 same camera (ignored)
    args = (dist, np.array([1]), g_pids, np.array([1]), g_cams)
    standard = evaluate_distmat(*args, max_rank=3)
    cc = evaluate_distmat(*args, max_rank=3, q_clothes=np.array([0]), g_clothes=g_clothes, clothes_changing=True)
    assert standard.rank1 == 1.0  # g0 counts as a correct match under the standard rule
    assert cc.cmc.tolist() == [0.0, 1.0, 1.0]  # g1 wrong, then g3
    assert cc.mAP == pytest.approx(1 / 2)
    ranked = evaluate_ranked(
        np.argsort(dist, axis=1), np.array([1]), g_pids, np.array([1]), g_cams,
        max_rank=3, q_clothes=np.array([0]), g_clothes=g_clothes, clothes_changing=True,
    )
    assert ranked.mAP == cc.mAP and np.array_equal(ranked.cmc, cc.cmc)
    with pytest.raises(InvalidInputError, match="q_clothes"):
        evaluate_distmat(*args, clothes_changing=True)


def test_to_dict_is_percent():
    dist, qp, gp, qc, gc = random_problem(2)
    r = evaluate_distmat(dist, qp, gp, qc, gc)
    d = r.to_dict()
    assert d["unit"] == "percent"
    assert d["rank1"] == pytest.approx(100 * r.rank1) and d["mAP"] == pytest.approx(100 * r.mAP)
    assert d["num_skipped"] == r.num_queries - r.num_valid
    assert r.to_dict(percent=False)["mINP"] == pytest.approx(r.mINP)
    with pytest.raises(InvalidInputError):
        r.rank(51)


@pytest.mark.slow
def test_market_sized_problem_is_fast_and_matches_torchreid():
    """3,368 x 19,732 (Market-1501 test size): a few seconds; a slice checked against torchreid."""
    rng = np.random.default_rng(0)
    n_q, n_g = 3368, 19732
    qp = rng.integers(1, 751, n_q)
    gp = rng.integers(0, 752, n_g)
    qc = rng.integers(1, 7, n_q)
    gc = rng.integers(1, 7, n_g)
    dist = rng.random((n_q, n_g), dtype=np.float32)
    t0 = time.perf_counter()
    r = evaluate_distmat(dist, qp, gp, qc, gc)
    seconds = time.perf_counter() - t0
    print(f"evaluate_distmat 3368x19732: {seconds:.2f} s")
    assert seconds < 10
    # float32 rows of 19,732 values hold exact ties, which torchreid breaks in quicksort order:
    # compare on float64 rows (no ties) instead
    sub = slice(0, 300)
    d64 = rng.random((300, n_g))
    cmc_ref, map_ref = evaluate_rank(d64, qp[sub], gp, qc[sub], gc, max_rank=50, use_cython=False)
    r_sub = evaluate_distmat(d64, qp[sub], gp, qc[sub], gc)
    np.testing.assert_allclose(r_sub.cmc, cmc_ref, atol=1e-6)
    assert r_sub.mAP == pytest.approx(map_ref, abs=1e-6)
    top = np.argpartition(dist, 100, axis=1)[:, :100]
    top = np.take_along_axis(top, np.argsort(np.take_along_axis(dist, top, 1), axis=1), 1)
    t0 = time.perf_counter()
    rr = evaluate_ranked(top, qp, gp, qc, gc)
    print(f"evaluate_ranked top-100: {time.perf_counter() - t0:.2f} s")
    assert rr.rank1 == pytest.approx(r.rank1)
