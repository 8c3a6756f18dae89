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

from core.errors import PaodingError
from hostcli.options import apply_profile

# Packages only the [host] extra installs: a command that needs one says so in one line.
HOST_PACKAGES = frozenset({"tensorflow", "keras", "sklearn", "matplotlib", "tqdm", "h5py",
                           "amqtt", "ai_edge_litert", "starlette", "uvicorn", "jinja2"})

# name -> (module, one-line help)
COMMANDS: dict[str, tuple[str, str]] = {
    "prune": ("hostcli.prune", "prune a Keras model (Paoding and baselines), export TFLite"),
    "probes": ("hostcli.probes", "build the probe bundle the agent re-checks"),
    "tune": ("hostcli.tune", "find the pruning that meets a device profile's budgets"),
    "profiles": ("hostcli.profiles", "list, show, validate and calibrate device profiles"),
    "keys": ("hostcli.keys", "make an Ed25519 signing key pair"),
    "deploy": ("hostcli.deploy", "publish a signed deployment to a device and print its report"),
    "rollout": ("hostcli.rollout", "deploy one variant per profile to the fleet, in waves"),
    "fleet": ("hostcli.fleet", "the recorded devices and their deployment history"),
    "enrol": ("hostcli.enrol", "give a device its identity: key, broker credentials, bundle"),
    "broker-config": ("hostcli.broker", "write a Mosquitto configuration for the fleet "
                      "(TLS, passwords, ACL, limits)"),
    "console": ("hostcli.console", "the fleet console in a browser (read-only unless given "
                "a token)"),
    "conformance": ("hostcli.conformance", "check a running agent of any implementation "
                    "against the protocol"),
    "demo": ("hostcli.demo", "the end-to-end demo: prune, tune, deploy to emulated agents"),
}



def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="paoding-edge", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, (module_name, help_text) in COMMANDS.items():
        module = importlib.import_module(module_name)
        p = sub.add_parser(name, help=help_text, description=help_text)
        module.add_arguments(p)
        p.set_defaults(_run=module.run)
    return parser


def main(argv: list[str] | None = None) -> int:
    # TensorFlow's C++ INFO/WARNING lines would bury the commands' own output. oneDNN's
    # CPU-specific kernels (on by default on AVX-512 machines) change float round-off from
    # one CPU to the next, so the same seed would prune differently, and they announce
    # themselves on stderr whatever the log level: off unless the user turns them on.
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "0")
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "_run", None):
        parser.print_help()
        return 2
    try:
        apply_profile(args)
        rc = int(args._run(args) or 0)
        sys.stdout.flush()  # a closed pipe shows here, not at interpreter exit
        return rc
    except BrokenPipeError:  # the reader went away (`| head`): stop without a traceback
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 1
    except PaodingError as exc:
        print(f"paoding-edge {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except ModuleNotFoundError as exc:
        top = (exc.name or "").split(".")[0]
        if top not in HOST_PACKAGES:
            raise
        print(f"paoding-edge {args.command}: error: needs the host extra ({top} is not "
              "installed): pip install 'paoding-edge[host]'", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"paoding-edge {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
