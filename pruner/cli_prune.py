"""`paoding-edge prune MODEL -o DIR`: prune a Keras model, export TFLite, report.

DIR receives ``pruned.keras``, ``pruned.tflite`` (float32), one
``pruned_<quantization>.tflite`` per other ``--export``, ``report.json`` (the
per-step trajectory and the exports) and ``report.png``. Everything is written
into a temporary sibling directory first and moved into DIR at the end, so a
failure leaves DIR as it was.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import os
import shutil
import sys
import tempfile
import time
import warnings
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from pruner.errors import ConfigError, DataError

MODES = ("paoding", "greedy", "baseline", "magnitude", "random")
QUANTIZATIONS = ("float32", "float16", "dynamic", "int8")
DEFAULT_EPS = (0.01, 0.05, 0.1)


def add_common(parser: argparse.ArgumentParser) -> None:
    """Options shared by the commands that read a model and evaluation data."""
    parser.add_argument("model", help="the trained Keras model (.keras or .h5)")
    parser.add_argument("--input-range", nargs=2, type=float, default=(0.0, 1.0),
                        metavar=("LO", "HI"), help="the input box, every feature (default 0 1)")
    parser.add_argument("--eps", nargs="+", type=float, default=list(DEFAULT_EPS),
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
    parser.add_argument("--eval-data", metavar="NPZ",
                        help="labelled evaluation set: an .npz with arrays x and y")
    parser.add_argument("--export", nargs="+", choices=QUANTIZATIONS, default=["float32"],
                        metavar="Q", help="TFLite exports: float32 float16 dynamic int8 "
                        "(default float32)")
    parser.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    parser.add_argument("-o", "--output", required=True, metavar="DIR",
                        help="output directory (created; existing files of the same name "
                        "are replaced only on success)")


# -- checks shared with `probes` ---------------------------------------------------------------

def check_eps(eps: Sequence[float]) -> tuple[float, ...]:
    if not eps or any(not np.isfinite(e) or e <= 0 for e in eps):
        raise ConfigError(f"--eps values must be > 0, got {list(eps)}")
    return tuple(float(e) for e in eps)


def check_range(lo: float, hi: float) -> tuple[float, float]:
    if not (np.isfinite(lo) and np.isfinite(hi) and lo < hi):
        raise ConfigError(f"--input-range needs LO < HI, got {lo} {hi}")
    return float(lo), float(hi)


def load_eval_data(path: str | os.PathLike) -> tuple[np.ndarray, np.ndarray]:
    """x (float32) and y (int64 labels) from an .npz, read with allow_pickle=False."""
    import zipfile

    path = Path(path)
    if not path.is_file():
        raise DataError(f"evaluation data {path} does not exist")
    try:
        with np.load(path, allow_pickle=False) as npz:
            if not hasattr(npz, "files"):
                raise DataError(f"evaluation data {path} must be an .npz with arrays x and y")
            missing = [k for k in ("x", "y") if k not in npz.files]
            if missing:
                raise DataError(f"evaluation data {path} lacks array(s) {', '.join(missing)}")
            x, y = npz["x"], npz["y"]
    except DataError:
        raise
    except (ValueError, OSError, EOFError, zipfile.BadZipFile) as exc:
        first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise DataError(f"evaluation data {path} is unreadable: {first}") from None
    if not np.issubdtype(x.dtype, np.number) or x.ndim < 2 or len(x) == 0:
        raise DataError(f"evaluation data x must be numeric [N, *input], got {x.dtype} {x.shape}")
    if y.ndim == 2 and y.shape[1] > 1:
        y = y.argmax(axis=1)
    y = y.reshape(-1) if y.ndim == 2 else y
    if y.ndim != 1 or len(y) != len(x):
        raise DataError(f"evaluation data y must hold {len(x)} labels, got shape {y.shape}")
    if not np.issubdtype(y.dtype, np.number) or not np.all(np.equal(np.mod(y, 1), 0)):
        raise DataError("evaluation data y must hold integer class labels")
    x = x.astype(np.float32)
    if not np.all(np.isfinite(x)):
        raise DataError("evaluation data x holds non-finite values")
    return x, y.astype(np.int64)


def check_fits(model: Any, x: np.ndarray, y: np.ndarray) -> None:
    """DataError unless x matches the model's input and y its classes."""
    shape = model.input_shape
    if isinstance(shape, list):
        raise DataError(f"the model has {len(shape)} inputs; one is supported")
    want = tuple(shape[1:])
    got = tuple(x.shape[1:])
    if len(want) != len(got) or any(w is not None and w != g for w, g in zip(want, got,
                                                                           strict=False)):
        model_shape = "(N, " + ", ".join("?" if w is None else str(w) for w in want) + ")"
        raise DataError(f"evaluation data x has shape {x.shape} but the model takes "
                        f"{model_shape}")
    classes = model.output_shape[-1] if not isinstance(model.output_shape, list) else None
    if classes and (y.min() < 0 or y.max() >= classes):
        raise DataError(f"evaluation labels must be in [0, {classes}), got {y.min()}..{y.max()}")


def check_in_range(x: np.ndarray, lo: float, hi: float) -> None:
    """DataError when evaluation inputs lie outside the input box (say, 0..255 pixels)."""
    tol = 1e-6 * max(1.0, hi - lo)
    if x.min() < lo - tol or x.max() > hi + tol:
        raise DataError(f"evaluation data x spans [{x.min():g}, {x.max():g}], outside "
                        f"--input-range {lo:g} {hi:g}")


def sha256_file(path: str | os.PathLike) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


@contextlib.contextmanager
def staged_dir(output: str | os.PathLike) -> Iterator[Path]:
    """A temporary directory beside ``output``, moved into place only on success.

    A new ``output`` is created by one rename; an existing one gets each file
    replaced, and keeps its other files. On failure nothing in ``output`` changes.
    """
    out = Path(output)
    if out.exists() and not out.is_dir():
        raise ConfigError(f"-o {out} exists and is not a directory")
    created = []
    parent = out.absolute().parent
    for p in reversed([parent, *parent.parents]):
        if not p.exists():
            p.mkdir()
            created.append(p)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.tmp-", dir=parent))
    try:
        yield tmp
        os.chmod(tmp, 0o777 & ~_umask())
        if out.exists():
            for item in tmp.iterdir():
                os.replace(item, out / item.name)
            tmp.rmdir()
        else:
            os.rename(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        for p in reversed(created):
            with contextlib.suppress(OSError):
                p.rmdir()
        raise


def _umask() -> int:
    umask = os.umask(0)
    os.umask(umask)
    return umask


def note(command: str, message: str) -> None:
    print(f"paoding-edge {command}: {message}", file=sys.stderr)


# -- the command ------------------------------------------------------------------------------

def run(args: argparse.Namespace) -> int:
    if not 0.0 < args.target < 1.0:
        raise ConfigError(f"--target must be in the open range (0, 1), got {args.target}")
    if not 0.0 < args.step <= 1.0:
        raise ConfigError(f"--step must be in (0, 1], got {args.step}")
    eps = check_eps(args.eps)
    lo, hi = check_range(*args.input_range)
    exports = list(dict.fromkeys(args.export))
    eval_data = load_eval_data(args.eval_data) if args.eval_data else None
    if eval_data is not None:
        check_in_range(eval_data[0], lo, hi)
    if not Path(args.model).is_file():
        from pruner.errors import ModelLoadError

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
    from pruner.schedule import Schedule

    started = time.time()
    model = load_model(args.model)
    if eval_data is not None:
        check_fits(model, *eval_data)
    box = InputBox(lo, hi)
    result = prune(model, target=args.target, mode=args.mode, seed=args.seed,
                   schedule=Schedule(target=args.target, step=args.step), input_box=box,
                   eval_data=eval_data, eps=eps, progress=not args.no_progress,
                   scope=args.scope)

    with staged_dir(out) as tmp:
        result.model.save(tmp / "pruned.keras")
        files: dict[str, Any] = {}
        for q in exports:
            name = "pruned.tflite" if q == "float32" else f"pruned_{q}.tflite"
            calib = eval_data[0][:200] if eval_data is not None else None
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always")
                data = export_tflite(result.model, tmp / name, quantization=q,
                                     representative_data=calib, box=box)
            for w in caught:
                if "random inputs" in str(w.message):
                    note("prune", f"note: {w.message}")
            files[q] = {"file": name, "bytes": len(data),
                        "sha256": hashlib.sha256(data).hexdigest(),
                        "ops": [[op, v] for op, v in tflite_ops(data)]}
            if q == "int8":
                files[q]["calibration"] = (
                    f"{len(calib)} evaluation samples" if calib is not None
                    else "random inputs from the input box")
        body = report.to_jsonable(result.to_dict())
        body = body if isinstance(body, dict) else {"result": body}
        body["exports"] = files
        body["command"] = {
            "model": str(args.model), "model_sha256": sha256_file(args.model),
            "target": args.target, "mode": args.mode, "seed": args.seed, "step": args.step,
            "scope": args.scope,
            "input_range": [lo, hi], "eps": list(eps),
            "eval_data": str(args.eval_data) if args.eval_data else None,
            "eval_samples": int(len(eval_data[0])) if eval_data is not None else 0,
            "seconds": round(time.time() - started, 3),
        }
        report.write_json(body, tmp / "report.json")
        report.plot_trajectory(body, tmp / "report.png")
    rows = body.get("trajectory") or []
    last = rows[-1] if rows else {}
    summary = f"wrote {out}/: pruned.keras, " + ", ".join(f["file"] for f in files.values())
    ratio = last.get("ratio") if isinstance(last, dict) else None
    if ratio is not None:
        summary += f" ({100 * float(ratio):.1f}% of units pruned"
        acc = last.get("accuracy")
        summary += f", accuracy {float(acc):.4f})" if acc is not None else ")"
    print(summary)
    return 0
