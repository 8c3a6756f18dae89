"""The broker itself enforces who may say what: a real Mosquitto with the generated config."""

from __future__ import annotations

import time

import pytest
from trustbroker import FleetBroker, Inbox

from core.errors import BrokerUnavailable
from core.mqtt import Broker, MqttClient
from fleet.brokerconf import PasswordFile, acl_text, check_password, hash_password

R = "paoding/v2"


@pytest.fixture(scope="module")
def fleet_broker(tmp_path_factory):
    b = FleetBroker(workdir=tmp_path_factory.mktemp("fleet-broker"))
    b.start()
    b.passwords = {d: b.enrol(d) for d in ("dev-a", "dev-b")}
    b.reload()
    yield b
    b.kill()


def _device(b: FleetBroker, device_id: str, client_id: str | None = None) -> MqttClient:
    c = MqttClient(b.device_broker(device_id, b.passwords[device_id]), client_id or device_id,
                   clean_session=True)
    c.connect(timeout=10)
    return c


def test_password_hash_is_mosquittos_pbkdf2_format():
    h = hash_password("secret", iterations=101, salt=b"0123456789ab")
    assert h.startswith("$7$101$MDEyMzQ1Njc4OWFi$") and check_password("secret", h)
    assert not check_password("Secret", h) and not check_password("secret", "$6$x$y")


def test_acl_grants_devices_only_their_own_topics():
    text = acl_text(devices=["dev-a"])
    block = text.split("user dev-a\n")[1]
    assert "topic write paoding/v2/devices/dev-a/status" in block
    assert "topic read paoding/v2/devices/dev-a/manifest" in block
    assert "topic read paoding/v2/artifacts/#" in block
    assert "write paoding/v2/artifacts" not in text and "pattern" not in text
    assert "dev-b" not in text  # a device that is not enrolled has no line at all
    before_user = text.split("\nuser ")[0]
    assert "\ntopic " not in before_user  # nothing for anonymous clients


def test_the_generated_acl_loads_without_warnings(fleet_broker):
    b = fleet_broker
    b.reload()  # the ACL with both devices' blocks, read again
    with Inbox(b.host_broker(), "host-after-reload", f"{R}/devices/+/status") as host:
        a = _device(b, "dev-a")
        a.publish(f"{R}/devices/dev-a/status", b"after reload", qos=1).wait(5)
        assert host.wait_for(f"{R}/devices/dev-a/status")  # the reload has happened
        a.close()
    log = (b.workdir / "mosquitto.log").read_text()
    assert "Reloading config" in log
    assert [line for line in log.splitlines() if "Warning" in line] == []


def test_a_device_cannot_take_the_hosts_shared_intake(fleet_broker):
    """A device's $share subscription (any group it can name) gets nothing, and costs the host
    nothing: with the ACL file alone the broker dealt it half of another device's messages."""
    b = fleet_broker
    group = b.files.share_group
    assert group and group.startswith("hosts-") and len(group) >= 38
    intake = f"{R}/devices/+/+"
    host_got: list[str] = []
    host = MqttClient(b.host_broker(), "host-intake", clean_session=True)
    host.subscribe(f"$share/{group}/{intake}", lambda t, _p: host_got.append(t))
    host.connect(timeout=10)
    thief_got: list[str] = []
    thief = MqttClient(b.device_broker("dev-a", b.passwords["dev-a"]), "dev-a",
                       clean_session=True)
    for f in (f"$share/hosts/{intake}", f"$share/paoding/{intake}", f"$share/x/{R}/#",
              f"{R}/devices/dev-b/report", f"{R}/#", "#"):
        thief.subscribe(f, lambda t, _p: thief_got.append(t))
    thief.connect(timeout=10)
    other = _device(b, "dev-b")
    try:
        for i in range(40):
            other.publish(f"{R}/devices/dev-b/report", b"r%d" % i, qos=1).wait(5)
        other.publish(f"{R}/devices/dev-b/status", b"last", qos=1).wait(5)
        deadline = time.monotonic() + 10
        while f"{R}/devices/dev-b/status" not in host_got and time.monotonic() < deadline:
            time.sleep(0.02)
        assert host_got.count(f"{R}/devices/dev-b/report") == 40
        assert thief_got == []
    finally:
        for c in (host, thief, other):
            c.close()


def test_anonymous_and_wrong_credentials_are_refused(fleet_broker):
    b = fleet_broker
    cases = [
        (b.device_broker(None, None), "anon"),
        (b.device_broker("dev-a", "wrong"), "dev-a"),
        (b.device_broker("dev-z", b.passwords["dev-a"]), "dev-z"),
    ]
    host = b.host_broker()
    # a device's password does not open the host listener
    cases.append((host.__class__(**{**host.__dict__, "username": "dev-a",
                                    "password": b.passwords["dev-a"]}), "dev-a-on-host"))
    cases.append((host.__class__(**{**host.__dict__, "username": None, "password": None}),
                  "anon-on-host"))
    for broker, cid in cases:
        c = MqttClient(broker, cid, clean_session=True)
        with pytest.raises(BrokerUnavailable, match="refused"):
            c.connect(timeout=10)


def test_broker_refuses_device_a_publishing_on_b_topics(fleet_broker):
    b = fleet_broker
    with Inbox(b.host_broker(), "host-watch", f"{R}/#") as host:
        a = _device(b, "dev-a")
        try:
            denied = [f"{R}/devices/dev-b/status", f"{R}/devices/dev-b/report",
                      f"{R}/devices/dev-b/need", f"{R}/devices/dev-a/manifest",
                      f"{R}/devices/dev-b/manifest", f"{R}/devices/dev-a/cancel",
                      f"{R}/artifacts/{'ab' * 32}/0", f"{R}/devices/dev-a/other", "elsewhere/x"]
            for topic in denied:
                a.publish(topic, b"forged", qos=1).wait(5)
            a.publish(f"{R}/devices/dev-a/status", b"mine", qos=1).wait(5)
            # published after the denied ones: had any passed, it would have come first
            assert host.wait_for(f"{R}/devices/dev-a/status")
            assert [t for t in host.topics() if t in denied] == []
        finally:
            a.close()


def test_device_reads_only_its_own_manifest_and_the_artifacts(fleet_broker):
    b = fleet_broker
    a = MqttClient(b.device_broker("dev-a", b.passwords["dev-a"]), "dev-a", clean_session=True)
    got: list[str] = []
    for f in (f"{R}/devices/dev-a/manifest", f"{R}/devices/dev-b/manifest",
              f"{R}/devices/dev-b/report", f"{R}/artifacts/#"):
        a.subscribe(f, lambda t, _p: got.append(t))
    a.connect(timeout=10)
    host = MqttClient(b.host_broker(), "host-pub", clean_session=True)
    host.connect(timeout=10)
    try:
        for topic in (f"{R}/devices/dev-b/manifest", f"{R}/devices/dev-b/report",
                      f"{R}/artifacts/{'cd' * 32}/0", f"{R}/devices/dev-a/manifest"):
            host.publish(topic, b"x", qos=1).wait(5)
        deadline = time.monotonic() + 5
        while f"{R}/devices/dev-a/manifest" not in got and time.monotonic() < deadline:
            time.sleep(0.02)  # dev-a's manifest went last: whatever passed came before it
        assert sorted(got) == sorted([f"{R}/artifacts/{'cd' * 32}/0",
                                      f"{R}/devices/dev-a/manifest"])
    finally:
        a.close()
        host.close()


def test_a_device_cannot_take_over_another_devices_client_id(fleet_broker):
    b = fleet_broker
    victim = _device(b, "dev-b", client_id="dev-b")
    kicked: list[int] = []
    victim.on_disconnect(lambda: kicked.append(1))
    try:
        intruder = _device(b, "dev-a", client_id="dev-b")  # its client id becomes "dev-a"
        # a take-over would have closed the victim's connection before the intruder's
        # CONNACK: a round trip of the victim's after it sees no disconnect in between
        victim.publish(f"{R}/devices/dev-b/status", b"still here", qos=1).wait(5)
        assert victim.connected and kicked == []
        intruder.close()
    finally:
        victim.close()


def test_oversized_packet_is_refused_by_the_broker(fleet_broker):
    b = fleet_broker
    with Inbox(b.device_broker("dev-a", b.passwords["dev-a"]), "dev-a",
               f"{R}/devices/dev-a/manifest") as a:
        host = MqttClient(b.host_broker(), "host-big", clean_session=True)
        host.connect(timeout=10)
        try:
            host.publish(f"{R}/devices/dev-a/manifest", b"x" * (2 * 1024 * 1024), qos=0)
        finally:
            host.close()
        host = MqttClient(b.host_broker(), "host-small", clean_session=True)
        host.connect(timeout=10)
        host.publish(f"{R}/devices/dev-a/manifest", b"small", qos=1).wait(5)
        host.close()
        assert a.wait_for(f"{R}/devices/dev-a/manifest")
        # the small one, sent after, arrived alone: the broker dropped the big one
        assert [p for _t, p in a.messages] == [b"small"]


def test_enrolment_keeps_other_devices_and_revocation_locks_out(fleet_broker, tmp_path):
    pw = PasswordFile(tmp_path / "p")
    pw.set("d1", "one")
    pw.set("d2", "two")
    assert pw.verify("d1", "one") and pw.verify("d2", "two") and not pw.verify("d1", "two")
    assert pw.remove("d1") and not pw.remove("d1") and list(pw.entries()) == ["d2"]
    assert (tmp_path / "p").stat().st_mode & 0o077 == 0



def test_started_as_root_mosquitto_reads_the_files_given_to_its_user(tmp_path):
    """Mosquitto drops to its own user before reading the password files and the ACL."""
    import os
    import shutil
    import subprocess
    import tempfile

    from mosquitto import free_port, mosquitto_binary

    from core.errors import ConfigError
    from fleet.brokerconf import enrol_broker_user, write_broker_config

    if os.geteuid() != 0:  # only root may give files away: a clear error otherwise
        with pytest.raises(ConfigError, match="mosquitto"):
            write_broker_config(tmp_path / "b", owner="mosquitto")
        return
    d = tempfile.mkdtemp(prefix="paoding-broker-", dir="/tmp")  # the broker's user can enter
    os.chmod(d, 0o755)
    port, host_port = free_port(), free_port()
    try:
        files = write_broker_config(d, device_port=port, device_bind="127.0.0.1",
                                    host_port=host_port, owner="mosquitto")
        password = enrol_broker_user(d, "dev-a")  # rewriting keeps the owner
        assert os.stat(files.devices_passwd).st_uid == os.stat(files.acl).st_uid != 0
        assert os.stat(files.devices_passwd).st_mode & 0o077 == 0
        proc = subprocess.Popen([mosquitto_binary(), "-c", str(files.conf)],
                                stderr=subprocess.PIPE)
        try:
            c = MqttClient(Broker(port=port, tls=True, ca_file=str(files.ca), username="dev-a",
                                  password=password), "dev-a", clean_session=True)
            deadline = time.monotonic() + 10
            while True:
                try:
                    c.connect(timeout=5)
                    break
                except BrokerUnavailable:
                    assert proc.poll() is None, proc.stderr.read().decode()
                    assert time.monotonic() < deadline
                    time.sleep(0.1)
            c.close()
        finally:
            proc.terminate()
            proc.wait(timeout=10)
    finally:
        shutil.rmtree(d, ignore_errors=True)


def test_mqtt5_device_is_told_not_authorised(fleet_broker):
    """On MQTT 5 the broker answers a denied publish with reason code 0x87 (not authorised)."""
    import threading

    import paho.mqtt.client as paho
    from paho.mqtt.enums import CallbackAPIVersion, MQTTProtocolVersion

    b = fleet_broker
    acks: dict[int, int] = {}
    done = threading.Event()
    c = paho.Client(CallbackAPIVersion.VERSION2, client_id="dev-a",
                    protocol=MQTTProtocolVersion.MQTTv5)
    c.username_pw_set("dev-a", b.passwords["dev-a"])
    c.tls_set(ca_certs=str(b.files.ca))

    def on_publish(_c, _u, mid, reason_code, _p) -> None:  # noqa: ANN001
        acks[mid] = reason_code.value
        if len(acks) == 3:
            done.set()

    c.on_publish = on_publish
    c.connect(b.host, b.port)
    c.loop_start()
    try:
        mids = {topic: c.publish(topic, b"x", qos=1).mid for topic in (
            f"{R}/devices/dev-b/report", f"{R}/artifacts/{'ef' * 32}/0",
            f"{R}/devices/dev-a/report")}
        assert done.wait(10)
    finally:
        c.loop_stop()
        c.disconnect()
    assert acks[mids[f"{R}/devices/dev-b/report"]] == 0x87
    assert acks[mids[f"{R}/artifacts/{'ef' * 32}/0"]] == 0x87
    # its own topic: accepted (0x10: accepted, no subscriber yet)
    assert acks[mids[f"{R}/devices/dev-a/report"]] in (0, 0x10)
