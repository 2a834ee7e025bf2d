"""The one-call facade: create or open an index, add crops, query, remove, stats."""
from __future__ import annotations

import logging
import os
import sys
import time
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterable, Iterator, Mapping, Optional, Sequence, Union

import numpy as np
from tqdm.auto import tqdm

from .annotators import Annotator, create_annotator
from .assets import expand_user, resolved
from .attributes import ANNOTATOR_NAME as ATTRIBUTES
from .attributes import AttributeModel, AttributeQuery, AttributesNotIndexedError, FusionConfig
from .attributes import fusion as attr_fusion
from .attributes.groups import WIDTH as ATTR_WIDTH, notes_to_matrix
from .attributes.search import DEFAULT_THRESHOLD, rank_by_attributes
from .attributes.store import GalleryAttributes, update_gallery_attributes
from .encoders import Encoder, create_encoder, get_spec
from .encoders.registry import default_weights_path
from .errors import EncoderMismatchError, ImageReadError, InvalidInputError, ReidEngineError, WeightsError
from .images import ImageLike, file_sha256, why_not_a_file
from .index import db
from .index.backend import SearchFilter, SearchParams
from .index.store import IndexStore, SqlHook
from .index.vectors import l2_normalize, zero_rows
from .ingest.crops import CropItem, parse_time
from .rerank.base import RERANK_K, Candidates, Pipeline, RerankContext, get_pipeline, list_hooks
from .results import Hit, QueryResult, check_k, check_queries
from .threads import on_one_blas_thread

if TYPE_CHECKING:
    from .ingest.pipeline import IngestReport
    from .tracks import TrackResult

log = logging.getLogger(__name__)

INDEXES_ENV = "REID_ENGINE_INDEXES"
#: re-ranking used when a query does not name one
DEFAULT_RERANK = "default"
PathLike = Union[str, Path]


def indexes_home() -> Path:
    """Where bare index names live: $REID_ENGINE_INDEXES (a blank value counts as unset), else ./indexes."""
    env = os.environ.get(INDEXES_ENV, "")
    return expand_user(env) if env.strip() else Path("indexes")


def resolve_index_path(name_or_path: PathLike) -> Path:
    """A bare name (no folder part) means ``indexes/<name>``; anything else is a path."""
    if not isinstance(name_or_path, (str, Path)):
        raise InvalidInputError(f"index {name_or_path!r}: expected a folder path or an index name")
    text = str(name_or_path)
    if not text.strip() or "\x00" in text:
        raise InvalidInputError(f"index path {text!r}: expected a folder path or an index name")
    p = expand_user(text)
    if p.is_absolute() or len(p.parts) > 1 or text.startswith(".") or p.exists():
        return p
    return indexes_home() / p


@contextmanager
def discard_new_index_on_failure(path: PathLike) -> Iterator[None]:
    """Around a command that may create the index at ``path``: when the command fails with a library error and the
    index it created holds no crop, the new folder goes again, so that a corrected retry starts afresh."""
    folder = resolve_index_path(path)
    existed = folder.exists()
    try:
        yield
    except ReidEngineError:
        if not existed and IndexStore.discard_if_empty(folder):
            log.info("%s: removed the index this command created, which stayed empty", folder)
        raise


@dataclass
class AddReport:
    """What one ``add`` call did."""

    added: int = 0
    duplicates: int = 0
    failed: list[tuple[str, str]] = field(default_factory=list)  # (path, reason)
    ids: list[int] = field(default_factory=list)
    seconds: float = 0.0

    def summary(self) -> str:
        return (
            f"added {self.added} crops, skipped {self.duplicates} already indexed, "
            f"{len(self.failed)} unreadable, in {self.seconds:.1f} s"
        )


#: the largest frame number and box coordinate a crop row takes (32-bit, as OpenCV draws)
_INT32 = 2**31 - 1


def _resolved(path: Any, folders: dict[str, str]) -> str:
    """``Path(path).resolve()`` as text, with each folder resolved once per ``folders`` cache (the file itself
    is still followed when it is a symbolic link)."""
    head, name = os.path.split(os.fspath(path))
    if name in ("", ".", ".."):
        return str(resolved(path))
    folder = folders.get(head)
    if folder is None:
        folder = folders[head] = os.path.realpath(head or ".")
    full = os.path.join(folder, name)
    return os.path.realpath(full) if os.path.islink(full) else full


def _crop_hash(item: CropItem) -> str:
    """The crop's identity (``CropItem.sha256``); a file that cannot be read is an ImageReadError naming it."""
    try:
        return item.sha256()
    except OSError as exc:  # the wording of ``add``'s hashing step
        raise ImageReadError(f"{item.path}: cannot read ({exc.strerror or exc}); pass hashes= for crops with no file"
                             ) from None


def _row_from_meta(item: CropItem, sha: str, folders: Optional[dict[str, str]] = None) -> dict[str, Any]:
    """Validate a crop's metadata into a SQL row with every column; unknown keys go to ``extra``.

    ``folders``: a cache of resolved folders shared by the rows of one call."""
    import json  # local: this module's import block is shared with the query-path work
    import math

    from .errors import printable

    meta = dict(item.meta)
    raw_path = str(item.path) if item.image is not None else _resolved(item.path, {} if folders is None else folders)
    path = printable(raw_path)  # undecodable file-name bytes cannot be stored as text: kept escaped
    row: dict[str, Any] = dict.fromkeys(db.CROP_FIELDS)
    row.update(path=path, sha256=sha)

    def bad(what: str) -> InvalidInputError:
        return InvalidInputError(f"{path}: {what}")

    box = meta.pop("box", None)
    if box is not None:
        try:
            x, y, w, h = (float(v) for v in box)
        except (TypeError, ValueError):
            raise bad(f"box {box!r}: expected (x, y, w, h)") from None
        row.update(box_x=x, box_y=y, box_w=w, box_h=h)
    for key in ("pid", "camera", "track", "source"):
        value = meta.pop(key, None)
        if value is not None and str(value) != "":
            text = printable(str(value))
            if key == "camera" and "," in text:  # filters take comma-separated camera names
                raise bad(f"camera {text!r}: a camera name cannot hold a comma (filters list cameras with commas)")
            if len(text) > db.TEXT_LIMITS.get(key, 1 << 20):
                raise bad(f"{key} {text[:20]!r}...: longer than {db.TEXT_LIMITS[key]} characters")
            row[key] = text
    frame = meta.pop("frame", None)
    if frame is not None and frame != "":
        try:
            row["frame"] = int(frame)
        except (TypeError, ValueError, OverflowError):
            raise bad(f"frame {frame!r}: expected an integer") from None
        if not -_INT32 <= row["frame"] <= _INT32:
            raise bad(f"frame {frame!r}: expected a 32-bit integer")
    ts = meta.pop("timestamp", None)
    if ts is not None:
        row["timestamp"] = parse_time(ts)
    for key in ("box_x", "box_y", "box_w", "box_h"):
        value = meta.pop(key, None)
        if value is not None:
            try:
                row[key] = float(value)
            except (TypeError, ValueError):
                raise bad(f"{key} {value!r}: expected a number") from None
    for key in ("box_x", "box_y", "box_w", "box_h"):
        if row[key] is not None and not math.isfinite(row[key]):
            raise bad(f"{key} {row[key]!r}: expected a finite number")
        if row[key] is not None and abs(row[key]) > _INT32:
            raise bad(f"{key} {row[key]!r}: expected pixels within +-{_INT32}")
    given = [k for k in ("box_x", "box_y", "box_w", "box_h") if row[k] is not None]
    if given and len(given) < 4:
        raise bad(f"box: {', '.join(given)} given without the rest; expected box_x, box_y, box_w and box_h (or none)")
    own_extra = meta.get("extra")
    if own_extra is not None and not isinstance(own_extra, Mapping):
        raise bad(f"extra {own_extra!r}: expected a mapping of names to values")
    extra = {k: v for k, v in meta.items() if v is not None and k != "extra"}
    extra.update(own_extra or {})
    if raw_path != path:
        extra["path_bytes"] = os.fsencode(raw_path).hex()  # the exact file name, for tools that need it
    if extra:
        try:
            json.dumps(extra)
        except (TypeError, ValueError) as exc:
            raise bad(f"metadata {sorted(extra)} cannot be stored ({exc})") from None
    row["extra"] = extra or None
    return row


def resolve_pipeline(rerank: Union[None, str, Pipeline]) -> Pipeline:
    """A preset name, a pipeline, or None (the default preset) -> a pipeline."""
    from . import rerank as _presets  # noqa: F401  (registers the presets)

    if isinstance(rerank, Pipeline):
        return rerank
    return get_pipeline(DEFAULT_RERANK if rerank is None else str(rerank))


def _names(what: str, values: Optional[Sequence[Any]]) -> Optional[tuple[str, ...]]:
    """A filter's list of names as a tuple of strings; a bare string is refused (it is not a list of names), and so
    is a name that is None (no crop's camera or source would be named "None")."""
    if values is None:
        return None
    if isinstance(values, (str, bytes)):
        raise InvalidInputError(f"{what}={values!r}: expected a list of names, e.g. [{values!r}]")
    if not isinstance(values, Iterable):
        raise InvalidInputError(f"{what}={values!r}: expected a list of names")
    out = tuple(values)
    for v in out:
        if v is None or isinstance(v, (bytes, bool)) or not isinstance(v, (str, int, np.integer)):
            raise InvalidInputError(f"{what}: {v!r} is not a name; expected texts (or integers)")
    return tuple(str(v) for v in out)


def _new_index_options_that_differ(manifest: Any, given: Mapping[str, Any]) -> list[str]:
    """The options of ``Engine.create`` in ``given`` whose values differ from what the existing index was built with
    (opening ignores them, so they would be dropped without a word)."""
    stored = {
        "factory": manifest.factory, "db_url": manifest.db_url, "backend": manifest.backend,
        "backend_options": manifest.backend_options, "search_params": manifest.search,
    }
    differ = []
    for name, built in stored.items():
        value = given.get(name)
        if value is None or (name == "factory" and value == "auto"):
            continue
        if isinstance(built, dict) and isinstance(value, Mapping):
            same = all(built.get(k) == v for k, v in value.items())
        else:
            same = value == built
        if not same:
            differ.append(f"{name} {value!r} (the index has {built!r})")
    return differ


def _check_item(it: CropItem, where: str) -> None:
    """Raise ``InvalidInputError`` unless a crop's path, metadata and pixels have the types a crop needs."""
    if not isinstance(it.path, (str, os.PathLike)) or it.path == "":
        raise InvalidInputError(f"{where}: path {it.path!r}: expected an image file path (or a name for its pixels)")
    if not isinstance(it.meta, Mapping):
        raise InvalidInputError(f"{where} ({it.path}): metadata {it.meta!r}: expected a mapping of names to values")
    if it.image is not None and not isinstance(it.image, np.ndarray):
        raise InvalidInputError(f"{where} ({it.path}): image of type {type(it.image).__name__}: expected a pixel array")


#: options of ``query`` that rank crops and have no meaning for a track ranking
_CROP_QUERY_OPTIONS = ("rerank", "fusion", "attributes", "attribute_threshold", "query_attributes", "same_person",
                       "tracks")


def _crop_query_options(options: Mapping[str, Any]) -> None:
    """Refuse options of ``query`` that ``query_tracks`` does not take, naming them."""
    given = [name for name in _CROP_QUERY_OPTIONS if name in options]
    if given:
        raise InvalidInputError(f"{', '.join(given)}: options of crop queries (query), not of track queries")


def _query_images(images: Any) -> list[Any]:
    """The query images as a list: one path or array, or an iterable of them; anything else is refused."""
    if isinstance(images, (str, Path, np.ndarray)):
        return [images]
    if isinstance(images, (bytes, Mapping)) or not isinstance(images, Iterable):
        raise InvalidInputError(
            f"query images of type {type(images).__name__}: expected an image path or array, or a list of them"
        )
    out = list(images)
    for i, im in enumerate(out):
        if not isinstance(im, (str, os.PathLike, np.ndarray)):
            shown = repr(im) if len(repr(im)) <= 60 else repr(im)[:57] + "..."
            raise InvalidInputError(
                f"query image {i} {shown} of type {type(im).__name__}: expected an image file path or a pixel array"
            )
    return out


def _describe_mismatch(built: dict[str, Any], asked: dict[str, Any]) -> list[str]:
    diffs = []
    for key in ("name", "weights_sha256", "dim", "preprocess"):
        if key in asked and asked[key] is not None and built.get(key) != asked[key]:
            b, a = built.get(key), asked[key]
            if key == "weights_sha256":
                b, a = str(b)[:12], str(a)[:12]
            diffs.append(f"{key}: index has {b!r}, got {a!r}")
    return diffs


class Engine:
    """A gallery index plus the encoder that built it."""

    def __init__(self, store: IndexStore, encoder: Optional[Encoder] = None, device: Optional[str] = None):
        self.store = store
        self._encoder = encoder
        self._device = device
        self._annotators: Optional[list[Annotator]] = None
        self._gallery_attrs: Optional[GalleryAttributes] = None  # attribute matrix of one generation

    # -- lifecycle ------------------------------------------------------------------------
    @classmethod
    def create(
        cls,
        path: PathLike,
        encoder: Optional[str] = None,
        weights: Optional[PathLike] = None,
        factory: Optional[str] = None,
        db_url: Optional[str] = None,
        device: Optional[str] = None,
        annotators: Sequence[str] = (),
        backend: str = "faiss",
        backend_options: Optional[dict[str, Any]] = None,
        hooks: Optional[Sequence[str]] = None,
        search_params: Optional[dict[str, Any]] = None,
    ) -> "Engine":
        """Create a new empty index at ``path`` (or ``indexes/<name>``).

        ``annotators`` names per-crop models (see ``reid_engine.annotators``) run on every crop added.
        ``backend`` names the vector backend ("faiss", or "milvus" with ``backend_options={"uri": ...}``);
        ``factory`` overrides its automatic index type (e.g. "Flat", "IVF1024,Flat").
        ``hooks`` (default: every registered one) name the index-time state kept for re-ranking;
        ``search_params`` are stored default search parameters (nprobe, ef_search, exact, refine, pool).
        """
        enc = create_encoder(encoder, weights, device)
        for name in annotators:
            create_annotator(name, device)  # fail early on unknown names
        from . import rerank as _presets  # noqa: F401  (registers the presets and their hooks)

        if search_params:
            SearchParams.from_dict(search_params)  # validates
        store = IndexStore.create(
            resolve_index_path(path), enc.describe(), enc.dim, factory, db_url, annotators,
            backend=backend, backend_options=backend_options,
            hooks=list_hooks() if hooks is None else list(hooks), search=search_params,
        )
        return cls(store, enc, device)

    @classmethod
    def open(
        cls,
        path: PathLike,
        encoder: Optional[str] = None,
        weights: Optional[PathLike] = None,
        device: Optional[str] = None,
    ) -> "Engine":
        """Open an existing index; a given encoder or weights must match what built it."""
        store = IndexStore.open(resolve_index_path(path))
        built = store.manifest.encoder
        asked: dict[str, Any] = {"name": encoder}
        if weights is not None:
            wpath = expand_user(weights)
            if not wpath.is_file():
                raise WeightsError(f"{wpath}: {why_not_a_file(wpath)}, expected a weights file")
            asked["weights_sha256"] = file_sha256(wpath)
        diffs = _describe_mismatch(built, asked)
        if diffs:
            raise EncoderMismatchError(f"{store.folder}: encoder does not match the index ({'; '.join(diffs)})")
        engine = cls(store, None, device)
        if weights is not None:
            engine._encoder = engine._build_encoder(Path(weights))
        return engine

    @classmethod
    def open_or_create(cls, path: PathLike, **kwargs: Any) -> "Engine":
        """Open the index at ``path`` if there is one, else create it."""
        folder = resolve_index_path(path)
        if (folder / "manifest.json").exists():
            open_kwargs = {k: v for k, v in kwargs.items() if k in ("encoder", "weights", "device")}
            engine = cls.open(folder, **open_kwargs)
            differ = _new_index_options_that_differ(engine.store.manifest, kwargs)
            if differ:
                engine.close()
                raise InvalidInputError(
                    f"{folder}: an index already exists here, and {', '.join(differ)} only shape a new index; "
                    "leave them out to add to it, or name a new index"
                )
            return engine
        return cls.create(folder, **kwargs)

    def close(self) -> None:
        self.store.close()

    def refresh(self) -> bool:
        """See changes other processes committed since the last call; True when there were some."""
        return self.store.refresh()

    def compact(self) -> dict[str, Any]:
        """Merge the index's segments and drop removed vectors now (it also happens automatically)."""
        return self.store.compact()

    def __enter__(self) -> "Engine":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    @property
    def path(self) -> Path:
        return self.store.folder

    @property
    def encoder(self) -> Encoder:
        """The index's encoder, loaded on first use from the weights recorded in the manifest."""
        if self._encoder is None:
            self._encoder = self._build_encoder(None)
        return self._encoder

    @property
    def annotators(self) -> list[Annotator]:
        """The per-crop models this index runs at add time, built on first use."""
        if self._annotators is None:
            self._annotators = [create_annotator(n, self._device) for n in self.store.manifest.annotators]
        return self._annotators

    def _build_encoder(self, weights: Optional[Path]) -> Encoder:
        built = self.store.manifest.encoder
        name = built["name"]
        if weights is None:
            recorded = built.get("weights_path")
            candidates = [Path(recorded)] if isinstance(recorded, str) and recorded else []
            default = default_weights_path(get_spec(name))
            if default is not None:
                candidates.append(default)
            weights = next((c for c in candidates if str(c) and c.is_file()), None)
            if weights is None:
                raise WeightsError(
                    f"{self.path}: the weights it was built with ({built.get('weights_path')}) are gone; pass --weights"
                )
        enc = create_encoder(name, weights, self._device)
        diffs = _describe_mismatch(built, {k: enc.describe()[k] for k in ("weights_sha256", "dim", "preprocess")})
        if diffs:
            raise EncoderMismatchError(f"{self.path}: encoder does not match the index ({'; '.join(diffs)})")
        return enc

    # -- adding ---------------------------------------------------------------------------
    def add(
        self,
        items: Iterable[Union[CropItem, PathLike]],
        *,
        strict: bool = False,
        batch_size: int = 32,
        show_progress: Optional[bool] = None,
        commit_every: int = 4096,
        sql_hook: Optional[SqlHook] = None,
    ) -> AddReport:
        """Encode and index crops; files already indexed (same sha256) are skipped.

        Each block of ``commit_every`` crops is committed on its own, so an
        interrupted run keeps what it committed and a re-run resumes.
        Unreadable images are skipped and reported, or raise with ``strict``.
        ``sql_hook`` runs inside each block's transaction (see ``IndexStore.add``).
        """
        from .errors import one_line  # local: this module's import block is shared with the query-path work

        t0 = time.perf_counter()
        for name, value in (("commit_every", commit_every), ("batch_size", batch_size)):
            if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
                raise InvalidInputError(f"{name} {value!r}: expected a positive integer")
        if items is None or isinstance(items, (str, bytes, Path, CropItem)) or not isinstance(items, Iterable):
            raise InvalidInputError(
                f"items {str(items)[:80]!r}: expected a list of crops or image paths (use scan_source for a folder)"
            )
        crops = []
        for i, it in enumerate(items):
            if isinstance(it, CropItem):
                _check_item(it, f"items[{i}]")
                crops.append(it)
            elif isinstance(it, (str, Path)) and str(it) != "":
                crops.append(CropItem(Path(it)))
            else:
                raise InvalidInputError(f"crop {it!r}: expected a CropItem or an image file path")
        report = AddReport()
        hashed: list[tuple[CropItem, str]] = []
        quiet = not (show_progress or (show_progress is None and len(crops) > 2000 and sys.stderr.isatty()))
        bar = tqdm(crops, desc="hash", unit="file", disable=quiet)
        for it in bar:
            try:
                hashed.append((it, it.sha256()))
            except OSError as exc:
                reason = one_line(f"{it.path}: cannot read ({exc.strerror or exc})")
                if strict:
                    raise ImageReadError(reason) from None
                log.warning("skipping %s", reason)
                report.failed.append((str(it.path), reason))
        with self.store.writing():  # one writer at a time; dedup against what is committed now
            known = self.store.known_hashes([h for _, h in hashed])
            todo: list[tuple[CropItem, str]] = []
            for it, h in hashed:
                if h in known:
                    report.duplicates += 1
                else:
                    known.add(h)
                    todo.append((it, h))
            folders: dict[str, str] = {}
            for start in range(0, len(todo), max(1, commit_every)):
                block = todo[start : start + commit_every]
                inputs = [it.image if it.image is not None else it.path for it, _ in block]
                res = self.encoder.encode_files(
                    inputs, batch_size=batch_size, show_progress=show_progress, strict=strict
                )
                for pos, reason in res.failures:
                    report.failed.append((str(block[pos][0].path), reason))
                rows = [_row_from_meta(block[pos][0], block[pos][1], folders) for pos in res.ok]
                for ann in self.annotators:
                    notes = ann.annotate([inputs[pos] for pos in res.ok])
                    for row, note in zip(rows, notes):
                        row["extra"] = {**(row["extra"] or {}), ann.name: note}
                ids = self.store.add(l2_normalize(res.features), rows, sql_hook)
                report.ids.extend(ids)
                report.added += len(ids)
        report.seconds = time.perf_counter() - t0
        log.info("%s: %s", self.path, report.summary())
        return report

    def add_features(
        self, features: np.ndarray, items: Sequence[CropItem], hashes: Optional[Sequence[str]] = None
    ) -> list[int]:
        """Index precomputed features (from this index's encoder) for the given crops (committed in blocks of 4,096).

        A crop twice in the call (same ``hashes`` entry, or same file) is refused before anything is written; a
        crop already in the index is refused by its block's commit (InvalidInputError naming it): the blocks
        before it stay committed, as after any interrupted add."""
        try:
            array: Optional[np.ndarray] = np.asarray(features)  # its own dtype: l2_normalize works in it
        except (TypeError, ValueError):
            array = None
        if array is None or array.dtype.kind not in "fiu":
            raise InvalidInputError(f"features of type {type(features).__name__}: expected an (N, dim) array of "
                                    "numbers")
        features = array
        if features.ndim != 2:
            raise InvalidInputError(f"features of shape {features.shape}: expected (N, {self.store.manifest.dim})")
        if items is None or isinstance(items, (str, bytes, CropItem)):
            raise InvalidInputError(f"items of type {type(items).__name__}: expected a list of CropItem")
        items = list(items)
        if len(features) != len(items):
            raise InvalidInputError(f"{len(features)} feature rows for {len(items)} crops")
        for i, it in enumerate(items):
            if not isinstance(it, CropItem):
                raise InvalidInputError(f"items[{i}] of type {type(it).__name__}: expected a CropItem")
            _check_item(it, f"items[{i}]")
        hashes = list(hashes) if hashes is not None else [_crop_hash(it) for it in items]
        if len(hashes) != len(items):
            raise InvalidInputError(f"{len(hashes)} hashes for {len(items)} crops")
        seen: dict[str, int] = {}
        for i, h in enumerate(hashes):
            if not isinstance(h, str) or not h.strip():
                raise InvalidInputError(f"hashes[{i}] {h!r}: expected a non-empty string identifying the crop")
            if h in seen:
                raise InvalidInputError(f"{items[i].path}: the same crop as items[{seen[h]}] (hash {h[:16]})")
            seen[h] = i
        normed = l2_normalize(features)
        zero = zero_rows(normed)
        if len(zero):
            raise InvalidInputError(f"{items[zero[0]].path}: features row {zero[0]} is all zeros; expected an "
                                    "embedding of non-zero length")
        folders: dict[str, str] = {}
        rows = [_row_from_meta(it, h, folders) for it, h in zip(items, hashes)]
        return self.store.add(normed, rows)

    def add_context_features(self, features: np.ndarray, cameras: Sequence[Optional[str]]) -> int:
        """Show the index crops that are not gallery rows (never results), so its per-camera
        statistics cover their cameras: for example the query camera of an evaluation, whose
        crops are not indexed. One commit; returns the generation."""
        return self.store.observe(l2_normalize(features), list(cameras))

    # -- querying -------------------------------------------------------------------------
    def query(
        self,
        images: Sequence[ImageLike],
        k: int = 10,
        *,
        query_cameras: Optional[Sequence[Optional[str]]] = None,
        batch_size: int = 32,
        fusion: Union[None, str, FusionConfig] = None,
        **filters: Any,
    ) -> list[QueryResult]:
        """Rank the gallery for each query image (path or BGR array).

        Filters (applied inside the FAISS search): ``cameras``, ``exclude_cameras``,
        ``sources``, ``time_from``, ``time_to`` (epoch seconds or ISO-8601), and
        ``exclude_same_camera`` (the query's camera comes from ``query_cameras`` or,
        for a query file that is itself indexed, from its row); ``attributes``
        (terms such as ``["male", "backpack"]``, see ``reid_engine.attributes.search``)
        with ``attribute_threshold``. ``fusion`` (appearance, attributes, clothes-change)
        re-scores the candidates with attributes the index's attribute model computes
        for the query images.
        """
        images = _query_images(images)
        if len(images) == 0:  # no query: no answers (as query_tracks)
            return []
        labels = [str(im) if not isinstance(im, np.ndarray) else f"<array {i}>" for i, im in enumerate(images)]
        if query_cameras is None:  # an indexed query crop brings its camera (filters, camera normalization)
            query_cameras = self._cameras_of_indexed(images)
        qattrs = None
        if attr_fusion.needs_attributes(fusion):
            self._require_attributes(f"fusion {fusion if isinstance(fusion, str) else 'config'!r}")
            qattrs = self.attribute_model().predict(images, batch_size=batch_size)
        feats = self.encoder.encode(images, batch_size=batch_size)
        return self.query_features(
            feats, k, query_labels=labels, query_cameras=query_cameras, fusion=fusion, query_attributes=qattrs,
            **filters,
        )

    def _cameras_of_indexed(self, images: Sequence[ImageLike]) -> list[Optional[str]]:
        """The camera of each query file that is itself indexed (None otherwise; bad inputs are the encoder's
        to report)."""
        def sha(im: Any) -> str:
            try:
                return file_sha256(im) if isinstance(im, (str, Path)) and Path(im).is_file() else ""
            except OSError:
                return ""

        hashes = [sha(im) for im in images]
        rows = self.store.rows_by_hash([h for h in hashes if h])
        return [rows[h]["camera"] if h in rows else None for h in hashes]

    @on_one_blas_thread
    def query_features(
        self,
        features: np.ndarray,
        k: int = 10,
        *,
        query_labels: Optional[Sequence[str]] = None,
        query_cameras: Optional[Sequence[Optional[str]]] = None,
        cameras: Optional[Sequence[str]] = None,
        exclude_cameras: Optional[Sequence[str]] = None,
        sources: Optional[Sequence[str]] = None,
        tracks: Optional[Sequence[str]] = None,
        time_from: Union[None, str, float] = None,
        time_to: Union[None, str, float] = None,
        exclude_same_camera: bool = False,
        rerank: Union[None, str, Pipeline] = None,
        fusion: Union[None, str, FusionConfig] = None,
        query_attributes: Union[None, np.ndarray, Sequence[Optional[dict[str, Any]]]] = None,
        attributes: Union[None, str, Sequence[str], AttributeQuery] = None,
        attribute_threshold: float = DEFAULT_THRESHOLD,
        same_person: bool = False,
        search_params: Union[None, dict[str, Any], SearchParams] = None,
    ) -> list[QueryResult]:
        """Rank the gallery for precomputed query features (see ``query`` for the filters).

        Two stages: the vector backend returns the top candidates by cosine (filters
        applied inside the search), then the re-ranking preset re-scores them.
        ``rerank``: a preset name (``reid_engine.rerank.list_pipelines()``), a
        ``Pipeline``, or None for the default; "none" is the plain cosine ranking.
        Each query's answer is the same whether it is sent alone or with others;
        ``same_person=True`` instead treats all the queries as one person and
        returns one pooled list.
        ``fusion``: None or "appearance" (embedding only), "attributes", "clothes-change"
        or a ``FusionConfig``; it re-scores the top max(k, FUSION_POOL) re-ranked
        candidates and needs ``query_attributes`` ((N, WIDTH) vectors or the stored
        dicts). Hit distances are then the fused distances.
        ``attributes``: only crops whose stored attributes match every term.
        ``search_params``: per-query parameters over the index's stored defaults (``SearchParams``): the
        first stage's ``nprobe`` (IVF), ``ef_search`` (graph beam), ``exact``, ``refine``, and ``pool``, the
        candidates the re-ranking re-scores (default: the preset's; the rest of the top ``k`` follows in cosine
        order).
        """
        if isinstance(features, np.ndarray) and features.ndim == 2 and len(features) == 0:
            return []  # no query: no answers
        self.store.refresh()
        pipe = resolve_pipeline(rerank)
        fcfg = attr_fusion.resolve_fusion(fusion)
        if fcfg is not None:
            from .rerank.steps import AttributeFusion

            pipe = pipe.with_steps(AttributeFusion(fcfg))
        if same_person and not any(step.name == "same_person" for step in pipe.steps):
            from .rerank.steps import SamePersonPool

            pipe = pipe.with_steps(SamePersonPool())
        params = self.store.search_params(search_params)
        rule = self._attribute_rule(attributes, attribute_threshold)
        q, labels, qcams = check_queries(features, self.store.manifest.dim, k, query_labels, query_cameras)
        k = min(int(k), max(1, self.store.count))
        qattrs = self._query_attributes(fcfg, query_attributes, q) if fcfg is not None else None
        pooled = same_person and len(q) > 1
        per_query_cams = list(qcams)
        if pooled:  # one person: one answer, searched from every image and pooled by the re-ranking
            labels = [" + ".join(labels)]
            known = {c for c in qcams if c is not None}
            if exclude_same_camera and len(known) > 1:
                raise InvalidInputError(
                    f"the same-person images come from cameras {', '.join(sorted(map(str, known)))}: "
                    "exclude-same-camera needs one query camera; leave those cameras out with exclude_cameras"
                )
            qcams = [known.pop() if len(known) == 1 else None]
        n = len(labels)
        groups: dict[Optional[str], list[int]] = {}
        if exclude_same_camera:
            for qi, c in enumerate(qcams):
                if c is None:
                    raise InvalidInputError(
                        f"query {labels[qi]}: its camera is unknown, so it cannot be excluded; pass the query camera"
                    )
                groups.setdefault(str(c), []).append(qi)
        else:
            groups[None] = list(range(n))
        base: dict[str, Any] = dict(
            cameras=_names("cameras", cameras),
            exclude_cameras=_names("exclude_cameras", exclude_cameras) or (),
            sources=_names("sources", sources),
            tracks=_names("tracks", tracks),
            time_from=parse_time(time_from),
            time_to=parse_time(time_to),
        )
        allowed = self._attribute_ids(rule) if rule is not None else None
        pool = int(params.pool) if params.pool is not None else pipe.pool_size(min(k, RERANK_K))
        sims = np.full((n, k), -np.inf, np.float32)
        ids = np.full((n, k), -1, np.int64)
        for cam, members in groups.items():
            extra = base["exclude_cameras"] + ((cam,) if cam is not None else ())
            where = SearchFilter(ids=allowed, **{**base, "exclude_cameras": extra})
            if allowed is not None and len(allowed) == 0 or self.store.count == 0:
                continue
            rows_q = list(range(len(q))) if pooled else members
            qm = q[rows_q]
            # one query at a time: a batched product may round near-ties differently, and an answer
            # must not depend on which other queries share the call
            # a step that completes the first stage itself (the default's Expand) lets it walk a narrower beam
            beam = pipe.first_stage_beam(where, max(k, pool))
            p = params if beam == 1.0 or params.beam_scale is not None else replace(params, beam_scale=beam)
            found = [self.store.search(qm[r : r + 1], max(k, pool), where, p) for r in range(len(qm))]
            s = np.concatenate([f[0] for f in found])
            i = np.concatenate([f[1] for f in found])
            ctx = RerankContext(
                gallery=self.store, k=k, query_cameras=[per_query_cams[r] for r in rows_q],
                query_tracks=[None] * len(rows_q), same_person=pooled, where=where,
                query_attributes=None if qattrs is None else qattrs[rows_q],
            )
            head = pipe.run(qm, Candidates.sorted(i[:, :pool], s[:, :pool]), ctx)
            # the re-ranked head, then the rest of the first stage in cosine order (no id twice; a candidate
            # that a step pushed out of the pool comes back there)
            ranked = head.then(i, s, k)
            for out_row, r in zip(members, range(len(ranked.ids))):
                sims[out_row], ids[out_row] = ranked.scores[r], ranked.ids[r]
        rows = self.store.rows(ids[ids >= 0].tolist())
        results = []
        for qi in range(n):
            hits: list[Hit] = []
            for sc, i in zip(sims[qi], ids[qi]):
                if i < 0 or int(i) not in rows:
                    continue
                hits.append(Hit.from_row(len(hits) + 1, float(1.0 - sc), rows[int(i)]))
            results.append(QueryResult(labels[qi], hits, None if qcams[qi] is None else str(qcams[qi])))
        return results

    # -- attributes ------------------------------------------------------------------------
    def _require_attributes(self, what: str) -> None:
        if ATTRIBUTES not in self.store.manifest.annotators:
            raise AttributesNotIndexedError(
                f"{self.path}: {what} needs pedestrian attributes, but this index was built without them; "
                f"rebuild it with `reid-engine index ... --attributes`"
            )

    def attribute_model(self) -> "AttributeModel":
        """The pedestrian attribute model of this index's ``attributes`` annotator (raises when it has none)."""
        self._require_attributes("attribute fusion and search")
        return next(a for a in self.annotators if a.name == ATTRIBUTES).model  # type: ignore[attr-defined]

    def _gallery_attributes(self) -> GalleryAttributes:
        """The attribute matrix of the committed generation, read once per generation."""
        if self._gallery_attrs is None or self._gallery_attrs.generation != self.store.generation:
            self._gallery_attrs = update_gallery_attributes(self.store.sql, self._gallery_attrs, self.store.generation,
                                                            self.store.contains)
        return self._gallery_attrs

    def _attribute_rule(self, attributes: Any, threshold: float) -> Optional[AttributeQuery]:
        if attributes is not None and not isinstance(attributes, (str, AttributeQuery, Iterable)):
            raise InvalidInputError(f"attributes {attributes!r}: expected a list of terms such as ['male']")
        if attributes is None or (not isinstance(attributes, (str, AttributeQuery)) and not list(attributes)):
            return None
        rule = attributes if isinstance(attributes, AttributeQuery) else AttributeQuery.parse(attributes, threshold)
        self._require_attributes("attribute search")
        return rule

    def _attribute_ids(self, rule: AttributeQuery) -> np.ndarray:
        """Crop ids whose attributes match ``rule``."""
        table = self._gallery_attributes()
        return table.ids[rule.matches(table.matrix)]

    def _query_attributes(self, fcfg: FusionConfig, given: Any, q: np.ndarray) -> np.ndarray:
        """Validated (N, WIDTH) query attributes."""
        self._require_attributes("attribute fusion")
        if given is None:
            raise InvalidInputError(
                "attribute fusion needs the queries' attributes: pass query_attributes, or use Engine.query"
            )
        qa = np.asarray(given, np.float32) if isinstance(given, np.ndarray) else notes_to_matrix(list(given))
        if qa.shape != (len(q), ATTR_WIDTH):
            raise InvalidInputError(f"query attributes of shape {qa.shape}: expected ({len(q)}, {ATTR_WIDTH})")
        return qa  # no smoothing over the other queries of the call: answers stay batch independent

    def find(
        self,
        attributes: Union[str, Sequence[str], AttributeQuery],
        k: int = 10,
        *,
        threshold: float = DEFAULT_THRESHOLD,
        cameras: Optional[Sequence[str]] = None,
        exclude_cameras: Optional[Sequence[str]] = None,
        sources: Optional[Sequence[str]] = None,
        time_from: Union[None, str, float] = None,
        time_to: Union[None, str, float] = None,
    ) -> QueryResult:
        """Crops whose stored attributes match every term (e.g. ``["male", "backpack"]``), no image needed.

        Most probable first (joint probability of the terms; a hit's distance is
        1 - that probability), within the camera, source and time filters.
        """
        rule = self._attribute_rule(attributes, threshold)
        if rule is None:
            raise InvalidInputError("attribute search needs at least one attribute term")
        k = check_k(k)
        table = self._gallery_attributes()
        ids, matrix = table.ids, table.matrix
        where = db.filter_clause(
            cameras=cameras, exclude_cameras=list(exclude_cameras or []), sources=sources,
            time_from=parse_time(time_from), time_to=parse_time(time_to),
        )
        if where is not None:
            keep = np.isin(ids, self.store.ids_where(where))
            ids, matrix = ids[keep], matrix[keep]
        top, score = rank_by_attributes(ids, matrix, rule, k)
        rows = self.store.rows(top.tolist())
        hits = [Hit.from_row(r + 1, float(1.0 - s), rows[int(i)]) for r, (i, s) in enumerate(zip(top, score))]
        return QueryResult(f"attributes: {rule.describe()}", hits)

    # -- removing and reporting ------------------------------------------------------------
    def remove(
        self,
        ids: Optional[Sequence[int]] = None,
        cameras: Optional[Sequence[str]] = None,
        sources: Optional[Sequence[str]] = None,
    ) -> int:
        """Remove crops matching all given criteria; returns how many were removed."""
        where = db.filter_clause(ids=ids, cameras=cameras, sources=sources)
        return self.store.remove(where)

    def stats(self) -> dict[str, Any]:
        """Counts, cameras, encoder and storage facts of the index."""
        return self.store.stats()

    # -- footage ---------------------------------------------------------------------------
    def ingest_video(self, source: PathLike, camera: Optional[str] = None, **options: Any) -> "IngestReport":
        """Detect, track and index the people of a video file or stream URL.

        See ``reid_engine.ingest.pipeline.ingest_video`` for the options
        (start_time, every, max_frames, detector, tracker, ...).
        """
        from .ingest.pipeline import ingest_video

        with self.store.writing():  # progress rows and crops of one source have one writer
            return ingest_video(self, source, camera, **options)

    def query_tracks(
        self,
        images: Sequence[ImageLike],
        k: int = 10,
        *,
        query_cameras: Optional[Sequence[Optional[str]]] = None,
        batch_size: int = 32,
        **filters: Any,
    ) -> list["TrackResult"]:
        """Rank the tracks of ingested footage for each query image: one hit per appearance.

        Takes the filters of ``query``; a time filter keeps tracks that overlap the interval.
        """
        images = _query_images(images)
        _crop_query_options(filters)
        labels = [str(im) if not isinstance(im, np.ndarray) else f"<array {i}>" for i, im in enumerate(images)]
        if query_cameras is None and filters.get("exclude_same_camera"):  # only the filter reads it here
            query_cameras = self._cameras_of_indexed(images)
        feats = self.encoder.encode(images, batch_size=batch_size)
        return self.query_tracks_features(feats, k, query_labels=labels, query_cameras=query_cameras, **filters)

    def query_tracks_features(self, features: np.ndarray, k: int = 10, **kwargs: Any) -> list["TrackResult"]:
        """Rank the tracks for precomputed query features (see ``query_tracks``)."""
        from .tracks import search_tracks

        _crop_query_options(kwargs)
        return search_tracks(self.store, features, k, **kwargs)
