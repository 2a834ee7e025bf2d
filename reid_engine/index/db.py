"""SQL metadata: one row per crop, plus a small key/value table, via SQLAlchemy Core."""
from __future__ import annotations

import math
import os
import time
from pathlib import Path
from typing import Any, Iterable, Optional, Sequence

import numpy as np
import sqlalchemy as sa
from sqlalchemy.engine import Connection, Engine

from ..errors import DatabaseUnavailableError, DatabaseURLError, IndexCorruptError, InvalidInputError

#: crop ids are signed 64-bit integers (the vector backends' id type)
MAX_ID = 2**63 - 1
#: the longest text each named column holds (characters)
TEXT_LIMITS = {"pid": 64, "camera": 128, "track": 128}

metadata = sa.MetaData()

crops = sa.Table(
    "crops",
    metadata,
    sa.Column("id", sa.BigInteger().with_variant(sa.Integer, "sqlite"), primary_key=True, autoincrement=False),
    sa.Column("path", sa.Text, nullable=False),
    sa.Column("sha256", sa.String(64), nullable=False, unique=True),
    sa.Column("pid", sa.String(TEXT_LIMITS["pid"]), nullable=True, index=True),
    sa.Column("camera", sa.String(TEXT_LIMITS["camera"]), nullable=True, index=True),
    sa.Column("timestamp", sa.Float, nullable=True, index=True),  # seconds since the Unix epoch, UTC
    sa.Column("frame", sa.Integer, nullable=True),
    sa.Column("box_x", sa.Float, nullable=True),
    sa.Column("box_y", sa.Float, nullable=True),
    sa.Column("box_w", sa.Float, nullable=True),
    sa.Column("box_h", sa.Float, nullable=True),
    sa.Column("track", sa.String(TEXT_LIMITS["track"]), nullable=True, index=True),
    sa.Column("source", sa.Text, nullable=True, index=True),
    sa.Column("extra", sa.JSON, nullable=True),
    sa.Column("added_at", sa.Float, nullable=False),
)

meta_kv = sa.Table(
    "reid_meta",
    metadata,
    sa.Column("key", sa.String(64), primary_key=True),
    sa.Column("value", sa.Text, nullable=False),
)

#: one row per track of ingested footage: where and when one person was seen, and the
#: normalised mean embedding of its kept crops (kept beside the crops, same transaction)
tracks = sa.Table(
    "tracks",
    metadata,
    sa.Column("key", sa.String(255), primary_key=True),  # the crops' ``track`` value
    sa.Column("source", sa.Text, nullable=True, index=True),
    sa.Column("camera", sa.String(TEXT_LIMITS["camera"]), nullable=True, index=True),
    sa.Column("start_frame", sa.Integer, nullable=True),
    sa.Column("end_frame", sa.Integer, nullable=True),
    sa.Column("start_time", sa.Float, nullable=True, index=True),  # epoch seconds, UTC
    sa.Column("end_time", sa.Float, nullable=True, index=True),
    sa.Column("n_frames", sa.Integer, nullable=False, default=0),  # frames the person was detected in
    sa.Column("best_crop", sa.BigInteger().with_variant(sa.Integer, "sqlite"), nullable=True),
    sa.Column("crop_ids", sa.JSON, nullable=True),
    sa.Column("embedding", sa.LargeBinary, nullable=False),  # float32, L2-normalised
    sa.Column("extra", sa.JSON, nullable=True),
    sa.Column("added_at", sa.Float, nullable=False),
)

#: ingest progress per footage source, committed with the crops it produced
ingest_sources = sa.Table(
    "ingest_sources",
    metadata,
    sa.Column("key", sa.String(512), primary_key=True),
    sa.Column("source", sa.Text, nullable=False),
    sa.Column("camera", sa.String(128), nullable=True),
    sa.Column("track_prefix", sa.String(255), nullable=False),
    sa.Column("fps", sa.Float, nullable=True),
    sa.Column("frame_count", sa.Integer, nullable=True),
    sa.Column("start_time", sa.Float, nullable=True),
    sa.Column("next_frame", sa.Integer, nullable=False, default=0),  # first frame not yet processed
    sa.Column("segment_start", sa.Integer, nullable=False, default=0),  # where the live tracker started
    sa.Column("id_base", sa.Integer, nullable=False, default=0),  # track numbers used by earlier segments
    sa.Column("decode_from", sa.Integer, nullable=False, default=0),  # first frame of the tracks still open
    sa.Column("frames_done", sa.Integer, nullable=False, default=0),
    sa.Column("done", sa.Boolean, nullable=False, default=False),
    sa.Column("settings", sa.JSON, nullable=True),
    sa.Column("updated_at", sa.Float, nullable=False),
)

#: detections of the frames of an unfinished ingest, replayed through the tracker on resume
ingest_detections = sa.Table(
    "ingest_detections",
    metadata,
    sa.Column("source_key", sa.String(512), primary_key=True),
    sa.Column("chunk_start", sa.Integer, primary_key=True),
    sa.Column("data", sa.JSON, nullable=False),  # [[frame, [[x1, y1, x2, y2, score], ...]], ...]
)

#: metadata fields a caller may set on a crop
CROP_FIELDS = ("pid", "camera", "timestamp", "frame", "box_x", "box_y", "box_w", "box_h", "track", "source", "extra")


def check_lasting(url: str) -> None:
    """Raise ``DatabaseURLError`` for a database that ends with the process (SQLite in memory):
    an index's rows must outlive the call that wrote them."""
    try:
        u = sa.engine.make_url(url)
    except (sa.exc.ArgumentError, ValueError, TypeError):
        return  # connect() words a URL it cannot read
    if u.get_backend_name() == "sqlite" and (u.database in (None, "", ":memory:") or u.query.get("mode") == "memory"):
        raise DatabaseURLError(
            f"{_shown_url(url)}: an in-memory database keeps nothing once the process ends; "
            "expected a file (sqlite:///FILE) or a server (postgresql+psycopg://...)"
        )


def connect(url: str, wal: bool = False, create: bool = True) -> Engine:
    """An SQLAlchemy engine for ``url`` with the schema created (``create``) or checked.

    ``wal`` (when creating a SQLite index) switches the file to write-ahead
    logging, so readers never wait for a writer; the mode is kept in the file.
    With ``create=False`` (opening an index) nothing is written: a database
    without the index's tables is refused.
    """
    shown = _shown_url(url)
    kwargs: dict[str, Any] = {"future": True}
    if url.startswith("sqlite"):
        kwargs["connect_args"] = {"timeout": 30}
    try:
        eng = sa.create_engine(url, **kwargs)
    except sa.exc.NoSuchModuleError:
        raise DatabaseURLError(
            f"{shown}: unknown database dialect or driver; expected e.g. sqlite:///FILE or postgresql+psycopg://..."
        ) from None
    except ImportError as exc:
        raise DatabaseURLError(
            f"{shown}: the database driver {exc.name or exc} is not installed (pip install it, or use another URL)"
        ) from None
    except (sa.exc.ArgumentError, ValueError, TypeError) as exc:
        raise DatabaseURLError(f"{shown}: not a valid database URL ({short_error(exc)})") from None
    try:
        if wal and eng.dialect.name == "sqlite":
            with eng.connect() as conn:
                conn.exec_driver_sql("PRAGMA journal_mode=WAL")
        if create:
            metadata.create_all(eng)
        else:
            missing = set(metadata.tables) - set(sa.inspect(eng).get_table_names())
            if missing:
                eng.dispose()
                raise IndexCorruptError(
                    f"{shown}: the database lacks the index's tables ({', '.join(sorted(missing))}); "
                    "wrong --db-url, or not a reid-engine index"
                )
    except sa.exc.DatabaseError as exc:
        eng.dispose()
        reason = short_error(exc)
        if eng.dialect.name == "sqlite" and ("not a database" in reason or "malformed" in reason):
            raise IndexCorruptError(f"{shown}: not a readable SQLite database ({reason})") from None
        if eng.dialect.name == "sqlite" and ("readonly" in reason or "unable to open" in reason):
            why = _sqlite_cannot_write(eng.url.database, file_read_only="readonly" in reason)
            if why:
                raise DatabaseUnavailableError(f"{shown}: {why}") from None
        raise DatabaseUnavailableError(f"{shown}: cannot use the database ({reason})") from None
    except sa.exc.SQLAlchemyError as exc:
        eng.dispose()
        raise DatabaseUnavailableError(f"{shown}: cannot use the database ({short_error(exc)})") from None
    return eng


def _sqlite_cannot_write(database: Optional[str], file_read_only: bool) -> Optional[str]:
    """Why SQLite could not write, naming the folder or the file and what to do; None when neither explains it."""
    if database and database.startswith("file:"):  # a URI filename: file:PATH?mode=ro...
        database = database[len("file:") :].split("?", 1)[0]
    if not database:
        return None
    path = Path(database)
    if not path.parent.is_dir():
        return f"cannot use the database: no folder {path.parent} to hold {path.name}"
    if not os.access(path.parent, os.W_OK):
        return (
            f"the folder {path.parent} is not writable, and SQLite writes its -wal and -shm files beside "
            f"{path.name} even to read it; make the folder writable or use a writable copy of the index"
        )
    if file_read_only:
        return f"{path.name} is read-only; expected a database file this process may write"
    return None


def _shown_url(url: str) -> str:
    """A database URL fit for a message: the password hidden."""
    try:
        return sa.engine.make_url(url).render_as_string(hide_password=True)
    except Exception:  # not parseable: shown as given, it holds no recognisable password
        return str(url)


def short_error(exc: BaseException) -> str:
    """The first line of a database error's own message, without SQLAlchemy's decoration."""
    orig = getattr(exc, "orig", None)
    text = str(orig if orig is not None else exc).strip().splitlines()
    return text[0] if text else type(exc).__name__


def chunks(items: Sequence[Any], size: int) -> Iterable[list[Any]]:
    """Consecutive slices of at most ``size`` items (for IN clauses)."""
    for i in range(0, len(items), size):
        yield list(items[i : i + size])


def committed(conn: Connection, with_count: bool = False) -> tuple[Optional[str], Optional[str], int]:
    """(generation, state, row count or -1) in one statement, hence from one snapshot of the database."""
    gen = sa.select(meta_kv.c.value).where(meta_kv.c.key == "generation").scalar_subquery()
    state = sa.select(meta_kv.c.value).where(meta_kv.c.key == "state").scalar_subquery()
    cols = [gen, state]
    if with_count:
        cols.append(sa.select(sa.func.count()).select_from(crops).scalar_subquery())
    row = conn.execute(sa.select(*cols)).one()
    return row[0], row[1], int(row[2]) if with_count else -1


def get_meta(conn: Connection, key: str) -> Optional[str]:
    return conn.execute(sa.select(meta_kv.c.value).where(meta_kv.c.key == key)).scalar_one_or_none()


def set_meta(conn: Connection, key: str, value: str) -> None:
    updated = conn.execute(meta_kv.update().where(meta_kv.c.key == key).values(value=value)).rowcount
    if not updated:
        conn.execute(meta_kv.insert().values(key=key, value=value))


def all_ids(conn: Connection) -> list[int]:
    return list(conn.execute(sa.select(crops.c.id).order_by(crops.c.id)).scalars())


def next_id(conn: Connection) -> int:
    top = conn.execute(sa.select(sa.func.max(crops.c.id))).scalar_one_or_none()
    return 0 if top is None else int(top) + 1


def known_sha256(conn: Connection, hashes: Sequence[str], chunk: int = 500) -> set[str]:
    """Which of the given file hashes are already indexed."""
    found: set[str] = set()
    for i in range(0, len(hashes), chunk):
        part = list(hashes[i : i + chunk])
        found.update(conn.execute(sa.select(crops.c.sha256).where(crops.c.sha256.in_(part))).scalars())
    return found


def insert_rows(conn: Connection, rows: Iterable[dict[str, Any]]) -> int:
    """Insert crop rows; every row gets every column (a key missing from the first row of an
    executemany batch would otherwise be stored as NULL for the whole batch)."""
    now = time.time()
    names = [c.name for c in crops.columns]
    full = []
    for r in rows:
        unknown = set(r) - set(names)
        if unknown:
            raise InvalidInputError(f"crop row {r.get('path')!r}: unknown column(s) {', '.join(sorted(unknown))}")
        row = {n: r.get(n) for n in names}
        if row["added_at"] is None:
            row["added_at"] = now
        full.append(row)
    if full:
        conn.execute(crops.insert(), full)
    return len(full)


def filter_clause(
    ids: Optional[Sequence[int]] = None,
    cameras: Optional[Sequence[str]] = None,
    exclude_cameras: Optional[Sequence[str]] = None,
    sources: Optional[Sequence[str]] = None,
    time_from: Optional[float] = None,
    time_to: Optional[float] = None,
    pids: Optional[Sequence[str]] = None,
    tracks: Optional[Sequence[str]] = None,
) -> Optional[sa.ColumnElement[bool]]:
    """A WHERE clause for the given filters; None when no filter is set.

    Raises InvalidInputError for ids that are not integers of 64 bits, a bare string
    where a list is expected, and times that are not finite numbers.
    """
    parts: list[sa.ColumnElement[bool]] = []
    if ids is not None:
        parts.append(crops.c.id.in_(check_ids(ids)))
    if cameras is not None:
        parts.append(crops.c.camera.in_(_texts("cameras", cameras)))
    if exclude_cameras:
        excluded = _texts("exclude_cameras", exclude_cameras)
        parts.append(sa.or_(crops.c.camera.is_(None), crops.c.camera.not_in(excluded)))
    if sources is not None:
        parts.append(crops.c.source.in_(_texts("sources", sources)))
    if time_from is not None:
        parts.append(crops.c.timestamp >= _finite("time_from", time_from))
    if time_to is not None:
        parts.append(crops.c.timestamp <= _finite("time_to", time_to))
    if pids is not None:
        parts.append(crops.c.pid.in_(_texts("pids", pids)))
    if tracks is not None:
        parts.append(crops.c.track.in_(_texts("tracks", tracks)))
    if not parts:
        return None
    return sa.and_(*parts)


def check_ids(ids: Any) -> list[int]:
    """Crop ids as a list of Python ints; refuses non-integers and values beyond 64 bits."""
    if isinstance(ids, (str, bytes)) or not hasattr(ids, "__iter__"):
        raise InvalidInputError(f"ids {ids!r}: expected a list of integer crop ids")
    out = []
    for i in ids:
        if isinstance(i, (bool, np.bool_)) or not isinstance(i, (int, np.integer)):
            raise InvalidInputError(f"crop id {i!r}: expected an integer")
        if not -MAX_ID - 1 <= int(i) <= MAX_ID:
            raise InvalidInputError(f"crop id {i}: out of range (crop ids are 64-bit integers)")
        out.append(int(i))
    return out


def _texts(what: str, values: Any) -> list[str]:
    if isinstance(values, (str, bytes)) or not hasattr(values, "__iter__"):
        raise InvalidInputError(f"{what} {values!r}: expected a list of values, e.g. [{values!r}]")
    out = []
    for v in values:
        if v is None:
            raise InvalidInputError(f"{what}: None is not a value to filter on")
        out.append(str(v))
    return out


def _finite(what: str, value: Any) -> float:
    try:
        x = float(value)
    except (TypeError, ValueError):
        raise InvalidInputError(f"{what} {value!r}: expected epoch seconds or an ISO-8601 time") from None
    if not math.isfinite(x):
        raise InvalidInputError(f"{what} {value!r}: expected a finite time")
    return x


def select_ids(conn: Connection, where: Optional[sa.ColumnElement[bool]]) -> list[int]:
    stmt = sa.select(crops.c.id).order_by(crops.c.id)
    if where is not None:
        stmt = stmt.where(where)
    return list(conn.execute(stmt).scalars())


def fetch_rows(conn: Connection, ids: Iterable[int], chunk: int = 500) -> dict[int, dict[str, Any]]:
    """Rows by id, as plain dicts."""
    out: dict[int, dict[str, Any]] = {}
    uniq = sorted({int(i) for i in ids})
    for i in range(0, len(uniq), chunk):
        part = uniq[i : i + chunk]
        for row in conn.execute(sa.select(crops).where(crops.c.id.in_(part))).mappings():
            out[int(row["id"])] = dict(row)
    return out


def delete_ids(conn: Connection, ids: Sequence[int], chunk: int = 500) -> int:
    n = 0
    for i in range(0, len(ids), chunk):
        n += conn.execute(crops.delete().where(crops.c.id.in_([int(x) for x in ids[i : i + chunk]]))).rowcount
    return n


def count_rows(conn: Connection) -> int:
    return int(conn.execute(sa.select(sa.func.count()).select_from(crops)).scalar_one())


def distinct_values(conn: Connection, column: str) -> list[str]:
    col = crops.c[column]
    return [v for v in conn.execute(sa.select(col).distinct().where(col.is_not(None)).order_by(col)).scalars()]
