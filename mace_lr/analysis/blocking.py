"""Block averages: error bars of time averages over correlated frames.

The frames are cut into ``n_blocks`` contiguous blocks of (nearly) equal length; an
estimator is evaluated on all frames (the reported value) and on every block, and the
error is the standard error of the block values, ``std(blocks, ddof=1) / sqrt(n_blocks)``.
It is honest when each block is longer than the correlation time of the observable
(check by varying ``n_blocks``: the error should not grow with fewer, longer blocks).
"""

from __future__ import annotations

from typing import Callable

import numpy as np

from .errors import DiagnosticsInputError


def block_slices(n_frames: int, n_blocks: int) -> list[slice]:
    """``n_blocks`` contiguous slices covering ``range(n_frames)``."""
    check_blocks(n_frames, n_blocks)
    edges = np.linspace(0, n_frames, n_blocks + 1).round().astype(int)
    return [slice(int(a), int(b)) for a, b in zip(edges[:-1], edges[1:])]


def check_blocks(n_frames: int, n_blocks: int) -> None:
    """Raise :class:`DiagnosticsInputError` unless 2 <= n_blocks <= n_frames."""
    if n_frames < 2:
        raise DiagnosticsInputError(
            f"the trajectory has {n_frames} frame(s) after slicing; S_QQ(k) and the "
            "dielectric constant are ensemble averages with block-average error bars and "
            "need several frames (at least --blocks of them, ideally hundreds): give a "
            "longer trajectory or a smaller --every"
        )
    if not 2 <= n_blocks <= n_frames:
        raise DiagnosticsInputError(
            f"--blocks must be between 2 and the number of frames ({n_frames}), got {n_blocks}"
        )


def block_estimate(
    estimator: Callable[[slice], np.ndarray | float], n_frames: int, n_blocks: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Value on all frames, block-average error, and the block values [n_blocks, ...].

    ``estimator(frames)`` maps a slice of frame indices to a number or an array.
    """
    blocks = np.array([estimator(s) for s in block_slices(n_frames, n_blocks)], dtype=float)
    value = np.asarray(estimator(slice(0, n_frames)), dtype=float)
    error = np.std(blocks, axis=0, ddof=1) / np.sqrt(n_blocks)
    return value, error, blocks


def ratio_estimator(numerators: np.ndarray, denominators: np.ndarray) -> Callable[[slice], np.ndarray]:
    """Estimator ``sum(num[frames]) / sum(den[frames])`` over the first axis (frames);
    NaN where the denominator sums to zero (e.g. an empty k-bin)."""

    def estimate(frames: slice) -> np.ndarray:
        num = numerators[frames].sum(axis=0)
        den = denominators[frames].sum(axis=0)
        with np.errstate(invalid="ignore", divide="ignore"):
            return np.where(den > 0, num / np.where(den > 0, den, 1), np.nan)

    return estimate


__all__ = ["block_estimate", "block_slices", "check_blocks", "ratio_estimator"]
