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

Boundary conditions are explicit: periodic cells (3D or slabs) use the k-space layer
(:mod:`mace_lr.electrostatics.kspace`); open-boundary structures use the *same*
real-space kernel summed exactly over all pairs (never a padded periodic box). Both are
differentiable in positions and cell. 3D cells take all widths in one pass of the layer:
the planner picks Ewald or a C-channel PME mesh and a splitting width sigma >= the finest
width by cost, the filter f_c(k) is applied to the one set of structure factors, and the
widths narrower than sigma add a real-space remainder over vesin-torch pairs. Slabs take the same pass plus torch-pme's slab correction, which does
not depend on the width.
"""

from __future__ import annotations

import math
from typing import List, Sequence, Tuple

import torch
import torchpme
from e3nn import o3

from ..electrostatics.kspace import (
    MEMORY_BUDGET,
    KSpacePlan,
    KSpacePlanner,
    ReciprocalSum,
    background_potential,
    coulomb_kernel,
    occupied_density,
    self_potential,
    slab_cell,
)
from ..electrostatics.smeared import SmearedPotential, neutralise, smeared_method
from ..electrostatics.split_coulomb import periodic_pairs


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
                 accuracy: float, method: str = "auto") -> None:
        super().__init__()
        num_scalars = int(scalar_index.numel())
        if num_scalars == 0:
            raise ValueError(f"interaction layer {layer} has no invariant (0e) features for ewald_mp")
        self.layer = int(layer)
        self.register_buffer("scalar_index", scalar_index)
        self.to_channels = torch.nn.Linear(num_scalars, channels, bias=False)
        self.potentials = torch.nn.ModuleList([SmearedPotential(s, accuracy, smeared_method(method)) for s in smearings])
        self.smearings = [float(s) for s in smearings]
        # the single k-space pass is planned for the finest width (the shortest wavelength)
        self.finest = min(self.smearings)
        self.planner = KSpacePlanner(accuracy, smeared_method(method), MEMORY_BUDGET)
        self.reciprocal = ReciprocalSum()
        self.slab = torchpme.CoulombPotential(smearing=1.0)  # its pbc_correction does not depend on the smearing
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
            if not self._single_pass(cell[g], pbc[g]):
                messages.append(self._message_per_width(sources[start:stop], positions[start:stop], cell[g:g + 1],
                                                        pbc[g:g + 1]))
            else:
                messages.append(self._single_pass_message(sources[start:stop], positions[start:stop], cell[g],
                                                          pbc[g]))
        message = torch.cat(messages, dim=0)
        return node_feats.index_add(1, self.scalar_index, self.to_features(message))

    def __setstate__(self, state: dict) -> None:
        """Upgrade a block pickled before the k-space layer (own Ewald tables and mesh)."""
        super().__setstate__(state)
        if "reciprocal" not in self._modules:
            self._modules.pop("mesh", None)
            self.__dict__.pop("finest_wavelength", None)
            first = self.potentials[0]
            self.finest = min(self.smearings)
            self.planner = KSpacePlanner(first.accuracy, first.method, MEMORY_BUDGET)
            self.reciprocal = ReciprocalSum()
        if "slab" not in self._modules:
            self.slab = torchpme.CoulombPotential(smearing=1.0)

    def _single_pass(self, cell: torch.Tensor, pbc: torch.Tensor) -> bool:
        """3D cells and slabs: :meth:`_single_pass_message` applies (open boundaries: one exact sum per width)."""
        return int(pbc.sum()) >= 2

    def plan(self, positions: torch.Tensor, cell: torch.Tensor, channels: int) -> KSpacePlan:
        """The single pass's plan: splitting width sigma >= the finest width by cost (pure k-space
        at sigma = finest; a larger sigma adds a real-space remainder for the narrower widths)."""
        return self.planner(cell, positions.shape[0], self.finest, 1.0e6, channels, True, True,
                            occupied_density(positions, cell))

    def _message_per_width(self, sources: torch.Tensor, positions: torch.Tensor, cell: torch.Tensor,
                           pbc: torch.Tensor) -> torch.Tensor:
        """sum_m a_m s_m V(s_m) [N, C] for one structure, one potential call per width (open boundaries, slabs)."""
        ptr = torch.tensor([0, positions.shape[0]], dtype=torch.long, device=positions.device)
        message = torch.zeros_like(sources)
        for m, potential in enumerate(self.potentials):
            values, _ = potential(sources, positions, cell, pbc, ptr, False)
            message = message + self.filter[m] * self.smearings[m] * values
        return message

    def _single_pass_message(self, sources: torch.Tensor, positions: torch.Tensor, cell: torch.Tensor,
                             pbc: torch.Tensor) -> torch.Tensor:
        """:meth:`_message_per_width` for a 3D cell or slab in one pass of the k-space layer.

        With the plan's splitting width sigma (>= the finest width), width s_m enters the
        k-space filter f_c(k) = sum_m a_mc s_m G_{max(s_m, sigma)}(k), applied to one set of
        structure factors, and the widths below sigma add the real-space remainder
        sum_m a_mc s_m [erf(r / (sqrt 2 s_m)) - erf(r / (sqrt 2 sigma))] / r over the pairs
        within the plan's cutoff; own-cloud and background terms are mixed the same way.
        Slabs add the slab correction (the same for every width) times sum_m a_mc s_m."""
        cell = slab_cell(positions, cell, pbc, self.planner.accuracy)  # slabs: vacuum for the accuracy
        plan = self.plan(positions, cell, sources.shape[1])
        sigma = plan.smearing
        kvectors = self.reciprocal.prepare(positions, cell, plan)
        k_squared = (kvectors * kvectors).sum(-1)
        volume = torch.abs(torch.linalg.det(cell))
        weights = self.filter * torch.tensor(self.smearings, dtype=sources.dtype,
                                             device=sources.device).unsqueeze(-1)  # a_mc s_m [M, C]
        kernels: List[torch.Tensor] = []
        self_values: List[float] = []
        backgrounds: List[torch.Tensor] = []
        for s in self.smearings:
            long_range = max(s, sigma)
            kernels.append(coulomb_kernel(k_squared, long_range).reshape(-1))
            self_values.append(self_potential(long_range))
            backgrounds.append(background_potential(long_range, volume))
        kernel = (weights.transpose(0, 1) @ torch.stack(kernels)).reshape([sources.shape[1]] + list(k_squared.shape))
        message = self.reciprocal.potential(sources, kernel)
        self.reciprocal.release()
        self_value = torch.tensor(self_values, dtype=sources.dtype, device=sources.device)
        background = torch.stack(backgrounds).to(sources.dtype)
        message = message - (self_value @ weights) * sources - (background @ weights) * sources.sum(0)
        if plan.cutoff > 0.0:
            message = message + self._real_space(sources, positions, cell, weights, sigma, plan.cutoff)
        if not bool(pbc.all()):
            message = message + weights.sum(0) * self.slab.pbc_correction(pbc, positions, cell, sources)
        return message

    def _real_space(self, sources: torch.Tensor, positions: torch.Tensor, cell: torch.Tensor,
                    weights: torch.Tensor, sigma: float, cutoff: float) -> torch.Tensor:
        """sum_j sum_m a_mc s_m [erf(r / (sqrt 2 s_m)) - erf(r / (sqrt 2 sigma))] / r c_jc [N, C] over
        the pairs within ``cutoff`` (widths s_m < sigma)."""
        i, j, vectors = periodic_pairs(positions, cell, cutoff)
        distance = torch.linalg.norm(vectors, dim=1)
        split = torch.erf(distance / (math.sqrt(2.0) * sigma))
        columns: List[torch.Tensor] = []
        rows: List[int] = []
        for m, s in enumerate(self.smearings):
            if s < sigma:
                columns.append((torch.erf(distance / (math.sqrt(2.0) * s)) - split) / distance)
                rows.append(m)
        if len(columns) == 0:
            return torch.zeros_like(sources)
        index = torch.tensor(rows, dtype=torch.long, device=sources.device)
        pair_kernel = torch.stack(columns, dim=1) @ weights.index_select(0, index)  # [P, C]
        message = torch.zeros_like(sources).index_add(0, i, sources[j] * pair_kernel)
        return message.index_add(0, j, sources[i] * pair_kernel)


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
                                channels: int, smearings: Sequence[float], accuracy: float,
                                method: str = "auto") -> EwaldMessagePassing:
    """Blocks after ``layers`` of ``backbone`` (``method``: the heads' k-space setting); ValueError for layers it
    does not have or unsupported backbones."""
    for attribute in ("pair_repulsion", "joint_embedding"):
        if hasattr(backbone, attribute):
            raise ValueError(f"ewald_mp does not support backbones with {attribute} yet")
    count = len(irreps_per_layer)
    bad = [layer for layer in layers if layer >= count]
    if bad:
        raise ValueError(f"ewald_mp layers {bad} do not exist: the backbone has {count} interaction layers (0-{count - 1})")
    blocks = [EwaldMessageBlock(layer, layer_scalar_indices(irreps_per_layer[layer]), channels, smearings, accuracy, method)
              for layer in sorted(set(layers))]
    return EwaldMessagePassing(blocks)
