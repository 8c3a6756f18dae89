"""Shared fixtures: a real Mosquitto per test (or per module), tmp state dirs."""

from __future__ import annotations

import os
import sys
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
