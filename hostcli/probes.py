"""`paoding-edge probes MODEL --eval-data DATA.npz -o probes.npz`: the probe bundle.

Clean samples and FGSM/PGD samples crafted on the given (original) model,
with its float32 TFLite outputs as the reference the device compares against.
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

from core.errors import ConfigError, ModelLoadError
from hostcli.options import flat
from hostcli.prune import add_common
from pruner.evaldata import check_eps, check_fits, check_in_range, check_range, load_eval_data


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_common(parser)
    parser.add_argument("--eval-data", required=True, metavar="NPZ",
                        help="labelled evaluation set: an .npz with arrays x and y")
    parser.add_argument("--n", type=int, default=200,
                        help="evaluation samples to draw (default 200, all if fewer); each "
                        "gives a clean probe and one per attack and eps")
    parser.add_argument("--attacks", nargs="+", choices=("fgsm", "pgd"),
                        default=["fgsm", "pgd"], help="attacks (default fgsm pgd)")
    parser.add_argument("--pgd-steps", type=int, default=10, help="PGD steps (default 10)")
    parser.add_argument("-o", "--output", required=True, metavar="NPZ",
                        help="the probe bundle to write")


def run(args: argparse.Namespace) -> int:
    eps = check_eps(flat(args.eps))
    lo, hi = check_range(*args.input_range)
    if args.n < 1:
        raise ConfigError(f"--n must be >= 1, got {args.n}")
    if args.pgd_steps < 1:
        raise ConfigError(f"--pgd-steps must be >= 1, got {args.pgd_steps}")
    out = Path(args.output)
    if out.is_dir():
        raise ConfigError(f"-o {out} is a directory; give a file name")
    x, y = load_eval_data(args.eval_data)
    check_in_range(x, lo, hi)
    if not Path(args.model).is_file():
        raise ModelLoadError(f"model file {args.model} does not exist")

    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    from core.probes import save_probes
    from hostcli.prune import sha256_file
    from pruner.bounds import InputBox
    from pruner.io import load_model
    from pruner.probes import build_probes
    from tuner.quiet import native_quiet

    attacks = tuple(dict.fromkeys(args.attacks))
    model = load_model(args.model)
    check_fits(model, x, y)
    with native_quiet():  # LiteRT's "Created TensorFlow Lite XNNPACK delegate" line
        bundle = build_probes(model, x, y, eps=eps, box=InputBox(lo, hi),
                              attacks=attacks, n=args.n,
                              seed=args.seed, pgd_steps=args.pgd_steps,
                              model_sha256=sha256_file(args.model))
    out.absolute().parent.mkdir(parents=True, exist_ok=True)
    save_probes(bundle, out)
    print(f"wrote {out}: {len(bundle['x'])} probes "
          f"({len(bundle['x']) // (1 + len(attacks) * len(eps))} samples)")
    return 0
