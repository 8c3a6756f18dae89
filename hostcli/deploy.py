"""`paoding-edge deploy`: publish a signed deployment to one device, print its report."""

from __future__ import annotations

import argparse
import sys
from typing import Any

from hostcli.options import (
    add_check_arguments,
    add_connection_arguments,
    add_trust_arguments,
    bench_from_args,
    broker_from_args,
    device_key_for,
    key_from_args,
    thresholds_from_args,
)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("model", help="the .tflite model to deploy")
    parser.add_argument("--device", required=True, help="the device id")
    parser.add_argument("--probes", help="probe bundle (.npz) built by `paoding-edge probes`")
    add_connection_arguments(parser)
    add_trust_arguments(parser)
    parser.add_argument("--device-key", metavar="PUB",
                        help="the device's public key (default: its enrolled key in --db)")
    add_check_arguments(parser)
    parser.add_argument("--chunk-size", type=int, default=65536,
                        help="bytes per chunk (default 65536)")
    parser.add_argument("--timeout", type=float, default=300.0,
                        help="seconds to wait for the final report (default 300)")
    parser.add_argument("--deployment-id", help="default: a fresh unique id")
    parser.add_argument("--release", type=int, metavar="N",
                        help="the release number (default: milliseconds since the epoch)")
    bounds = parser.add_mutually_exclusive_group()
    bounds.add_argument("--release-jump", action="store_true",
                        help="sign the manifest as a release jump: the device takes a release "
                        "more than 30 days beyond its last one")
    bounds.add_argument("--release-reset", action="store_true",
                        help="sign the manifest as a release reset: its release becomes the "
                        "device's last one (frees a device wedged by a release far ahead)")
    parser.add_argument("--json", action="store_true", help="print the report as JSON")


def run(args: argparse.Namespace) -> int:
    from fleet.budgets import merged_thresholds
    from fleet.publisher import deploy

    device_key = device_key_for(args, args.device)
    key = key_from_args(args)
    broker = broker_from_args(args)
    thresholds, why = merged_thresholds(enrolled_profile(args.db, args.device), args.probes,
                                        thresholds_from_args(args))
    if why and not args.json:
        print(why, file=sys.stderr)
    bench = bench_from_args(args)

    def progress(event: str, info: dict[str, Any]) -> None:
        if event == "report" and not args.json:
            reason = f": {info['reason']}" if info.get("reason") else ""
            print(f"  {info['state']}{reason}", file=sys.stderr)

    report = deploy(args.model, args.device, broker, probes=args.probes, thresholds=thresholds,
                    key=key, benchmark=bench,
                    timeout=args.timeout, chunk_size=args.chunk_size, progress=progress,
                    deployment_id=args.deployment_id, host_outputs=host_runner(),
                    release=args.release, release_jump=args.release_jump,
                    release_reset=args.release_reset,
                    device_key=device_key)
    record(args.db, report.model_dump(mode="json"), "deploy")
    if args.json:
        print(report.model_dump_json(indent=2))
    else:
        print(format_report(report))
    return 0 if report.ok else 1


def enrolled_profile(db: str, device_id: str) -> str | None:
    """The profile ``device_id`` was enrolled with in the fleet record, None if it is not."""
    import os

    from fleet.db import is_postgres_url
    from fleet.registry import Registry

    if not is_postgres_url(db) and not os.path.isfile(db):
        return None
    with Registry(db) as registry:
        return next((d.profile for d in registry.devices() if d.device_id == device_id), None)


def record(db: str, report: dict[str, Any], source: str) -> None:
    """Keep a single deployment's outcome in the fleet record (`paoding-edge fleet` shows it)."""
    from fleet.history import record_single
    from fleet.registry import Registry

    with Registry(db) as registry:
        record_single(registry, report, source)


def format_report(r: Any) -> str:
    lines = [f"deployment {r.deployment_id} -> {r.device_id}: {r.state.upper()}"]
    if r.reason:
        lines.append(f"  reason:     {r.reason}")
    lines.append(f"  model:      {r.model_sha256[:16]}  {r.model_size} bytes in {r.chunks} "
                 f"chunk(s) of {r.chunk_size}")
    if r.transfer_seconds:
        lines.append(f"  transfer:   {r.transfer_seconds:.3f} s ({r.throughput_mb_s:.1f} MB/s)")
    if r.benchmark:
        b, lat = r.benchmark, r.benchmark.latency_ms
        emu = f"  (emulated, slowdown x{b.slowdown:g})" if b.emulated else ""
        lines += [
            f"  runtime:    {b.runtime.name} {b.runtime.version}, threads "
            f"{b.threads or 'default'}{emu}",
            f"  init:       {b.init_ms:.2f} ms, first inference {b.first_inference_ms:.3f} ms",
            f"  latency:    mean {lat.mean:.3f} ms, std {lat.std:.3f}, min {lat.min:.3f}, "
            f"max {lat.max:.3f} over {lat.count} runs",
            f"              p50 {lat.p50:.3f}, p90 {lat.p90:.3f}, p99 {lat.p99:.3f} ms",
            f"  memory:     peak {b.peak_memory_mb:.1f} MB (RSS before {b.rss_before_mb:.1f} MB)",
        ]
    if r.checks:
        c = r.checks
        robust = ", ".join(f"{k} {v:.3f}" for k, v in c.robust_accuracy.items()) or "-"
        lines += [
            f"  probes:     {c.count}; clean accuracy {_f(c.clean_accuracy)}, agreement "
            f"{_f(c.agreement)}, max deviation {_f(c.max_abs_deviation, '.2e')}",
            f"  robust:     {robust}",
        ]
    lines.append(f"  states:     {' -> '.join(r.states)}  ({r.elapsed_seconds:.2f} s)")
    return "\n".join(lines)


def _f(v: float | None, fmt: str = ".4f") -> str:
    return "-" if v is None else format(v, fmt)


def host_runner() -> Any:
    """The host's TFLite runner for the probes' ``expected`` outputs, None without an interpreter."""
    try:
        import ai_edge_litert  # noqa: F401
    except ImportError:
        return None
    from pruner.export import run_tflite
    from tuner.quiet import native_quiet

    def quiet(model: Any, x: Any) -> Any:
        with native_quiet():  # LiteRT's "Created TensorFlow Lite XNNPACK delegate" line
            return run_tflite(model, x)

    return quiet
