"""`paoding-edge conformance`: bad input is one line naming the problem; no agent is a failure."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from core.signing import write_key_pair
from hostcli.main import main

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from mosquitto import free_port  # noqa: E402


@pytest.fixture(scope="module")
def keys(tmp_path_factory) -> dict[str, str]:
    d = tmp_path_factory.mktemp("cli-keys")
    host, _ = write_key_pair(d, "host")
    _, dev = write_key_pair(d, "device")
    return {"host": str(host), "device_pub": str(dev)}


def run(capsys, *args: str) -> tuple[int, str, str]:
    rc = main(["conformance", *args])
    out, err = capsys.readouterr()
    return rc, out, err


def base(keys, broker_url: str, device: str = "pi-1") -> list[str]:
    return ["--broker", broker_url, "--device", device, "--key", keys["host"],
            "--device-key", keys["device_pub"]]


@pytest.mark.parametrize("extra, message", [
    (["--unsigned"], "the kit signs its manifests: give --key KEY"),
    (["--only", "everything"], "unknown check group(s) everything: use identity, malformed"),
    (["--timeout", "0"], "--timeout must be > 0"),
])
def test_bad_options_are_one_line(keys, capsys, extra, message, broker):
    rc, out, err = run(capsys, *base(keys, broker.url), *extra)
    assert rc == 2
    assert err.count("\n") == 1 and message in err and "Traceback" not in err


def test_bad_device_id_and_key_file(keys, capsys, tmp_path):
    url = f"mqtt://127.0.0.1:{free_port()}"
    rc, _out, err = run(capsys, *base(keys, url, device="no spaces"))
    assert rc == 2 and "invalid device id 'no spaces'" in err and err.count("\n") == 1
    args = base(keys, url)
    args[args.index("--device-key") + 1] = str(tmp_path / "missing.pub")
    rc, _out, err = run(capsys, *args)
    assert rc == 2 and "cannot read key file" in err and err.count("\n") == 1


def test_unreachable_broker_is_one_line(keys, capsys):
    port = free_port()
    rc, _out, err = run(capsys, *base(keys, f"mqtt://127.0.0.1:{port}"))
    assert rc == 2 and f"127.0.0.1:{port}" in err and err.count("\n") == 1


@pytest.mark.broker
def test_no_agent_fails_at_once(keys, capsys, broker):
    rc, out, _err = run(capsys, *base(keys, broker.url, device="nobody-home"), "--timeout", "1")
    assert rc == 1
    lines = out.splitlines()
    assert lines[1].startswith("FAIL  birth status: no online status on "
                               "paoding/v2/devices/nobody-home/status")
    assert lines[-1] == "1 checks: 0 passed, 1 failed (birth status)"
