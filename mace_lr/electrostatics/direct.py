"""Exact direct sums for open (non-periodic) boundaries.

Pair kernel of two Gaussian charges of widths ``s_i``, ``s_j`` (std, Å):
``erf(r / w_ij) / r`` with ``w_ij = sqrt(2 (s_i^2 + s_j^2))`` (``erf(r / 2s) / r`` for
equal widths); zero widths give point charges ``1 / r``. The self-energy of each
Gaussian is *not* included, so ``s -> 0`` recovers the point-charge energy.
Dipoles are point dipoles. All results are in units of the bare kernel (e/Å for
potentials, e/Å^2 for fields); :mod:`mace_lr.electrostatics.coulomb` multiplies by k_e.

Rows are processed in blocks so memory stays O(block * N) for large molecules.
"""

from __future__ import annotations

import math

import torch

from .validation import ElectrostaticsInputError, MIN_DISTANCE

BLOCK_ROWS = 1024


def pair_widths(widths_i: torch.Tensor, widths_j: torch.Tensor) -> torch.Tensor:
    """Width w_ij = sqrt(2 (s_i^2 + s_j^2)) (Å) of the erf kernel of two Gaussian charges.

    Two point charges give w = 0 with gradient 0 (the kernel is flat in w there); a
    plain sqrt would give 0/0 = NaN in the backward pass.
    """
    squared = 2.0 * (widths_i**2 + widths_j**2)
    positive = squared > 0.0
    return torch.where(positive, torch.sqrt(torch.where(positive, squared, torch.ones_like(squared))), torch.zeros_like(squared))


def _kernel_and_radial_derivative(
    distance: torch.Tensor, width: torch.Tensor | None
) -> tuple[torch.Tensor, torch.Tensor]:
    """f(r) and g(r) = -f'(r) / r for the charge kernel (Å^-1, Å^-3); ``width`` w_ij."""
    inv = 1.0 / distance
    if width is None:
        return inv, inv**3
    smeared = width > 0.0
    safe_width = torch.where(smeared, width, torch.ones_like(width))
    x = distance / safe_width
    erf_term = torch.where(smeared, torch.erf(x), torch.ones_like(x))
    gauss = torch.where(
        smeared, torch.exp(-(x**2)) * (2.0 / math.sqrt(math.pi)) / safe_width, torch.zeros_like(x)
    )
    return erf_term * inv, (erf_term * inv - gauss) * inv**2


def direct_sum(
    positions: torch.Tensor,
    charges: torch.Tensor,
    dipoles: torch.Tensor | None,
    widths: torch.Tensor | None,
    compute_field: bool,
    graph: int = 0,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """Energy, potential and field of one open-boundary structure.

    ``widths`` [N]: Gaussian width of every charge (Å), or None for point charges.
    Returns ``(energy [], potential [N], field [N, 3] or None)`` with
    energy = 1/2 sum_i q_i phi_i + (dipole terms), potential_i = dE/dq_i and field_i the
    field of all other sites at atom i (so dE/dmu_i = -field_i).
    """
    n_atoms = positions.shape[0]
    need_field = compute_field or dipoles is not None
    potential = positions.new_zeros(n_atoms)
    field = positions.new_zeros(n_atoms, 3) if need_field else None
    for start in range(0, n_atoms, BLOCK_ROWS):
        stop = min(start + BLOCK_ROWS, n_atoms)
        rows = torch.arange(start, stop, device=positions.device)
        self_mask = rows.unsqueeze(1) == torch.arange(n_atoms, device=positions.device)
        if need_field:
            vec = positions[rows].unsqueeze(1) - positions.unsqueeze(0)  # r_i - r_j [B,N,3]
            dist_sq = (vec**2).sum(-1)
            dist = torch.sqrt(torch.where(self_mask, torch.ones_like(dist_sq), dist_sq))
        else:
            # energy only: cdist avoids the [B, N, 3] difference tensor (~20% faster);
            # its backward gives zero gradient at the zero diagonal, masked below anyway
            dist = torch.cdist(positions[rows], positions, compute_mode="donot_use_mm_for_euclid_dist")
            dist = torch.where(self_mask, torch.ones_like(dist), dist)
        too_close = (dist.detach() < MIN_DISTANCE) & ~self_mask
        if too_close.any():
            a, b = torch.nonzero(too_close)[0].tolist()
            raise ElectrostaticsInputError(
                f"structure {graph}: atoms {start + a} and {b} coincide (distance "
                f"{float(dist[a, b]):.2e} Å); point charges there have infinite energy. "
                "Remove the duplicate atom or check the positions."
            )
        width = None if widths is None else pair_widths(widths[rows].unsqueeze(1), widths.unsqueeze(0))
        f, g = _kernel_and_radial_derivative(dist, width)
        f = torch.where(self_mask, torch.zeros_like(f), f)
        g = torch.where(self_mask, torch.zeros_like(g), g)
        potential = potential.index_add(0, rows, f @ charges)
        if need_field:
            block_field = (g * charges).unsqueeze(-1).mul(vec).sum(1)
            if dipoles is not None:
                inv = torch.where(self_mask, torch.zeros_like(dist), 1.0 / dist)
                mu_dot_r = (vec * dipoles.unsqueeze(0)).sum(-1)  # mu_j . (r_i - r_j)
                # potential of point dipoles: mu_j . (r_i - r_j) / r^3
                potential = potential.index_add(0, rows, (mu_dot_r * inv**3).sum(1))
                # field of point dipoles: [3 (mu_j . r) r / r^5 - mu_j / r^3]
                block_field = block_field + (
                    3.0 * (mu_dot_r * inv**5).unsqueeze(-1) * vec
                    - (inv**3).unsqueeze(-1) * dipoles.unsqueeze(0)
                ).sum(1)
            field = field.index_add(0, rows, block_field)
    energy = 0.5 * (charges * potential).sum()
    if dipoles is not None:
        # E = 1/2 sum q phi - 1/2 sum mu.E: the q-mu cross term appears once in each
        energy = energy - 0.5 * (dipoles * field).sum()
    return energy, potential, field if compute_field else None


__all__ = ["direct_sum", "pair_widths"]
