"""Train the three benchmark models with a fixed seed and save them in bench/models/.

    python bench/train_models.py [--seed 7] [--only digits_mlp]

- digits_mlp: MLP 784-128-128-64-10 on scikit-learn digits upsampled to 28x28.
- digits_cnn: Conv2D(16)+BN -> pool -> Conv2D(32)+BN -> pool -> Dense(64) -> 10.
- cancer_mlp: MLP 30-64-32-2 on breast cancer, features min-max scaled to [0, 1].
- mlp_256: MLP 784-256-128-10 on the 28x28 digits.
- cnn_bn_before, cnn_bn_after, cnn_no_bn: Conv2D(16)-Conv2D(32)-Conv2D(64) blocks with
  BatchNormalization before the ReLU, after it, or none; max pooling between blocks,
  GlobalAveragePooling2D, Dense(10) (see gap_cnn).

Each model is saved as .keras (no optimizer state) and its test accuracy printed.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import MODEL_FILES, SEED, dataset_for, quiet_tensorflow  # noqa: E402


def _functional(name: str, stack: list):  # noqa: ANN201 - keras.Model
    """Chain an Input and layers into a Functional model.

    A Sequential model reloaded from .keras has layers with several inbound
    nodes, which a single-chain graph analysis must refuse; a Functional one
    reloads with one node per layer.
    """
    import keras

    x = stack[0]
    h = x
    for layer in stack[1:]:
        h = layer(h)
    return keras.Model(x, h, name=name)


MLPS = {  # name: (inputs, hidden widths, classes)
    "digits_mlp": (784, (128, 128, 64), 10),
    "mlp_256": (784, (256, 128), 10),
    "cancer_mlp": (30, (64, 32), 2),
}


def build(name: str):  # noqa: ANN201 - keras.Model, imported lazily
    """The architecture of a benchmark model (uncompiled, Functional)."""
    import keras
    from keras import layers

    if name in MLPS:
        inputs, widths, classes = MLPS[name]
        hidden = [layers.Dense(w, activation="relu", name=f"fc{i}")
                  for i, w in enumerate(widths, 1)]
        return _functional(name, [keras.Input((inputs,)), *hidden,
                                  layers.Dense(classes, activation="softmax", name="out")])
    if name == "digits_cnn":
        return _functional(
            name,
            [
                keras.Input((28, 28, 1)),
                layers.Conv2D(16, 3, padding="same", name="conv1"),
                layers.BatchNormalization(name="bn1"),
                layers.ReLU(name="relu1"),
                layers.MaxPooling2D(2, name="pool1"),
                layers.Conv2D(32, 3, padding="same", name="conv2"),
                layers.BatchNormalization(name="bn2"),
                layers.ReLU(name="relu2"),
                layers.MaxPooling2D(2, name="pool2"),
                layers.Flatten(name="flatten"),
                layers.Dense(64, activation="relu", name="fc1"),
                layers.Dense(10, activation="softmax", name="out"),
            ],
        )
    if name.startswith("cnn_"):
        return _functional(name, [keras.Input((28, 28, 1)), *gap_cnn(name[4:])])
    raise ValueError(f"unknown benchmark model {name!r}")


def gap_cnn(bn: str, widths: tuple[int, ...] = (16, 32, 64)) -> list:
    """Conv blocks -> GlobalAveragePooling2D -> Dense(10): the layout edge models use.

    ``bn`` places BatchNormalization ``before`` the ReLU, ``after`` it, or not
    at all (``no_bn``); max pooling follows every block but the last.
    """
    from keras import layers

    stack: list = []
    for i, w in enumerate(widths, 1):
        stack.append(layers.Conv2D(w, 3, padding="same", name=f"conv{i}"))
        block = [layers.ReLU(name=f"relu{i}")]
        if bn == "bn_before":
            block.insert(0, layers.BatchNormalization(name=f"bn{i}"))
        elif bn == "bn_after":
            block.append(layers.BatchNormalization(name=f"bn{i}"))
        stack.extend(block)
        if i < len(widths):
            stack.append(layers.MaxPooling2D(2, name=f"pool{i}"))
    stack.append(layers.GlobalAveragePooling2D(name="gap"))
    stack.append(layers.Dense(10, activation="softmax", name="out"))
    return stack


EPOCHS = {"digits_mlp": 60, "digits_cnn": 30, "cancer_mlp": 150, "mlp_256": 60,
          "cnn_bn_before": 30, "cnn_bn_after": 30, "cnn_no_bn": 30}


def train(name: str, seed: int = SEED, path: Path | None = None) -> float:
    """Train one model, save it, return its test accuracy."""
    import keras
    import numpy as np

    keras.utils.set_random_seed(seed)
    x_tr, y_tr, x_te, y_te = dataset_for(name)
    model = build(name)
    model.compile(
        optimizer=keras.optimizers.Adam(1e-3),
        loss="sparse_categorical_crossentropy",
        metrics=["accuracy"],
    )
    model.fit(x_tr, y_tr, epochs=EPOCHS[name], batch_size=32, verbose=0, shuffle=True)
    acc = float(np.mean(np.argmax(model.predict(x_te, verbose=0), axis=1) == y_te))
    path = path or MODEL_FILES[name]
    path.parent.mkdir(parents=True, exist_ok=True)
    model.save(path, include_optimizer=False)
    size = path.stat().st_size
    print(f"{name:11s} test accuracy {acc:.4f}  ({len(x_te)} test samples)  "
          f"{model.count_params()} params  {path.name} {size / 1024:.0f} KiB")
    return acc


def main(argv: list[str] | None = None) -> int:
    """Command-line entry point."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--seed", type=int, default=SEED)
    p.add_argument("--only", choices=sorted(MODEL_FILES), action="append")
    args = p.parse_args(argv)
    quiet_tensorflow()
    for name in args.only or list(MODEL_FILES):
        train(name, args.seed)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
