"""Head ``lode``: long-distance equivariant (LODE-style) descriptors fed into an energy readout.

Each atom sees the potential V_c (l = 0) and field E_c (l = 1) of Gaussian-smeared
densities (std ``smearing``) of all other atoms, one channel per element (or ``channels``
learned pseudo-charge channels, a linear map of the backbone's invariant features);
channels are neutralised per structure (mean subtracted), so the descriptors stay
finite in open boundaries and need no background in periodic cells. They come from
:class:`mace_lr.electrostatics.smeared.SmearedPotential` (torch-pme Ewald/PME for
periodic cells, exact dense sums otherwise) and are differentiable in positions and
cell.

Readout (invariant): an MLP of [backbone scalars, V_c s, |E_c|^2 s^4, (P h_i) . E_c s^2],
where h_i are the l = 1 features of the last interaction layer that has them and P a
learned mixing of their channels (the equivariant path of the field). Its output is a per-atom energy
(eV), small at initialisation, added to the backbone's. The head returns the
descriptors as ``node_features`` [N, 2C] (V s, |E|^2 s^4).
"""

from __future__ import annotations

from typing import Dict, List, Sequence

import torch
from e3nn import o3

from ..electrostatics.smeared import SmearedPotential, neutralise, smeared_method
from .contract import graph_sum

#: Scale of the readout's last layer at initialisation (small: the backbone dominates at first).
INITIAL_OUTPUT_SCALE = 0.01


def vector_feature_indices(irreps_per_layer: Sequence[str]) -> torch.Tensor:
    """Columns of the 1o features of the last layer that has any, in MACE's concatenated ``node_feats``, as [mul * 3].

    Standard MACE reduces its last layer to scalars, so the field's equivariant path uses
    the vectors of the last earlier layer that carries 1o features (empty only for max_L = 0).
    """
    offsets: List[int] = []
    offset = 0
    for text in irreps_per_layer:
        offsets.append(offset)
        offset += o3.Irreps(text).dim
    for layer in range(len(irreps_per_layer) - 1, -1, -1):
        indices: List[int] = []
        start = offsets[layer]
        for mul, ir in o3.Irreps(irreps_per_layer[layer]):
            if ir.l == 1 and ir.p == -1:
                indices.extend(range(start, start + mul * 3))
            start += mul * ir.dim
        if indices:
            return torch.tensor(indices, dtype=torch.long)
    return torch.zeros(0, dtype=torch.long)


class LODEHead(torch.nn.Module):
    """Nonlocal descriptors -> per-atom energy; see the module docstring. Units: eV, Å."""

    def __init__(self, num_scalars: int, num_elements: int, vector_index: torch.Tensor, smearing: float,
                 accuracy: float, hidden: int, channels: int = 0, projections: int = 8, method: str = "auto") -> None:
        super().__init__()
        self.potential = SmearedPotential(smearing, accuracy, smeared_method(method))
        self.smearing = float(smearing)
        self.learned_channels = channels > 0
        self.num_channels = channels if channels > 0 else num_elements
        # unused pieces are empty buffers, not parameters (nothing in the optimizer that cannot train)
        channel_map = torch.randn(channels, num_scalars) / max(num_scalars, 1) ** 0.5
        if channels > 0:
            self.channel_map = torch.nn.Parameter(channel_map)
        else:
            self.register_buffer("channel_map", channel_map)
        self.register_buffer("vector_index", vector_index)
        vector_mul = int(vector_index.numel()) // 3
        self.num_projections = projections if vector_mul > 0 else 0
        projection = torch.randn(self.num_projections, vector_mul) / max(vector_mul, 1) ** 0.5
        if self.num_projections > 0:
            self.projection = torch.nn.Parameter(projection)
        else:
            self.register_buffer("projection", projection)
        in_features = num_scalars + 2 * self.num_channels + self.num_projections * self.num_channels
        width = hidden if hidden > 0 else 16
        self.mlp = torch.nn.Sequential(torch.nn.Linear(in_features, width), torch.nn.SiLU(), torch.nn.Linear(width, 1))
        with torch.no_grad():  # start close to the backbone alone (not at zero: every weight gets a gradient)
            self.mlp[-1].weight.mul_(INITIAL_OUTPUT_SCALE)
            self.mlp[-1].bias.zero_()

    def extra_repr(self) -> str:
        kind = f"{self.num_channels} learned" if self.learned_channels else f"{self.num_channels} element"
        return f"smearing={self.smearing}, channels={kind}, projections={self.num_projections}"

    def descriptors(self, inputs: Dict[str, torch.Tensor]) -> torch.Tensor:
        """Invariant nonlocal features [N, 2C + M C] (dimensionless: V s, |E|^2 s^4, (P h).E s^2)."""
        positions = inputs["positions"]
        if self.learned_channels:
            weights = torch.nn.functional.linear(inputs["node_scalars"], self.channel_map)
        else:
            weights = inputs["node_attrs"].to(positions.dtype)
        sources = neutralise(weights, inputs["batch"], inputs["ptr"])
        potential, field = self.potential(sources, positions, inputs["cell"], inputs["pbc"], inputs["ptr"])
        s = self.smearing
        field = field * (s * s)
        parts = [potential * s, (field * field).sum(-1)]
        if self.num_projections > 0:
            vectors = inputs["node_feats"].index_select(1, self.vector_index).view(positions.shape[0], -1, 3)
            mixed = torch.einsum("mk,nkx->nmx", self.projection, vectors)
            parts.append(torch.einsum("nmx,ncx->nmc", mixed, field).reshape(positions.shape[0], -1))
        return torch.cat(parts, dim=1)

    def forward(self, inputs: Dict[str, torch.Tensor]) -> Dict[str, torch.Tensor]:
        features = self.descriptors(inputs)
        node_energy = self.mlp(torch.cat([inputs["node_scalars"], features], dim=1)).squeeze(-1)
        num_graphs = int(inputs["ptr"].numel()) - 1
        return {
            "energy": graph_sum(node_energy, inputs["batch"], num_graphs),
            "node_energy": node_energy,
            "node_features": features[:, : 2 * self.num_channels],
        }


def build_lode_head(num_scalars: int, atomic_numbers: Sequence[int], irreps_per_layer: Sequence[str],
                    smearing: float, accuracy: float, hidden: int, channels: int, method: str = "auto") -> LODEHead:
    """LODE head on a backbone whose layers have ``irreps_per_layer`` (``method``: the heads' k-space setting)."""
    return LODEHead(num_scalars, len(atomic_numbers), vector_feature_indices(irreps_per_layer), smearing, accuracy,
                    hidden, channels, method=method)
