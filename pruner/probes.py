"""The probe bundle: inputs the device re-checks a deployed model on.

Format (docs/architecture.md): an ``.npz`` read with ``allow_pickle=False``
holding ``x`` float32 [N, *input], ``y`` int64 [N], ``kind`` unicode [N]
(``clean``, ``fgsm``, ``pgd``), ``eps`` float32 [N], ``reference`` float32
[N, C] (the original model's float32 TFLite outputs), optional ``expected``
float32 [N, C], and ``meta``, a unicode scalar holding a JSON object.

Saving and loading need numpy only; building needs TensorFlow.
"""

from __future__ import annotations

import hashlib
import json
import os
import zipfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from pruner.errors import ConfigError, PaodingError
from pruner.files import atomic_path

KINDS = ("clean", "fgsm", "pgd")
REQUIRED = ("x", "y", "kind", "eps", "reference", "meta")
OPTIONAL = ("expected",)
FORMAT_VERSION = 1


class ProbeFormatError(PaodingError, ValueError):
    """A probe bundle is unreadable or does not follow the format."""


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


def _fail(key: str, what: str) -> ProbeFormatError:
    return ProbeFormatError(f"probe bundle key {key!r}: {what}")


def validate_probes(bundle: dict[str, Any]) -> dict[str, Any]:
    """Check keys, dtypes and shapes; return the parsed ``meta`` JSON."""
    missing = [k for k in REQUIRED if k not in bundle]
    if missing:
        raise ProbeFormatError(f"probe bundle lacks key(s) {', '.join(missing)}")
    unknown = sorted(set(bundle) - set(REQUIRED) - set(OPTIONAL))
    if unknown:
        raise ProbeFormatError(f"probe bundle has unknown key(s) {', '.join(unknown)}")
    arr = {k: np.asarray(v) for k, v in bundle.items()}
    x = arr["x"]
    if x.dtype != np.float32 or x.ndim < 2:
        raise _fail("x", f"must be float32 [N, *input], got {x.dtype} {x.shape}")
    n = len(x)
    if n == 0:
        raise _fail("x", "holds no probes")
    if not np.all(np.isfinite(x)):
        raise _fail("x", "holds non-finite values")
    for key, dtype in (("y", np.int64), ("eps", np.float32)):
        if arr[key].dtype != dtype or arr[key].shape != (n,):
            raise _fail(key, f"must be {np.dtype(dtype).name} [{n}], "
                             f"got {arr[key].dtype} {arr[key].shape}")
    kind = arr["kind"]
    if kind.dtype.kind != "U" or kind.shape != (n,):
        raise _fail("kind", f"must be unicode [{n}], got {kind.dtype} {kind.shape}")
    bad = sorted(set(kind.tolist()) - set(KINDS))
    if bad:
        raise _fail("kind", f"unknown kind(s) {', '.join(bad)}; allowed: {', '.join(KINDS)}")
    if np.any(arr["eps"][kind == "clean"] != 0):
        raise _fail("eps", "must be 0 for clean probes")
    ref = arr["reference"]
    if ref.dtype != np.float32 or ref.ndim != 2 or len(ref) != n:
        raise _fail("reference", f"must be float32 [{n}, C], got {ref.dtype} {ref.shape}")
    if "expected" in arr:
        exp = arr["expected"]
        if exp.dtype != np.float32 or exp.shape != ref.shape:
            raise _fail("expected", f"must be float32 {ref.shape}, got {exp.dtype} {exp.shape}")
    if np.any(arr["y"] < 0) or np.any(arr["y"] >= ref.shape[1]):
        raise _fail("y", f"labels must be in [0, {ref.shape[1]})")
    meta = arr["meta"]
    if meta.dtype.kind != "U" or meta.shape != ():
        raise _fail("meta", f"must be a unicode scalar, got {meta.dtype} {meta.shape}")
    try:
        parsed = json.loads(str(meta))
    except json.JSONDecodeError as exc:
        raise _fail("meta", f"is not JSON ({exc.msg})") from None
    if not isinstance(parsed, dict):
        raise _fail("meta", "must be a JSON object")
    return parsed


def save_probes(bundle: dict[str, np.ndarray], path: str | os.PathLike) -> Path:
    """Validate and write a bundle (compressed ``.npz``) atomically; return the path."""
    validate_probes(bundle)
    path = Path(path)
    with atomic_path(path, suffix=".npz") as tmp:
        np.savez_compressed(tmp, **{k: np.asarray(v) for k, v in bundle.items()})
    return path


def load_probes(path: str | os.PathLike) -> dict[str, np.ndarray]:
    """Read a bundle with ``allow_pickle=False`` and validate it."""
    path = Path(path)
    if not path.is_file():
        raise ProbeFormatError(f"probe bundle {path} does not exist")
    try:
        npz = np.load(path, allow_pickle=False)
    except ValueError as exc:  # a pickle, or not numpy data at all
        raise ProbeFormatError(f"probe bundle {path} is not an npz archive ({exc})") from None
    except (OSError, EOFError, zipfile.BadZipFile) as exc:
        raise ProbeFormatError(f"probe bundle {path} is unreadable ({exc})") from None
    if not isinstance(npz, np.lib.npyio.NpzFile):
        raise ProbeFormatError(f"probe bundle {path} is a single .npy array, not an npz archive")
    bundle = {}
    with npz:
        for key in npz.files:
            try:
                bundle[key] = npz[key]
            except ValueError:
                raise _fail(key, "holds pickled objects (refused)") from None
            except (OSError, EOFError, zipfile.BadZipFile) as exc:
                raise _fail(key, f"is unreadable ({exc})") from None
    validate_probes(bundle)
    return bundle
