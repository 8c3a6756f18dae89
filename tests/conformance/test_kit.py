"""The conformance kit against real agent processes on a real Mosquitto.

The Python agent passes every check; each deliberately faulty agent
(tests/conformance/faulty_agent.py) fails exactly the checks that cover its
fault, so the kit is shown to be able to fail.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from conformance import KitConfig, run_kit
from core.mqtt import Broker
from core.signing import load_signing_key, load_verify_key, write_key_pair
from hostcli.main import main

pytestmark = [pytest.mark.broker, pytest.mark.slow, pytest.mark.timeout(600)]
ROOT = Path(__file__).resolve().parents[2]
FAULTY = Path(__file__).with_name("faulty_agent.py")
ENV = dict(os.environ, PYTHONPATH=str(ROOT), TF_CPP_MIN_LOG_LEVEL="2")
TIMEOUT = 60.0

# fault -> the checks it must fail (and no other)
EXPECTED_FAILURES = {
    "accept-downgrade": {"downgrade refused", "refused manifests never started"},
    "accept-expired": {"expired manifest refused", "refused manifests never started"},
    "active-without-activating": {"signed manifest accepted and activated",
                                  "status names the new active model",
                                  "chunked transfer completes (a corrupt chunk was dropped)"},
    "report-before-install": {"reports in order, naming the manifest"},
    "ignore-thresholds": {"missed threshold rolled back", "previous model stays active"},
    "forget-chunks": {"resume after a disconnect"},
    "foreign-report-key": {  # every check that needs an authentic report
        *(f"malformed manifest ({what}) answered" for what in (
            "not JSON", "protocol 1", "unknown field", "NaN number", "control character")),
        "agent alive after an oversized manifest", "unsigned manifest refused",
        "manifest signed by an unknown key refused", "manifest altered after signing refused",
        "expired manifest refused", "manifest for another device refused",
        "reports signed by the device key", "replayed manifest refused", "downgrade refused"},
}


@pytest.fixture(scope="module")
def keys(tmp_path_factory) -> dict[str, Path]:
    d = tmp_path_factory.mktemp("conformance-keys")
    host_priv, host_pub = write_key_pair(d, "host")
    dev_priv, dev_pub = write_key_pair(d, "device")
    return {"host": host_priv, "host_pub": host_pub, "device": dev_priv, "device_pub": dev_pub}


@pytest.fixture
def start_agent(module_broker, keys, tmp_path) -> Iterator[Callable[..., str]]:
    """Start ``paoding-agent run`` (or a faulty one) as a process; returns its device id."""
    procs: list[subprocess.Popen] = []

    def start(fault: str | None = None, protocol: str = "5") -> str:
        device = f"conf-{fault or 'python'}-{protocol}"
        args = ["run", "--device-id", device, "--profile", "raspberry-pi-4",
                "--broker", module_broker.url, "--state-dir", str(tmp_path / "state"),
                "--trust-key", str(keys["host_pub"]), "--device-key", str(keys["device"]),
                "--mqtt-protocol", protocol, "--log-level", "INFO"]
        cmd = [sys.executable, "-m", "agent.cli", *args] if fault is None else \
            [sys.executable, str(FAULTY), fault, *args]
        log = open(tmp_path / "agent.log", "ab")  # noqa: SIM115 - the process owns it
        procs.append(subprocess.Popen(cmd, cwd=ROOT, env=ENV, stdout=log,
                                      stderr=subprocess.STDOUT))
        return device

    yield start
    for p in procs:
        p.kill()
        p.wait()


def config(broker, keys, device: str, **kw) -> KitConfig:
    return KitConfig(broker=Broker(port=broker.port), device_id=device,
                     key=load_signing_key(keys["host"]),
                     device_key=load_verify_key(keys["device_pub"]), timeout=TIMEOUT, **kw)


def kit_args(broker, keys, device: str, *extra: str) -> list[str]:
    return ["conformance", "--broker", broker.url, "--device", device,
            "--key", str(keys["host"]), "--device-key", str(keys["device_pub"]),
            "--timeout", str(TIMEOUT), *extra]


@pytest.mark.parametrize("protocol", ["5", "3.1.1"])
def test_python_agent_passes_every_check(module_broker, keys, start_agent, capsys, protocol):
    device = start_agent(protocol=protocol)
    rc = main(kit_args(module_broker, keys, device))
    out = capsys.readouterr().out.splitlines()
    checks = [line for line in out if line.startswith(("PASS", "FAIL"))]
    assert rc == 0, "\n".join(out)
    assert all(line.startswith("PASS") for line in checks)
    assert len(checks) == 29
    assert out[-1] == "29 checks: 29 passed, 0 failed"


@pytest.mark.parametrize("fault", sorted(EXPECTED_FAILURES))
def test_faulty_agent_fails_the_checks_that_cover_its_fault(module_broker, keys, start_agent,
                                                             fault):
    device = start_agent(fault)
    results = run_kit(config(module_broker, keys, device))
    failed = {r.check for r in results if not r.ok}
    assert len(results) == 29, "\n".join(r.line() for r in results)
    assert failed == EXPECTED_FAILURES[fault], "\n".join(r.line() for r in results)


def test_a_group_runs_with_what_it_needs(module_broker, keys, start_agent):
    device = start_agent()
    results = run_kit(config(module_broker, keys, device, only=("downgrade",)))
    assert [r.check for r in results][-1] == "downgrade refused"
    assert "signed manifest accepted and activated" in {r.check for r in results}
    assert all(r.ok for r in results), [r.line() for r in results]
