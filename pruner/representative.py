"""Unlabeled representative inputs, TFLite's ``representative_dataset`` convention.

``load_representative`` reads an .npy array, an .npz (its array ``x``, or its only
array), or a folder of images (PNG, JPEG, BMP, GIF) of the model's input size,
scaled from 0..255 into the input box. Labels are never needed. Every bad input
is one DataError line naming the problem.
"""

from __future__ import annotations

import os
import zipfile
from pathlib import Path

import numpy as np

from core.errors import DataError

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif")


def load_representative(spec: str | os.PathLike, input_shape: tuple[int, ...],
                        lo: float = 0.0, hi: float = 1.0) -> np.ndarray:
    """float32 inputs shaped [N, *input_shape], inside [lo, hi]."""
    path = Path(spec)
    if path.is_dir():
        x = _images(path, input_shape, lo, hi)
    elif path.is_file():
        x = _array(path)
    else:
        raise DataError(f"representative data {path} does not exist (an .npy or .npz array, "
                        "or a folder of images)")
    x = check_shape(x, input_shape, f"representative data {path}")
    tol = 1e-6 * max(1.0, hi - lo)
    if x.min() < lo - tol or x.max() > hi + tol:
        raise DataError(f"representative data {path} spans [{x.min():g}, {x.max():g}], "
                        f"outside the input range {lo:g} {hi:g}")
    return x.astype(np.float32)


def check_shape(x: np.ndarray, input_shape: tuple[int, ...],
                what: str = "representative data") -> np.ndarray:
    """x as float32 [N, *input_shape] (one input alone gains the batch axis), finite and
    not empty; DataError otherwise."""
    x = np.asarray(x, np.float32)
    want = tuple(int(d) for d in input_shape)
    if x.ndim == len(want) and tuple(x.shape) == want:
        x = x[None]
    if tuple(x.shape[1:]) != want:
        raise DataError(f"{what} holds inputs of shape {tuple(x.shape[1:])}, the model "
                        f"takes {want}")
    if len(x) == 0:
        raise DataError(f"{what} holds no inputs")
    if not np.all(np.isfinite(x)):
        raise DataError(f"{what} holds non-finite values")
    return x


def _array(path: Path) -> np.ndarray:
    try:
        data = np.load(path, allow_pickle=False)
        if hasattr(data, "files"):
            with data:
                names = data.files
                key = "x" if "x" in names else (names[0] if len(names) == 1 else None)
                if key is None:
                    raise DataError(f"representative data {path} holds arrays "
                                    f"{', '.join(names)}: name the inputs 'x'")
                data = data[key]
    except DataError:
        raise
    except (ValueError, OSError, EOFError, zipfile.BadZipFile) as exc:
        first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise DataError(f"representative data {path} is unreadable: {first}") from None
    if not np.issubdtype(data.dtype, np.number):
        raise DataError(f"representative data {path} must be numeric, got {data.dtype}")
    return np.asarray(data, np.float32)


def _images(folder: Path, input_shape: tuple[int, ...], lo: float, hi: float) -> np.ndarray:
    from PIL import Image, UnidentifiedImageError

    files = sorted(f for f in folder.iterdir() if f.suffix.lower() in IMAGE_SUFFIXES)
    if not files:
        raise DataError(f"representative data {folder} holds no images "
                        f"({', '.join(IMAGE_SUFFIXES)})")
    if len(input_shape) != 3:
        raise DataError(f"a folder of images needs a model taking images (H, W, C); this one "
                        f"takes {tuple(input_shape)}")
    h, w, c = (int(d) for d in input_shape)
    if c not in (1, 3):
        raise DataError(f"a folder of images needs 1 or 3 input channels, the model has {c}")
    out = np.empty((len(files), h, w, c), np.float32)
    for i, f in enumerate(files):
        try:
            with Image.open(f) as im:
                im = im.convert("L" if c == 1 else "RGB")
                if im.size != (w, h):
                    raise DataError(f"image {f.name} is {im.size[0]}x{im.size[1]}, the model "
                                    f"takes {w}x{h} inputs: resize the images to its input size")
                a = np.asarray(im, np.float32)
        except (UnidentifiedImageError, OSError) as exc:
            raise DataError(f"image {f.name} is unreadable: {exc}") from None
        out[i] = a.reshape(h, w, c)
    return lo + (hi - lo) * out / 255.0
