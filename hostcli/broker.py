"""`paoding-edge broker-config`: write a Mosquitto configuration for the fleet."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from fleet.brokerconf import DEFAULT_MAX_PACKET

    parser.add_argument("dir", help="where to write mosquitto.conf, acl, password files, tls/")
    parser.add_argument("--device-port", type=int, default=8883)
    parser.add_argument("--device-bind", default="0.0.0.0", help="address devices connect to")
    parser.add_argument("--host-port", type=int, default=8884)
    parser.add_argument("--host-bind", default="127.0.0.1",
                        help="address of the host role's listener (default loopback only)")
    parser.add_argument("--server-name", action="append", default=[], metavar="NAME",
                        help="a host name or IP address the broker's certificate is for "
                             "(repeat; default localhost and 127.0.0.1)")
    parser.add_argument("--certfile", help="the broker's certificate (default: a local CA "
                                           "makes one in DIR/tls)")
    parser.add_argument("--keyfile", help="the broker's private key")
    parser.add_argument("--cafile", help="the CA that signed the clients' certificates")
    parser.add_argument("--client-certs", action="store_true",
                        help="devices (and the host role) authenticate with a client "
                             "certificate (CN = device id / host user)")
    parser.add_argument("--no-tls", action="store_true",
                        help="plain TCP (tests on loopback only: credentials travel in clear)")
    parser.add_argument("--owner", default=_default_owner(),
                        help="the user Mosquitto runs as: the password files, ACL, server key "
                             "and data directory are given to it (default: 'mosquitto' when "
                             "run as root and that user exists)")
    parser.add_argument("--max-packet-bytes", type=int, default=DEFAULT_MAX_PACKET,
                        help=f"the broker drops bigger packets (default {DEFAULT_MAX_PACKET})")


def _default_owner() -> str | None:
    import os
    import pwd

    if os.geteuid() != 0:
        return None
    try:
        return pwd.getpwnam("mosquitto").pw_name
    except KeyError:
        return None


def run(args: argparse.Namespace) -> int:
    from fleet.brokerconf import HOST_USER, write_broker_config

    f = write_broker_config(
        args.dir, device_port=args.device_port, device_bind=args.device_bind,
        host_port=args.host_port, host_bind=args.host_bind, tls=not args.no_tls,
        server_names=tuple(args.server_name) or ("localhost", "127.0.0.1"),
        certfile=args.certfile, keyfile=args.keyfile, cafile=args.cafile,
        client_certs=args.client_certs, max_packet_bytes=args.max_packet_bytes,
        owner=args.owner)
    print(f"wrote {f.conf}")
    print(f"  ACL:       {f.acl} (devices: own status/need/report out, own manifest/cancel and "
          "artifacts in; host: everything)")
    print(f"  devices:   {f.device_url}  passwords in {f.devices_passwd}"
          f"{' (client certificates)' if f.client_certs else ''}")
    print(f"  host:      {f.host_url}  user {HOST_USER}, passwords in {f.hosts_passwd}")
    if f.host_password is not None:
        print(f"  host password: {f.host_password} (keep it private)")
    if f.ca is not None:
        print(f"  CA:        {f.ca}")
    if args.owner:
        print(f"  owner:     {args.owner} (reads the password files, ACL and server key)")
    profile = write_profile(f, tuple(args.server_name) or ("localhost", "127.0.0.1"))
    print(f"  profile:   {profile} (the host's connection and fleet record)")
    print(f"run: mosquitto -c {f.conf}")
    print(f"then: export PAODING_BROKER_PROFILE={profile}   # every host command reads it")
    print("enrol devices with: paoding-edge enrol DEVICE --profile P --bundle DIR")
    return 0


def write_profile(f: Any, server_names: tuple[str, ...]) -> Path:
    """DIR/host.json: the host role's connection (URL, credentials, CA), the devices' URL, the
    broker directory and the fleet record, all absolute, for PAODING_BROKER_PROFILE."""
    from core.files import write_atomic
    from fleet.brokerconf import HOST_USER

    d = Path(f.directory).resolve()
    device_host = f.devices.bind if f.devices.bind not in ("0.0.0.0", "::") else server_names[0]
    profile: dict[str, Any] = {
        "broker": f.host_url,
        "device_broker": f"{'mqtts' if f.tls else 'mqtt'}://{device_host}:{f.devices.port}",
        "broker_dir": str(d),
        "db": str(d / "fleet.sqlite"),
    }
    if f.ca is not None:
        profile["ca_file"] = str(Path(f.ca).resolve())
    if f.host_cert is not None:
        profile["cert_file"] = str(Path(f.host_cert.cert).resolve())
        profile["key_file"] = str(Path(f.host_cert.key).resolve())
    else:
        profile["username"] = HOST_USER
        profile["password_file"] = str(d / f"{HOST_USER}.password")
    if f.share_group:  # the host processes' secret shared intake group
        profile["share_group"] = f.share_group
    path = d / "host.json"
    write_atomic(path, json.dumps(profile, indent=1) + "\n")
    return path
