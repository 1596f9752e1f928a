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
positions and cell.
"""

from __future__ import annotations

from typing import List, Sequence

import torch
from e3nn import o3

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
        self.filter = torch.nn.Parameter(torch.full((len(smearings), channels), 1.0 / len(smearings)))
        self.to_features = torch.nn.Linear(channels, num_scalars, bias=False)
        with torch.no_grad():  # small: training starts close to the plain backbone, every weight has a gradient
            self.to_features.weight.mul_(0.01)

    def forward(self, node_feats: torch.Tensor, positions: torch.Tensor, cell: torch.Tensor, pbc: torch.Tensor,
                batch: torch.Tensor, ptr: torch.Tensor) -> torch.Tensor:
        scalars = node_feats.index_select(1, self.scalar_index)
        sources = neutralise(self.to_channels(scalars), batch, ptr)
        message = torch.zeros_like(sources)
        for m, potential in enumerate(self.potentials):
            values, _ = potential(sources, positions, cell, pbc, ptr, False)
            message = message + self.filter[m] * self.smearings[m] * values
        return node_feats.index_add(1, self.scalar_index, self.to_features(message))


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
