"""The probe bundle: inputs the device re-checks a deployed model on. One reader, one validator.

Format (docs/architecture.md): an ``.npz`` read with ``allow_pickle=False``
holding ``x`` float32 [N, *input], ``y`` int64 [N], ``kind`` unicode [N]
(``clean``, ``fgsm``, ``pgd``), ``eps`` float32 [N], ``reference`` float32
[N, C] (the original model's float32 TFLite outputs), optional ``expected``
float32 [N, C] (the deployed model's own host outputs), and ``meta``, a
unicode scalar holding a JSON object. The host writes it (pruner.probes
builds it) and the agent reads it with the same functions.
"""

from __future__ import annotations

import io
import json
import os
import zipfile
from pathlib import Path
from typing import Any

import numpy as np

from core.errors import ProbeError
from core.files import atomic_path

KINDS = ("clean", "fgsm", "pgd")
REQUIRED = ("x", "y", "kind", "eps", "reference", "meta")
OPTIONAL = ("expected",)
FORMAT_VERSION = 1
MAX_PROBES = 100_000


def _fail(key: str, what: str) -> ProbeError:
    return ProbeError(f"probe bundle key {key!r}: {what}")


def validate_probes(bundle: dict[str, Any]) -> dict[str, Any]:
    """Check keys, dtypes and shapes; return the parsed ``meta`` JSON."""
    missing = [k for k in REQUIRED if k not in bundle]
    if missing:
        raise ProbeError(f"probe bundle lacks key(s) {', '.join(missing)}")
    unknown = sorted(set(bundle) - set(REQUIRED) - set(OPTIONAL))
    if unknown:
        raise ProbeError(f"probe bundle has unknown key(s) {', '.join(unknown)}")
    arr = {k: np.asarray(v) for k, v in bundle.items()}
    x = arr["x"]
    if x.dtype != np.float32 or x.ndim < 2:
        raise _fail("x", f"must be float32 [N, *input], got {x.dtype} {x.shape}")
    n = len(x)
    if n == 0:
        raise _fail("x", "holds no probes")
    if n > MAX_PROBES:
        raise _fail("x", f"holds {n} probes, more than the limit of {MAX_PROBES}")
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


def load_probes(source: str | os.PathLike | bytes,
                max_mb: float | None = None) -> dict[str, np.ndarray]:
    """Read a bundle (a path, or the bytes of one) with ``allow_pickle=False`` and validate it.

    With ``max_mb`` the arrays' uncompressed sizes (as the archive declares
    them, which bounds what reading may produce) are added up first: a zip
    bomb is refused before it expands.
    """
    if isinstance(source, bytes | bytearray):
        path: Any = "(received bytes)"
        stream: Any = io.BytesIO(bytes(source))
    else:
        path = stream = Path(source)
        if not path.is_file():
            raise ProbeError(f"probe bundle {path} does not exist")
    if max_mb is not None:
        expanded = _uncompressed_mb(stream, path)
        if expanded > max_mb:
            raise ProbeError(f"probe bundle {path} expands to {expanded:,.0f} MB, over the "
                             f"memory limit of {max_mb:,.0f} MB")
    try:
        npz = np.load(stream, allow_pickle=False)
    except ValueError as exc:  # a pickle, or not numpy data at all
        raise ProbeError(f"probe bundle {path} is not an npz archive ({exc})") from None
    except (OSError, EOFError, zipfile.BadZipFile) as exc:
        raise ProbeError(f"probe bundle {path} is unreadable ({exc})") from None
    if not isinstance(npz, np.lib.npyio.NpzFile):
        raise ProbeError(f"probe bundle {path} is a single .npy array, not an npz archive")
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


def _uncompressed_mb(stream: Any, path: Any) -> float:
    try:
        with zipfile.ZipFile(stream) as zf:
            total = sum(info.file_size for info in zf.infolist())
    except (OSError, EOFError, zipfile.BadZipFile) as exc:
        raise ProbeError(f"probe bundle {path} is not an npz archive ({exc})") from None
    if hasattr(stream, "seek"):
        stream.seek(0)
    return total / 2**20


def probes_to_bytes(bundle: dict[str, Any]) -> bytes:
    """Validate a bundle and serialise it as an uncompressed ``.npz``."""
    validate_probes(bundle)
    buf = io.BytesIO()
    np.savez(buf, **{k: np.asarray(v) for k, v in bundle.items()})
    return buf.getvalue()
