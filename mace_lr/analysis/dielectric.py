"""Static dielectric constant from total-dipole fluctuations (tin-foil boundaries).

    eps = 1 + 4 pi k_e (<M . M> - <M> . <M>) / (3 V k_B T)

M: total dipole of the cell (e·Å), V: mean volume (Å^3), k_B T in eV,
k_e = 14.399645 eV·Å/e^2; eps is dimensionless. This is the fluctuation formula of a
periodic system summed with conducting (tin-foil) boundaries, i.e. Ewald without the
surface term, which is what Ewald/PME codes (and mace-lr) do.

M comes from the file (``REF_dipole``), or from charges and per-atom dipoles as
M = sum_i q_i r_i + sum_i mu_i. With charges, r_i must be *unwrapped* (continuous
paths): wrapping an atom back into the cell makes M jump by q_i times a lattice vector.
For an ionic conductor (ions that diffuse) M performs a random walk, its variance grows
with the length of the run and eps is infinite: :func:`dielectric_constant` reports the
growth (``drift_ratio``) and warns.

Known answer (:func:`debye_dielectric_constant`): N non-interacting rigid dipoles of
size mu with random orientations give <M^2> = N mu^2, eps = 1 + 4 pi k_e N mu^2 / (3 V k_B T).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from .blocking import block_estimate, block_slices
from .units import BOLTZMANN, COULOMB_CONSTANT

#: total variance / mean within-block variance above which M is said to drift.
DRIFT_THRESHOLD = 2.0


@dataclass
class DielectricResult:
    """eps (``value`` +- ``error``, block average) and what it was made of.

    ``dipole_variance``: <M.M> - <M>.<M> (e^2 Å^2); ``mean_dipole`` [3] (e·Å);
    ``volume`` (Å^3); ``temperature`` (K); ``drift_ratio``: variance of M over all
    frames divided by the mean variance within blocks (~1 for a stationary M, grows
    like the number of blocks for a diffusing M).
    """

    value: float
    error: float
    temperature: float
    volume: float
    dipole_variance: float
    mean_dipole: np.ndarray
    drift_ratio: float
    source: str
    warnings: list[str] = field(default_factory=list)


def _variance(dipoles: np.ndarray) -> float:
    """<M.M> - <M>.<M> of dipoles [F, 3]."""
    mean = dipoles.mean(axis=0)
    return float(np.mean(np.einsum("fc,fc->f", dipoles, dipoles)) - mean @ mean)


def dielectric_constant(
    total_dipoles: np.ndarray,
    volumes: np.ndarray,
    temperature: float,
    n_blocks: int,
    source: str = "",
) -> DielectricResult:
    """eps from total dipoles [F, 3] (e·Å) and cell volumes [F] (Å^3) at ``temperature`` (K)."""
    dipoles = np.asarray(total_dipoles, dtype=float)
    volume = float(np.mean(volumes))
    if not temperature > 0.0:
        raise ValueError(f"temperature must be > 0 K, got {temperature}")
    scale = 4.0 * np.pi * COULOMB_CONSTANT / (3.0 * volume * BOLTZMANN * temperature)

    def estimate(frames: slice) -> float:
        return 1.0 + scale * _variance(dipoles[frames])

    value, error, _ = block_estimate(estimate, len(dipoles), n_blocks)
    variance = _variance(dipoles)
    within = np.mean([_variance(dipoles[s]) for s in block_slices(len(dipoles), n_blocks)])
    drift = float(variance / within) if within > 0 else float("inf")
    warnings = []
    if n_blocks >= 4 and drift > DRIFT_THRESHOLD:
        warnings.append(
            f"the total dipole drifts: its variance over the whole run is {drift:.1f}x its "
            "variance within blocks. Either the run is too short for M to decorrelate, or "
            "the system conducts (ions diffuse, M = sum q r random-walks) and eps is not "
            "defined; eps below is not converged"
        )
    return DielectricResult(
        value=float(value),
        error=float(error),
        temperature=float(temperature),
        volume=volume,
        dipole_variance=variance,
        mean_dipole=dipoles.mean(axis=0),
        drift_ratio=drift,
        source=source,
        warnings=warnings,
    )


def debye_dielectric_constant(n_dipoles: int, dipole: float, volume: float, temperature: float) -> float:
    """Non-interacting rigid dipoles (Debye/Langevin, linear response):
    1 + 4 pi k_e N mu^2 / (3 V k_B T); mu in e·Å, V in Å^3, T in K."""
    return 1.0 + 4.0 * np.pi * COULOMB_CONSTANT * n_dipoles * dipole**2 / (
        3.0 * volume * BOLTZMANN * temperature
    )


__all__ = ["DRIFT_THRESHOLD", "DielectricResult", "debye_dielectric_constant", "dielectric_constant"]
