"""`paoding-edge fleet`: what each device runs (from its signed reports), and the history."""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from hostcli.options import add_db_argument, add_profile_argument


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_db_argument(parser)
    add_profile_argument(parser)
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
    from fleet.history import measures
    from fleet.registry import Registry
    from fleet.rollout import Device

    if not is_postgres_url(args.db) and not Path(args.db).is_file():
        raise ConfigError(f"no fleet record at {args.db}: `paoding-edge enrol` creates it "
                          "(or give --db FILE_OR_URL, env PAODING_DB)")
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
        finals = reg.final_reports()
    for h in history:  # what the device measured, where it said
        body = finals.get(h["deployment_id"], {})
        h.update(measures(body))
        h["source"] = h["rollout_id"] or body.get("source") or "deploy"
    for d in devices:  # what the model it runs measured there (its latest active deployment)
        runs = [h for h in history if h["device_id"] == d["device_id"]
                and h["outcome"] == "active" and h["model_sha256"] == d["active_sha"]]
        d.update(measures({}) if not runs else
                 {k: runs[-1][k] for k in ("p90_ms", "clean_accuracy", "robust_accuracy")})
    if args.json:
        for r in rollouts:
            r["spec"] = {k: r["spec"][k] for k in ("variants", "policy") if k in r["spec"]}
        print(json.dumps({"devices": devices, "deployments": history, "rollouts": rollouts,
                          "refused_messages": refused},
                         indent=2, default=str))
        return 0
    print(f"{'device':<24} {'profile':<28} {'online':<6} {'runs model':<16} {'p90 ms':>8} "
          f"{'acc':>6} {'robust':>6}  {'rollout lock':<24} tags")
    for d in devices:
        print(
            f"{d['device_id']:<24} {d['profile']:<28} {'yes' if d['online'] else 'no':<6} "
            f"{(d['active_sha'] or '-')[:16]:<16} {_num(d['p90_ms'], '.3f'):>8} "
            f"{_num(d['clean_accuracy'], '.3f'):>6} {_num(d['robust_accuracy'], '.3f'):>6}  "
            f"{d.get('lock_rollout') or '-':<24} "
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
    print(f"\n{'started':<20} {'device':<24} {'by':<24} {'outcome':<12} {'p90 ms':>8} "
          f"{'acc':>6} {'robust':>6}  reason")
    for h in history:
        started = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(h["started_at"]))
        print(
            f"{started:<20} {h['device_id']:<24} {h['source']:<24} {h['outcome']:<12} "
            f"{_num(h['p90_ms'], '.3f'):>8} {_num(h['clean_accuracy'], '.3f'):>6} "
            f"{_num(h['robust_accuracy'], '.3f'):>6}  {h['reason'] or ''}"
        )
    print(f"\n(record: {args.db})")
    return 0


def _num(v: float | None, fmt: str) -> str:
    return "-" if v is None else format(v, fmt)
