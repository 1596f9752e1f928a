"""The electrostatics engine: energies, potentials and fields of charges and dipoles.

One call handles a batch of structures; each structure gets the method its ``pbc``
allows: the exact direct sum for open boundaries (pbc all False), Ewald or PME
(torch-pme) for 3D periodic cells, and the 3D sum plus a dipole correction for slabs
(two periodic directions). ``method="auto"`` takes Ewald below
:data:`PME_THRESHOLD` atoms and PME above.

Units: positions and cells Å, charges e, dipoles e·Å; energy eV, potential V
(= eV/e, the derivative dE/dq_i), field V/Å (the field of all *other* sites at atom i,
so that the force on a charge is q_i E_i and dE/dmu_i = -E_i).
"""

from __future__ import annotations

import torch

from .direct import direct_sum
from .parameters import KSpaceParameters, choose_parameters
from .periodic import periodic_charge_dipole_sum, periodic_charge_sum
from .units import COULOMB_CONSTANT
from .validation import (
    ElectrostaticsInputError,
    check_cell,
    check_finite,
    check_shapes,
    check_widths,
    check_slab_cell,
    warn_if_charged,
)

#: Atom count from which ``method="auto"`` uses PME instead of Ewald (see benchmarks).
PME_THRESHOLD = 3000

METHODS = ("auto", "direct", "ewald", "pme")


class Electrostatics(torch.nn.Module):
    """Coulomb energy of (Gaussian-smeared) charges and point dipoles, batched.

    :param method: ``auto``, ``direct`` (open boundaries only), ``ewald`` or ``pme``.
        Non-periodic structures always use the direct sum.
    :param smearing: Gaussian width (std, Å) of every charge; 0 for point charges.
        The self-energy of each Gaussian is excluded. ``forward(widths=...)`` takes
        per-atom widths instead (e.g. learned per element).
    :param accuracy: target relative error of forces and energy (see
        :mod:`mace_lr.electrostatics.parameters`).
    :param parameters: fixed Ewald/PME settings for every periodic structure, instead
        of choosing them per structure from ``accuracy``.
    """

    def __init__(
        self,
        method: str = "auto",
        smearing: float = 0.0,
        accuracy: float = 1e-6,
        parameters: KSpaceParameters | None = None,
    ) -> None:
        super().__init__()
        if method not in METHODS:
            raise ValueError(f"method must be one of {METHODS}, got {method!r}")
        if smearing < 0.0:
            raise ValueError(f"smearing must be >= 0 Å, got {smearing}")
        if not 0.0 < accuracy < 1.0:
            raise ValueError(f"accuracy must be in (0, 1), got {accuracy}")
        self.method = method
        self.smearing = float(smearing)
        self.accuracy = float(accuracy)
        self.parameters = parameters

    def periodic_method(self, n_atoms: int) -> str:
        """The k-space method used for a periodic structure of ``n_atoms``."""
        if self.parameters is not None:
            return self.parameters.method
        if self.method == "auto":
            return "pme" if n_atoms >= PME_THRESHOLD else "ewald"
        return self.method

    def forward(
        self,
        positions: torch.Tensor,
        charges: torch.Tensor,
        cell: torch.Tensor | None = None,
        pbc: torch.Tensor | None = None,
        batch: torch.Tensor | None = None,
        dipoles: torch.Tensor | None = None,
        compute_field: bool = False,
        widths: torch.Tensor | None = None,
    ) -> dict[str, torch.Tensor]:
        """Energy [G] (eV), potential [N] (V) and, on request, field [N, 3] (V/Å).

        ``cell`` [G, 3, 3] (rows are lattice vectors), ``pbc`` [G, 3] bool, ``batch``
        [N] graph index of every atom (sorted). Defaults: one non-periodic structure.
        ``widths`` [N]: Gaussian width of every charge (Å, >= 0; differentiable),
        replacing the module's uniform ``smearing``.
        """
        n_atoms = positions.shape[0]
        if batch is None:
            batch = torch.zeros(n_atoms, dtype=torch.long, device=positions.device)
        n_graphs = int(batch.max()) + 1 if n_atoms > 0 else 0
        if cell is None:
            cell = positions.new_zeros(max(n_graphs, 1), 3, 3)
        if pbc is None:
            pbc = torch.zeros(cell.shape[0], 3, dtype=torch.bool, device=positions.device)
        pbc = pbc.to(torch.bool)
        charges = charges.to(positions.dtype)
        cell = cell.to(positions.dtype)
        if dipoles is not None:
            dipoles = dipoles.to(positions.dtype)
        if widths is None and self.smearing > 0.0:
            widths = torch.full_like(charges, self.smearing)
        if widths is not None:
            widths = widths.to(positions.dtype)
            check_widths(widths, n_atoms)
        check_shapes(positions, charges, cell, pbc, batch, dipoles)
        check_finite("positions", positions)
        check_finite("charges", charges)
        if dipoles is not None:
            check_finite("dipoles", dipoles)

        energies = []
        potentials = []
        fields = []
        counts = torch.bincount(batch, minlength=cell.shape[0]).tolist()
        start = 0
        for graph, count in enumerate(counts):
            atoms = slice(start, start + count)
            start += count
            energy, potential, field = self._one_structure(
                positions[atoms],
                charges[atoms],
                None if dipoles is None else dipoles[atoms],
                None if widths is None else widths[atoms],
                cell[graph],
                pbc[graph],
                compute_field,
                graph,
            )
            energies.append(energy)
            potentials.append(potential)
            if field is not None:
                fields.append(field)
        k_e = COULOMB_CONSTANT
        out = {
            "energy": k_e * torch.stack(energies) if energies else positions.new_zeros(0),
            "potential": k_e * torch.cat(potentials) if potentials else positions.new_zeros(0),
        }
        if compute_field:
            out["field"] = k_e * torch.cat(fields) if fields else positions.new_zeros(0, 3)
        return out

    def _one_structure(
        self,
        positions: torch.Tensor,
        charges: torch.Tensor,
        dipoles: torch.Tensor | None,
        widths: torch.Tensor | None,
        cell: torch.Tensor,
        pbc: torch.Tensor,
        compute_field: bool,
        graph: int,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        """Energy, potential, field of one structure in Gaussian units (k_e = 1)."""
        n_periodic = int(pbc.sum())
        if positions.shape[0] == 0:
            return positions.new_zeros(()), positions.new_zeros(0), positions.new_zeros(0, 3)
        if n_periodic == 0:
            return direct_sum(positions, charges, dipoles, widths, compute_field, graph)
        if self.method == "direct":
            raise ElectrostaticsInputError(
                f"structure {graph} is periodic (pbc={pbc.tolist()}) but method='direct' "
                "sums open boundaries only; use method='auto', 'ewald' or 'pme'."
            )
        if n_periodic == 1:
            raise ElectrostaticsInputError(
                f"structure {graph} is periodic in one direction only (pbc={pbc.tolist()}); "
                "wire geometries are not supported: use a 3D cell with vacuum or pbc=False."
            )
        check_cell(cell, graph)
        if n_periodic == 2:
            check_slab_cell(cell, int(torch.nonzero(~pbc)[0]), graph)
            if dipoles is not None:
                raise ElectrostaticsInputError(
                    f"structure {graph}: point dipoles in slab geometry are not supported; "
                    "use 3D periodic boundaries (dipoles with tin-foil Ewald) or pbc=False."
                )
        warn_if_charged(float(charges.detach().sum()), graph)
        params = self.parameters or choose_parameters(
            self.periodic_method(positions.shape[0]), positions, charges, cell, self.accuracy
        )
        if dipoles is None:
            potential, field = periodic_charge_sum(
                positions, charges, cell, pbc, params, widths, self.accuracy,
                compute_field, graph,
            )
            return 0.5 * (charges * potential).sum(), potential, field
        dipole_params = params
        if params.method != "ewald":  # torch-pme sums dipoles with Ewald only
            dipole_params = choose_parameters("ewald", positions, charges, cell, self.accuracy)
        return periodic_charge_dipole_sum(
            positions, charges, dipoles, cell, pbc, params, dipole_params,
            widths, self.accuracy, graph,
        )


__all__ = ["Electrostatics", "PME_THRESHOLD", "METHODS"]
