"""tools/rerank_devsets.py: the selection grid (parameters reach their step) and the distractor galleries."""
from __future__ import annotations

import numpy as np
import pytest

from reid_engine.rerank import get_pipeline
from reid_engine.rerank.steps import CameraNormalize, Centralize, Expand, KReciprocal, SiteSplit


@pytest.fixture(scope="module")
def tool(rerank_devsets_tool):
    return rerank_devsets_tool


def _config(pipeline) -> tuple:
    return tuple((type(s).__name__, tuple(sorted(vars(s).items()))) for s in pipeline.steps)


def test_each_grid_point_sets_its_own_step_parameters(tool) -> None:
    # Centralize and KReciprocal both take k1: the grid's k1 is Centralize's, KReciprocal keeps 20
    for pt in tool.grid_points():
        expand, site, cam, cen, kr = tool.pipeline_for(pt).steps[:5]
        assert isinstance(expand, Expand) and isinstance(site, SiteSplit)
        assert isinstance(cam, CameraNormalize) and isinstance(cen, Centralize) and isinstance(kr, KReciprocal)
        assert cam.strength == pt["strength"]
        assert (cen.k1, cen.alpha, cen.margin) == (pt["k1"], pt["alpha"], pt["margin"])
        assert (kr.k1, kr.k2) == (20, 6)
        assert (kr.lambda_value, kr.gate_share, kr.gate_margin) == (pt["lambda_value"], pt["gate_share"],
                                                                    pt["gate_margin"])
        assert kr.head == pt.get("head", 0) and kr.tail_lambda == pt.get("tail_lambda")


def test_grid_points_are_distinct_pipelines_and_hold_the_shipped_default(tool) -> None:
    points = tool.grid_points()
    configs = [_config(tool.pipeline_for(p)) for p in points]
    assert len(set(configs)) == len(configs)
    assert _config(get_pipeline("default")) in set(configs)
    # every Centralize setting is crossed with every k-reciprocal setting
    cen = {(p["alpha"], p["k1"], p["margin"]) if p["alpha"] else (0.0,) for p in points}
    assert len(cen) == 1 + 2 * 2 * 2 and len(points) % len(cen) == 0


def test_distractors_are_never_matches_and_pets_sets_never_distract_each_other(tool, monkeypatch) -> None:
    sizes = {"pku": 5, "petsA": 4, "petsB": 3, "viper": 6, "caviar": 7}
    rng = np.random.default_rng(0)

    def fake_features(protocol, encoder, cache):  # pid 1 in every protocol: the same number, other people
        rows = [{"file": f"{protocol}{i}", "pid": "1", "camid": "1", "role": "gallery"} for i in range(sizes[protocol])]
        return rng.normal(size=(sizes[protocol], 8)).astype(np.float32), rows

    monkeypatch.setattr(tool, "_features", fake_features)
    data = {"qf": np.zeros((2, 8), np.float32), "gf": np.ones((3, 8), np.float32), "q_pid": np.array([1, 2]),
            "g_pid": np.array([1, 2, 2]), "q_cam": np.array(["a", "a"]), "g_cam": np.array(["b", "b", "b"])}
    out = tool.with_distractors(data, "pets_A", "osnet", None)
    assert len(out["gf"]) == 3 + sizes["pku"] + sizes["viper"] + sizes["caviar"]  # neither PETS set
    real = out["g_cam"] == "b"
    assert sorted(out["g_pid"][real]) == [1, 2, 2] and np.all(out["gf"][real] == 1.0)
    assert not np.isin(out["g_pid"][~real], out["q_pid"]).any() and len(set(out["g_pid"][~real])) == (~real).sum()
    assert {c.split(":")[1] for c in out["g_cam"][~real]} == {"pku", "viper", "caviar"}
    assert len(tool.with_distractors(data, "viper", "osnet", None)["gf"]) == 3 + 5 + 4 + 3 + 7


def test_leave_one_set_out_by_hand(tool) -> None:
    """Two sets, one encoder, cosine at 50 everywhere. Candidate 0 gains 1 on both; candidate 1 gains 10 on set a
    and loses 1 mAP on set b (100x penalty). Without a, b alone prefers 0; without b, a alone prefers 1; on both,
    0 wins (4 against 10 - 1 - 100). Ties go to the lower number."""
    base = {("a", "e"): (50.0, 50.0, 50.0), ("b", "e"): (50.0, 50.0, 50.0)}
    cands = {0: {("a", "e"): (51.0, 51.0, 51.0), ("b", "e"): (51.0, 51.0, 51.0)},
             1: {("a", "e"): (55.0, 55.0, 55.0), ("b", "e"): (50.0, 50.0, 49.0)},
             2: {("a", "e"): (51.0, 51.0, 51.0), ("b", "e"): (51.0, 51.0, 51.0)}}
    chosen, held, all_best = tool.leave_one_set_out(cands, ["a", "b"], base, 100.0)
    assert chosen == {"a": 0, "b": 1} and all_best == 0
    assert held == {("a", "e"): (51.0, 51.0, 51.0), ("b", "e"): (50.0, 50.0, 49.0)}
