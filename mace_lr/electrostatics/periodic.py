"""Point dipoles in 3D-periodic cells: torch-pme's dipole Ewald sum, combined with the charges' sum.

The charges' potential and field come from :class:`.split_coulomb.PeriodicCoulomb` (the
k-space layer, :mod:`.kspace`). Point dipoles interact through torch-pme's
``PotentialDipole`` / ``CalculatorDipole`` (Ewald, tin-foil boundary conditions), with
the settings of :func:`.parameters.choose_parameters`. (Gaussian atomic dipoles, the
model heads' dipoles, run on the k-space layer instead: :mod:`.gaussian_dipoles`.)
"""

from __future__ import annotations

from typing import Callable

import torch
import torchpme

from .neighbors import half_neighbor_list
from .parameters import KSpaceParameters
from .validation import check_min_distance


def _caller_needs_graph(*inputs: torch.Tensor | None) -> bool:
    """True when the caller can differentiate the outputs (any input requires grad)."""
    return torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in inputs)


def periodic_dipole_sum(
    positions: torch.Tensor,
    dipoles: torch.Tensor,
    cell: torch.Tensor,
    params: KSpaceParameters,
    graph: int = 0,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Dipole-dipole energy [] (e^2/Å) and dipole field [N, 3] (e/Å^2), 3D Ewald.

    Tin-foil boundary conditions (torch-pme ``PotentialDipole`` with epsilon = 0).
    """
    pairs = half_neighbor_list(positions, cell, True, params.cutoff)
    vectors = pairs.vectors(positions, cell)
    check_min_distance(torch.linalg.norm(vectors, dim=1), pairs.i, pairs.j, graph)
    potential = torchpme.PotentialDipole(smearing=params.smearing)
    calculator = torchpme.CalculatorDipole(potential, lr_wavelength=params.lr_wavelength)
    calculator = calculator.to(dtype=positions.dtype, device=positions.device)
    half = calculator(
        dipoles=dipoles,
        cell=cell,
        positions=positions,
        neighbor_indices=torch.stack([pairs.i, pairs.j], dim=1),
        neighbor_vectors=vectors,
    )
    energy = (dipoles * half).sum()
    return energy, -2.0 * half


def periodic_charge_dipole_sum(
    positions: torch.Tensor,
    charges: torch.Tensor,
    dipoles: torch.Tensor,
    cell: torch.Tensor,
    dipole_params: KSpaceParameters,
    charge_sum: Callable[[torch.Tensor, bool], tuple[torch.Tensor, torch.Tensor]],
    widths: torch.Tensor | None = None,
    graph: int = 0,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Energy [], potential [N] and field [N, 3] of charges plus point dipoles (3D).

    E = E_qq + E_qmu + E_mumu with E_qmu = -sum_i mu_i . E^q_i; ``charge_sum(q, want_field)``
    gives the charges' potential and analytic field (:class:`.split_coulomb.PeriodicCoulomb`),
    the dipoles' potential at the charges is dE_qmu/dq by autograd. ``dipole_params`` must
    be Ewald settings.
    """
    with torch.enable_grad():
        charge_offset = torch.zeros_like(charges, requires_grad=True)
        potential_q, field_q = charge_sum(charges + charge_offset, True)
        energy_mm, field_m = periodic_dipole_sum(positions, dipoles, cell, dipole_params, graph)
        energy_qm = -(dipoles * field_q).sum()
        (potential_m,) = torch.autograd.grad(energy_qm, charge_offset, create_graph=True)
        energy = 0.5 * (charges * potential_q).sum() + energy_qm + energy_mm
        potential = potential_q + potential_m
        field = field_q + field_m
    if not _caller_needs_graph(positions, charges, dipoles, cell, widths):
        return energy.detach(), potential.detach(), field.detach()
    return energy, potential, field


__all__ = ["periodic_charge_dipole_sum", "periodic_dipole_sum"]
