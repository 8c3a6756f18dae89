"""Enrolment: give a device its identity in the fleet, or take it away.

Like Mender's pre-authorisation and AWS IoT's thing registration, a device is
known to the host before it first connects. Enrolling records in the registry
the device's Ed25519 public key (from ``paoding-agent keygen`` on the device,
or a pair the host makes for provisioning) and its broker user name (its id),
gives it a broker password of its own in the broker's password file (or a
client certificate signed by the fleet CA), and can write a bundle for the
device: its credentials, the CA, the host's public key and, when the host
made it, the device key. Revoking removes the key and the broker password.
"""

from __future__ import annotations

import json
import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path

import device_profiles
from core.errors import ConfigError, KeyFileError
from core.protocol import check_id
from core.signing import SigningKey, VerifyKey, load_verify_key
from fleet.brokerconf import HOST_USER, enrol_broker_user, grant_device, revoke_broker_user
from fleet.pki import CertPair, issue, write_private
from fleet.registry import Registry


@dataclass
class Enrolment:
    """What enrolling a device produced (the password is shown once, never stored in clear)."""

    device_id: str
    profile: str
    key_id: str
    broker_user: str
    password: str | None = None
    bundle: Path | None = None
    files: dict[str, str] = field(default_factory=dict)


def read_public_key(path: str | os.PathLike[str]) -> VerifyKey:
    """A device's Ed25519 public key (PEM file, or '-' for standard input)."""
    if str(path) == "-":
        import sys

        return VerifyKey.from_pem(sys.stdin.read(), "the public key on standard input")
    key = load_verify_key(path)
    if key.alg != "ed25519":
        raise KeyFileError(f"{path}: a device key must be an Ed25519 public key, not {key.alg}")
    return key


def enrol_device(
    registry: Registry,
    device_id: str,
    profile: str,
    *,
    public_key: str | os.PathLike[str] | None = None,
    broker_dir: str | os.PathLike[str] | None = None,
    bundle_dir: str | os.PathLike[str] | None = None,
    host_public_key: str | os.PathLike[str] | None = None,
    broker_url: str | None = None,
    client_cert: bool = False,
    host_users: tuple[str, ...] = (HOST_USER,),
    install_dir: str | os.PathLike[str] | None = None,
    state_dir: str | os.PathLike[str] | None = None,
) -> Enrolment:
    """Enrol ``device_id`` (see the module doc); return what was made.

    Without ``public_key`` the host makes the device's key pair, which needs
    ``bundle_dir`` (the private key goes only into the bundle). With
    ``broker_dir`` (from ``write_broker_config``) the device gets a fresh
    password (or, with ``client_cert``, a certificate from DIR/tls/ca.*).
    The bundle's ``agent.json`` is a config file for ``paoding-agent run
    --config``; its paths point into ``install_dir``, where the bundle will be
    on the device (default: the bundle directory itself), and its
    ``state_dir`` is ``state_dir`` (default: ``install_dir``/state), so that
    ``paoding-agent run --config agent.json`` is the whole command.
    """
    check_id(device_id)
    if device_id in host_users:
        raise ConfigError(f"device id {device_id!r} is the host's broker user name")
    if device_id.startswith("paoding-host-"):  # a device's client id is its id: not the host's
        raise ConfigError(f"device id {device_id!r}: 'paoding-host-' names the host's sessions")
    if device_profiles.locate(profile) is None:
        known = ", ".join(device_profiles.list_profiles())
        raise ConfigError(f"unknown device profile {profile!r} (known: {known})")
    if public_key is None and bundle_dir is None:
        raise ConfigError("give the device's public key (--public-key, from `paoding-agent "
                          "keygen`) or a bundle directory for a key the host makes (--bundle)")
    if client_cert and broker_dir is None:
        raise ConfigError("a client certificate needs the broker directory (--broker-dir)")
    bundle = Path(bundle_dir) / device_id if bundle_dir is not None else None
    if bundle is not None and bundle.exists() and any(bundle.iterdir()):
        raise ConfigError(f"bundle {bundle} already exists (remove it to enrol again)")
    host_pub = load_verify_key(host_public_key) if host_public_key else None
    private: SigningKey | None = None
    if public_key is not None:
        verify = read_public_key(public_key)
    else:
        private = SigningKey.generate()
        verify = private.public_key()
    result = Enrolment(device_id, profile, verify.key_id, device_id, bundle=bundle)
    files: dict[str, str] = {}
    if bundle is not None:
        bundle.mkdir(parents=True, exist_ok=True)
        (bundle / "device.pub").write_text(verify.public_pem().decode())
        files["device_public_key"] = "device.pub"
        if private is not None:
            write_private(bundle / "device.key", private.private_pem())
            files["device_key"] = "device.key"
        if host_pub is not None:
            shutil.copyfile(host_public_key, bundle / "host.pub")  # type: ignore[arg-type]
            files["trust_key"] = "host.pub"
    if broker_dir is not None:
        bdir = Path(broker_dir)
        if not (bdir / "devices.passwd").exists():
            raise ConfigError(f"{bdir} has no devices.passwd: run `paoding-edge broker-config "
                              f"{bdir}` first")
        ca = CertPair(bdir / "tls" / "ca.crt", bdir / "tls" / "ca.key")
        if client_cert:
            if not ca.key.exists():
                raise ConfigError(f"no fleet CA key at {ca.key} to sign a client certificate")
            if bundle is None:
                raise ConfigError("a client certificate needs a bundle directory (--bundle)")
            issue(ca, bundle / "client", device_id)
            grant_device(bdir, device_id)
            files["cert_file"], files["key_file"] = "client.crt", "client.key"
        else:
            result.password = enrol_broker_user(bdir, device_id)
            if bundle is not None:
                write_private(bundle / "broker.password", (result.password + "\n").encode())
                files["password_file"] = "broker.password"
        if bundle is not None and ca.cert.exists():
            shutil.copyfile(ca.cert, bundle / "ca.crt")
            files["ca_file"] = "ca.crt"
    registry.set_identity(device_id, profile, verify.public_pem().decode(), device_id)
    if bundle is not None:
        where = Path(install_dir) if install_dir is not None else bundle.resolve()
        config: dict[str, object] = {
            "device_id": device_id, "profile": profile,
            "state_dir": str(Path(state_dir) if state_dir is not None else where / "state")}
        if broker_url:
            config["broker"] = broker_url
        if "password_file" in files:
            config["username"] = device_id
        for name, file in files.items():
            if name == "trust_key":
                config["trust_key"] = [str(where / file)]
            elif name != "device_public_key":
                config[name] = str(where / file)
        write_private(bundle / "agent.json",
                      (json.dumps(config, indent=1, sort_keys=True) + "\n").encode())
        files["agent_config"] = "agent.json"
    result.files = files
    return result


def revoke_device(registry: Registry, device_id: str,
                  broker_dir: str | os.PathLike[str] | None = None) -> list[str]:
    """Remove the device's broker password and ACL block, then its key; what was removed."""
    check_id(device_id)
    removed = []
    # the broker password first: it is what lets the device in, and the file is what can
    # be unreadable; a failure there leaves the registry untouched (nothing half done)
    if broker_dir is not None:
        removed += revoke_broker_user(broker_dir, device_id)
    if registry.revoke_identity(device_id):
        removed.insert(0, "public key")
    if not removed:
        raise ConfigError(f"device {device_id!r} is not enrolled")
    return removed
