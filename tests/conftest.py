"""Shared fixtures: a real Mosquitto per test (or per module), tmp state dirs."""

from __future__ import annotations

import os
import sys
import uuid
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from mosquitto import Mosquitto  # noqa: E402


@pytest.fixture
def broker(tmp_path_factory):
    """A fresh Mosquitto on a free loopback port, persistent across restarts; killed after."""
    b = Mosquitto(workdir=tmp_path_factory.mktemp("mosquitto"))
    b.start()
    yield b
    b.kill()


@pytest.fixture
def volatile_broker(tmp_path_factory):
    """A Mosquitto without persistence: a restart loses every session and queued message."""
    b = Mosquitto(workdir=tmp_path_factory.mktemp("mosquitto-volatile"), persistence=False)
    b.start()
    yield b
    b.kill()


@pytest.fixture(scope="module")
def module_broker(tmp_path_factory):
    """One Mosquitto shared by a module's tests (cheaper; do not restart it)."""
    b = Mosquitto(workdir=tmp_path_factory.mktemp("mosquitto-module"))
    b.start()
    yield b
    b.kill()


def _skips_fail() -> bool:
    """In CI a skip means a missing install step: make it a failure there."""
    return os.environ.get("CI", "").lower() in ("1", "true", "yes")


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    report = outcome.get_result()
    if _skips_fail() and report.skipped and not hasattr(report, "wasxfail"):
        report.outcome = "failed"
        report.longrepr = f"skipped in CI (a missing install step?): {report.longrepr}"


@pytest.hookimpl(tryfirst=True)
def pytest_collectreport(report):
    if _skips_fail() and report.skipped:
        report.outcome = "failed"
        report.longrepr = f"module skipped in CI (a missing install step?): {report.longrepr}"


# the fleet record on a real PostgreSQL server (fleet, console and profile tests)
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
