"""Pillow's bicubic resize computed only for a crop: the same numbers, several times faster.

:func:`models.preprocessing.preprocess` resizes with Pillow's antialiased bicubic filter and
keeps a centre crop. Pillow resizes the whole image in scalar C; this module runs Pillow's
own integer arithmetic (its weights in 22-bit fixed point, one rounding to 8 bits after each
of the two passes) for the crop's pixels only, in loops that the compiler vectorises.

Which pass Pillow runs first depends on its version and on the sizes, and the two orders
round differently. So for every new pair of sizes the order is found once by resizing a
noise image both ways against Pillow itself; where neither matches, :func:`resize_crop`
answers None and the caller uses Pillow.

The loops are compiled by numba (:mod:`models.resample_kernels`), which takes about a second
to load. Until they are loaded, :func:`resize_crop` answers None: the first call loads them
(in the caller's thread), and calls from other threads meanwhile use Pillow instead of
waiting; :func:`load_in_background` lets a service load them without any request waiting.
"""

from __future__ import annotations

import functools
import importlib
import logging
import math
import threading
from types import ModuleType

import numpy as np
from PIL import Image

log = logging.getLogger(__name__)

PRECISION_BITS = 32 - 8 - 2  # Pillow's fixed point for 8-bit images
BICUBIC_A = -0.5
BICUBIC_SUPPORT = 2.0

# Larger sources go to Pillow: the order probe would resize a noise image of their size.
PROBE_MAX_PIXELS = 4_000_000
Size = tuple[int, int]  # (width, height), as Pillow gives sizes
Box = tuple[int, int, int, int]  # (left, top, right, bottom)


def _bicubic(x: np.ndarray) -> np.ndarray:
    """Pillow's bicubic kernel (a = -0.5), its operations in its order."""
    x = np.abs(x)
    near = ((BICUBIC_A + 2.0) * x - (BICUBIC_A + 3.0)) * x * x + 1
    far = (((x - 5) * x + 8) * x - 4) * BICUBIC_A
    return np.where(x < 1.0, near, np.where(x < 2.0, far, 0.0))


@functools.lru_cache(maxsize=256)
def axis_weights(in_size: int, out_size: int) -> tuple[np.ndarray, np.ndarray]:
    """Resampling ``in_size`` pixels to ``out_size`` along one axis as Pillow's
    ``precompute_coeffs`` and ``normalize_coeffs_8bpc`` do: for each output pixel, the first
    input pixel it reads and its fixed-point weights (0 past its last input). An unchanged
    size is one tap of weight 1.0, which leaves the pixels as they are (Pillow copies)."""
    if in_size == out_size:
        return (np.arange(out_size, dtype=np.int64),
                np.full((out_size, 1), 1 << PRECISION_BITS, np.int32))
    scale = in_size / out_size
    filterscale = max(scale, 1.0)
    support = BICUBIC_SUPPORT * filterscale
    taps = int(math.ceil(support)) * 2 + 1
    center = (np.arange(out_size) + 0.5) * scale
    first = np.maximum(np.trunc(center - support + 0.5), 0).astype(np.int64)
    count = np.minimum(np.trunc(center + support + 0.5), in_size).astype(np.int64) - first
    offsets = np.arange(taps)
    distance = (first[:, None] + offsets[None, :]) - center[:, None] + 0.5
    w = np.where(offsets[None, :] < count[:, None], _bicubic(distance * (1.0 / filterscale)),
                 0.0)
    total = np.cumsum(w, axis=1)[:, -1:]  # summed left to right, as Pillow sums
    w = np.divide(w, total, out=w.copy(), where=total != 0.0)
    fixed = w * (1 << PRECISION_BITS)
    return first, np.trunc(np.where(w < 0, fixed - 0.5, fixed + 0.5)).astype(np.int32)


_kernels: ModuleType | None = None  # models.resample_kernels, once loaded
_loading = threading.Lock()  # held while they load
_failed = False  # numba could not load them: Pillow from then on


def _load() -> None:
    global _kernels, _failed
    try:
        kernels = importlib.import_module("models.resample_kernels")
        kernels.swap_axes(np.zeros((1, 3), np.uint8))  # numba's first call
        _kernels = kernels
    except Exception:  # e.g. numba missing or broken: Pillow gives the same pixels
        _failed = True
        log.exception("the compiled resize could not be loaded; resizing with Pillow")


def _load_and_release() -> None:
    """With ``_loading`` held: load the loops unless that is done or failed, then let go."""
    try:
        if _kernels is None and not _failed:
            _load()
    finally:
        _loading.release()


def _start_loading() -> bool:
    """Take ``_loading`` if the loops are still to load and nobody else is loading them."""
    return _kernels is None and not _failed and _loading.acquire(blocking=False)


def loaded_kernels() -> ModuleType | None:
    """The compiled loops; the first caller loads them, other callers meanwhile get None."""
    if _start_loading():
        _load_and_release()
    return _kernels


def load_in_background() -> threading.Thread | None:
    """Load the compiled loops on a thread of their own (None: loaded, or being loaded,
    already). Until they are loaded every call uses Pillow: the lock is taken here, so no
    request can start loading them itself and wait."""
    if not _start_loading():
        return None
    thread = threading.Thread(target=_load_and_release, name="resample-kernels", daemon=True)
    thread.start()
    return thread


def _resize(pixels: np.ndarray, size: Size, box: Box, horizontal_first: bool) -> np.ndarray:
    """The crop ``box`` of ``pixels`` (h, w, 3) resized to ``size``, as (rows, cols * 3),
    the two passes in the given order, each only over the pixels the crop needs."""
    height, width = pixels.shape[:2]
    left, top, right, bottom = box
    col_first, col_weights = (a[left:right] for a in axis_weights(width, size[0]))
    row_first, row_weights = (a[top:bottom] for a in axis_weights(height, size[1]))
    swap_axes = _kernels.swap_axes

    def resample_rows(src: np.ndarray, first: np.ndarray, weights: np.ndarray) -> np.ndarray:
        return _kernels.resample_rows(src, first, weights, PRECISION_BITS)

    rows = np.ascontiguousarray(pixels).reshape(height, width * 3)
    if horizontal_first:
        # Only the source rows that the crop's rows read.
        src_top = int(row_first[0])
        src_bottom = min(int((row_first + row_weights.shape[1]).max()), height)
        columns = resample_rows(swap_axes(rows[src_top:src_bottom]), col_first, col_weights)
        return resample_rows(swap_axes(columns), row_first - src_top, row_weights)
    shortened = resample_rows(rows, row_first, row_weights)
    return swap_axes(resample_rows(swap_axes(shortened), col_first, col_weights))


@functools.lru_cache(maxsize=512)
def _pillow_order(in_size: Size, out_size: Size) -> bool | None:
    """Whether Pillow resizes ``in_size`` to ``out_size`` horizontal pass first (True) or
    vertical first (False), found by resizing a noise image both ways against Pillow; None
    where neither reproduces it."""
    width, height = in_size
    noise = np.random.default_rng(width * 65_537 + height).integers(
        0, 256, (height, width, 3), dtype=np.uint8)
    expected = np.asarray(Image.fromarray(noise).resize(out_size, Image.Resampling.BICUBIC))
    expected = expected.reshape(out_size[1], out_size[0] * 3)
    for horizontal_first in (True, False):
        if np.array_equal(_resize(noise, out_size, (0, 0, *out_size), horizontal_first),
                          expected):
            return horizontal_first
    return None


def resize_crop(pixels: np.ndarray, size: Size, box: Box) -> np.ndarray | None:
    """``Image.fromarray(pixels).resize(size, BICUBIC).crop(box)`` as a (rows, cols * 3)
    uint8 array, or None where Pillow should do it: its arithmetic is not reproduced for
    these sizes, the source is over :data:`PROBE_MAX_PIXELS`, ``box`` reaches outside the
    resized image (Pillow pads), or the compiled loops are not loaded (yet).
    ``pixels``: (h, w, 3) uint8."""
    height, width = pixels.shape[:2]
    left, top, right, bottom = box
    if not (0 <= left < right <= size[0] and 0 <= top < bottom <= size[1]) \
            or width * height > PROBE_MAX_PIXELS or loaded_kernels() is None:
        return None
    order = _pillow_order((width, height), size)
    return None if order is None else _resize(pixels, size, box, order)


def normalised_planes(pixels: np.ndarray, mean: tuple[float, float, float],
                      std: tuple[float, float, float]) -> np.ndarray:
    """(h, w, 3) or (h, w * 3) uint8 RGB -> (3, h, w) float32 ``(value / 255 - mean) / std``,
    computed as one multiply and one add per value, each rounded to float32 (equal to the
    formula within float32 rounding, < 1e-6; the compiled loop and numpy give the same
    floats)."""
    scale = (1.0 / (255.0 * np.asarray(std, dtype=np.float64))).astype(np.float32)
    offset = (-np.asarray(mean, dtype=np.float64) / np.asarray(std, dtype=np.float64)
              ).astype(np.float32)
    rows = np.ascontiguousarray(pixels).reshape(pixels.shape[0], -1)
    if (kernels := loaded_kernels()) is not None:
        return kernels.planes(rows, scale, offset)
    planes = np.ascontiguousarray(rows.reshape(rows.shape[0], -1, 3).transpose(2, 0, 1),
                                  dtype=np.float32)
    planes *= scale[:, None, None]
    planes += offset[:, None, None]
    return planes
