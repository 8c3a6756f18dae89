"""Agent settings: flags > PAODING_AGENT_* > config file; the systemd unit."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from agent.config import load_config
from core.errors import ConfigError

ROOT = Path(__file__).resolve().parents[2]


def test_precedence(tmp_path):
    cfg = tmp_path / "agent.yaml"
    cfg.write_text("device_id: from-file\nprofile: raspberry-pi-4\nbroker: mqtt://file:1883\n"
                   "stall-seconds: 5\n")
    env = {"PAODING_AGENT_BROKER": "mqtts://env:8883",
           "PAODING_AGENT_TRUST_KEY": "/a.pub:/b.pub"}
    c = load_config({"device_id": "from-cli", "profile": None}, env, cfg)
    assert c.device_id == "from-cli"  # flag beats file
    assert c.broker == "mqtts://env:8883"  # env beats file
    assert c.profile == "raspberry-pi-4" and c.stall_seconds == 5  # file
    assert c.trust_key == [Path("/a.pub"), Path("/b.pub")]
    js = tmp_path / "agent.json"
    js.write_text(json.dumps({"device_id": "j1"}))
    assert load_config({}, {"PAODING_AGENT_CONFIG": str(js)}).device_id == "j1"


@pytest.mark.parametrize("text, match", [
    ("device_id: x\nbogus: 1\n", "bogus"),
    ("device_id: x\nstall_seconds: -1\n", "stall_seconds"),
    ("device_id: [unclosed\n", "not valid YAML"),
    ("- a\n- b\n", "mapping"),
    ("profile: p\n", "device id is required"),
])
def test_bad_config_names_the_problem(tmp_path, text, match):
    cfg = tmp_path / "agent.yaml"
    cfg.write_text(text)
    with pytest.raises(ConfigError, match=match):
        load_config({}, {}, cfg)


def test_password_file(tmp_path):
    (tmp_path / "pw").write_text("s3cret\n")
    c = load_config({"device_id": "d", "password_file": str(tmp_path / "pw")}, {})
    assert c.read_password() == "s3cret"
    c = load_config({"device_id": "d", "password_file": str(tmp_path / "missing")}, {})
    with pytest.raises(ConfigError, match="cannot read password file"):
        c.read_password()


def test_systemd_unit():
    unit = (ROOT / "agent" / "systemd" / "paoding-agent.service").read_text()
    assert "ExecStart=/usr/local/bin/paoding-agent run" in unit
    assert "Restart=always" in unit and "StateDirectory=paoding-agent" in unit


def test_keygen_writes_a_private_key_and_prints_the_public_one(tmp_path, capsys):
    from agent.cli import main
    from core.signing import VerifyKey, load_signing_key

    assert main(["keygen", "--state-dir", str(tmp_path)]) == 0
    pem = capsys.readouterr().out
    key = load_signing_key(tmp_path / "device.key")
    assert VerifyKey.from_pem(pem).key_id == key.key_id
    assert oct((tmp_path / "device.key").stat().st_mode & 0o777) == "0o600"
    assert main(["keygen", "--state-dir", str(tmp_path)]) == 2  # never overwrites
    assert "refusing to overwrite" in capsys.readouterr().err
