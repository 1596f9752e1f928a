"""MACELR: a MACE backbone (ScaleShiftMACE, a submodule) plus long-range heads.

Forward pass:

1. the backbone runs unchanged, asked only for its energy and node features (no
   gradients); with stress/virials requested it builds MACE's symmetric strain
   ``displacement``, from which we strain positions, cell and shifts for the heads.
   With ``ewald_mp`` the backbone's layers are run here instead
   (:meth:`MACELR._backbone_with_messages`, the same computation as ScaleShiftMACE's
   forward) so that reciprocal-space messages can be added after chosen layers;
2. each head (:mod:`mace_lr.heads`) gets the features and the strained geometry and
   returns its energy and atomic shares;
3. forces, virials and stress come from one autograd pass over the total energy with
   MACE's own ``get_outputs``, so they are exact for every head;
4. the constant-E field term -mu . F (:mod:`mace_lr.field`) when ``external_field`` is
   non-zero, or the constant-D term V/(2 eps0)|D - P|^2 when the batch carries
   ``displacement_field`` (periodic cells); dipole ``sum_i q_i r_i``; on request
   (``compute_bec``, or a batch that carries reference ``bec``) Born charges
   ``d mu_b / d r_{i,a}``, differentiable in the parameters when ``training``;
5. a field-conditioned model (:mod:`mace_lr.field_conditioning`) takes the field as an
   input of the backbone; its dipole is ``-dE/dF`` (the field is a leaf of the graph),
   its polarizability ``d mu_a / d F_b`` (``compute_polarizability``) and its Born
   charges ``d mu_b / d r_{i,a}`` of that dipole.

Without heads the backbone's outputs are returned as they are: bit-identical to plain
ScaleShiftMACE. The model keeps MACE's attributes (``r_max``, ``atomic_numbers``,
``heads``, ...) so MACE's calculator, training loop and tools accept it.
"""

from __future__ import annotations

from typing import Dict, List, Mapping, Optional, Tuple

import torch
from e3nn.util.jit import compile_mode
from mace.modules.models import ScaleShiftMACE
from mace.modules.utils import get_edge_vectors_and_lengths, get_outputs, prepare_graph
from mace.tools.scatter import scatter_sum

from .field import constant_d_energy, field_node_energy, internal_field
from .field_conditioning import FieldConditioning, build_field_conditioning
from .heads import LongRangeConfig, build_heads
from .heads.ewald_mp import EwaldMessagePassing, build_ewald_message_passing
from .heads.contract import graph_sum, layer_irreps, scalar_feature_indices


@compile_mode("script")
class MACELR(torch.nn.Module):
    """ScaleShiftMACE + long-range heads. Units: eV, Å, e, V/Å."""

    def __init__(self, backbone: ScaleShiftMACE, heads: List[torch.nn.Module], config: LongRangeConfig,
                 message_passing: Optional[EwaldMessagePassing] = None,
                 field_conditioning: Optional[FieldConditioning] = None) -> None:
        super().__init__()
        self.backbone = backbone
        self.long_range_heads = torch.nn.ModuleList(heads)
        # zero or one EwaldMessagePassing (a list, so TorchScript compiles both cases)
        self.message_passing = torch.nn.ModuleList([] if message_passing is None else [message_passing])
        # zero or one FieldConditioning (the field as an input of the backbone)
        self.field_conditioning = torch.nn.ModuleList([] if field_conditioning is None else [field_conditioning])
        self.field_conditioned = field_conditioning is not None
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
            "lode_smearing": config.lode_smearing,
            "lode_channels": config.lode_channels,
            "ewald_mp_layers": list(config.ewald_mp_layers),
            "ewald_mp_channels": config.ewald_mp_channels,
            "ewald_mp_smearings": list(config.ewald_mp_smearings),
            "field_conditioned": config.field_conditioned,
            "field_layers": list(config.field_layers),
            "wannier_ion_charges": [list(pair) for pair in config.wannier_ion_charges],
            "wannier_centroid_charges": [list(pair) for pair in config.wannier_centroid_charges],
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
        compute_polarizability: bool = False,
    ) -> Dict[str, Optional[torch.Tensor]]:
        # a batch carrying reference Born charges (training with --bec_weight) asks for them
        compute_bec = compute_bec or ("bec" in data and (len(self.long_range_heads) > 0 or self.field_conditioned))
        compute_polarizability = compute_polarizability and self.field_conditioned
        if (len(self.long_range_heads) == 0 and len(self.message_passing) == 0 and not self.field_conditioned
                and not compute_bec):
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
        num_graphs = int(data["ptr"].numel()) - 1
        field_leaf = torch.zeros((num_graphs, 3), dtype=positions.dtype, device=positions.device)
        if self.field_conditioned:  # the field is a leaf: dipole = -dE/dF (views of it pass gradients to it)
            if "external_field" in data:
                field_leaf = data["external_field"].view(-1, 3).to(positions.dtype).detach().clone()
            field_leaf.requires_grad_(True)
            data["external_field"] = field_leaf
        need_strain = compute_virials or compute_stress or compute_displacement
        if len(self.message_passing) > 0 or self.field_conditioned:
            out = self._backbone_with_messages(data, need_strain)
        else:
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
        atom_dipoles = torch.zeros_like(positions)  # e·Å, from heads with dipoles (Wannier centroids)
        extra_electrostatic = torch.zeros_like(dipole_response[:, 0])  # eV, from heads that report it themselves
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
            if "dipoles" in result:
                atom_dipoles = atom_dipoles + result["dipoles"]
            if "electrostatic_energy" in result:
                extra_electrostatic = extra_electrostatic + result["electrostatic_energy"]

        charges = inputs["charges"]
        batch = data["batch"]
        electrostatic_energy = graph_sum(0.5 * charges * inputs["potential"], batch, num_graphs) + extra_electrostatic
        # strained positions, so that the field terms' stress is right too
        dipole = (graph_sum(charges.unsqueeze(-1) * inputs["positions"] + atom_dipoles, batch, num_graphs)
                  + dipole_response)
        field = inputs["external_field"]
        if "displacement_field" in data:
            node_field_energy, field = self._constant_d(data, dipole, strained_cell, inputs["pbc"], batch, field)
        else:
            node_field_energy = field_node_energy(charges, inputs["positions"], field, batch) - (
                atom_dipoles * field[batch]).sum(-1)
        field_energy = graph_sum(node_field_energy, batch, num_graphs)
        energy = energy + field_energy
        interaction_energy = interaction_energy + field_energy
        node_energy = node_energy + node_field_energy.to(node_energy.dtype)

        need_graph = training or compute_bec or compute_polarizability
        if self.field_conditioned:
            dipole = self._field_derivative(energy, field_leaf, need_graph)
        forces, virials, stress, _, _ = get_outputs(
            energy=interaction_energy,
            positions=positions,
            displacement=displacement,
            vectors=None,
            cell=cell,
            training=need_graph,
            compute_force=compute_force,
            compute_virials=compute_virials,
            compute_stress=compute_stress,
        )
        bec: Optional[torch.Tensor] = None
        if compute_bec:
            bec = self._born_charges(dipole, positions, training)
        polarizability: Optional[torch.Tensor] = None
        if compute_polarizability:
            polarizability = self._polarizability(dipole, field_leaf, training)
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
            "field": field,
            "bec": bec,
            "polarizability": polarizability,
        }

    def _constant_d(self, data: Dict[str, torch.Tensor], dipole: torch.Tensor, cell: torch.Tensor, pbc: torch.Tensor,
                    batch: torch.Tensor, field: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        """Per-atom shares of V/(2 eps0)|D - P|^2 (spread evenly) and the internal field (V/Å)."""
        if self.field_conditioned:
            raise RuntimeError("constant D is not available for field-conditioned models (their dipole is -dE/dF "
                               "at a given field, which constant D would have to solve for self-consistently)")
        if bool((field != 0.0).any()):
            raise RuntimeError("give either external_field (constant E) or displacement_field (constant D), not both")
        if not bool(pbc.all()):
            raise RuntimeError("constant D needs 3D-periodic cells: D fixes the macroscopic field of a periodic "
                               "crystal; for a finite system use constant E (external_field)")
        displacement_field = data["displacement_field"].view(-1, 3).to(dipole.dtype)
        energy = constant_d_energy(dipole, cell, displacement_field)
        counts = (data["ptr"][1:] - data["ptr"][:-1]).to(energy.dtype)
        return (energy / counts)[batch], internal_field(dipole, cell, displacement_field)

    def _field_derivative(self, energy: torch.Tensor, field: torch.Tensor, create_graph: bool) -> torch.Tensor:
        """-dE/dF [G, 3] (e·Å): the dipole of a field-conditioned model."""
        grad_outputs: List[Optional[torch.Tensor]] = [torch.ones_like(energy)]
        gradient = torch.autograd.grad([energy], [field], grad_outputs=grad_outputs, retain_graph=True,
                                       create_graph=create_graph, allow_unused=True)[0]
        if gradient is None:
            gradient = torch.zeros_like(field)
        return -gradient

    def _polarizability(self, dipole: torch.Tensor, field: torch.Tensor, training: bool) -> torch.Tensor:
        """alpha[g, a, b] = d mu_a / d F_b (e·Å^2/V), by autograd (3 backward passes)."""
        rows: List[torch.Tensor] = []
        for a in range(3):
            grad_outputs: List[Optional[torch.Tensor]] = [torch.ones_like(dipole[:, a])]
            gradient = torch.autograd.grad([dipole[:, a]], [field], grad_outputs=grad_outputs, retain_graph=True,
                                           create_graph=training, allow_unused=True)[0]
            if gradient is None:
                gradient = torch.zeros_like(field)
            rows.append(gradient)
        return torch.stack(rows, dim=1)

    def _backbone_with_messages(self, data: Dict[str, torch.Tensor], need_strain: bool) -> Dict[str, Optional[torch.Tensor]]:
        """ScaleShiftMACE's forward (energies and features, no derivatives) with the ewald_mp
        messages and the field input added to the node features after the chosen layers."""
        ctx = prepare_graph(data, compute_displacement=need_strain)
        num_graphs = ctx.num_graphs
        node_heads = ctx.node_heads.to(torch.int64)
        num_atoms_arange = ctx.num_atoms_arange.to(torch.int64)
        node_e0 = self.backbone.atomic_energies_fn(data["node_attrs"])[num_atoms_arange, node_heads]
        e0 = scatter_sum(src=node_e0, index=data["batch"], dim=0, dim_size=num_graphs).to(ctx.vectors.dtype)
        node_feats = self.backbone.node_embedding(data["node_attrs"])
        edge_attrs = self.backbone.spherical_harmonics(ctx.vectors)
        edge_feats, cutoff = self.backbone.radial_embedding(
            ctx.lengths, data["node_attrs"], data["edge_index"], self.backbone.atomic_numbers)
        positions = data["positions"]  # strained by prepare_graph when need_strain
        cell = data["cell"].view(-1, 3, 3)
        displacement = ctx.displacement
        if need_strain and displacement is not None:
            cell = cell + torch.matmul(cell, 0.5 * (displacement + displacement.transpose(-1, -2)))
        pbc = self._pbc(data, cell)
        node_es_list: List[torch.Tensor] = [torch.zeros_like(node_e0)]
        node_feats_list: List[torch.Tensor] = []
        for i, (interaction, product) in enumerate(zip(self.backbone.interactions, self.backbone.products)):
            node_feats, sc = interaction(
                node_attrs=data["node_attrs"], node_feats=node_feats, edge_attrs=edge_attrs, edge_feats=edge_feats,
                edge_index=data["edge_index"], cutoff=cutoff, first_layer=(i == 0),
                lammps_class=ctx.interaction_kwargs.lammps_class, lammps_natoms=ctx.interaction_kwargs.lammps_natoms)
            node_feats = product(node_feats=node_feats, sc=sc, node_attrs=data["node_attrs"])
            for block in self.message_passing:
                node_feats = block.apply(i, node_feats, positions, cell, pbc, data["batch"], data["ptr"])
            for conditioning in self.field_conditioning:
                node_feats = conditioning.apply(i, node_feats, data["external_field"].view(-1, 3), data["batch"])
            node_feats_list.append(node_feats)
        for i, readout in enumerate(self.backbone.readouts):
            feat_idx = -1 if len(self.backbone.readouts) == 1 else i
            node_es_list.append(readout(node_feats_list[feat_idx], node_heads)[num_atoms_arange, node_heads])
        node_inter_es = self.backbone.scale_shift(torch.sum(torch.stack(node_es_list, dim=0), dim=0), node_heads)
        inter_e = scatter_sum(src=node_inter_es, index=data["batch"], dim=-1, dim_size=num_graphs)
        return {
            "energy": e0 + inter_e,
            "node_energy": node_e0.clone().double() + node_inter_es.clone().double(),
            "interaction_energy": inter_e,
            "node_feats": torch.cat(node_feats_list, dim=-1),
            "displacement": displacement,
        }

    def _pbc(self, data: Dict[str, torch.Tensor], cell: torch.Tensor) -> torch.Tensor:
        """[G, 3] bool; without a ``pbc`` key a cell with volume means periodic."""
        if "pbc" in data:
            return data["pbc"].view(-1, 3).to(torch.bool)
        return (torch.linalg.det(cell).abs() > 1e-6).unsqueeze(-1).expand(cell.shape[0], 3)

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
        pbc = self._pbc(data, cell)
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
    heads = build_heads(config, num_scalars, atomic_numbers, float(backbone.r_max), element_charges, irreps)
    message_passing = None
    if "ewald_mp" in config.heads:
        message_passing = build_ewald_message_passing(
            backbone, irreps, config.ewald_mp_layers, config.ewald_mp_channels, config.ewald_mp_smearings,
            config.accuracy, config.method)
    field_conditioning = None
    if config.field_conditioned:
        field_conditioning = build_field_conditioning(irreps, config.field_layers)
    model = MACELR(backbone, heads, config, message_passing, field_conditioning)
    dtype = next(backbone.parameters()).dtype
    return model.to(dtype)


__all__ = ["MACELR", "build_macelr"]
