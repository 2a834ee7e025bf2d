"""The development-set tool on real pku crops (slow: encodes 592 crops once, then caches them)."""
from __future__ import annotations

import numpy as np
import pytest

from reid_engine.rerank import get_pipeline

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def tool(rerank_devsets_tool):
    return rerank_devsets_tool


def test_pku_cosine_reference_and_safe_default(tool, pku, osnet_onnx, tmp_path_factory) -> None:
    cache = tmp_path_factory.mktemp("feats")
    data = tool.load_set("pku_01to02", "osnet", cache)
    gal = tool.build_gallery(data)
    r1, _, m_ap = tool.evaluate(tool.rank_pipeline(gal, data, get_pipeline("none")), data)
    assert abs(r1 - 74.7) < 0.1 and abs(m_ap - 60.6) < 0.1  # ASSETS.md reference
    order = tool.rank_pipeline(gal, data, get_pipeline("default"))
    d1, _, d_map = tool.evaluate(order, data)
    assert d_map >= m_ap and d1 >= r1 - 0.5
    assert np.array_equal(order, tool.rank_pipeline(gal, data, get_pipeline("default"), one_call=True))


def test_pku_strong_tail_keeps_the_first_five_and_adds_map(tool, pku, osnet_onnx, tmp_path_factory) -> None:
    """On real crops: the default's first 5 answers are those of the same step without its tail; mAP rises, and
    more with the tail's pool of 200 than with the head's 100."""
    from reid_engine.rerank.presets import DEFAULT_KRECIPROCAL, default_pipeline

    data = tool.load_set("pku_01to02", "osnet", tmp_path_factory.mktemp("feats_tail"))
    gal = tool.build_gallery(data)
    no_tail = default_pipeline(kreciprocal=dict(DEFAULT_KRECIPROCAL, head=0, tail_lambda=None, tail_share=None))
    with_tail = tool.rank_pipeline(gal, data, get_pipeline("default"))
    without = tool.rank_pipeline(gal, data, no_tail)
    assert np.array_equal(with_tail[:, :5], without[:, :5])
    assert not np.array_equal(with_tail, without)
    assert tool.evaluate(with_tail, data)[2] > tool.evaluate(without, data)[2] + 1.0
    # the tail's pool of 200 (the head keeps the first stage's 100): the same first five, a higher mAP than 100
    small = tool.rank_pipeline(gal, data, tool.with_tail_pool(get_pipeline("default"), 100))
    assert np.array_equal(with_tail[:, :5], small[:, :5])
    assert tool.evaluate(with_tail, data)[2] > tool.evaluate(small, data)[2] + 0.5


def test_pku_as_one_site_of_two_cameras_is_kept_together(tool, pku, osnet_onnx, tmp_path_factory) -> None:
    """Both pku cameras in one gallery (unlike looks, the same people): the camera links keep them one site, so
    step 0 holds nothing back and the default's lists are those without it; the re-ranking still moves them."""
    cache = tmp_path_factory.mktemp("feats_site")
    data = tool.load_two_camera_site("2", "osnet", cache)
    assert len(data["gf"]) == 592 and len(data["qf"]) == 296 and set(data["q_cam"]) == {"2"}
    gal = tool.build_gallery(data, query_context=False)
    from reid_engine.rerank.presets import DEFAULT_SITE

    links = gal.state("camera_links")
    assert links.linked("2", np.array(["1", "2"]), **DEFAULT_SITE).all()
    assert links.linked("1", np.array(["1", "2"]), **DEFAULT_SITE).all()
    default = get_pipeline("default")
    with_site = tool.rank_pipeline(gal, data, default)
    assert np.array_equal(with_site, tool.rank_pipeline(gal, data, tool.without_site_steps(default)))
    assert not np.array_equal(with_site, tool.rank_pipeline(gal, data, get_pipeline("none")))
    with pytest.raises(ValueError, match="query camera"):
        tool.load_two_camera_site("7", "osnet", cache)
