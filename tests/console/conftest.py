"""Console fixtures: the recorded fleet on SQLite and on the real PostgreSQL server."""

from __future__ import annotations

import os
import uuid

import pytest

PG_ADMIN = os.environ.get("PAODING_TEST_PG", "postgresql://postgres@127.0.0.1:5432/postgres")


@pytest.fixture(params=["sqlite", "postgres"])
def registry_target(request, tmp_path):
    """A fresh fleet record: a SQLite file, or a database on the local PostgreSQL server."""
    if request.param == "sqlite":
        yield tmp_path / "fleet.sqlite"
        return
    psycopg = pytest.importorskip("psycopg")
    name = f"paoding_console_{uuid.uuid4().hex[:10]}"
    try:
        admin = psycopg.connect(PG_ADMIN, autocommit=True)
    except psycopg.OperationalError as exc:
        pytest.skip(f"no PostgreSQL server at {PG_ADMIN}: {exc}")
    admin.execute(f"CREATE DATABASE {name}")
    try:
        yield PG_ADMIN.rsplit("/", 1)[0] + f"/{name}"
    finally:
        admin.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")
        admin.close()
