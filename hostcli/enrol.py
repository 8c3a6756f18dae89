"""`paoding-edge enrol`: give a device its identity (key, broker credentials), or revoke it."""

from __future__ import annotations

import argparse

from hostcli.options import add_db_argument, add_profile_argument


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("device", help="the device id (also its broker user name)")
    parser.add_argument("--profile", help="the device's profile id (required to enrol)")
    parser.add_argument("--public-key", metavar="PEM",
                        help="the device's Ed25519 public key (`paoding-agent keygen` prints it; "
                             "'-': read it from standard input); without it the host makes "
                             "the pair and writes it to --bundle")
    add_db_argument(parser)
    add_profile_argument(parser)
    parser.add_argument("--broker-dir", metavar="DIR",
                        help="the directory `paoding-edge broker-config` wrote: the device gets "
                             "a broker password there (reload the broker afterwards; default: "
                             "the broker profile's)")
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
    parser.add_argument("--broker-url", help="the devices' broker URL, recorded in the bundle "
                        "(default: the broker profile's device listener)")
    parser.add_argument("--state-dir", metavar="DIR",
                        help="the agent's state directory on the device, recorded in agent.json "
                        "(the one `paoding-agent keygen --state-dir` wrote the key to; default: "
                        "INSTALL_DIR/state)")
    parser.add_argument("--revoke", action="store_true",
                        help="forget the device's key and remove its broker password")


def run(args: argparse.Namespace) -> int:
    from core.errors import ConfigError
    from fleet.enrol import enrol_device, revoke_device
    from fleet.registry import Registry

    profile = args.profile_data
    broker_dir = args.broker_dir or profile.get("broker_dir")
    broker_url = args.broker_url or profile.get("device_broker")
    with Registry(args.db) as registry:
        if args.revoke:
            removed = revoke_device(registry, args.device, broker_dir)
            print(f"revoked {args.device}: {', '.join(removed)} removed")
            if broker_dir:
                print("reload the broker so it reads the password file again "
                      "(systemctl reload mosquitto, or kill -HUP its pid)")
            return 0
        if not args.profile:
            raise ConfigError("--profile is required to enrol a device")
        e = enrol_device(registry, args.device, args.profile, public_key=args.public_key,
                         broker_dir=broker_dir, bundle_dir=args.bundle,
                         host_public_key=args.host_key, broker_url=broker_url,
                         client_cert=args.client_cert, install_dir=args.install_dir,
                         state_dir=args.state_dir)
    print(f"enrolled {e.device_id} ({e.profile}) in {args.db}: device key {e.key_id}, "
          f"broker user {e.broker_user}")
    if e.bundle is not None:
        print(f"  bundle:   {e.bundle}/ ({', '.join(sorted(e.files.values()))}); copy it to "
              "the device and keep it private")
        print(f"  on the device: paoding-agent run --config "
              f"{args.install_dir or e.bundle}/agent.json")
    elif e.password is not None:
        print(f"  password: {e.password}  (shown once; give it to the device)")
    if broker_dir:
        print("  reload the broker so it reads the password file again "
              "(systemctl reload mosquitto, or kill -HUP its pid)")
    return 0
