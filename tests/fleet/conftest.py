"""Fleet fixtures: a real PostgreSQL database per test, simulated fleets on a real broker."""

from __future__ import annotations

import os
import uuid

import pytest

PG_ADMIN = os.environ.get("PAODING_TEST_PG", "postgresql://postgres@127.0.0.1:5432/postgres")


@pytest.fixture
def pg_url():
    """A fresh database on the local PostgreSQL server, dropped after the test."""
    psycopg = pytest.importorskip("psycopg")
    name = f"paoding_test_{uuid.uuid4().hex[:10]}"
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


@pytest.fixture(params=["sqlite", "postgres"])
def registry_target(request, tmp_path):
    """Each registry test runs on SQLite and on the real PostgreSQL server."""
    if request.param == "sqlite":
        return tmp_path / "fleet.sqlite"
    return request.getfixturevalue("pg_url")


@pytest.fixture(scope="module")
def nats_cluster(tmp_path_factory):
    """Three NATS nodes (JetStream, MQTT interface) routed to each other on loopback."""
    from natscluster import NatsCluster

    cluster = NatsCluster(tmp_path_factory.mktemp("nats")).start()
    yield cluster
    cluster.stop()
