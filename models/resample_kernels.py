"""The compiled loops of :mod:`models.resample` (numba, loaded on first use: importing numba
and its first call take about a second, compiling the first time ever a few more)."""

from __future__ import annotations

import numba
import numpy as np


@numba.njit(nogil=True, cache=True)
def resample_rows(src: np.ndarray, first: np.ndarray, weights: np.ndarray,
                  precision_bits: int) -> np.ndarray:
    """Output row i = clip8(sum over t of weights[i, t] * src[first[i] + t]), the weights in
    fixed point of ``precision_bits``, rounded half up: every output row a weighted sum of
    whole input rows, which vectorises. Taps of weight 0 are not read (those past an
    output's last input may lie past the edge)."""
    width = src.shape[1]
    out = np.empty((weights.shape[0], width), np.uint8)
    acc = np.empty(width, np.int32)
    for i in range(weights.shape[0]):
        acc[:] = 1 << (precision_bits - 1)
        for t in range(weights.shape[1]):
            weight = weights[i, t]
            if weight != 0:
                row = src[first[i] + t]
                for j in range(width):
                    acc[j] += np.int32(row[j]) * weight
        for j in range(width):
            out[i, j] = min(max(acc[j] >> precision_bits, 0), 255)
    return out


@numba.njit(nogil=True, cache=True)
def swap_axes(pixels: np.ndarray) -> np.ndarray:
    """(a, b * 3) interleaved RGB -> (b, a * 3): columns become rows, so that the
    horizontal pass is a pass over rows too."""
    a, b = pixels.shape[0], pixels.shape[1] // 3
    out = np.empty((b, a * 3), np.uint8)
    for i in range(a):
        for j in range(b):
            for c in range(3):
                out[j, i * 3 + c] = pixels[i, j * 3 + c]
    return out


@numba.njit(nogil=True, cache=True)
def planes(pixels: np.ndarray, scale: np.ndarray, offset: np.ndarray) -> np.ndarray:
    """(h, w * 3) RGB -> (3, h, w) float32, ``value * scale[c] + offset[c]`` rounded to
    float32 after the product and after the sum."""
    height, width = pixels.shape[0], pixels.shape[1] // 3
    out = np.empty((3, height, width), np.float32)
    for y in range(height):
        for x in range(width):
            for c in range(3):
                scaled = np.float32(pixels[y, x * 3 + c]) * scale[c]
                out[c, y, x] = scaled + offset[c]
    return out
