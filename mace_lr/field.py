"""Finite electric fields: constant E, constant D, polarization quanta, acoustic sum rule.

Units: field F in V/Å, dipole mu in e·Å, polarization P = mu / V in e/Å^2, displacement
field D in e/Å^2 (1 e/Å^2 = 16.02 C/m^2), energies in eV. The vacuum permittivity in
these units is eps0 = 1 / (4 pi k_e) with k_e = 14.3996 eV·Å/e^2, so 1 / eps0 =
180.95 eV·Å/e^2 = 180.95 V·Å/(e/Å^2): a field of 1 V/Å is eps0 * 1 V/Å = 5.53e-3 e/Å^2.

* **Constant E** (electric enthalpy): E = U - mu . F for finite systems and U - V P . F
  for periodic ones. The per-atom form -q_i r_i . F needs positions that MD keeps
  unwrapped (ASE and i-PI do): wrapping an atom back into the cell changes mu by q_i
  times a lattice vector, i.e. by a polarization quantum. Forces gain Z*^T F.
* **Constant D** (Stengel, Spaldin and Vanderbilt, Nat. Phys. 5, 304 (2009)), periodic
  cells only: U_D = U + V / (2 eps0) |D - P|^2. The internal field is
  E = (D - P) / eps0 (V/Å) and forces gain Z*^T E, as at constant E with that field.
* **Polarization quanta**: in a periodic cell P is defined modulo e R / V for every
  lattice vector R; :func:`dipole_difference_modulo_quantum` reduces a dipole difference
  V (P - P_ref) to the branch closest to zero, so a loss built on it does not change when
  the reference is shifted by a quantum.
* **Acoustic sum rule**: for a structure of total charge Q, sum_i Z*_i = Q 1 (a rigid
  translation by d moves mu by Q d); :func:`impose_acoustic_sum_rule` removes the
  violation evenly over the atoms.
"""

from __future__ import annotations

import math

import torch

from .electrostatics.units import COULOMB_CONSTANT

#: 1 / eps0 in eV·Å/e^2 (= V·Å^2/e): 4 pi k_e.
INVERSE_EPSILON0 = 4.0 * math.pi * COULOMB_CONSTANT


def field_node_energy(charges: torch.Tensor, positions: torch.Tensor, field: torch.Tensor, batch: torch.Tensor) -> torch.Tensor:
    """-q_i r_i . F_{g(i)} [N] (eV): each atom's share of the electric enthalpy.

    charges [N] e, positions [N, 3] Å, field [G, 3] V/Å, batch [N].
    """
    return -charges * (positions * field[batch]).sum(-1)


def constant_d_energy(dipole: torch.Tensor, cell: torch.Tensor, displacement_field: torch.Tensor,
                      inverse_epsilon0: float = INVERSE_EPSILON0) -> torch.Tensor:
    """V / (2 eps0) |D - mu / V|^2 per structure [G] (eV).

    dipole [G, 3] e·Å; cell [G, 3, 3] Å (rows are lattice vectors, periodic cells only);
    displacement_field [G, 3] e/Å^2.
    """
    volume = torch.linalg.det(cell).abs()
    difference = displacement_field - dipole / volume.unsqueeze(-1)
    return 0.5 * inverse_epsilon0 * volume * (difference * difference).sum(-1)


def internal_field(dipole: torch.Tensor, cell: torch.Tensor, displacement_field: torch.Tensor,
                   inverse_epsilon0: float = INVERSE_EPSILON0) -> torch.Tensor:
    """E = (D - P) / eps0 [G, 3] (V/Å) at constant D."""
    volume = torch.linalg.det(cell).abs().unsqueeze(-1)
    return inverse_epsilon0 * (displacement_field - dipole / volume)


def displacement_for_field(dipole: torch.Tensor, cell: torch.Tensor, field: torch.Tensor) -> torch.Tensor:
    """D = eps0 E + P [G, 3] (e/Å^2): the constant-D state whose internal field is ``field``."""
    volume = torch.linalg.det(cell).abs().unsqueeze(-1)
    return field / INVERSE_EPSILON0 + dipole / volume


def dipole_difference_modulo_quantum(difference: torch.Tensor, cell: torch.Tensor, pbc: torch.Tensor) -> torch.Tensor:
    """mu - mu_ref [G, 3] (e·Å) reduced along each periodic lattice vector to (-1/2, 1/2] of e R.

    A dipole difference dmu = sum_j f_j R_j (R_j the rows of ``cell``) is ambiguous by
    whole units of e R_j along periodic directions j; f_j is replaced by f_j - round(f_j)
    there and left alone along open directions. pbc [G, 3] bool; cell [G, 3, 3] Å (for
    structures without any periodic direction the difference is returned unchanged).
    """
    periodic = pbc.to(torch.bool)
    safe_cell = torch.where(periodic.unsqueeze(-1), cell, torch.eye(3, dtype=cell.dtype, device=cell.device).expand_as(cell))
    # difference = f @ cell  ->  f = difference @ cell^-1 (rows of cell are the R_j)
    fractions = torch.linalg.solve(safe_cell.transpose(-1, -2), difference.unsqueeze(-1)).squeeze(-1)
    shift = torch.where(periodic, torch.round(fractions.detach()), torch.zeros_like(fractions))
    return difference - torch.einsum("gj,gjc->gc", shift, safe_cell)


def impose_acoustic_sum_rule(bec: torch.Tensor, total_charge: torch.Tensor, batch: torch.Tensor,
                             ptr: torch.Tensor) -> torch.Tensor:
    """Born charges [N, 3, 3] with sum_i Z*_i = Q 1 in every structure, the excess spread evenly."""
    num_graphs = int(ptr.numel()) - 1
    counts = (ptr[1:] - ptr[:-1]).to(bec.dtype)
    sums = bec.new_zeros((num_graphs, 3, 3)).index_add(0, batch, bec)
    target = total_charge.to(bec.dtype).view(-1, 1, 1) * torch.eye(3, dtype=bec.dtype, device=bec.device)
    return bec - ((sums - target) / counts.view(-1, 1, 1))[batch]


__all__ = [
    "INVERSE_EPSILON0", "constant_d_energy", "dipole_difference_modulo_quantum", "displacement_for_field",
    "field_node_energy", "impose_acoustic_sum_rule", "internal_field",
]
