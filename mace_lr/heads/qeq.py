"""Head ``qeq``: self-consistent charge equilibration (4G-HDNNP style).

Learned pieces: the electronegativity chi_i = f(h_i) + b_Z (V, a readout of the
backbone's invariant features), a hardness J_Z = softplus(a_Z) >= 0 (eV/e^2) and a
Gaussian width s_Z = s_max * sigmoid(c_Z) (Å) per element. The charges minimise

    E(q) = sum_i (chi_i - r_i . F) q_i + 1/2 sum_i J_i q_i^2 + 1/2 q^T C(s) q

under sum_i q_i = Q (``total_charge``) for each structure, with C the Coulomb matrix of
:mod:`mace_lr.electrostatics.qeq` (periodic images and Gaussian self-energies
included; periodic sums planned per structure by the k-space layer, independent of the
backbone's r_max, so any width works in crystals) and F the external field (the model
adds the -q.r.F term itself). The head's energy is E(q) without the field term. Charges are therefore global: they move
between fragments however far apart, and they depend on the total charge.

Solver per structure: ``dense`` (differentiable Cholesky; always used when training)
or ``iterative`` (conjugate gradients, no graph; forces and stress stay exact because
E is stationary in q, and Born charges come from the adjoint solve); ``auto`` takes the
dense solver up to ``dense_max_atoms`` atoms when its estimated memory is below
:data:`DENSE_MAX_BYTES` (a periodic cell holds the k-space sums once per atom: 768 atoms
with a fine PME mesh would need ~100 GB), else CG; training refuses such structures with
a clear error instead of running out of memory. The head carries the whole charge of the
structure, so it cannot be combined with the ``charges`` or ``latent`` heads.
"""

from __future__ import annotations

import math
from typing import Dict, List, Sequence

import torch

from ..electrostatics.kspace import slab_cell
from ..electrostatics.qeq import GaussianCoulombOperator, default_max_width
from .contract import graph_sum
from .readouts import ScalarReadout

#: Initial hardness (eV/e^2) and width (fraction of the maximum width) of every element.
INITIAL_HARDNESS = 2.0
INITIAL_WIDTH_FRACTION = 0.75
#: Largest estimated memory (bytes) of a dense solve: ``auto`` switches to CG above it.
DENSE_MAX_BYTES = 4.0e9


class QEqHead(torch.nn.Module):
    """Charge equilibration head; see the module docstring. Units: eV, e, Å, V."""

    def __init__(
        self,
        readout: ScalarReadout,
        operator: GaussianCoulombOperator,
        num_elements: int,
        max_width: float,
        solver: str = "auto",
        dense_max_atoms: int = 1000,
        tolerance: float = 1e-8,
        max_iterations: int = 1000,
    ) -> None:
        super().__init__()
        if solver not in ("auto", "dense", "iterative"):
            raise ValueError(f"qeq solver {solver!r} unknown; use auto, dense or iterative")
        if not max_width > 0.0:
            raise ValueError(f"qeq maximum width must be > 0 Å, got {max_width}")
        self.readout = readout
        self.operator = operator
        self.max_width = float(max_width)
        self.solver = solver
        self.dense_max_atoms = int(dense_max_atoms)
        self.dense_max_bytes = DENSE_MAX_BYTES
        self.tolerance = float(tolerance)
        self.max_iterations = int(max_iterations)
        hardness = math.log(math.expm1(INITIAL_HARDNESS))  # inverse softplus
        width = math.log(INITIAL_WIDTH_FRACTION / (1.0 - INITIAL_WIDTH_FRACTION))  # inverse sigmoid
        self.raw_hardness = torch.nn.Parameter(torch.full((num_elements,), hardness))
        self.raw_width = torch.nn.Parameter(torch.full((num_elements,), width))

    def extra_repr(self) -> str:
        return (f"max_width={self.max_width}, solver={self.solver!r}, dense_max_atoms={self.dense_max_atoms}, "
                f"tolerance={self.tolerance}")

    def element_hardness(self) -> torch.Tensor:
        """J_Z [num_elements] (eV/e^2)."""
        return torch.nn.functional.softplus(self.raw_hardness)

    def element_width(self) -> torch.Tensor:
        """s_Z [num_elements] (Å)."""
        return self.max_width * torch.sigmoid(self.raw_width)

    def forward(self, inputs: Dict[str, torch.Tensor]) -> Dict[str, torch.Tensor]:
        batch = inputs["batch"]
        ptr = inputs["ptr"]
        positions = inputs["positions"]
        node_attrs = inputs["node_attrs"].to(positions.dtype)
        num_graphs = int(ptr.numel()) - 1
        chi = self.readout(inputs["node_scalars"], inputs["node_attrs"])
        hardness = node_attrs @ self.element_hardness()
        widths = node_attrs @ self.element_width()
        field_potential = -(positions * inputs["external_field"][batch]).sum(-1)
        effective_chi = chi + field_potential
        remaining = inputs["total_charge"] - graph_sum(inputs["charges"], batch, num_graphs)
        training = bool(inputs["training"])
        want_response = bool(inputs["compute_response"])
        # the operator finds its own pairs (periodic: within the k-space plan's cutoff, not r_max)
        local_edges = inputs["edge_index"][:, :0]
        local_lengths = inputs["edge_lengths"][:0]
        charges: List[torch.Tensor] = []
        potentials: List[torch.Tensor] = []
        responses: List[torch.Tensor] = []
        for g in range(num_graphs):
            start = int(ptr[g])
            stop = int(ptr[g + 1])
            dense = training or self.solver == "dense"
            # slabs: no more vacuum than the accuracy needs (MACE stores inflated non-periodic vectors)
            cell = slab_cell(positions[start:stop], inputs["cell"][g], inputs["pbc"][g], self.operator.accuracy)
            if self.solver == "auto" or training:
                memory = self.operator.dense_memory_bytes(stop - start, cell, inputs["pbc"][g],
                                                          positions[start:stop], widths[start:stop])
                if training and memory > self.dense_max_bytes:
                    raise RuntimeError(
                        "qeq: the dense charge equilibration that training needs would take about "
                        + str(int(memory / 1e9)) + " GB for a structure of " + str(stop - start) + " atoms "
                        "(periodic cells hold the k-space sums once per atom); train on smaller cells")
                dense = dense or (stop - start <= self.dense_max_atoms and memory <= self.dense_max_bytes)
            # with the iterative solver, the Born-charge adjoint is solved in the same CG run as the charges
            result = self.operator.equilibrate(
                effective_chi[start:stop], hardness[start:stop], remaining[g], positions[start:stop],
                widths[start:stop], cell, inputs["pbc"][g], local_edges, local_lengths,
                dense, self.tolerance, self.max_iterations, want_response and not dense)
            charges.append(result["charges"])
            potentials.append(result["potential"])
            responses.append(result["response"])
        q = torch.cat(charges)
        coulomb_potential = torch.cat(potentials)  # C q, V, Gaussian self-energy included
        node_energy = chi * q + 0.5 * hardness * q * q + 0.5 * q * coulomb_potential
        interaction_potential = coulomb_potential - self.operator.coulomb_constant * q / (math.sqrt(math.pi) * widths)
        return {
            "energy": graph_sum(node_energy, batch, num_graphs),
            "node_energy": node_energy,
            "charges": q,
            "potential": interaction_potential,
            "electronegativity": chi,
            "dipole_response": torch.stack(responses),
        }


def build_qeq_head(
    num_scalars: int,
    atomic_numbers: Sequence[int],
    cutoff: float,
    accuracy: float,
    hidden: int,
    max_width: float | None,
    solver: str,
    dense_max_atoms: int,
    tolerance: float,
    method: str = "auto",
) -> QEqHead:
    """QEq head; its largest Gaussian width is ``max_width`` (Å), or
    :func:`~mace_lr.electrostatics.qeq.default_max_width` (the former periodic limit for
    r_max = ``cutoff``, at most 1 Å; periodic sums no longer limit it)."""
    operator = GaussianCoulombOperator(cutoff=cutoff, accuracy=accuracy, method="auto" if method == "direct" else method)
    width = default_max_width(cutoff, accuracy) if max_width is None else float(max_width)
    readout = ScalarReadout(num_scalars, hidden, len(atomic_numbers), None, learn_offsets=True)
    return QEqHead(readout, operator, len(atomic_numbers), width, solver, dense_max_atoms, tolerance)
