"""Neighbour lists for the electrostatics engine (vesin), differentiable pair vectors.

vesin finds the pairs on detached numpy copies; the pair vectors are then rebuilt in
torch from ``positions`` and ``cell`` so that forces and stress follow by autograd.
Every part of mace-lr that needs real-space pairs calls :func:`half_neighbor_list`.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np
import torch
import vesin


class PairList(NamedTuple):
    """A half neighbour list: each unordered pair (i, j, image) appears once.

    ``i``, ``j``: [P] int64 atom indices; ``shifts``: [P, 3] integer image indices so
    that the pair vector is ``r_j - r_i + shifts @ cell`` (Å).
    """

    i: torch.Tensor
    j: torch.Tensor
    shifts: torch.Tensor

    def vectors(self, positions: torch.Tensor, cell: torch.Tensor) -> torch.Tensor:
        """Pair vectors r_j + S·cell - r_i [P, 3] (Å), differentiable in both inputs."""
        return positions[self.j] - positions[self.i] + self.shifts.to(cell.dtype) @ cell


def half_neighbor_list(
    positions: torch.Tensor,
    cell: torch.Tensor,
    periodic: bool | tuple[bool, bool, bool],
    cutoff: float,
) -> PairList:
    """All pairs closer than ``cutoff`` (Å), including periodic self-images.

    ``cell`` [3, 3] holds lattice vectors as rows (ASE convention); it is ignored for
    non-periodic structures. Works for cutoffs larger than the cell.
    """
    points = positions.detach().cpu().to(torch.float64).numpy()
    box = cell.detach().cpu().to(torch.float64).numpy()
    if not np.any(periodic):
        box = np.zeros((3, 3))
    calculator = vesin.NeighborList(cutoff=float(cutoff), full_list=False)
    i, j, shifts = calculator.compute(points, box, periodic, quantities="ijS")
    device = positions.device
    return PairList(
        torch.as_tensor(i.astype(np.int64), device=device),
        torch.as_tensor(j.astype(np.int64), device=device),
        torch.as_tensor(shifts.astype(np.int64), device=device),
    )


__all__ = ["PairList", "half_neighbor_list"]
