"""Pedestrian attributes: the model, the clothes-invariant / clothing groups, fusion and attribute search.

Importing this package registers the ``attributes`` annotator (the model
itself loads on first use). ``groups`` names the attributes and their groups,
``fusion`` holds the pure re-scoring functions and the fusion modes,
``search`` the attribute vocabulary, ``store`` reads attributes back from an index.
"""
from __future__ import annotations

from ..annotators import register_annotator
from ..errors import AttributesNotIndexedError
from .fusion import FUSION_MODES, FUSION_POOL, MODES, FusionConfig, fuse_rank, needs_attributes, resolve_fusion
from .groups import BELONGINGS, BINARY, CLOTHING, COLOURS, GROUPS, INVARIANT, WIDTH
from .model import ANNOTATOR_NAME, AttributeAnnotator, AttributeModel, build_annotator
from .search import VOCABULARY, AttributeQuery, vocabulary_help


register_annotator(ANNOTATOR_NAME, build_annotator)

__all__ = [
    "ANNOTATOR_NAME",
    "BELONGINGS",
    "BINARY",
    "CLOTHING",
    "COLOURS",
    "FUSION_MODES",
    "FUSION_POOL",
    "GROUPS",
    "INVARIANT",
    "MODES",
    "VOCABULARY",
    "WIDTH",
    "AttributeAnnotator",
    "AttributeModel",
    "AttributeQuery",
    "AttributesNotIndexedError",
    "FusionConfig",
    "build_annotator",
    "fuse_rank",
    "needs_attributes",
    "resolve_fusion",
    "vocabulary_help",
]
