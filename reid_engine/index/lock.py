"""One writer at a time per index: a lock that works across processes and, on PostgreSQL, across machines.

SQLite-backed indexes (rows on this machine) use an ``fcntl`` lock on
``<index>/write.lock``; indexes whose rows live in PostgreSQL use a session
advisory lock on the database, so writers on different machines exclude each
other too. Either way the holder records "process N on host H" so that a
second writer can say who holds it.
"""
from __future__ import annotations

import fcntl
import hashlib
import logging
import math
import os
import socket
import time
from pathlib import Path
from typing import Any, Optional

import sqlalchemy as sa

from ..errors import IndexBusyError, InvalidInputError

log = logging.getLogger(__name__)

LOCK_NAME = "write.lock"
#: seconds a second writer waits for the lock before giving up (REID_ENGINE_LOCK_TIMEOUT overrides)
DEFAULT_TIMEOUT = 10.0
_POLL = 0.05


def default_timeout() -> float:
    """Seconds to wait for the lock: ``REID_ENGINE_LOCK_TIMEOUT`` when set (>= 0, or inf), else DEFAULT_TIMEOUT."""
    text = os.environ.get("REID_ENGINE_LOCK_TIMEOUT")
    if text is None or not text.strip():
        return DEFAULT_TIMEOUT
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not value >= 0:  # NaN too; inf waits as long as it takes
        raise InvalidInputError(f"REID_ENGINE_LOCK_TIMEOUT={text!r}: expected seconds to wait, a number >= 0 or inf")
    return value


def _holder() -> str:
    return f"process {os.getpid()} on host {socket.gethostname()}"


class WriteLock:
    """Re-entrant writer lock of one index (``with lock:`` or ``acquire``/``release``)."""

    def __init__(self, folder: Path, sql: sa.engine.Engine, timeout: Optional[float] = None):
        self.folder = Path(folder)
        self.sql = sql
        self.timeout: Optional[float] = None if timeout is None else float(timeout)  # None: read at acquire
        self._depth = 0
        self._fh: Optional[Any] = None
        self._conn: Optional[sa.engine.Connection] = None
        self._pg = sql.dialect.name == "postgresql"

    @property
    def held(self) -> bool:
        return self._depth > 0

    def _key(self) -> int:
        digest = hashlib.sha256(self.sql.url.render_as_string(hide_password=True).encode()).digest()
        return int.from_bytes(digest[:8], "big", signed=True)

    def _try(self) -> bool:
        if self._pg:
            conn = self.sql.connect()
            got = bool(conn.execute(sa.text("SELECT pg_try_advisory_lock(:k)"), {"k": self._key()}).scalar())
            conn.commit()
            if not got:
                conn.close()
                return False
            self._conn = conn
            conn.execute(
                sa.text("INSERT INTO reid_meta (key, value) VALUES ('writer', :v) "
                        "ON CONFLICT (key) DO UPDATE SET value = :v"), {"v": _holder()})
            conn.commit()
            return True
        fh = open(self.folder / LOCK_NAME, "a+")
        try:
            fcntl.flock(fh.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            fh.close()
            return False
        fh.seek(0)
        fh.truncate()
        fh.write(_holder())
        fh.flush()
        self._fh = fh
        return True

    def _who(self) -> str:
        try:
            if self._pg:
                with self.sql.connect() as conn:
                    v = conn.execute(sa.text("SELECT value FROM reid_meta WHERE key = 'writer'")).scalar()
                    return str(v) if v else "another process"
            text = (self.folder / LOCK_NAME).read_text().strip()
            return text or "another process"
        except Exception:  # the holder's name is only for the message
            return "another process"

    def acquire(self, timeout: Optional[float] = None) -> None:
        if self._depth:
            self._depth += 1
            return
        wait = float(timeout) if timeout is not None else self.timeout
        if wait is None:
            wait = default_timeout()
        deadline = time.monotonic() + wait
        while not self._try():
            if time.monotonic() >= deadline:
                raise IndexBusyError(
                    f"{self.folder}: index is being written by {self._who()} (waited {wait:g} s; "
                    "set REID_ENGINE_LOCK_TIMEOUT to wait longer)"
                )
            time.sleep(_POLL)
        self._depth = 1

    def release(self) -> None:
        if not self._depth:
            return
        self._depth -= 1
        if self._depth:
            return
        if self._conn is not None:
            try:
                self._conn.execute(sa.text("SELECT pg_advisory_unlock(:k)"), {"k": self._key()})
                self._conn.commit()
            finally:
                self._conn.close()
                self._conn = None
        if self._fh is not None:
            fcntl.flock(self._fh.fileno(), fcntl.LOCK_UN)
            self._fh.close()
            self._fh = None

    def __enter__(self) -> "WriteLock":
        self.acquire()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.release()
