"""`paoding-edge prune MODEL -o DIR`: prune a Keras model, export TFLite, report.

DIR receives ``pruned.keras``, ``pruned.tflite`` (float32), one
``pruned_<quantization>.tflite`` per other ``--export``, ``report.json`` (the
per-step trajectory and the exports) and ``report.png``. Everything is written
into a temporary sibling directory first and moved into DIR at the end, so a
failure leaves DIR as it was.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import sys
import time
import warnings
from pathlib import Path
from typing import Any

from core.errors import ConfigError, PaodingWarning
from core.files import sha256_file, staged_dir
from hostcli.options import flat, listed
from pruner.config import PruneConfig
from pruner.evaldata import check_eps, check_fits, check_in_range, check_range, load_eval_data

MODES = ("paoding", "greedy", "baseline", "magnitude", "random")
QUANTIZATIONS = ("float32", "float16", "dynamic", "int8")
DEFAULT_EPS = (0.01, 0.05, 0.1)


def add_common(parser: argparse.ArgumentParser) -> None:
    """Options shared by the commands that read a model and evaluation data."""
    parser.add_argument("model", help="the trained Keras model (.keras or .h5)")
    parser.add_argument("--input-range", nargs=2, type=float, default=(0.0, 1.0),
                        metavar=("LO", "HI"), help="the input box, every feature (default 0 1)")
    parser.add_argument("--eps", nargs="+", type=listed(float), default=list(DEFAULT_EPS),
                        metavar="EPS", help="attack epsilons, absolute (default 0.01 0.05 0.1)")
    parser.add_argument("--seed", type=int, default=0, help="random seed (default 0)")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_common(parser)
    parser.add_argument("--target", type=float, default=0.5,
                        help="share of prunable units to remove, in (0, 1) (default 0.5)")
    parser.add_argument("--mode", choices=MODES, default="paoding",
                        help="selection method (default paoding)")
    parser.add_argument("--step", type=float, default=0.05,
                        help="share of each layer's width removed per step (default 0.05)")
    parser.add_argument("--scope", choices=("layer", "global", "sequential"), default="layer",
                        help="paoding/greedy: quotas per layer (default), ranked across "
                        "layers, or one layer at a time front to back (helps MLPs pruned "
                        "past 70%%)")
    parser.add_argument("--round-to", type=int, default=0, metavar="N",
                        help="kept widths in multiples of N; 0 (default): SIMD-friendly "
                        "multiples on DAG models (16 from 64 channels, 8 from 16), exact "
                        "targets on chains; 1: exact targets everywhere")
    parser.add_argument("--fidelity-floor", type=float, default=0.9, metavar="F",
                        help="without --eval-data: stop, and fail short of the target, when "
                        "the estimated share of inputs answered as by the original is "
                        "below F even at its upper 95%% bound (default 0.9; docs/fidelity.md)")
    parser.add_argument("--keep-below-floor", action="store_true",
                        help="prune to the target even below the fidelity floor (the report "
                        "and stderr still say so)")
    parser.add_argument("--synthetic", type=int, default=192, metavar="N",
                        help="inputs synthesised from the model for scoring, compensation "
                        "and the fidelity figure; 0 turns synthesis off (default 192)")
    steps = PruneConfig.synthesis_steps
    parser.add_argument("--synthesis-steps", type=int, default=steps, metavar="N",
                        help=f"optimisation steps of the synthesis (default {steps}; fewer "
                        "are faster and cost accuracy on large models, under 50 blind the "
                        "fidelity figure: bench/results/synthesis_steps.md)")
    parser.add_argument("--compensation", choices=("reconstruct", "bias", "none"),
                        default="reconstruct", help="paoding/greedy: refit each consumer on "
                        "the synthesised inputs (default), correct biases only, or none")
    parser.add_argument("--eval-data", metavar="NPZ",
                        help="labelled evaluation set: an .npz with arrays x and y; measured "
                        "accuracy then decides the stop and the verdict")
    parser.add_argument("--max-accuracy-drop", type=float, default=0.03, metavar="D",
                        help="with --eval-data: accuracy the model may lose, as a fraction "
                        "(default 0.03: 3 points)")
    parser.add_argument("--representative-data", metavar="PATH",
                        help="unlabeled inputs (.npy, .npz, or a folder of images of the "
                        "model's input size): the fidelity check and int8 calibration use "
                        "them instead of synthesised inputs")
    parser.add_argument("--export", nargs="+", choices=QUANTIZATIONS, default=["float32"],
                        metavar="Q", help="TFLite exports: float32 float16 dynamic int8 "
                        "(default float32)")
    parser.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    parser.add_argument("--db", default=os.environ.get("PAODING_DB"),
                        help="record the lineage (source digest, mode, target, seed, "
                        "fidelity, accuracy, outputs) in this fleet record: a SQLite file or "
                        "a postgresql:// URL (env PAODING_DB)")
    parser.add_argument("-o", "--output", required=True, metavar="DIR",
                        help="output directory (created; existing files of the same name "
                        "are replaced only on success)")


def note(command: str, message: str) -> None:
    print(f"paoding-edge {command}: {message}", file=sys.stderr)


# -- the command ------------------------------------------------------------------------------

def config_from(args: argparse.Namespace) -> Any:
    """The PruneConfig of the command line (validated, with the option names in errors)."""
    lo, hi = check_range(*args.input_range)
    try:
        return PruneConfig(
            target=args.target, step=args.step, round_to=args.round_to, mode=args.mode,
            scope=args.scope,
            seed=args.seed, input_lo=lo, input_hi=hi, eps=tuple(check_eps(flat(args.eps))),
            fidelity_floor=args.fidelity_floor, keep_below_floor=args.keep_below_floor,
            synthetic=args.synthetic, synthesis_steps=args.synthesis_steps,
            compensation=args.compensation, max_accuracy_drop=args.max_accuracy_drop,
        )
    except ConfigError as exc:
        name, _, rest = str(exc).partition(" ")
        if name not in PruneConfig.__dataclass_fields__:
            raise
        raise ConfigError(f"--{name.replace('_', '-')} {rest}") from None


def run(args: argparse.Namespace) -> int:
    config = config_from(args)
    lo, hi = config.input_lo, config.input_hi
    exports = list(dict.fromkeys(args.export))
    eval_data = load_eval_data(args.eval_data) if args.eval_data else None
    if eval_data is not None:
        check_in_range(eval_data[0], lo, hi)
    if not Path(args.model).is_file():
        from core.errors import ModelLoadError

        raise ModelLoadError(f"model file {args.model} does not exist")
    out = Path(args.output)
    if out.exists() and not out.is_dir():
        raise ConfigError(f"-o {out} exists and is not a directory")

    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    from pruner import report
    from pruner.api import prune
    from pruner.bounds import InputBox
    from pruner.export import export_tflite, tflite_ops
    from pruner.io import load_model

    started = time.time()
    model = load_model(args.model)
    if eval_data is not None:
        check_fits(model, *eval_data)
    representative = None
    if args.representative_data:
        from pruner.representative import load_representative

        representative = load_representative(
            args.representative_data, tuple(int(d) for d in model.inputs[0].shape[1:]), lo, hi)
    box = InputBox(lo, hi)
    with warnings.catch_warnings(record=True) as caught:  # the pruner's own, one line each
        warnings.simplefilter("always")
        result = prune(model, config=config, eval_data=eval_data, progress=not args.no_progress,
                       representative_data=representative)
    for w in caught:
        if isinstance(w.message, PaodingWarning):
            note("prune", f"warning: {w.message}")
    fid = result.final.data_free_fidelity
    verdict = result.final.verdict
    if verdict is not None and not verdict["passed"]:  # only with --keep-below-floor
        from pruner.verdict import from_dict

        note("prune", f"warning: below the floor: {from_dict(verdict).describe()}; the model "
             "was kept because of --keep-below-floor")

    with staged_dir(out) as tmp:
        result.model.save(tmp / "pruned.keras")
        files: dict[str, Any] = {}
        for q in exports:
            name = "pruned.tflite" if q == "float32" else f"pruned_{q}.tflite"
            calib = representative if representative is not None else (
                eval_data[0][:200] if eval_data is not None else None)
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always")
                data = export_tflite(result.model, tmp / name, quantization=q,
                                     representative_data=calib, box=box)
            for w in caught:
                if isinstance(w.message, PaodingWarning):
                    note("prune", f"note: {w.message}")
            files[q] = {"file": name, "bytes": len(data),
                        "sha256": hashlib.sha256(data).hexdigest(),
                        "ops": [[op, v] for op, v in tflite_ops(data)]}
            if q == "int8":
                files[q]["calibration"] = (
                    f"{len(calib)} representative inputs" if representative is not None
                    else f"{len(calib)} evaluation samples" if calib is not None
                    else "random inputs from the input box")
        body = report.to_jsonable(result.to_dict())
        body = body if isinstance(body, dict) else {"result": body}
        body["exports"] = files
        body["command"] = {
            "model": str(args.model), "model_sha256": sha256_file(args.model),
            "eval_data": str(args.eval_data) if args.eval_data else None,
            "representative_data": args.representative_data,
            "representative_samples": 0 if representative is None else len(representative),
            "eval_samples": int(len(eval_data[0])) if eval_data is not None else 0,
            "seconds": round(time.time() - started, 3),
        }
        report.write_json(body, tmp / "report.json")
        report.plot_trajectory(body, tmp / "report.png")
        keras_sha = sha256_file(tmp / "pruned.keras")
    last = result.final.to_dict()
    if args.db:
        from hostcli import lineage

        facts = {"source": Path(args.model).name, "mode": config.mode, "target": config.target,
                 "seed": config.seed, "fidelity": fid, "accuracy": last.get("accuracy"),
                 "ratio": last.get("ratio")}
        rows = [("prune", body["command"]["model_sha256"], keras_sha,
                 {**facts, "export": "keras", "path": str((out / "pruned.keras").resolve())})]
        rows += [("prune", body["command"]["model_sha256"], f["sha256"],
                  {**facts, "export": q, "path": str((out / f["file"]).resolve())})
                 for q, f in files.items()]
        note("prune", f"lineage recorded in {lineage.record(args.db, rows)}")
    summary = f"wrote {out}/: pruned.keras, " + ", ".join(f["file"] for f in files.values())
    print(summary)
    print(f"stopped: {body['stop_explanation']}")
    if verdict is not None:
        from pruner.verdict import from_dict

        v = from_dict(verdict)
        extra = f"; data-free fidelity {fid:.3f}" if v.evidence == "labelled" and fid else ""
        print(f"verdict ({v.evidence} evidence decided): {v.describe()}{extra}")
    return 0
