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
* 3D periodic cells: a pure reciprocal-space sum on the k-space layer (:mod:`.kspace`),
  exact for Gaussian clouds up to the k-space truncation, with tin-foil boundary
  conditions (no k = 0 term): E = 1/(2V) sum_k G(k) |S(k)|^2 with
  S(k) = sum_j (q_j - i k.p_j) exp(-i k.r_j) and G(k) = 4 pi exp(-w^2 k^2) / k^2
  (:func:`.kspace.coulomb_kernel` at sigma = sqrt(2) w). Per atom,
  E_i = 1/2 (q_i V_i - p_i . E_i) - q_i^2 / (2 sqrt(pi) w), with V and E = -grad V the
  potential and field of all charges and dipoles
  (:meth:`.kspace.ReciprocalSum.potential_and_field_with_dipoles`, Ewald or PME), which
  equals the pair split above. Cells must be neutral.
  The method (Ewald or PME, whichever the cost model finds cheaper) and its cut-off or
  mesh come from :class:`.kspace.KSpacePlanner`; plans above ``memory_budget`` are refused
  with a clear error. ``accuracy`` is the relative RMS force error on the scale
  (<q^2> + <|p|^2> / a^2) / a^2 (a = rho^(-1/3); the charges' scale of :mod:`.kspace` plus
  the dipoles'). A dipole's k-space terms carry k . p, so the planners are asked for a
  tighter charge-scale accuracy (:func:`dipole_accuracy`): for Ewald at its cut-off k_c,
  for PME at the wavenumber where its mesh errors sit (:data:`PME_DIPOLE_WAVENUMBER`,
  fitted). Measured (widths 0.5-2 Å, water density, 1e-3 and 1e-5, tests/test_gaussian_dipoles.py):
  achieved force errors 1.0-2.7x below the request with Ewald, 1.5-9x with PME (whose
  planner mesh model is itself up to 10x conservative for charges alone at widths >= 1.5 Å).
* Slabs (2D) are refused.

Per-atom energies split each pair equally; energies in e^2/Å (multiply by k_e for eV).
"""

from __future__ import annotations

import math
from typing import List

import torch

from .kspace import (
    MEMORY_BUDGET,
    KSpacePlan,
    KSpacePlanner,
    ReciprocalSum,
    coulomb_kernel,
    ewald_kcut,
    occupied_density,
    self_potential,
)
from .parameters import accuracy_of_legacy_wavelength


def dipole_accuracy(accuracy: float, q2: float, p2: float, spacing: float, wavenumber: float) -> float:
    """The charge-scale accuracy to ask :class:`.kspace.KSpacePlanner` for, so that charges and
    dipoles (mean squares ``q2`` e^2 and ``p2`` e^2 Å^2, atom spacing ``spacing`` Å) reach
    ``accuracy`` on the scale (q2 + p2 / a^2) / a^2 (see the module docstring).

    A dipole's k-space terms carry a factor k . p, so its errors are a charge's with
    q^2 -> p^2 k^2 / 3 at the ``wavenumber`` k (Å^-1) where the method's errors sit. Never above
    ``accuracy``.
    """
    if not 0.0 < q2 + p2 < 1e300:  # no sources (or non-finite ones, which the sum will show anyway)
        return accuracy
    factor = min((q2 + p2 / (spacing * spacing)) / (q2 + p2 * wavenumber * wavenumber / 3.0), 1.0)
    # rounded down to 8 steps per decade, so that the plan stays put while the dipoles change a little
    return accuracy * 10.0 ** (math.floor(8.0 * math.log10(factor)) / 8.0)


#: Where a dipole's PME mesh errors sit: k sigma = PME_DIPOLE_WAVENUMBER + PME_DIPOLE_SPACING_TERM a / sigma
#: (sigma = sqrt(2) w, a the atom spacing), fitted to PME force errors against a converged k-sum
#: (0.5 <= w <= 2 Å, 1e-3 and 1e-5, water density, 216-512 atoms; the check of tests/test_gaussian_dipoles.py).
PME_DIPOLE_WAVENUMBER = 1.6
PME_DIPOLE_SPACING_TERM = 0.5

#: The per-method planners' own budget: the module applies its budget across both methods.
UNLIMITED = 1.0e300


class GaussianChargesAndDipoles(torch.nn.Module):
    """Per-atom Coulomb energies (e^2/Å) of Gaussian charges and dipoles of std ``width`` (Å).

    Args:
        width: Gaussian std w (Å) of every charge and dipole cloud.
        accuracy: relative RMS force accuracy of periodic sums, on the charge-and-dipole scale
            (see the module docstring).
        method: ``auto`` (Ewald or PME, the cheaper by :class:`.kspace.KSpacePlanner`'s cost
            model), ``ewald`` or ``pme``.
        memory_budget: bytes one periodic sum may use; larger plans are refused with a clear error.
    """

    def __init__(self, width: float, accuracy: float = 1e-5, method: str = "auto",
                 memory_budget: float = MEMORY_BUDGET) -> None:
        super().__init__()
        if not width > 0.0:
            raise ValueError(f"Gaussian dipoles need a width > 0 Å, got {width}")
        self.width = float(width)
        self.accuracy = float(accuracy)
        self.smearing = math.sqrt(2.0) * self.width  # two clouds of std w interact like one of std sqrt(2) w
        if method not in ("auto", "ewald", "pme"):
            raise ValueError(f"k-space method {method!r} unknown; use auto, ewald or pme")
        if not memory_budget > 0.0:
            raise ValueError(f"memory budget must be > 0 bytes, got {memory_budget}")
        self.method = method
        self.memory_budget = float(memory_budget)
        self._make_planners()
        self.inv_sqrt_pi = 1.0 / math.sqrt(math.pi)
        self.spring = 1.0 / (12.0 * math.sqrt(math.pi) * self.width**3)

    def __setstate__(self, state: dict) -> None:
        """Upgrade an instance pickled before the k-space layer (torch-pme kernel, Ewald only).

        Its accuracy is recovered from its ``lr_wavelength`` = pi sqrt(2) w / x, where
        exp(-x^2 / 2) = 0.1 accuracy; method ``auto`` and the default memory budget.
        """
        super().__setstate__(state)
        if "reciprocal" not in self._modules:
            self._modules.pop("kernel", None)
            smearing = math.sqrt(2.0) * self.width
            self.accuracy = accuracy_of_legacy_wavelength(smearing, float(self.__dict__.pop("lr_wavelength")))
            self.__dict__.pop("ewald_max_work", None)
            self.smearing = smearing
            self.method = "auto"
            self.memory_budget = MEMORY_BUDGET
            self._make_planners()

    def _make_planners(self) -> None:
        """One planner per method (the budget is applied here, across both) and the reciprocal sum."""
        self.ewald_planner = KSpacePlanner(self.accuracy, "ewald", UNLIMITED)
        self.pme_planner = KSpacePlanner(self.accuracy, "pme", UNLIMITED)
        self.reciprocal = ReciprocalSum()
        self.pme_dipole_wavenumber = PME_DIPOLE_WAVENUMBER
        self.pme_dipole_spacing_term = PME_DIPOLE_SPACING_TERM

    def extra_repr(self) -> str:
        return f"width={self.width}, accuracy={self.accuracy}"

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

    def _plan(self, charges: torch.Tensor, dipoles: torch.Tensor, positions: torch.Tensor,
              cell: torch.Tensor) -> KSpacePlan:
        """The cheaper of the Ewald and PME plans (per ``method``) at width sqrt(2) w, pure k-space,
        4 source channels, each at the charge-scale accuracy that meets ``accuracy`` on the
        charge-and-dipole scale (:func:`dipole_accuracy`); refused above the memory budget."""
        n = positions.shape[0]
        density = occupied_density(positions, cell)
        spacing = density ** (-1.0 / 3.0)
        q2 = float((charges.detach() ** 2).mean())
        p2 = float((dipoles.detach() ** 2).sum(-1).mean())
        sigma = self.smearing
        target = self.accuracy
        for _ in range(2):  # Ewald's errors sit at its cut-off, which grows as the target tightens
            kcut = ewald_kcut(density, sigma, target / math.sqrt(2.0))
            target = dipole_accuracy(self.accuracy, q2, p2, spacing, kcut)
        self.ewald_planner.accuracy = target
        wavenumber = (self.pme_dipole_wavenumber + self.pme_dipole_spacing_term * spacing / sigma) / sigma
        self.pme_planner.accuracy = dipole_accuracy(self.accuracy, q2, p2, spacing, wavenumber)
        if self.method == "ewald":
            best = self.ewald_planner(cell, n, sigma, sigma, 4, False, False, density)
            smallest = best
            fits = best.memory <= self.memory_budget
        elif self.method == "pme":
            best = self.pme_planner(cell, n, sigma, sigma, 4, False, False, density)
            smallest = best
            fits = best.memory <= self.memory_budget
        else:
            ewald = self.ewald_planner(cell, n, sigma, sigma, 4, False, False, density)
            pme = self.pme_planner(cell, n, sigma, sigma, 4, False, False, density)
            ewald_fits = ewald.memory <= self.memory_budget
            pme_fits = pme.memory <= self.memory_budget
            fits = ewald_fits or pme_fits
            best = ewald if ewald_fits and (not pme_fits or ewald.seconds <= pme.seconds) else pme
            smallest = ewald if ewald.memory <= pme.memory else pme
        if not fits:
            volume = float(torch.abs(torch.linalg.det(cell.detach())))
            raise RuntimeError(
                "Gaussian atomic dipoles: the smallest plan (" + smallest.method + ") for this cell (" + str(n)
                + " atoms, volume " + str(int(volume)) + " Å^3) needs about " + str(int(smallest.memory / 1e6))
                + " MB, above the memory budget of " + str(int(self.memory_budget / 1e6)) + " MB; raise the "
                + "budget (environment variable MACE_LR_MEMORY_BUDGET_GB when the model is built), ask for a "
                + "lower accuracy, or use a wider --lr_charge_width")
        return best

    def _periodic(self, charges: torch.Tensor, dipoles: torch.Tensor, positions: torch.Tensor,
                  cell: torch.Tensor) -> torch.Tensor:
        if bool((charges.sum().abs() > 1e-6)):
            raise RuntimeError("Gaussian atomic dipoles: the periodic cell must be neutral, its charges add up to "
                               + str(float(charges.sum())) + " e; fix the ionic charges or total_charge")
        if positions.shape[0] == 0:
            return torch.zeros_like(charges)
        plan = self._plan(charges, dipoles, positions, cell)
        kvectors = self.reciprocal.prepare(positions, cell, plan)
        kernel = coulomb_kernel((kvectors * kvectors).sum(-1), self.smearing)
        potential, field = self.reciprocal.potential_and_field_with_dipoles(charges, dipoles, kernel)
        self.reciprocal.release()
        per_atom = 0.5 * (charges * potential - (dipoles * field).sum(-1))
        # the k-sum includes each cloud's self-interaction: remove the charge's (a constant), keep the dipole's
        return per_atom - 0.5 * self_potential(self.smearing) * charges * charges

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
