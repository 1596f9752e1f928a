"""TorchScript-compilable Coulomb sums on a batch of MACE graphs (used by the heads).

:class:`~mace_lr.electrostatics.coulomb.Electrostatics` is the eager, general engine
(its own neighbour lists, parameters chosen per structure). Inside a trained model we
need a module that ``e3nn.util.jit.compile`` can compile and that reuses what the graph
already holds. :class:`GraphCoulomb` does this with fixed, model-level settings:

* Gaussian charges of width ``s`` (std, Å; 0 = point charges); pair kernel
  ``erf(r / sqrt(2 (s_i^2 + s_j^2))) / r``, self-energy excluded, exactly as the engine.
* Periodic graphs (pbc all True, or two True for slabs): Ewald splitting width
  ``sigma = max(sqrt(2) s, r_cut / x)`` with ``exp(-x^2/2) = 0.1 * accuracy``. torch-pme's
  Ewald or PME calculator gives the smooth part; the short-range remainder
  ``[erf(r / w_ij) - erf(r / (sqrt(2) sigma))] / r`` is summed over the graph's own edges
  (cutoff ``r_cut`` = the backbone's ``r_max``), so no second neighbour list is needed.
  For equal widths with ``sqrt(2) s >= r_cut / x`` the remainder vanishes: a pure k-space
  sum, as in LES.
* Non-periodic graphs: exact dense direct sum within the graph (never Ewald).
* A charged periodic cell gets torch-pme's neutralising background (no warning can be
  raised from compiled code; :class:`~mace_lr.models.MACELR` validates inputs eagerly).

Method per periodic graph: ``ewald`` below ``pme_threshold`` atoms and below
:data:`~.parameters.EWALD_MAX_WORK` (k-vectors x atoms: torch-pme's Ewald tables grow as
their product, ~13 GB at 3,000 atoms with r_max 5 Å), ``pme`` above (``method="auto"``),
or forced. PME's mesh spacing for the fixed sigma is solved once,
at construction, from torch-pme's error bound on a water-like reference density
(0.1 atoms/Å^3), calibrated as in :mod:`.parameters`.

Output: the potential phi_i = dE/dq_i (V) of every atom; E_g = 1/2 sum_i q_i phi_i.
"""

from __future__ import annotations

import math
from typing import List, Optional

import torch
import torchpme

from .parameters import (
    EWALD_MAX_WORK,
    PME_BOUND_CALIBRATION,
    PME_INTERPOLATION_NODES,
    SAFETY_FACTOR,
    _gaussian_tail_argument,
    _pme_mesh_spacing,
    ewald_work,
)
from .units import COULOMB_CONSTANT

GRAPH_METHODS = ("auto", "direct", "ewald", "pme")

#: Density (atoms/Å^3) of the synthetic system used to fix PME's mesh spacing.
REFERENCE_DENSITY = 0.1


def ewald_splitting_width(width: float, cutoff: float, accuracy: float) -> float:
    """Ewald sigma (Å) for Gaussian charges of std ``width`` and real-space ``cutoff``."""
    x = _gaussian_tail_argument(SAFETY_FACTOR * accuracy)
    return max(math.sqrt(2.0) * width, cutoff / x)


def _reference_pme_spacing(smearing: float, accuracy: float) -> float:
    """PME mesh spacing (Å) meeting ``accuracy`` for random +-1 charges at 0.1 /Å^3."""
    generator = torch.Generator().manual_seed(0)
    n_atoms = 512
    length = (n_atoms / REFERENCE_DENSITY) ** (1.0 / 3.0)
    cell = torch.eye(3, dtype=torch.float64) * length
    positions = torch.rand(n_atoms, 3, generator=generator, dtype=torch.float64) * length
    charges = torch.ones(n_atoms, dtype=torch.float64)
    charges[1::2] = -1.0
    return _pme_mesh_spacing(
        positions, charges, cell, smearing, SAFETY_FACTOR * accuracy / PME_BOUND_CALIBRATION,
        PME_INTERPOLATION_NODES,
    )


class GraphCoulomb(torch.nn.Module):
    """Potential phi [N] (V) of Gaussian charges on a batch of graphs; compilable.

    Args:
        width: Gaussian charge std s (Å), >= 0.
        cutoff: real-space cutoff (Å): the backbone's r_max (edges must cover it).
        accuracy: relative accuracy target, as for :class:`.Electrostatics`.
        method: ``auto``, ``direct`` (non-periodic only), ``ewald`` or ``pme``.
        pme_threshold: atoms per periodic graph above which ``auto`` uses PME.
    """

    def __init__(
        self,
        width: float = 1.0,
        cutoff: float = 5.0,
        accuracy: float = 1e-6,
        method: str = "auto",
        pme_threshold: int = 3000,
    ) -> None:
        super().__init__()
        if width < 0.0:
            raise ValueError(f"charge width must be >= 0 Å, got {width}")
        if not 0.0 < accuracy < 1.0:
            raise ValueError(f"electrostatics accuracy must be in (0, 1), got {accuracy}")
        if method not in GRAPH_METHODS:
            raise ValueError(f"electrostatics method {method!r} unknown; use one of {GRAPH_METHODS}")
        self.width = float(width)
        self.cutoff = float(cutoff)
        self.accuracy = float(accuracy)
        self.method = method
        self.pme_threshold = int(pme_threshold)
        self.ewald_max_work = EWALD_MAX_WORK
        self.coulomb_constant = COULOMB_CONSTANT
        self.smearing = ewald_splitting_width(width, cutoff, accuracy)
        x = _gaussian_tail_argument(SAFETY_FACTOR * accuracy)
        self.lr_wavelength = math.pi * self.smearing / x
        self.mesh_spacing = _reference_pme_spacing(self.smearing, accuracy)
        # remainder on edges is identically zero for equal widths when sqrt(2) s == sigma
        self.needs_real_space = math.sqrt(2.0) * self.width < self.smearing
        self.ewald = torchpme.EwaldCalculator(
            torchpme.CoulombPotential(smearing=self.smearing), lr_wavelength=self.lr_wavelength
        )
        self.pme = torchpme.PMECalculator(
            torchpme.CoulombPotential(smearing=self.smearing),
            mesh_spacing=self.mesh_spacing,
            interpolation_nodes=PME_INTERPOLATION_NODES,
        )

    def extra_repr(self) -> str:
        return (
            f"width={self.width}, cutoff={self.cutoff}, accuracy={self.accuracy}, "
            f"method={self.method!r}, ewald_sigma={self.smearing:.4f}"
        )

    def _pair_kernel(self, distances: torch.Tensor) -> torch.Tensor:
        """Open-boundary kernel erf(r / (2 s)) / r (1 / r for s = 0), Å^-1."""
        if self.width > 0.0:
            return torch.erf(distances / (2.0 * self.width)) / distances
        return 1.0 / distances

    def _remainder(self, distances: torch.Tensor) -> torch.Tensor:
        """Short-range part left over by torch-pme's sum: Gaussian kernel minus Ewald's."""
        smooth = torch.erf(distances / (math.sqrt(2.0) * self.smearing))
        if self.width > 0.0:
            return (torch.erf(distances / (2.0 * self.width)) - smooth) / distances
        return (1.0 - smooth) / distances

    def _direct(self, positions: torch.Tensor, charges: torch.Tensor) -> torch.Tensor:
        n = positions.shape[0]
        diff = positions.unsqueeze(1) - positions.unsqueeze(0)
        squared = (diff * diff).sum(-1)
        diagonal = torch.eye(n, dtype=torch.bool, device=positions.device)
        distances = torch.sqrt(torch.where(diagonal, torch.ones_like(squared), squared))
        kernel = torch.where(diagonal, torch.zeros_like(squared), self._pair_kernel(distances))
        return kernel @ charges

    def _kspace(
        self, positions: torch.Tensor, charges: torch.Tensor, cell: torch.Tensor, periodic: torch.Tensor
    ) -> torch.Tensor:
        n = positions.shape[0]
        empty_pairs = torch.zeros((0, 2), dtype=torch.long, device=positions.device)
        empty_distances = torch.zeros((0,), dtype=positions.dtype, device=positions.device)
        use_pme = self.method == "pme" or (self.method == "auto" and (
            n > self.pme_threshold or ewald_work(cell, self.lr_wavelength, n) > self.ewald_max_work))
        slab = bool((~periodic).any())
        periodic_arg = torch.jit.annotate(Optional[torch.Tensor], None)
        if slab:
            periodic_arg = periodic
        if use_pme:
            half = self.pme(
                charges=charges.unsqueeze(-1), cell=cell, positions=positions,
                neighbor_indices=empty_pairs, neighbor_distances=empty_distances, periodic=periodic_arg,
            )
        else:
            half = self.ewald(
                charges=charges.unsqueeze(-1), cell=cell, positions=positions,
                neighbor_indices=empty_pairs, neighbor_distances=empty_distances, periodic=periodic_arg,
            )
        return 2.0 * half.squeeze(-1)

    def forward(
        self,
        charges: torch.Tensor,
        positions: torch.Tensor,
        cell: torch.Tensor,
        pbc: torch.Tensor,
        ptr: torch.Tensor,
        edge_index: torch.Tensor,
        edge_lengths: torch.Tensor,
    ) -> torch.Tensor:
        """phi [N] (V) at every atom.

        charges [N] e; positions [N, 3] Å; cell [G, 3, 3] Å (rows are lattice vectors);
        pbc [G, 3] bool; ptr [G + 1]; edge_index [2, E] (sender, receiver) covering every
        pair within ``cutoff`` in periodic graphs, both directions; edge_lengths [E] Å.
        """
        pieces: List[torch.Tensor] = []
        periodic_atoms = torch.zeros_like(charges, dtype=torch.bool)
        for g in range(int(ptr.numel()) - 1):
            start = int(ptr[g])
            stop = int(ptr[g + 1])
            q = charges[start:stop]
            r = positions[start:stop]
            n_periodic = int(pbc[g].sum())
            if n_periodic == 0 or self.method == "direct":
                if n_periodic != 0:
                    raise RuntimeError(
                        "electrostatics method 'direct' cannot sum a periodic structure; "
                        "use 'auto', 'ewald' or 'pme'"
                    )
                pieces.append(self._direct(r, q))
            elif n_periodic == 1:
                raise RuntimeError(
                    "1D-periodic structures are not supported; make the cell 3D-periodic "
                    "or a slab (two periodic directions)"
                )
            else:
                pieces.append(self._kspace(r, q, cell[g], pbc[g]))
                periodic_atoms[start:stop] = True
        potential = torch.cat(pieces) if len(pieces) > 0 else torch.zeros_like(charges)
        if self.needs_real_space and edge_lengths.numel() > 0:
            sender = edge_index[0]
            receiver = edge_index[1]
            on_periodic = periodic_atoms[receiver]
            safe = torch.where(on_periodic, edge_lengths, torch.ones_like(edge_lengths))
            remainder = torch.where(on_periodic, self._remainder(safe), torch.zeros_like(safe))
            potential = potential.index_add(0, receiver, remainder * charges[sender])
        return self.coulomb_constant * potential


__all__ = ["GRAPH_METHODS", "GraphCoulomb", "ewald_splitting_width"]
