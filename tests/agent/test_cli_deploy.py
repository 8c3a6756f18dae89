"""`paoding-edge keys`, `paoding-edge deploy` and `paoding-agent run|status` end to end."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
from agenthelp import ROOT, SUBPROCESS_ENV, make_probes
from mosquitto import free_port

pytestmark = [pytest.mark.timeout(120)]


def cli(*args: str, timeout: float = 90) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "hostcli.main", *args], cwd=ROOT,
                          env=SUBPROCESS_ENV, capture_output=True, text=True, timeout=timeout)


def agent_cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "agent.cli", *args], cwd=ROOT,
                          env=SUBPROCESS_ENV, capture_output=True, text=True, timeout=60)


def test_dead_broker_is_one_line_error(tmp_path, tiny_model):
    (tmp_path / "m.tflite").write_bytes(tiny_model)
    port = free_port()
    out = cli("deploy", str(tmp_path / "m.tflite"), "--device", "pi-1", "--unsigned",
              "--unverified-reports", "--broker", f"mqtt://127.0.0.1:{port}")
    assert out.returncode == 2
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 2 and "not authenticated" in lines[0], out.stderr
    assert f"127.0.0.1:{port}" in lines[1], out.stderr
    assert "nothing listens" in lines[1], out.stderr  # what is wrong, and what to try
    assert "Traceback" not in out.stderr


def test_keys_and_bad_arguments(tmp_path):
    out = cli("keys", "new", str(tmp_path / "k"))
    assert out.returncode == 0 and "key id" in out.stdout
    assert (tmp_path / "k" / "paoding.key").exists() and (tmp_path / "k" / "paoding.pub").exists()
    again = cli("keys", "new", str(tmp_path / "k"))
    assert again.returncode == 2 and "refusing to overwrite" in again.stderr
    out = cli("deploy", str(tmp_path / "missing.tflite"), "--device", "pi-1", "--unsigned",
              "--db", str(tmp_path / "fleet.sqlite"))
    assert out.returncode == 2 and "not enrolled" in out.stderr
    out = cli("deploy", str(tmp_path / "missing.tflite"), "--device", "pi-1", "--unsigned",
              "--unverified-reports")
    assert out.returncode == 2 and "cannot read model" in out.stderr
    out = agent_cli("run", "--device-id", "pi-1", "--state-dir", str(tmp_path / "s"))
    assert out.returncode == 2 and "no trusted key" in out.stderr
    out = agent_cli("run", "--device-id", "bad/id", "--allow-unsigned")
    assert out.returncode == 2 and "device id" in out.stderr
    out = agent_cli("run", "--device-id", "pi-1", "--allow-unsigned", "--emulate", "rpi")
    assert out.returncode == 2 and ("emulation" in out.stderr or "unknown profile" in out.stderr)


@pytest.mark.broker
def test_deploy_json_and_agent_status(broker, agent_process, tmp_path, small_model):
    keydir = tmp_path / "keys"
    assert cli("keys", "new", str(keydir)).returncode == 0
    model = tmp_path / "m.tflite"
    model.write_bytes(small_model)
    probes = make_probes(small_model)
    np.savez(tmp_path / "probes.npz", **probes)
    # settings from a config file and the environment
    cfg = tmp_path / "agent.yaml"
    cfg.write_text(f"device_id: pi-kitchen-01\nprofile: raspberry-pi-4\nbroker: {broker.url}\n"
                   f"trust_key: [{keydir / 'paoding.pub'}]\n")
    state = tmp_path / "state"
    # enrolment: the device makes its key, the host records the public half
    pub = agent_cli("keygen", "--state-dir", str(state))
    assert pub.returncode == 0 and "BEGIN PUBLIC KEY" in pub.stdout, pub.stderr
    (tmp_path / "pi.pub").write_text(pub.stdout)
    db = str(tmp_path / "fleet.sqlite")
    assert cli("enrol", "pi-kitchen-01", "--profile", "raspberry-pi-4", "--public-key",
               str(tmp_path / "pi.pub"), "--db", db).returncode == 0
    proc = agent_process(broker, state_dir=state, trust_key=keydir / "paoding.pub",
                         extra=["--config", str(cfg)])
    proc.wait_log("connected to")
    out = cli("deploy", str(model), "--device", "pi-kitchen-01", "--probes",
              str(tmp_path / "probes.npz"), "--broker", broker.url, "--key",
              str(keydir / "paoding.key"), "--max-p90-ms", "25", "--min-agreement", "0.98",
              "--db", db, "--json")
    assert out.returncode == 0, out.stderr
    rep = json.loads(out.stdout)
    assert rep["state"] == "active" and rep["checks"]["agreement"] == 1.0
    assert set(rep["benchmark"]["latency_ms"]) >= {"mean", "std", "min", "max", "p50", "p90",
                                                  "p99"}
    out = cli("deploy", str(model), "--device", "pi-kitchen-01", "--broker", broker.url,
              "--key", str(keydir / "paoding.key"), "--max-p90-ms", "0.000001", "--db", db)
    assert out.returncode == 1 and "ROLLED_BACK" in out.stdout and "p90 latency" in out.stdout
    assert "p99" in out.stdout and "ai-edge-litert" in out.stdout
    st = agent_cli("status", "--state-dir", str(state))
    assert st.returncode == 0, st.stderr
    assert "p90" in st.stdout and "rolled_back" in st.stdout and "active" in st.stdout
    js = json.loads(agent_cli("status", "--state-dir", str(state), "--json").stdout)
    assert js["active"]["deployment_id"] == rep["deployment_id"]
    assert [h["outcome"] for h in js["history"]] == ["active", "rolled_back"]
    assert js["last_release"] > 1_700_000_000_000 and "release:" in st.stdout
