"""The conformance suite every VectorBackend passes (imported by each backend's test module).

Subclass ``BackendConformance`` in a ``Test...`` class and override ``make_backend`` (and
``make_approx_backend`` for the approximate regime). Only the ``VectorBackend`` API is used,
so the same tests run against FAISS, Milvus or any later backend. The references are NumPy
brute force and ``SearchFilter.mask``.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Optional

import numpy as np
import pytest

from reid_engine.errors import InvalidInputError
from reid_engine.index.backend import FIELDS, Changes, SearchFilter, SearchParams, VectorBackend

DIM = 24
CAMERAS = np.array(["c0", "c1", "c2", "c3", "c4", "c5", "c6", "rare", None], dtype=object)


def unit(rng: np.random.Generator, n: int, dim: int = DIM) -> np.ndarray:
    x = rng.standard_normal((n, dim)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def make_fields(rng: np.random.Generator, n: int) -> dict[str, np.ndarray]:
    """Random FIELDS with some None/NaN; camera "rare" holds about 2% of rows."""
    cam = CAMERAS[rng.choice(len(CAMERAS), n, p=[0.14] * 7 + [0.02, 0.0])]
    cam[rng.random(n) < 0.05] = None
    src = np.array([f"src{v}" for v in rng.integers(0, 3, n)], dtype=object)
    trk = np.array([f"t{v}" for v in rng.integers(0, 40, n)], dtype=object)
    trk[rng.random(n) < 0.1] = None
    ts = rng.uniform(0, 1000, n)
    ts[rng.random(n) < 0.1] = np.nan
    return {"camera": cam, "source": src, "track": trk, "timestamp": ts}


class Gallery:
    """A NumPy mirror of what was committed, and the generation counter of a tiny store."""

    def __init__(self, backend: VectorBackend):
        self.backend = backend
        self.gen = 0
        self.state = backend.empty_state()
        backend.load(self.state)
        self.ids = np.zeros(0, np.int64)
        self.x = np.zeros((0, backend.dim), np.float32)
        self.fields = {f: np.zeros(0, object if f != "timestamp" else np.float64) for f in FIELDS}

    def commit(self, add_ids=None, x=None, fields=None, remove=None) -> dict[str, Any]:
        ch = Changes()
        if add_ids is not None:
            ch = Changes(add_ids=np.asarray(add_ids, np.int64), add_vectors=x, add_fields=fields)
        if remove is not None:
            ch.remove_ids = np.asarray(remove, np.int64)
        self.gen += 1
        self.state = self.backend.prepare(self.gen, ch)
        self.backend.load(self.state)
        if remove is not None:
            keep = ~np.isin(self.ids, remove)
            self.ids, self.x = self.ids[keep], self.x[keep]
            self.fields = {f: v[keep] for f, v in self.fields.items()}
        if add_ids is not None:
            self.ids = np.concatenate([self.ids, add_ids])
            self.x = np.concatenate([self.x, x])
            self.fields = {f: np.concatenate([self.fields[f], fields[f]]) for f in FIELDS}
        return self.state

    def add_random(self, rng: np.random.Generator, n: int, start: int) -> np.ndarray:
        ids = np.arange(start, start + n, dtype=np.int64)
        self.commit(ids, unit(rng, n, self.backend.dim), make_fields(rng, n))
        return ids

    def compact(self, force: bool = True) -> Optional[dict[str, Any]]:
        st = self.backend.compact(self.gen + 1, force=force)
        if st is not None:
            self.gen += 1
            self.state = st
            self.backend.load(st)
        return st

    def reference(self, q: np.ndarray, k: int, where: Optional[SearchFilter] = None):
        """Brute-force top-k (sims, ids), -1 padded."""
        keep = np.ones(len(self.ids), bool) if where is None else where.mask(self.ids, self.fields)
        ids, x = self.ids[keep], self.x[keep]
        s = q @ x.T
        order = np.argsort(-s, axis=1, kind="stable")[:, :k]
        out_i = np.full((len(q), k), -1, np.int64)
        out_s = np.full((len(q), k), -np.inf, np.float32)
        out_i[:, : order.shape[1]] = ids[order]
        out_s[:, : order.shape[1]] = np.take_along_axis(s, order, 1)
        return out_s, out_i


def assert_same(got, ref, atol: float = 1e-5) -> None:
    gs, gi = got
    rs, ri = ref
    assert gi.shape == ri.shape
    np.testing.assert_array_equal(gi, ri)
    live = ri >= 0
    np.testing.assert_allclose(gs[live], rs[live], atol=atol)


class BackendConformance:
    """Shared tests; a backend's test module subclasses this as ``Test<Name>Conformance``."""

    #: approximate-regime recall floor
    min_recall = 0.95

    def make_backend(self, tmp_path: Path, dim: int) -> VectorBackend:
        """A backend over storage under ``tmp_path`` (same path -> same storage: used to reopen)."""
        raise NotImplementedError

    def make_approx_backend(self, tmp_path: Path, dim: int) -> Optional[VectorBackend]:
        """A backend forced into its approximate index on a few thousand points, or None to skip."""
        return None

    def storage_files(self, backend: VectorBackend) -> set[str]:
        """What the backend keeps on storage (relative file names), for leak checks."""
        root = Path(backend.folder)
        return {str(p.relative_to(root)) for p in root.rglob("*") if p.is_file()} if root.exists() else set()

    # -- helpers --------------------------------------------------------------------------
    def gallery(self, tmp_path: Path, dim: int = DIM) -> Gallery:
        return Gallery(self.make_backend(tmp_path, dim))

    # -- tests ----------------------------------------------------------------------------
    def test_empty_state(self, tmp_path):
        g = self.gallery(tmp_path)
        b = g.backend
        assert b.count == 0
        s, i = b.search(unit(np.random.default_rng(0), 3), 5)
        assert s.shape == (3, 5) and i.shape == (3, 5) and i.dtype == np.int64
        assert (i == -1).all()
        assert b.contains([1, 2]).tolist() == [False, False]
        assert b.live_ids().size == 0
        assert b.describe()["backend"] == b.name

    def test_add_then_search_is_exact(self, tmp_path):
        rng = np.random.default_rng(1)
        g = self.gallery(tmp_path)
        g.add_random(rng, 300, 1)
        q = unit(rng, 7)
        got = g.backend.search(q, 10)
        assert got[0].dtype == np.float32
        assert_same(got, g.reference(q, 10))
        assert np.all(np.diff(got[0], axis=1) <= 1e-6)
        assert g.backend.count == 300

    def test_several_commits_then_compaction_keep_answers(self, tmp_path):
        rng = np.random.default_rng(2)
        g = self.gallery(tmp_path)
        for c in range(6):
            g.add_random(rng, 50 + 7 * c, 1000 * (c + 1))
        q = unit(rng, 5)
        before = g.backend.search(q, 12)
        assert_same(before, g.reference(q, 12))
        g.compact(force=True)
        assert_same(g.backend.search(q, 12), before)
        assert g.backend.count == len(g.ids)
        np.testing.assert_array_equal(g.backend.live_ids(), np.sort(g.ids))

    def test_automatic_compaction_keeps_answers(self, tmp_path):
        rng = np.random.default_rng(3)
        g = self.gallery(tmp_path)
        q = unit(rng, 4)
        for c in range(12):
            g.add_random(rng, 40, 100 * (c + 1))
            g.compact(force=False)
            assert_same(g.backend.search(q, 8), g.reference(q, 8))

    def test_remove_hides_ids_everywhere(self, tmp_path):
        rng = np.random.default_rng(4)
        g = self.gallery(tmp_path)
        g.add_random(rng, 150, 1)
        g.add_random(rng, 150, 1001)
        q = unit(rng, 4)
        _, top = g.backend.search(q, 5)
        gone = np.unique(np.concatenate([top[:, :3].ravel(), [2, 1003]]))
        g.commit(remove=gone)
        assert_same(g.backend.search(q, 10), g.reference(q, 10))
        assert not g.backend.contains(gone).any()
        assert g.backend.count == 300 - gone.size
        with pytest.raises(InvalidInputError):
            g.backend.reconstruct(gone[:1])
        np.testing.assert_array_equal(g.backend.live_ids(), np.sort(g.ids))
        g.compact(force=True)
        assert_same(g.backend.search(q, 10), g.reference(q, 10))
        assert not g.backend.contains(gone).any()

    def test_removed_id_added_again_is_the_new_vector(self, tmp_path):
        rng = np.random.default_rng(5)
        g = self.gallery(tmp_path)
        g.add_random(rng, 100, 1)
        g.commit(remove=[7])
        x = unit(rng, 1)
        g.commit(np.array([7]), x, make_fields(rng, 1))
        np.testing.assert_allclose(g.backend.reconstruct([7]), x, atol=1e-6)
        s, i = g.backend.search(x, 1)
        assert i[0, 0] == 7 and s[0, 0] == pytest.approx(1.0, abs=1e-5)
        assert g.backend.count == 100
        g.compact(force=True)
        np.testing.assert_allclose(g.backend.reconstruct([7]), x, atol=1e-6)

    def test_reconstruct_and_contains(self, tmp_path):
        rng = np.random.default_rng(6)
        g = self.gallery(tmp_path)
        g.add_random(rng, 80, 10)
        g.add_random(rng, 80, 500)
        ask = np.array([520, 10, 89, 500, 10])
        ref = np.stack([g.x[np.flatnonzero(g.ids == a)[0]] for a in ask])
        np.testing.assert_allclose(g.backend.reconstruct(ask), ref, atol=1e-6)
        assert g.backend.contains([10, 90, 579, 580, -5]).tolist() == [True, False, True, False, False]
        with pytest.raises(InvalidInputError):
            g.backend.reconstruct([10, 12345])

    def test_fields_are_those_committed(self, tmp_path):
        """A backend that keeps the fields returns what was committed for each id, through removals, re-adds and
        compaction (the reference is the NumPy mirror); one that keeps none returns None."""
        rng = np.random.default_rng(16)
        g = self.gallery(tmp_path)
        g.add_random(rng, 80, 10)
        g.add_random(rng, 80, 500)
        g.commit(remove=np.array([11, 12, 501]))
        g.commit(np.array([12]), unit(rng, 1, g.backend.dim), make_fields(rng, 1))
        for step in ("segments", "compacted"):
            ask = np.array([520, 10, 89, 500, 12, 10, 579])
            got = g.backend.stored_fields(ask)
            if got is None:
                return
            pos = [np.flatnonzero(g.ids == a)[0] for a in ask]
            assert sorted(got) == sorted(FIELDS), step
            for f in FIELDS:
                want = g.fields[f][pos]
                if f == "timestamp":
                    np.testing.assert_array_equal(np.asarray(got[f], np.float64), want.astype(np.float64))
                else:
                    assert list(got[f]) == list(want), (step, f)
            for gone in ([11], [10, 501], [12345]):
                with pytest.raises(InvalidInputError):
                    g.backend.stored_fields(gone)
            g.compact(force=True)

    @pytest.mark.parametrize("n_rows", [0, 7, 3000])
    def test_knn_of_given_vectors_equals_a_full_sort(self, tmp_path, n_rows):
        """``knn`` (exact search of vectors not in the index, e.g. a commit's new rows among themselves): each
        query's k best rows by a full sort, the lower row first among ties (rows repeated many times), -inf / -1
        where there are fewer rows than k."""
        rng = np.random.default_rng(19)
        b = self.make_backend(tmp_path, DIM)
        x = unit(rng, 40)[rng.integers(0, 40, n_rows)] if n_rows else np.zeros((0, DIM), np.float32)
        q = np.concatenate([x[:50], unit(rng, 30)])
        k = 12
        s, r = b.knn(q, x, k)
        assert s.shape == (len(q), k) and r.shape == (len(q), k) and r.dtype == np.int64
        # float64 products row by row: copies of a vector get the same value (a matrix product may round them
        # apart by column on some CPUs)
        full = (q.astype(np.float64)[:, None, :] * x.astype(np.float64)[None]).sum(-1)
        for j in range(len(q)):
            o = np.lexsort((np.arange(n_rows), -full[j]))[:k]
            assert r[j, :len(o)].tolist() == o.tolist()
            np.testing.assert_allclose(s[j, :len(o)], full[j, o], atol=1e-5)
            assert (r[j, len(o):] == -1).all() and np.isneginf(s[j, len(o):]).all()

    def test_track_members_are_the_live_ids_of_each_track(self, tmp_path):
        """A backend that keeps the tracks lists each named track's live ids, ascending, through removals,
        re-adds and compaction (the reference is the NumPy mirror); unknown tracks are empty; one that keeps
        none returns None."""
        rng = np.random.default_rng(17)
        g = self.gallery(tmp_path)
        for c in range(3):
            g.add_random(rng, 150, 1 + 1000 * c)
        g.commit(remove=np.arange(5, 3000, 7))
        g.commit(np.array([12]), unit(rng, 1, g.backend.dim), {"camera": np.array(["c1"], dtype=object),
                                                                 "source": np.array(["s"], dtype=object),
                                                                 "track": np.array(["t3"], dtype=object),
                                                                 "timestamp": np.array([1.0])})
        ask = ["t3", "t17", "t39", "nowhere"]
        for step in ("segments", "compacted"):
            got = g.backend.track_members(ask)
            if got is None:
                return
            assert sorted(got) == sorted(ask), step
            for t in ask:
                want = np.sort(g.ids[g.fields["track"] == t])
                np.testing.assert_array_equal(got[t], want, err_msg=f"{step} {t}")
            assert len(got["t3"]) > 5 and 12 in got["t3"] and len(got["nowhere"]) == 0
            g.compact(force=True)

    FILTERS = {
        "cameras": SearchFilter(cameras=("c1", "c3")),
        "rare_camera": SearchFilter(cameras=("rare",)),
        "unknown_camera": SearchFilter(cameras=("nowhere",)),
        "exclude": SearchFilter(exclude_cameras=("c0", "c2", "c4", "c6")),
        "sources": SearchFilter(sources=("src2",)),
        "tracks": SearchFilter(tracks=("t3", "t17")),
        "time": SearchFilter(time_from=100.0, time_to=180.0),
        "time_from": SearchFilter(time_from=900.0),
        "ids": SearchFilter(ids=np.arange(1, 4000, 37)),
        "combined": SearchFilter(cameras=("c1", "c2", "rare"), sources=("src0", "src1"), time_to=700.0),
    }

    @pytest.mark.parametrize("kind", sorted(FILTERS))
    def test_filter_matches_reference(self, tmp_path, kind):
        rng = np.random.default_rng(7)
        g = self.gallery(tmp_path)
        for c in range(3):
            g.add_random(rng, 400, 1 + 1000 * c)
        g.commit(remove=np.arange(5, 3000, 11))
        q = unit(rng, 6)
        where = self.FILTERS[kind]
        assert_same(g.backend.search(q, 10, where=where), g.reference(q, 10, where))
        g.compact(force=True)
        assert_same(g.backend.search(q, 10, where=where), g.reference(q, 10, where))

    def test_filter_removing_most_of_the_top_k(self, tmp_path):
        rng = np.random.default_rng(8)
        g = self.gallery(tmp_path)
        g.add_random(rng, 600, 1)
        q = unit(rng, 5)
        _, top = g.backend.search(q, 20)
        # allow only rows outside every query's unfiltered top-20
        allow = np.setdiff1d(g.ids, top.ravel())[::5]
        where = SearchFilter(ids=allow)
        got = g.backend.search(q, 10, where=where)
        assert not np.isin(got[1], top).any()
        assert_same(got, g.reference(q, 10, where))

    def test_k_larger_than_count_pads(self, tmp_path):
        rng = np.random.default_rng(9)
        g = self.gallery(tmp_path)
        g.add_random(rng, 6, 1)
        g.commit(remove=[3])
        q = unit(rng, 2)
        s, i = g.backend.search(q, 9)
        assert i.shape == (2, 9)
        assert (i[:, 5:] == -1).all() and (i[:, :5] >= 0).all()
        assert_same((s, i), g.reference(q, 9))
        s, i = g.backend.search(q, 4, where=SearchFilter(ids=np.array([1, 2])))
        assert (i[:, 2:] == -1).all()
        assert set(i[0, :2]) == {1, 2}

    def test_prepare_then_discard_changes_nothing(self, tmp_path):
        rng = np.random.default_rng(10)
        g = self.gallery(tmp_path)
        g.add_random(rng, 100, 1)
        files = self.storage_files(g.backend)
        q = unit(rng, 3)
        before = g.backend.search(q, 5)
        st = g.backend.prepare(g.gen + 1, Changes(add_ids=np.arange(500, 550), add_vectors=unit(rng, 50),
                                                  add_fields=make_fields(rng, 50), remove_ids=np.array([1, 2])))
        assert_same(g.backend.search(q, 5), before)
        assert g.backend.count == 100
        g.backend.discard(st)
        assert self.storage_files(g.backend) == files
        assert_same(g.backend.search(q, 5), before)

    def test_a_merge_applied_after_later_commits_keeps_them(self, tmp_path):
        """A merge planned on one state and applied after more adds and removals (some in the segments it
        merges): nothing committed since is lost or undone. Backends that merge only inside compact skip."""
        rng = np.random.default_rng(21)
        g = self.gallery(tmp_path)
        job = None
        for c in range(12):
            g.add_random(rng, 40, 100 * (c + 1))
            job = g.backend.plan_merge(g.gen)
            if job is not None:
                break
        if job is None:
            pytest.skip(f"the {g.backend.name} backend plans no merge here (it merges inside compact)")
        g.add_random(rng, 30, 5000)
        gone = g.ids[::5][:20]  # rows of the segments being merged
        g.commit(remove=gone)
        g.backend.build_merge(job)
        state = g.backend.apply_merge(job, g.gen + 1)
        assert state is not None
        g.gen, g.state = g.gen + 1, state
        g.backend.load(state)
        q = unit(rng, 6)
        assert_same(g.backend.search(q, 10, params=SearchParams(exact=True)), g.reference(q, 10))
        assert_same(g.backend.search(q, 10), g.reference(q, 10))
        assert g.backend.count == len(g.ids)
        np.testing.assert_array_equal(g.backend.live_ids(), np.sort(g.ids))
        assert not g.backend.contains(gone).any()

    def test_reopen_gives_same_answers(self, tmp_path):
        rng = np.random.default_rng(11)
        g = self.gallery(tmp_path)
        g.add_random(rng, 120, 1)
        g.add_random(rng, 120, 1001)
        g.commit(remove=[5, 1005])
        q = unit(rng, 4)
        where = SearchFilter(cameras=("c2", "c5"))
        ref_all, ref_f = g.backend.search(q, 7), g.backend.search(q, 7, where=where)
        other = self.make_backend(tmp_path, DIM)
        other.load(g.state)
        assert other.count == g.backend.count
        assert_same(other.search(q, 7), ref_all)
        assert_same(other.search(q, 7, where=where), ref_f)
        other.close()

    def test_reader_follows_newer_state(self, tmp_path):
        rng = np.random.default_rng(12)
        g = self.gallery(tmp_path)
        g.add_random(rng, 100, 1)
        reader = self.make_backend(tmp_path, DIM)
        reader.load(g.state)
        g.add_random(rng, 100, 1001)
        g.commit(remove=[1, 2, 3])
        reader.load(g.state)
        q = unit(rng, 3)
        assert_same(reader.search(q, 10), g.reference(q, 10))

    def test_uncommitted_prepare_is_invisible_and_cleaned(self, tmp_path):
        rng = np.random.default_rng(13)
        g = self.gallery(tmp_path)
        g.add_random(rng, 100, 1)
        files = self.storage_files(g.backend)
        q = unit(rng, 3)
        ref = g.reference(q, 6)
        g.backend.prepare(g.gen + 1, Changes(add_ids=np.arange(200, 260), add_vectors=unit(rng, 60),
                                             add_fields=make_fields(rng, 60), remove_ids=np.arange(1, 50)))
        # the writer "crashes" here: a new process opens the committed state
        fresh = self.make_backend(tmp_path, DIM)
        fresh.load(g.state)
        assert_same(fresh.search(q, 6), ref)
        fresh.cleanup(g.state, grace_seconds=3600)
        assert self.storage_files(fresh) != files  # too young to remove
        fresh.cleanup(g.state, grace_seconds=0)
        assert self.storage_files(fresh) == files
        assert_same(fresh.search(q, 6), ref)

    def test_search_params_and_inputs_are_validated(self, tmp_path):
        rng = np.random.default_rng(14)
        g = self.gallery(tmp_path)
        g.add_random(rng, 50, 1)
        for bad in (dict(nprobe=0), dict(nprobe=True), dict(refine=-1), dict(ef_search=2.5)):
            with pytest.raises(InvalidInputError):
                SearchParams(**bad)
        q = unit(rng, 2)
        assert_same(g.backend.search(q, 5, params=SearchParams(exact=True, nprobe=3)), g.reference(q, 5))
        with pytest.raises(InvalidInputError):
            g.backend.search(q, 0)
        with pytest.raises(InvalidInputError):
            g.backend.search(unit(rng, 2, DIM + 1), 5)

    def test_state_is_json(self, tmp_path):
        import json

        rng = np.random.default_rng(15)
        g = self.gallery(tmp_path)
        g.add_random(rng, 30, 1)
        g.commit(remove=[4])
        assert json.loads(json.dumps(g.state)) == g.state

    def test_approximate_regime_recall(self, tmp_path):
        b = self.make_approx_backend(tmp_path, 32)
        if b is None:
            pytest.skip("this backend has no approximate regime to force")
        rng = np.random.default_rng(16)
        g = Gallery(b)
        centres = unit(rng, 60, 32)
        n = 4000
        for c in range(4):
            lab = rng.integers(0, len(centres), n // 4)
            x = centres[lab] + 0.35 * rng.standard_normal((n // 4, 32)).astype(np.float32) / np.sqrt(32)
            x /= np.linalg.norm(x, axis=1, keepdims=True)
            g.commit(np.arange(c * n, c * n + n // 4), x.astype(np.float32), make_fields(rng, n // 4))
            g.compact(force=False)
        g.compact(force=True)
        lab = rng.integers(0, len(centres), 100)
        q = centres[lab] + 0.35 * rng.standard_normal((100, 32)).astype(np.float32) / np.sqrt(32)
        q = (q / np.linalg.norm(q, axis=1, keepdims=True)).astype(np.float32)
        for where in (None, SearchFilter(cameras=("c1",)), SearchFilter(tracks=("t5",))):
            _, got = b.search(q, 10, where=where)
            _, ref = g.reference(q, 10, where)
            hits = sum(len(set(a[a >= 0]) & set(r[r >= 0])) for a, r in zip(got, ref))
            assert hits / max(1, (ref >= 0).sum()) >= self.min_recall, where
        assert_same(b.search(q, 10, params=SearchParams(exact=True)), g.reference(q, 10))
