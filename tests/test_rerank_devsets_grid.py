"""The selection grid of tools/rerank_devsets.py: each point's parameters reach the step they belong to."""
from __future__ import annotations

import pytest

from reid_engine.rerank import get_pipeline
from reid_engine.rerank.steps import CameraNormalize, Centralize, KReciprocal


@pytest.fixture(scope="module")
def tool(rerank_devsets_tool):
    return rerank_devsets_tool


def _config(pipeline) -> tuple:
    return tuple((type(s).__name__, tuple(sorted(vars(s).items()))) for s in pipeline.steps)


def test_each_grid_point_sets_its_own_step_parameters(tool) -> None:
    # Centralize and KReciprocal both take k1: the grid's k1 is Centralize's, KReciprocal keeps 20
    for pt in tool.grid_points():
        cam, cen, kr = tool.pipeline_for(pt).steps[:3]
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
