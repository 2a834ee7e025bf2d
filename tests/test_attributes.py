"""Attribute groups, fusion maths and the search vocabulary: pure functions on tiny hand-computed cases."""
from __future__ import annotations

import numpy as np
import pytest

from reid_engine.attributes import fusion as F
from reid_engine.attributes.groups import (BELONGINGS, BINARY, CLOTHING, COLOURS, COLUMN, GROUPS, INVARIANT, SLICES,
                                           WIDTH, note_to_vector, notes_to_matrix, vector_to_note)
from reid_engine.attributes.search import VOCABULARY, AttributeQuery, parse_term, rank_by_attributes
from reid_engine.errors import InvalidInputError, UnknownNameError


def vec(**probs: float) -> np.ndarray:
    """An attribute vector with the given probabilities (others unknown)."""
    v = np.full(WIDTH, np.nan, np.float32)
    for name, p in probs.items():
        v[COLUMN[name]] = p
    return v


# -- groups -----------------------------------------------------------------------------------------
def test_groups_partition_the_model_outputs():
    assert set(INVARIANT) | set(BELONGINGS) | set(CLOTHING) == set(BINARY)
    assert not set(INVARIANT) & set(CLOTHING) and not set(BELONGINGS) & set(CLOTHING)
    assert GROUPS["invariant"] == ("is_male", "has_longhair")
    assert set(GROUPS["clothing"]) >= set(COLOURS)
    assert WIDTH == 8 + 2 * 3 + 2 * 2


def test_note_vector_round_trip_and_missing_fields():
    v = np.arange(WIDTH, dtype=np.float32) / 100
    note = vector_to_note(v)
    assert note["is_male"] == 0.0 and note["top_color"] == [0.08, 0.09, 0.1]
    np.testing.assert_allclose(note_to_vector(note), v, atol=1e-6)
    partial = note_to_vector({"is_male": 0.9, "top_color": [1, 2]})  # wrong width: ignored
    assert partial[COLUMN["is_male"]] == pytest.approx(0.9) and np.isnan(partial[SLICES["top_color"]]).all()
    assert np.isnan(notes_to_matrix([None])).all() and notes_to_matrix([]).shape == (0, WIDTH)
    assert "top_color" not in vector_to_note(partial)


# -- fusion terms -----------------------------------------------------------------------------------
def test_confidence_disagreement_contradiction_by_hand():
    np.testing.assert_allclose(F.confidence(np.array([0.95, 0.05, 0.7, 1.0, 0.2, np.nan]), 0.5), [0.8, 0.8, 0, 1, 0.2, 0], atol=1e-6)
    assert F.disagreement(np.float32(0.9), np.float32(0.2)) == pytest.approx(0.74)
    assert F.disagreement(np.float32(0.9), np.float32(np.nan)) == pytest.approx(0.5)
    assert F.contradiction(np.float32(0.95), np.float32(0.05), 0.5) == pytest.approx(0.64)  # confident, opposite
    assert F.contradiction(np.float32(0.95), np.float32(0.3), 0.5) == 0  # opposite but unsure: no penalty
    assert F.contradiction(np.float32(0.95), np.float32(0.99), 0.5) == 0  # same side
    assert F.contradiction(np.float32(0.95), np.float32(np.nan), 0.5) == 0  # unknown
    lab_a, lab_b = np.array([50, 10, 0], np.float32), np.array([80, 10, 30], np.float32)
    assert F.colour_distance(lab_a, lab_b) == pytest.approx(0.3)  # chroma only: lightness ignored
    assert F.colour_distance(lab_a, np.full(3, np.nan, np.float32)) == 0


def test_relative_distance_by_hand():
    d = np.array([[0.2, 0.3, 0.5, np.inf], [0.4, np.inf, np.inf, np.inf]], np.float32)
    out = F.relative_distance(d, 3)
    np.testing.assert_allclose(out[0, :3], [0, 1 / 3, 1], atol=1e-6)
    assert np.isinf(out[0, 3]) and out[1, 0] == 0
    np.testing.assert_allclose(F.relative_distance(d, 20)[0, :3], [0, 1 / 3, 1], atol=1e-6)  # fewer than 20: the last


def test_fuse_rank_penalises_confident_contradiction_only():
    cfg = F.FusionConfig(appearance=1.0, contradiction={"is_male": 0.5}, gate=0.5, scale_rank=None)
    d = np.array([[0.10, 0.12, 0.30]], np.float32)
    ids = np.array([[7, 8, 9]])
    q = vec(is_male=0.95)[None]
    cands = np.stack([vec(is_male=0.05), vec(is_male=0.3), vec(is_male=0.9)])[None]
    # 7: 0.10 + 0.5 * 0.8 * 0.8 = 0.42; 8: unsure, 0.12; 9: agrees, 0.30
    dist, pos = F.fuse_rank(d, ids, q, cands, 3, cfg)
    assert pos.tolist() == [[8, 9, 7]]
    np.testing.assert_allclose(dist, [[0.12, 0.30, 0.42]], atol=1e-6)
    dist2, pos2 = F.fuse_rank(d, ids, q, cands, 2, cfg)
    assert pos2.tolist() == [[8, 9]]


def test_appearance_mode_is_no_fusion():
    d = np.array([[0.1, 0.2, np.inf]], np.float32)
    ids = np.array([[3, 1, -1]])
    assert F.resolve_fusion("appearance") is None and F.resolve_fusion(None) is None
    assert not F.needs_attributes("appearance") and F.needs_attributes("clothes-change")
    dist, pos = F.fuse_rank(d, ids, None, None, 2, None)  # type: ignore[arg-type]
    assert pos.tolist() == [[3, 1]] and np.array_equal(dist, d[:, :2])
    zero = F.FusionConfig()  # no attribute weight: the order cannot change
    assert zero.is_identity
    dist, pos = F.fuse_rank(d, ids, np.zeros((1, WIDTH)), np.zeros((1, 3, WIDTH)), 3, zero)
    assert pos.tolist() == [[3, 1, -1]]


def test_padding_stays_last_and_shapes_are_checked():
    cfg = F.MODES["attributes"]
    d = np.array([[0.1, 0.2, np.inf]], np.float32)
    ids = np.array([[3, 1, -1]])
    dist, pos = F.fuse_rank(d, ids, vec(is_male=0.99)[None], np.stack([vec(is_male=0.01)] * 3)[None], 3, cfg)
    assert pos[0, -1] == -1 and np.isinf(dist[0, -1])
    with pytest.raises(InvalidInputError):
        F.fuse_rank(d, ids, np.zeros((2, WIDTH)), np.zeros((1, 3, WIDTH)), 3, cfg)


def test_clothes_change_mode_ignores_clothing_and_colour():
    cfg = F.MODES["clothes-change"]
    q = vec(is_male=0.9, has_longsleeves=0.99)
    q[SLICES["top_color"]] = [50, 60, 0]
    a = vec(is_male=0.9, has_longsleeves=0.01)  # other clothes, same person
    a[SLICES["top_color"]] = [50, -60, 0]
    b = vec(is_male=0.9, has_longsleeves=0.99)
    b[SLICES["top_color"]] = [50, 60, 0]
    att = F.attribute_distance(q[None], np.stack([a, b])[None], cfg)
    assert att[0, 0] == pytest.approx(att[0, 1])
    att = F.attribute_distance(q[None], np.stack([a, b])[None], F.MODES["attributes"])
    assert att[0, 0] > att[0, 1]  # the attributes mode does use the outfit


def test_modes_and_config_validation():
    assert set(F.MODES) == set(F.FUSION_MODES)
    assert F.resolve_fusion("Clothes_Change") is F.MODES["clothes-change"]
    with pytest.raises(UnknownNameError) as err:
        F.resolve_fusion("colour")
    assert "appearance, attributes, clothes-change" in str(err.value)
    with pytest.raises(InvalidInputError, match="unknown attribute"):
        F.FusionConfig(contradiction={"is_tall": 1.0})
    with pytest.raises(InvalidInputError):
        F.FusionConfig(gate=1.0)
    with pytest.raises(InvalidInputError):
        F.FusionConfig(colour={"is_male": 1.0})


def test_smoothing_uses_mutual_neighbours_only():
    attrs = np.stack([vec(is_male=1.0), vec(is_male=0.0), vec(is_male=0.6), vec()])
    nb = np.array([[1], [0], [0], [-1]])  # 0 <-> 1 mutual; 2 -> 0 one-way
    out = F.smooth_attributes(attrs, nb, ("is_male",))
    np.testing.assert_allclose(out[:3, COLUMN["is_male"]], [0.5, 0.5, 0.6])
    assert np.isnan(out[3, COLUMN["is_male"]])
    assert np.isnan(out[0, COLUMN["has_hat"]])  # untouched columns stay as they were
    lists = F.neighbour_lists(np.eye(3, dtype=np.float32)[[0, 0, 1]] + [[0, 0, 0], [0, 0.1, 0], [0, 0, 0]], 1)
    assert lists[:, 0].tolist() == [1, 0, 1]


# -- vocabulary ------------------------------------------------------------------------------------------
def test_vocabulary_terms_negation_and_spelling():
    assert parse_term("male") == ("is_male", True)
    assert parse_term("female") == ("is_male", False)
    assert parse_term("not-male") == ("is_male", False)
    assert parse_term("Long hair") == parse_term("long-hair") == ("has_longhair", True)
    assert parse_term("not-hat") == parse_term("no_hat") == ("has_hat", False)
    assert parse_term("not-shorts") == ("has_longpants", True)
    assert all(a in BINARY for a, _ in VOCABULARY.values())
    q = AttributeQuery.parse("male, long hair, backpack")
    assert q.terms == (("is_male", True), ("has_longhair", True), ("has_backpack", True))


def test_unknown_and_contradictory_terms():
    with pytest.raises(UnknownNameError) as err:
        parse_term("tall")
    msg = str(err.value)
    assert "'tall'" in msg and "male, female, long_hair" in msg and "\n" not in msg
    with pytest.raises(InvalidInputError, match="contradictory"):
        AttributeQuery.parse(["male", "female"])
    with pytest.raises(InvalidInputError):
        AttributeQuery.parse([])
    with pytest.raises(InvalidInputError):
        AttributeQuery.parse(["male"], threshold=1.0)


def test_matches_and_ranking_against_brute_force():
    rng = np.random.default_rng(3)
    m = rng.random((200, WIDTH)).astype(np.float32)
    m[:10] = np.nan  # crops without attributes never match
    ids = np.arange(1000, 1200)
    q = AttributeQuery.parse(["female", "backpack", "not-hat"], threshold=0.6)
    p_f, p_b, p_h = 1 - m[:, COLUMN["is_male"]], m[:, COLUMN["has_backpack"]], 1 - m[:, COLUMN["has_hat"]]
    with np.errstate(invalid="ignore"):
        brute = (p_f >= 0.6) & (p_b >= 0.6) & (p_h >= 0.6)
    assert np.array_equal(q.matches(m), brute)
    top, score = rank_by_attributes(ids, m, q, 5)
    joint = p_f * p_b * p_h
    order = sorted(np.flatnonzero(brute), key=lambda i: (-joint[i], i))[:5]
    assert top.tolist() == ids[order].tolist()
    np.testing.assert_allclose(score, joint[order], rtol=1e-5)
