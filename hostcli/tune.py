"""`paoding-edge tune`: the pruning and export that meet a device profile's budgets.

    paoding-edge tune model.keras --profile raspberry-pi-4 --eval-data digits28 -o out/
    paoding-edge tune model.keras --profile raspberry-pi-4 --eval-data data.npz \\
        --verify-on pi-01 -o out/     # the broker profile's connection, PAODING_SIGNING_KEY

Prints the table of candidates (the chosen one marked '*'), writes
out/model.tflite, out/model.keras, out/report.json and out/report.png. With
--verify-on the outcome is a candidate VERIFIED on the device (measured, every
budget met with the noise margin, active there) or none. When no candidate meets
the budgets (or none could be verified) it still writes the report and plot,
names the closest candidate and what it misses, writes no model and exits with
status 2.
"""

from __future__ import annotations

import argparse
import json
import shutil
import tempfile
from pathlib import Path
from typing import Any

from core.errors import ConfigError
from hostcli import lineage
from hostcli.options import (
    add_connection_arguments,
    add_ratio_arguments,
    add_trust_arguments,
    broker_from_args,
    device_key_for,
    flat,
    key_from_args,
    listed,
)
from pruner.evaldata import BUNDLED, load_eval_data
from tuner.objectives import OBJECTIVES


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("model", help="Keras model (.keras or .h5)")
    parser.add_argument("--profile", required=True, help="device profile id or file")
    parser.add_argument(
        "--eval-data",
        help="labelled evaluation data: an .npz with x and y, or a bundled set "
        f"({', '.join(BUNDLED)}: its test split). Without it, accuracy is agreement "
        "with the original on random inputs from the input box",
    )
    parser.add_argument("--input-range", nargs=2, type=float, default=(0.0, 1.0),
                        metavar=("LO", "HI"), help="the input box, every feature (default 0 1)")
    parser.add_argument("--modes", nargs="+", type=listed(str), default=["paoding", "greedy"],
                        metavar="MODE", help="pruning modes to search (default paoding greedy; "
                        "also baseline, magnitude, random)")
    parser.add_argument("--objective", choices=tuple(OBJECTIVES), default="robust",
                        help="among the candidates that meet every budget, take the most "
                        "robust (default), the smallest or the fastest")
    parser.add_argument("--seeds", nargs="+", type=listed(int), default=[0], metavar="SEED",
                        help="seeds to search (default 0)")
    parser.add_argument("--export", nargs="+", type=listed(str), metavar="Q",
                        help="export types to search: float32 float16 dynamic int8 "
                        "(default: those the profile's runtime loads)")
    parser.add_argument(
        "--representative-data",
        metavar="PATH",
        help="unlabeled inputs (.npy, .npz, or a folder of images of the model's input "
        "size): without --eval-data, agreement with the original is measured on them "
        "instead of random inputs; int8 calibrates on them",
    )
    add_ratio_arguments(parser)
    parser.add_argument(
        "--per-export",
        type=int,
        default=2,
        help="quantised candidates to export per type (default 2)",
    )
    parser.add_argument("--eps", nargs="+", type=listed(float), default=[0.05], metavar="EPS",
                        help="attack epsilons, absolute (default 0.05)")
    parser.add_argument(
        "--verify-on",
        metavar="DEVICE_ID",
        help="measure the chosen candidate on this agent over MQTT",
    )
    add_connection_arguments(parser)
    add_trust_arguments(parser)
    parser.add_argument(
        "--rounds",
        type=int,
        default=6,
        help="most candidates to deploy and measure before giving up (default 6)",
    )
    parser.add_argument(
        "--timeout",
        type=float,
        default=180.0,
        help="seconds to wait for each device report (default 180)",
    )
    parser.add_argument("-o", "--output", required=True, help="output directory")
    parser.add_argument("--no-progress", action="store_true", help="no progress bars")


def _nonempty(values: list[Any], name: str) -> list[Any]:
    if not values:
        raise ConfigError(f"--{name} is empty")
    return values


def probes_for(search: Any, n: int = 100) -> dict[str, Any]:
    """Probe bundle crafted on the original model from the search's evaluation inputs."""
    from pruner.probes import build_probes
    from tuner.quiet import native_quiet

    with native_quiet():
        return build_probes(
            search.model,
            search.x,
            search.y,
            eps=search.eps,
            box=search.box,
            attacks=search.attacks,
            n=min(n, len(search.x)),
        )


def run(args: argparse.Namespace) -> int:
    from tuner.quiet import native_quiet

    with native_quiet():  # TensorFlow's start-up notices
        import tensorflow  # noqa: F401

    import device_profiles
    import tuner as tn
    from pruner.bounds import InputBox
    from pruner.io import load_model

    profile = device_profiles.load(args.profile)
    device_key = device_key_for(args, args.verify_on) if args.verify_on else None
    broker = broker_from_args(args) if args.verify_on else None
    key = key_from_args(args) if args.verify_on else None
    out = Path(args.output)
    if out.exists() and (
        not out.is_dir() or any(f.name not in tn.OUTPUT_FILES for f in out.iterdir())
    ):
        raise ConfigError(
            f"output {out} exists and holds other files: give a new or empty "
            "directory (or a previous tune output)"
        )
    model = load_model(args.model)
    data = (load_eval_data(args.eval_data, tuple(model.inputs[0].shape[1:]))
            if args.eval_data else None)
    modes = _nonempty(flat(args.modes), "modes")
    seeds = _nonempty(flat(args.seeds), "seeds")
    eps = _nonempty(flat(args.eps), "eps")
    exports = _nonempty(flat(args.export), "export") if args.export else None
    representative = None
    if args.representative_data:
        from pruner.representative import load_representative

        representative = load_representative(
            args.representative_data, tuple(int(d) for d in model.inputs[0].shape[1:]),
            *args.input_range)
    search = tn.Search.create(
        model, data, input_box=InputBox(*args.input_range), eps=eps, progress=not args.no_progress,
        representative=representative,
    )
    result = tn.tune(
        model,
        profile,
        search=search,
        modes=modes,
        seeds=seeds,
        exports=exports,
        max_ratio=args.max_ratio,
        step=args.step,
        per_export=args.per_export,
        progress=not args.no_progress,
        objective=args.objective,
    )
    print(tn.table(result))
    print(result.statement)
    if not search.labelled:
        inputs = ("the representative inputs" if representative is not None
                  else "random inputs from the input box")
        print(
            f"note: no --eval-data: 'acc' is top-1 agreement with the original on {inputs}, "
            "and robust accuracy around them says little; give labelled data for real "
            "accuracy and robustness floors"
        )
    saved = Path(tempfile.mkdtemp(prefix="paoding-verify-"))
    if args.verify_on and result.chosen is not None:
        deployer = tn.mqtt_deployer(
            args.verify_on,
            broker,
            profile,
            probes=probes_for(search),
            key=key,
            timeout=args.timeout,
            save_dir=saved,
            device_key=device_key,
        )
        tn.verify(result, search, deployer, rounds=args.rounds, device=args.verify_on)
        print(tn.table(result))
        print(result.statement)
        for v in result.verification:
            if v.get("emulated"):
                print(
                    f"note: latency measured on {v['device_id']} under HOST EMULATION "
                    f"({v.get('emulation')}), not on a real device"
                )
    tn.save(result, out)
    if result.chosen is not None and result.model_bytes is not None and lineage.wanted(args.db):
        import hashlib

        from core.files import sha256_file

        c = result.chosen
        facts = {"source": Path(args.model).name, "profile": profile.id, "key": c.key,
                 "mode": c.mode, "seed": c.seed, "ratio": c.ratio, "export": c.export,
                 "accuracy": c.accuracy, "robust": c.robust,
                 "predicted_p90_ms": c.predicted_p90_ms,
                 "predicted_memory_mb": c.predicted_memory_mb, "outcome": result.outcome,
                 "device": result.device, "measured": c.measured,
                 "path": str((out / "model.tflite").resolve())}
        label = lineage.record(args.db, [("tune", sha256_file(args.model),
                                          hashlib.sha256(result.model_bytes).hexdigest(),
                                          facts)])
        print(f"lineage recorded in {label}")
    print(
        f"wrote {out}/report.json, {out}/report.png"
        + (f", {out}/model.tflite, {out}/model.keras" if result.chosen else "")
    )
    if any(saved.iterdir()):
        from hostcli.deploy import record

        for report in sorted((saved / "reports").glob("*.json")):
            record(args.db, json.loads(report.read_text()), "tune")
        dest = out / "devices" / str(args.verify_on)
        dest.parent.mkdir(parents=True, exist_ok=True)
        shutil.move(str(saved), dest)
        print(f"kept the agent's reports and the deployed models in {dest}")
    else:
        shutil.rmtree(saved, ignore_errors=True)
    tn.raise_if_impossible(result)
    return 0
