"""`paoding-edge enrol`: give a device its identity (key, broker credentials), or revoke it."""

from __future__ import annotations

import argparse
import os


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("device", help="the device id (also its broker user name)")
    parser.add_argument("--profile", help="the device's profile id (required to enrol)")
    parser.add_argument("--public-key", metavar="PEM",
                        help="the device's Ed25519 public key (`paoding-agent keygen` prints it; "
                             "'-': read it from standard input); without it the host makes "
                             "the pair and writes it to --bundle")
    parser.add_argument("--db", default=os.environ.get("PAODING_DB", "fleet.sqlite"),
                        help="the fleet record (SQLite; env PAODING_DB; default fleet.sqlite)")
    parser.add_argument("--broker-dir", metavar="DIR",
                        help="the directory `paoding-edge broker-config` wrote: the device gets "
                             "a broker password there (reload the broker afterwards)")
    parser.add_argument("--client-cert", action="store_true",
                        help="issue a client certificate from DIR/tls/ca.* instead of a password")
    parser.add_argument("--bundle", metavar="DIR",
                        help="write DIR/DEVICE/: credentials, CA, host key, device key and "
                             "agent.json (for `paoding-agent run --config`)")
    parser.add_argument("--install-dir", metavar="DIR",
                        help="where the bundle will be on the device (the paths in agent.json; "
                             "default: the bundle directory)")
    parser.add_argument("--host-key", metavar="PUB",
                        help="the host's public signing key to put in the bundle (the agent "
                             "trusts it)")
    parser.add_argument("--broker-url", help="the devices' broker URL, recorded in the bundle")
    parser.add_argument("--revoke", action="store_true",
                        help="forget the device's key and remove its broker password")


def run(args: argparse.Namespace) -> int:
    from core.errors import ConfigError
    from fleet.enrol import enrol_device, revoke_device
    from fleet.registry import Registry

    with Registry(args.db) as registry:
        if args.revoke:
            removed = revoke_device(registry, args.device, args.broker_dir)
            print(f"revoked {args.device}: {', '.join(removed)} removed")
            if args.broker_dir:
                print("reload the broker so it reads the password file again "
                      "(systemctl reload mosquitto, or kill -HUP its pid)")
            return 0
        if not args.profile:
            raise ConfigError("--profile is required to enrol a device")
        e = enrol_device(registry, args.device, args.profile, public_key=args.public_key,
                         broker_dir=args.broker_dir, bundle_dir=args.bundle,
                         host_public_key=args.host_key, broker_url=args.broker_url,
                         client_cert=args.client_cert, install_dir=args.install_dir)
    print(f"enrolled {e.device_id} ({e.profile}) in {args.db}: device key {e.key_id}, "
          f"broker user {e.broker_user}")
    if e.bundle is not None:
        print(f"  bundle:   {e.bundle}/ ({', '.join(sorted(e.files.values()))}); copy it to "
              "the device and keep it private")
    elif e.password is not None:
        print(f"  password: {e.password}  (shown once; give it to the device)")
    if args.broker_dir:
        print("  reload the broker so it reads the password file again "
              "(systemctl reload mosquitto, or kill -HUP its pid)")
    return 0
