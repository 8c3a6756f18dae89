"""`paoding-edge rollout`: deploy one variant per profile to the fleet, in waves."""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from typing import Any


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from hostcli.options import (
        add_check_arguments,
        add_connection_arguments,
        add_trust_arguments,
    )

    parser.add_argument(
        "--variant",
        action="append",
        default=[],
        metavar="PROFILE=MODEL",
        help="the .tflite model for devices of PROFILE (repeat per profile)",
    )
    parser.add_argument(
        "--resume",
        nargs="?",
        const=True,
        default=False,
        metavar="ROLLOUT",
        help="continue the rollout in progress (the latest, or ROLLOUT) from the registry; "
        "running the same --variant command again continues it too",
    )
    parser.add_argument(
        "--abort",
        metavar="ROLLOUT",
        help="stop a rollout in progress: the wave in progress is cancelled (signed Cancel "
        "to every pending device) by its host process, or by this one if none runs",
    )
    parser.add_argument("--probes", help="probe bundle (.npz) sent with every variant")
    add_connection_arguments(parser)
    add_trust_arguments(parser)
    parser.add_argument(
        "--share-group",
        help="take device messages through the shared subscription $share/GROUP/... "
        "(several host processes on one fleet)",
    )
    t = parser.add_argument_group("targeting")
    t.add_argument("--profile", action="append", default=[], help="only devices of this profile")
    t.add_argument("--tag", action="append", default=[], help="only devices with this tag")
    t.add_argument(
        "--devices",
        action="append",
        default=[],
        metavar="GLOB",
        help="only device ids matching this pattern, e.g. 'pi-kitchen-*'",
    )
    t.add_argument(
        "--discover-seconds",
        type=float,
        default=1.5,
        help="how long to collect the devices' retained status",
    )
    w = parser.add_argument_group("waves")
    w.add_argument("--canary", type=int, default=1, help="devices in the first wave")
    w.add_argument("--growth", type=float, default=2.0, help="each wave is this times the last")
    w.add_argument(
        "--max-failure-rate",
        type=float,
        default=0.2,
        help="abort above this share of failed devices (0..1)",
    )
    w.add_argument("--max-failures", type=int, help="abort at this many failed devices")
    w.add_argument(
        "--timeout",
        type=float,
        default=300.0,
        help="seconds a device may take before it counts as failed (default 300)",
    )
    add_check_arguments(parser)
    parser.add_argument("--plot", help="write a PNG of the outcomes per wave")
    parser.add_argument("--json", action="store_true", help="print the result as JSON")


def _variants(items: list[str]) -> dict[str, Path]:
    from core.errors import ConfigError

    out: dict[str, Path] = {}
    for item in items:
        profile, sep, path = item.partition("=")
        if not sep or not profile or not path:
            raise ConfigError(f"--variant wants PROFILE=MODEL.tflite, got {item!r}")
        if not Path(path).is_file():
            raise ConfigError(f"--variant {profile}: no model file {path}")
        out[profile] = Path(path)
    return out


def run(args: argparse.Namespace) -> int:
    from core.errors import ConfigError, ProfileError
    from fleet.budgets import merged_thresholds
    from fleet.gate import Gate
    from fleet.orchestrator import run_rollout
    from fleet.registry import Registry
    from fleet.rollout import Target, WavePolicy
    from hostcli.deploy import host_runner
    from hostcli.options import (
        bench_from_args,
        broker_from_args,
        key_from_args,
        thresholds_from_args,
    )

    if args.abort:
        return _abort(args)
    if not args.variant and not args.resume:
        raise ConfigError("give --variant PROFILE=MODEL.tflite, or --resume")
    variants = _variants(args.variant) if not args.resume else None
    if args.probes and not os.path.isfile(args.probes):
        raise ConfigError(f"no probe bundle {args.probes}")
    broker = broker_from_args(args)
    policy = WavePolicy(
        canary=args.canary,
        growth=args.growth,
        max_failure_rate=args.max_failure_rate,
        max_failures=args.max_failures,
        timeout_s=args.timeout,
    )
    target = Target(
        profiles=frozenset(args.profile),
        tags=frozenset(args.tag),
        device_patterns=tuple(args.devices),
    )

    counts: dict[str, int] = {}

    def progress(event: str, info: dict[str, Any]) -> None:
        if args.json:
            return
        if event == "plan":
            verb = "continuing" if info.get("resumed") else "rollout"
            print(f"{verb} {info['rollout_id']}: {plan_text(info['waves'])}", file=sys.stderr)
            skipped = info["skipped"]
            for device_id, why in list(skipped.items())[:20]:
                print(f"  skip {device_id}: {why}", file=sys.stderr)
            if len(skipped) > 20:
                print(f"  ... {len(skipped) - 20} more skipped", file=sys.stderr)
        elif event == "wave":
            ids = info["devices"]
            shown = " ".join(ids[:10]) + (f" ... (+{len(ids) - 10})" if len(ids) > 10 else "")
            print(f"wave {info['wave']}: {shown}", file=sys.stderr)
        elif event == "device":
            counts[info["outcome"]] = counts.get(info["outcome"], 0) + 1
            if info["outcome"] != "active" or sum(counts.values()) <= 20:
                why = f" ({info['reason']})" if info["reason"] else ""
                print(f"  {info['device_id']}: {info['outcome']}{why}", file=sys.stderr)
        elif event == "abort":
            print(f"ABORT: {info['reason']}", file=sys.stderr)
        elif event == "pause":
            print(f"PAUSED: {info['reason']}; waiting for it", file=sys.stderr)
        elif event == "resume":
            print("broker back: continuing", file=sys.stderr)

    flags = thresholds_from_args(args)
    profile_thresholds = {}
    for profile in variants or {}:
        try:
            profile_thresholds[profile], why = merged_thresholds(profile, args.probes, flags)
        except ProfileError:  # not a profile this host knows: the flags alone
            if not args.json:
                print(f"no profile {profile!r} here: its variant is checked against the "
                      "threshold flags alone", file=sys.stderr)
            continue
        if not args.json:
            print(why, file=sys.stderr)
    with Registry(args.db) as registry:
        # device messages count only when signed by the device's enrolled key (read once),
        # for this device's deployment in flight
        intake = None if args.unverified_reports else Gate(registry.public_keys(),
                                                           in_flight=registry.in_flight)
        try:
            result = run_rollout(
                variants,
                broker,
                registry,
                policy=policy,
                target=target,
                resume=args.resume,
                share_group=args.share_group,
                discover_s=args.discover_seconds,
                progress=progress,
                probes=args.probes,
                thresholds=flags,
                profile_thresholds=profile_thresholds,
                key=key_from_args(args),
                benchmark=bench_from_args(args),
                host_outputs=host_runner() if variants and args.probes else None,
                intake=intake,
            )
        finally:
            if intake is not None:
                intake.save(registry)
    if args.plot:
        plot_rollout(result.to_dict(), args.plot)
    if args.json:
        print(json.dumps(result.to_dict(), indent=2))
    else:
        print(format_result(result.to_dict()))
    return 0 if result.ok else 1


def _abort(args: argparse.Namespace) -> int:
    """Mark the rollout aborting; finish the abort here when no host process takes it."""
    import threading
    import time

    from fleet.gate import Gate
    from fleet.orchestrator import request_abort, run_rollout
    from fleet.registry import Registry
    from hostcli.options import broker_from_args, key_from_args

    with Registry(args.db) as registry:
        request_abort(registry, args.abort)
        deadline = time.monotonic() + 5.0
        while time.monotonic() < deadline:
            row = registry.rollout(args.abort)
            if row is not None and row["state"] != "aborting":
                print(f"rollout {args.abort}: {row['state']} ({row['reason']})")
                return 0
            time.sleep(0.2)
        stop = threading.Event()
        stop.set()
        intake = None if args.unverified_reports else Gate(registry.public_keys(),
                                                           in_flight=registry.in_flight)
        try:
            result = run_rollout(None, broker_from_args(args), registry, resume=args.abort,
                                 abort=stop, key=key_from_args(args), intake=intake,
                                 discover_s=args.discover_seconds)
        finally:
            if intake is not None:
                intake.save(registry)
    print(format_result(result.to_dict()))
    return 0


def plan_text(waves: list[list[str]]) -> str:
    """'3 devices in 2 waves (1, 2)': the plan of a rollout in words."""
    n = sum(len(w) for w in waves)
    if not waves:
        return "no device to deploy to"
    sizes = ", ".join(str(len(w)) for w in waves)
    return (f"{n} device{'s' if n != 1 else ''} in {len(waves)} "
            f"wave{'s' if len(waves) != 1 else ''} ({sizes})")


def format_result(r: dict[str, Any], limit: int = 50) -> str:
    """The outcome, and a row per device (the first ``limit`` and every one not active)."""
    counts: dict[str, int] = {}
    for d in r["results"]:
        counts[d["outcome"]] = counts.get(d["outcome"], 0) + 1
    summary = ", ".join(f"{n} {o}" for o, n in sorted(counts.items())) or "no deployment"
    lines = [
        f"rollout {r['rollout_id']}: {r['decision'].upper()} ({r['reason']})",
        f"{summary}; {len(r['skipped'])} skipped",
        f"{'device':<24} {'profile':<28} {'wave':>4}  {'outcome':<12} {'p90 ms':>8}  reason",
    ]
    shown = [d for i, d in enumerate(r["results"]) if i < limit or d["outcome"] != "active"]
    for d in shown:
        p90 = "-" if d["p90_ms"] is None else f"{d['p90_ms']:.3f}"
        lines.append(
            f"{d['device_id']:<24} {d['profile']:<28} {d['wave']:>4}  "
            f"{d['outcome']:<12} {p90:>8}  {d['reason']}"
        )
    if len(shown) < len(r["results"]):
        lines.append(f"... {len(r['results']) - len(shown)} more active")
    for device_id, why in list(r["skipped"].items())[:limit]:
        lines.append(f"{device_id:<24} {'':<28} {'':>4}  {'skipped':<12} {'':>8}  {why}")
    if len(r["skipped"]) > limit:
        lines.append(f"... {len(r['skipped']) - limit} more skipped")
    return "\n".join(lines)


def plot_rollout(r: dict[str, Any], png: str) -> None:
    """Stacked bars: outcomes per wave."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    outcomes = ["active", "rolled_back", "rejected", "failed", "timed_out"]
    colours = ["#2a9d8f", "#e9c46a", "#f4a261", "#e76f51", "#8d99ae"]
    waves = range(len(r["waves"]))
    fig, ax = plt.subplots(figsize=(6, 3.5))
    bottom = [0] * len(r["waves"])
    for outcome, colour in zip(outcomes, colours, strict=True):
        counts = [
            sum(1 for d in r["results"] if d["wave"] == w and d["outcome"] == outcome)
            for w in waves
        ]
        ax.bar([f"wave {w}" for w in waves], counts, bottom=bottom, color=colour, label=outcome)
        bottom = [b + c for b, c in zip(bottom, counts, strict=True)]
    not_reached = [len(w) - b for w, b in zip(r["waves"], bottom, strict=True)]
    ax.bar(
        [f"wave {w}" for w in waves],
        not_reached,
        bottom=bottom,
        color="#dddddd",
        label="not reached",
    )
    ax.set_ylabel("devices")
    ax.yaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_title(f"{r['rollout_id']}: {r['decision']}")
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.0, 1.0))
    fig.tight_layout()
    fig.savefig(png, dpi=120)
    plt.close(fig)
