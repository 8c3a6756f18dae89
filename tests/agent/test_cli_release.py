"""`paoding-edge deploy --release-jump | --release-reset` against a real agent and broker."""

from __future__ import annotations

import json

import pytest
from test_cli_deploy import agent_cli, cli

pytestmark = [pytest.mark.broker, pytest.mark.timeout(240)]

FAR = str(2**62)  # a mistyped release: far beyond any genuine one


def test_release_jump_and_reset_from_the_command_line(broker, agent_process, tmp_path,
                                                      tiny_model):
    keydir = tmp_path / "keys"
    assert cli("keys", "new", str(keydir)).returncode == 0
    model = tmp_path / "m.tflite"
    model.write_bytes(tiny_model)
    state, db = tmp_path / "state", str(tmp_path / "fleet.sqlite")
    pub = agent_cli("keygen", "--state-dir", str(state))
    assert pub.returncode == 0, pub.stderr
    (tmp_path / "pi.pub").write_text(pub.stdout)
    assert cli("enrol", "pi-1", "--profile", "raspberry-pi-4", "--public-key",
               str(tmp_path / "pi.pub"), "--db", db).returncode == 0
    proc = agent_process(broker, device_id="pi-1", state_dir=state,
                         trust_key=keydir / "paoding.pub")
    proc.wait_log("connected to")

    def deploy(*extra: str):  # blocks until the device's final report
        return cli("deploy", str(model), "--device", "pi-1", "--broker", broker.url,
                   "--key", str(keydir / "paoding.key"), "--db", db, "--runs", "3", *extra)

    def reason(out) -> str:
        lines = [ln for ln in out.stdout.splitlines() if ln.strip().startswith("reason:")]
        assert len(lines) == 1, out.stdout
        return lines[0]

    out = deploy("--release", FAR)  # no operator step: refused, nothing recorded
    assert out.returncode == 1 and "REJECTED" in out.stdout, out.stdout + out.stderr
    assert "more than 30 days beyond" in reason(out) and "release jump" in reason(out)
    assert "Traceback" not in out.stderr

    out = deploy("--release", FAR, "--release-jump")  # the explicit step: taken
    assert out.returncode == 0 and "ACTIVE" in out.stdout, out.stdout + out.stderr

    out = deploy()  # the device is now wedged: a genuine release is a downgrade
    assert out.returncode == 1 and "REJECTED" in out.stdout, out.stdout + out.stderr
    assert "downgrade" in reason(out)

    out = deploy("--release-reset")  # the signed way out
    assert out.returncode == 0 and "ACTIVE" in out.stdout, out.stdout + out.stderr
    out = deploy()  # genuine releases go again
    assert out.returncode == 0 and "ACTIVE" in out.stdout, out.stdout + out.stderr

    st = agent_cli("status", "--state-dir", str(state), "--json")
    assert json.loads(st.stdout)["last_release"] < 2**62


def test_release_flags_are_checked(tmp_path, tiny_model):
    (tmp_path / "m.tflite").write_bytes(tiny_model)
    base = ("deploy", str(tmp_path / "m.tflite"), "--device", "pi-1", "--unsigned",
            "--unverified-reports", "--broker", "mqtt://127.0.0.1:1")
    out = cli(*base, "--release-jump", "--release-reset")
    assert out.returncode == 2 and "not allowed with" in out.stderr, out.stderr
    out = cli(*base, "--release", str(2**63))
    assert out.returncode == 2 and "Traceback" not in out.stderr
    assert out.stderr.strip().splitlines()[-1].endswith(
        f"release: Input should be less than or equal to {2**62}"), out.stderr
