"""SQL metadata: one row per crop, plus a small key/value table, via SQLAlchemy Core."""
from __future__ import annotations

import time
from typing import Any, Iterable, Optional, Sequence

import sqlalchemy as sa
from sqlalchemy.engine import Connection, Engine

metadata = sa.MetaData()

crops = sa.Table(
    "crops",
    metadata,
    sa.Column("id", sa.BigInteger().with_variant(sa.Integer, "sqlite"), primary_key=True, autoincrement=False),
    sa.Column("path", sa.Text, nullable=False),
    sa.Column("sha256", sa.String(64), nullable=False, unique=True),
    sa.Column("pid", sa.String(64), nullable=True, index=True),
    sa.Column("camera", sa.String(128), nullable=True, index=True),
    sa.Column("timestamp", sa.Float, nullable=True, index=True),  # seconds since the Unix epoch, UTC
    sa.Column("frame", sa.Integer, nullable=True),
    sa.Column("box_x", sa.Float, nullable=True),
    sa.Column("box_y", sa.Float, nullable=True),
    sa.Column("box_w", sa.Float, nullable=True),
    sa.Column("box_h", sa.Float, nullable=True),
    sa.Column("track", sa.String(128), nullable=True, index=True),
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
    sa.Column("camera", sa.String(128), nullable=True, index=True),
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


def connect(url: str) -> Engine:
    """An SQLAlchemy engine for ``url`` with the schema created."""
    kwargs: dict[str, Any] = {"future": True}
    if url.startswith("sqlite"):
        kwargs["connect_args"] = {"timeout": 30}
    eng = sa.create_engine(url, **kwargs)
    metadata.create_all(eng)
    return eng


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
    rows = list(rows)
    now = time.time()
    for r in rows:
        r.setdefault("added_at", now)
    if rows:
        conn.execute(crops.insert(), rows)
    return len(rows)


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
    """A WHERE clause for the given filters; None when no filter is set."""
    parts: list[sa.ColumnElement[bool]] = []
    if ids is not None:
        parts.append(crops.c.id.in_([int(i) for i in ids]))
    if cameras is not None:
        parts.append(crops.c.camera.in_([str(c) for c in cameras]))
    if exclude_cameras:
        parts.append(sa.or_(crops.c.camera.is_(None), crops.c.camera.not_in([str(c) for c in exclude_cameras])))
    if sources is not None:
        parts.append(crops.c.source.in_([str(s) for s in sources]))
    if time_from is not None:
        parts.append(crops.c.timestamp >= float(time_from))
    if time_to is not None:
        parts.append(crops.c.timestamp <= float(time_to))
    if pids is not None:
        parts.append(crops.c.pid.in_([str(p) for p in pids]))
    if tracks is not None:
        parts.append(crops.c.track.in_([str(t) for t in tracks]))
    if not parts:
        return None
    return sa.and_(*parts)


def select_ids(conn: Connection, where: Optional[sa.ColumnElement[bool]]) -> list[int]:
    stmt = sa.select(crops.c.id).order_by(crops.c.id)
    if where is not None:
        stmt = stmt.where(where)
    return list(conn.execute(stmt).scalars())


def fetch_rows(conn: Connection, ids: Sequence[int], chunk: int = 500) -> dict[int, dict[str, Any]]:
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
