"""What the routes share: the server's settings, the engine behind a lock, the write-token check."""
from __future__ import annotations

import hmac
import threading
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator, Optional

from fastapi import Header, Request

from ..encoders.base import Encoder
from ..errors import InvalidInputError
from ..engine import Engine
from ..service import refresh
from ..service.errors import AuthError, WritesDisabledError

TOKEN_ENV = "REID_ENGINE_TOKEN"


@dataclass(frozen=True)
class ServeConfig:
    """How ``reid-engine serve`` runs: which index, limits, write token, CORS origins."""

    index: str
    token: Optional[str] = None  # write endpoints are off without one
    cors_origins: tuple[str, ...] = ()
    max_upload_bytes: int = 10 * 1024 * 1024  # one request's body
    max_pixels: int = 40_000_000  # one image, from its header
    upload_dir: Optional[Path] = None  # where indexed uploads are kept (default: <index>/uploads)
    weights: Optional[Path] = None
    device: Optional[str] = None
    engine: Optional[Engine] = field(default=None, compare=False)  # an engine already open (tests, embedding)

    def __post_init__(self) -> None:
        # a header cannot carry a token of blanks or with spaces inside (every write would get a 401)
        if self.token is not None and (not self.token.strip() or any(c.isspace() for c in self.token)):
            raise InvalidInputError(f"token {self.token!r}: expected a text without spaces (or no token: writes off)")


class EngineHolder:
    """One engine shared by all requests; every call runs under one lock.

    The lock makes engine caches and the database session safe across the
    server's worker threads, and a query never overlaps an add or a remove, so
    it sees one committed generation. Before each call the engine picks up
    commits made by other processes.
    """

    def __init__(self, engine: Engine):
        self.engine = engine
        self._lock = threading.RLock()

    @contextmanager
    def use(self) -> Iterator[Engine]:
        with self._lock:
            refresh(self.engine)
            yield self.engine

    def concurrent_encoder(self) -> Optional[Encoder]:
        """The engine's encoder when its ``encode`` is thread-safe (several inference sessions), else None.

        Queries encode their images with it outside the lock: the network is most of a query's time and
        releases the GIL, so requests overlap there and the lock covers only search, re-ranking and rows.
        """
        with self._lock:  # the encoder is built on first use
            encoder = self.engine.encoder
        return encoder if encoder.concurrent_batches > 1 else None

    def close(self) -> None:
        with self._lock:
            self.engine.close()


def holder(request: Request) -> EngineHolder:
    return request.app.state.holder


def config(request: Request) -> ServeConfig:
    return request.app.state.config


def require_writer(request: Request, authorization: Optional[str] = Header(None)) -> None:
    """Allow a write only on a server started with a token, and only with that bearer token."""
    token = request.app.state.config.token
    if not token:
        raise WritesDisabledError(f"write endpoints are off: start the server with --token (or {TOKEN_ENV})")
    scheme, _, given = (authorization or "").partition(" ")
    if scheme.lower() != "bearer" or not given.strip():
        raise AuthError("this endpoint needs the server's bearer token (Authorization: Bearer <token>)")
    if not hmac.compare_digest(given.strip().encode("utf-8", "replace"), token.encode("utf-8")):
        raise AuthError("wrong bearer token")
