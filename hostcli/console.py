"""`paoding-edge console`: the fleet console in a browser, over the fleet record.

Read-only and bound to loopback by default; ``--token FILE`` (made by
``paoding-edge keys console-token``) turns on the actions (abort a rollout,
revoke a device) for requests that carry it.
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--db",
        default=os.environ.get("PAODING_DB", "fleet.sqlite"),
        help="the fleet record: a SQLite file or a postgresql:// URL (env PAODING_DB)",
    )
    parser.add_argument("--bind", default="127.0.0.1",
                        help="address to listen on (default 127.0.0.1: this machine only)")
    parser.add_argument("--port", type=int, default=8080, help="port (default 8080)")
    parser.add_argument("--token", metavar="FILE",
                        help="console token file (paoding-edge keys console-token DIR): "
                        "turns on actions for requests that carry it")
    parser.add_argument("--broker-dir", help="broker configuration directory: a revoke from "
                        "the console also removes the device's broker password there")


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
    app = create_app(args.db, token=token, allowed_hosts=hosts, broker_dir=args.broker_dir)
    host = f"[{args.bind}]" if ":" in args.bind else args.bind
    print(f"console on http://{host}:{args.port}/ over {app.state.console.registry.label} "
          f"({'actions on for requests with the token' if token else 'read-only'}); "
          "Ctrl-C stops it", flush=True)
    uvicorn.run(app, host=args.bind, port=args.port, log_level="warning")
    return 0
