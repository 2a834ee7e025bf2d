"""PostgreSQL for tests: a fresh schema per test on the server named by REID_ENGINE_TEST_PG_URL.

.ci/run exports the URL of the server that runs on every machine of this project
(postgresql+psycopg://postgres@127.0.0.1:5432/test); without it these tests skip.
"""
from __future__ import annotations

import os
import uuid
from contextlib import contextmanager
from typing import Iterator

import pytest

PG_ENV = "REID_ENGINE_TEST_PG_URL"


@contextmanager
def pg_url_or_skip() -> Iterator[str]:
    """A URL whose search_path is a new schema, dropped afterwards."""
    base = os.environ.get(PG_ENV)
    if not base:
        pytest.skip(f"PostgreSQL tests need {PG_ENV} (e.g. postgresql+psycopg://postgres@127.0.0.1:5432/test)")
    import sqlalchemy as sa

    schema = f"reid_test_{uuid.uuid4().hex[:12]}"
    admin = sa.create_engine(base)
    try:
        with admin.begin() as conn:
            conn.exec_driver_sql(f'CREATE SCHEMA "{schema}"')
    except Exception as exc:  # the server is named but not reachable: that is a failure, not a skip
        admin.dispose()
        raise RuntimeError(f"{PG_ENV}={base}: cannot create a test schema ({exc})") from exc
    sep = "&" if "?" in base else "?"
    try:
        yield f"{base}{sep}options=-csearch_path%3D{schema}"
    finally:
        with admin.begin() as conn:
            conn.exec_driver_sql(f'DROP SCHEMA "{schema}" CASCADE')
        admin.dispose()
