"""TLS and username/password against a real Mosquitto with its own certificates."""

from __future__ import annotations

import datetime
import ipaddress
import subprocess

import pytest
from mosquitto import Mosquitto

from agent.service import Agent, AgentSettings
from core.mqtt import Broker, BrokerUnavailable, MqttClient
from fleet.publisher import deploy

pytestmark = [pytest.mark.broker, pytest.mark.timeout(60)]


def make_certs(d):
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    now = datetime.datetime.now(datetime.timezone.utc)

    def cert(subject, issuer, pub, signer, ca, san=None):
        b = (x509.CertificateBuilder().subject_name(subject).issuer_name(issuer)
             .public_key(pub).serial_number(x509.random_serial_number())
             .not_valid_before(now - datetime.timedelta(days=1))
             .not_valid_after(now + datetime.timedelta(days=2))
             .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True))
        if san:
            b = b.add_extension(x509.SubjectAlternativeName(san), critical=False)
        return b.sign(signer, hashes.SHA256())

    def pem_key(k):
        return k.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                               serialization.NoEncryption())

    ca_key, srv_key = ec.generate_private_key(ec.SECP256R1()), ec.generate_private_key(
        ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "paoding test CA")])
    srv_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")])
    ca = cert(ca_name, ca_name, ca_key.public_key(), ca_key, True)
    srv = cert(srv_name, ca_name, srv_key.public_key(), ca_key, False,
               [x509.IPAddress(ipaddress.ip_address("127.0.0.1"))])
    (d / "ca.pem").write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    (d / "server.pem").write_bytes(srv.public_bytes(serialization.Encoding.PEM))
    (d / "server.key").write_bytes(pem_key(srv_key))
    return d / "ca.pem"


@pytest.fixture
def tls_broker(tmp_path):
    d = tmp_path / "tls"
    d.mkdir()
    ca = make_certs(d)
    subprocess.run(["mosquitto_passwd", "-b", "-c", str(d / "passwd"), "pi", "s3cret"],
                   check=True, capture_output=True)
    b = Mosquitto(workdir=tmp_path / "mq", extra_config="\n".join([
        f"certfile {d / 'server.pem'}", f"keyfile {d / 'server.key'}",
        "allow_anonymous false", f"password_file {d / 'passwd'}"]))
    b.start()
    yield b, ca
    b.kill()


def test_tls_with_password(tls_broker, tmp_path, keys, tiny_model):
    b, ca = tls_broker
    broker = Broker(host="127.0.0.1", port=b.port, tls=True, ca_file=str(ca),
                    username="pi", password="s3cret")
    assert Broker.from_url(f"mqtts://pi:s3cret@127.0.0.1:{b.port}", ca_file=str(ca)) == broker
    agent = Agent(AgentSettings(device_id="pi-tls", broker=broker, state_dir=tmp_path / "s",
                                trust=keys["trust"]))
    agent.start(wait_connected=10)
    try:
        rep = deploy(tiny_model, "pi-tls", broker, key=keys["private"], timeout=30)
        assert rep.ok, rep.reason
    finally:
        agent.stop()
    wrong = Broker(host="127.0.0.1", port=b.port, tls=True, ca_file=str(ca), username="pi",
                   password="nope")
    with pytest.raises(BrokerUnavailable, match=f"127.0.0.1:{b.port}.*(password|authorised)"):
        MqttClient(wrong, "bad-login").connect(timeout=5)
    with pytest.raises(BrokerUnavailable, match=f"127.0.0.1:{b.port}"):
        MqttClient(Broker(port=b.port, tls=True, username="pi", password="s3cret"),
                   "untrusted-ca").connect(timeout=5)  # the system CAs do not know this one
