"""Field-conditioned backbone (MACEField / Allegro-pol style): the field as an l=1 input.

After each chosen interaction layer l the node features h_i (irreps I_l) gain

    h_i <- h_i + s * TP_l(h_i, f_g),      f_g = [F_g (1x1o), |F_g|^2 (1x0e)]

with F_g the uniform external field of the structure (V/Å) and TP_l an e3nn fully
connected tensor product I_l x (1o + 0e) -> I_l with learned weights. The 1o path lets
vector features turn into scalars (h . F) and scalars into vectors (h F); the 0e path
reaches layers that hold only scalars (MACE's last layer). The next interaction's
many-body product and the nonlinear readout then make the energy a nonlinear function of
the field, so the model can learn the response:

    dipole mu = -dE/dF,   polarizability alpha_ab = d mu_a / d F_b = -d2E / dF_a dF_b,
    Born charges Z*_{i,ab} = d mu_b / d r_{i,a} = d f_{i,a} / d F_b   (f = forces)

all by autograd in :class:`mace_lr.models.MACELR`. The added term vanishes at F = 0,
so the field-free energy is the plain backbone's; the scale s starts at 0.01 (small, not
zero, so every weight has a gradient from the first step).
"""

from __future__ import annotations

from typing import List, Sequence

import torch
from e3nn import o3

#: Irreps of the per-structure field features [F, |F|^2].
FIELD_IRREPS = o3.Irreps("1x1o+1x0e")

#: Initial scale of the field term (see the module docstring).
INITIAL_SCALE = 0.01


def field_features(field: torch.Tensor) -> torch.Tensor:
    """[G, 4]: F (V/Å) and |F|^2 (V^2/Å^2), in the order of :data:`FIELD_IRREPS`."""
    return torch.cat([field, (field * field).sum(-1, keepdim=True)], dim=-1)


class FieldConditioningBlock(torch.nn.Module):
    """The field term for the node features of one interaction layer."""

    def __init__(self, layer: int, irreps: str) -> None:
        super().__init__()
        self.layer = int(layer)
        node_irreps = o3.Irreps(irreps)
        self.tensor_product = o3.FullyConnectedTensorProduct(node_irreps, FIELD_IRREPS, node_irreps)
        self.scale = torch.nn.Parameter(torch.tensor(INITIAL_SCALE))

    def forward(self, node_feats: torch.Tensor, atom_field_features: torch.Tensor) -> torch.Tensor:
        return node_feats + self.scale * self.tensor_product(node_feats, atom_field_features)


class FieldConditioning(torch.nn.Module):
    """The blocks of every chosen layer; :meth:`apply` is called by MACELR after each layer."""

    def __init__(self, blocks: List[FieldConditioningBlock]) -> None:
        super().__init__()
        self.blocks = torch.nn.ModuleList(blocks)
        self.layers = [block.layer for block in blocks]

    def apply(self, layer: int, node_feats: torch.Tensor, field: torch.Tensor, batch: torch.Tensor) -> torch.Tensor:
        """node_feats [N, dim I_l]; field [G, 3] V/Å; batch [N]."""
        atom_features = field_features(field)[batch]
        for block in self.blocks:
            if block.layer == layer:
                node_feats = block(node_feats, atom_features)
        return node_feats


def build_field_conditioning(irreps_per_layer: Sequence[str], layers: Sequence[int]) -> FieldConditioning:
    """Blocks after ``layers`` (empty: every layer); ValueError for layers the backbone lacks."""
    count = len(irreps_per_layer)
    chosen = sorted(set(layers)) if layers else list(range(count))
    bad = [layer for layer in chosen if layer < 0 or layer >= count]
    if bad:
        raise ValueError(f"field layers {bad} do not exist: the backbone has {count} interaction layers (0-{count - 1})")
    return FieldConditioning([FieldConditioningBlock(layer, irreps_per_layer[layer]) for layer in chosen])


__all__ = ["FieldConditioning", "FieldConditioningBlock", "build_field_conditioning", "field_features"]
