"""`paoding-edge conformance`: check one running agent (any implementation) against the protocol."""

from __future__ import annotations

import argparse
import sys

from hostcli.options import add_connection_arguments, broker_from_args


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--device", required=True, help="the device id of the agent under test")
    parser.add_argument("--device-key", required=True, metavar="PUB",
                        help="the device's public key (PEM): its messages must verify with it")
    add_connection_arguments(parser)
    parser.add_argument("--agent-client-id", metavar="ID",
                        help="the agent's MQTT client id, taken over once to disconnect it "
                        "(default: paoding-agent-<device>)")
    parser.add_argument("--timeout", type=float, default=60.0,
                        help="seconds to wait for any one answer (default 60)")
    parser.add_argument("--runs", type=int, default=10, help="benchmark runs asked for")
    parser.add_argument("--only", action="append", default=[], metavar="GROUP",
                        help="run only this check group (repeatable): identity, malformed, "
                        "oversized, refusals, deployment, replay, downgrade, transfer, rollback, "
                        "refusals-hold")


def run(args: argparse.Namespace) -> int:
    from conformance import KitConfig, Result, run_kit
    from core.errors import ConfigError
    from core.protocol import check_id
    from core.signing import load_signing_key, load_verify_key

    if args.unsigned or not args.key:
        raise ConfigError("the kit signs its manifests: give --key KEY, the host key the agent "
                          "trusts (see `paoding-edge keys new`)")
    try:
        check_id(args.device)
    except ValueError as exc:
        raise ConfigError(str(exc)) from None
    if args.timeout <= 0 or args.runs < 1:
        raise ConfigError("--timeout must be > 0 and --runs >= 1")
    cfg = KitConfig(broker=broker_from_args(args), device_id=args.device,
                    key=load_signing_key(args.key),
                    device_key=load_verify_key(args.device_key),
                    agent_client_id=args.agent_client_id, timeout=args.timeout,
                    runs=args.runs, only=tuple(args.only))
    print(f"conformance of {args.device} on {cfg.broker.address} (protocol 2)", flush=True)

    def emit(result: Result) -> None:
        print(result.line(), flush=True)

    results = run_kit(cfg, emit)
    failed = [r for r in results if not r.ok]
    print(f"{len(results)} checks: {len(results) - len(failed)} passed, {len(failed)} failed"
          + (f" ({', '.join(r.check for r in failed)})" if failed else ""))
    sys.stdout.flush()
    return 1 if failed or not results else 0
