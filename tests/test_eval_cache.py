"""The embedding cache: keyed by image bytes, encoder name and weights hash."""
from __future__ import annotations

import sqlite3
from pathlib import Path

import numpy as np
import pytest

from reid_engine.errors import InvalidInputError
from reid_engine.eval.cache import EmbeddingCache, cached_embeddings, default_cache_dir, hash_files

SHA_A = "a" * 64
SHA_B = "b" * 64


class CountingEncoder:
    """Embeds a file as (its size, its first byte); records what it was asked to encode."""

    def __init__(self) -> None:
        self.calls: list[list[str]] = []

    def __call__(self, paths: list[Path]) -> np.ndarray:
        self.calls.append([p.name for p in paths])
        return np.array([[p.stat().st_size, p.read_bytes()[0]] for p in paths], dtype=np.float32)


@pytest.fixture
def files(tmp_path: Path) -> list[Path]:
    out = []
    for i, data in enumerate([b"\x01first", b"\x02second!", b"\x01first"]):  # the third duplicates the first
        p = tmp_path / "img" / f"{i}.png"
        p.parent.mkdir(exist_ok=True)
        p.write_bytes(data)
        out.append(p)
    return out


def test_second_run_encodes_nothing(tmp_path: Path, files: list[Path]):
    enc = CountingEncoder()
    cache = EmbeddingCache(tmp_path / "cache", "tiny", SHA_A)
    first, n_new = cached_embeddings(files, enc, cache)
    assert n_new == 2 and enc.calls == [["0.png", "1.png"]]  # identical bytes encoded once
    assert first.dtype == np.float32 and first.tolist() == [[6, 1], [8, 2], [6, 1]]
    again, n_new = cached_embeddings(list(reversed(files)), enc, EmbeddingCache(tmp_path / "cache", "tiny", SHA_A))
    assert n_new == 0 and len(enc.calls) == 1
    assert np.array_equal(again, first[::-1])
    assert len(cache) == 2


def test_keyed_by_content_not_path(tmp_path: Path, files: list[Path]):
    enc = CountingEncoder()
    cache = EmbeddingCache(tmp_path / "cache", "tiny", SHA_A)
    cached_embeddings(files[:2], enc, cache)
    moved = tmp_path / "moved.png"
    files[1].rename(moved)
    cached_embeddings([moved], enc, cache)
    assert len(enc.calls) == 1
    files[0].write_bytes(b"\x09changed content")
    feats, n_new = cached_embeddings([files[0]], enc, cache)
    assert n_new == 1 and feats.tolist() == [[16, 9]]


def test_other_encoder_or_weights_do_not_share(tmp_path: Path, files: list[Path]):
    enc = CountingEncoder()
    cached_embeddings(files, enc, EmbeddingCache(tmp_path / "c", "tiny", SHA_A))
    cached_embeddings(files, enc, EmbeddingCache(tmp_path / "c", "tiny", SHA_B))
    cached_embeddings(files, enc, EmbeddingCache(tmp_path / "c", "other", SHA_A))
    assert len(enc.calls) == 3
    assert len(list((tmp_path / "c").glob("*.sqlite"))) == 3


def test_no_cache_encodes_everything(files: list[Path]):
    enc = CountingEncoder()
    feats, n_new = cached_embeddings(files, enc, None)
    assert n_new == 3 and feats.shape == (3, 2)


def test_precomputed_hashes_and_checks(tmp_path: Path, files: list[Path]):
    cache = EmbeddingCache(tmp_path / "c", "tiny", SHA_A)
    hashes = hash_files(files)
    assert hashes[0] == hashes[2] != hashes[1] and len(hashes[0]) == 64
    with pytest.raises(InvalidInputError, match="hashes"):
        cached_embeddings(files, CountingEncoder(), cache, hashes=hashes[:2])
    with pytest.raises(InvalidInputError, match="encoder returned"):
        cached_embeddings(files, lambda paths: np.zeros((1, 2)), cache)
    with pytest.raises(InvalidInputError, match="64 lowercase hex"):
        EmbeddingCache(tmp_path / "c", "tiny", "abc")
    with pytest.raises(InvalidInputError, match="vectors of shape"):
        cache.put(["x"], np.zeros((2, 3)))


def test_cache_file_of_another_encoder_is_refused(tmp_path: Path):
    cache = EmbeddingCache(tmp_path / "c", "a/b", SHA_A)
    # "a:b" sanitises to the same file name as "a/b"
    with pytest.raises(InvalidInputError, match="belongs to encoder 'a/b'"):
        EmbeddingCache(tmp_path / "c", "a:b", SHA_A)
    assert cache.path.is_file()


def test_damaged_entry_is_recomputed(tmp_path: Path, files: list[Path]):
    enc = CountingEncoder()
    cache = EmbeddingCache(tmp_path / "c", "tiny", SHA_A)
    cached_embeddings(files[:1], enc, cache)
    with sqlite3.connect(cache.path) as con:
        con.execute("UPDATE embeddings SET vec = ?", (b"\x00\x01",))
    feats, n_new = cached_embeddings(files[:1], enc, cache)
    assert n_new == 1 and feats.tolist() == [[6, 1]]


def test_default_cache_dir(monkeypatch, tmp_path: Path):
    monkeypatch.setenv("REID_ENGINE_CACHE", str(tmp_path / "here"))
    assert default_cache_dir() == tmp_path / "here"
    monkeypatch.delenv("REID_ENGINE_CACHE")
    assert default_cache_dir().parts[-3:] == (".cache", "reid-engine", "embeddings")
