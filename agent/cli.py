"""`paoding-agent`: run the device agent, make its key, or show its state."""

from __future__ import annotations

import argparse
import importlib.util
import json
import logging
import os
import signal
import sys
from pathlib import Path
from typing import Any

from core.errors import ConfigError, PaodingError


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="paoding-agent", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    run = sub.add_parser("run", help="run the agent (settings: flags > PAODING_AGENT_* > config)")
    run.add_argument("--config", help="YAML or JSON file with the settings below")
    run.add_argument("--device-id", help="this device's id (A-Z a-z 0-9 _ . -)")
    run.add_argument("--profile", help="device profile id, reported in the birth message")
    run.add_argument("--broker", help="mqtt://host:1883 or mqtts://host:8883")
    run.add_argument("--username")
    run.add_argument("--password-file", help="file holding the MQTT password")
    run.add_argument("--ca-file", help="CA certificate for mqtts://")
    run.add_argument("--cert-file", help="client certificate (mutual TLS)")
    run.add_argument("--key-file", help="client private key (mutual TLS)")
    run.add_argument("--insecure", action="store_true", default=None,
                     help="do not verify the broker's TLS certificate")
    run.add_argument("--trust-key", action="append", default=[],
                     help="Ed25519 public key (PEM) whose signatures are trusted; repeatable")
    run.add_argument("--trust-hmac", action="append", default=[],
                     help="HMAC secret file whose signatures are trusted; repeatable")
    run.add_argument("--allow-unsigned", action="store_true", default=None,
                     help="accept unsigned manifests (development only)")
    run.add_argument("--state-dir", help="state directory (default /var/lib/paoding-agent)")
    run.add_argument("--emulate", help="emulate a device profile on this host")
    run.add_argument("--memory-limit-mb", type=float,
                     help="cap of the benchmark child's memory (address space) in MB; a model "
                          "or probe bundle over it is refused (default: the profile's RAM, "
                          "else this machine's)")
    run.add_argument("--runtime", choices=["ai-edge-litert", "tflite-runtime", "tensorflow"],
                     help="force an interpreter")
    run.add_argument("--device-key", help="this device's Ed25519 private key (default "
                     "STATE_DIR/device.key, made on first start; see 'keygen')")
    run.add_argument("--mqtt-protocol", choices=["3.1.1", "5"],
                     help="MQTT version (default 5: the broker drops messages over the "
                     "agent's maximum packet size before they reach it)")
    run.add_argument("--stall-seconds", type=float, help="ask again for missing chunks after "
                     "this long without one (default 2)")
    run.add_argument("--log-level", help="DEBUG, INFO, WARNING or ERROR")
    kg = sub.add_parser("keygen", help="make this device's signing key (mode 0600) and print "
                        "its public key (PEM) for enrolment")
    kg.add_argument("--state-dir", default=None, help="write STATE_DIR/device.key")
    kg.add_argument("--out", help="write the private key to this file instead")
    kg.add_argument("--config", help="config file (for state_dir)")
    st = sub.add_parser("status", help="print the active model, its benchmark and the history")
    st.add_argument("--state-dir", default=None, help="state directory")
    st.add_argument("--config", help="config file (for state_dir)")
    st.add_argument("--json", action="store_true", help="print JSON")
    return parser


def _emulation(profile_id: str) -> tuple[float, str]:
    if importlib.util.find_spec("agent.emulation") is None:
        raise ConfigError("emulation not available (agent.emulation is not installed)")
    from agent import emulation  # type: ignore[attr-defined]

    slowdown, description = emulation.apply(profile_id)
    return float(slowdown), str(description)[:1000]


def _settings(args: argparse.Namespace) -> tuple[Any, str]:
    from agent.config import load_config
    from agent.service import AgentSettings
    from core.mqtt import Broker
    from core.signing import TrustStore, load_verify_key

    cli = {k: v for k, v in vars(args).items()
           if k not in ("command", "config", "_run") and v is not None}
    cfg = load_config(cli, config_file=args.config)
    try:
        broker = Broker.from_url(
            cfg.broker, username=cfg.username, password=cfg.read_password(),
            ca_file=str(cfg.ca_file) if cfg.ca_file else None,
            cert_file=str(cfg.cert_file) if cfg.cert_file else None,
            key_file=str(cfg.key_file) if cfg.key_file else None,
            insecure=cfg.insecure or None, protocol=cfg.mqtt_protocol)
    except ValueError as exc:
        raise ConfigError(str(exc)) from None
    trust = None
    if cfg.trust_key or cfg.trust_hmac:
        trust = TrustStore([load_verify_key(p) for p in [*cfg.trust_key, *cfg.trust_hmac]])
    elif not cfg.allow_unsigned:
        raise ConfigError("no trusted key: give --trust-key host.pub (or --trust-hmac "
                                 "FILE, or --allow-unsigned for development)")
    slowdown, emulation = 1.0, None
    if cfg.emulate:
        slowdown, emulation = _emulation(cfg.emulate)
    from core.signing import device_key

    key = device_key(cfg.device_key) if cfg.device_key else None
    settings = AgentSettings(
        device_id=cfg.device_id, broker=broker, state_dir=cfg.state_dir, profile=cfg.profile,
        trust=trust, slowdown=slowdown, emulation=emulation, stall_seconds=cfg.stall_seconds,
        runtime=cfg.runtime, device_key=key,
        memory_limit_mb=cfg.memory_limit_mb or default_memory_limit_mb(cfg.profile))
    return settings, cfg.log_level


def default_memory_limit_mb(profile: str | None) -> float:
    """The device profile's RAM when the profile is known, never above this machine's RAM."""
    import os

    machine = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**20
    if profile:
        import device_profiles
        from core.errors import ProfileError

        try:
            return float(min(device_profiles.load(profile).ram_mb, machine))
        except ProfileError:
            pass
    return float(machine)


def cmd_run(args: argparse.Namespace) -> int:
    from agent.service import Agent

    settings, level = _settings(args)
    logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    agent = Agent(settings)

    def on_signal(signum: int, _frame: object) -> None:
        logging.getLogger("agent").info("signal %d: stopping", signum)
        agent.request_stop()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    agent.start()
    try:
        while not agent.wait(0.5):
            if not agent.healthy():  # systemd restarts the agent
                logging.getLogger("agent").error("the agent's worker died: exiting")
                return 1
    finally:
        agent.stop()
    return 0


def _state_dir(args: argparse.Namespace) -> Path:
    from agent.config import read_config_file

    state_dir = args.state_dir
    if state_dir is None and args.config:
        state_dir = read_config_file(args.config).get("state_dir")
    return Path(state_dir or "/var/lib/paoding-agent")


def cmd_keygen(args: argparse.Namespace) -> int:
    from core.signing import device_key

    path = Path(args.out) if args.out else _state_dir(args) / "device.key"
    if path.exists():
        raise ConfigError(f"{path} already exists (refusing to overwrite a device key)")
    key = device_key(path)
    print(key.public_key().public_pem().decode(), end="")
    print(f"# key id {key.key_id}, private key in {path}", file=sys.stderr)
    return 0


def cmd_status(args: argparse.Namespace) -> int:
    from agent.service import status_summary
    from agent.storage import Storage

    state_dir = _state_dir(args)
    if not state_dir.is_dir():
        raise ConfigError(f"state directory {state_dir} does not exist")
    summary = status_summary(Storage(state_dir))
    if args.json:
        print(json.dumps(summary, indent=2, sort_keys=True))
    else:
        print(format_status(summary))
    return 0


def format_status(s: dict[str, Any]) -> str:
    lines = [f"state dir:   {s['state_dir']}"]
    act = s["active"]
    if act:
        lines.append(f"active:      {act['sha256'][:16]}  ({act.get('size', 0)} bytes, deployment "
                     f"{act.get('deployment_id')})")
        lines.append(f"model path:  {s['active_path']}")
        b = act.get("benchmark")
        if b:
            lat = b["latency_ms"]
            lines.append(f"benchmark:   {b['runtime']['name']} {b['runtime']['version']}, "
                         f"mean {lat['mean']:.3f} ms, p50 {lat['p50']:.3f}, p90 {lat['p90']:.3f}, "
                         f"p99 {lat['p99']:.3f} ms, init {b['init_ms']:.1f} ms, "
                         f"peak {b['peak_memory_mb']:.1f} MB"
                         + (f", emulated x{b['slowdown']:g}" if b.get("emulated") else ""))
        c = act.get("checks")
        if c:
            lines.append(f"checks:      agreement {c.get('agreement')}, clean accuracy "
                         f"{c.get('clean_accuracy')}, robust {c.get('robust_accuracy')}")
    else:
        lines.append("active:      none")
    if s["in_progress"]:
        lines.append(f"in progress: {s['in_progress']} (stage {s.get('stage')})")
    lines.append(f"release:     {s.get('last_release', 0)} (the last accepted; lower ones "
                 "are refused unless signed as a rollback)")
    lines.append(f"spooled:     {s['spooled_reports']} report(s) waiting for the broker")
    lines.append("history:")
    for h in s["history"][-20:] or [{}]:
        if h:
            lines.append(f"  {h.get('deployment_id'):<24} {h.get('outcome'):<12} "
                         f"{(h.get('sha256') or '')[:12]}  {h.get('reason') or ''}")
        else:
            lines.append("  (none)")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 2
    try:
        commands = {"run": cmd_run, "keygen": cmd_keygen, "status": cmd_status}
        rc = commands[args.command](args)
        sys.stdout.flush()  # a closed pipe shows here, not at interpreter exit
        return rc
    except PaodingError as exc:
        print(f"paoding-agent {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:  # the reader went away (`| head`): stop without a traceback
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 1


if __name__ == "__main__":
    sys.exit(main())
