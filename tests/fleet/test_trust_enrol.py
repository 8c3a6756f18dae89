"""Enrolment: a device's key in the registry, its own broker credentials, a bundle; revocation."""

from __future__ import annotations

import argparse
import json
import stat
import time
from pathlib import Path

import pytest
from trustbroker import FleetBroker, Inbox

from core.errors import BrokerUnavailable, ConfigError, KeyFileError
from core.mqtt import MqttClient
from core.signing import load_signing_key, load_verify_key, write_key_pair
from fleet.brokerconf import PasswordFile, write_broker_config
from fleet.enrol import enrol_device, revoke_device
from fleet.registry import Registry
from hostcli.main import main
from hostcli.options import broker_from_args

PROFILE = "raspberry-pi-4"
R = "paoding/v2"


def _mode(path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_host_made_key_bundle_and_registry(tmp_path):
    bdir = tmp_path / "broker"
    write_broker_config(bdir)
    host_priv, host_pub = write_key_pair(tmp_path / "keys", "host")
    with Registry(tmp_path / "fleet.sqlite") as reg:
        e = enrol_device(reg, "pi-1", PROFILE, broker_dir=bdir, bundle_dir=tmp_path / "bundles",
                         host_public_key=host_pub, broker_url="mqtts://broker:8883")
        pem = reg.public_key("pi-1")
    b = tmp_path / "bundles" / "pi-1"
    assert sorted(p.name for p in b.iterdir()) == sorted(
        ["device.key", "device.pub", "broker.password", "ca.crt", "host.pub", "agent.json"])
    for secret in ("device.key", "broker.password", "agent.json"):
        assert _mode(b / secret) == 0o600
    key = load_signing_key(b / "device.key")
    assert key.key_id == e.key_id == load_verify_key(b / "device.pub").key_id
    assert pem == key.public_key().public_pem().decode()
    meta = json.loads((b / "agent.json").read_text())
    assert meta["username"] == "pi-1" and meta["broker"] == "mqtts://broker:8883"
    assert meta["device_key"] == str(b.resolve() / "device.key")
    assert meta["trust_key"] == [str(b.resolve() / "host.pub")]
    assert (b / "broker.password").read_text().strip() == e.password
    assert "pi-1:$7$" in (bdir / "devices.passwd").read_text()
    assert e.password not in (bdir / "devices.passwd").read_text()


def test_enrol_with_the_devices_own_public_key(tmp_path, monkeypatch):
    import io

    _priv, pub = write_key_pair(tmp_path, "dev")
    _priv2, pub2 = write_key_pair(tmp_path, "dev2")
    with Registry(tmp_path / "f.sqlite") as reg:
        e = enrol_device(reg, "pi-2", PROFILE, public_key=pub)
        assert e.key_id == load_verify_key(pub).key_id and e.password is None
        monkeypatch.setattr("sys.stdin", io.StringIO(pub2.read_text()))  # keygen | enrol -
        e2 = enrol_device(reg, "pi-3", PROFILE, public_key="-")
        assert e2.key_id == load_verify_key(pub2).key_id
        assert reg.public_keys() == {"pi-2": pub.read_text(), "pi-3": pub2.read_text()}


def test_password_file_keeps_users_added_with_mosquitto_passwd(tmp_path):
    import shutil
    import subprocess

    tool = shutil.which("mosquitto_passwd") or "/usr/bin/mosquitto_passwd"
    path = tmp_path / "devices.passwd"
    path.write_text("")
    subprocess.run([tool, "-b", str(path), "ops", "s3cret"], check=True, capture_output=True)
    pw = PasswordFile(path)
    assert pw.verify("ops", "s3cret")  # mosquitto_passwd's hash, checked by ours
    pw.set("pi-1", "one")
    assert pw.verify("ops", "s3cret") and pw.verify("pi-1", "one")


@pytest.mark.parametrize("kwargs, match", [
    ({"profile": "no-such-profile", "public_key": "PUB"}, "unknown device profile"),
    ({"device_id": "paoding-host", "public_key": "PUB"}, "host's broker user"),
    ({"device_id": "bad id", "public_key": "PUB"}, "invalid device id"),
    ({}, "give the device's public key"),
    ({"public_key": "PUB", "client_cert": True}, "needs the broker directory"),
])
def test_enrol_errors_name_the_problem(tmp_path, kwargs, match):
    _priv, pub = write_key_pair(tmp_path, "dev")
    kwargs = {k: (pub if v == "PUB" else v) for k, v in kwargs.items()}
    args = {"device_id": "pi-3", "profile": PROFILE, **kwargs}
    with Registry(tmp_path / "f.sqlite") as reg, pytest.raises((ConfigError, ValueError),
                                                                 match=match):
        enrol_device(reg, args.pop("device_id"), args.pop("profile"), **args)


def test_enrol_refuses_a_key_that_is_not_ed25519(tmp_path):
    bad = tmp_path / "bad.pub"
    bad.write_text("not a key")
    with Registry(tmp_path / "f.sqlite") as reg:
        with pytest.raises(KeyFileError, match="bad.pub"):
            enrol_device(reg, "pi-4", PROFILE, public_key=bad)
        assert reg.public_key("pi-4") is None


def test_enrolled_password_opens_the_broker_and_revocation_closes_it(tmp_path):
    b = FleetBroker(workdir=tmp_path / "broker")
    b.start()
    try:
        with Registry(tmp_path / "f.sqlite") as reg:
            e = enrol_device(reg, "pi-5", PROFILE, broker_dir=b.workdir,
                             bundle_dir=tmp_path / "bundles")
            b.reload()
            with Inbox(b.host_broker(), "watch", f"{R}/#") as host:
                dev = MqttClient(b.device_broker("pi-5", e.password), "pi-5")
                dev.connect(timeout=10)
                dev.publish(f"{R}/devices/pi-5/status", b"hello", qos=1).wait(5)
                assert host.wait_for(f"{R}/devices/pi-5/status")
            assert revoke_device(reg, "pi-5", b.workdir) == ["public key", "broker password",
                                                             "broker ACL"]
            assert reg.public_key("pi-5") is None
            with pytest.raises(ConfigError, match="not enrolled"):
                revoke_device(reg, "pi-5", b.workdir)
        b.reload()
        deadline = time.monotonic() + 5  # the reload disconnects it, and it cannot come back
        while dev.connected and time.monotonic() < deadline:
            time.sleep(0.05)
        connected = dev.connected
        dev.close()
        assert not connected
        with pytest.raises(BrokerUnavailable, match="refused"):
            MqttClient(b.device_broker("pi-5", e.password), "pi-5").connect(timeout=10)
    finally:
        b.kill()


def test_client_certificate_identity_mutual_tls(tmp_path):
    """Devices and the host role authenticate with certificates from the fleet CA."""
    b = FleetBroker(workdir=tmp_path / "broker", client_certs=True)
    b.start()
    try:
        with Registry(tmp_path / "f.sqlite") as reg:
            enrol_device(reg, "pi-6", PROFILE, broker_dir=b.workdir,
                         bundle_dir=tmp_path / "bundles", client_cert=True)
        b.reload()  # the broker reads the device's ACL block
        bundle = tmp_path / "bundles" / "pi-6"
        cert = (bundle / "client.crt", bundle / "client.key")
        assert _mode(cert[1]) == 0o600
        with Inbox(b.host_broker(), "watch", f"{R}/#") as host:
            dev = MqttClient(b.device_broker(None, None, cert=cert), "anything")
            dev.connect(timeout=10)
            dev.publish(f"{R}/devices/other/status", b"forged", qos=1).wait(5)
            dev.publish(f"{R}/devices/pi-6/status", b"hello", qos=1).wait(5)
            dev.close()
            assert host.wait_for(f"{R}/devices/pi-6/status")
            assert f"{R}/devices/other/status" not in host.topics()
        with pytest.raises(BrokerUnavailable):  # no certificate: the TLS handshake fails
            MqttClient(b.device_broker("pi-6", "x"), "pi-6").connect(timeout=5)
        host = b.host_broker()  # the host role too: its certificate, not its password
        assert host.cert_file is not None and host.username is None
        with pytest.raises(BrokerUnavailable):
            MqttClient(host.__class__(**{**host.__dict__, "cert_file": None, "key_file": None,
                                         "username": "paoding-host", "password": "x"}),
                       "host-no-cert").connect(timeout=5)
    finally:
        b.kill()


def test_connection_options_carry_the_client_certificate(tmp_path):
    cert, key = tmp_path / "c.crt", tmp_path / "c.key"
    cert.write_text("x")
    key.write_text("y")
    ns = argparse.Namespace(broker="mqtts://h:8884", username=None, password_file=None,
                            ca_file=None, cert_file=str(cert), key_file=str(key), insecure=False)
    broker = broker_from_args(ns)
    assert (broker.cert_file, broker.key_file, broker.tls) == (str(cert), str(key), True)
    with pytest.raises(ConfigError, match="both --cert-file and --key-file"):
        broker_from_args(argparse.Namespace(**{**vars(ns), "key_file": None}))
    with pytest.raises(ConfigError, match="no such file"):
        broker_from_args(argparse.Namespace(**{**vars(ns), "cert_file": str(tmp_path / "n")}))


def test_cli_broker_config_then_enrol_then_revoke(tmp_path, capsys):
    bdir, db = tmp_path / "broker", tmp_path / "fleet.sqlite"
    assert main(["broker-config", str(bdir), "--device-port", "18883"]) == 0
    out = capsys.readouterr().out
    assert "mosquitto -c" in out and f"PAODING_BROKER_PROFILE={bdir}/host.json" in out
    profile = json.loads((bdir / "host.json").read_text())
    assert profile["username"] == "paoding-host" and profile["broker"].startswith("mqtts://")
    assert Path(profile["password_file"]).is_file() and Path(profile["ca_file"]).is_file()
    assert (bdir / "mosquitto.conf").read_text().count("allow_anonymous false") == 2
    assert main(["enrol", "pi-7", "--profile", PROFILE, "--db", str(db), "--broker-dir",
                 str(bdir), "--bundle", str(tmp_path / "b")]) == 0
    assert "enrolled pi-7" in capsys.readouterr().out
    agent = json.loads((tmp_path / "b" / "pi-7" / "agent.json").read_text())
    # the bundle is the agent's whole configuration: its key, and the state dir it lives in
    assert agent["state_dir"] == str((tmp_path / "b" / "pi-7" / "state").resolve())
    assert agent["device_key"].endswith("device.key")
    assert main(["enrol", "pi-8", "--db", str(db)]) == 2
    assert "--profile is required" in capsys.readouterr().err
    assert main(["enrol", "pi-7", "--revoke", "--db", str(db), "--broker-dir", str(bdir)]) == 0
    assert "revoked pi-7" in capsys.readouterr().out


def test_deploy_takes_the_enrolled_key_and_refuses_a_device_that_is_not(tmp_path, capsys):
    from hostcli.options import device_key_for

    _priv, pub = write_key_pair(tmp_path, "dev")
    db = tmp_path / "fleet.sqlite"
    with Registry(db) as reg:
        enrol_device(reg, "pi-9", PROFILE, public_key=pub)
    ns = argparse.Namespace(device="pi-9", db=str(db), device_key=None, unverified_reports=False)
    assert device_key_for(ns, "pi-9") == pub.read_bytes()
    assert device_key_for(argparse.Namespace(**{**vars(ns), "device_key": str(pub)}),
                          "x").key_id == load_verify_key(pub).key_id
    with pytest.raises(ConfigError, match="not enrolled"):
        device_key_for(ns, "ghost")
    with pytest.raises(ConfigError, match="not enrolled"):
        device_key_for(argparse.Namespace(**{**vars(ns), "db": str(tmp_path / "none.sqlite")}),
                       "pi-9")
    assert not (tmp_path / "none.sqlite").exists()  # looking did not create a record
    assert device_key_for(argparse.Namespace(**{**vars(ns), "unverified_reports": True}),
                          "ghost") is None
    assert "not authenticated" in capsys.readouterr().err


@pytest.mark.broker
def test_a_bundle_runs_the_real_agent_through_the_generated_broker(tmp_path):
    """Enrol with a bundle, run `paoding-agent --config agent.json`: discovered, deployed."""
    import os
    import subprocess
    import sys
    from pathlib import Path

    from tflitehelp import dense_tflite

    from fleet.gate import Gate
    from fleet.orchestrator import discover
    from fleet.publisher import deploy

    root = Path(__file__).resolve().parents[2]
    fb = FleetBroker(workdir=tmp_path / "broker")
    fb.start()
    host_key, host_pub = write_key_pair(tmp_path / "keys", "host")
    reg = Registry(tmp_path / "fleet.sqlite")
    agent = None
    try:
        enrol_device(reg, "pi-e2e", PROFILE, broker_dir=fb.workdir, bundle_dir=tmp_path / "b",
                     host_public_key=host_pub, broker_url=fb.files.device_url)
        fb.reload()
        log = open(tmp_path / "agent.log", "wb")  # noqa: SIM115 - closed below
        agent = subprocess.Popen(
            [sys.executable, "-m", "agent.cli", "run", "--config",
             str(tmp_path / "b" / "pi-e2e" / "agent.json"), "--state-dir", str(tmp_path / "s")],
            cwd=root, env=dict(os.environ, PYTHONPATH=str(root)), stdout=log,
            stderr=subprocess.STDOUT)
        intake = Gate(reg.public_key)
        deadline, found = time.monotonic() + 30, {}
        while "pi-e2e" not in found and time.monotonic() < deadline:
            found = discover(fb.host_broker(), wait_s=0.5, intake=intake)
        assert "pi-e2e" in found, (tmp_path / "agent.log").read_text()[-2000:]
        assert not intake.rejected
        rep = deploy(dense_tflite((16,), inputs=8, classes=4)[0], "pi-e2e", fb.host_broker(),
                     key=host_key, device_key=reg.public_key("pi-e2e").encode(),
                     benchmark={"runs": 3, "warmup_runs": 1}, timeout=60)
        assert rep.state == "active" and rep.dropped == 0, rep.reason
    finally:
        if agent is not None:
            agent.terminate()
            agent.wait(timeout=20)
            log.close()
        reg.close()
        fb.kill()


def test_broker_config_again_keeps_the_ca_and_the_enrolled_devices(tmp_path):
    from fleet.brokerconf import enrol_broker_user

    first = write_broker_config(tmp_path / "b")
    password = enrol_broker_user(tmp_path / "b", "pi-10")
    ca = first.ca.read_bytes()
    again = write_broker_config(tmp_path / "b", max_packet_bytes=256 * 1024)
    assert again.ca.read_bytes() == ca and again.host_password is None  # no new host secret
    assert PasswordFile(again.devices_passwd).verify("pi-10", password)
    assert "max_packet_size 262144" in again.conf.read_text()
    with pytest.raises(ConfigError, match="two ports"):
        write_broker_config(tmp_path / "c", device_port=9000, host_port=9000)
    with pytest.raises(ConfigError, match="both --certfile and --keyfile"):
        write_broker_config(tmp_path / "c", certfile=first.ca)
