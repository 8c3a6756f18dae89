"""`paoding-edge`: the host command line.

Each subcommand lives in a module of its own that exposes
``add_arguments(parser)`` and ``run(args) -> int``. Those modules import
TensorFlow (and anything else heavy) inside ``run`` only, so that
``paoding-edge --help``, ``keys`` and ``profiles`` stay fast.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys

from pruner.errors import PaodingError

# name -> (module, one-line help)
COMMANDS: dict[str, tuple[str, str]] = {
    "prune": ("pruner.cli_prune", "prune a Keras model (Paoding and baselines), export TFLite"),
    "probes": ("pruner.cli_probes", "build the probe bundle the agent re-checks"),
    "tune": ("pruner.cli_tune", "find the pruning that meets a device profile's budgets"),
    "profiles": ("fleet.cli_profiles", "list, show, validate and calibrate device profiles"),
    "keys": ("fleet.cli_keys", "make an Ed25519 signing key pair"),
    "deploy": ("fleet.cli_deploy", "publish a signed deployment to a device and print its report"),
    "rollout": ("fleet.cli_rollout", "deploy one variant per profile to the fleet, in waves"),
    "fleet": ("fleet.cli_fleet", "the recorded devices and their deployment history"),
    "demo": ("fleet.cli_demo", "the end-to-end demo: prune, tune, deploy to emulated agents"),
}


class CommandError(PaodingError):
    """A user-facing error raised by a command: printed as one line, exit status 2."""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="paoding-edge", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, (module_name, help_text) in COMMANDS.items():
        try:
            module = importlib.import_module(module_name)
        except ModuleNotFoundError as exc:  # a part not installed in this environment
            if exc.name and module_name.startswith(exc.name.split(".")[0]):
                continue
            raise
        p = sub.add_parser(name, help=help_text, description=help_text)
        module.add_arguments(p)
        p.set_defaults(_run=module.run)
    return parser


def main(argv: list[str] | None = None) -> int:
    # TensorFlow's C++ INFO/WARNING lines would bury the commands' own output
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "_run", None):
        parser.print_help()
        return 2
    try:
        return int(args._run(args) or 0)
    except PaodingError as exc:
        print(f"paoding-edge {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"paoding-edge {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
