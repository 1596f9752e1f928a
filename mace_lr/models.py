"""MACELR: a MACE backbone (ScaleShiftMACE, a submodule) plus long-range heads.

Forward pass:

1. the backbone runs unchanged, asked only for its energy and node features (no
   gradients); with stress/virials requested it builds MACE's symmetric strain
   ``displacement``, from which we strain positions, cell and shifts for the heads;
2. each head (:mod:`mace_lr.heads`) gets the features and the strained geometry and
   returns its energy and atomic shares;
3. forces, virials and stress come from one autograd pass over the total energy with
   MACE's own ``get_outputs``, so they are exact for every head;
4. the constant-E field term -mu . F (:mod:`mace_lr.field`) when ``external_field`` is
   non-zero; dipole ``sum_i q_i r_i``; on request (``compute_bec``, or a batch that
   carries reference ``bec``) Born charges ``d mu_b / d r_{i,a}``, differentiable in the
   parameters when ``training``.

Without heads the backbone's outputs are returned as they are: bit-identical to plain
ScaleShiftMACE. The model keeps MACE's attributes (``r_max``, ``atomic_numbers``,
``heads``, ...) so MACE's calculator, training loop and tools accept it.
"""

from __future__ import annotations

from typing import Dict, List, Mapping, Optional

import torch
from e3nn.util.jit import compile_mode
from mace.modules.models import ScaleShiftMACE
from mace.modules.utils import get_edge_vectors_and_lengths, get_outputs

from .field import field_node_energy
from .heads import LongRangeConfig, build_heads
from .heads.contract import graph_sum, layer_irreps, scalar_feature_indices


@compile_mode("script")
class MACELR(torch.nn.Module):
    """ScaleShiftMACE + long-range heads. Units: eV, Å, e, V/Å."""

    def __init__(self, backbone: ScaleShiftMACE, heads: List[torch.nn.Module], config: LongRangeConfig) -> None:
        super().__init__()
        self.backbone = backbone
        self.long_range_heads = torch.nn.ModuleList(heads)
        self.long_range = "+".join(config.heads) if config.heads else "none"
        self.long_range_config = {
            "charge_width": config.charge_width,
            "method": config.method,
            "accuracy": config.accuracy,
            "readout_hidden": config.readout_hidden,
            "qeq_solver": config.qeq_solver,
            "qeq_dense_max_atoms": config.qeq_dense_max_atoms,
            "qeq_tolerance": config.qeq_tolerance,
            "qeq_max_width": config.qeq_max_width,
        }
        # MACE's attributes, so mace's calculator / tools treat this like a MACE model
        self.register_buffer("atomic_numbers", backbone.atomic_numbers.clone())
        self.register_buffer("r_max", backbone.r_max.clone())
        self.register_buffer("num_interactions", backbone.num_interactions.clone())
        self.heads = list(backbone.heads)
        self.atomic_energies_fn = backbone.atomic_energies_fn  # shared: MACECalculator reads E0s
        irreps = layer_irreps(backbone)
        self.register_buffer("scalar_index", scalar_feature_indices(irreps))

    @property
    def num_scalar_features(self) -> int:
        return int(self.scalar_index.numel())

    def forward(
        self,
        data: Dict[str, torch.Tensor],
        training: bool = False,
        compute_force: bool = True,
        compute_virials: bool = False,
        compute_stress: bool = False,
        compute_displacement: bool = False,
        compute_hessian: bool = False,
        compute_edge_forces: bool = False,
        compute_atomic_stresses: bool = False,
        lammps_mliap: bool = False,
        compute_bec: bool = False,
    ) -> Dict[str, Optional[torch.Tensor]]:
        # a batch carrying reference Born charges (training with --bec_weight) asks for them
        compute_bec = compute_bec or ("bec" in data and len(self.long_range_heads) > 0)
        if len(self.long_range_heads) == 0 and not compute_bec:
            return self.backbone(
                data,
                training=training,
                compute_force=compute_force,
                compute_virials=compute_virials,
                compute_stress=compute_stress,
                compute_displacement=compute_displacement,
                compute_hessian=compute_hessian,
                compute_edge_forces=compute_edge_forces,
                compute_atomic_stresses=compute_atomic_stresses,
                lammps_mliap=lammps_mliap,
            )
        if compute_hessian or compute_edge_forces or compute_atomic_stresses or lammps_mliap:
            raise RuntimeError(
                "MACELR with long-range heads does not provide hessians, edge forces, "
                "atomic stresses or LAMMPS ML-IAP yet"
            )
        data["positions"].requires_grad_(True)
        positions = data["positions"]  # unstrained: forces are taken with respect to these
        need_strain = compute_virials or compute_stress or compute_displacement
        out = self.backbone(
            data,
            training=training,
            compute_force=False,
            compute_virials=False,
            compute_stress=False,
            compute_displacement=need_strain,
        )
        displacement = out["displacement"]
        cell = data["cell"].view(-1, 3, 3)
        strained_positions = positions
        strained_cell = cell
        shifts = data["shifts"]
        if need_strain and displacement is not None:
            # MACE's symmetric strain, rebuilt here (do not rely on the backbone's dict edits)
            symmetric = 0.5 * (displacement + displacement.transpose(-1, -2))
            strained_positions = positions + torch.einsum("be,bec->bc", positions, symmetric[data["batch"]])
            strained_cell = cell + torch.matmul(cell, symmetric)
            sender_graph = data["batch"][data["edge_index"][0]]
            shifts = torch.einsum("be,bec->bc", data["unit_shifts"], strained_cell[sender_graph])
        node_feats = out["node_feats"]
        assert node_feats is not None
        inputs = self._head_inputs(data, node_feats, strained_positions, strained_cell, shifts)
        inputs["training"] = torch.tensor(training)
        inputs["compute_response"] = torch.tensor(compute_bec)
        energy = out["energy"]
        interaction_energy = out["interaction_energy"]
        node_energy = out["node_energy"]
        assert energy is not None and interaction_energy is not None and node_energy is not None
        # zero-valued, carries d(charges)/d(positions) of heads whose charges are not differentiated
        dipole_response = torch.zeros((int(data["ptr"].numel()) - 1, 3), dtype=positions.dtype, device=positions.device)
        for head in self.long_range_heads:
            result = head(inputs)
            energy = energy + result["energy"]
            interaction_energy = interaction_energy + result["energy"]
            node_energy = node_energy + result["node_energy"].to(node_energy.dtype)
            if "charges" in result:
                inputs["charges"] = inputs["charges"] + result["charges"]
            if "potential" in result:
                inputs["potential"] = result["potential"]
            if "dipole_response" in result:
                dipole_response = dipole_response + result["dipole_response"]

        charges = inputs["charges"]
        batch = data["batch"]
        num_graphs = int(data["ptr"].numel()) - 1
        electrostatic_energy = graph_sum(0.5 * charges * inputs["potential"], batch, num_graphs)
        # strained positions, so that the field term's stress is right too
        dipole = graph_sum(charges.unsqueeze(-1) * inputs["positions"], batch, num_graphs) + dipole_response
        node_field_energy = field_node_energy(charges, inputs["positions"], inputs["external_field"], batch)
        field_energy = graph_sum(node_field_energy, batch, num_graphs)
        energy = energy + field_energy
        interaction_energy = interaction_energy + field_energy
        node_energy = node_energy + node_field_energy.to(node_energy.dtype)

        forces, virials, stress, _, _ = get_outputs(
            energy=interaction_energy,
            positions=positions,
            displacement=displacement,
            vectors=None,
            cell=cell,
            training=training or compute_bec,
            compute_force=compute_force,
            compute_virials=compute_virials,
            compute_stress=compute_stress,
        )
        bec: Optional[torch.Tensor] = None
        if compute_bec:
            bec = self._born_charges(dipole, positions, training)
        return {
            "energy": energy,
            "node_energy": node_energy,
            "interaction_energy": interaction_energy,
            "forces": forces,
            "virials": virials,
            "stress": stress,
            "displacement": displacement,
            "node_feats": node_feats,
            "charges": charges,
            "dipole": dipole,
            "electrostatic_energy": electrostatic_energy,
            "field_energy": field_energy,
            "bec": bec,
        }

    def _head_inputs(
        self,
        data: Dict[str, torch.Tensor],
        node_feats: torch.Tensor,
        positions: torch.Tensor,
        cell: torch.Tensor,
        shifts: torch.Tensor,
    ) -> Dict[str, torch.Tensor]:
        """The contract's input dict (see :mod:`mace_lr.heads.contract`); strained geometry."""
        num_graphs = int(data["ptr"].numel()) - 1
        _, lengths = get_edge_vectors_and_lengths(positions, data["edge_index"], shifts)
        if "pbc" in data:
            pbc = data["pbc"].view(-1, 3).to(torch.bool)
        else:  # no pbc key: a cell with volume means periodic
            pbc = (torch.linalg.det(cell).abs() > 1e-6).unsqueeze(-1).expand(num_graphs, 3)
        if "total_charge" in data:
            total_charge = data["total_charge"].view(-1).to(positions.dtype)
        else:
            total_charge = torch.zeros(num_graphs, dtype=positions.dtype, device=positions.device)
        if "external_field" in data:
            field = data["external_field"].view(-1, 3).to(positions.dtype)
        else:
            field = torch.zeros((num_graphs, 3), dtype=positions.dtype, device=positions.device)
        zeros = torch.zeros(positions.shape[0], dtype=positions.dtype, device=positions.device)
        return {
            "node_scalars": node_feats.index_select(1, self.scalar_index),
            "node_feats": node_feats,
            "node_attrs": data["node_attrs"],
            "positions": positions,
            "cell": cell,
            "pbc": pbc,
            "batch": data["batch"],
            "ptr": data["ptr"],
            "total_charge": total_charge,
            "external_field": field,
            "edge_index": data["edge_index"],
            "edge_lengths": lengths.view(-1),
            "charges": zeros,
            "potential": zeros,
        }

    def _born_charges(self, dipole: torch.Tensor, positions: torch.Tensor, training: bool) -> torch.Tensor:
        """bec[i, a, b] = d mu_b / d r_{i,a} (e), by autograd (3 backward passes)."""
        columns: List[torch.Tensor] = []
        for b in range(3):
            grad_outputs: List[Optional[torch.Tensor]] = [torch.ones_like(dipole[:, b])]
            gradient = torch.autograd.grad(
                [dipole[:, b]], [positions], grad_outputs=grad_outputs,
                retain_graph=True, create_graph=training, allow_unused=True,
            )[0]
            if gradient is None:
                gradient = torch.zeros_like(positions)
            columns.append(gradient)
        return torch.stack(columns, dim=-1)


def build_macelr(
    backbone: ScaleShiftMACE,
    config: LongRangeConfig,
    element_charges: Optional[Mapping[int, float]] = None,
) -> MACELR:
    """Wrap ``backbone`` with the heads named in ``config`` (``()`` = short-range only)."""
    if not isinstance(backbone, ScaleShiftMACE):
        raise TypeError(f"MACELR needs a ScaleShiftMACE backbone, got {type(backbone).__name__}")
    irreps = layer_irreps(backbone)
    num_scalars = int(scalar_feature_indices(irreps).numel())
    atomic_numbers = [int(z) for z in backbone.atomic_numbers]
    heads = build_heads(config, num_scalars, atomic_numbers, float(backbone.r_max), element_charges)
    model = MACELR(backbone, heads, config)
    dtype = next(backbone.parameters()).dtype
    return model.to(dtype)


__all__ = ["MACELR", "build_macelr"]
