"""Wave vectors a periodic cell allows: k = 2 pi (h b1 + k b2 + l b3), any triclinic cell.

``b_i`` are the reciprocal vectors without the 2 pi (rows of ``inv(cell).T``), so that
``k . a_j = 2 pi n_j``. Since every quantity we sum is ``|f(k)|^2`` of a real density
(``f(-k) = f(k)*``), only one of each pair ``+-k`` is kept (the *half space*: the first
non-zero Miller index is positive); ``k = 0`` is never included.
"""

from __future__ import annotations

import numpy as np

from .errors import DiagnosticsInputError


def reciprocal_cell(cell: np.ndarray) -> np.ndarray:
    """2 pi times the reciprocal vectors as rows [3, 3] (1/Å) of a cell [3, 3] (Å, rows)."""
    cell = np.asarray(cell, dtype=float)
    volume = abs(np.linalg.det(cell))
    if cell.shape != (3, 3) or not np.isfinite(volume) or volume < 1e-8:
        raise DiagnosticsInputError(
            f"the cell {cell.tolist()} has no volume; the diagnostics need a 3D periodic "
            "box (a Lattice= in extxyz, a cell in .traj, a CELL line in i-PI files)"
        )
    return 2.0 * np.pi * np.linalg.inv(cell).T


def miller_indices(cell: np.ndarray, kmax: float) -> np.ndarray:
    """Integer triplets [M, 3] of all half-space k-vectors with 0 < |k| <= ``kmax`` (1/Å).

    Since ``k . a_j = 2 pi n_j`` and ``|k . a_j| <= |k| |a_j|``, every such k has
    ``|n_j| <= kmax |a_j| / (2 pi)``; the box of those triplets is filtered by |k|.
    """
    if not kmax > 0.0:
        raise DiagnosticsInputError(f"kmax must be > 0 (1/Å), got {kmax}")
    recip = reciprocal_cell(cell)
    lengths = np.linalg.norm(np.asarray(cell, dtype=float), axis=1)
    bounds = np.floor(kmax * lengths / (2.0 * np.pi) + 1e-9).astype(int)
    ranges = [np.arange(-n, n + 1) for n in bounds]
    hkl = np.stack(np.meshgrid(*ranges, indexing="ij"), axis=-1).reshape(-1, 3)
    # half space: first non-zero index positive
    first = np.where(hkl[:, 0] != 0, hkl[:, 0], np.where(hkl[:, 1] != 0, hkl[:, 1], hkl[:, 2]))
    hkl = hkl[first > 0]
    norms = np.linalg.norm(hkl @ recip, axis=1)
    keep = norms <= kmax * (1.0 + 1e-12)
    order = np.lexsort((hkl[keep][:, 2], hkl[keep][:, 1], hkl[keep][:, 0], norms[keep]))
    return hkl[keep][order]


def kvectors(cell: np.ndarray, kmax: float) -> tuple[np.ndarray, np.ndarray]:
    """Half-space wave vectors [M, 3] (1/Å) with 0 < |k| <= ``kmax``, sorted by |k|,
    and their Miller indices [M, 3] (int)."""
    hkl = miller_indices(cell, kmax)
    return hkl @ reciprocal_cell(cell), hkl


__all__ = ["kvectors", "miller_indices", "reciprocal_cell"]
