"""`paoding-edge console`: the fleet console in a browser, over the fleet record.

Read-only and bound to loopback by default; ``--token FILE`` (made by
``paoding-edge keys console-token``) turns on the actions (abort a rollout,
revoke a device) for requests that carry it.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--bind", default="127.0.0.1",
                        help="address to listen on (default 127.0.0.1: this machine only)")
    parser.add_argument("--port", type=int, default=8080, help="port (default 8080)")
    parser.add_argument("--token", metavar="FILE",
                        help="console token file (paoding-edge keys console-token DIR): "
                        "turns on actions for requests that carry it")
    parser.add_argument("--broker-dir", help="broker configuration directory: a revoke from "
                        "the console also removes the device's broker password there")
    from hostcli.options import add_connection_arguments, add_trust_arguments

    # with --key (and --token), a token holder may start a rollout of a model from its page
    add_connection_arguments(parser)
    add_trust_arguments(parser)  # --db, the fleet record, with the other commands' default


def read_token(path: str) -> str:
    from core.errors import ConfigError

    try:
        token = Path(path).read_text().strip()
    except OSError as exc:
        raise ConfigError(f"cannot read console token {path}: {exc.strerror}") from None
    if len(token) < 32:
        raise ConfigError(f"console token {path} is too short (make one with "
                          "`paoding-edge keys console-token DIR`)")
    return token


def run(args: argparse.Namespace) -> int:
    from core.errors import ConfigError
    from fleet.db import is_postgres_url

    if not 0 < args.port < 65536:
        raise ConfigError(f"--port must be 1..65535, got {args.port}")
    if not is_postgres_url(args.db) and not Path(args.db).is_file():
        raise ConfigError(f"no fleet record at {args.db}: give --db FILE_OR_URL")
    token = read_token(args.token) if args.token else None
    import uvicorn

    from console.app import create_app

    hosts = None if args.bind in ("127.0.0.1", "localhost", "::1") else ["*"]
    starter = None
    if token and (args.key or args.unsigned):
        from hostcli.options import broker_from_args, key_from_args

        starter = rollout_starter(args.db, broker_from_args(args), key_from_args(args),
                                  verified=not args.unverified_reports)
    app = create_app(args.db, token=token, allowed_hosts=hosts, broker_dir=args.broker_dir,
                     starter=starter)
    host = f"[{args.bind}]" if ":" in args.bind else args.bind
    print(f"console on http://{host}:{args.port}/ over {app.state.console.registry.label} "
          f"({'actions on for requests with the token' if token else 'read-only'}); "
          "Ctrl-C stops it", flush=True)
    uvicorn.run(app, host=args.bind, port=args.port, log_level="warning")
    return 0


def rollout_starter(db: str, broker: Any, key: Any, *, verified: bool = True,
                    policy: Any = None, discover_s: float = 1.5,
                    plan_timeout_s: float = 60.0) -> Callable[[dict[str, bytes]], str]:
    """Start a rollout of {profile: model bytes} in a thread; return its id once planned.

    The rollout runs here as ``paoding-edge rollout`` would (its own registry
    connection; reports count only when signed by the device's enrolled key).
    """

    def start(variants: dict[str, bytes]) -> str:
        import threading

        from core.errors import ConfigError, PaodingError
        from fleet.gate import Gate
        from fleet.orchestrator import run_rollout
        from fleet.registry import Registry

        planned = threading.Event()
        found: dict[str, str] = {}

        def progress(event: str, info: dict[str, Any]) -> None:
            if event == "plan":
                found["rollout_id"] = info["rollout_id"]
                planned.set()

        def run() -> None:
            try:
                with Registry(db) as registry:
                    intake = (Gate(registry.public_keys(), in_flight=registry.in_flight)
                              if verified else None)
                    kwargs = {"policy": policy} if policy is not None else {}
                    run_rollout(variants, broker, registry, key=key, progress=progress,
                                intake=intake, discover_s=discover_s, **kwargs)
            except PaodingError as exc:
                found.setdefault("error", str(exc))
                planned.set()
                print(f"paoding-edge console: rollout: {exc}", file=sys.stderr)

        threading.Thread(target=run, name="paoding-console-rollout", daemon=True).start()
        if not planned.wait(plan_timeout_s):
            raise ConfigError(f"the rollout was not planned within {plan_timeout_s:g} s")
        if "rollout_id" not in found:
            raise ConfigError(found["error"])
        return found["rollout_id"]

    return start
