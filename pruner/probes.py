"""Building the probe bundle on the host: clean and adversarial inputs crafted on the ORIGINAL model.

The format (one reader, one validator) lives in ``core.probes``; building
needs TensorFlow.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from typing import Any

import numpy as np

from core.errors import ConfigError
from core.probes import FORMAT_VERSION, KINDS, validate_probes


def _creator() -> str:
    try:
        from importlib.metadata import version

        return f"paoding-edge {version('paoding-edge')}"
    except Exception:  # not installed as a distribution
        return "paoding-edge"


def _plain(v: Any) -> Any:
    return np.asarray(v, np.float64).tolist() if np.ndim(v) else float(v)


def build_probes(
    model: Any,
    x: np.ndarray,
    y: Any,
    *,
    eps: Sequence[float] = (0.01, 0.05, 0.1),
    box: Any,
    attacks: Sequence[str] = ("fgsm", "pgd"),
    n: int | None = None,
    seed: int = 0,
    pgd_steps: int = 10,
    model_sha256: str | None = None,
) -> dict[str, np.ndarray]:
    """Clean and adversarial probes crafted on the ORIGINAL model.

    ``n`` evaluation samples (all when None) are drawn with the seed; each
    gives one clean probe and one probe per attack and epsilon, so the bundle
    holds ``n * (1 + len(attacks) * len(eps))`` rows. ``reference`` is the
    model's float32 TFLite output, run on the host. ``model_sha256`` names the
    model file in ``meta``; without it the float32 flatbuffer's hash is used.
    """
    from pruner import evaluate
    from pruner.export import export_tflite, run_tflite

    for a in attacks:
        if a not in KINDS[1:]:
            raise ConfigError(f"attack must be one of {', '.join(KINDS[1:])}, got {a!r}")
    eps = tuple(float(e) for e in eps)
    if any(e <= 0 for e in eps):
        raise ConfigError(f"every eps must be > 0, got {list(eps)}")
    x = np.asarray(x, np.float32)
    y = evaluate._labels(y)
    evaluate._check_attack_args(x, y, 0.0)
    if n is not None:
        if n < 1:
            raise ConfigError(f"n must be >= 1, got {n}")
        if n < len(x):
            idx = np.sort(np.random.default_rng(seed).choice(len(x), size=n, replace=False))
            x, y = x[idx], y[idx]
    xs, kinds, epss = [x], ["clean"] * len(x), [0.0] * len(x)
    for attack in attacks:
        for e in eps:
            if attack == "fgsm":
                adv = evaluate.fgsm(model, x, y, e, box)
            else:
                adv = evaluate.pgd(model, x, y, e, box, steps=pgd_steps, seed=seed)
            xs.append(adv)
            kinds += [attack] * len(x)
            epss += [e] * len(x)
    all_x = np.concatenate(xs).astype(np.float32)
    tflite = export_tflite(model, quantization="float32")
    reference = run_tflite(tflite, all_x).astype(np.float32)
    tflite_sha = hashlib.sha256(tflite).hexdigest()
    lo, hi = box if isinstance(box, (tuple, list)) else (box.lo, box.hi)
    meta = {
        "format": FORMAT_VERSION,
        "input_box": {"lo": _plain(lo), "hi": _plain(hi)},
        "seed": int(seed),
        "attacks": list(attacks),
        "eps": list(eps),
        "pgd_steps": int(pgd_steps),
        "samples": int(len(x)),
        "model_sha256": model_sha256 or tflite_sha,
        "model_sha256_of": "model file" if model_sha256 else "float32 tflite",
        "reference_tflite_sha256": tflite_sha,
        "creator": _creator(),
    }
    bundle = {
        "x": all_x,
        "y": np.tile(y, len(xs)).astype(np.int64),
        "kind": np.array(kinds, dtype=str),
        "eps": np.array(epss, np.float32),
        "reference": reference,
        "meta": np.array(json.dumps(meta, sort_keys=True)),
    }
    validate_probes(bundle)
    return bundle
