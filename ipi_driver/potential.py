"""Adapter from an ASE calculator (eV, Å) to what i-PI expects (atomic units, extras).

Knows nothing about sockets: :class:`ASEPotential` takes i-PI structures (cell h with
lattice vectors as columns, positions, Bohr) and returns energy (Hartree), forces
(Hartree/Bohr), virial (Hartree) and the extras JSON. Used by the socket client
(:mod:`ipi_driver.client`) and by i-PI's own entry points (:mod:`ipi_driver.mace_lr_pes`).

Virial, as i-PI's own ASE driver (``ipi/pes/_ase.py``) defines it: ``-stress * volume``
for periodic structures. For open boundaries (no pbc) it is ``-dE/d(strain)`` of a
uniform scaling of all positions, ``sum_i sym(F_i r_i^T)``, which needs no cell.
"""

from __future__ import annotations

from typing import Iterable, Sequence

import numpy as np
from ase import Atoms
from ase.calculators.calculator import Calculator, PropertyNotImplementedError
from ase.stress import voigt_6_to_full_3x3_stress

from .extras import EXTRAS, check_calculator_supports, encode_extras, finite_difference_polarizability, parse_extras
from .protocol import Result, Structure
from .units import ATOMIC_UNITS

BOHR_PER_ANGSTROM = ATOMIC_UNITS["length"]


class SetupError(ValueError):
    """The calculator, the init structure and the options do not fit together."""


class ASEPotential:
    """An ASE calculator seen from i-PI.

    :param calculator: any ASE calculator giving energy and forces (and stress for
        periodic structures).
    :param template: the init structure: species, atom order, pbc, ``info``
        (``total_charge``, ``external_field``) and, if not periodic, the cell to keep.
    :param extras: names from :data:`ipi_driver.extras.EXTRAS` to return as JSON.
    """

    def __init__(self, calculator: Calculator, template: Atoms, extras: Iterable[str] | str = ()) -> None:
        if len(template) == 0:
            raise SetupError("the init structure has no atoms")
        self.calculator = calculator
        self.atoms = template.copy()
        self.atoms.calc = None
        self.natoms = len(template)
        self.pbc = np.asarray(template.pbc, dtype=bool)
        self.extras = parse_extras(extras)
        try:
            check_calculator_supports(calculator, self.extras)
        except ValueError as error:
            raise SetupError(str(error)) from None
        implemented = set(getattr(calculator, "implemented_properties", ()))
        #: properties computed only when asked for: ask them first so that one
        #: calculation gives everything (ASE then serves the rest from its cache)
        self._first = [EXTRAS[n].ase_property for n in self.extras if EXTRAS[n].ase_property in getattr(calculator, "on_request", ())]
        self._plain = [EXTRAS[n].ase_property for n in self.extras if EXTRAS[n].ase_property not in self._first and EXTRAS[n].ase_property in implemented]
        self._fd_polarizability = "polarizability" in self.extras and "polarizability" not in implemented
        if self.pbc.any() and "stress" not in implemented:
            raise SetupError(
                f"the init structure is periodic (pbc={self.pbc.tolist()}) but {type(calculator).__name__} "
                "gives no stress, which i-PI needs for the virial"
            )

    def _set_geometry(self, structure: Structure) -> None:
        positions = np.asarray(structure.positions, dtype=float)
        if positions.shape != (self.natoms, 3):
            raise ValueError(f"positions have shape {positions.shape}; the init structure has {self.natoms} atoms")
        self.atoms.positions[:] = positions / BOHR_PER_ANGSTROM
        if self.pbc.any():
            self.atoms.set_cell(np.asarray(structure.cell, dtype=float).T / BOHR_PER_ANGSTROM, scale_atoms=False)

    def _property(self, name: str):
        """A result of the calculation just done (ASE's cache), computing it if missing."""
        value = self.calculator.results.get(name)
        return self.calculator.get_property(name, self.atoms) if value is None else value

    def _virial(self, forces: np.ndarray) -> np.ndarray:
        """Virial in eV (3, 3)."""
        if self.pbc.any():
            stress = np.asarray(self._property("stress"), dtype=float)
            if stress.shape == (6,):
                stress = voigt_6_to_full_3x3_stress(stress)
            return -stress * self.atoms.get_volume()
        moment = forces.T @ self.atoms.positions
        return 0.5 * (moment + moment.T)

    def compute(self, structure: Structure) -> Result:
        """Energy, forces, virial and extras for one i-PI structure (atomic units)."""
        self._set_geometry(structure)
        calc = self.calculator
        # every request is a new geometry: skip ASE's comparison with the previous one
        # (compare_atoms costs ~0.3 ms a call); the first get_property runs the calculation,
        # the others read its results
        calc.reset()
        values = {}
        for name in self._first:
            values[name] = calc.get_property(name, self.atoms)
        energy = float(calc.get_property("energy", self.atoms) if not self._first else self._property("energy"))
        forces = np.asarray(self._property("forces"), dtype=float)
        try:
            virial = self._virial(forces)
        except PropertyNotImplementedError:
            raise SetupError(f"{type(calc).__name__} gave no stress for a periodic structure") from None
        for name in self._plain:
            values[name] = self._property(name)
        if self._fd_polarizability:
            values["polarizability"] = finite_difference_polarizability(calc, self.atoms)
        if not (np.isfinite(energy) and np.all(np.isfinite(forces)) and np.all(np.isfinite(virial))):
            raise FloatingPointError(
                "the calculator returned a non-finite energy, force or virial; the simulation has "
                "probably blown up (check the time step and the structure)"
            )
        by_extra = {name: values[EXTRAS[name].ase_property] for name in self.extras}
        return Result(
            energy=energy * ATOMIC_UNITS["energy"],
            forces=forces * ATOMIC_UNITS["force"],
            virial=virial * ATOMIC_UNITS["energy"],
            extras=encode_extras(by_extra, self.natoms),
        )

    def compute_batch(self, structures: Sequence[Structure]) -> list[Result]:
        """One result per structure (evaluated one after the other)."""
        return [self.compute(structure) for structure in structures]

    def template_structure(self) -> Structure:
        """The init structure in i-PI's units and cell convention."""
        return Structure(
            cell=np.asarray(self.atoms.cell.array, dtype=float).T * BOHR_PER_ANGSTROM,
            positions=self.atoms.positions * BOHR_PER_ANGSTROM,
        )

    def preflight(self) -> Result:
        """Evaluate the init structure once; a :class:`SetupError` says what does not fit."""
        try:
            return self.compute(self.template_structure())
        except Exception as error:  # report any failure as a set-up problem, with its cause
            raise SetupError(
                f"{type(self.calculator).__name__} cannot evaluate the init structure "
                f"({type(error).__name__}: {error}); check that the model and the init file fit "
                "(elements, number of atoms, charges, cell)"
            ) from error


__all__ = ["ASEPotential", "BOHR_PER_ANGSTROM", "SetupError"]
