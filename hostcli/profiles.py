"""`paoding-edge profiles`: list, show, validate and calibrate device profiles.

paoding-edge profiles                      # the table of known profiles
paoding-edge profiles show raspberry-pi-4  # one profile, as YAML
paoding-edge profiles validate my.yaml     # field-level errors, exit 2 when bad
paoding-edge profiles calibrate raspberry-pi-4 --db fleet.sqlite   # from the fleet's reports
paoding-edge profiles calibrate dev-host --from-reports out/report.json
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path
from typing import Any

from core.errors import PaodingError


def add_arguments(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="action", metavar="ACTION")
    sub.add_parser("list", help="list the known profiles (the default)")
    show = sub.add_parser("show", help="print one profile")
    show.add_argument("profile", help="profile id or file")
    show.add_argument("--json", action="store_true", help="JSON instead of YAML")
    val = sub.add_parser("validate", help="validate profile files; errors name the field")
    val.add_argument("files", nargs="+")
    cal = sub.add_parser("calibrate", help="refit a profile's latency model from measured reports")
    cal.add_argument("profile", help="profile id or file")
    cal.add_argument(
        "--db",
        default=os.environ.get("PAODING_DB", "fleet.sqlite"),
        metavar="FILE_OR_URL",
        help="the fleet record whose VERIFIED reports to fit (SQLite file or postgresql:// URL; "
        "env PAODING_DB; the default source)",
    )
    cal.add_argument(
        "--from-reports",
        nargs="+",
        metavar="JSON",
        help="instead of --db: agent deployment reports (with --models), or tune/demo/bench "
        "reports holding 'measurements'",
    )
    cal.add_argument(
        "--models",
        metavar="DIR",
        help="the deployed .tflite files, matched to agent reports by sha256",
    )
    cal.add_argument(
        "-o",
        "--output",
        help="where to write the calibrated profile (default: the user profile directory)",
    )
    cal.add_argument(
        "--allow-emulated",
        action="store_true",
        help="accept emulated measurements for a profile that is not an emulation",
    )


def _table(rows: list[list[str]], header: list[str]) -> str:
    widths = [max(len(str(r[i])) for r in [header, *rows]) for i in range(len(header))]
    lines = ["  ".join(str(c).ljust(w) for c, w in zip(header, widths, strict=True))]
    lines.append("  ".join("-" * w for w in widths))
    lines += ["  ".join(str(c).ljust(w) for c, w in zip(r, widths, strict=True)) for r in rows]
    return "\n".join(line.rstrip() for line in lines)


def _list() -> int:
    import device_profiles as dp

    rows = []
    for pid in dp.list_profiles():
        try:
            p = dp.load(pid)
        except dp.ProfileError as exc:
            rows.append([pid, f"INVALID: {exc}", "", "", "", "", "", ""])
            continue
        b = p.budgets
        rows.append(
            [
                p.id,
                p.name,
                f"{p.runtime.interpreter} {p.runtime.version} x{p.runtime.threads}",
                f"{b.p90_latency_ms:g}",
                f"{b.peak_memory_mb:g}",
                f"{b.model_size_kb:g}",
                p.latency.provenance,
                "yes" if p.emulated else "no",
            ]
        )
    header = ["id", "name", "runtime", "p90 ms", "mem MB", "size KB", "latency model", "emulated"]
    print(_table(rows, header))
    return 0


def _show(args: argparse.Namespace) -> int:
    import device_profiles as dp

    p = dp.load(args.profile)
    where = dp.locate(p.id) if not Path(args.profile).suffix else Path(args.profile)
    if args.json:
        print(json.dumps(p.model_dump(mode="json", exclude_none=True), indent=2))
    else:
        print(f"# {where}")
        print(dp.dump(p), end="")
    return 0


def _validate(args: argparse.Namespace) -> int:
    import device_profiles as dp

    bad = []
    for f in args.files:
        try:
            p = dp.load_file(f)
            print(f"{f}: ok ({p.id})")
        except dp.ProfileError as exc:
            bad.append(str(exc))
    if bad:
        raise dp.ProfileError("; ".join(bad) if len(bad) > 1 else bad[0])
    return 0


def _model_index(models: str | None) -> dict[str, Path]:
    import hashlib

    if not models:
        return {}
    d = Path(models)
    if not d.is_dir():
        raise PaodingError(f"--models {d} is not a directory")
    return {hashlib.sha256(f.read_bytes()).hexdigest(): f for f in d.glob("*.tflite")}


def _from_agent_report(path: Path, data: dict[str, Any], models: dict[str, Path]) -> dict:
    """A measurement record from an agent's DeploymentReport and the model it ran."""
    from device_profiles import latency

    bench = data.get("benchmark") or {}
    sha = data.get("model_sha256")
    if not bench.get("latency_ms"):
        raise PaodingError(f"report {path} has no benchmark (state {data.get('state')})")
    if bench.get("cpu_emulator"):
        raise PaodingError(
            f"report {path}: measured under {bench['cpu_emulator']}, the emulator's latency, "
            "not a device measurement: it cannot calibrate a profile"
        )
    if sha not in models:
        raise PaodingError(
            f"report {path}: model {str(sha)[:12]}... not found (pass --models DIR holding the "
            "deployed .tflite files)"
        )
    feats = latency.features_from_tflite(models[sha].read_bytes())
    return {
        "features": feats.to_dict(),
        "p90_ms": bench["latency_ms"]["p90"],
        "peak_memory_mb": bench.get("peak_memory_mb"),
        "emulated": bool(bench.get("emulated")),
        "label": f"{data.get('device_id')}/{data.get('deployment_id')}",
    }


def _records(path: Path, models: dict[str, Path] | None = None) -> list[dict[str, Any]]:
    try:
        data = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise PaodingError(f"cannot read report {path}: {exc}") from None
    if isinstance(data, dict) and "model_sha256" in data and "benchmark" in data:
        return [_from_agent_report(path, data, models or {})]
    if isinstance(data, dict) and "measurements" in data:
        data = data["measurements"]
    if isinstance(data, dict):
        data = [data]
    if not isinstance(data, list) or not data:
        raise PaodingError(f"report {path} holds no measurements (expected 'measurements': [...])")
    return data


def _from_files(args: argparse.Namespace, profile_id: str) -> tuple[list[Any], str]:
    """Measurements of ``profile_id`` in report files, and where they came from."""
    from device_profiles import latency

    data: list[latency.Measurement] = []
    models = _model_index(args.models)
    for f in args.from_reports:
        for i, rec in enumerate(_records(Path(f), models)):
            if rec.get("profile") not in (None, profile_id):
                continue  # measured on another device class
            try:
                data.append(latency.Measurement.from_dict(rec))
            except ValueError as exc:
                raise PaodingError(f"{f}: measurement {i}: {exc}") from None
    if not data:
        raise PaodingError(f"the reports hold no measurements for profile {profile_id!r}")
    return data, ", ".join(Path(f).name for f in args.from_reports)


def _from_db(db: str, profile_id: str) -> tuple[list[Any], str]:
    """The VERIFIED reports of ``profile_id`` in the fleet record, and its label."""
    from fleet.calibration import observations
    from fleet.db import is_postgres_url
    from fleet.registry import Registry

    if not is_postgres_url(db) and not Path(db).is_file():
        raise PaodingError(f"no fleet record at {db} (give --db FILE_OR_URL or set PAODING_DB)")
    with Registry(db) as registry:
        found = observations(registry, profile_id)
        label = registry.label
    if not found.measurements:
        lost = (f" ({found.without_model} without their model's bytes in the record)"
                if found.without_model else "")
        raise PaodingError(
            f"no VERIFIED reports of profile {profile_id!r} in {label}{lost}: deploy to its "
            "devices first")
    return found.measurements, f"the fleet record {label}"


def _calibrate(args: argparse.Namespace) -> int:
    import device_profiles as dp
    from device_profiles import calibration

    current = dp.load(args.profile)
    by_id = not Path(args.profile).suffix and os.sep not in args.profile
    base = (dp.shipped(current.id) if by_id else None) or current
    if args.from_reports:
        data, origin = _from_files(args, current.id)
    else:
        data, origin = _from_db(args.db, current.id)
    if len(data) < calibration.MIN_OBSERVATIONS:
        raise PaodingError(
            f"only {len(data)} measurement(s) of profile {current.id!r} in {origin}: "
            f"calibration needs at least {calibration.MIN_OBSERVATIONS}")
    emulated = sum(m.emulated for m in data)
    if emulated and not current.emulated and not args.allow_emulated:
        raise PaodingError(
            f"{emulated} of {len(data)} measurements were taken under host emulation; "
            f"calibrate an emulated profile, or pass --allow-emulated"
        )
    kind = "emulated on the development host" if emulated else "measured on the device"
    source = (
        f"Calibrated from {len(data)} measurements ({kind}) in {origin}; previous model: "
        f"{base.latency.provenance}."
    )
    try:
        new = calibration.calibrate(base, data, source=source)
    except ValueError as exc:
        raise PaodingError(str(exc)) from None
    dp.validate(new.model_dump(mode="json"), "calibrated profile")
    out = Path(args.output) if args.output else dp.user_dir() / f"{current.id}.yaml"
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_suffix(out.suffix + ".tmp")
    tmp.write_text(
        f"# Calibrated by `paoding-edge profiles calibrate` from {len(data)} measurements.\n"
        + dp.dump(new)
    )
    tmp.replace(out)
    rows = [calibration.error_row(f"before: {'shipped' if by_id else 'given'} "
                                  f"({base.latency.provenance})",
                                  calibration.errors(base.latency, data))]
    if current.latency != base.latency:
        rows.append(calibration.error_row(
            f"before: in use (calibrated {(current.latency.calibrated_at or '')[:10]})",
            calibration.errors(current.latency, data)))
    rows.append(calibration.error_row("after: calibrated now (in-sample)",
                                      calibration.errors(new.latency, data)))
    print(f"calibrated {current.id} from {len(data)} measurements ({kind}) in {origin}")
    print(_table(rows, calibration.ERROR_HEADER))
    print(f"written to {out}")
    if by_id and dp.locate(current.id) == out:
        print(f"`paoding-edge tune --profile {current.id}` now uses it")
    return 0


def run(args: argparse.Namespace) -> int:
    action = getattr(args, "action", None) or "list"
    if action == "list":
        return _list()
    if action == "show":
        return _show(args)
    if action == "validate":
        return _validate(args)
    return _calibrate(args)
