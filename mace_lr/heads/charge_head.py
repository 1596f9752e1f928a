"""Coulomb energy of per-atom charges read out from the backbone (shared by charge heads).

The head adds its charges q to the charges Q of earlier heads and returns the energy
*increment* E_C(Q + q) - E_C(Q), so that any combination of charge heads gives exactly
the Coulomb energy of the total charges (no double counting, cross terms included).
Its charges sum to ``total_charge - sum(Q)`` per graph: the first charge head carries
the total charge, later ones are neutral.
"""

from __future__ import annotations

from typing import Dict

import torch

from ..electrostatics.graph import GraphCoulomb
from .contract import constrain_total_charge, graph_sum
from .readouts import ScalarReadout


class ChargeHead(torch.nn.Module):
    """q_i = readout(h_i), constrained to the graph's charge; E = Coulomb increment (eV)."""

    def __init__(self, readout: ScalarReadout, coulomb: GraphCoulomb) -> None:
        super().__init__()
        self.readout = readout
        self.coulomb = coulomb

    def forward(self, inputs: Dict[str, torch.Tensor]) -> Dict[str, torch.Tensor]:
        batch = inputs["batch"]
        ptr = inputs["ptr"]
        num_graphs = int(ptr.numel()) - 1
        previous = inputs["charges"]
        previous_potential = inputs["potential"]
        remaining = inputs["total_charge"] - graph_sum(previous, batch, num_graphs)
        raw = self.readout(inputs["node_scalars"], inputs["node_attrs"])
        charges = constrain_total_charge(raw, remaining, batch, ptr)
        total = previous + charges
        potential = self.coulomb(
            total, inputs["positions"], inputs["cell"], inputs["pbc"], ptr,
            inputs["edge_index"], inputs["edge_lengths"],
        )
        node_energy = 0.5 * (total * potential - previous * previous_potential)
        return {
            "energy": graph_sum(node_energy, batch, num_graphs),
            "node_energy": node_energy,
            "charges": charges,
            "potential": potential,
        }
