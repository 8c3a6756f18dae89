"""Mosquitto configuration for a fleet: listeners, TLS, password files, the ACL and limits.

``write_broker_config(DIR, ...)`` writes DIR/mosquitto.conf, DIR/acl,
DIR/devices.passwd (one line per enrolled device, PBKDF2-SHA512 as
``mosquitto_passwd`` writes it), DIR/hosts.passwd and, unless certificate
files are given, a local CA and server certificate in DIR/tls. Two listeners:

- devices (default 0.0.0.0:8883): TLS, a device's user name is its id and
  replaces its client id (so no client can take over another's session);
  with ``client_certs`` the certificate's common name is the user name;
- host (default 127.0.0.1:8884): the operators' role, its own password file
  (with ``client_certs``: a certificate whose common name is the host user).

The ACL (one block per enrolled device, see ``acl_text``) lets a device
publish only its own status, need and report and read only its own manifest
and cancel topics and the artifacts; the host role reads and writes
everything under the root. DIR/share-group names the host processes' shared
intake group, a secret no device can guess. Anonymous clients are refused on both.
``max_packet_size`` drops any packet bigger than the largest chunk plus headers
before the broker buffers it for a subscriber.
"""

from __future__ import annotations

import base64
import fcntl
import hashlib
import os
import re
import secrets
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from core.errors import ConfigError
from core.files import write_atomic
from core.protocol import ID_PATTERN, MAX_CHUNK_BYTES, MAX_PACKET_BYTES, PROTOCOL_ROOT, check_id
from fleet.link import BROKER_INFLIGHT
from fleet.pki import CertPair, issue, make_ca, write_private

ROOT = PROTOCOL_ROOT
HOST_USER = "paoding-host"
# the largest chunk or JSON message plus headers (what the agent accepts); bigger: refused
DEFAULT_MAX_PACKET = MAX_PACKET_BYTES
PBKDF2_ITERATIONS = 1000
_USER_RE = re.compile(ID_PATTERN)  # a device's user name is its id


# --- password files ----------------------------------------------------------


def hash_password(password: str, *, iterations: int = PBKDF2_ITERATIONS,
                  salt: bytes | None = None) -> str:
    """A Mosquitto password-file hash: ``$7$iterations$salt$PBKDF2-SHA512`` (base64)."""
    salt = salt if salt is not None else secrets.token_bytes(12)
    digest = hashlib.pbkdf2_hmac("sha512", password.encode(), salt, iterations)
    return (f"$7${iterations}${base64.b64encode(salt).decode()}$"
            f"{base64.b64encode(digest).decode()}")


def check_password(password: str, hashed: str) -> bool:
    parts = hashed.split("$")
    if len(parts) != 5 or parts[1] != "7":
        return False
    salt = base64.b64decode(parts[3])
    return secrets.compare_digest(hash_password(password, iterations=int(parts[2]), salt=salt),
                                  hashed)


def new_password() -> str:
    """32 random bytes, URL-safe base64: nothing to guess, nothing to brute-force."""
    return secrets.token_urlsafe(32)


def check_user(name: str) -> str:
    if not isinstance(name, str) or not _USER_RE.fullmatch(name):
        raise ConfigError(f"invalid broker user name {name[:40]!r}: use 1-64 of A-Z a-z 0-9 _ . - "
                          "(not starting with _ . -)")
    return name


@contextmanager
def locked(path: Path) -> Iterator[None]:
    """One writer of ``path`` at a time (two enrolments must not lose each other's line)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path.with_name(path.name + ".lock"), "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        yield


class PasswordFile:
    """A Mosquitto password file: ``user:hash`` lines, rewritten atomically (mode 0600)."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)

    def entries(self) -> dict[str, str]:
        if not self.path.exists():
            return {}
        out: dict[str, str] = {}
        for n, line in enumerate(self.path.read_text().splitlines(), 1):
            if not line.strip() or line.startswith("#"):
                continue
            user, sep, hashed = line.partition(":")
            if not sep:
                raise ConfigError(f"{self.path}:{n}: not a 'user:hash' line")
            out[user] = hashed
        return out

    def _write(self, entries: dict[str, str]) -> None:
        for user in entries:
            check_user(user)  # a line the broker cannot parse never reaches the file
        text = "".join(f"{u}:{h}\n" for u, h in sorted(entries.items()))
        write_private(self.path, text.encode())

    def ensure(self) -> None:
        """Create the file empty (no user) when it does not exist."""
        if not self.path.exists():
            self._write({})

    def set(self, user: str, password: str) -> None:
        check_user(user)
        with locked(self.path):
            entries = self.entries()
            entries[user] = hash_password(password)
            self._write(entries)

    def remove(self, user: str) -> bool:
        with locked(self.path):
            entries = self.entries()
            found = entries.pop(user, None) is not None
            if found:
                self._write(entries)
        return found

    def verify(self, user: str, password: str) -> bool:
        hashed = self.entries().get(user)
        return hashed is not None and check_password(password, hashed)


# --- the ACL -----------------------------------------------------------------


def _device_acl(root: str, device_id: str) -> list[str]:
    base = f"{root}/devices/{check_user(device_id)}"
    return [f"{_DEVICE_MARK}{device_id}", f"user {device_id}",
            f"topic write {base}/status", f"topic write {base}/need",
            f"topic write {base}/report", f"topic read {base}/manifest",
            f"topic read {base}/cancel", f"topic read {root}/artifacts/#", ""]


_DEVICE_MARK = "# device "


def acl_text(root: str = ROOT, host_users: tuple[str, ...] = (HOST_USER,),
             devices: Iterable[str] = ()) -> str:
    """The ACL: the host role by user, then one block per enrolled device (module doc).

    Explicit per-device blocks instead of ``%u`` patterns: Mosquitto warns
    about a pattern without ``%u`` (the shared artifacts line), and a device
    that is not enrolled has no line at all.

    Mosquitto's ACL file does not check SUBSCRIBE (its default check allows
    every subscription and filters at delivery): a device may subscribe to
    any filter, ``$share/...`` included, and receives only what it may read.
    A shared subscription is dealt to ONE member of its group whether or not
    that member may read it, so the host's group name is a secret
    (``share-group``, written by ``write_broker_config``): a device cannot
    join a group it cannot name, and a group of its own receives nothing.
    """
    lines = [
        "# Paoding Edge fleet ACL (written by `paoding-edge broker-config` and `enrol`).",
        "# No topic line before the first 'user': anonymous clients get nothing.",
        "",
        "# The host role: reads and writes everything under the root.",
    ]
    for user in host_users:
        lines += [f"user {check_user(user)}", f"topic readwrite {root}/#", ""]
    lines += ["# Each enrolled device: publish only its own status, need and report; read",
              "# only its own manifest and cancel, and the artifacts.", ""]
    for device_id in sorted(set(devices)):
        lines += _device_acl(root, device_id)
    return "\n".join(lines)


class AclFile:
    """The generated ACL file: the enrolled devices' blocks, rewritten whole and atomically."""

    def __init__(self, path: str | os.PathLike[str], host_users: tuple[str, ...] = (HOST_USER,),
                 root: str = ROOT) -> None:
        self.path, self.host_users, self.root = Path(path), host_users, root

    def devices(self) -> set[str]:
        if not self.path.exists():
            return set()
        return {line[len(_DEVICE_MARK):].strip() for line in self.path.read_text().splitlines()
                if line.startswith(_DEVICE_MARK)}

    def write(self, devices: Iterable[str]) -> Path:
        write_private(self.path, acl_text(self.root, self.host_users, devices).encode())
        return self.path

    def add(self, device_id: str, known: Iterable[str] = ()) -> None:
        """Add ``device_id``'s block (and ``known`` devices', e.g. from an older pattern ACL)."""
        check_user(device_id)
        with locked(self.path):
            self.write(self.devices() | set(known) | {device_id})

    def remove(self, device_id: str) -> bool:
        with locked(self.path):
            have = self.devices()
            if device_id not in have:
                return False
            self.write(have - {device_id})
        return True


# --- mosquitto.conf ----------------------------------------------------------


@dataclass(frozen=True)
class Listener:
    port: int
    bind: str


@dataclass(frozen=True)
class BrokerFiles:
    """What ``write_broker_config`` wrote (paths), for the operator and for tests."""

    directory: Path
    conf: Path
    acl: Path
    devices_passwd: Path
    hosts_passwd: Path
    devices: Listener
    host: Listener
    tls: bool
    client_certs: bool
    ca: Path | None = None
    ca_key: Path | None = None
    host_password: Path | None = None
    host_cert: CertPair | None = None  # with client certificates: the host role's own
    share_group: str | None = None  # the secret name of the host processes' shared intake

    @property
    def device_url(self) -> str:
        return f"{'mqtts' if self.tls else 'mqtt'}://{self.devices.bind}:{self.devices.port}"

    @property
    def host_url(self) -> str:
        return f"{'mqtts' if self.tls else 'mqtt'}://{self.host.bind}:{self.host.port}"


def _tls_lines(tls: bool, cert: Path | None, key: Path | None, ca: Path | None,
               client_certs: bool) -> list[str]:
    if not tls:
        return []
    assert cert is not None and key is not None
    lines = [f"certfile {cert}", f"keyfile {key}", "tls_version tlsv1.2"]
    if ca is not None:
        lines.append(f"cafile {ca}")
    if client_certs:
        lines += ["require_certificate true", "use_identity_as_username true"]
    return lines


def write_broker_config(
    directory: str | os.PathLike[str],
    *,
    device_port: int = 8883,
    device_bind: str = "0.0.0.0",
    host_port: int = 8884,
    host_bind: str = "127.0.0.1",
    tls: bool = True,
    server_names: tuple[str, ...] = ("localhost", "127.0.0.1"),
    certfile: str | os.PathLike[str] | None = None,
    keyfile: str | os.PathLike[str] | None = None,
    cafile: str | os.PathLike[str] | None = None,
    client_certs: bool = False,
    host_users: tuple[str, ...] = (HOST_USER,),
    max_packet_bytes: int = DEFAULT_MAX_PACKET,
    max_queued_messages: int = 10_000,
    max_queued_bytes: int = 256 * 1024 * 1024,
    max_inflight: int = BROKER_INFLIGHT,
    persistence: bool = True,
    autosave_s: int = 5,
    run_as: str | None = None,
    owner: str | None = None,
    log_file: str | os.PathLike[str] | None = None,
) -> BrokerFiles:
    """Write the fleet's Mosquitto configuration into ``directory`` (see the module doc).

    Existing password files are kept (enrolled devices stay enrolled); a host
    password is made for each host user that has none and written to
    DIR/<user>.password (0600). Mosquitto started as root drops to its own
    user before it reads the password files, the ACL and the server key: with
    ``owner`` (that user, e.g. ``mosquitto``) they and DIR/data (persistence)
    are given to it; the files stay mode 0600.
    """
    d = Path(directory).resolve()
    d.mkdir(parents=True, exist_ok=True)
    for port in (device_port, host_port):
        if not 0 < port < 65536:
            raise ConfigError(f"port {port} outside 1..65535")
    if device_port == host_port:
        raise ConfigError(f"the device and host listeners need two ports (both {device_port})")
    if not 1024 <= max_packet_bytes <= 256 * 1024 * 1024:
        raise ConfigError(f"max packet size {max_packet_bytes} outside 1 KiB..256 MiB")
    if max_packet_bytes < MAX_CHUNK_BYTES // 16:
        raise ConfigError(f"max packet size {max_packet_bytes} is below a 64 KiB chunk")
    if client_certs and not tls:
        raise ConfigError("client certificates need TLS")
    if not 1 <= autosave_s <= 3600:
        raise ConfigError(f"autosave interval {autosave_s}s outside 1..3600")
    given = [certfile, keyfile]
    if any(given) and not all(given):
        raise ConfigError("give both --certfile and --keyfile (or neither: a local CA is made)")
    for user in host_users:
        check_user(user)
    cert = key = ca = ca_key = None
    if tls:
        if certfile:
            cert, key = Path(certfile).resolve(), Path(keyfile).resolve()  # type: ignore[arg-type]
            for p in (cert, key):
                if not p.is_file():
                    raise ConfigError(f"no such file {p}")
            ca = Path(cafile).resolve() if cafile else None
        else:
            tls_dir = d / "tls"
            pair = (CertPair(tls_dir / "ca.crt", tls_dir / "ca.key")
                    if (tls_dir / "ca.crt").exists() else make_ca(tls_dir))
            server = issue(pair, tls_dir / "server", server_names[0] if server_names else "broker",
                           server_names=server_names or ("localhost",))
            cert, key, ca, ca_key = server.cert, server.key, pair.cert, pair.key
        if client_certs and ca is None:
            raise ConfigError("client certificates need the CA that signs them (--cafile)")
    devices_pw, hosts_pw = PasswordFile(d / "devices.passwd"), PasswordFile(d / "hosts.passwd")
    acl_file = AclFile(d / "acl", host_users)
    with locked(acl_file.path):  # enrolled devices stay (an older pattern ACL: from passwd)
        acl = acl_file.write(acl_file.devices() | set(devices_pw.entries()))
    share_group = d / "share-group"
    if not share_group.exists():  # the host processes' intake group: a name devices cannot guess
        write_private(share_group, f"hosts-{secrets.token_hex(16)}\n".encode())
    devices_pw.ensure()
    host_password = None
    have = hosts_pw.entries()
    for user in host_users:
        if user not in have:
            password = new_password()
            hosts_pw.set(user, password)
            host_password = d / f"{user}.password"
            write_private(host_password, (password + "\n").encode())
    hosts_pw.ensure()
    (d / "data").mkdir(exist_ok=True)
    if owner is not None:
        _give(owner, [devices_pw.path, hosts_pw.path, acl, d / "data",
                      *([key] if key is not None and not certfile else [])])
    log = Path(log_file) if log_file else None
    general = [
        "# Paoding Edge fleet broker (written by `paoding-edge broker-config`)",
        "per_listener_settings true",
        f"persistence {'true' if persistence else 'false'}",
        f"persistence_location {d / 'data'}/",
        # saved every few seconds, not only at a clean exit: after a kill -9 the broker
        # reloads retained messages at most this old (Mosquitto's default is 30 min)
        f"autosave_interval {autosave_s}",
        f"max_packet_size {max_packet_bytes}",
        f"message_size_limit {max_packet_bytes}",
        f"max_inflight_messages {max_inflight}",
        f"max_queued_messages {max_queued_messages}",
        f"max_queued_bytes {max_queued_bytes}",
        "max_keepalive 600",
        "persistent_client_expiration 30d",
        "check_retain_source true",
        "retain_available true",
    ]
    if run_as:
        general.append(f"user {run_as}")
    if log:
        general += [f"log_dest file {log}", "log_type error", "log_type warning",
                    "log_type notice", "log_type information"]
    devices_listener = [
        "",
        "# devices: TLS, one password (or certificate) each, client id = user name",
        f"listener {device_port} {device_bind}",
        "allow_anonymous false",
        "allow_zero_length_clientid false",
        "use_username_as_clientid true",
        f"acl_file {acl}",
        *([] if client_certs else [f"password_file {devices_pw.path}"]),
        *_tls_lines(tls, cert, key, ca, client_certs),
    ]
    host_cert = None
    if client_certs and ca_key is not None:  # our CA: the host role gets a certificate too
        host_cert = CertPair(d / "tls" / f"{host_users[0]}.crt", d / "tls" / f"{host_users[0]}.key")
        if not host_cert.cert.exists():
            host_cert = issue(CertPair(ca, ca_key), d / "tls" / host_users[0], host_users[0])
    host_listener = [
        "",
        "# host: the operators' role, its own password file (or certificate)",
        f"listener {host_port} {host_bind}",
        "allow_anonymous false",
        f"acl_file {acl}",
        *([] if client_certs else [f"password_file {hosts_pw.path}"]),
        *_tls_lines(tls, cert, key, ca, client_certs),
    ]
    conf = write_atomic(d / "mosquitto.conf", "\n".join(general + devices_listener
                                                         + host_listener) + "\n")
    return BrokerFiles(d, conf, acl, devices_pw.path, hosts_pw.path,
                       Listener(device_port, device_bind), Listener(host_port, host_bind),
                       tls, client_certs, ca, ca_key, host_password, host_cert,
                       share_group.read_text().strip())


def _give(user: str, paths: list[Path]) -> None:
    """chown ``paths`` to ``user`` (the broker's own user); ConfigError if impossible."""
    import pwd

    try:
        entry = pwd.getpwnam(user)
    except KeyError:
        raise ConfigError(f"no user {user!r} on this machine for the broker's files") from None
    for path in paths:
        try:
            os.chown(path, entry.pw_uid, entry.pw_gid)
        except OSError as exc:
            raise ConfigError(f"cannot give {path} to {user}: {exc.strerror} "
                              "(run broker-config as root, or without --owner)") from None


def enrol_broker_user(directory: str | os.PathLike[str], device_id: str) -> str:
    """Give ``device_id`` a fresh broker password in DIR/devices.passwd; return the password.

    The broker reads the file again on SIGHUP (``systemctl reload mosquitto``).
    """
    check_id(device_id)
    pw = PasswordFile(Path(directory) / "devices.passwd")
    password = new_password()
    pw.set(device_id, password)
    grant_device(directory, device_id)
    return password


def grant_device(directory: str | os.PathLike[str], device_id: str) -> None:
    """Give ``device_id`` its block in DIR/acl (a password or a certificate lets it in)."""
    d = Path(directory)
    # the password file's users are enrolled too (an ACL written before per-device blocks
    # granted them by pattern): they keep their blocks
    AclFile(d / "acl", _host_users(d)).add(check_id(device_id),
                                           PasswordFile(d / "devices.passwd").entries())


def revoke_broker_user(directory: str | os.PathLike[str], device_id: str) -> list[str]:
    """Remove the device's password and ACL block from DIR; what was removed."""
    d = Path(directory)
    passwd = PasswordFile(d / "devices.passwd")
    if not passwd.path.exists():
        raise ConfigError(f"{d} has no devices.passwd (not a broker-config directory)")
    removed = ["broker password"] if passwd.remove(device_id) else []
    if AclFile(d / "acl", _host_users(d)).remove(device_id):
        removed.append("broker ACL")
    return removed


def _host_users(directory: str | os.PathLike[str]) -> tuple[str, ...]:
    users = tuple(PasswordFile(Path(directory) / "hosts.passwd").entries())
    return users or (HOST_USER,)
