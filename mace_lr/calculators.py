"""ASE calculators of mace-lr.

:class:`CoulombCalculator` exposes the electrostatics engine: the Coulomb energy of
fixed (or Gaussian-smeared) charges, with forces and, for periodic cells, stress.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
import torch
from ase import Atoms
from ase.calculators.calculator import Calculator, all_changes

from .electrostatics import Electrostatics, ElectrostaticsInputError


def strained_geometry(
    positions: torch.Tensor, cell: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Apply a zero symmetric strain eps (requires grad) to positions and cell.

    Returns ``(positions, cell, eps)``; the stress is ``dE/deps / volume``.
    """
    strain = torch.zeros(3, 3, dtype=positions.dtype, device=positions.device, requires_grad=True)
    symmetric = 0.5 * (strain + strain.T)
    return positions + positions @ symmetric, cell + cell @ symmetric, strain


class CoulombCalculator(Calculator):
    """Coulomb energy of point or Gaussian charges (eV, eV/Å, eV/Å^3).

    :param charges: charges in e, one per atom; default ``atoms.get_initial_charges()``.
    :param method: ``auto``, ``direct``, ``ewald`` or ``pme`` (see :class:`Electrostatics`).
    :param smearing: Gaussian width of the charges in Å (0: point charges).
    :param accuracy: relative accuracy of the periodic sums.
    """

    implemented_properties = ["energy", "free_energy", "forces", "stress"]

    def __init__(
        self,
        charges: Sequence[float] | np.ndarray | None = None,
        method: str = "auto",
        smearing: float = 0.0,
        accuracy: float = 1e-6,
        **kwargs,
    ) -> None:
        super().__init__(**kwargs)
        self.fixed_charges = None if charges is None else np.asarray(charges, dtype=float)
        self.engine = Electrostatics(method=method, smearing=smearing, accuracy=accuracy)

    def _charges_for(self, atoms: Atoms) -> np.ndarray:
        charges = self.fixed_charges
        if charges is None:
            charges = atoms.get_initial_charges()
        if len(charges) != len(atoms):
            raise ElectrostaticsInputError(
                f"CoulombCalculator has {len(charges)} charges for {len(atoms)} atoms; "
                "pass one charge per atom (charges=...) or set atoms.set_initial_charges()."
            )
        return charges

    def calculate(self, atoms=None, properties=("energy",), system_changes=all_changes):
        super().calculate(atoms, properties, system_changes)
        atoms = self.atoms
        periodic = bool(atoms.pbc.any())
        positions = torch.tensor(atoms.positions, dtype=torch.float64, requires_grad=True)
        cell = torch.tensor(atoms.cell.array, dtype=torch.float64)
        charges = torch.tensor(self._charges_for(atoms), dtype=torch.float64)
        pbc = torch.tensor(atoms.pbc, dtype=torch.bool).unsqueeze(0)
        inputs = [positions]
        strained_positions, strained_cell = positions, cell
        if periodic:
            strained_positions, strained_cell, strain = strained_geometry(positions, cell)
            inputs.append(strain)
        energy = self.engine(strained_positions, charges, strained_cell.unsqueeze(0), pbc)["energy"][0]
        grads = torch.autograd.grad(energy, inputs)
        self.results["energy"] = float(energy.detach())
        self.results["free_energy"] = self.results["energy"]
        self.results["forces"] = -grads[0].numpy()
        if periodic:
            self.results["stress"] = (grads[1].numpy() / atoms.get_volume()).flat[[0, 4, 8, 5, 2, 1]]


__all__ = ["CoulombCalculator", "strained_geometry"]
