"""`paoding-edge fleet`: what each device runs (from its signed reports), and the history."""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--db",
        default=os.environ.get("PAODING_DB", "fleet.sqlite"),
        help="the fleet record: a SQLite file or a postgresql:// URL (env PAODING_DB)",
    )
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
    from fleet.db import is_postgres_url
    from fleet.registry import Registry
    from fleet.rollout import Device

    if not is_postgres_url(args.db) and not Path(args.db).is_file():
        raise ConfigError(f"no fleet record at {args.db}: run `paoding-edge rollout` first")
    with Registry(args.db) as reg:
        if args.tag:
            device_id, *tags = args.tag
            known = {d.device_id: d for d in reg.devices()}
            if device_id not in known:
                raise ConfigError(f"no device {device_id!r} in {reg.label}")
            reg.upsert_device(Device(device_id, known[device_id].profile, frozenset(tags)))
        devices = reg.device_rows()
        history = reg.deployments(args.device)
        rollouts = reg.rollouts()
        refused = reg.rejections()
    if args.json:
        for r in rollouts:
            r["spec"] = {k: r["spec"][k] for k in ("variants", "policy") if k in r["spec"]}
        print(json.dumps({"devices": devices, "deployments": history, "rollouts": rollouts,
                          "refused_messages": refused},
                         indent=2, default=str))
        return 0
    print(f"{'device':<24} {'profile':<28} {'online':<6} {'runs model':<16} "
          f"{'rollout lock':<24} tags")
    for d in devices:
        print(
            f"{d['device_id']:<24} {d['profile']:<28} {'yes' if d['online'] else 'no':<6} "
            f"{(d['active_sha'] or '-')[:16]:<16} {d.get('lock_rollout') or '-':<24} "
            f"{' '.join(json.loads(d['tags']))}"
        )
    if rollouts:
        print(f"\n{'rollout':<24} {'state':<8} reason")
        for r in rollouts:
            print(f"{r['rollout_id']:<24} {r['state']:<8} {r['reason'] or ''}")
    if refused:
        print(f"\n{'refused device messages':<24} {'count':>8}  last reason")
        for r in refused:
            print(f"{r['cause']:<24} {r['count']:>8}  {r['last_reason'] or ''}")
    print(f"\n{'started':<20} {'device':<24} {'rollout':<24} {'wave':>4}  {'outcome':<12} reason")
    for h in history:
        started = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(h["started_at"]))
        print(
            f"{started:<20} {h['device_id']:<24} {h['rollout_id'] or '-':<24} {h['wave']:>4}  "
            f"{h['outcome']:<12} {h['reason'] or ''}"
        )
    return 0
