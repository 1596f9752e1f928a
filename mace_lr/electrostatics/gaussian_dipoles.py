"""Coulomb energy of Gaussian charges plus Gaussian dipoles on the atoms; compilable.

Every atom i carries a charge q_i (e) and a dipole p_i (e·Å), both as Gaussian clouds of
std ``w`` (Å): rho_i(r) = (q_i + p_i . grad_{r_i}) g_w(r - r_i). Two clouds interact
through phi(r) = erf(r / 2w) / r, so the pair energy (x = r_i - r_j, in e^2/Å) is

    E_ij = q_i q_j phi + (q_j p_i - q_i p_j) . grad phi - p_i . (grad grad phi) . p_j

(the point-multipole energy for r >> w). Each atom's own dipole cloud has the
self-energy p_i^2 / (12 sqrt(pi) w^3), which is kept: a restoring spring, as for a
Wannier centroid near its atom. The charge self-energy q_i^2 / (2 sqrt(pi) w), a
constant, is not included (as everywhere in the engine).

* Open boundaries: the exact pair sum (dense [N, N] pairs: clusters and molecules).
* 3D periodic cells: a pure reciprocal-space sum, exact for Gaussian clouds up to the
  k-space truncation ``accuracy``, with tin-foil boundary conditions (no k = 0 term):
  E = 1/(2V) sum_k G(k) |S(k)|^2, S(k) = sum_j (q_j - i k.p_j) exp(-i k.r_j), with
  torch-pme's k-vectors and kernel G(k) = 4 pi exp(-w^2 k^2) / k^2
  (``CoulombPotential(smearing=sqrt(2) w).lr_from_k_sq``). Cells must be neutral.
  Memory and time go as (k-vectors x atoms); cells whose count exceeds
  :data:`~.parameters.EWALD_MAX_WORK` are refused with a clear error (use Wannier
  centroids, which run on PME, or a wider ``w``).
* Slabs (2D) are refused.

Per-atom energies split each pair equally; energies in e^2/Å (multiply by k_e for eV).
"""

from __future__ import annotations

import math
from typing import List

import torch
import torchpme

from .ewald_tables import ewald_kvectors, ewald_phases
from .parameters import EWALD_MAX_WORK, SAFETY_FACTOR, _gaussian_tail_argument, ewald_work


class GaussianChargesAndDipoles(torch.nn.Module):
    """Per-atom Coulomb energies (e^2/Å) of Gaussian charges and dipoles of std ``width`` (Å)."""

    def __init__(self, width: float, accuracy: float = 1e-5) -> None:
        super().__init__()
        if not width > 0.0:
            raise ValueError(f"Gaussian dipoles need a width > 0 Å, got {width}")
        self.width = float(width)
        x = _gaussian_tail_argument(SAFETY_FACTOR * accuracy)
        smearing = math.sqrt(2.0) * self.width  # two clouds of std w interact like one of std sqrt(2) w
        self.lr_wavelength = math.pi * smearing / x
        self.kernel = torchpme.CoulombPotential(smearing=smearing)
        self.ewald_max_work = EWALD_MAX_WORK
        self.inv_sqrt_pi = 1.0 / math.sqrt(math.pi)
        self.spring = 1.0 / (12.0 * math.sqrt(math.pi) * self.width**3)

    def extra_repr(self) -> str:
        return f"width={self.width}"

    def _open(self, charges: torch.Tensor, dipoles: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
        n = positions.shape[0]
        x = positions.unsqueeze(1) - positions.unsqueeze(0)  # r_i - r_j
        squared = (x * x).sum(-1)
        off_diagonal = ~torch.eye(n, dtype=torch.bool, device=positions.device)
        r = torch.sqrt(torch.where(off_diagonal, squared, torch.ones_like(squared)))
        a = 2.0 * self.width
        erf = torch.erf(r / a)
        gauss = 2.0 * self.inv_sqrt_pi / a * torch.exp(-squared / (a * a))  # d erf(r/a) / dr
        phi = erf / r
        d1 = gauss / r - erf / (r * r)  # phi'
        d2 = -2.0 / (a * a) * gauss - 2.0 * gauss / (r * r) + 2.0 * erf / (r * r * r)  # phi''
        zero = torch.zeros_like(phi)
        phi = torch.where(off_diagonal, phi, zero)
        d1_over_r = torch.where(off_diagonal, d1 / r, zero)
        d2_minus = torch.where(off_diagonal, (d2 - d1 / r) / (r * r), zero)
        grad = d1_over_r.unsqueeze(-1) * x  # grad phi along x [N, N, 3]
        p_i_dot_x = (dipoles.unsqueeze(1) * x).sum(-1)  # p_i . x_ij
        p_j_dot_x = (dipoles.unsqueeze(0) * x).sum(-1)  # p_j . x_ij
        p_dot_p = dipoles @ dipoles.transpose(0, 1)
        # p_i . (grad grad phi) . p_j = phi'/r p_i.p_j + (phi'' - phi'/r) (p_i.x)(p_j.x) / r^2
        hessian_term = d1_over_r * p_dot_p + d2_minus * p_i_dot_x * p_j_dot_x
        charge_dipole = charges.unsqueeze(0) * (dipoles.unsqueeze(1) * grad).sum(-1) \
            - charges.unsqueeze(1) * (dipoles.unsqueeze(0) * grad).sum(-1)
        pair = charges.unsqueeze(1) * charges.unsqueeze(0) * phi + charge_dipole - hessian_term
        return 0.5 * pair.sum(1)

    def _periodic(self, charges: torch.Tensor, dipoles: torch.Tensor, positions: torch.Tensor,
                  cell: torch.Tensor) -> torch.Tensor:
        n = positions.shape[0]
        if ewald_work(cell, self.lr_wavelength, n) > self.ewald_max_work:
            raise RuntimeError(
                "Gaussian atomic dipoles: this periodic cell needs too many k-vectors x atoms (more than "
                + str(self.ewald_max_work) + ") for the reciprocal-space sum; use Wannier centroids "
                "(--dipoles_mode centroids, which switch to PME) or a wider --lr_charge_width"
            )
        if bool((charges.sum().abs() > 1e-6)):
            raise RuntimeError("Gaussian atomic dipoles: the periodic cell must be neutral, its charges add up to "
                               + str(float(charges.sum())) + " e; fix the ionic charges or total_charge")
        kvectors, multiplicity = ewald_kvectors(cell, self.lr_wavelength)
        kernel = multiplicity * self.kernel.lr_from_k_sq((kvectors * kvectors).sum(-1))
        cos, sin = ewald_phases(kvectors, positions)  # [K, N]
        k_dot_p = kvectors @ dipoles.transpose(0, 1)  # [K, N]
        real = charges.unsqueeze(0) * cos - k_dot_p * sin  # (q - i k.p) e^{-ik.r} = real - i imag
        imag = charges.unsqueeze(0) * sin + k_dot_p * cos
        total_real = real.sum(1, keepdim=True)
        total_imag = imag.sum(1, keepdim=True)
        volume = torch.abs(torch.linalg.det(cell))
        per_atom = (kernel.unsqueeze(-1) * (real * total_real + imag * total_imag)).sum(0) / (2.0 * volume)
        # the k-sum includes each cloud's self-interaction: remove the charge's (a constant), keep the dipole's
        return per_atom - 0.5 * charges * charges * self.inv_sqrt_pi / self.width

    def forward(self, charges: torch.Tensor, dipoles: torch.Tensor, positions: torch.Tensor, cell: torch.Tensor,
                pbc: torch.Tensor, ptr: torch.Tensor) -> torch.Tensor:
        """Per-atom energies [N] (e^2/Å) for charges [N] e, dipoles [N, 3] e·Å, positions [N, 3] Å,
        cell [G, 3, 3] Å, pbc [G, 3], ptr [G + 1]."""
        energies: List[torch.Tensor] = []
        for g in range(int(ptr.numel()) - 1):
            start = int(ptr[g])
            stop = int(ptr[g + 1])
            n_periodic = int(pbc[g].sum())
            if n_periodic == 0:
                energy = self._open(charges[start:stop], dipoles[start:stop], positions[start:stop])
                energy = energy + self.spring * (dipoles[start:stop] ** 2).sum(-1)
            elif n_periodic == 3:
                energy = self._periodic(charges[start:stop], dipoles[start:stop], positions[start:stop], cell[g])
            else:
                raise RuntimeError("Gaussian atomic dipoles support open boundaries and 3D-periodic cells, not "
                                   "slabs or wires; use Wannier centroids (--dipoles_mode centroids) for slabs")
            energies.append(energy)
        return torch.cat(energies, dim=0)


__all__ = ["GaussianChargesAndDipoles"]
