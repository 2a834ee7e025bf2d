"""Track queries take their candidates from the vector backend: checked against ranking every track with NumPy."""
from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import pytest

from reid_engine import CropItem, Engine
from reid_engine.index import db
from reid_engine.index.backend import SearchFilter

T, PER = 60, 5
T0 = 1_700_000_000.0


def _unit(x: np.ndarray) -> np.ndarray:
    return (x / np.linalg.norm(x, axis=-1, keepdims=True)).astype(np.float32)


@pytest.fixture
def gallery(tmp_path: Path, tiny_weights: Path):
    """T tracks of PER crops each around a random centre, two cameras, one second apart in time."""
    eng = Engine.create(tmp_path / "idx", encoder="tiny-test", weights=tiny_weights)
    dim = eng.store.manifest.dim
    rng = np.random.default_rng(4)
    centres = _unit(rng.standard_normal((T, dim)))
    feats = _unit(np.repeat(centres, PER, axis=0) + 0.15 * rng.standard_normal((T * PER, dim)))
    keys = [f"trk{t:03d}" for t in range(T)]
    cams = [f"c{t % 2}" for t in range(T)]
    items = [CropItem(Path(f"crop_{t}_{j}.png"), {"track": keys[t], "camera": cams[t], "timestamp": T0 + 10 * t + j})
             for t in range(T) for j in range(PER)]

    def tracks_hook(conn, ids, rows, x):
        out = []
        for t in sorted({r["track"] for r in rows}):
            js = [j for j, r in enumerate(rows) if r["track"] == t]
            i = keys.index(t)
            out.append({"key": t, "source": "synthetic", "camera": cams[i], "start_frame": 0, "end_frame": PER,
                        "start_time": T0 + 10 * i, "end_time": T0 + 10 * i + PER - 1, "n_frames": PER,
                        "best_crop": ids[js[0]], "crop_ids": [ids[j] for j in js],
                        "embedding": _unit(x[js].mean(0)).tobytes(), "added_at": time.time()})
        conn.execute(db.tracks.insert(), out)

    from reid_engine.engine import _row_from_meta

    rows = [_row_from_meta(it, f"h{i:06d}") for i, it in enumerate(items)]
    eng.store.add(feats, rows, tracks_hook)
    emb = np.stack([_unit(feats[t * PER:(t + 1) * PER].mean(0)) for t in range(T)])
    yield eng, feats, emb, keys, cams
    eng.close()


def _reference(q, emb, keys, cams, k, cameras=None, exclude=(), t_from=None, t_to=None):
    """Every track scored by its mean embedding, filtered, best first (ties by key)."""
    ok = [(cameras is None or cams[t] in cameras) and cams[t] not in exclude
          and (t_from is None or T0 + 10 * t + PER - 1 >= t_from) and (t_to is None or T0 + 10 * t <= t_to)
          for t in range(T)]
    s = emb @ q
    order = sorted((t for t in range(T) if ok[t]), key=lambda t: (-s[t], keys[t]))
    return [keys[t] for t in order[:k]]


def test_track_ranking_equals_every_track_scored_when_the_pool_holds_the_gallery(gallery):
    eng, feats, emb, keys, cams = gallery
    rng = np.random.default_rng(9)
    q = _unit(feats[rng.choice(len(feats), 6, replace=False)] + 0.1 * rng.standard_normal((6, feats.shape[1])))
    for kw, ref in [({}, {}), ({"cameras": ["c1"]}, {"cameras": {"c1"}}),
                    ({"exclude_cameras": ["c0"]}, {"exclude": {"c0"}}),
                    ({"time_from": T0 + 100, "time_to": T0 + 300}, {"t_from": T0 + 100, "t_to": T0 + 300})]:
        res = eng.query_tracks_features(q, 15, **kw)
        for r, qq in zip(res, q):
            assert [h.track for h in r.hits] == _reference(qq, emb, keys, cams, 15, **ref), kw
            assert all(h.distance == pytest.approx(1 - float(emb[keys.index(h.track)] @ qq), abs=1e-5) for h in r.hits)
    res = eng.query_tracks_features(q[:2], 10, query_cameras=["c0", "c1"], exclude_same_camera=True)
    for r, qq, c in zip(res, q[:2], ["c0", "c1"]):
        assert [h.track for h in r.hits] == _reference(qq, emb, keys, cams, 10, exclude={c})


def test_a_small_crop_pool_still_finds_the_nearest_tracks(gallery, monkeypatch):
    """Past the pool size only the tracks owning one of the query's nearest crops are scored (computed here with
    NumPy over every crop), and the backend is asked for the pool, not the gallery."""
    from reid_engine import tracks

    eng, feats, emb, keys, cams = gallery
    monkeypatch.setattr(tracks, "TRACK_POOL_MIN", 12)
    monkeypatch.setattr(tracks, "TRACK_POOL_PER_HIT", 4)
    asked: list[int] = []
    search = eng.store.search

    def spy(q, k, where=None, params=None):
        asked.append(k)
        assert isinstance(where, SearchFilter)
        return search(q, k, where=where, params=params)

    monkeypatch.setattr(eng.store, "search", spy)
    rng = np.random.default_rng(11)
    picks = rng.choice(T, 8, replace=False)
    q = _unit(emb[picks] + 0.05 * rng.standard_normal((8, emb.shape[1])))
    res = eng.query_tracks_features(q, 3)
    assert asked and set(asked) == {12}
    owner = np.repeat(np.arange(T), PER)
    for r, qq, t in zip(res, q, picks):
        near = np.argsort(-(feats @ qq), kind="stable")[:12]
        candidates = set(owner[near].tolist())
        ranked = [keys[i] for i in sorted(candidates, key=lambda i: (-float(emb[i] @ qq), keys[i]))]
        assert [h.track for h in r.hits] == ranked[:3]
        assert r.hits[0].track == keys[t]  # the query's own track


def test_track_queries_take_the_first_stage_search_parameters(gallery, monkeypatch):
    """``search_params`` reach the search for a track query's candidate crops over the index's defaults (exact
    here gives the same tracks), and a bad one is a typed error before anything is searched."""
    from reid_engine.errors import InvalidInputError

    eng, feats, emb, keys, cams = gallery
    seen: list = []
    search = eng.store.search

    def spy(q, k, where=None, params=None):
        seen.append(eng.store.search_params(params))
        return search(q, k, where=where, params=params)

    monkeypatch.setattr(eng.store, "search", spy)
    q = _unit(emb[:3])
    plain = eng.query_tracks_features(q, 5)
    exact = eng.query_tracks_features(q, 5, search_params={"exact": True, "ef_search": 40})
    assert [[h.track for h in r.hits] for r in plain] == [[h.track for h in r.hits] for r in exact]
    assert [(p.exact, p.ef_search) for p in seen] == [(None, None)] * 3 + [(True, 40)] * 3
    with pytest.raises(InvalidInputError, match="ef_search=0"):
        eng.query_tracks_features(q, 5, search_params={"ef_search": 0})
