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
positions and cell. 3D cells take all widths in one k-space pass, with the finest
width's settings (which the wider kernels need less of): on the Ewald path the filter
f_c(k) is applied to one set of structure factors on that width's k-vectors
(:mod:`mace_lr.electrostatics.ewald_tables`); above the Ewald work limit, to one
C-channel PME mesh (:mod:`mace_lr.electrostatics.channel_mesh`). Slabs take one
torch-pme call per width (its slab correction).
"""

from __future__ import annotations

from typing import List, Sequence, Tuple

import torch
from e3nn import o3

from ..electrostatics.channel_mesh import ChannelKernelMesh
from ..electrostatics.ewald_tables import ewald_kvectors, ewald_phases
from ..electrostatics.parameters import PME_INTERPOLATION_NODES
from ..electrostatics.smeared import SmearedPotential, neutralise, smeared_method


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
        # the single k-space pass runs on the finest width's k-vectors (the shortest wavelength)
        self.finest_wavelength = min(potential.lr_wavelength for potential in self.potentials)
        self.mesh = ChannelKernelMesh(min(potential.pme.mesh_spacing for potential in self.potentials),
                                      PME_INTERPOLATION_NODES)
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
            elif self._uses_mesh(stop - start, cell[g]):
                messages.append(self._mesh_message(sources[start:stop], positions[start:stop], cell[g]))
            else:
                messages.append(self._ewald_message(sources[start:stop], positions[start:stop], cell[g]))
        message = torch.cat(messages, dim=0)
        return node_feats.index_add(1, self.scalar_index, self.to_features(message))

    def _single_pass(self, cell: torch.Tensor, pbc: torch.Tensor) -> bool:
        """3D-periodic: :meth:`_ewald_message` or :meth:`_mesh_message` applies (else one call per width)."""
        return bool(pbc.all())

    def _uses_mesh(self, n: int, cell: torch.Tensor) -> bool:
        """Whether the single pass takes the mesh: some width (the finest) would take PME."""
        for potential in self.potentials:
            if potential.uses_pme(n, cell):
                return True
        return False

    def _message_per_width(self, sources: torch.Tensor, positions: torch.Tensor, cell: torch.Tensor,
                           pbc: torch.Tensor) -> torch.Tensor:
        """sum_m a_m s_m V(s_m) [N, C] for one structure, one potential call per width (open boundaries, slabs)."""
        ptr = torch.tensor([0, positions.shape[0]], dtype=torch.long, device=positions.device)
        message = torch.zeros_like(sources)
        for m, potential in enumerate(self.potentials):
            values, _ = potential(sources, positions, cell, pbc, ptr, False)
            message = message + self.filter[m] * self.smearings[m] * values
        return message

    def _mixed_kernel(self, k_squared: torch.Tensor, sources: torch.Tensor,
                      volume: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        """(f_c(k) [C, P] on the flattened |k|^2 [P] Å^-2, correction [N, C]) for the single pass.

        The correction is each width's own-cloud self term and, for non-neutral channels,
        torch-pme's background term, mixed like the kernels.
        """
        kernels: List[torch.Tensor] = []
        self_values: List[float] = []
        backgrounds: List[torch.Tensor] = []
        for potential in self.potentials:
            kernels.append(potential.ewald.potential.lr_from_k_sq(k_squared))
            self_values.append(potential.self_value)
            backgrounds.append(potential.ewald.potential.background_correction())
        smearings = torch.tensor(self.smearings, dtype=sources.dtype, device=sources.device)
        weights = self.filter * smearings.unsqueeze(-1)  # a_mc s_m [M, C]
        kernel = weights.transpose(0, 1) @ torch.stack(kernels)  # [C, P]
        self_value = torch.tensor(self_values, dtype=sources.dtype, device=sources.device)
        background = torch.stack(backgrounds).to(sources.dtype).reshape(-1)
        correction = (self_value @ weights) * sources + (background @ weights) * (2.0 * sources.sum(0) / volume)
        return kernel, correction

    def _ewald_message(self, sources: torch.Tensor, positions: torch.Tensor, cell: torch.Tensor) -> torch.Tensor:
        """:meth:`_message_per_width` for a 3D cell in one Ewald pass (k-vectors of the finest width)."""
        kvectors, multiplicity = ewald_kvectors(cell, self.finest_wavelength)
        volume = torch.abs(torch.linalg.det(cell))
        kernel, correction = self._mixed_kernel((kvectors * kvectors).sum(-1), sources, volume)
        kernel = kernel.transpose(0, 1) * (multiplicity / volume).unsqueeze(-1)  # [K, C]
        cos, sin = ewald_phases(kvectors, positions)
        return cos.transpose(0, 1) @ (kernel * (cos @ sources)) + sin.transpose(0, 1) @ (kernel * (sin @ sources)) \
            - correction

    def _mesh_message(self, sources: torch.Tensor, positions: torch.Tensor, cell: torch.Tensor) -> torch.Tensor:
        """:meth:`_message_per_width` for a 3D cell in one pass on a C-channel PME mesh (finest width's spacing)."""
        kvectors = self.mesh.prepare(positions, cell)
        k_squared = (kvectors * kvectors).sum(-1)
        kernel, correction = self._mixed_kernel(k_squared.reshape(-1), sources, torch.abs(torch.linalg.det(cell)))
        kernel = kernel.reshape([sources.shape[1]] + list(k_squared.shape))
        return self.mesh.potential(sources, kernel, cell) - correction


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
