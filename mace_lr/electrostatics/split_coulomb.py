"""Coulomb potential of Gaussian charges in one periodic cell (3D or slab), Ewald-split; compilable.

The one periodic charge sum of mace-lr, used by the engine (:mod:`.coulomb`) and the
charge heads (:mod:`.graph`). Charges q_i with Gaussian widths s_i (std, Å; 0 = point
charges) interact through erf(r / w_ij) / r, w_ij = sqrt(2 (s_i^2 + s_j^2)). With an
Ewald splitting width sigma >= sqrt(2) max(s) chosen by :class:`.kspace.KSpacePlanner`
(cost for the requested accuracy, *not* tied to any model cutoff):

    phi_i = sum_j q_j [erf(r_ij / w_ij) - erf(r_ij / (sqrt(2) sigma))] / r_ij     (real space, r < r_c)
          + (1 / V) sum_k G_sigma(k) rho(k) e^{ik.r_i}                            (:class:`.kspace.ReciprocalSum`)
          - sqrt(2 / pi) / sigma q_i - 2 pi sigma^2 Q / V                          (own Gaussian, background)
          + slab correction (torch-pme's ``CoulombPotential.pbc_correction``, two periodic axes)

The real-space pairs come from vesin-torch's neighbour list (TorchScript-compatible),
with the pair vectors rebuilt from positions and cell so that forces, stress and
double backward follow by autograd. When every width equals sigma / sqrt(2) the
remainder vanishes and no pairs are needed (pure k-space, as in LES). Units: k_e = 1
(potential in e/Å); callers multiply by the Coulomb constant.
"""

from __future__ import annotations

import math

import torch
import torchpme
from vesin_torch import NeighborList

from .direct import pair_widths
from .kspace import (
    MEMORY_BUDGET,
    KSpacePlan,
    ReciprocalSum,
    background_potential,
    coulomb_kernel,
    KSpacePlanner,
    occupied_density,
    self_potential,
)

class PeriodicCoulomb(torch.nn.Module):
    """phi [N] (e/Å) of Gaussian charges in one periodic cell; see the module docstring.

    Args:
        accuracy: relative RMS force accuracy (:mod:`.kspace`).
        method: ``auto`` (cheapest by the cost model), ``ewald`` or ``pme``.
        memory_budget: bytes one sum may use; larger plans are refused with a clear error.
    """

    def __init__(self, accuracy: float = 1e-5, method: str = "auto", memory_budget: float = MEMORY_BUDGET) -> None:
        super().__init__()
        self.planner = KSpacePlanner(accuracy, method, memory_budget)
        self.reciprocal = ReciprocalSum()
        self.slab = torchpme.CoulombPotential(smearing=1.0)  # its pbc_correction does not depend on the smearing

    def plan(self, positions: torch.Tensor, cell: torch.Tensor, max_width: float, uniform: bool) -> KSpacePlan:
        """The plan for this cell: sigma from sqrt(2) ``max_width`` up, by cost."""
        floor = max(math.sqrt(2.0) * max_width, 1e-3)
        return self.planner(cell, positions.shape[0], floor, 1.0e6, 1, True, uniform,
                            occupied_density(positions, cell))

    def forward(self, charges: torch.Tensor, positions: torch.Tensor, cell: torch.Tensor, periodic: torch.Tensor,
                widths: torch.Tensor) -> torch.Tensor:
        """phi [N] (e/Å) for charges [N] e, positions [N, 3] Å, cell [3, 3] Å (rows), periodic [3]
        bool (all True, or two True for a slab), widths [N] Å (>= 0)."""
        n = positions.shape[0]
        max_width = float(widths.detach().max()) if n > 0 else 0.0
        uniform = bool((widths.detach() == max_width).all())
        plan = self.plan(positions, cell, max_width, uniform)
        sigma = plan.smearing
        kvectors = self.reciprocal.prepare(positions, cell, plan)
        kernel = coulomb_kernel((kvectors * kvectors).sum(-1), sigma)
        potential = self.reciprocal.potential(charges.unsqueeze(-1), kernel).squeeze(-1)
        self.reciprocal.release()
        volume = torch.abs(torch.linalg.det(cell))
        potential = potential - self_potential(sigma) * charges - background_potential(sigma, volume) * charges.sum()
        if plan.cutoff > 0.0:
            potential = potential + self._real_space(charges, positions, cell, periodic, widths, sigma, plan.cutoff)
        if not bool(periodic.all()):
            potential = potential + self.slab.pbc_correction(periodic, positions, cell, charges.unsqueeze(-1)).squeeze(-1)
        return potential

    def _real_space(self, charges: torch.Tensor, positions: torch.Tensor, cell: torch.Tensor, periodic: torch.Tensor,
                    widths: torch.Tensor, sigma: float, cutoff: float) -> torch.Tensor:
        """sum_j q_j [erf(r / w_ij) - erf(r / (sqrt(2) sigma))] / r over pairs within ``cutoff``."""
        neighbors = NeighborList(cutoff=cutoff, full_list=False)
        found = neighbors.compute(points=positions.detach(), box=cell.detach(), periodic=periodic,
                                  quantities="ijS", copy=True)
        i = found[0].to(torch.long)
        j = found[1].to(torch.long)
        shifts = found[2].to(cell.dtype)
        vectors = positions[j] - positions[i] + shifts @ cell
        distance = torch.linalg.norm(vectors, dim=1)
        width = pair_widths(widths[i], widths[j])
        smeared = width > 0.0
        physical = torch.where(smeared, torch.erf(distance / torch.where(smeared, width, torch.ones_like(width))),
                               torch.ones_like(distance))
        values = (physical - torch.erf(distance / (math.sqrt(2.0) * sigma))) / distance
        potential = torch.zeros_like(charges).index_add(0, i, charges[j] * values)
        return potential.index_add(0, j, charges[i] * values)


__all__ = ["PeriodicCoulomb"]
