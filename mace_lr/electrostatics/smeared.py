"""Potentials and fields of Gaussian-smeared densities at the atoms (LODE-style); compilable.

For source weights c [N, C] (C channels: element densities, learned pseudo-charges...)
of one structure, the potential at atom i and its field are

    V_ic = sum_{(j, n) != (i, 0)} c_jc erf(|r_ij + n| / (sqrt(2) s)) / |r_ij + n|      (Å^-1 c)
    E_ic = -grad_{r_i} V_ic                                                        (Å^-2 c)

the potential of Gaussian clouds of std ``s`` (Å) seen by a point probe, without the
atom's own cloud; n runs over lattice translations in periodic directions. No Coulomb
constant: these are descriptors, not energies. Channels should be neutral per structure
(subtract their mean, :func:`neutralise`), otherwise the periodic sum includes the
neutralising background and open-boundary values grow with system size.

Open boundaries: the exact dense sum, fields analytic. Periodic cells (3D and slabs):
the Coulomb sum of :class:`.split_coulomb.PeriodicCoulomb` for Gaussian charges of
width s / sqrt(2) (two of them interact through erf(r / (sqrt(2) s)) / r), i.e. the one
k-space layer (:mod:`.kspace`): the planner picks Ewald or PME and the splitting width
by cost for the requested accuracy (pure k-space at sigma = s, or a larger sigma with
a real-space remainder when that is cheaper, e.g. narrow widths in large cells), all
channels in one pass, fields analytic in every part (slabs included). All paths stay
differentiable for forces, stress and double backward.
"""

from __future__ import annotations

import math
from typing import List, Tuple

import torch

from .kspace import MEMORY_BUDGET
from .parameters import accuracy_of_legacy_wavelength
from .split_coulomb import PeriodicCoulomb


class SmearedPotential(torch.nn.Module):
    """V [N, C] and E [N, C, 3] of neutral Gaussian densities for a batch of graphs.

    Args:
        smearing: Gaussian std s (Å) of the source clouds.
        accuracy: relative RMS accuracy of the periodic sums (:mod:`.kspace`).
        method: ``auto`` (cheapest by the k-space layer's cost model), ``ewald``, ``pme``.
        pme_threshold: ignored (kept so that old call sites keep working; the method is
            chosen by cost).
        memory_budget: bytes one periodic sum may use (:mod:`.kspace`).
    """

    def __init__(self, smearing: float, accuracy: float = 1e-5, method: str = "auto",
                 pme_threshold: int = 3000, memory_budget: float = MEMORY_BUDGET) -> None:
        super().__init__()
        if not smearing > 0.0:
            raise ValueError(f"smearing must be > 0 Å, got {smearing}")
        if method not in ("auto", "ewald", "pme"):
            raise ValueError(f"method {method!r} unknown; use auto, ewald or pme")
        self.smearing = float(smearing)
        self.method = method
        self.accuracy = float(accuracy)
        self.periodic = PeriodicCoulomb(accuracy, method, memory_budget)

    def __setstate__(self, state: dict) -> None:
        """Upgrade an instance pickled before the k-space layer (torch-pme calculators, own mesh)."""
        super().__setstate__(state)
        if "periodic" not in self._modules:
            wavelength = float(self.__dict__.get("lr_wavelength", 0.0))
            accuracy = accuracy_of_legacy_wavelength(self.smearing, wavelength) if wavelength > 0.0 else 1e-5
            for stale in ("ewald", "pme", "mesh"):
                self._modules.pop(stale, None)
            for stale in ("lr_wavelength", "pme_threshold", "ewald_max_work", "self_value"):
                self.__dict__.pop(stale, None)
            self.accuracy = accuracy
            self.periodic = PeriodicCoulomb(accuracy, self.method, MEMORY_BUDGET)

    def extra_repr(self) -> str:
        return f"smearing={self.smearing}, accuracy={self.accuracy}, method={self.method!r}"

    def _open(self, sources: torch.Tensor, positions: torch.Tensor, want_field: bool) -> Tuple[torch.Tensor, torch.Tensor]:
        n = positions.shape[0]
        diff = positions.unsqueeze(1) - positions.unsqueeze(0)  # r_i - r_j
        squared = (diff * diff).sum(-1)
        diagonal = torch.eye(n, dtype=torch.bool, device=positions.device)
        # (a floor of 1e-12 Å keeps coincident sources, e.g. an ion and its centroid, finite: erf(r/w)/r -> 2/(sqrt(pi) w))
        distance = torch.sqrt(torch.where(diagonal, torch.ones_like(squared), squared.clamp_min(1e-24)))
        width = math.sqrt(2.0) * self.smearing
        kernel = torch.where(diagonal, torch.zeros_like(squared), torch.erf(distance / width) / distance)
        potential = kernel @ sources
        field = torch.zeros((n, sources.shape[1], 3), dtype=positions.dtype, device=positions.device)
        if want_field:
            # -d/dr [erf(r/w)/r] = [erf(r/w)/r - 2/(sqrt(pi) w) exp(-r^2/w^2)] / r^2, along r_i - r_j
            radial = (torch.erf(distance / width) / distance
                      - 2.0 / (math.sqrt(math.pi) * width) * torch.exp(-squared / width**2)) / (distance * distance)
            radial = torch.where(diagonal, torch.zeros_like(radial), radial)
            field = torch.einsum("ij,ijx,jc->icx", radial, diff, sources)
        return potential, field

    def _periodic_active(self, sources: torch.Tensor, positions: torch.Tensor, cell: torch.Tensor,
                         pbc: torch.Tensor, want_field: bool) -> Tuple[torch.Tensor, torch.Tensor]:
        """The periodic sum over the channels that are not zero in this structure (e.g. element
        densities of elements it does not contain); the others get V = 0 and E = 0 exactly."""
        n = positions.shape[0]
        widths = torch.full((n,), self.smearing / math.sqrt(2.0), dtype=positions.dtype, device=positions.device)
        active = torch.nonzero((sources.detach() != 0.0).any(0)).squeeze(1)
        if int(active.numel()) == sources.shape[1]:
            return self.periodic.potential_and_field(sources, positions, cell, pbc, widths, want_field)
        potential = torch.zeros_like(sources)
        field = torch.zeros((n, sources.shape[1], 3), dtype=sources.dtype, device=sources.device)
        if int(active.numel()) == 0:
            return potential, field
        some_potential, some_field = self.periodic.potential_and_field(sources.index_select(1, active), positions,
                                                                       cell, pbc, widths, want_field)
        return potential.index_copy(1, active, some_potential), field.index_copy(1, active, some_field)

    def forward(self, sources: torch.Tensor, positions: torch.Tensor, cell: torch.Tensor, pbc: torch.Tensor,
                ptr: torch.Tensor, want_field: bool = True) -> Tuple[torch.Tensor, torch.Tensor]:
        """(V [N, C] Å^-1, E [N, C, 3] Å^-2) for sources [N, C], positions [N, 3] Å, cell [G, 3, 3],
        pbc [G, 3], ptr [G + 1]."""
        potentials: List[torch.Tensor] = []
        fields: List[torch.Tensor] = []
        for g in range(int(ptr.numel()) - 1):
            start = int(ptr[g])
            stop = int(ptr[g + 1])
            n_periodic = int(pbc[g].sum())
            if n_periodic == 0:
                potential, field = self._open(sources[start:stop], positions[start:stop], want_field)
            elif n_periodic == 1:
                raise RuntimeError("1D-periodic structures are not supported; make the cell 3D-periodic or a slab")
            else:
                potential, field = self._periodic_active(sources[start:stop], positions[start:stop], cell[g],
                                                         pbc[g], want_field)
            potentials.append(potential)
            fields.append(field)
        return torch.cat(potentials, dim=0), torch.cat(fields, dim=0)


def smeared_method(method: str) -> str:
    """:class:`SmearedPotential`'s method for a head setting ``method`` (``direct``: exact sums are
    used for open boundaries anyway, so periodic cells get ``auto``)."""
    return method if method in ("ewald", "pme") else "auto"


def neutralise(weights: torch.Tensor, batch: torch.Tensor, ptr: torch.Tensor) -> torch.Tensor:
    """weights [N, C] minus their mean over each structure (neutral channels)."""
    num_graphs = int(ptr.numel()) - 1
    counts = (ptr[1:] - ptr[:-1]).to(weights.dtype).unsqueeze(-1)
    sums = torch.zeros((num_graphs, weights.shape[1]), dtype=weights.dtype, device=weights.device)
    sums = sums.index_add(0, batch, weights)
    return weights - (sums / counts)[batch]


__all__ = ["SmearedPotential", "neutralise", "smeared_method"]
