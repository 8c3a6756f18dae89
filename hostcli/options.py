"""Command-line options shared by the host commands that talk to devices."""

from __future__ import annotations

import argparse
import os
from typing import Any

THRESHOLDS = (
    "max_p90_ms",
    "max_mean_ms",
    "max_peak_memory_mb",
    "min_agreement",
    "min_clean_accuracy",
    "min_robust_accuracy",
    "max_abs_deviation",
)


PROFILE_ENV = "PAODING_BROKER_PROFILE"
PROFILE_FILE = "host.json"
DEFAULT_BROKER = "mqtt://127.0.0.1:1883"
# the connection settings a broker profile may hold (the option names, with '_')
PROFILE_KEYS = ("broker", "username", "password_file", "ca_file", "cert_file", "key_file",
                "share_group")


def add_connection_arguments(parser: argparse.ArgumentParser, *, signing: bool = True) -> None:
    """The broker connection (URL, credentials, TLS, client certificate) and the signing key.

    Every option not given comes from the broker profile (``--broker-profile``,
    env PAODING_BROKER_PROFILE: the host.json `paoding-edge broker-config` writes).
    """
    g = parser.add_argument_group(
        "broker connection (default: the broker profile, env PAODING_BROKER_PROFILE)")
    g.add_argument("--broker-profile", metavar="JSON",
                   help="the host.json `paoding-edge broker-config` wrote (env "
                        f"{PROFILE_ENV}): every connection option below not given")
    g.add_argument("--broker", help="mqtts://host:port (TLS) or mqtt://host:port (env "
                                    f"PAODING_BROKER; default {DEFAULT_BROKER})")
    g.add_argument("--username")
    g.add_argument("--password-file")
    g.add_argument("--ca-file", help="CA certificate for mqtts://")
    g.add_argument("--cert-file", help="client certificate for mutual TLS (mqtts://)")
    g.add_argument("--key-file", help="the client certificate's private key")
    g.add_argument("--insecure", action="store_true", help="skip TLS verification")
    if signing:
        add_signing_arguments(parser)


def add_signing_arguments(parser: argparse.ArgumentParser) -> None:
    """--key (the host's Ed25519 signing key) and --unsigned."""
    parser.add_argument(
        "--key",
        default=os.environ.get("PAODING_SIGNING_KEY"),
        help="Ed25519 private key from `paoding-edge keys new` (env PAODING_SIGNING_KEY)",
    )
    parser.add_argument(
        "--unsigned",
        action="store_true",
        help="send without a signature (agents must run --allow-unsigned)",
    )


def add_db_argument(parser: argparse.ArgumentParser) -> None:
    """--db: the fleet record (resolved by apply_profile: flag, PAODING_DB, profile, data dir)."""
    parser.add_argument(
        "--db", metavar="FILE_OR_URL",
        help="the fleet record: a SQLite file or a postgresql:// URL (env PAODING_DB; "
        "default: the broker profile's, else ~/.local/share/paoding-edge/fleet.sqlite)")


def add_profile_argument(parser: argparse.ArgumentParser) -> None:
    """--broker-profile alone, for commands that read only its fleet record or broker dir."""
    parser.add_argument("--broker-profile", metavar="JSON",
                        help=f"the host.json `paoding-edge broker-config` wrote (env {PROFILE_ENV})")


def broker_profile(path: str | None = None) -> dict[str, Any]:
    """The broker profile at ``path`` (or env PAODING_BROKER_PROFILE); {} when none is set."""
    import json

    from core.errors import ConfigError

    path = path or os.environ.get(PROFILE_ENV)
    if not path:
        return {}
    try:
        with open(path) as f:
            data = json.load(f)
    except OSError as exc:
        raise ConfigError(f"cannot read broker profile {path}: {exc.strerror} (write one with "
                          "`paoding-edge broker-config DIR`)") from None
    except ValueError as exc:
        raise ConfigError(f"broker profile {path} is not valid JSON: {exc}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"broker profile {path} must hold a JSON object")
    return data


def default_db() -> str:
    """Where the fleet record lives when neither --db nor a profile says: the user's data dir."""
    base = os.environ.get("XDG_DATA_HOME") or os.path.join(os.path.expanduser("~"), ".local",
                                                           "share")
    return os.path.join(base, "paoding-edge", "fleet.sqlite")


def apply_profile(args: argparse.Namespace) -> None:
    """Fill the options a command was not given from the broker profile and the environment.

    Called once for every command (hostcli.main): a command line value wins,
    then the environment (PAODING_BROKER, PAODING_DB), then the profile.
    """
    if not hasattr(args, "broker_profile"):  # a command without the shared options (demo)
        return
    profile = broker_profile(getattr(args, "broker_profile", None))
    if hasattr(args, "broker"):
        if args.broker is None:
            args.broker = (os.environ.get("PAODING_BROKER") or profile.get("broker")
                           or DEFAULT_BROKER)
        # another broker than the profile's: its credentials are not for it
        if args.broker == profile.get("broker"):
            for k in PROFILE_KEYS[1:]:
                if hasattr(args, k) and getattr(args, k) is None:
                    setattr(args, k, profile.get(k))
    if hasattr(args, "db") and args.db is None:
        args.db = os.environ.get("PAODING_DB") or profile.get("db") or default_db()
        if "://" not in args.db:
            os.makedirs(os.path.dirname(os.path.abspath(args.db)), exist_ok=True)
    args.profile_data = profile


def add_trust_arguments(parser: argparse.ArgumentParser) -> None:
    """Where the host finds the devices' enrolled keys (their reports must be signed by them)."""
    add_db_argument(parser)
    parser.add_argument(
        "--unverified-reports",
        action="store_true",
        help="also accept reports from devices that are not enrolled, unauthenticated "
        "(a test bed only: anyone on the broker can forge them)",
    )


def enrolled_key(db: str, device_id: str) -> str | None:
    """The device's enrolled public key (PEM) in the fleet record ``db``, None if none."""
    if not os.path.isfile(db):
        return None
    from fleet.registry import Registry

    with Registry(db) as registry:
        return registry.public_key(device_id)


def device_key_for(args: argparse.Namespace, device_id: str) -> Any:
    """The key ``device_id``'s reports must be signed by; refuses a device that is not enrolled.

    ``--device-key PUB`` (where the command has it), else the enrolled key in
    ``--db``, else None with a warning under ``--unverified-reports``.
    """
    import sys

    from core.errors import ConfigError
    from core.signing import load_verify_key

    if getattr(args, "device_key", None):
        return load_verify_key(args.device_key)
    pem = enrolled_key(args.db, device_id)
    if pem is not None:
        return pem.encode()
    if args.unverified_reports:
        print(f"warning: {device_id} is not enrolled: its reports are not authenticated",
              file=sys.stderr)
        return None
    raise ConfigError(f"device {device_id!r} is not enrolled in {args.db}: its reports could "
                      f"not be authenticated (enrol it: paoding-edge enrol {device_id} "
                      "--profile P --public-key PUB)")


def add_check_arguments(parser: argparse.ArgumentParser) -> None:
    """The thresholds a device checks and the benchmark it runs."""
    g = parser.add_argument_group(
        "thresholds (the model is rolled back if it misses one; default: the target "
        "profile's budgets, and its accuracy retentions x the original's on the probes)")
    g.add_argument("--max-p90-ms", type=float)
    g.add_argument("--max-mean-ms", type=float)
    g.add_argument("--max-peak-memory-mb", type=float)
    g.add_argument("--min-agreement", type=float,
                   help="top-1 agreement with the original's outputs over every probe, "
                   "adversarial ones included (not a default: keep it under the clean "
                   "accuracy)")
    g.add_argument("--min-clean-accuracy", type=float)
    g.add_argument("--min-robust-accuracy", type=float)
    g.add_argument("--max-abs-deviation", type=float)
    b = parser.add_argument_group("benchmark")
    b.add_argument("--runs", type=int, default=50)
    b.add_argument("--warmup", type=int, default=3)
    b.add_argument("--min-seconds", type=float, default=0.0)
    b.add_argument("--threads", type=int)


def broker_from_args(args: argparse.Namespace) -> Any:
    from core.errors import ConfigError
    from core.mqtt import Broker

    password = None
    if bool(args.cert_file) != bool(args.key_file):
        raise ConfigError("mutual TLS needs both --cert-file and --key-file")
    for path in (args.cert_file, args.key_file, args.ca_file):
        if path and not os.path.isfile(path):
            raise ConfigError(f"no such file {path}")
    if args.password_file:
        try:
            with open(args.password_file) as f:
                password = f.read().strip()
        except OSError as exc:
            raise ConfigError(
                f"cannot read password file {args.password_file}: {exc.strerror}"
            ) from None
    try:
        return Broker.from_url(
            args.broker,
            username=args.username,
            password=password,
            ca_file=args.ca_file,
            cert_file=args.cert_file,
            key_file=args.key_file,
            insecure=args.insecure or None,
        )
    except ValueError as exc:
        raise ConfigError(str(exc)) from None


def key_from_args(args: argparse.Namespace) -> str | None:
    from core.errors import ConfigError

    if not args.key and not args.unsigned:
        raise ConfigError(
            "no signing key: give --key DIR/paoding.key (see `paoding-edge keys new`) or --unsigned"
        )
    return None if args.unsigned else args.key


def thresholds_from_args(args: argparse.Namespace) -> dict[str, float]:
    return {k: getattr(args, k) for k in THRESHOLDS if getattr(args, k) is not None}


def bench_from_args(args: argparse.Namespace) -> dict[str, Any]:
    return {
        "runs": args.runs,
        "warmup_runs": args.warmup,
        "min_seconds": args.min_seconds,
        "threads": args.threads,
    }


def add_ratio_arguments(parser: argparse.ArgumentParser) -> None:
    """--max-ratio and --step: the pruning ratios a tuner search visits."""
    parser.add_argument(
        "--max-ratio", type=float, default=0.9, help="most units to remove (default 0.9)"
    )
    parser.add_argument(
        "--step",
        type=float,
        default=0.1,
        help="pruning step as a share of each layer (default 0.1)",
    )


def listed(kind: type) -> Any:
    """An argparse ``type`` for list options (``nargs="+"``): each word may also hold
    comma-separated values, so ``--eps 0.01 0.05`` and ``--eps 0.01,0.05`` are one list."""

    def parse(text: str) -> list[Any]:
        return [kind(v) for v in text.split(",") if v.strip()]

    parse.__name__ = kind.__name__  # argparse's "invalid float value: 'x'"
    return parse


def flat(values: Any) -> list[Any]:
    """The values of a ``listed`` option (lists of lists, or a plain default list)."""
    out: list[Any] = []
    for v in values or ():
        out.extend(v if isinstance(v, list) else [v])
    return out

