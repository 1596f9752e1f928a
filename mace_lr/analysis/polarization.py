"""Longitudinal and transverse polarization (dipole-density) fluctuations.

With the Fourier convention f(k) = sum_i f_i exp(-i k . r_i), the charge density of
the polarization P obeys rho_q = -div P, i.e. rho_q(k) = -i k . P(k), so the
longitudinal part of P is fixed by the charges:

    P_L(k) = k_hat . P(k) = i rho_q(k) / |k|   (+ k_hat . sum_i mu_i exp(-i k . r_i))

where the second term adds per-atom point dipoles mu_i (e·Å) when the file has them.
The transverse part P_T = P - k_hat (k_hat . P) comes from the point dipoles only
(charges moving transversely leave no trace in rho_q).

Correlations per volume (e^2/Å, i.e. (e·Å)^2/Å^3):

    chi_L(k) = <|P_L(k)|^2> / V,      chi_T(k) = <|P_T(k)|^2> / (2 V)

and, with beta = 1/(k_B T), the dimensionless responses (tin-foil, Gaussian units with
k_e = 14.399645 eV·Å/e^2)

    4 pi k_e beta chi_L(k) = 1 - 1/eps_L(k),      4 pi k_e beta chi_T(k) = eps_T(k) - 1.

For charges alone chi_L = N S_QQ(k) / (V k^2); perfect screening (an ionic conductor)
gives 4 pi k_e beta chi_L -> 1 as k -> 0 (Stillinger-Lovett), a dielectric
1 - 1/eps < 1; a short-ranged model of an ionic liquid diverges like 1/k^2.
"""

from __future__ import annotations

import numpy as np
from .structure_factor import fourier_modes
from .units import BOLTZMANN, COULOMB_CONSTANT


def polarization_from_modes(
    k: np.ndarray, rho: np.ndarray | None = None, dipole_modes: np.ndarray | None = None
) -> tuple[np.ndarray, np.ndarray | None]:
    """P_L(k) [M] and, with dipoles, P_T(k) [M, 3] (complex, e·Å) from the charge modes
    rho_q(k) [M] (e) and the dipole modes sum_i mu_i exp(-i k.r_i) [M, 3] (e·Å)."""
    knorm = np.linalg.norm(k, axis=1)
    longitudinal = np.zeros(len(k), dtype=complex)
    if rho is not None:
        longitudinal += 1j * rho / knorm
    transverse = None
    if dipole_modes is not None:
        khat = k / knorm[:, None]
        along = np.einsum("mc,mc->m", dipole_modes, khat)
        longitudinal += along
        transverse = dipole_modes - along[:, None] * khat
    return longitudinal, transverse


def polarization_modes(
    positions: np.ndarray,
    k: np.ndarray,
    charges: np.ndarray | None = None,
    dipoles: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray | None]:
    """P_L(k) [M] (complex, e·Å) and, with dipoles, P_T(k) [M, 3] (complex, e·Å).

    positions [N, 3] Å, k [M, 3] 1/Å, charges [N] e, dipoles [N, 3] e·Å.
    """
    n_atoms = len(positions)
    weights = np.concatenate(
        [np.zeros((n_atoms, 1)) if charges is None else np.asarray(charges, float).reshape(-1, 1),
         np.zeros((n_atoms, 3)) if dipoles is None else np.asarray(dipoles, float)],
        axis=1,
    )
    modes = fourier_modes(positions, weights, k)
    return polarization_from_modes(
        k, None if charges is None else modes[:, 0], None if dipoles is None else modes[:, 1:]
    )


def response_factor(temperature: float) -> float:
    """4 pi k_e / (k_B T) in Å/e^2 (k_e in eV·Å/e^2, k_B T in eV)."""
    return 4.0 * np.pi * COULOMB_CONSTANT / (BOLTZMANN * temperature)


__all__ = ["polarization_from_modes", "polarization_modes", "response_factor"]
