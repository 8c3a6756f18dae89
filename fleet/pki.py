"""A small local certificate authority for a fleet's broker: CA, server and client certificates.

For a fleet that has no PKI of its own (and for tests): ``make_ca`` writes a
self-signed CA (EC P-256), ``issue`` signs a server certificate (with the
broker's host names and addresses as subject alternative names) or a client
certificate whose common name is the device id (the broker then uses it as
the user name). Private keys are written mode 0600. A fleet with its own CA
gives its files to ``paoding-edge broker-config`` instead.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from core.errors import KeyFileError
from core.files import fsync_dir, write_atomic

CA_DAYS = 3650
LEAF_DAYS = 825


@dataclass(frozen=True)
class CertPair:
    cert: Path
    key: Path


def write_private(path: Path, data: bytes) -> None:
    """Replace a secret file in one step: mode 0600 from its creation, fsynced, renamed.

    A crash leaves the old file or the new one, never a mix; the owner is kept
    when root rewrites it (the broker's user keeps reading its files).
    """
    owner = path.stat() if path.exists() else None
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)  # mode 0600
    try:
        with os.fdopen(fd, "wb") as f:
            if owner is not None and os.geteuid() == 0:
                os.fchown(f.fileno(), owner.st_uid, owner.st_gid)
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    fsync_dir(path.parent)


def _key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())


def _name(common_name: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, "Paoding Edge fleet"),
                      x509.NameAttribute(NameOID.COMMON_NAME, common_name)])


def make_ca(directory: str | os.PathLike[str], name: str = "Paoding Edge fleet CA") -> CertPair:
    """Write DIR/ca.crt and DIR/ca.key (0600): a self-signed CA for the fleet's broker."""
    d = Path(directory)
    key = ec.generate_private_key(ec.SECP256R1())
    now = dt.datetime.now(dt.timezone.utc)
    cert = (
        x509.CertificateBuilder()
        .subject_name(_name(name)).issuer_name(_name(name))
        .public_key(key.public_key()).serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=CA_DAYS))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(x509.KeyUsage(False, False, False, False, False, True, True, False, False),
                       critical=True)
        .sign(key, hashes.SHA256())
    )
    pair = CertPair(d / "ca.crt", d / "ca.key")
    write_private(pair.key, _key_pem(key))
    write_atomic(pair.cert, cert.public_bytes(serialization.Encoding.PEM))
    return pair


def _load_ca(ca: CertPair) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    try:
        cert = x509.load_pem_x509_certificate(ca.cert.read_bytes())
        key = serialization.load_pem_private_key(ca.key.read_bytes(), password=None)
    except (OSError, ValueError) as exc:
        raise KeyFileError(f"cannot load the CA {ca.cert} / {ca.key}: {exc}") from None
    if not isinstance(key, ec.EllipticCurvePrivateKey):
        raise KeyFileError(f"{ca.key} is not an EC private key")
    return cert, key


def issue(ca: CertPair, out: str | os.PathLike[str], common_name: str, *,
          server_names: tuple[str, ...] = ()) -> CertPair:
    """Sign OUT.crt / OUT.key (0600) with the CA.

    With ``server_names`` (host names or IP addresses) it is a server
    certificate for the broker; without, a client certificate whose common
    name is ``common_name`` (the device id or the host's user name).
    """
    ca_cert, ca_key = _load_ca(ca)
    key = ec.generate_private_key(ec.SECP256R1())
    now = dt.datetime.now(dt.timezone.utc)
    builder = (
        x509.CertificateBuilder()
        .subject_name(_name(common_name)).issuer_name(ca_cert.subject)
        .public_key(key.public_key()).serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=LEAF_DAYS))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
    )
    if server_names:
        alt: list[x509.GeneralName] = []
        for n in server_names:
            try:
                alt.append(x509.IPAddress(ipaddress.ip_address(n)))
            except ValueError:
                alt.append(x509.DNSName(n))
        builder = builder.add_extension(x509.SubjectAlternativeName(alt), critical=False)
        usage = ExtendedKeyUsageOID.SERVER_AUTH
    else:
        usage = ExtendedKeyUsageOID.CLIENT_AUTH
    builder = builder.add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
    cert = builder.sign(ca_key, hashes.SHA256())
    base = Path(out)
    pair = CertPair(base.with_name(base.name + ".crt"), base.with_name(base.name + ".key"))
    write_private(pair.key, _key_pem(key))
    write_atomic(pair.cert, cert.public_bytes(serialization.Encoding.PEM))
    return pair
