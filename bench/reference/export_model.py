"""Export a trained benchmark MLP for the reference runner (main environment).

Writes the Dense kernels, biases, activations, the input shape the reference
sees ((28, 28, 1) for digits, (30,) for breast cancer) and the test set to an
.npz that tf-keras in the reference venv can read without Keras 3.

    python bench/reference/export_model.py digits_mlp OUT.npz
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

import numpy as np  # noqa: E402

from bench.common import MODEL_FILES, dataset_for  # noqa: E402


def export(name: str, out: Path) -> None:
    """Write the .npz the reference runner reads."""
    import keras

    model = keras.models.load_model(MODEL_FILES[name], compile=False)
    dense = [layer for layer in model.layers if isinstance(layer, keras.layers.Dense)]
    _, _, x_te, y_te = dataset_for(name)
    if name == "digits_mlp":
        x_te = x_te.reshape(-1, 28, 28, 1)
    arrays: dict[str, np.ndarray] = {
        "n_dense": np.array(len(dense)),
        "input_shape": np.array(x_te.shape[1:]),
        "x_test": x_te.astype(np.float32),
        "y_test": y_te.astype(np.int64),
    }
    for i, layer in enumerate(dense):
        k, b = layer.get_weights()
        arrays[f"kernel_{i}"] = k
        arrays[f"bias_{i}"] = b
        arrays[f"activation_{i}"] = np.array(keras.activations.serialize(layer.activation))
    out.parent.mkdir(parents=True, exist_ok=True)
    np.savez(out, **arrays)


def main(argv: list[str] | None = None) -> int:
    """Command-line entry point."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("model", choices=["digits_mlp", "cancer_mlp"])
    p.add_argument("out", type=Path)
    args = p.parse_args(argv)
    export(args.model, args.out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
