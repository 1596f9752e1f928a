"""TorchScript-compilable Coulomb sums on a batch of MACE graphs (used by the charge heads).

:class:`~mace_lr.electrostatics.coulomb.Electrostatics` is the eager, general engine.
Inside a trained model we need a module that ``e3nn.util.jit.compile`` can compile:
:class:`GraphCoulomb`, with model-level settings (charge width, accuracy, method):

* Gaussian charges of width ``s`` (std, Å; 0 = point charges); pair kernel
  ``erf(r / 2s) / r``, self-energy excluded, exactly as the engine.
* Periodic graphs (pbc all True, or two True for slabs): :class:`.split_coulomb.PeriodicCoulomb`,
  the package's one periodic sum. Its Ewald splitting width, real-space cutoff, k-space
  cutoff or mesh and the method (Ewald or PME) are chosen per structure by cost for the
  requested accuracy (:class:`.kspace.KSpacePlanner`), independent of the backbone's
  r_max; the real-space pairs come from vesin-torch's neighbour list, not from the graph.
* Non-periodic graphs: exact dense direct sum within the graph (never Ewald).
* A charged periodic cell gets the neutralising background (no warning can be raised
  from compiled code; :class:`~mace_lr.models.MACELR` validates inputs eagerly).

Output: the potential phi_i = dE/dq_i (V) of every atom; E_g = 1/2 sum_i q_i phi_i.

Models saved before the k-space layer (whose GraphCoulomb tied the splitting width to
r_max and held torch-pme calculators) are upgraded on load (:meth:`GraphCoulomb.__setstate__`):
their width, accuracy and method carry over, the splitting is chosen anew.
"""

from __future__ import annotations

from typing import List

import torch

from .kspace import MEMORY_BUDGET
from .split_coulomb import PeriodicCoulomb
from .units import COULOMB_CONSTANT

GRAPH_METHODS = ("auto", "direct", "ewald", "pme")


class GraphCoulomb(torch.nn.Module):
    """Potential phi [N] (V) of Gaussian charges on a batch of graphs; compilable.

    Args:
        width: Gaussian charge std s (Å), >= 0.
        cutoff: the backbone's r_max (Å); kept for the record, the sums do not depend on it.
        accuracy: relative accuracy target, as for :class:`.Electrostatics`.
        method: ``auto``, ``direct`` (non-periodic only), ``ewald`` or ``pme``.
        memory_budget: bytes one periodic sum may use (:mod:`.kspace`).
    """

    def __init__(
        self,
        width: float = 1.0,
        cutoff: float = 5.0,
        accuracy: float = 1e-6,
        method: str = "auto",
        memory_budget: float = MEMORY_BUDGET,
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
        self.coulomb_constant = COULOMB_CONSTANT
        self.periodic = PeriodicCoulomb(accuracy, "auto" if method == "direct" else method, memory_budget)

    def __setstate__(self, state: dict) -> None:
        """Upgrade a GraphCoulomb pickled before the k-space layer (see the module docstring)."""
        super().__setstate__(state)
        if "periodic" not in self._modules:
            for stale in ("ewald", "pme"):
                self._modules.pop(stale, None)
            for stale in ("smearing", "lr_wavelength", "mesh_spacing", "needs_real_space", "pme_threshold",
                          "ewald_max_work"):
                self.__dict__.pop(stale, None)
            method = "auto" if self.method == "direct" else self.method
            self.periodic = PeriodicCoulomb(self.accuracy, method, MEMORY_BUDGET)

    def extra_repr(self) -> str:
        return f"width={self.width}, accuracy={self.accuracy}, method={self.method!r}"

    def _pair_kernel(self, distances: torch.Tensor) -> torch.Tensor:
        """Open-boundary kernel erf(r / (2 s)) / r (1 / r for s = 0), Å^-1."""
        if self.width > 0.0:
            return torch.erf(distances / (2.0 * self.width)) / distances
        return 1.0 / distances

    def _direct(self, positions: torch.Tensor, charges: torch.Tensor) -> torch.Tensor:
        n = positions.shape[0]
        diff = positions.unsqueeze(1) - positions.unsqueeze(0)
        squared = (diff * diff).sum(-1)
        diagonal = torch.eye(n, dtype=torch.bool, device=positions.device)
        distances = torch.sqrt(torch.where(diagonal, torch.ones_like(squared), squared))
        kernel = torch.where(diagonal, torch.zeros_like(squared), self._pair_kernel(distances))
        return kernel @ charges

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
        pbc [G, 3] bool; ptr [G + 1]. ``edge_index`` / ``edge_lengths`` (the graph's edges)
        are accepted for the heads' common signature; the periodic sum finds its own pairs.
        """
        pieces: List[torch.Tensor] = []
        for g in range(int(ptr.numel()) - 1):
            start = int(ptr[g])
            stop = int(ptr[g + 1])
            q = charges[start:stop]
            r = positions[start:stop]
            n_periodic = int(pbc[g].sum())
            if n_periodic == 0:
                pieces.append(self._direct(r, q))
            elif self.method == "direct":
                raise RuntimeError(
                    "electrostatics method 'direct' cannot sum a periodic structure; "
                    "use 'auto', 'ewald' or 'pme'"
                )
            elif n_periodic == 1:
                raise RuntimeError(
                    "1D-periodic structures are not supported; make the cell 3D-periodic "
                    "or a slab (two periodic directions)"
                )
            else:
                pieces.append(self.periodic(q, r, cell[g], pbc[g], torch.full_like(q, self.width)))
        potential = torch.cat(pieces) if len(pieces) > 0 else torch.zeros_like(charges)
        return self.coulomb_constant * potential


__all__ = ["GRAPH_METHODS", "GraphCoulomb"]
