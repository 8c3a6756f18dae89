"""Build the conformance kit's models and probe bundle (conformance/assets/), with TensorFlow.

The kit itself imports core only; these files are what it deploys: model_a
(small, with probes whose reference and expected outputs are its own:
agreement 1.0, deviation ~0) and
model_b (larger, many 1 KiB chunks for the transfer checks). Run once after
changing them: ``python scripts/make_conformance_assets.py``.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from core.probes import save_probes  # noqa: E402


def dense(units: tuple[int, ...], inputs: int, seed: int) -> bytes:
    import keras
    import tensorflow as tf

    keras.utils.set_random_seed(seed)
    layers = [keras.Input((inputs,))] + [keras.layers.Dense(u, activation="relu") for u in units]
    model = keras.Sequential([*layers, keras.layers.Dense(10)])
    return tf.lite.TFLiteConverter.from_keras_model(model).convert()


def probes_for(model: bytes, inputs: int, n: int = 16) -> dict[str, np.ndarray]:
    from ai_edge_litert.interpreter import Interpreter

    it = Interpreter(model_content=model)
    it.allocate_tensors()
    x = np.random.default_rng(0).random((n, inputs), dtype=np.float32)
    inp, out = it.get_input_details()[0], it.get_output_details()[0]
    ref = []
    for row in x:
        it.set_tensor(inp["index"], row[None])
        it.invoke()
        ref.append(it.get_tensor(out["index"])[0])
    reference = np.asarray(ref, dtype=np.float32)
    kind = np.array(["clean"] * (n // 2) + ["fgsm"] * (n - n // 2))
    return {"x": x, "y": reference.argmax(1).astype(np.int64), "kind": kind,
            "eps": np.where(kind == "clean", 0.0, 0.05).astype(np.float32),
            "reference": reference, "expected": reference, "meta": np.array(json.dumps({"kit": "conformance"}))}


def main() -> int:
    out = ROOT / "conformance" / "assets"
    out.mkdir(parents=True, exist_ok=True)
    a = dense((8,), 16, seed=1)
    b = dense((96, 64), 16, seed=2)
    (out / "model_a.tflite").write_bytes(a)
    (out / "model_b.tflite").write_bytes(b)
    save_probes(probes_for(a, 16), out / "probes_a.npz")
    for f in sorted(out.iterdir()):
        print(f"{f.relative_to(ROOT)}: {f.stat().st_size} bytes")
    return 0


if __name__ == "__main__":
    sys.exit(main())
