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


def add_connection_arguments(parser: argparse.ArgumentParser) -> None:
    """--broker, credentials, TLS and the signing key."""
    parser.add_argument(
        "--broker",
        default=os.environ.get("PAODING_BROKER", "mqtt://127.0.0.1:1883"),
        help="mqtt://host:port or mqtts://host:port (env PAODING_BROKER)",
    )
    parser.add_argument("--username")
    parser.add_argument("--password-file")
    parser.add_argument("--ca-file", help="CA certificate for mqtts://")
    parser.add_argument("--cert-file", help="client certificate for mutual TLS (mqtts://)")
    parser.add_argument("--key-file", help="the client certificate's private key")
    parser.add_argument("--insecure", action="store_true", help="skip TLS verification")
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


def add_trust_arguments(parser: argparse.ArgumentParser, *, with_db: bool = True) -> None:
    """Where the host finds the devices' enrolled keys (their reports must be signed by them)."""
    if with_db:
        parser.add_argument(
            "--db",
            default=os.environ.get("PAODING_DB", "fleet.sqlite"),
            help="the fleet record with the devices' enrolled keys (env PAODING_DB)",
        )
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
    g = parser.add_argument_group("thresholds (the model is rolled back if it misses one)")
    g.add_argument("--max-p90-ms", type=float)
    g.add_argument("--max-mean-ms", type=float)
    g.add_argument("--max-peak-memory-mb", type=float)
    g.add_argument("--min-agreement", type=float, help="top-1 agreement with the reference")
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
