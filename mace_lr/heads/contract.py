"""The head contract (DESIGN.md section 3) and helpers every head shares.

A head is a TorchScript-compilable ``torch.nn.Module`` whose ``forward`` takes one
``Dict[str, Tensor]`` and returns one ``Dict[str, Tensor]``. Inputs (all present):

===================  =========  ==========================================
key                  shape      meaning
===================  =========  ==========================================
``node_scalars``     [N, F]     invariant features of every interaction layer
``node_feats``       [N, F']    all backbone features (irreps of each layer, concatenated)
``node_attrs``       [N, Z]     one-hot elements
``positions``        [N, 3]     Å (strained when stress is requested)
``cell``             [G, 3, 3]  Å, rows are lattice vectors (strained likewise)
``pbc``              [G, 3]     bool
``batch``            [N]        graph of each atom
``ptr``              [G + 1]    first atom of each graph
``total_charge``     [G]        e
``external_field``   [G, 3]     V/Å
``edge_index``       [2, E]     (sender, receiver), all pairs within r_max, both ways
``edge_lengths``     [E]        Å
``charges``          [N]        e, sum of the charges of the heads run so far
===================  =========  ==========================================

Outputs: ``energy`` [G] (eV, required), ``node_energy`` [N] (eV, its atomic shares,
required: they sum to ``energy``), and optionally ``charges`` [N] (e), ``dipoles``
[N, 3] (e·Å; added to the dipole and the field term), ``electrostatic_energy`` [G] (eV;
for heads whose energy is not 1/2 q.potential of their charges), ``potential`` [N] (V). Heads run in the order given and see
the accumulated ``charges`` of earlier heads.
"""

from __future__ import annotations

from typing import List

import torch
from e3nn import o3


def scalar_feature_indices(irreps_per_layer: List[str]) -> torch.Tensor:
    """Column indices of the 0e features in MACE's concatenated ``node_feats``."""
    indices: List[int] = []
    offset = 0
    for text in irreps_per_layer:
        for mul, ir in o3.Irreps(text):
            if ir.l == 0 and ir.p == 1:
                indices.extend(range(offset, offset + mul))
            offset += mul * ir.dim
    return torch.tensor(indices, dtype=torch.long)


def layer_irreps(backbone: torch.nn.Module) -> List[str]:
    """Irreps of each interaction layer's output in a MACE backbone, as strings."""
    return [str(o3.Irreps(product.linear.irreps_out)) for product in backbone.products]


def graph_sum(values: torch.Tensor, batch: torch.Tensor, num_graphs: int) -> torch.Tensor:
    """Sum of per-atom values [N] (or [N, k]) into graphs [G] ([G, k])."""
    out = values.new_zeros((num_graphs,) + values.shape[1:])
    return out.index_add(0, batch, values)


def constrain_total_charge(
    raw: torch.Tensor, total_charge: torch.Tensor, batch: torch.Tensor, ptr: torch.Tensor
) -> torch.Tensor:
    """Shift raw charges [N] uniformly within each graph so they sum to ``total_charge``."""
    num_graphs = int(ptr.numel()) - 1
    counts = (ptr[1:] - ptr[:-1]).to(raw.dtype)
    excess = graph_sum(raw, batch, num_graphs) - total_charge.to(raw.dtype)
    return raw - (excess / counts)[batch]
