"""``ewald_mp``: reciprocal-space message passing inside the backbone (Kosmala et al. 2023 style).

After each chosen interaction layer l, the layer's invariant features h_i are mapped to
C channels of pseudo-charges c_i = W_l h_i (neutralised per structure). Their smoothed
Coulomb potentials, mixed over M Gaussian widths s_m with learned weights a_mc,

    m_ic = sum_m a_mc s_m V_ic(s_m),      V_ic(s) = sum_{(j,n) != (i,0)} c_jc erf(|r_ij + n| / (sqrt 2 s)) / |r_ij + n|

are the message: in k-space a structure factor filtered by the learned radial function
f_c(k) = sum_m a_mc 4 pi exp(-k^2 s_m^2 / 2) / k^2 (up to the self term), summed back at
the atoms. A linear map U_l (small at initialisation, so training starts close to the plain
backbone) adds it to the layer's invariant features, which the next interaction and the
readouts then see.

Boundary conditions are explicit: periodic cells (3D or slabs) use torch-pme's Ewald/PME
for the k-space sums; open-boundary structures use the *same* real-space kernel summed
exactly over all pairs (never a padded periodic box). Both are differentiable in
positions and cell. 3D cells on the Ewald path take all widths in one pass: the filter
f_c(k) is applied to one set of structure factors on the k-vectors of the finest width
(:mod:`mace_lr.electrostatics.ewald_tables`), instead of one torch-pme call per width.
"""

from __future__ import annotations

from typing import List, Sequence

import torch
from e3nn import o3

from ..electrostatics.ewald_tables import ewald_kvectors, ewald_phases
from ..electrostatics.smeared import SmearedPotential, neutralise


def layer_scalar_indices(irreps: str) -> torch.Tensor:
    """Columns of the 0e features within one layer's node features."""
    indices: List[int] = []
    offset = 0
    for mul, ir in o3.Irreps(irreps):
        if ir.l == 0 and ir.p == 1:
            indices.extend(range(offset, offset + mul))
        offset += mul * ir.dim
    return torch.tensor(indices, dtype=torch.long)


class EwaldMessageBlock(torch.nn.Module):
    """One reciprocal-space message for the node features of one interaction layer."""

    def __init__(self, layer: int, scalar_index: torch.Tensor, channels: int, smearings: Sequence[float],
                 accuracy: float) -> None:
        super().__init__()
        num_scalars = int(scalar_index.numel())
        if num_scalars == 0:
            raise ValueError(f"interaction layer {layer} has no invariant (0e) features for ewald_mp")
        self.layer = int(layer)
        self.register_buffer("scalar_index", scalar_index)
        self.to_channels = torch.nn.Linear(num_scalars, channels, bias=False)
        self.potentials = torch.nn.ModuleList([SmearedPotential(s, accuracy) for s in smearings])
        self.smearings = [float(s) for s in smearings]
        # the single k-space pass runs on the finest width's k-vectors (the shortest wavelength)
        self.finest_wavelength = min(potential.lr_wavelength for potential in self.potentials)
        self.filter = torch.nn.Parameter(torch.full((len(smearings), channels), 1.0 / len(smearings)))
        self.to_features = torch.nn.Linear(channels, num_scalars, bias=False)
        with torch.no_grad():  # small: training starts close to the plain backbone, every weight has a gradient
            self.to_features.weight.mul_(0.01)

    def forward(self, node_feats: torch.Tensor, positions: torch.Tensor, cell: torch.Tensor, pbc: torch.Tensor,
                batch: torch.Tensor, ptr: torch.Tensor) -> torch.Tensor:
        scalars = node_feats.index_select(1, self.scalar_index)
        sources = neutralise(self.to_channels(scalars), batch, ptr)
        messages: List[torch.Tensor] = []
        for g in range(int(ptr.numel()) - 1):
            start = int(ptr[g])
            stop = int(ptr[g + 1])
            if self._single_pass(stop - start, cell[g], pbc[g]):
                messages.append(self._ewald_message(sources[start:stop], positions[start:stop], cell[g]))
            else:
                messages.append(self._message_per_width(sources[start:stop], positions[start:stop], cell[g:g + 1],
                                                        pbc[g:g + 1]))
        message = torch.cat(messages, dim=0)
        return node_feats.index_add(1, self.scalar_index, self.to_features(message))

    def _single_pass(self, n: int, cell: torch.Tensor, pbc: torch.Tensor) -> bool:
        """3D-periodic and every width on the Ewald path: :meth:`_ewald_message` applies."""
        if not bool(pbc.all()):
            return False
        for potential in self.potentials:
            if potential.uses_pme(n, cell):
                return False
        return True

    def _message_per_width(self, sources: torch.Tensor, positions: torch.Tensor, cell: torch.Tensor,
                           pbc: torch.Tensor) -> torch.Tensor:
        """sum_m a_m s_m V(s_m) [N, C] for one structure, one potential call per width (open, slab, PME)."""
        ptr = torch.tensor([0, positions.shape[0]], dtype=torch.long, device=positions.device)
        message = torch.zeros_like(sources)
        for m, potential in enumerate(self.potentials):
            values, _ = potential(sources, positions, cell, pbc, ptr, False)
            message = message + self.filter[m] * self.smearings[m] * values
        return message

    def _ewald_message(self, sources: torch.Tensor, positions: torch.Tensor, cell: torch.Tensor) -> torch.Tensor:
        """:meth:`_message_per_width` for a 3D cell in one k-space pass (k-vectors of the finest width)."""
        kvectors, multiplicity = ewald_kvectors(cell, self.finest_wavelength)
        k_squared = (kvectors * kvectors).sum(-1)
        volume = torch.abs(torch.linalg.det(cell))
        kernel = torch.zeros((kvectors.shape[0], sources.shape[1]), dtype=sources.dtype, device=sources.device)
        correction = torch.zeros_like(sources)
        total = sources.sum(0)
        for m, potential in enumerate(self.potentials):
            weight = self.filter[m] * self.smearings[m]  # [C]
            kernel = kernel + potential.ewald.potential.lr_from_k_sq(k_squared).unsqueeze(-1) * weight
            # each width's own-cloud self term and (non-neutral channels) torch-pme's background
            correction = correction + weight * (potential.self_value * sources
                                                + 2.0 * potential.ewald.potential.background_correction() * total
                                                / volume)
        kernel = kernel * (multiplicity / volume).unsqueeze(-1)
        cos, sin = ewald_phases(kvectors, positions)
        return cos.transpose(0, 1) @ (kernel * (cos @ sources)) + sin.transpose(0, 1) @ (kernel * (sin @ sources)) \
            - correction


class EwaldMessagePassing(torch.nn.Module):
    """The blocks for every chosen layer; :meth:`apply` is called by MACELR after each layer."""

    def __init__(self, blocks: List[EwaldMessageBlock]) -> None:
        super().__init__()
        self.blocks = torch.nn.ModuleList(blocks)
        self.layers = [block.layer for block in blocks]

    def apply(self, layer: int, node_feats: torch.Tensor, positions: torch.Tensor, cell: torch.Tensor,
              pbc: torch.Tensor, batch: torch.Tensor, ptr: torch.Tensor) -> torch.Tensor:
        for block in self.blocks:
            if block.layer == layer:
                node_feats = block(node_feats, positions, cell, pbc, batch, ptr)
        return node_feats


def build_ewald_message_passing(backbone: torch.nn.Module, irreps_per_layer: Sequence[str], layers: Sequence[int],
                                channels: int, smearings: Sequence[float], accuracy: float) -> EwaldMessagePassing:
    """Blocks after ``layers`` of ``backbone``; ValueError for layers it does not have or unsupported backbones."""
    for attribute in ("pair_repulsion", "joint_embedding"):
        if hasattr(backbone, attribute):
            raise ValueError(f"ewald_mp does not support backbones with {attribute} yet")
    count = len(irreps_per_layer)
    bad = [layer for layer in layers if layer >= count]
    if bad:
        raise ValueError(f"ewald_mp layers {bad} do not exist: the backbone has {count} interaction layers (0-{count - 1})")
    blocks = [EwaldMessageBlock(layer, layer_scalar_indices(irreps_per_layer[layer]), channels, smearings, accuracy)
              for layer in sorted(set(layers))]
    return EwaldMessagePassing(blocks)
