"""`paoding-edge demo`: the whole product end to end on one host.

Trains (or loads) a CNN on the bundled digits data, tunes it for two device
profiles, starts a broker (Mosquitto when it is installed, else an embedded
amqtt one), starts two emulated agents, deploys each its variant and prints
the reports side by side. Leaves nothing running.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

MODEL_NAME = "digits_cnn.keras"


def build_model(seed: int = 0) -> Any:
    """The demo CNN (functional): 2 conv blocks, a 128-unit dense layer with dropout, 10 classes.

    Dropout leaves the redundancy that pruning removes without hurting accuracy.
    """
    import keras

    keras.utils.set_random_seed(seed)
    inp = keras.Input((28, 28, 1))
    h = keras.layers.Conv2D(16, 3, activation="relu")(inp)
    h = keras.layers.MaxPooling2D()(h)
    h = keras.layers.Conv2D(32, 3, activation="relu")(h)
    h = keras.layers.MaxPooling2D()(h)
    h = keras.layers.Flatten()(h)
    h = keras.layers.Dropout(0.3)(h)
    h = keras.layers.Dense(128, activation="relu")(h)
    h = keras.layers.Dropout(0.3)(h)
    out = keras.layers.Dense(10, activation="softmax")(h)
    return keras.Model(inp, out, name="digits_cnn")


def demo_model(workdir: Path, *, epochs: int = 15, seed: int = 0) -> tuple[Any, tuple[Any, Any]]:
    """Load workdir/digits_cnn.keras or train it; returns (model, (x_test, y_test))."""
    from pruner.datasets import digits28
    from pruner.io import load_model

    x_tr, y_tr, x_te, y_te = digits28(seed=seed, flatten=False)
    path = Path(workdir) / MODEL_NAME
    if path.is_file():
        return load_model(path), (x_te, y_te)
    model = build_model(seed)
    model.compile("adam", "sparse_categorical_crossentropy", metrics=["accuracy"])
    model.fit(x_tr, y_tr, epochs=epochs, batch_size=64, verbose=0)
    path.parent.mkdir(parents=True, exist_ok=True)
    model.save(path)
    return model, (x_te, y_te)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--broker", help="use this broker (mqtt://host:port) instead of starting one"
    )


def run(args: argparse.Namespace) -> int:
    raise NotImplementedError
