"""Index hooks: incremental neighbour lists and camera statistics against direct NumPy references."""
from __future__ import annotations

import numpy as np
import pytest

from reid_engine.rerank import MemoryGallery, NeighboursHook
from reid_engine.rerank.hooks import CameraStatsHook


def _unit(rng: np.random.Generator, n: int, d: int = 24) -> np.ndarray:
    x = rng.normal(size=(n, d)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def _all_pairs(ids: np.ndarray, x: np.ndarray, w: int) -> tuple[np.ndarray, np.ndarray]:
    """Reference: full similarity matrix, self excluded, sorted per row."""
    s = x.astype(np.float64) @ x.T.astype(np.float64)
    np.fill_diagonal(s, -np.inf)
    order = np.argsort(-s, axis=1)[:, :w]
    return ids[order], np.take_along_axis(s, order, 1)


def _build(x: np.ndarray, ids: np.ndarray, block: int, width: int = 16, max_search: int = 256) -> MemoryGallery:
    gal = MemoryGallery(x.shape[1], hooks=(NeighboursHook(width, max_search), CameraStatsHook()))
    for s in range(0, len(ids), block):
        gal.add(ids[s:s + block], x[s:s + block], {"camera": [str(i % 3) for i in ids[s:s + block]]})
    return gal


@pytest.mark.parametrize("block", [1, 7, 50, 400])
def test_incremental_neighbours_equal_all_pairs(block: int) -> None:
    rng = np.random.default_rng(block)
    x = _unit(rng, 160)
    ids = rng.permutation(1000)[:160].astype(np.int64)
    gal = _build(x, ids, block)
    table = gal.state("neighbours")
    order = np.argsort(ids)
    ref_ids, ref_sims = _all_pairs(ids[order], x[order], 16)
    assert np.array_equal(table.ids, ids[order])
    assert np.array_equal(table.nb_ids, ref_ids)
    assert np.allclose(table.nb_sims, ref_sims, atol=1e-5)


@pytest.mark.parametrize("clustered", [False, True])
def test_commits_larger_than_the_probe_keep_exact_lists(clustered: bool, monkeypatch) -> None:
    """Commits of 300 rows (a sample of them decides whether every row is searched to the limit at once): the
    lists equal all pairs, whichever way the sample decides. Random rows: the gallery's smallest 16th similarity is
    low and the sample sends every row to the limit; tight clusters with each commit's rows in new clusters: its
    rows' 16th similarity to the gallery is below it, and only the rows that need it are searched further."""
    from reid_engine.rerank import hooks

    rng = np.random.default_rng(17)
    if clustered:
        centres = _unit(rng, 60)
        x = centres[np.repeat(np.arange(60), 20)] + 0.1 * rng.normal(size=(1200, 24)).astype(np.float32)
        x = (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)
    else:
        x = _unit(rng, 1200)
    ids = np.arange(5000, 6200).astype(np.int64)
    wide = []
    real = hooks._beyond

    def spy(s, i, min_kth):
        out = real(s, i, min_kth)
        if len(s) == hooks.PROBE_ROWS:
            wide.append(bool(np.mean(out) >= 0.5))
        return out

    monkeypatch.setattr(hooks, "_beyond", spy)
    gal = _build(x, ids, 300)
    table = gal.state("neighbours")
    ref_ids, ref_sims = _all_pairs(ids, x, 16)
    assert np.array_equal(table.nb_ids, ref_ids)
    assert np.allclose(table.nb_sims, ref_sims, atol=1e-5)
    assert wide == [not clustered] * 3  # the three commits after the first were probed


def test_neighbour_files_reload_to_the_same_table() -> None:
    rng = np.random.default_rng(1)
    x = _unit(rng, 90)
    gal = _build(x, np.arange(90), 20)
    again = NeighboursHook().load(gal.folder, gal.states["neighbours"])
    assert len(gal.states["neighbours"]["files"]) == 5
    assert np.array_equal(again.nb_ids, gal.state("neighbours").nb_ids)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_neighbour_files_applied_in_one_pass_equal_applying_them_one_by_one(seed: int) -> None:
    """Loading several neighbour files at once (``_apply_many``) gives the table that applying each file in turn
    gives: new rows, lists replaced by later files (the latest wins), removed rows and removed list entries."""
    from reid_engine.rerank import hooks

    rng = np.random.default_rng(seed)
    width = 6

    def lists(n: int, pool: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        nb = np.stack([rng.choice(pool, width, replace=False) for _ in range(n)]).astype(np.int64)
        sims = -np.sort(-rng.random((n, width)), axis=1).astype(np.float32)
        return nb, sims

    live = np.arange(1, 301, dtype=np.int64)
    base = hooks.NeighbourTable(live, *lists(len(live), live))
    parts = []
    next_id = 301
    for _ in range(6):
        gone = rng.choice(live, 7, replace=False) if rng.random() < 0.7 else np.zeros(0, np.int64)
        live = np.setdiff1d(live, gone)
        new = np.arange(next_id, next_id + 20, dtype=np.int64)
        next_id += 20
        live = np.concatenate([live, new])
        changed = np.concatenate([rng.choice(live[:-20], 30, replace=False), new])
        nb, sims = lists(len(changed), live)
        parts.append((gone.astype(np.int64), changed, nb, sims))
    want = base
    for part in parts:
        want = want.apply(*part)
    got = hooks._apply_many(base, parts)
    np.testing.assert_array_equal(got.ids, want.ids)
    np.testing.assert_array_equal(got.nb_ids, want.nb_ids)
    np.testing.assert_array_equal(got.nb_sims, want.nb_sims)
    assert not np.isin(got.nb_ids, np.concatenate([p[0] for p in parts])).any()


def test_removal_drops_ids_and_compaction_refills() -> None:
    rng = np.random.default_rng(2)
    x = _unit(rng, 120)
    ids = np.arange(120)
    gal = _build(x, ids, 30)
    gone = np.arange(0, 120, 4)
    gal.remove(gone)
    table = gal.state("neighbours")
    assert not np.isin(table.ids, gone).any()
    assert not np.isin(table.nb_ids, gone).any()
    assert (table.nb_ids < 0).any()  # shortened lists wait for compaction
    gal.compact()
    table = gal.state("neighbours")
    keep = np.setdiff1d(ids, gone)
    ref_ids, _ = _all_pairs(keep, x[keep], 16)
    assert np.array_equal(table.nb_ids, ref_ids)
    assert len(gal.states["neighbours"]["files"]) == 1
    # adds after removals stay exact
    more = _unit(rng, 25)
    gal.add(np.arange(500, 525), more)
    allx = np.concatenate([x[keep], more])
    allid = np.concatenate([keep, np.arange(500, 525)])
    ref_ids, _ = _all_pairs(allid, allx, 16)
    assert np.array_equal(gal.state("neighbours").nb_ids, ref_ids)


def test_capped_search_only_misses_never_invents() -> None:
    rng = np.random.default_rng(3)
    x = _unit(rng, 200)
    ids = np.arange(200)
    gal = _build(x, ids, 10, width=8, max_search=16)
    table = gal.state("neighbours")
    ref_ids, ref_sims = _all_pairs(ids, x, 8)
    # every listed neighbour is real and listed sims are the true similarities
    s = x @ x.T
    valid = table.nb_ids >= 0
    rows = np.repeat(np.arange(200)[:, None], 8, 1)
    assert np.allclose(table.nb_sims[valid], s[rows[valid], table.nb_ids[valid]], atol=1e-5)
    recall = np.mean([len(np.intersect1d(a, b)) / 8 for a, b in zip(table.nb_ids, ref_ids)])
    assert recall > 0.9


def test_camera_stats_follow_adds_and_removals() -> None:
    rng = np.random.default_rng(4)
    x = _unit(rng, 60)
    cams = np.array([str(i % 3) for i in range(60)], object)
    gal = _build(x, np.arange(60), 25)
    gal.remove(np.arange(0, 60, 5))
    keep = np.setdiff1d(np.arange(60), np.arange(0, 60, 5))
    stats = gal.state("camera_stats")
    for c in ("0", "1", "2"):
        rows = keep[cams[keep] == c]
        assert stats.count(c) == len(rows)
        assert np.allclose(stats.mean(c), x[rows].mean(0), atol=1e-6)
    assert np.allclose(stats.global_mean(), x[keep].mean(0), atol=1e-6)
    assert stats.mean("9") is None
    assert stats.mean("0", min_count=100) is None


def _general_apply(table, ids, nb, sims):
    """The obvious reference: drop the rows being replaced, add the given rows, sort by id."""
    keep = ~np.isin(table.ids, ids)
    all_ids = np.concatenate([table.ids[keep], ids])
    order = np.argsort(all_ids, kind="stable")
    return (all_ids[order], np.concatenate([table.nb_ids[keep], nb])[order],
            np.concatenate([table.nb_sims[keep], sims])[order])


@pytest.mark.parametrize("seed", range(4))
def test_neighbour_table_appending_update_equals_the_general_one(seed):
    from reid_engine.rerank.hooks import NeighbourTable

    rng = np.random.default_rng(seed)
    w = 4
    ids = np.sort(rng.choice(1000, 200, replace=False)).astype(np.int64)
    table = NeighbourTable(ids, rng.integers(-1, 1000, (200, w)), rng.random((200, w)).astype(np.float32))
    changed = rng.choice(ids, 30, replace=False)
    fresh = 1000 + rng.choice(500, 40, replace=False)  # newer than every row, in any order
    upd = np.concatenate([changed, fresh]) if seed % 2 else np.concatenate([fresh, changed])
    nb = rng.integers(-1, 1500, (len(upd), w))
    sims = rng.random((len(upd), w)).astype(np.float32)
    got = table.apply(np.zeros(0, np.int64), upd, nb, sims)
    want = _general_apply(table, upd, nb, sims)
    np.testing.assert_array_equal(got.ids, want[0])
    np.testing.assert_array_equal(got.nb_ids, want[1])
    np.testing.assert_array_equal(got.nb_sims, want[2])
    assert table.ids.shape == (200,)  # the table it came from is unchanged
    # an id older than the table's last that is not a row takes the general path, with the same result
    odd = np.array([int(np.setdiff1d(np.arange(1000), ids)[0])], np.int64)
    got = table.apply(np.zeros(0, np.int64), odd, nb[:1], sims[:1])
    want = _general_apply(table, odd, nb[:1], sims[:1])
    np.testing.assert_array_equal(got.ids, want[0])
    np.testing.assert_array_equal(got.nb_ids, want[1])


def _reference_lists(ids, nb, sims, query):
    """Reference lookup on plain arrays: each queried id's list, empty (-1, -inf) when absent."""
    out_nb = np.full(query.shape + (nb.shape[1],), -1, np.int64)
    out_s = np.full(query.shape + (nb.shape[1],), -np.inf, np.float32)
    where = {int(i): r for r, i in enumerate(ids)}
    for idx in np.ndindex(query.shape):
        r = where.get(int(query[idx]))
        if r is not None:
            out_nb[idx], out_s[idx] = nb[r], sims[r]
    return out_nb, out_s


@pytest.mark.parametrize("seed", range(3))
def test_neighbour_table_chain_of_commits_equals_plain_arrays(seed):
    """Many commits in a row (new rows appended, old lists replaced, some twice, now and then a removal), as
    the hook applies them: after each one the table reads as the plain arrays the reference keeps (lists,
    W-th similarities, their minimum, the materialised arrays); every earlier table still reads as it did;
    and a commit that neither folds nor removes shares the rows of the table it came from (no copy)."""
    from reid_engine.rerank.hooks import NeighbourTable

    rng = np.random.default_rng(seed)
    w = 4
    ids = np.sort(rng.choice(500, 150, replace=False)).astype(np.int64)
    ref = (ids, rng.integers(-1, 2000, (150, w)), rng.random((150, w)).astype(np.float32))
    table = NeighbourTable(*ref)
    history = [(table, ref)]
    next_id, shared = 500, 0
    for step in range(40):
        cur = history[-1][1]
        removed = np.zeros(0, np.int64)
        if step % 13 == 12:
            removed = rng.choice(cur[0], 5, replace=False)
        alive = np.setdiff1d(cur[0], removed)
        changed = rng.choice(alive, int(rng.integers(0, 25)), replace=False)
        if step % 5 == 4 and len(changed) > 2:
            changed = np.concatenate([changed, changed[:2]])  # a list replaced twice in one commit: the later wins
        fresh = next_id + rng.permutation(int(rng.integers(0, 30)))
        next_id += len(fresh) + 3
        upd = rng.permutation(np.concatenate([changed, fresh]).astype(np.int64))
        nb = rng.integers(-1, next_id, (len(upd), w))
        sims = rng.random((len(upd), w)).astype(np.float32)
        new = history[-1][0].apply(removed, upd, nb, sims)
        # the reference: drop removed rows and entries (re-sorted lists), then set each given list, later wins
        r_ids, r_nb, r_s = cur
        if len(removed):
            keep = ~np.isin(r_ids, removed)
            r_ids, r_nb, r_s = r_ids[keep], r_nb[keep], r_s[keep]
            gone = np.isin(r_nb, removed)
            r_s, r_nb = _lexsort_top(np.where(gone, -np.inf, r_s), np.where(gone, -1, r_nb), w)
        d = {int(i): (r_nb[r], r_s[r]) for r, i in enumerate(r_ids)}
        for i, a, b in zip(upd, nb, sims):
            d[int(i)] = (a, b)
        r_ids = np.array(sorted(d), np.int64)
        ref = (r_ids, np.array([d[int(i)][0] for i in r_ids]).reshape(-1, w),
               np.array([d[int(i)][1] for i in r_ids], np.float32).reshape(-1, w))
        if not len(removed) and np.shares_memory(new.ids, history[-1][0].ids):
            shared += 1
        history.append((new, ref))
        for old_table, old_ref in history[-3:] + history[:1]:  # the new table and earlier ones alike
            np.testing.assert_array_equal(old_table.ids, old_ref[0])
            np.testing.assert_array_equal(old_table.nb_ids, old_ref[1])
            np.testing.assert_array_equal(old_table.nb_sims, old_ref[2])
            probe = np.concatenate([old_ref[0][::3], [next_id + 7, -5]]).reshape(-1, 1)[:, [0, 0]]
            got_nb, got_s = old_table.lists(probe)
            want_nb, want_s = _reference_lists(*old_ref, probe)
            np.testing.assert_array_equal(got_nb, want_nb)
            np.testing.assert_array_equal(got_s, want_s)
            np.testing.assert_array_equal(old_table.kth(probe[:, 0]), want_s[:, 0, -1])
            assert old_table.min_kth == pytest.approx(float(old_ref[2][:, -1].min()))
    assert shared >= 10  # the overlay path is taken, not a copy per commit


def test_neighbour_tables_derived_from_one_table_do_not_share_appended_rows():
    """Two commits prepared from the same table (a failed commit retried): the second must not write over the
    rows the first appended."""
    from reid_engine.rerank.hooks import NeighbourTable

    none = np.zeros(0, np.int64)

    def lists(value: int, n: int) -> tuple[np.ndarray, np.ndarray]:
        return np.full((n, 2), value), np.full((n, 2), value / 4, np.float32)

    base = NeighbourTable(np.arange(10), *lists(0, 10))
    grown = base.apply(none, np.array([10, 11]), *lists(1, 2))
    grown2 = grown.apply(none, np.array([12]), *lists(2, 1))
    other = grown.apply(none, np.array([12, 13]), *lists(3, 2))
    np.testing.assert_array_equal(grown2.ids, np.arange(13))
    np.testing.assert_array_equal(grown2.nb_ids[12], [2, 2])
    np.testing.assert_array_equal(other.ids, np.arange(14))
    np.testing.assert_array_equal(other.nb_ids[12:], [[3, 3], [3, 3]])
    np.testing.assert_array_equal(grown.ids, np.arange(12))
    np.testing.assert_array_equal(base.ids, np.arange(10))


def _lexsort_top(scores: np.ndarray, ids: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Reference: every row fully sorted by (score descending, id ascending), -1 ids last, cut to k."""
    out_s = np.full((len(scores), k), -np.inf, np.float32)
    out_i = np.full((len(scores), k), -1, np.int64)
    for r in range(len(scores)):
        valid = ids[r] >= 0
        s, i = scores[r][valid], ids[r][valid]
        o = np.lexsort((i, -s))[:k]
        out_s[r, :len(o)], out_i[r, :len(o)] = s[o], i[o]
    return out_s, out_i


@pytest.mark.parametrize("width", [100, 3000])
def test_top_k_rows_keeps_the_smallest_ids_among_many_ties(width: int) -> None:
    """More tied scores than k (duplicate crops) in narrow and wide rows (the wide ones are narrowed through
    a sampled bound): the k best by score, ties always by ascending id, as a full sort gives."""
    from reid_engine.rerank.hooks import top_k_rows

    rng = np.random.default_rng(width)
    scores = rng.integers(0, 6, size=(30, width)).astype(np.float32) / 5  # six distinct values: heavy ties
    if width > 2048:  # rows whose best scores all lie past the sampled columns
        scores[:5, :2048] = np.minimum(scores[:5, :2048], 0.4)
    ids = np.stack([rng.permutation(10 * width)[:width] for _ in range(30)])
    ids[:, ::7] = -1  # padding is never returned
    ids[29, 3:] = -1  # a row with fewer valid entries than k: padded with -1
    got_s, got_i = top_k_rows(scores, ids, 16)
    ref_s, ref_i = _lexsort_top(scores, ids, 16)
    assert np.array_equal(got_i, ref_i)
    assert np.array_equal(got_s, ref_s)


@pytest.mark.parametrize("search", ["numpy", "faiss"])
def test_exact_neighbours_of_duplicated_rows_equal_a_full_sort(search: str, tmp_path) -> None:
    """A commit of 4,096 rows that are copies of 150 vectors (tied similarities far beyond the list width), with
    the NumPy search of given vectors and with the FAISS backend's. Both list each row's 16 best others at the
    full sort's similarities (float64, each copy's similarity is that of its vector). With NumPy the copies tie
    exactly and the smallest ids come first, as the full sort by (similarity, id) has them; FAISS's matrix
    product may round copies in different columns apart, so there only the similarities are compared."""
    from reid_engine.index.faiss_backend import FaissBackend
    from reid_engine.index.topk import knn_rows
    from reid_engine.rerank.hooks import exact_neighbours

    rng = np.random.default_rng(5)
    base = _unit(rng, 150, 32)
    copy_of = rng.integers(0, 150, 4096)
    x = base[copy_of]
    ids = rng.permutation(50_000)[:4096].astype(np.int64)
    knn = knn_rows if search == "numpy" else FaissBackend(tmp_path, 32, {}).knn
    sims, nbs = exact_neighbours(ids, x, 16, knn)
    full = (base.astype(np.float64) @ base.T.astype(np.float64))[copy_of][:, copy_of]
    np.fill_diagonal(full, -np.inf)
    ref_s, ref_i = _lexsort_top(full, np.broadcast_to(ids, full.shape), 16)
    np.testing.assert_allclose(sims, ref_s, atol=1e-5)
    pos = {int(v): j for j, v in enumerate(ids)}
    listed = np.vectorize(pos.__getitem__)(nbs)
    np.testing.assert_allclose(np.take_along_axis(full, listed, 1), ref_s, atol=1e-5)  # rows at those ranks
    assert all(len(set(r)) == 16 for r in nbs.tolist()) and not (nbs == ids[:, None]).any()
    if search == "numpy":
        assert np.array_equal(nbs, ref_i)


def test_kth_is_the_last_listed_similarity_and_minus_inf_when_unknown() -> None:
    rng = np.random.default_rng(6)
    x = _unit(rng, 40)
    gal = _build(x, np.arange(100, 140), 40, width=8)
    table = gal.state("neighbours")
    ask = np.array([[105, 7], [139, 100]])  # 7 is not in the gallery
    got = table.kth(ask)
    assert got.shape == (2, 2)
    assert got[0, 0] == table.lists([105])[1][0, -1] and got[1, 0] == table.lists([139])[1][0, -1]
    assert got[1, 1] == table.lists([100])[1][0, -1]
    assert got[0, 1] == -np.inf


def test_camera_links_by_hand():
    """Linked: the query's own camera, unknown cameras, and cameras drawing at least ``share`` of the best
    camera's links per gallery row; no reading below ``min_links``."""
    from reid_engine.rerank.hooks import CameraLinks

    cams = ["a", "b", "c", "q"]
    links = np.zeros((4, 4), np.int64)
    links[3, :3] = [30, 10, 2]  # q's crops: nearest crop of another camera in a, b, c
    links[1, 0] = 5  # b has too few links to read
    rows = np.array([10, 10, 10, 0])  # per row: a 3.0, b 1.0, c 0.2
    table = CameraLinks(cams, links, rows)
    cand = np.array(["a", "b", "c", None, "zz", "q"], dtype=object)
    np.testing.assert_array_equal(table.linked("q", cand, 0.5, 20), [True, False, False, True, True, True])
    np.testing.assert_array_equal(table.linked("q", cand, 0.3, 20), [True, True, False, True, True, True])
    assert table.linked("b", cand, 0.5, 20).all()  # 5 links < 20: not read
    assert table.linked("b", cand, 0.5, 5).tolist() == [True, True, False, True, True, False]
    assert table.linked(None, cand, 0.5, 20).all() and table.linked("new", cand, 0.5, 20).all()


def _two_sites(seed: int = 0, people: int = 24, shots: int = 3):
    """Site 1: people seen by cameras a and b (``shots`` crops each) and queried from camera q; site 2: other
    people in camera c, with a strong bias of its own (another place, other light)."""
    rng = np.random.default_rng(seed)
    dim = 32
    own, other = rng.normal(size=(people, dim)), rng.normal(size=(people, dim))
    bias = {c: 0.6 * rng.normal(size=dim) for c in "abq"}
    bias["c"] = 3.0 * rng.normal(size=dim)
    x, cams, pid = [], [], []
    for p in range(people):
        for cam in "ab":
            for _ in range(shots):
                x.append(own[p] + bias[cam] + 0.3 * rng.normal(size=dim)); cams.append(cam); pid.append(p)
        for _ in range(shots):
            x.append(other[p] + bias["c"] + 0.3 * rng.normal(size=dim)); cams.append("c"); pid.append(100 + p)
    q = own + bias["q"] + 0.5 * rng.normal(size=(people, dim))
    n = lambda v: (np.asarray(v) / np.linalg.norm(v, axis=-1, keepdims=True)).astype(np.float32)  # noqa: E731
    return n(x), np.array(cams, dtype=object), np.array(pid), n(q)


def test_camera_links_hook_tells_the_query_site_from_another():
    """Gallery rows in two commits and the query camera's crops as context: camera q links to a and b, not c;
    links come from a sample of each commit, and the counts survive a reload."""
    from reid_engine.rerank import MemoryGallery
    from reid_engine.rerank.hooks import CameraLinksHook

    x, cams, _, q = _two_sites()
    gal = MemoryGallery(x.shape[1])
    half = len(x) // 2
    gal.add(np.arange(half), x[:half], {"camera": cams[:half]})
    gal.add(np.arange(half, len(x)), x[half:], {"camera": cams[half:]})
    gal.observe(q, ["q"] * len(q))
    links = gal.state("camera_links")
    at = {c: i for i, c in enumerate(links.cameras)}
    assert links.rows[at["a"]] == links.rows[at["c"]] == 3 * len(q) and links.rows[at["q"]] == 0
    assert links.links[at["q"]].sum() == len(q)  # every context crop has a link
    assert links.links[at["q"], at["c"]] == 0 and links.links[at["q"], at["a"]] + links.links[at["q"], at["b"]] == len(q)
    assert links.links[at["a"]].sum() > 0  # the second commit's rows found the first commit's
    np.testing.assert_array_equal(links.linked("q", np.array(["a", "b", "c"], object), 0.5, 1), [True, True, False])
    again = CameraLinksHook().load(gal.folder, gal.states["camera_links"])
    np.testing.assert_array_equal(again.links, links.links)


def test_camera_links_stop_searching_once_a_camera_has_enough():
    """Each commit searches a sample of its rows until their camera has had LINK_ENOUGH crops searched; after
    that the links no longer change (a large gallery's commits search nothing for them)."""
    from reid_engine.rerank import MemoryGallery
    from reid_engine.rerank.hooks import LINK_ENOUGH, LINK_SAMPLE

    rng = np.random.default_rng(5)
    gal = MemoryGallery(16)
    block = 2 * LINK_SAMPLE
    seen = []
    for b in range(2 * LINK_ENOUGH // LINK_SAMPLE + 4):
        x = rng.normal(size=(block, 16)).astype(np.float32)
        x /= np.linalg.norm(x, axis=1, keepdims=True)
        gal.add(np.arange(b * block, (b + 1) * block), x, {"camera": np.array(["a", "b"] * LINK_SAMPLE, object)})
        links = gal.state("camera_links")
        seen.append((links.searched.copy(), links.links.sum()))
    assert (seen[-1][0] == LINK_ENOUGH).all()  # a and b: 32 of each per commit after the first
    assert seen[-1][1] == seen[-4][1] and (seen[-4][0] == seen[-1][0]).all()  # no more searches, no more links
    assert seen[-1][1] >= LINK_ENOUGH  # random rows: the nearest crop of another camera is in the other one


def test_past_the_exact_size_new_rows_search_the_flat_tail_through_the_graphs_projection(
        tmp_path, tiny_weights, monkeypatch) -> None:
    """Past the size that keeps exact lists, a commit's new rows find their committed neighbours through the
    approximate index, the flat tail included (``HOOK_SEARCH``'s ``approx_tail``: candidates in the graph's
    projection, re-scored): every listed similarity is the exact inner product, no row lists itself, and the
    lists hold nearly all of the exact top 16 (all pairs by NumPy)."""
    from pathlib import Path

    from reid_engine import CropItem, Engine
    from reid_engine.index.faiss_backend import FaissBackend
    from reid_engine.rerank import hooks

    monkeypatch.setattr(hooks, "EXACT_LISTS_UP_TO", 300)
    calls = []
    real = FaissBackend._search_tail
    monkeypatch.setattr(FaissBackend, "_search_tail",
                        lambda self, *a, **k: calls.append(len(a[0])) or real(self, *a, **k))
    rng = np.random.default_rng(5)
    basis = np.linalg.qr(rng.standard_normal((16, 4)))[0]
    x = rng.standard_normal((700, 4)) @ basis.T + 0.05 * rng.standard_normal((700, 16))
    x = (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)
    opts = {"exact_threshold": 300, "flat_limit": 100_000, "merge_factor": 100, "graph_dims": 6}
    eng = Engine.create(tmp_path / "idx", encoder="tiny-test", weights=tiny_weights, backend_options=opts)
    ids: list[int] = []
    for start in (0, 400, 500, 600):
        stop = 400 if start == 0 else start + 100
        items = [CropItem(Path(f"/x/{i}.png"), {"camera": "ab"[i % 2]}) for i in range(start, stop)]
        ids += eng.add_features(x[start:stop], items, hashes=[f"h{i}" for i in range(start, stop)])
        if start == 0:
            eng.store.compact()  # the first 400 rows become a projected graph; the next commits a flat tail
    segments = eng.store.backend.describe()["segments"]
    assert segments[0]["kind"] == "graph" and segments[0]["graph_dim"] == 6 and len(segments) == 4
    # the second and third commits' searches (neighbours, camera links) went through a tail of one and of two
    # flat segments
    assert set(calls) == {1, 2}
    table = eng.store.state("neighbours")
    new = np.asarray(ids[500:])
    nb, sims = table.lists(new)
    by_id = dict(zip(ids, x))
    for i, row, srow in zip(new, nb, sims):
        assert i not in row
        np.testing.assert_allclose(srow, [by_id[j] @ by_id[i] for j in row], atol=1e-5)
    want, _ = _all_pairs(np.asarray(ids), x, 16)
    recall = np.mean([len(np.intersect1d(a, w)) / 16 for a, w in zip(nb, want[500:])])
    assert recall >= 0.9
    eng.close()
