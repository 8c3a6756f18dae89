"""Prune a benchmark MLP with the reference package, paoding-dl 1.0.0.post3.

Runs INSIDE .venv-paoding-dl (tf-keras, TF_USE_LEGACY_KERAS=1); see
run_reference.sh. Reads an input .npz written by export_model.py (Dense
kernels and biases, the input shape, the test set), rebuilds the model in
tf-keras with the layer names the reference requires ("dense..." and a
Flatten for a (28, 28, 1) input, as its MNIST mode expects), saves it as
.h5 and prunes it progressively with ``paoding.pruner.Pruner.prune_fc``.

The reference prunes by merging: it adds the removed unit's outgoing
weights to the kept unit's (gamma = 1) and zeroes them. After every step the
runner records the weights, the units whose outgoing weights are all zero
(removed), the clean accuracy and the pruning seconds; the weights go to an
.npz and the summary to a .json, both evaluated later by prune_bench.py with
the same attacks as every other mode.

    python runner.py IN.npz OUT_PREFIX --mode stochastic --seed 0 --target 0.8125
"""

from __future__ import annotations

import argparse
import json
import os
import random
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402


def build_tf_keras(data: dict[str, np.ndarray]):  # noqa: ANN201 - tf_keras.Model
    """The MLP in tf-keras, with the reference's naming rules."""
    import tf_keras as keras

    n = int(data["n_dense"])
    input_shape = tuple(int(v) for v in data["input_shape"])
    layers: list = [keras.Input(input_shape)]
    if len(input_shape) > 1:
        layers.append(keras.layers.Flatten(name="flatten"))
    for i in range(n):
        k = data[f"kernel_{i}"]
        act = str(data[f"activation_{i}"])
        name = "dense" if i == 0 else f"dense_{i}"
        layers.append(keras.layers.Dense(k.shape[1], activation=act, name=name))
    model = keras.Sequential(layers)
    dense = [layer for layer in model.layers if "dense" in layer.name]
    for i, layer in enumerate(dense):
        layer.set_weights([data[f"kernel_{i}"], data[f"bias_{i}"]])
    return model


def dense_weights(model) -> list[tuple[np.ndarray, np.ndarray]]:  # noqa: ANN001
    """(kernel, bias) of every Dense layer, in order."""
    out = []
    for layer in model.layers:
        if "dense" in layer.name:
            k, b = layer.get_weights()
            out.append((np.array(k), np.array(b)))
    return out


def removed_units(weights: list[tuple[np.ndarray, np.ndarray]]) -> list[int]:
    """Per hidden layer, units whose outgoing weights are all zero (pruned)."""
    return [
        int(np.sum(~np.any(weights[i + 1][0] != 0.0, axis=1))) for i in range(len(weights) - 1)
    ]


def main(argv: list[str] | None = None) -> int:
    """Command-line entry point."""
    p = argparse.ArgumentParser(description="paoding-dl reference runner")
    p.add_argument("input", type=Path)
    p.add_argument("out_prefix", type=Path)
    p.add_argument("--mode", choices=["stochastic", "baseline"], default="stochastic")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--target", type=float, default=0.8125)
    p.add_argument("--step", type=float, default=0.03125)
    args = p.parse_args(argv)

    import tensorflow as tf
    from paoding.pruner import Pruner
    from paoding.sampler import Sampler
    from paoding.utility.option import ModelType, SamplingMode

    data = dict(np.load(args.input, allow_pickle=False))
    x, y = data["x_test"], data["y_test"]
    model = build_tf_keras(data)
    hidden = [int(data[f"kernel_{i}"].shape[1]) for i in range(int(data["n_dense"]) - 1)]
    base_acc = float(np.mean(np.argmax(model.predict(x, verbose=0), 1) == y))

    work = Path(tempfile.mkdtemp(prefix="paoding-ref-"))
    h5 = work / "model.h5"
    model.save(h5)
    os.chdir(work)  # the reference writes paoding/logs/ into the working directory

    random.seed(args.seed)  # the reference draws from Python's random, unseeded
    sampler = Sampler()
    mode = SamplingMode.STOCHASTIC if args.mode == "stochastic" else SamplingMode.BASELINE
    sampler.set_strategy(mode, params=(0.75, 0.25), recursive_pruning=True)
    model_type = ModelType.MNIST if len(x.shape) > 2 else ModelType.CREDIT

    snapshots: list[dict] = []
    arrays: dict[str, np.ndarray] = {}
    clock = {"start": 0.0, "paused": 0.0}

    class RecordingPruner(Pruner):
        """Pruner that records the model after every pruning step (its evaluate hook)."""

        def evaluate(self, verbose=0, batch_size=None):  # noqa: ANN001, ANN201
            t0 = time.perf_counter()
            w = dense_weights(self.model)
            removed = removed_units(w)
            step = len(snapshots) + 1
            acc = float(np.mean(np.argmax(self.model.predict(x, verbose=0), 1) == y))
            for i, (k, b) in enumerate(w):
                arrays[f"s{step}_kernel_{i}"] = k
                arrays[f"s{step}_bias_{i}"] = b
            snapshots.append(
                {
                    "step": step,
                    "ratio": sum(removed) / sum(hidden),
                    "removed": removed,
                    "accuracy_tf_keras": acc,
                    "seconds": t0 - clock["start"] - clock["paused"],
                }
            )
            clock["paused"] += time.perf_counter() - t0
            return 0.0, acc

    pruner = RecordingPruner(
        str(h5),
        test_set=(x, y),
        target=args.target,
        step=args.step,
        sample_strategy=sampler,
        input_interval=(0.0, 1.0),
        model_type=model_type,
        seed_val=args.seed,
        surgery_mode=False,
    )
    pruner.load_model()
    clock["start"] = time.perf_counter()
    pruner.prune_fc(evaluator=None, save_file=False, model_name=f"ref_{args.mode}_{args.seed}")

    args.out_prefix.parent.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(args.out_prefix.with_suffix(".npz"), **arrays)
    summary = {
        "package": "paoding-dl 1.0.0.post3",
        "tensorflow": tf.__version__,
        "mode": args.mode,
        "seed": args.seed,
        "step": args.step,
        "hidden_units": hidden,
        "accuracy_original_tf_keras": base_acc,
        "steps": snapshots,
    }
    args.out_prefix.with_suffix(".json").write_text(json.dumps(summary, indent=2) + "\n")
    print(f"reference {args.mode} seed {args.seed}: {len(snapshots)} steps, "
          f"final ratio {snapshots[-1]['ratio'] if snapshots else 0:.3f}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
