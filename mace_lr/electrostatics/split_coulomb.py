"""Coulomb potentials and fields of Gaussian charges in one periodic cell (3D or slab), Ewald-split; compilable.

The one periodic Coulomb sum of mace-lr, used by the engine (:mod:`.coulomb`), the charge
heads (:mod:`.graph`) and the smeared descriptors (:mod:`.smeared`: LODE, Wannier
centroids, Ewald message passing). Sources c_jk (charges, or C channels of them) with
Gaussian widths s_j (std, Å; 0 = point charges) interact through erf(r / w_ij) / r,
w_ij = sqrt(2 (s_i^2 + s_j^2)). With an Ewald splitting width sigma >= sqrt(2) max(s)
chosen by :class:`.kspace.KSpacePlanner` (cost for the requested accuracy, *not* tied to
any model cutoff):

    phi_ik = sum_j c_jk [erf(r_ij / w_ij) - erf(r_ij / (sqrt(2) sigma))] / r_ij     (real space, r < r_c)
           + (1 / V) sum_k G_sigma(k) rho_k(k) e^{ik.r_i}                           (:class:`.kspace.ReciprocalSum`)
           - sqrt(2 / pi) / sigma c_ik - 2 pi sigma^2 Q_k / V                        (own Gaussian, background)
           + slab correction (torch-pme's ``CoulombPotential.pbc_correction``, two periodic axes)

and the field E_ik = -grad_{r_i} phi_ik at fixed sources: analytic in every part (the
pair term's radial derivative, k-space differentiation of the reciprocal sum, the slab
term's linear field -(4 pi / V)(M_k - Q_k z_i) along the normal), so no probe copies and
no extra backward pass are needed. The real-space pairs come from vesin-torch's
neighbour list (TorchScript-compatible), with the pair vectors rebuilt from positions
and cell so that forces, stress and double backward follow by autograd. When every width
equals sigma / sqrt(2) the remainder vanishes and no pairs are needed (pure k-space, as
in LES). Units: k_e = 1 (potential in e/Å, field e/Å^2); callers multiply by the Coulomb
constant.
"""

from __future__ import annotations

import math
from typing import Tuple

import torch
import torchpme
from vesin_torch import NeighborList

from .direct import pair_widths
from .kspace import (
    MEMORY_BUDGET,
    KSpacePlan,
    KSpacePlanner,
    ReciprocalSum,
    background_potential,
    coulomb_kernel,
    occupied_density,
    real_space_cutoff,
    self_potential,
    slab_cell,
)

#: Two point charges closer than this (Å) coincide (infinite energy): refused with a clear error.
MIN_DISTANCE = 1e-6


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
        self.min_distance = MIN_DISTANCE

    def __setstate__(self, state: dict) -> None:
        """Instances pickled before the coincidence check get its default threshold."""
        super().__setstate__(state)
        if "min_distance" not in self.__dict__:
            self.min_distance = MIN_DISTANCE

    def compact(self, positions: torch.Tensor, cell: torch.Tensor, periodic: torch.Tensor) -> torch.Tensor:
        """The cell the sums run in (:func:`.kspace.slab_cell`; 3D cells unchanged)."""
        return slab_cell(positions, cell, periodic, self.planner.accuracy)

    def plan(self, positions: torch.Tensor, cell: torch.Tensor, max_width: float, uniform: bool,
             channels: int = 1, field: bool = False) -> KSpacePlan:
        """The plan for this cell: sigma from sqrt(2) ``max_width`` up, by cost."""
        floor = max(math.sqrt(2.0) * max_width, 1e-3)
        exact = uniform and max_width > 0.0  # equal Gaussians: no remainder at sigma = sqrt(2) width
        return self.planner(cell, positions.shape[0], floor, 1.0e6, channels, True, exact,
                            occupied_density(positions, cell), field)

    def forward(self, charges: torch.Tensor, positions: torch.Tensor, cell: torch.Tensor, periodic: torch.Tensor,
                widths: torch.Tensor) -> torch.Tensor:
        """phi [N] (e/Å) for charges [N] e, positions [N, 3] Å, cell [3, 3] Å (rows), periodic [3]
        bool (all True, or two True for a slab), widths [N] Å (>= 0)."""
        potential, _ = self.potential_and_field(charges.unsqueeze(-1), positions, cell, periodic, widths, False)
        return potential.squeeze(-1)

    def potential_and_field(self, sources: torch.Tensor, positions: torch.Tensor, cell: torch.Tensor,
                            periodic: torch.Tensor, widths: torch.Tensor,
                            want_field: bool) -> Tuple[torch.Tensor, torch.Tensor]:
        """(phi [N, C] e/Å, E [N, C, 3] e/Å^2; zeros unless ``want_field``) for sources [N, C] e.
        Slabs run in :func:`.kspace.slab_cell` (vacuum for the accuracy, not more)."""
        cell = self.compact(positions, cell, periodic)
        max_width = float(widths.detach().max()) if positions.shape[0] > 0 else 0.0
        uniform = bool((widths.detach() == max_width).all())
        plan = self.plan(positions, cell, max_width, uniform, sources.shape[1], want_field)
        return self.potential_and_field_with_plan(sources, positions, cell, periodic, widths, want_field, plan)

    def potential_and_field_with_plan(self, sources: torch.Tensor, positions: torch.Tensor, cell: torch.Tensor,
                                      periodic: torch.Tensor, widths: torch.Tensor, want_field: bool,
                                      plan: KSpacePlan) -> Tuple[torch.Tensor, torch.Tensor]:
        """:meth:`potential_and_field` with a given plan (e.g. fixed settings). A splitting width
        below sqrt(2) max(widths) is allowed: the real-space cutoff then grows to cover the
        wider Gaussians' erfc tails at the planner's accuracy."""
        n = positions.shape[0]
        channels = sources.shape[1]
        sigma = plan.smearing
        cutoff = plan.cutoff
        max_width = float(widths.detach().max()) if n > 0 else 0.0
        if math.sqrt(2.0) * max_width > sigma:
            cutoff = max(cutoff, real_space_cutoff(occupied_density(positions, cell), math.sqrt(2.0) * max_width,
                                                   self.planner.accuracy / math.sqrt(2.0)))
        kvectors = self.reciprocal.prepare(positions, cell, plan)
        kernel = coulomb_kernel((kvectors * kvectors).sum(-1), sigma)
        if want_field:
            potential, field = self.reciprocal.potential_and_field(sources, kernel)
        else:
            potential = self.reciprocal.potential(sources, kernel)
            field = torch.zeros((n, channels, 3), dtype=positions.dtype, device=positions.device)
        self.reciprocal.release()
        volume = torch.abs(torch.linalg.det(cell))
        potential = potential - self_potential(sigma) * sources \
            - background_potential(sigma, volume) * sources.sum(0)
        if cutoff > 0.0:
            pair_potential, pair_field = self._real_space(sources, positions, cell, periodic, widths, sigma,
                                                          cutoff, want_field)
            potential = potential + pair_potential
            field = field + pair_field
        if not bool(periodic.all()):
            potential = potential + self.slab.pbc_correction(periodic, positions, cell, sources)
            if want_field:
                field = field + slab_field(sources, positions, periodic, volume)
        return potential, field

    def _real_space(self, sources: torch.Tensor, positions: torch.Tensor, cell: torch.Tensor, periodic: torch.Tensor,
                    widths: torch.Tensor, sigma: float, cutoff: float,
                    want_field: bool) -> Tuple[torch.Tensor, torch.Tensor]:
        """sum_j c_j [erf(r / w_ij) - erf(r / (sqrt(2) sigma))] / r over pairs within ``cutoff``, and its field."""
        i, j, vectors = periodic_pairs(positions, cell, cutoff)
        distance = torch.linalg.norm(vectors, dim=1)
        width = pair_widths(widths[i], widths[j])
        smeared = width > 0.0
        coincident = (distance.detach() < self.min_distance) & ~smeared
        if bool(coincident.any()):
            k = int(torch.nonzero(coincident)[0])
            raise ValueError("point charges " + str(int(i[k])) + " and " + str(int(j[k])) + " coincide (distance "
                             + str(float(distance[k])) + " Å): their energy is infinite; remove the duplicate "
                             + "atom or check the positions and cell")
        safe_width = torch.where(smeared, width, torch.ones_like(width))
        split = math.sqrt(2.0) * sigma
        values = pair_remainder(distance, width, sigma)
        potential = torch.zeros_like(sources).index_add(0, i, sources[j] * values.unsqueeze(-1))
        potential = potential.index_add(0, j, sources[i] * values.unsqueeze(-1))
        field = torch.zeros((sources.shape[0], sources.shape[1], 3), dtype=sources.dtype, device=sources.device)
        if want_field:
            # v'(r) = [d erf(r/w)/dr - d erf(r/split)/dr - v(r)] / r; E_i = c_j v'(r) d / r with d from i to j
            gauss = 2.0 / math.sqrt(math.pi)
            d_physical = torch.where(smeared, gauss / safe_width * torch.exp(-(distance / safe_width) ** 2),
                                     torch.zeros_like(distance))
            d_split = gauss / split * torch.exp(-(distance / split) ** 2)
            radial = (d_physical - d_split - values) / (distance * distance)  # v'(r) / r
            direction = (radial.unsqueeze(-1) * vectors).unsqueeze(1)  # [P, 1, 3]
            field = field.index_add(0, i, sources[j].unsqueeze(-1) * direction)
            field = field.index_add(0, j, -sources[i].unsqueeze(-1) * direction)
        return potential, field


def periodic_pairs(positions: torch.Tensor, cell: torch.Tensor,
                   cutoff: float) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Half list (i [P], j [P], vectors r_j + S - r_i [P, 3] Å, differentiable in positions and
    cell) of the pairs within ``cutoff`` Å, with images along every axis, slabs included:
    the real-space remainder belongs to the 3D Ewald sum (the slab correction is added
    separately), so the result does not depend on sigma whatever the vacuum."""
    neighbors = NeighborList(cutoff=cutoff, full_list=False)
    every_axis = torch.ones(3, dtype=torch.bool, device=positions.device)
    found = neighbors.compute(points=positions.detach(), box=cell.detach(), periodic=every_axis,
                              quantities="ijS", copy=True)
    i = found[0].to(torch.long)
    j = found[1].to(torch.long)
    shifts = found[2].to(cell.dtype)
    return i, j, positions[j] - positions[i] + shifts @ cell


def pair_remainder(distance: torch.Tensor, width: torch.Tensor, sigma: float) -> torch.Tensor:
    """Real-space remainder [erf(r / w) - erf(r / (sqrt(2) sigma))] / r (Å^-1) of pairs at
    ``distance`` [P] Å with Gaussian pair widths ``width`` [P] Å (0: point charges, erf -> 1)."""
    smeared = width > 0.0
    safe_width = torch.where(smeared, width, torch.ones_like(width))
    physical = torch.where(smeared, torch.erf(distance / safe_width), torch.ones_like(distance))
    return (physical - torch.erf(distance / (math.sqrt(2.0) * sigma))) / distance


def slab_field(sources: torch.Tensor, positions: torch.Tensor, periodic: torch.Tensor,
               volume: torch.Tensor) -> torch.Tensor:
    """Field [N, C, 3] (e/Å^2) of the slab correction: -(4 pi / V)(M_c - Q_c z_i) along the
    non-periodic Cartesian axis (torch-pme's ``pbc_correction`` differentiated in z_i)."""
    axis = int(torch.nonzero(~periodic)[0])
    z = positions[:, axis].unsqueeze(-1)  # [N, 1]
    moment = (sources * z).sum(0)  # [C]
    total = sources.sum(0)
    normal = -(4.0 * math.pi / volume) * (moment - total * z)  # [N, C]
    field = torch.zeros((sources.shape[0], sources.shape[1], 3), dtype=sources.dtype, device=sources.device)
    field[:, :, axis] = normal
    return field


__all__ = ["MIN_DISTANCE", "PeriodicCoulomb", "pair_remainder", "periodic_pairs", "slab_field"]
