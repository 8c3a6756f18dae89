"""`paoding-edge deploy`: publish a signed deployment to one device, print its report."""

from __future__ import annotations

import argparse
import os
import sys
from typing import Any


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("model", help="the .tflite model to deploy")
    parser.add_argument("--device", required=True, help="the device id")
    parser.add_argument("--probes", help="probe bundle (.npz) built by `paoding-edge probes`")
    parser.add_argument("--broker", default=os.environ.get("PAODING_BROKER",
                                                           "mqtt://127.0.0.1:1883"),
                        help="mqtt://host:1883 or mqtts://host:8883 (env PAODING_BROKER)")
    parser.add_argument("--username")
    parser.add_argument("--password-file")
    parser.add_argument("--ca-file", help="CA certificate for mqtts://")
    parser.add_argument("--insecure", action="store_true", help="skip TLS verification")
    parser.add_argument("--key", default=os.environ.get("PAODING_SIGNING_KEY"),
                        help="signing key (from `paoding-edge keys new`; env PAODING_SIGNING_KEY)")
    parser.add_argument("--unsigned", action="store_true",
                        help="send without a signature (agents with --allow-unsigned only)")
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
    parser.add_argument("--chunk-size", type=int, default=65536, help="bytes per chunk (64 KB)")
    parser.add_argument("--timeout", type=float, default=300.0, help="seconds to wait")
    parser.add_argument("--deployment-id", help="default: a fresh unique id")
    parser.add_argument("--json", action="store_true", help="print the report as JSON")


THRESHOLDS = ("max_p90_ms", "max_mean_ms", "max_peak_memory_mb", "min_agreement",
              "min_clean_accuracy", "min_robust_accuracy", "max_abs_deviation")


def run(args: argparse.Namespace) -> int:
    from agent.errors import ConfigurationError
    from agent.mqtt import Broker
    from fleet.publisher import deploy

    if not args.key and not args.unsigned:
        raise ConfigurationError("no signing key: give --key DIR/paoding.key "
                                 "(see `paoding-edge keys new`) or --unsigned")
    password = None
    if args.password_file:
        try:
            with open(args.password_file) as f:
                password = f.read().strip()
        except OSError as exc:
            raise ConfigurationError(f"cannot read password file {args.password_file}: "
                                     f"{exc.strerror}") from None
    try:
        broker = Broker.from_url(args.broker, username=args.username, password=password,
                                 ca_file=args.ca_file, insecure=args.insecure or None)
    except ValueError as exc:
        raise ConfigurationError(str(exc)) from None
    thresholds = {k: getattr(args, k) for k in THRESHOLDS if getattr(args, k) is not None}
    bench = {"runs": args.runs, "warmup_runs": args.warmup, "min_seconds": args.min_seconds,
             "threads": args.threads}

    def progress(event: str, info: dict[str, Any]) -> None:
        if event == "report" and not args.json:
            reason = f": {info['reason']}" if info.get("reason") else ""
            print(f"  {info['state']}{reason}", file=sys.stderr)

    report = deploy(args.model, args.device, broker, probes=args.probes, thresholds=thresholds,
                    key=None if args.unsigned else args.key, benchmark=bench,
                    timeout=args.timeout, chunk_size=args.chunk_size, progress=progress,
                    deployment_id=args.deployment_id)
    if args.json:
        print(report.model_dump_json(indent=2))
    else:
        print(format_report(report))
    return 0 if report.ok else 1


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
