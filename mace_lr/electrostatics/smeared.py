"""Potentials and fields of Gaussian-smeared densities at the atoms (LODE-style); compilable.

For source weights c [N, C] (C channels: element densities, learned pseudo-charges...)
of one structure, the potential at atom i and its field are

    V_ic = sum_{(j, n) != (i, 0)} c_jc erf(|r_ij + n| / (sqrt(2) s)) / |r_ij + n|      (Å^-1 c)
    E_ic = -grad_{r_i} V_ic                                                        (Å^-2 c)

the potential of Gaussian clouds of std ``s`` (Å) seen by a point probe, without the
atom's own cloud; n runs over lattice translations in periodic directions. No Coulomb
constant: these are descriptors, not energies. This is exactly the long-range part of
torch-pme's ``CoulombPotential(smearing=s)``, so periodic structures need no real-space
sum at all (Ewald or PME, one call for all channels); open boundaries get the exact
dense sum. Channels should be neutral per structure (subtract their mean), otherwise
the periodic sum includes torch-pme's neutralising background and open-boundary values
grow with system size.

Fields: analytic in open boundaries and for 3D-periodic cells on the Ewald path
(E_i = sum_k k G(k)/V [sin(k.r_i) A_k - cos(k.r_i) B_k] from the phase tables of
:mod:`.ewald_tables`, A/B the cos/sin structure factors; cost ~ one extra K x N
product per channel). 3D cells on the PME path use one mesh of FFT-friendly size
(:mod:`.channel_mesh`) for potentials and fields (-i k times the filtered density,
three more inverse FFTs).
Slabs take the gradient of the potential at zero-weight probe copies of the atoms
("ghosts"), one backward pass per channel with ``create_graph``, several times slower
in training (forces need a double backward through it). All paths stay
differentiable for forces and stress.
"""

from __future__ import annotations

import math
from typing import List, Optional, Tuple

import torch
import torchpme

from .channel_mesh import ChannelKernelMesh
from .ewald_tables import ewald_kvectors, ewald_phases
from .parameters import EWALD_MAX_WORK, PME_INTERPOLATION_NODES, _reference_pme_spacing, SAFETY_FACTOR, _gaussian_tail_argument, ewald_work


class SmearedPotential(torch.nn.Module):
    """V [N, C] and E [N, C, 3] of neutral Gaussian densities for a batch of graphs.

    Args:
        smearing: Gaussian std s (Å) of the source clouds.
        accuracy: relative accuracy of the k-space truncation.
        method: ``auto`` (Ewald up to ``pme_threshold`` atoms and
            :data:`~.parameters.EWALD_MAX_WORK` (k-vector x atom) pairs, PME above), ``ewald``, ``pme``.
    """

    def __init__(self, smearing: float, accuracy: float = 1e-5, method: str = "auto",
                 pme_threshold: int = 3000) -> None:
        super().__init__()
        if not smearing > 0.0:
            raise ValueError(f"smearing must be > 0 Å, got {smearing}")
        if method not in ("auto", "ewald", "pme"):
            raise ValueError(f"method {method!r} unknown; use auto, ewald or pme")
        self.smearing = float(smearing)
        self.method = method
        self.pme_threshold = int(pme_threshold)
        self.ewald_max_work = EWALD_MAX_WORK
        x = _gaussian_tail_argument(SAFETY_FACTOR * accuracy)
        self.lr_wavelength = math.pi * self.smearing / x
        self.ewald = torchpme.EwaldCalculator(
            torchpme.CoulombPotential(smearing=self.smearing), lr_wavelength=self.lr_wavelength)
        self.pme = torchpme.PMECalculator(
            torchpme.CoulombPotential(smearing=self.smearing),
            mesh_spacing=_reference_pme_spacing(self.smearing, accuracy),
            interpolation_nodes=PME_INTERPOLATION_NODES)
        # 3D PME: one FFT-friendly mesh, fields by k-space differentiation (torch-pme's PME
        # and ghost probes are kept for slabs)
        self.mesh = ChannelKernelMesh(self.pme.mesh_spacing, PME_INTERPOLATION_NODES)
        # value of the kernel at r = 0: a ghost probe sees its own atom's cloud with this weight
        self.self_value = math.sqrt(2.0 / math.pi) / self.smearing

    def extra_repr(self) -> str:
        return f"smearing={self.smearing}, method={self.method!r}"

    def _kspace(self, sources: torch.Tensor, positions: torch.Tensor, cell: torch.Tensor,
                pbc: torch.Tensor, use_pme: bool) -> torch.Tensor:
        empty_pairs = torch.zeros((0, 2), dtype=torch.long, device=positions.device)
        empty_distances = torch.zeros((0,), dtype=positions.dtype, device=positions.device)
        periodic_arg = torch.jit.annotate(Optional[torch.Tensor], None)
        if bool((~pbc).any()):
            periodic_arg = pbc
        if use_pme:
            half = self.pme(charges=sources, cell=cell, positions=positions, neighbor_indices=empty_pairs,
                            neighbor_distances=empty_distances, periodic=periodic_arg)
        else:
            half = self.ewald(charges=sources, cell=cell, positions=positions, neighbor_indices=empty_pairs,
                              neighbor_distances=empty_distances, periodic=periodic_arg)
        return 2.0 * half

    def uses_pme(self, n: int, cell: torch.Tensor) -> bool:
        """Whether a periodic structure of ``n`` atoms in ``cell`` [3, 3] Å takes PME (else Ewald)."""
        return self.method == "pme" or (self.method == "auto" and (
            n > self.pme_threshold or ewald_work(cell, self.lr_wavelength, n) > self.ewald_max_work))

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

    def _periodic(self, sources: torch.Tensor, positions: torch.Tensor, cell: torch.Tensor, pbc: torch.Tensor,
                  want_field: bool) -> Tuple[torch.Tensor, torch.Tensor]:
        n = positions.shape[0]
        use_pme = self.uses_pme(n, cell)
        if bool(pbc.all()):  # 3D: one FFT-friendly mesh (PME) or the Ewald phase tables, fields in k-space
            if use_pme:
                return self._mesh_sum(sources, positions, cell, want_field)
            if want_field:
                return self._ewald_with_field(sources, positions, cell)
        if not want_field:  # 3D Ewald potentials and slabs: torch-pme
            return self._kspace(sources, positions, cell, pbc, use_pme), torch.zeros(
                (n, sources.shape[1], 3), dtype=positions.dtype, device=positions.device)
        return self._ghost_field(sources, positions, cell, pbc, use_pme)  # slab fields

    def _without_self_and_background(self, raw: torch.Tensor, sources: torch.Tensor,
                                     volume: torch.Tensor) -> torch.Tensor:
        """A raw 3D k-space potential [N, C] less each atom's own cloud and (non-neutral channels)
        torch-pme's neutralising background, as torch-pme's Ewald/PME return it."""
        return raw - self.self_value * sources \
            - 2.0 * self.ewald.potential.background_correction() * sources.sum(0) / volume

    def _mesh_sum(self, sources: torch.Tensor, positions: torch.Tensor, cell: torch.Tensor,
                  want_field: bool) -> Tuple[torch.Tensor, torch.Tensor]:
        """3D-periodic V (and E, differentiated in k-space) on one PME mesh (:class:`.channel_mesh.ChannelKernelMesh`)."""
        kvectors = self.mesh.prepare(positions, cell)
        kernel = self.pme.potential.lr_from_k_sq((kvectors * kvectors).sum(-1))
        if want_field:
            raw, field = self.mesh.potential_and_field(sources, kernel, kvectors, cell)
        else:
            raw = self.mesh.potential(sources, kernel, cell)
            field = torch.zeros((positions.shape[0], sources.shape[1], 3), dtype=positions.dtype,
                                device=positions.device)
        return self._without_self_and_background(raw, sources, torch.abs(torch.linalg.det(cell))), field

    def _ewald_with_field(self, sources: torch.Tensor, positions: torch.Tensor,
                          cell: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        """3D-periodic V and analytic E from one set of Ewald phase tables (see the module docstring)."""
        n = positions.shape[0]
        kvectors, multiplicity = ewald_kvectors(cell, self.lr_wavelength)
        volume = torch.abs(torch.linalg.det(cell))
        kernel = (multiplicity * self.ewald.potential.lr_from_k_sq((kvectors * kvectors).sum(-1)) / volume).unsqueeze(-1)
        cos, sin = ewald_phases(kvectors, positions)
        weighted_cos = kernel * (cos @ sources)  # [K, C]
        weighted_sin = kernel * (sin @ sources)
        potential = self._without_self_and_background(
            cos.transpose(0, 1) @ weighted_cos + sin.transpose(0, 1) @ weighted_sin, sources, volume)
        channels = sources.shape[1]
        k_weighted_cos = (weighted_cos.unsqueeze(-1) * kvectors.unsqueeze(1)).reshape(-1, channels * 3)
        k_weighted_sin = (weighted_sin.unsqueeze(-1) * kvectors.unsqueeze(1)).reshape(-1, channels * 3)
        field = sin.transpose(0, 1) @ k_weighted_cos - cos.transpose(0, 1) @ k_weighted_sin
        return potential, field.view(n, channels, 3)

    def _ghost_field(self, sources: torch.Tensor, positions: torch.Tensor, cell: torch.Tensor, pbc: torch.Tensor,
                     use_pme: bool) -> Tuple[torch.Tensor, torch.Tensor]:
        """Periodic V and E = -grad V at zero-weight probes (slabs, PME), differentiable."""
        n = positions.shape[0]
        offset = torch.zeros_like(positions).requires_grad_(True)
        probes = positions + offset
        weights = torch.cat([sources, torch.zeros_like(sources)], dim=0)
        at_probes = self._kspace(weights, torch.cat([positions, probes], dim=0), cell, pbc, use_pme)[n:]
        potential = at_probes - self.self_value * sources
        columns: List[torch.Tensor] = []
        for c in range(sources.shape[1]):
            grad_outputs: List[Optional[torch.Tensor]] = [torch.ones_like(at_probes[:, c])]
            gradient = torch.autograd.grad([at_probes[:, c]], [offset], grad_outputs=grad_outputs,
                                           create_graph=True, retain_graph=True, allow_unused=True)[0]
            if gradient is None:
                gradient = torch.zeros_like(positions)
            columns.append(-gradient)
        return potential, torch.stack(columns, dim=1)

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
                potential, field = self._periodic(sources[start:stop], positions[start:stop], cell[g], pbc[g],
                                                  want_field)
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
