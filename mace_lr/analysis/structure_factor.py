"""Charge structure factor S_QQ(k) and binned k-spectra with block-average errors.

    S_QQ(k) = < |rho_q(k)|^2 > / N,   rho_q(k) = sum_i q_i exp(-i k . r_i)

over the half-space wave vectors of the cell (:mod:`.kvectors`), binned by |k| and
averaged over frames. Units: k in 1/Å, charges in e, S_QQ in e^2. For uncorrelated
charges S_QQ = <q^2>; with Coulomb screening S_QQ ~ k^2 k_B T / (4 pi k_e rho) as
k -> 0 (Stillinger-Lovett, rho = N/V).

:class:`SpectrumAccumulator` keeps, per frame and bin, the sum of a per-k quantity and
the number of k-vectors, so that cells may change between frames (NPT) and the error
bars come from :func:`.blocking.block_estimate`.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .blocking import block_estimate, ratio_estimator
from .errors import DiagnosticsInputError
from .kvectors import kvectors

#: Elements of one exp(-i k.r) block [n_k, N] (complex128: 16 bytes each).
CHUNK_ELEMENTS = 1 << 21


def fourier_modes(positions: np.ndarray, weights: np.ndarray, k: np.ndarray) -> np.ndarray:
    """``sum_i w_i exp(-i k . r_i)``: [M] for weights [N], [M, C] for weights [N, C].

    positions [N, 3] (Å), k [M, 3] (1/Å); computed in chunks of k-vectors.
    """
    positions = np.asarray(positions, dtype=float)
    weights = np.asarray(weights, dtype=float)
    flat = weights.reshape(len(positions), -1)
    out = np.empty((len(k), flat.shape[1]), dtype=complex)
    chunk = max(1, CHUNK_ELEMENTS // max(len(positions), 1))
    for start in range(0, len(k), chunk):
        phase = k[start : start + chunk] @ positions.T  # [m, N]
        out.real[start : start + chunk] = np.cos(phase) @ flat
        out.imag[start : start + chunk] = -(np.sin(phase) @ flat)
    return out.reshape((len(k),) + weights.shape[1:])


def structure_factor_per_k(
    positions: np.ndarray, charges: np.ndarray, cell: np.ndarray, kmax: float
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """One frame: k-vectors [M, 3] (1/Å), Miller indices [M, 3] and |rho_q(k)|^2 / N [M] (e^2)."""
    k, hkl = kvectors(cell, kmax)
    rho = fourier_modes(positions, charges, k)
    return k, hkl, np.abs(rho) ** 2 / len(positions)


class KBins:
    """``n_bins`` equal-width bins of |k| on (0, kmax] (1/Å)."""

    def __init__(self, kmax: float, n_bins: int) -> None:
        if not kmax > 0.0 or int(n_bins) < 1:
            raise DiagnosticsInputError(f"need kmax > 0 and bins >= 1, got kmax={kmax}, bins={n_bins}")
        self.kmax = float(kmax)
        self.n_bins = int(n_bins)
        self.edges = np.linspace(0.0, self.kmax, self.n_bins + 1)

    def index(self, knorm: np.ndarray) -> np.ndarray:
        """Bin index of every |k| [M] (``kmax`` itself goes into the last bin)."""
        return np.clip(np.searchsorted(self.edges, knorm, side="left") - 1, 0, self.n_bins - 1)


@dataclass
class Spectrum:
    """A binned k-spectrum, empty bins dropped.

    ``k`` [B] mean |k| of the vectors in each bin (1/Å); ``value``, ``error`` [B];
    ``n_vectors`` [B] half-space k-vectors per frame in the bin (average).
    """

    k: np.ndarray
    value: np.ndarray
    error: np.ndarray
    n_vectors: np.ndarray


class SpectrumAccumulator:
    """Per-frame, per-bin sums of a per-k quantity; :meth:`result` block-averages them.

    Memory: one float per frame and bin (the k-vector counts are kept once per cell).
    """

    def __init__(self, bins: KBins) -> None:
        self.bins = bins
        self._sums: list[np.ndarray] = []
        self._layouts: list[tuple[np.ndarray, np.ndarray]] = []  # (counts, |k| sums) per cell
        self._layout_of_frame: list[int] = []
        self._last_knorm: np.ndarray | None = None

    def add(self, knorm: np.ndarray, values: np.ndarray) -> None:
        """One frame: |k| [M] (1/Å) and the quantity at every k [M]."""
        index = self.bins.index(knorm)
        n = self.bins.n_bins
        self._sums.append(np.bincount(index, weights=values, minlength=n))
        if self._last_knorm is None or not np.array_equal(knorm, self._last_knorm):
            counts = np.bincount(index, minlength=n).astype(float)
            self._layouts.append((counts, np.bincount(index, weights=knorm, minlength=n)))
            self._last_knorm = knorm
        self._layout_of_frame.append(len(self._layouts) - 1)

    @property
    def n_frames(self) -> int:
        return len(self._sums)

    def result(self, n_blocks: int) -> Spectrum:
        """Bin means over all frames with block-average errors (bins without vectors dropped)."""
        sums = np.array(self._sums)
        which = np.array(self._layout_of_frame)
        counts = np.array([layout[0] for layout in self._layouts])[which]
        ksums = np.array([layout[1] for layout in self._layouts])[which].sum(axis=0)
        value, error, _ = block_estimate(ratio_estimator(sums, counts), self.n_frames, n_blocks)
        total = counts.sum(axis=0)
        keep = total > 0
        return Spectrum(
            k=ksums[keep] / total[keep], value=value[keep], error=error[keep], n_vectors=total[keep] / self.n_frames
        )


__all__ = [
    "CHUNK_ELEMENTS",
    "KBins",
    "Spectrum",
    "SpectrumAccumulator",
    "fourier_modes",
    "structure_factor_per_k",
]
