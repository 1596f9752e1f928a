"""Periodic Coulomb sums (3D and slab) through torch-pme's Ewald and PME calculators.

The kernel (point or Gaussian-smeared charges, point dipoles) is separate from the
summation method, as in torch-pme: torch-pme sums point charges with Ewald splitting
width sigma; Gaussian charges of widths ``s_i`` differ from point charges only at short
range, by the pair term ``-erfc(r / w_ij) / r`` (``w_ij = sqrt(2 (s_i^2 + s_j^2))``),
which we add over the same neighbour list. Net charge: torch-pme's neutralising-background term (energy and stress).
Slabs (pbc = two True): the 3D sum plus the Yeh-Berkowitz/Ballenegger correction of
``torchpme.CoulombPotential.pbc_correction``; the cell needs vacuum along the
non-periodic axis.

Fields at the atoms use *ghost sites*: a zero-charge copy of each atom whose potential
is the field's potential; the gradient with respect to the ghost displacement is minus
the field, for every method torch-pme offers, in one backward pass (twice the atoms).
"""

from __future__ import annotations

import math

import torch
import torchpme

from .direct import pair_widths
from .neighbors import PairList, half_neighbor_list
from .parameters import KSpaceParameters, SAFETY_FACTOR, _gaussian_tail_argument
from .validation import check_min_distance


def _smeared_cutoff(max_width: float, accuracy: float) -> float:
    """Distance (Å) beyond which erfc(r / w_ij) / r is negligible for widths <= max_width."""
    return 2.0 * max_width * _gaussian_tail_argument(SAFETY_FACTOR * accuracy) / math.sqrt(2.0)


def _charge_calculator(params: KSpaceParameters, dtype: torch.dtype, device: torch.device) -> torchpme.Calculator:
    potential = torchpme.CoulombPotential(smearing=params.smearing)
    if params.method == "ewald":
        calculator = torchpme.EwaldCalculator(potential, lr_wavelength=params.lr_wavelength)
    else:
        calculator = torchpme.PMECalculator(
            potential,
            mesh_spacing=params.mesh_spacing,
            interpolation_nodes=params.interpolation_nodes,
        )
    return calculator.to(dtype=dtype, device=device)


def _with_ghosts(pairs: PairList, n_atoms: int) -> PairList:
    """Add (ghost_i, j, S) and (ghost_j, i, -S) for every pair (i, j, S)."""
    return PairList(
        torch.cat([pairs.i, pairs.i + n_atoms, pairs.j + n_atoms]),
        torch.cat([pairs.j, pairs.j, pairs.i]),
        torch.cat([pairs.shifts, pairs.shifts, -pairs.shifts]),
    )


def _caller_needs_graph(*inputs: torch.Tensor | None) -> bool:
    """True when the caller can differentiate the outputs (any input requires grad)."""
    return torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in inputs)


def _scatter_pairs(values: torch.Tensor, charges: torch.Tensor, pairs: PairList, n_sites: int) -> torch.Tensor:
    """phi_i = sum_j q_j v_ij over a half list (both directions)."""
    out = charges.new_zeros(n_sites)
    out = out.index_add(0, pairs.i, charges[pairs.j] * values)
    return out.index_add(0, pairs.j, charges[pairs.i] * values)


def periodic_charge_sum(
    positions: torch.Tensor,
    charges: torch.Tensor,
    cell: torch.Tensor,
    periodic: torch.Tensor,
    params: KSpaceParameters,
    widths: torch.Tensor | None,
    accuracy: float,
    compute_field: bool,
    graph: int = 0,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Potential [N] (e/Å, = dE/dq) and optionally field [N, 3] (e/Å^2) of one cell.

    ``periodic`` [3] bool: all True (3D) or exactly two True (slab). ``widths`` [N]:
    physical Gaussian widths of the charges (Å), or None for point charges.
    """
    n_atoms = positions.shape[0]
    cutoff = params.cutoff
    if widths is not None:
        cutoff = max(cutoff, _smeared_cutoff(float(widths.detach().max()), accuracy))
    pairs = half_neighbor_list(positions, cell, True, cutoff)
    distances = torch.linalg.norm(pairs.vectors(positions, cell), dim=1)
    check_min_distance(distances, pairs.i, pairs.j, graph)

    if not compute_field:
        potential = _site_potentials(positions, charges, cell, periodic, params, widths, pairs, distances)
        return potential, None
    # the ghost trick needs autograd even under no_grad; keep the graph only when the
    # caller can differentiate the field (forces of field-dependent energies)
    keep_graph = _caller_needs_graph(positions, charges, cell, widths)
    with torch.enable_grad():
        ghost_shift = torch.zeros_like(positions, requires_grad=True)
        sites = torch.cat([positions, positions + ghost_shift])
        site_pairs = _with_ghosts(pairs, n_atoms)
        site_widths = None if widths is None else torch.cat([widths, widths])
        site_distances = torch.linalg.norm(site_pairs.vectors(sites, cell), dim=1)
        potential = _site_potentials(
            sites, torch.cat([charges, torch.zeros_like(charges)]), cell, periodic, params,
            site_widths, site_pairs, site_distances,
        )
        (grad,) = torch.autograd.grad(potential[n_atoms:].sum(), ghost_shift, create_graph=keep_graph)
    if not keep_graph:
        return potential[:n_atoms].detach(), -grad.detach()
    return potential[:n_atoms], -grad


def _site_potentials(
    sites: torch.Tensor,
    charges: torch.Tensor,
    cell: torch.Tensor,
    periodic: torch.Tensor,
    params: KSpaceParameters,
    widths: torch.Tensor | None,
    pairs: PairList,
    distances: torch.Tensor,
) -> torch.Tensor:
    """Potential (e/Å) at every site from all charges, torch-pme plus smearing term.

    Ghost sites carry their twin's width, so they feel exactly what the atom feels."""
    calculator = _charge_calculator(params, sites.dtype, sites.device)
    half_potential = calculator(
        charges=charges.unsqueeze(-1),
        cell=cell,
        positions=sites,
        neighbor_indices=torch.stack([pairs.i, pairs.j], dim=1),
        neighbor_distances=distances,
        periodic=None if bool(periodic.all()) else periodic,
    ).squeeze(-1)
    potential = 2.0 * half_potential
    if widths is not None:
        width = pair_widths(widths[pairs.i], widths[pairs.j])
        smeared = width > 0.0
        safe_width = torch.where(smeared, width, torch.ones_like(width))
        correction = torch.where(
            smeared, -torch.erfc(distances / safe_width) / distances, torch.zeros_like(distances)
        )
        potential = potential + _scatter_pairs(correction, charges, pairs, sites.shape[0])
    return potential


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
    periodic: torch.Tensor,
    params: KSpaceParameters,
    dipole_params: KSpaceParameters,
    widths: torch.Tensor | None,
    accuracy: float,
    graph: int = 0,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Energy [], potential [N] and field [N, 3] of charges plus point dipoles (3D).

    E = E_qq + E_qmu + E_mumu with E_qmu = -sum_i mu_i . E^q_i; the dipoles' potential
    at the charges is dE_qmu/dq by autograd. ``dipole_params`` must be Ewald settings.
    """
    keep_graph = _caller_needs_graph(positions, charges, dipoles, cell, widths)
    with torch.enable_grad():
        charge_offset = torch.zeros_like(charges, requires_grad=True)
        potential_q, field_q = periodic_charge_sum(
            positions, charges + charge_offset, cell, periodic, params, widths, accuracy,
            True, graph,
        )
        assert field_q is not None
        energy_mm, field_m = periodic_dipole_sum(positions, dipoles, cell, dipole_params, graph)
        energy_qm = -(dipoles * field_q).sum()
        (potential_m,) = torch.autograd.grad(energy_qm, charge_offset, create_graph=True)
        energy = 0.5 * (charges * potential_q).sum() + energy_qm + energy_mm
        potential = potential_q + potential_m
        field = field_q + field_m
    if not keep_graph:
        return energy.detach(), potential.detach(), field.detach()
    return energy, potential, field


__all__ = ["periodic_charge_dipole_sum", "periodic_charge_sum", "periodic_dipole_sum"]
