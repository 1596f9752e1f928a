"""Ewald k-space tables shared by the heads that sum over torch-pme's k-vectors directly; compilable.

torch-pme's :class:`~torchpme.EwaldCalculator` evaluates the reciprocal sum for given
charges. Heads that need more than that from one set of phases (the field of LODE
densities, the whole Coulomb matrix of QEq, products inside conjugate gradients,
Gaussian dipoles) build the same tables here: torch-pme's k-vectors for a cutoff
wavelength and the phase factors cos(k.r), sin(k.r). Everything is differentiable in
positions and cell. With a kernel G(k) (e.g. ``CoulombPotential.lr_from_k_sq``) and
``kernel = multiplicity * G / volume``, the potential of charges q [N, C] that torch-pme's
Ewald sum returns (times 2, before its self, background and slab corrections) is

    cos.T @ (kernel * (cos @ q)) + sin.T @ (kernel * (sin @ q)).

:func:`ewald_kvectors` keeps one k of every (k, -k) pair of torch-pme's grid with
multiplicity 2 (both give the same cos/sin products), the k of the grid's unpaired
Nyquist planes (even point counts) with multiplicity 1, and drops k = 0 (G(0) = 0):
the same sum for about half the work.
"""

from __future__ import annotations

from typing import List, Tuple

import torch
import torchpme


def ewald_kvectors(cell: torch.Tensor, lr_wavelength: float) -> Tuple[torch.Tensor, torch.Tensor]:
    """(k-vectors [K, 3] Å^-1, multiplicity [K]) of torch-pme's Ewald grid for cell [3, 3] Å, folded by k <-> -k.

    The grid is torch-pme's (``generate_kvectors_for_ewald`` with its ``ns`` rule for
    ``lr_wavelength`` Å); see the module docstring for the folding.
    """
    ns = torch.ceil(torch.linalg.norm(cell, dim=1) / lr_wavelength).long()
    kvectors = torchpme.lib.generate_kvectors_for_ewald(ns=ns, cell=cell)
    # integer grid indices in torch-pme's order (fftfreq per axis, row-major)
    axes: List[torch.Tensor] = []
    for d in range(3):
        n_d = int(ns[d])
        axes.append(torch.round(torch.fft.fftfreq(n_d, device=cell.device, dtype=torch.float64) * n_d).long())
    grid = torch.meshgrid(axes[0], axes[1], axes[2], indexing="ij")
    m0 = grid[0].reshape(-1)
    m1 = grid[1].reshape(-1)
    m2 = grid[2].reshape(-1)
    # -m is on the grid unless some component is the unpaired -n/2 of an even axis
    unpaired = ((2 * m0 == -ns[0]) | (2 * m1 == -ns[1]) | (2 * m2 == -ns[2]))
    positive = (m0 > 0) | ((m0 == 0) & (m1 > 0)) | ((m0 == 0) & (m1 == 0) & (m2 > 0))
    keep = unpaired | positive
    multiplicity = torch.where(unpaired, torch.ones_like(m0), 2 * torch.ones_like(m0))
    index = torch.nonzero(keep).squeeze(-1)
    return kvectors.index_select(0, index), multiplicity.index_select(0, index).to(cell.dtype)


def ewald_phases(kvectors: torch.Tensor, positions: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
    """(cos(k.r), sin(k.r)), each [K, N], for k-vectors [K, 3] Å^-1 and positions [N, 3] Å."""
    phases = kvectors @ positions.transpose(0, 1)
    return torch.cos(phases), torch.sin(phases)


__all__ = ["ewald_kvectors", "ewald_phases"]
