"""Re-rankers against small obvious references; each default step is needed by some case."""
from __future__ import annotations

import csv

import numpy as np
import pytest

from reid_engine.rerank import (AttributeFusion, CameraNormalize, Candidates, Centralize, KReciprocal,
                                MemoryGallery, Pipeline, RerankContext, SamePersonPool, SiteMerge, SiteSplit,
                                get_pipeline)
from reid_engine.rerank.kreciprocal import k_reciprocal_rerank


def _n(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, np.float64)
    return x / np.linalg.norm(x, axis=-1, keepdims=True)


def _without(pipe: Pipeline, *classes: type) -> Pipeline:
    return Pipeline(pipe.name + "-minus", tuple(s for s in pipe.steps if not isinstance(s, classes)))


def _without_tail(pipe: Pipeline) -> tuple[Pipeline, KReciprocal]:
    """``pipe`` with its k-reciprocal step's strong tail removed (the same gated head alone, on the head's pool),
    and that step."""
    kr = next(s for s in pipe.steps if isinstance(s, KReciprocal))
    head_only = KReciprocal(kr.k1, kr.k2, kr.lambda_value, kr.head_pool or kr.pool, kr.gate_margin, kr.gate_share,
                            kr.gate_top)
    return Pipeline(pipe.name + "-no-tail", tuple(head_only if s is kr else s for s in pipe.steps)), kr


def _gallery(x: np.ndarray, cams=None, tracks=None) -> MemoryGallery:
    gal = MemoryGallery(x.shape[1])
    gal.add(np.arange(len(x)), _n(x).astype(np.float32), {"camera": cams, "track": tracks})
    return gal


def test_camera_normalize_matches_hand_computation() -> None:
    rng = np.random.default_rng(0)
    x = _n(rng.normal(size=(40, 8)) + np.repeat([[2, 0, 0, 0, 0, 0, 0, 0], [0, 2, 0, 0, 0, 0, 0, 0]], 20, 0))
    cams = ["a"] * 20 + ["b"] * 20
    gal = _gallery(x, cams)
    q = _n(rng.normal(size=(1, 8)) + [[2, 0, 0, 0, 0, 0, 0, 0]]).astype(np.float32)
    out = gal.query(Pipeline("c", (CameraNormalize(strength=1.0, min_count=5),)), q, 40, query_cameras=["a"])
    ma, mb = x[:20].mean(0), x[20:].mean(0)
    want = np.array([_n(x[i] - (ma if i < 20 else mb)) @ _n(q[0] - ma) for i in range(40)])
    assert np.allclose(out.scores[0], np.sort(want)[::-1], atol=1e-5)
    assert np.array_equal(out.ids[0], np.argsort(-want, kind="stable"))
    # unknown query camera: unknown_strength 0 leaves cosine
    plain = gal.query(Pipeline("c", (CameraNormalize(min_count=5),)), q, 40, query_cameras=[None])
    assert np.allclose(plain.scores[0], np.sort(x @ q[0].astype(np.float64))[::-1], atol=1e-5)


def test_camera_step_is_what_makes_the_match_win() -> None:
    # cameras add a strong bias; the true match (cam b) loses to a cam-a distractor in raw cosine
    rng = np.random.default_rng(1)
    d = 16
    bias = {"a": 2 * np.eye(d)[0], "b": 2 * np.eye(d)[1]}
    people = _n(rng.normal(size=(30, d)))
    x, cams = [], []
    for p in range(30):
        for c in "ab":
            x.append(people[p] * 2 + bias[c] + 0.3 * rng.normal(size=d))
            cams.append(c)
    x = _n(np.array(x))
    gal = _gallery(x, cams)
    q = _n(people[0] * 2 + bias["a"] + 0.3 * rng.normal(size=d))[None].astype(np.float32)
    where = type("OnlyB", (), {"mask": staticmethod(lambda ids, f: f["camera"] == "b")})()
    default = get_pipeline("default")
    top_default = gal.query(default, q, 5, where=where, query_cameras=["a"]).ids[0, 0]
    # bias along cam b's axis: compare against all rows (cam a rows included) to make the bias matter
    top_all = gal.query(default, q, 5, query_cameras=["a"]).ids[0]
    top_all_minus = gal.query(_without(default, CameraNormalize), q, 5, query_cameras=["a"]).ids[0]
    assert top_default == 1  # person 0, camera b
    assert 1 in top_all[:2]
    assert 1 not in top_all_minus[:2]


def test_centralize_matches_direct_formula() -> None:
    rng = np.random.default_rng(2)
    x = _n(rng.normal(size=(30, 6)))
    gal = _gallery(x)
    q = _n(rng.normal(size=6)).astype(np.float32)
    step = Centralize(k1=3, k2=3, alpha=0.7, margin=-0.5, ramp=0.2)
    out = gal.query(Pipeline("c", (step,)), q[None], 30)
    s = x @ x.T
    np.fill_diagonal(s, -np.inf)
    nn = np.argsort(-s, 1)
    top1 = (x @ q).max()
    want = np.empty(30)
    for i in range(30):
        v = x[i].copy()
        for j in nn[i, :3]:
            if i in nn[j, :3]:
                v += 0.7 * np.clip((s[i, j] - (top1 - 0.5)) / 0.2, 0, 1) * x[j]
        want[i] = _n(v) @ q
    assert np.array_equal(out.ids[0], np.argsort(-want, kind="stable"))
    assert np.allclose(out.scores[0], np.sort(want)[::-1], atol=1e-5)


def test_single_shot_gallery_keeps_the_cosine_head() -> None:
    # every gallery row a different person: neighbours are no closer than the query's best match, so no
    # neighbour is pooled and the head's gate stays shut: the first 5 answers are cosine's (the tail, whose
    # gate is always open in the default, re-orders answers 6 onwards)
    rng = np.random.default_rng(3)
    x = _n(rng.normal(size=(200, 32)))
    gal = _gallery(x)
    q = _n(x[:20] + 0.15 * rng.normal(size=(20, 32))).astype(np.float32)
    default = get_pipeline("default")
    head = next(s for s in default.steps if isinstance(s, KReciprocal)).head
    a = gal.query(default, q, 50)
    b = gal.query(get_pipeline("none"), q, 50)
    assert head == 5 and np.array_equal(a.ids[:, :head], b.ids[:, :head])
    no_tail = _without(default, KReciprocal)
    assert np.array_equal(gal.query(no_tail, q, 50).ids, b.ids)  # steps 1-2 alone change nothing here


def test_neighbour_pooling_is_what_makes_the_match_win() -> None:
    # a1 is person A seen from the query's side; a2, a3 are near-duplicates of a1 (same camera, same
    # person) that the query matches less than distractor d; pooling trusted neighbours lifts a2 above d
    e = np.eye(64)
    q = e[0]
    a1 = _n(e[0] + 1.0 * e[1])
    a2 = _n(a1 + 0.3 * e[2])
    a3 = _n(a1 + 0.3 * e[3])
    dist = _n(e[0] + 1.063 * e[4])
    rng = np.random.default_rng(4)
    others = _n(rng.normal(size=(40, 64)))
    x = np.vstack([a1, a2, a3, dist, others])
    gal = _gallery(x)
    sims = x @ q
    assert sims[0] > sims[3] > max(sims[1], sims[2])  # cosine: the distractor beats a2 and a3
    qq = q[None].astype(np.float32)
    default = get_pipeline("default")
    top = list(gal.query(default, qq, 4).ids[0])
    assert top.index(3) > max(top.index(1), top.index(2))
    top_minus = list(gal.query(_without(default, Centralize), qq, 4).ids[0])
    assert top_minus.index(3) < top_minus.index(1)


def test_track_pooling_on_known_tracks() -> None:
    # track T: t1 close to the query, t2 and t3 far; a track-less distractor in between
    rng = np.random.default_rng(5)
    d_ = 32
    q = _n(rng.normal(size=d_))
    t1 = _n(q + 0.4 * _n(rng.normal(size=d_)))
    t2 = _n(q + 1.2 * _n(rng.normal(size=d_)))
    t3 = _n(q + 1.2 * _n(rng.normal(size=d_)))
    dist = _n(q + 0.8 * _n(rng.normal(size=d_)))
    others = _n(rng.normal(size=(50, d_)))
    x = np.vstack([t1, t2, t3, dist, others])
    tracks = ["T", "T", "T", None] + [f"o{i}" for i in range(50)]
    gal = _gallery(x, tracks=tracks)
    sims = x @ q
    assert sims[3] > max(sims[1], sims[2])
    qq = q[None].astype(np.float32)
    top = list(gal.query(get_pipeline("default"), qq, 5).ids[0])
    assert top[:3] == sorted(top[:3], key=lambda i: -sims[i]) or set(top[:3]) == {0, 1, 2}
    assert set(top[:3]) == {0, 1, 2}
    assert Centralize(track_weight=0.0) is not None
    no_track = Pipeline("nt", (Centralize(track_weight=0.0),))
    assert set(gal.query(no_track, qq, 3).ids[0]) != {0, 1, 2}


def test_k_reciprocal_step_equals_the_function_on_the_pool() -> None:
    rng = np.random.default_rng(6)
    x = _n(rng.normal(size=(80, 12))).astype(np.float32)
    gal = _gallery(x)
    q = _n(rng.normal(size=(1, 12))).astype(np.float32)
    out = gal.query(Pipeline("kr", (KReciprocal(6, 3, 0.3, pool=40),)), q, 40)
    pool = np.argsort(-(x @ q[0]), kind="stable")[:40]
    dist, pos = k_reciprocal_rerank(q, x[pool], 40, k1=6, k2=3, lambda_value=0.3)
    assert np.array_equal(out.ids[0], pool[pos[0]])


def test_same_person_pooling_gives_one_list() -> None:
    rng = np.random.default_rng(7)
    x = _n(rng.normal(size=(30, 8))).astype(np.float32)
    gal = _gallery(x)
    q = _n(x[:2] + 0.3 * rng.normal(size=(2, 8))).astype(np.float32)
    out = gal.query(Pipeline("sp", (SamePersonPool(),)), q, 30, same_person=True)
    assert np.array_equal(out.ids[0], out.ids[1])
    want = (x @ q.T).mean(1)
    assert np.array_equal(out.ids[0], np.argsort(-want, kind="stable"))


def test_attribute_fusion_step_wraps_fuse_rank() -> None:
    from reid_engine.attributes import fusion
    from reid_engine.attributes.groups import WIDTH

    rng = np.random.default_rng(8)
    x = _n(rng.normal(size=(20, 8))).astype(np.float32)
    attrs = rng.uniform(size=(20, WIDTH)).astype(np.float32)
    gal = MemoryGallery(8)
    gal.add(np.arange(20), x, rows=[{"extra": {}} for _ in range(20)])
    from reid_engine.attributes.groups import notes_to_matrix  # noqa: F401
    qa = rng.uniform(size=(1, WIDTH)).astype(np.float32)
    # gallery attributes travel in the rows; fake the stored notes through a matrix-backed lookup
    step = AttributeFusion("clothes-change")
    s = x @ x[3]
    order = np.argsort(-s, kind="stable")
    pool = Candidates.sorted(order[None], s[order][None])
    ctx = RerankContext(gallery=gal, k=20, query_attributes=qa)
    import reid_engine.attributes.groups as groups
    orig = groups.notes_to_matrix
    try:
        groups.notes_to_matrix = lambda notes: np.full((len(notes), WIDTH), np.nan, np.float32)
        got = step.rerank(x[3:4], pool, ctx)
    finally:
        groups.notes_to_matrix = orig
    d, pos = fusion.fuse_rank(1 - s[order][None], order[None], qa, np.full((1, 20, WIDTH), np.nan, np.float32), 20,
                              fusion.resolve_fusion("clothes-change"))
    assert np.array_equal(got.ids, pos)


def test_batch_independence_on_real_crops(pku, osnet_onnx) -> None:
    from reid_engine.encoders import create_encoder

    with open(pku / "protocol_cross_camera.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    pick = [r for r in rows if int(r["pid"]) <= 6]
    enc = create_encoder(weights=osnet_onnx)
    f = enc.encode([pku / r["file"] for r in pick], batch_size=32)
    f = (f / np.linalg.norm(f, axis=1, keepdims=True)).astype(np.float32)
    g = np.array([r["role"] == "gallery" for r in pick])
    gal = MemoryGallery(f.shape[1])
    gal.add(np.arange(g.sum()), f[g], {"camera": [r["camid"] for r, m in zip(pick, g) if m]})
    q = f[~g]
    cams = [r["camid"] for r, m in zip(pick, g) if not m]
    for name in ("default", "nfc", "kr", "qe"):
        pipe = get_pipeline(name)
        together = gal.query(pipe, q, 10, query_cameras=cams)
        for i in range(len(q)):
            alone = gal.query(pipe, q[i:i + 1], 10, query_cameras=cams[i:i + 1])
            assert np.array_equal(alone.ids[0], together.ids[i]), name


@pytest.mark.parametrize("name", ["none", "default", "nfc", "kr", "qe", "nfc+qe", "nfc+kr", "camera"])
def test_every_preset_returns_a_sorted_pool(name: str) -> None:
    rng = np.random.default_rng(9)
    x = _n(rng.normal(size=(50, 8))).astype(np.float32)
    gal = _gallery(x, cams=["a", "b"] * 25)
    out = gal.query(get_pipeline(name), x[:3], 10, query_cameras=["a", None, "b"])
    assert out.ids.shape == (3, 10)
    assert (np.diff(out.scores, axis=1) <= 1e-7).all()
    assert all(len(set(r)) == 10 for r in out.ids)


def _multi_shot(seed: int, people: int = 40, shots: int = 8):
    """A multi-shot gallery (one camera): people in groups that look alike, each seen from two views in
    tight clusters; one noisy query per person from the first view (another camera)."""
    rng = np.random.default_rng(seed)
    centres = np.repeat(rng.normal(size=(people // 5, 32)), 5, 0) + 0.6 * rng.normal(size=(people, 32))
    views = 0.5 * rng.normal(size=(people, 2, 32))
    pid = np.repeat(np.arange(people), shots)
    view = np.tile(np.arange(shots) % 2, people)
    x = _n(centres[pid] + views[pid, view] + 0.15 * rng.normal(size=(len(pid), 32)))
    q = _n(centres + views[:, 0] + 0.6 * rng.normal(size=(people, 32))).astype(np.float32)
    return x, pid, q


def _m_ap(ids: np.ndarray, pid: np.ndarray) -> float:
    aps = []
    for r, row in enumerate(ids):
        hit = pid[row] == r
        ranks = np.nonzero(hit)[0]
        aps.append(np.mean((np.arange(len(ranks)) + 1) / (ranks + 1)))
    return float(np.mean(aps))


def test_gated_k_reciprocal_opens_on_a_multi_shot_gallery_and_equals_the_ungated_step() -> None:
    x, _, q = _multi_shot(11)
    gal = _gallery(x)
    gated = KReciprocal(20, 6, 0.7, gate_margin=0.0, gate_share=0.8)
    ctx = RerankContext(gallery=gal, k=len(x), query_cameras=[None], query_tracks=[None])
    s, i = gal.search(q[:1], 100)
    assert gated.gate(q[0], i[0], ctx)  # the obvious condition: same-person neighbours closer than the match
    _, nb_s = gal.state("neighbours").lists(i[0][:10])
    assert np.mean(nb_s[:, 0] > s[0, 0]) >= 0.8
    a = gal.query(Pipeline("g", (gated,)), q, 100)
    b = gal.query(Pipeline("u", (KReciprocal(20, 6, 0.7),)), q, 100)
    assert np.array_equal(a.ids, b.ids)


def test_gated_k_reciprocal_stays_shut_on_a_single_shot_gallery() -> None:
    rng = np.random.default_rng(3)
    x = _n(rng.normal(size=(200, 32)))
    gal = _gallery(x)
    q = _n(x[:20] + 0.15 * rng.normal(size=(20, 32))).astype(np.float32)
    gated = Pipeline("g", (KReciprocal(20, 6, 0.7, gate_margin=0.0, gate_share=0.8),))
    ungated = Pipeline("u", (KReciprocal(20, 6, 0.7),))
    cos = gal.query(get_pipeline("none"), q, 100)
    assert np.array_equal(gal.query(gated, q, 100).ids, cos.ids)
    assert not np.array_equal(gal.query(ungated, q, 100).ids, cos.ids)  # the gate is what keeps cosine


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_the_default_needs_its_k_reciprocal_step_on_a_multi_shot_gallery(seed: int) -> None:
    x, pid, q = _multi_shot(seed)
    gal = _gallery(x)
    default = get_pipeline("default")
    with_kr = _m_ap(gal.query(default, q, len(x)).ids, pid)
    without = _m_ap(gal.query(_without(default, KReciprocal), q, len(x)).ids, pid)
    assert with_kr > without + 0.005


@pytest.mark.parametrize("n, k1, k2", [(100, 20, 6), (40, 20, 6), (12, 20, 6), (60, 6, 3), (30, 4, 1)])
def test_dense_pool_k_reciprocal_equals_the_sparse_function(n: int, k1: int, k2: int) -> None:
    from reid_engine.rerank.kreciprocal import k_reciprocal_pool

    rng = np.random.default_rng(n + k1)
    g = _n(rng.normal(size=(n, 24)) + 1.5 * np.repeat(rng.normal(size=(n // 4 + 1, 24)), 4, 0)[:n])
    q = _n(g[3] + 0.5 * rng.normal(size=24))
    dist, pos = k_reciprocal_rerank(q[None].astype(np.float32), g.astype(np.float32), n, k1=k1, k2=k2,
                                    lambda_value=0.3)
    want = np.empty(n)
    want[pos[0]] = dist[0]
    assert np.allclose(k_reciprocal_pool(q, g, k1, k2, 0.3), want, atol=1e-5)


def test_head_tail_k_reciprocal_is_two_plain_lists_spliced() -> None:
    """Head from the lambda_value list, the rest of the pool in the order of the tail_lambda list."""
    x, _, q = _multi_shot(5)
    gal = _gallery(x)
    safe = gal.query(Pipeline("a", (KReciprocal(20, 6, 0.85),)), q, 100).ids
    strong = gal.query(Pipeline("b", (KReciprocal(20, 6, 0.2),)), q, 100).ids
    out = gal.query(Pipeline("ht", (KReciprocal(20, 6, 0.85, head=4, tail_lambda=0.2),)), q, 100)
    assert (np.diff(out.scores, axis=1) < 0).all()  # strictly below the head: one order, no tie to break
    for r in range(len(q)):
        assert list(out.ids[r, :4]) == list(safe[r, :4])
        assert list(out.ids[r, 4:]) == [i for i in strong[r] if i not in set(safe[r, :4])]
    assert not np.array_equal(out.ids, safe) and not np.array_equal(out.ids, strong)


@pytest.mark.parametrize("d_head, d_tail, head, want", [  # distances: lower is better
    ([0.1, 0.2, 0.3, 0.4], [0.9, 0.1, 0.5, 0.0], 1, [0, 3, 1, 2]),
    ([0.1, 0.2, 0.3, 0.4], [0.9, 0.1, 0.5, 0.0], 0, [3, 1, 2, 0]),
    ([0.4, 0.3, 0.2, 0.1], [0.9, 0.1, 0.5, 0.0], 2, [3, 2, 1, 0]),
    ([0.5, 0.5, 0.1], [0.0, 0.0, 0.0], 9, [2, 0, 1]),
])
def test_head_tail_order_by_hand(d_head, d_tail, head, want) -> None:
    from reid_engine.rerank.steps import head_tail_order

    order, scores = head_tail_order(1.0 - np.array(d_head, np.float32), 1.0 - np.array(d_tail, np.float32), head)
    assert list(order) == want
    assert (np.diff(scores) <= 0).all() and len(scores) == len(want)
    if 0 < head < len(want):
        assert scores[head] < scores[head - 1]


@pytest.mark.parametrize("units, head, want", [  # head distances 0.1 .. 0.6 in item order; tail: the reverse
    (["a", "a", "b", "a", "c", "d"], 2, [0, 1, 2, 3, 5, 4]),  # a, a, b, a: two answers; the 5th item opens a third
    (["a", "a", "b", "a", "c", "d"], 1, [0, 1, 5, 4, 3, 2]),
    (["a", "b", "c", "d", "e", "f"], 2, [0, 1, 5, 4, 3, 2]),  # one item per unit: the plain head of 2
    (["a", "a", "a", "a", "a", "a"], 1, [0, 1, 2, 3, 4, 5]),  # one track: all of it is the head
    (["a", "a", "b", "b", "c", "c"], 0, [5, 4, 3, 2, 1, 0]),
])
def test_head_tail_order_counts_a_track_as_one_answer(units, head, want) -> None:
    from reid_engine.rerank.steps import head_tail_order

    d_head = np.arange(1, 7, dtype=np.float32) / 10
    order, scores = head_tail_order(1.0 - d_head, d_head, head, np.array(units, dtype=object))
    assert list(order) == want
    assert (np.diff(scores) <= 0).all()


def test_the_default_keeps_the_first_tracks_of_a_footage_gallery() -> None:
    """A gallery of tracks (4 crops each, 4 tracks a person): the default's first 5 distinct tracks are those
    of the same pipeline without the tail, while the tail still re-orders the rest. The same rows without
    tracks: the head is 5 crops, and the first 5 tracks are then not all kept (what tracks change)."""
    x, pid, q = _multi_shot(3, people=40, shots=16)
    tracks = np.array([f"p{p}-{j % 16 // 4}" for j, p in enumerate(pid)], dtype=object)
    default = get_pipeline("default")
    plain, kr = _without_tail(default)

    def first_tracks(ids: np.ndarray) -> list[str]:
        out: list[str] = []
        for i in ids:
            if tracks[i] not in out:
                out.append(tracks[i])
        return out[:kr.head]

    gal = _gallery(x, tracks=tracks)
    got, safe = gal.query(default, q, len(x)).ids, gal.query(plain, q, len(x)).ids
    assert all(first_tracks(got[r]) == first_tracks(safe[r]) for r in range(len(q)))
    assert not np.array_equal(got, safe)  # the tail is still at work past the head
    gal = _gallery(x)
    got, safe = gal.query(default, q, len(x)).ids, gal.query(plain, q, len(x)).ids
    assert np.array_equal(got[:, :kr.head], safe[:, :kr.head])
    assert any(first_tracks(got[r]) != first_tracks(safe[r]) for r in range(len(q)))


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_the_default_needs_its_strong_tail_on_a_multi_shot_gallery(seed: int) -> None:
    """The default's k-reciprocal tail is what lifts mAP past the safe head's order, which it keeps (16 crops a
    person, so that most matches lie past the head; not every gallery gains: see docs/rerank.md)."""
    x, pid, q = _multi_shot(seed, people=40, shots=16)
    gal = _gallery(x)
    default = get_pipeline("default")
    plain, kr = _without_tail(default)
    assert kr.tail_lambda is not None and kr.head >= 1
    with_tail, without = gal.query(default, q, len(x)).ids, gal.query(plain, q, len(x)).ids
    assert np.array_equal(with_tail[:, :kr.head], without[:, :kr.head])
    assert _m_ap(with_tail, pid) > _m_ap(without, pid) + 0.005


def test_the_tail_gate_alone_keeps_the_incoming_head() -> None:
    """Where only the tail's gate opens, the head is the incoming (cosine) order and the rest the strong list."""
    x, _, q = _multi_shot(7)
    gal = _gallery(x)
    cos = gal.query(get_pipeline("none"), q, 100).ids
    strong = gal.query(Pipeline("b", (KReciprocal(20, 6, 0.2),)), q, 100).ids
    step = KReciprocal(20, 6, 0.85, gate_margin=0.0, gate_share=2.0, head=3, tail_lambda=0.2, tail_share=0.0)
    out = gal.query(Pipeline("t", (step,)), q, 100).ids
    for r in range(len(q)):
        assert list(out[r, :3]) == list(cos[r, :3])
        assert list(out[r, 3:]) == [i for i in strong[r] if i not in set(cos[r, :3])]
    shut = KReciprocal(20, 6, 0.85, gate_margin=0.0, gate_share=2.0, head=3, tail_lambda=0.2, tail_share=2.0)
    assert np.array_equal(gal.query(Pipeline("s", (shut,)), q, 100).ids, cos)


@pytest.mark.parametrize("seed", [5, 6])
def test_a_tail_pool_larger_than_the_heads_is_the_head_of_the_small_pool_then_the_tail_of_the_large(seed) -> None:
    """``head_pool`` 100 in a pool of 200: the first 4 answers are those of the same step on the cosine top 100
    (a pool of 100), the next 196 follow the tail blend computed on the cosine top 200, the rest cosine order."""
    x, _, q = _multi_shot(seed, people=40, shots=8)  # 320 crops
    gal = _gallery(x)
    step = KReciprocal(20, 6, 0.85, pool=200, head=4, tail_lambda=0.3, head_pool=100)
    out = gal.query(Pipeline("ht", (step,)), q, len(x)).ids
    safe = gal.query(Pipeline("a", (KReciprocal(20, 6, 0.85, pool=100),)), q, 100).ids
    strong = gal.query(Pipeline("b", (KReciprocal(20, 6, 0.3, pool=200),)), q, 200).ids
    cos = gal.query(get_pipeline("none"), q, len(x)).ids
    small = gal.query(Pipeline("c", (KReciprocal(20, 6, 0.3, pool=100),)), q, 200).ids
    for r in range(len(q)):
        assert list(out[r, :4]) == list(safe[r, :4])
        assert list(out[r, 4:200]) == [i for i in strong[r] if i not in set(safe[r, :4])]
        assert list(out[r, 200:]) == list(cos[r, 200:])
    assert not np.array_equal(strong[:, 4:100], small[:, 4:100])  # the tail's pool changes the tail


@pytest.mark.parametrize("kwargs", [{"head": -1}, {"tail_lambda": 1.5}, {"tail_lambda": -0.1}, {"tail_share": -0.1},
                                    {"head_pool": 1}])
def test_k_reciprocal_rejects_a_bad_head_or_tail(kwargs) -> None:
    from reid_engine.errors import InvalidInputError

    with pytest.raises(InvalidInputError, match="head >= 0|tail_lambda|tail_share|head_pool"):
        KReciprocal(20, 6, 0.85, **kwargs)


def test_other_sites_keep_their_places_and_the_own_site_is_re_ranked_as_alone() -> None:
    """An index of two sites, queried from site 1's camera: site 2's crops stay where cosine put them (without
    the site steps the default's camera normalization moves them); site 1's crops, in the places left, come in
    the order the default gives when the search is restricted to site 1's cameras (the reference; the gallery
    fits in one pool, so both runs re-rank the same crops)."""
    from reid_engine.index.backend import SearchFilter
    from tests.test_rerank_hooks import _two_sites

    x, cams, _, q = _two_sites(shots=1)
    assert len(x) <= 100
    gal = _gallery(x, cams=cams)
    gal.observe(q, ["q"] * len(q))
    default = get_pipeline("default")
    qc = ["q"] * len(q)
    got = gal.query(default, q, len(x), query_cameras=qc).ids
    cosine = gal.query(get_pipeline("none"), q, len(x), query_cameras=qc).ids
    alone = gal.query(default, q, len(x), query_cameras=qc, where=SearchFilter(cameras=("a", "b"))).ids
    other = cams[cosine] == "c"
    assert other.any(axis=1).all()
    np.testing.assert_array_equal(got[other], cosine[other])
    for r in range(len(q)):
        np.testing.assert_array_equal(got[r][cams[got[r]] != "c"], alone[r][alone[r] >= 0])
    unguarded = _without(default, SiteSplit, SiteMerge)
    moved = gal.query(unguarded, q, len(x), query_cameras=qc).ids
    assert not np.array_equal(moved[other], cosine[other])  # what the site steps prevent here


def test_one_site_is_not_changed_by_the_site_steps() -> None:
    """Every camera linked (one gallery camera, as in every development protocol): the default's lists equal
    those of the default without the site steps."""
    from tests.test_rerank_hooks import _two_sites

    x, cams, _, q = _two_sites(1)
    keep = cams == "a"
    gal = _gallery(x[keep], cams=cams[keep])
    gal.observe(q, ["q"] * len(q))
    default = get_pipeline("default")
    unguarded = _without(default, SiteSplit, SiteMerge)
    qc = ["q"] * len(q)
    a = gal.query(default, q, int(keep.sum()), query_cameras=qc)
    b = gal.query(unguarded, q, int(keep.sum()), query_cameras=qc)
    assert gal.state("camera_links").links.sum() >= 20
    np.testing.assert_array_equal(a.ids, b.ids)
    np.testing.assert_array_equal(a.scores, b.scores)


def test_a_weakly_linked_camera_of_one_site_is_held_back() -> None:
    """The documented cost: one site, but the query camera's crops find their nearest neighbours almost only in
    camera a (its look is closer), so camera b is taken for another site and its crops keep their cosine places."""
    from tests.test_rerank_hooks import _two_sites

    x, cams, _, q = _two_sites(1, shots=1)
    keep = cams != "c"
    x, cams = x[keep], cams[keep]
    gal = _gallery(x, cams=cams)
    gal.observe(q, ["q"] * len(q))
    links = gal.state("camera_links")
    at = {c: i for i, c in enumerate(links.cameras)}
    assert links.links[at["q"], at["b"]] * 2 < links.links[at["q"], at["a"]]
    qc = ["q"] * len(q)
    got = gal.query(get_pipeline("default"), q, len(x), query_cameras=qc).ids
    cosine = gal.query(get_pipeline("none"), q, len(x), query_cameras=qc).ids
    held = cams[cosine] == "b"
    np.testing.assert_array_equal(got[held], cosine[held])
    assert not np.array_equal(got, cosine)  # camera a's crops are re-ranked


def test_site_merge_keeps_the_held_candidates_when_a_step_drops_one() -> None:
    """A step between the site steps that drops a candidate: the held-back crops still come out, after the
    re-ranked ones, and no other crop is lost."""
    from reid_engine.rerank.base import Reranker
    from tests.test_rerank_hooks import _two_sites

    class DropLast(Reranker):
        name = "drop_last"

        def rerank(self, queries, pool, ctx):
            ids, sc = pool.ids.copy(), pool.scores.copy()
            for r in range(len(ids)):
                n = int((ids[r] >= 0).sum())
                ids[r, n - 1], sc[r, n - 1] = -1, -np.inf
            return Candidates(ids, sc)

    x, cams, _, q = _two_sites(shots=1)
    gal = _gallery(x, cams=cams)
    gal.observe(q, ["q"] * len(q))
    qc = ["q"] * len(q)
    pipe = Pipeline("t", (SiteSplit(), DropLast(), SiteMerge()))
    got = gal.query(pipe, q, len(x), query_cameras=qc)
    cosine = gal.query(get_pipeline("none"), q, len(x), query_cameras=qc).ids
    for r in range(len(q)):
        row = got.ids[r][got.ids[r] >= 0]
        own = cosine[r][cams[cosine[r]] != "c"]
        assert set(row) == set(cosine[r]) - {own[-1]}  # only the dropped one is gone
        assert (cams[row][-int((cams == "c").sum()):] == "c").all()  # the held ones follow the re-ranked
        assert (np.diff(got.scores[r][got.ids[r] >= 0]) <= 0).all()


def test_candidate_reads_are_the_gallery_s_and_each_id_is_read_once_per_call() -> None:
    """The per-call cache of vectors and fields: answers equal direct gallery reads for ids in any order, repeated
    or overlapping earlier requests, and the gallery is asked for each id once."""
    from reid_engine.rerank.steps import _fields, _vectors

    x, cams, _, _ = _two_sites_rows()
    gal = _gallery(x, cams=cams)
    asked: list[int] = []
    read_vectors = gal.vectors

    def counting(ids):
        asked.extend(np.asarray(ids).tolist())
        return read_vectors(ids)

    gal.vectors = counting
    ctx = RerankContext(gallery=gal, k=10)
    rng = np.random.default_rng(0)
    for _ in range(5):
        ids = rng.choice(len(x), 30)  # repeats inside a request and across requests
        np.testing.assert_array_equal(_vectors(ctx, ids), read_vectors(ids))
        got, want = _fields(ctx, ids), gal.fields(ids)
        assert set(got) == set(want)
        for key in want:
            np.testing.assert_array_equal(got[key], want[key])  # NaN times count as equal
    assert len(asked) == len(set(asked))


def _two_sites_rows():
    from tests.test_rerank_hooks import _two_sites

    return _two_sites(shots=1)


# -- Expand: the first stage completed with stored neighbours -------------------------------------------------
class _Lossy(MemoryGallery):
    """A first stage that never returns the ``missed`` rows (as a narrow graph walk misses some); the rest of
    the gallery (vectors, neighbour lists, fields) is the plain MemoryGallery's."""

    def __init__(self, dim: int, missed) -> None:
        super().__init__(dim)
        self.missed = np.asarray(sorted(missed), np.int64)

    def search(self, queries, k, where=None, params=None):
        s, i = super().search(queries, min(self.count, k + len(self.missed)), where, params)
        out_s = np.full((len(i), k), -np.inf, np.float32)
        out_i = np.full((len(i), k), -1, np.int64)
        for r in range(len(i)):
            keep = ~np.isin(i[r], self.missed) & (i[r] >= 0)
            n = min(k, int(keep.sum()))
            out_s[r, :n], out_i[r, :n] = s[r][keep][:n], i[r][keep][:n]
        return out_s, out_i


def _filled(gal: MemoryGallery, x: np.ndarray, cams=None) -> MemoryGallery:
    gal.add(np.arange(len(x)), x.astype(np.float32), {"camera": cams})
    return gal


def _expand_reference(x: np.ndarray, q: np.ndarray, pool_ids: np.ndarray, pool_s: np.ndarray, top: int,
                      width: int, allowed: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Brute force: the pool plus the ``width`` nearest other rows of its first ``top`` ids that pass the filter
    and beat the pool's last by more than 1e-5, best first, cut to the pool's width."""
    sims = x @ x.T
    np.fill_diagonal(sims, -np.inf)
    near = {int(j) for g in pool_ids[:top] for j in np.argsort(-sims[g], kind="stable")[:width]}
    new = np.array(sorted(near - set(pool_ids.tolist())), np.int64)
    new = new[allowed[new]] if len(new) else new
    cos = x[new] @ q.astype(np.float64)
    enter = cos > pool_s[-1] + 1e-5
    ids = np.concatenate([pool_ids, new[enter]])
    s = np.concatenate([pool_s, cos[enter]])
    order = np.argsort(-s, kind="stable")[:len(pool_ids)]
    return ids[order], s[order]


@pytest.mark.parametrize("filtered", [False, True])
def test_expand_equals_the_pool_and_its_neighbours_by_brute_force(filtered: bool) -> None:
    from reid_engine.index.backend import SearchFilter
    from reid_engine.rerank import Expand

    x, pid, queries = _multi_shot(3)
    cams = np.where(np.arange(len(x)) % 3 == 0, "a", "b")
    where = SearchFilter(cameras=("b",)) if filtered else None
    allowed = cams == "b" if filtered else np.ones(len(x), bool)
    exact = _filled(MemoryGallery(x.shape[1]), x, cams)
    width = exact.state("neighbours").width
    changed = 0
    for r in range(10):
        q = queries[r:r + 1]
        s, i = exact.search(q, 40, where)
        missed = i[0, 1:6]  # a first stage that misses the 2nd to 6th best rows
        lossy = _filled(_Lossy(x.shape[1], missed), x, cams)
        ls, li = lossy.search(q, 30, where)
        ctx = RerankContext(gallery=lossy, k=30, query_cameras=[None], where=where)
        got = Expand(top=8, pool=30).rerank(q, Candidates.sorted(li, ls), ctx)
        want_i, want_s = _expand_reference(x, q[0], li[0], ls[0].astype(np.float64), 8, width, allowed)
        assert got.ids[0].tolist() == want_i.tolist()
        np.testing.assert_allclose(got.scores[0], want_s, atol=1e-5)
        assert allowed[got.ids[0]].all()
        changed += int(len(np.intersect1d(got.ids[0], missed)) > 0)
        # an exact pool is never changed
        es, ei = exact.search(q, 30, where)
        same = Expand(top=8, pool=30).rerank(q, Candidates.sorted(ei, es), RerankContext(gallery=exact, k=30,
                                                                                         where=where))
        assert same.ids.tolist() == ei.tolist() and same.scores.tolist() == es.tolist()
    assert changed >= 8  # the misses are among the neighbours of the rows found, so most come back


def test_the_default_needs_expand_when_the_first_stage_misses_rows() -> None:
    from reid_engine.index.backend import SearchFilter
    from reid_engine.rerank import Expand

    x, pid, queries = _multi_shot(4)
    exact = _filled(MemoryGallery(x.shape[1]), x)
    default = get_pipeline("default")
    cams = SearchFilter(cameras=("a",))
    # an unfiltered first stage may walk half the beam (Expand); a search of the tail's pool of 200 needs the
    # beam of the head's 100 (KReciprocal); past the pool, answers in cosine order keep the beam for all of them
    assert default.first_stage_beam(None, 100) == 0.5 and default.first_stage_beam(cams, 100) == 1.0
    assert default.first_stage_beam(None, 200) == 0.25 and default.first_stage_beam(cams, 200) == 0.5
    assert default.first_stage_beam(None, 150) == 0.5 * 100 / 150
    assert default.first_stage_beam(None, 300) == 0.5 and default.first_stage_beam(cams, 300) == 1.0
    assert default.first_stage_beam(None) == default.first_stage_beam(None, default.pool_size(100))
    assert get_pipeline("kr").first_stage_beam(None, 200) == 1.0
    without = _without(default, Expand)
    same, differs = 0, 0
    for r in range(0, 40, 4):
        q = queries[r:r + 1]
        want = exact.query(default, q, len(x)).ids[0]
        missed = exact.search(q, 8)[1][0, 1:5]
        lossy = _filled(_Lossy(x.shape[1], missed), x)
        got = lossy.query(default, q, len(x)).ids[0]
        assert sorted(got.tolist()) == list(range(len(x)))  # every row once: pushed-out ids come back after
        same += int(got.tolist() == want.tolist())
        differs += int(lossy.query(without, q, len(x)).ids[0].tolist() != want.tolist())
    assert same == 10 and differs >= 5
