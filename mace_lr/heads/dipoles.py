"""Head ``dipoles``: implicit polarization as Wannier centroids (DPLR style, deepmd-kit),
or as atomic Gaussian dipoles (:class:`AtomicDipoleHead`, ``--dipoles_mode atomic``).

Every atom of a centroid species (e.g. O in water) carries one Wannier centroid of fixed
charge q_c (e.g. 4 centroids x -2 e = -8 e on O, as one centroid) at

    w_i = r_i + d_i,      d_i = W h_i^(1o)      (Å; an equivariant linear map of the
                                                 backbone's l=1 features, all layers)

and every atom a fixed ionic charge Z_i (e.g. O +6, H +1). The long-range energy is the
Coulomb energy of this point system with Gaussian clouds of std ``width`` (Å),

    E = k_e / 2 sum_{a != b} q_a q_b erf(|x_a - x_b| / (2 width)) / |x_a - x_b|

over ions and centroids, minus each atom's constant ion-own-centroid term at zero
displacement, k_e Z_i q_c,i / (sqrt(pi) width) (what remains of that pair is
-k_e Z q d^2 / (12 sqrt(pi) width^3) + O(d^4): a restoring spring for the centroid;
lattice images included in periodic cells; torch-pme k-space
only, which is exact for Gaussian clouds, see :mod:`mace_lr.electrostatics.smeared`;
the exact pair sum in open boundaries). The head reports the net atomic charges
Z_i + q_c,i (``charges``), the atomic dipoles q_c,i d_i (``dipoles``, e·Å; MACELR adds
them to the dipole, the field term -p.F and the polarization) and its energy as
``electrostatic_energy``. Born charges follow from d mu / d r by autograd.

The ionic and centroid charges must add up to each structure's total charge (checked).
The centroids' charges are fixed, so the head does not combine with other charge heads.
"""

from __future__ import annotations

import math
from typing import Dict, Mapping, Sequence

import torch
from e3nn import o3

from ..electrostatics.gaussian_dipoles import GaussianChargesAndDipoles
from ..electrostatics.smeared import SmearedPotential
from ..electrostatics.units import COULOMB_CONSTANT
from .contract import graph_sum

#: Scale of the displacement map at initialisation (Å per unit feature): centroids start near the atoms.
INITIAL_DISPLACEMENT_SCALE = 0.01


def check_total_charge(net: torch.Tensor, batch: torch.Tensor, num_graphs: int, total_charge: torch.Tensor) -> None:
    """RuntimeError unless the fixed charges [N] (e) of every structure add up to its total_charge [G]."""
    sums = graph_sum(net, batch, num_graphs)
    excess = sums - total_charge
    if bool((excess.abs() > 1e-6).any()):
        worst = int(torch.argmax(excess.abs()))
        raise RuntimeError(
            "dipoles head: ionic plus centroid charges of structure " + str(worst) + " add up to "
            + str(float(sums[worst])) + " e but its total charge is " + str(float(total_charge[worst]))
            + " e; fix total_charge in the data or the --wannier_ion_charges / --wannier_centroid_charges")


def _vector_irreps(irreps_per_layer: Sequence[str]) -> o3.Irreps:
    """All layers' node irreps; ValueError without l=1 (1o) features."""
    node_irreps = o3.Irreps("+".join(str(o3.Irreps(text)) for text in irreps_per_layer))
    if not any(ir.l == 1 and ir.p == -1 for _, ir in node_irreps):
        raise ValueError("the dipoles head needs l=1 (1o) node features: train with --max_L >= 1 "
                         f"(the backbone's layers have {', '.join(irreps_per_layer)})")
    return node_irreps


class WannierCentroidHead(torch.nn.Module):
    """Ions plus displaced Wannier centroids; see the module docstring. Units: eV, Å, e."""

    def __init__(self, irreps_per_layer: Sequence[str], ion_charges: torch.Tensor, centroid_charges: torch.Tensor,
                 width: float, accuracy: float) -> None:
        super().__init__()
        node_irreps = _vector_irreps(irreps_per_layer)
        if not width > 0.0:
            raise ValueError(f"the dipoles head needs Gaussian clouds of width > 0 Å, got {width}")
        self.displacement = o3.Linear(node_irreps, o3.Irreps("1x1o"))
        with torch.no_grad():
            for parameter in self.displacement.parameters():
                parameter.mul_(INITIAL_DISPLACEMENT_SCALE)
        self.register_buffer("ion_charges", ion_charges)
        self.register_buffer("centroid_charges", centroid_charges)
        # point probes of clouds of std sqrt(2) width: the interaction of two clouds of std width
        self.potential = SmearedPotential(2.0 ** 0.5 * width, accuracy)
        self.width = float(width)
        self.coulomb_constant = COULOMB_CONSTANT

    def extra_repr(self) -> str:
        return f"width={self.width}"

    def forward(self, inputs: Dict[str, torch.Tensor]) -> Dict[str, torch.Tensor]:
        positions = inputs["positions"]
        batch = inputs["batch"]
        ptr = inputs["ptr"]
        num_graphs = int(ptr.numel()) - 1
        node_attrs = inputs["node_attrs"].to(positions.dtype)
        ions = node_attrs @ self.ion_charges.to(positions.dtype)
        centroids = node_attrs @ self.centroid_charges.to(positions.dtype)
        net = ions + centroids
        check_total_charge(net, batch, num_graphs, inputs["total_charge"])
        has_centroid = centroids != 0.0
        displacement = self.displacement(inputs["node_feats"]) * has_centroid.to(positions.dtype).unsqueeze(-1)
        owner = torch.nonzero(has_centroid).view(-1)  # atoms that carry a centroid
        n_atoms = positions.shape[0]
        # sites: the atoms, then the centroids; sorted stably by structure so each is contiguous
        site_graph = torch.cat([batch, batch[owner]])
        order = torch.sort(site_graph, stable=True)[1]
        sites = torch.cat([positions, positions[owner] + displacement[owner]])[order]
        weights = torch.cat([ions, centroids[owner]])[order].unsqueeze(-1)
        counts = torch.zeros(num_graphs, dtype=torch.long, device=positions.device).index_add(
            0, site_graph, torch.ones_like(site_graph))
        site_ptr = torch.cat([torch.zeros(1, dtype=torch.long, device=positions.device), torch.cumsum(counts, 0)])
        potential, _ = self.potential(weights, sites, inputs["cell"], inputs["pbc"], site_ptr, False)
        sorted_energy = 0.5 * self.coulomb_constant * (weights * potential).squeeze(-1)
        site_energy = torch.zeros_like(sorted_energy).index_copy(0, order, sorted_energy)
        node_energy = site_energy[:n_atoms].index_add(0, owner, site_energy[n_atoms:])  # an atom and its centroid
        # the ion-own-centroid pair at zero displacement (a constant, hundreds of eV for water) is removed
        node_energy = node_energy - self.coulomb_constant * ions * centroids / (math.sqrt(math.pi) * self.width)
        energy = graph_sum(node_energy, batch, num_graphs)
        return {
            "energy": energy,
            "node_energy": node_energy,
            "charges": net,
            "dipoles": centroids.unsqueeze(-1) * displacement,
            "electrostatic_energy": energy,
        }


class AtomicDipoleHead(torch.nn.Module):
    """A Gaussian dipole p_i = W h_i^(1o) (e·Å) on every atom, plus fixed ionic charges Z_i (e).

    Energy: :class:`~mace_lr.electrostatics.gaussian_dipoles.GaussianChargesAndDipoles`
    (clouds of std ``width``; charge-charge, charge-dipole and dipole-dipole terms, and
    each dipole's self-energy k_e p^2 / (12 sqrt(pi) w^3) as a restoring spring; open
    boundaries or 3D-periodic, tin-foil). Outputs as the centroid head: ``charges`` Z_i,
    ``dipoles`` p_i (added to the dipole, the field term and the polarization by MACELR).
    """

    def __init__(self, irreps_per_layer: Sequence[str], ion_charges: torch.Tensor, width: float,
                 accuracy: float) -> None:
        super().__init__()
        if not width > 0.0:
            raise ValueError(f"atomic Gaussian dipoles need a width > 0 Å (--lr_charge_width), got {width}")
        self.dipole_map = o3.Linear(_vector_irreps(irreps_per_layer), o3.Irreps("1x1o"))
        with torch.no_grad():
            for parameter in self.dipole_map.parameters():
                parameter.mul_(INITIAL_DISPLACEMENT_SCALE)
        self.register_buffer("ion_charges", ion_charges)
        self.electrostatics = GaussianChargesAndDipoles(width, accuracy)
        self.width = float(width)
        self.coulomb_constant = COULOMB_CONSTANT

    def extra_repr(self) -> str:
        return f"width={self.width}"

    def forward(self, inputs: Dict[str, torch.Tensor]) -> Dict[str, torch.Tensor]:
        positions = inputs["positions"]
        batch = inputs["batch"]
        num_graphs = int(inputs["ptr"].numel()) - 1
        ions = inputs["node_attrs"].to(positions.dtype) @ self.ion_charges.to(positions.dtype)
        check_total_charge(ions, batch, num_graphs, inputs["total_charge"])
        dipoles = self.dipole_map(inputs["node_feats"])
        node_energy = self.coulomb_constant * self.electrostatics(ions, dipoles, positions, inputs["cell"],
                                                                  inputs["pbc"], inputs["ptr"])
        energy = graph_sum(node_energy, batch, num_graphs)
        return {
            "energy": energy,
            "node_energy": node_energy,
            "charges": ions,
            "dipoles": dipoles,
            "electrostatic_energy": energy,
        }


def element_table(values: Mapping[int, float], atomic_numbers: Sequence[int], what: str) -> torch.Tensor:
    """[num_elements] charges (e) in the order of ``atomic_numbers``; ValueError for unknown elements."""
    unknown = sorted(set(values) - set(int(z) for z in atomic_numbers))
    if unknown:
        raise ValueError(f"{what} name elements {unknown} that the model does not have ({list(atomic_numbers)})")
    return torch.tensor([float(values.get(int(z), 0.0)) for z in atomic_numbers], dtype=torch.float64)


def build_dipoles_head(irreps_per_layer: Sequence[str], atomic_numbers: Sequence[int],
                       ion_charges: Mapping[int, float], centroid_charges: Mapping[int, float], width: float,
                       accuracy: float, mode: str = "centroids") -> torch.nn.Module:
    """Wannier-centroid head (``mode="centroids"``: at least one species carries a centroid) or
    atomic Gaussian dipoles (``mode="atomic"``)."""
    ions = element_table(ion_charges, atomic_numbers, "ion charges")
    if mode == "atomic":
        return AtomicDipoleHead(irreps_per_layer, ions, width, accuracy)
    if not any(q != 0.0 for q in centroid_charges.values()):
        raise ValueError("the dipoles head needs centroid charges for at least one element, e.g. "
                         "--wannier_centroid_charges 8:-8 (water: O carries -8 e, ions O:6 H:1)")
    return WannierCentroidHead(irreps_per_layer, ions, element_table(centroid_charges, atomic_numbers,
                                                                      "centroid charges"), width, accuracy)
