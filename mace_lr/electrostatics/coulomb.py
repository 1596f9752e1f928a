"""The electrostatics engine: energies, potentials and fields of charges and dipoles.

One call handles a batch of structures; each structure gets the method its ``pbc``
allows: the exact direct sum for open boundaries (pbc all False), and for 3D cells and
slabs (two periodic directions, slab correction) the one periodic Coulomb sum of the
package, :class:`.split_coulomb.PeriodicCoulomb` on the k-space layer (:mod:`.kspace`):
``method="auto"`` takes Ewald or PME, the splitting width and cutoffs by a measured cost
model for the requested accuracy (the same code the model heads run). Fields are
analytic. Point dipoles (3D only) add torch-pme's dipole Ewald sum.

Units: positions and cells Å, charges e, dipoles e·Å; energy eV, potential V
(= eV/e, the derivative dE/dq_i), field V/Å (the field of all *other* sites at atom i,
so that the force on a charge is q_i E_i and dE/dmu_i = -E_i).
"""

from __future__ import annotations

import math

import torch

from .direct import direct_sum
from .kspace import MEMORY_BUDGET, KSpacePlan, cell_geometry, mesh_shape
from .parameters import KSpaceParameters, choose_parameters
from .periodic import periodic_charge_dipole_sum
from .split_coulomb import PeriodicCoulomb
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

METHODS = ("auto", "direct", "ewald", "pme")


def plan_from_parameters(params: KSpaceParameters, cell: torch.Tensor) -> KSpacePlan:
    """Fixed legacy settings as a k-space plan: Ewald's wavelength lambda becomes the sphere
    |k| <= pi / lambda (torch-pme sums a box around it), PME's spacing an FFT-friendly mesh."""
    if params.method == "ewald":
        return KSpacePlan("ewald", params.smearing, params.cutoff, math.pi / params.lr_wavelength, [0, 0, 0], 0.0, 0.0)
    _, widths, _ = cell_geometry(cell)
    return KSpacePlan("pme", params.smearing, params.cutoff, 0.0, mesh_shape(widths, params.mesh_spacing, 6), 0.0, 0.0)


class Electrostatics(torch.nn.Module):
    """Coulomb energy of (Gaussian-smeared) charges and point dipoles, batched.

    :param method: ``auto``, ``direct`` (open boundaries only), ``ewald`` or ``pme``.
        Non-periodic structures always use the direct sum.
    :param smearing: Gaussian width (std, Å) of every charge; 0 for point charges.
        The self-energy of each Gaussian is excluded. ``forward(widths=...)`` takes
        per-atom widths instead (e.g. learned per element).
    :param accuracy: target relative RMS force error (relative to the Coulomb scale of
        neighbouring charges; see :mod:`mace_lr.electrostatics.kspace`).
    :param parameters: fixed Ewald/PME settings for every periodic structure
        (:class:`.kspace.KSpacePlan`, or legacy :class:`.parameters.KSpaceParameters`),
        instead of choosing them per structure from ``accuracy``.
    :param memory_budget: bytes one periodic sum may use; larger plans are refused.
    """

    def __init__(
        self,
        method: str = "auto",
        smearing: float = 0.0,
        accuracy: float = 1e-6,
        parameters: KSpacePlan | KSpaceParameters | None = None,
        memory_budget: float = MEMORY_BUDGET,
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
        self.coulomb = PeriodicCoulomb(accuracy, "auto" if method == "direct" else method, memory_budget)

    def plan(self, positions: torch.Tensor, cell: torch.Tensor, widths: torch.Tensor | None = None) -> KSpacePlan:
        """The k-space plan of one periodic structure (positions [N, 3] Å, cell [3, 3] Å)."""
        if isinstance(self.parameters, KSpaceParameters):
            return plan_from_parameters(self.parameters, cell)
        if self.parameters is not None:
            return self.parameters
        if widths is None:
            widths = torch.full((positions.shape[0],), self.smearing, dtype=positions.dtype)
        max_width = float(widths.detach().max()) if positions.shape[0] > 0 else 0.0
        return self.coulomb.plan(positions, cell, max_width, bool((widths.detach() == max_width).all()))

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
        if widths is None:
            widths = torch.zeros_like(charges)
        cell = self.coulomb.compact(positions, cell, pbc)  # slabs: no more vacuum than the accuracy needs
        plan = self.plan(positions, cell, widths)

        def charge_sum(q: torch.Tensor, want_field: bool) -> tuple[torch.Tensor, torch.Tensor]:
            try:
                potential, field = self.coulomb.potential_and_field_with_plan(
                    q.unsqueeze(-1), positions, cell, pbc, widths, want_field, plan)
            except ValueError as error:  # coincident point charges
                raise ElectrostaticsInputError(f"structure {graph}: {error}") from None
            return potential.squeeze(-1), field.squeeze(1)

        if dipoles is None:
            potential, field = charge_sum(charges, compute_field)
            return 0.5 * (charges * potential).sum(), potential, field if compute_field else None
        # torch-pme sums point dipoles with Ewald only
        dipole_params = choose_parameters("ewald", positions, charges, cell, self.accuracy)
        return periodic_charge_dipole_sum(positions, charges, dipoles, cell, dipole_params, charge_sum, widths, graph)


__all__ = ["Electrostatics", "METHODS", "plan_from_parameters"]
