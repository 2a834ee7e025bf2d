"""The registered re-ranking presets (``base.get_pipeline``).

``default`` is the safe adaptive composition; its parameters are the ones
``tools/rerank_devsets.py`` selects on all development sets (leave-one-set-out
figures in docs/rerank.md). The peers' methods are here as candidate-pool
versions so that sweeps keep working; none of them pools queries of one call.
"""
from __future__ import annotations

from typing import Any

from .base import Pipeline, register_pipeline
from .steps import (CameraNormalize, Centralize, Expand, KReciprocal, QueryExpansion, SamePersonPool, SiteMerge,
                    SiteSplit)

#: parameters of the default, chosen by tools/rerank_devsets.py on all development sets
DEFAULT_CAMERA: dict[str, Any] = {"strength": 0.5, "unknown_strength": 0.0, "min_count": 10}
DEFAULT_CENTRALIZE: dict[str, Any] = {"k1": 4, "k2": 4, "alpha": 0.3, "margin": 0.2, "ramp": 0.05}
#: camera links (``SiteSplit``): a camera is another site's when it draws less than half the nearest neighbours
#: (per gallery row) of the query camera's best-linked camera; read once the query camera has 20 links
DEFAULT_SITE: dict[str, Any] = {"share": 0.5, "min_links": 20}
#: the first stage's pool completed with the stored neighbours of its first 20 candidates, searched with half the
#: default beam when unfiltered (chosen on tools/bench_scale.py's 1M rows: speed, not accuracy; docs/storage.md)
DEFAULT_EXPAND: dict[str, Any] = {"top": 20, "beam": 0.5}
#: the head's blend among the first stage's best 100 (the pool it was chosen with), the tail's among 200
#: (chosen leave-one-set-out from 100 / 150 / 200, every fold: 200; 200 is the cost cap set beforehand)
DEFAULT_KRECIPROCAL: dict[str, Any] = {"k1": 20, "k2": 6, "lambda_value": 0.85, "gate_margin": 0.05,
                                       "gate_share": 0.9, "gate_top": 10, "head": 5, "tail_lambda": 0.3,
                                       "tail_share": 0.0, "pool": 200, "head_pool": 100}


def default_pipeline(camera: dict | None = None, centralize: dict | None = None, name: str = "default",
                     kreciprocal: dict | None = None) -> Pipeline:
    """The default composition with the given parameters (tools use it to sweep them)."""
    steps = (Expand(**DEFAULT_EXPAND), SiteSplit(**DEFAULT_SITE), CameraNormalize(**(camera or DEFAULT_CAMERA)),
             Centralize(**(centralize or DEFAULT_CENTRALIZE)), KReciprocal(**(kreciprocal or DEFAULT_KRECIPROCAL)),
             SiteMerge(), SamePersonPool())
    return Pipeline(name, steps,
                    "the first stage completed with stored neighbours + the query's own site only (other sites' "
                    "crops keep their places) + camera-mean removal "
                    "(query camera known) + track pooling + neighbour centralization with per-query adaptive trust "
                    "+ k-reciprocal where the gallery around the query is multi-shot (a safe blend for the first 5 "
                    "answers, the strong one after them)")


PIPELINES = [
    Pipeline("none", (), "plain cosine (the first stage only)"),
    default_pipeline(),
    Pipeline("camera", (CameraNormalize(**DEFAULT_CAMERA), SamePersonPool()), "camera-mean removal only"),
    Pipeline("nfc", (Centralize(k1=2, k2=2, trust="full"), SamePersonPool()),
             "Pose2ID neighbour feature centralization (k1=k2=2), gallery side, on the pool"),
    Pipeline("kr", (KReciprocal(20, 6, 0.3), SamePersonPool()), "k-reciprocal (k1=20, k2=6, lambda=0.3) in the pool"),
    Pipeline("qe", (QueryExpansion(3, 3.0), SamePersonPool()), "alpha-query expansion (n=3, alpha=3)"),
    Pipeline("nfc+qe", (Centralize(k1=2, k2=3, trust="full"), QueryExpansion(3, 3.0), SamePersonPool()),
             "the previous default without its query-batch part"),
    Pipeline("nfc+kr", (Centralize(k1=2, k2=2, trust="full"), KReciprocal(20, 6, 0.3), SamePersonPool()),
             "NFC then k-reciprocal in the pool"),
]
for _p in PIPELINES:
    register_pipeline(_p)
