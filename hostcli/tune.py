"""`paoding-edge tune`: the pruning and export that meet a device profile's budgets.

    paoding-edge tune model.keras --profile raspberry-pi-4 --eval-data digits28 -o out/
    paoding-edge tune model.keras --profile raspberry-pi-4-emulated --eval-data data.npz \\
        --verify-on pi-01 --broker mqtt://127.0.0.1:1883 --key keys/paoding.key -o out/

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
import shutil
import tempfile
from pathlib import Path
from typing import Any

from core.errors import ConfigError
from hostcli.options import add_ratio_arguments, add_trust_arguments, device_key_for
from pruner.evaldata import BUNDLED, load_eval_data


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("model", help="Keras model (.keras or .h5)")
    parser.add_argument("--profile", required=True, help="device profile id or file")
    parser.add_argument(
        "--eval-data",
        help="labelled evaluation data: an .npz with x and y, or a bundled set "
        f"({', '.join(BUNDLED)}: its test split). Without it, accuracy is agreement "
        "with the original on random inputs from the input box",
    )
    parser.add_argument(
        "--representative-data",
        metavar="PATH",
        help="unlabeled inputs (.npy, .npz, or a folder of images of the model's input "
        "size): without --eval-data, agreement with the original is measured on them "
        "instead of random inputs; int8 calibrates on them",
    )
    parser.add_argument(
        "--input-box",
        nargs=2,
        type=float,
        default=(0.0, 1.0),
        metavar=("LO", "HI"),
        help="input range (default 0 1)",
    )
    parser.add_argument(
        "--modes",
        default="paoding,greedy",
        help="pruning modes to search, comma-separated (default paoding,greedy; also "
        "baseline, magnitude, random)",
    )
    parser.add_argument("--seeds", default="0", help="seeds to search, comma-separated")
    parser.add_argument("--exports", help="export types to search (default: the profile's)")
    add_ratio_arguments(parser)
    parser.add_argument(
        "--per-export",
        type=int,
        default=2,
        help="quantised candidates to export per type (default 2)",
    )
    parser.add_argument("--eps", default="0.05", help="attack epsilons, comma-separated")
    parser.add_argument(
        "--verify-on",
        metavar="DEVICE_ID",
        help="measure the chosen candidate on this agent over MQTT",
    )
    parser.add_argument("--broker", help="broker URL for --verify-on (mqtt://host:port)")
    parser.add_argument("--key", help="signing key for the deployment (Ed25519 PEM)")
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


def _csv(text: str, kind: type, name: str) -> list[Any]:
    try:
        values = [kind(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise ConfigError(f"--{name} must be a comma-separated list of {kind.__name__}") from None
    if not values:
        raise ConfigError(f"--{name} is empty")
    return values


def probes_for(search: Any, n: int = 100) -> dict[str, Any]:
    """Probe bundle crafted on the original model from the search's evaluation inputs."""
    from pruner.probes import build_probes

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
    if args.verify_on and not args.broker:
        raise ConfigError("--verify-on needs --broker mqtt://host:port")
    device_key = device_key_for(args, args.verify_on) if args.verify_on else None
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
    modes = _csv(args.modes, str, "modes")
    seeds = _csv(args.seeds, int, "seeds")
    eps = _csv(args.eps, float, "eps")
    exports = _csv(args.exports, str, "exports") if args.exports else None
    representative = None
    if args.representative_data:
        from pruner.representative import load_representative

        representative = load_representative(
            args.representative_data, tuple(int(d) for d in model.inputs[0].shape[1:]),
            *args.input_box)
    search = tn.Search.create(
        model, data, input_box=InputBox(*args.input_box), eps=eps, progress=not args.no_progress,
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
            args.broker,
            profile,
            probes=probes_for(search),
            key=args.key,
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
    print(
        f"wrote {out}/report.json, {out}/report.png"
        + (f", {out}/model.tflite, {out}/model.keras" if result.chosen else "")
    )
    if any(saved.iterdir()):
        dest = out / "devices" / str(args.verify_on)
        dest.parent.mkdir(parents=True, exist_ok=True)
        shutil.move(str(saved), dest)
        print(f"kept the agent's reports and the deployed models in {dest}")
    else:
        shutil.rmtree(saved, ignore_errors=True)
    tn.raise_if_impossible(result)
    return 0
