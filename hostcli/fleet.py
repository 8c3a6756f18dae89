"""`paoding-edge fleet`: the recorded devices and their deployment history."""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--db", default="fleet.sqlite", help="the fleet record (SQLite)")
    parser.add_argument("--device", help="only this device's history")
    parser.add_argument(
        "--tag",
        nargs="+",
        metavar=("DEVICE", "TAG"),
        help="set a device's tags: --tag DEVICE TAG [TAG ...]",
    )
    parser.add_argument("--json", action="store_true")


def run(args: argparse.Namespace) -> int:
    from core.errors import ConfigError
    from fleet.registry import Registry
    from fleet.rollout import Device

    if not Path(args.db).is_file():
        raise ConfigError(f"no fleet record at {args.db}: run `paoding-edge rollout` first")
    with Registry(args.db) as reg:
        if args.tag:
            device_id, *tags = args.tag
            known = {d.device_id: d for d in reg.devices()}
            if device_id not in known:
                raise ConfigError(f"no device {device_id!r} in {args.db}")
            reg.upsert_device(Device(device_id, known[device_id].profile, frozenset(tags)))
        devices = reg.device_rows()
        history = reg.deployments(args.device)
    if args.json:
        print(json.dumps({"devices": devices, "deployments": history}, indent=2))
        return 0
    print(f"{'device':<24} {'profile':<28} {'online':<6} {'active model':<16} tags")
    for d in devices:
        print(
            f"{d['device_id']:<24} {d['profile']:<28} {'yes' if d['online'] else 'no':<6} "
            f"{(d['active_sha'] or '-')[:16]:<16} {' '.join(json.loads(d['tags']))}"
        )
    print(f"\n{'started':<20} {'device':<24} {'rollout':<24} {'wave':>4}  {'outcome':<12} reason")
    for h in history:
        started = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(h["started_at"]))
        print(
            f"{started:<20} {h['device_id']:<24} {h['rollout_id'] or '-':<24} {h['wave']:>4}  "
            f"{h['outcome']:<12} {h['reason'] or ''}"
        )
    return 0
