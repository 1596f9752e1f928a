"""Small molecules and ions used by the dimer and field generators.

Geometries are GFN2-xTB minima (tblite 0.8, BFGS to fmax 0.005 eV/Å), centred on the
centre of mass, in Å. Starting points: ASE's G2 set (H2O, NH3, HF, CO, CH3OH), S22
(water dimer) and hand-built ions.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from ase import Atoms

from .sampling import InvalidOption


@dataclass(frozen=True)
class Molecule:
    """A molecule or ion: ``symbols``, ``positions`` [N, 3] (Å), ``charge`` (e)."""

    name: str
    symbols: tuple[str, ...]
    positions: np.ndarray
    charge: int

    def atoms(self) -> Atoms:
        """A fresh :class:`ase.Atoms` (no labels)."""
        return Atoms(symbols=list(self.symbols), positions=self.positions.copy())


def parse_xyz_block(block: str) -> tuple[tuple[str, ...], np.ndarray]:
    """Symbols and positions [N, 3] (Å) from lines ``symbol x y z``."""
    rows = [line.split() for line in block.strip().splitlines()]
    positions = np.array([[float(value) for value in row[1:4]] for row in rows])
    positions.setflags(write=False)
    return tuple(row[0] for row in rows), positions


# name: (charge in e, geometry in Å)
_GEOMETRIES: dict[str, tuple[int, str]] = {
    "H2O": (
        0,
        """
O    0.00000   0.00000   0.06368
H    0.00000   0.77221  -0.50540
H    0.00000  -0.77221  -0.50540
""",
    ),
    "NH3": (
        0,
        """
N    0.00000   0.00000   0.06510
H    0.00000   0.94389  -0.30152
H    0.81743  -0.47194  -0.30152
H   -0.81743  -0.47194  -0.30152
""",
    ),
    "HF": (
        0,
        """
F    0.00000   0.00000   0.04698
H    0.00000   0.00000  -0.88544
""",
    ),
    "CO": (
        0,
        """
O    0.00000   0.00000   0.48340
C    0.00000   0.00000  -0.64391
""",
    ),
    "CH3OH": (
        0,
        """
C   -0.03213   0.72087   0.00000
O   -0.02144  -0.68543   0.00000
H   -1.07803   1.02246   0.00000
H    0.89087  -0.99333   0.00000
H    0.45518   1.13015   0.89180
H    0.45518   1.13015  -0.89180
""",
    ),
    "(H2O)2": (
        0,
        """
O   -1.44072  -0.12425   0.00000
H   -1.89316   0.72048   0.00000
H   -0.49276   0.07620   0.00000
O    1.38434   0.12268   0.00000
H    1.64038  -0.38585  -0.77303
H    1.64038  -0.38585   0.77303
""",
    ),
    "NH4+": (
        1,
        """
N    0.00000   0.00000   0.00000
H    0.59443   0.59443   0.59443
H    0.59443  -0.59443  -0.59443
H   -0.59443   0.59443  -0.59443
H   -0.59443  -0.59443   0.59443
""",
    ),
    "OH-": (
        -1,
        """
O    0.00000   0.00000  -0.05802
H    0.00000   0.00000   0.92083
""",
    ),
    "Na+": (
        1,
        """
Na   0.00000   0.00000   0.00000
""",
    ),
    "Cl-": (
        -1,
        """
Cl   0.00000   0.00000   0.00000
""",
    ),
    "HCOO-": (
        -1,
        """
C    0.00000   0.00000   0.33161
H    0.00000   0.00000   1.52155
O    1.12173   0.00000  -0.17241
O   -1.12173   0.00000  -0.17241
""",
    ),
    "CH3NH3+": (
        1,
        """
C    0.00000   0.00000  -0.78726
N    0.00000   0.00000   0.69727
H    1.02171   0.00000  -1.16062
H   -0.51085   0.88482  -1.16062
H   -0.51085  -0.88482  -1.16062
H    0.48186   0.83461   1.05781
H   -0.96373   0.00000   1.05781
H    0.48186  -0.83461   1.05781
""",
    ),
}

MOLECULES: dict[str, Molecule] = {
    name: Molecule(name, *parse_xyz_block(block), charge)
    for name, (charge, block) in _GEOMETRIES.items()
}

#: Default monomers of the dimer data set: polar molecules and ions. Na+ is in
#: :data:`MOLECULES` but not here: with any neutral or anionic partner beyond ~4 Å
#: GFN2-xTB mostly fails to converge and otherwise moves 0.1-0.6 e onto Na (fractional
#: charge transfer, xTB's delocalisation error); it is fine next to other cations.
DIMER_MONOMERS: tuple[str, ...] = ("H2O", "NH3", "HF", "NH4+", "OH-", "Cl-", "HCOO-", "CH3NH3+")

#: Neutral molecules of the field data set (neutral: the dipole is origin-independent).
FIELD_MOLECULES: tuple[str, ...] = ("H2O", "NH3", "HF", "CO", "CH3OH", "(H2O)2")


def get_molecules(names: tuple[str, ...] | list[str]) -> list[Molecule]:
    """Look up molecules by name; :class:`InvalidOption` lists the known names."""
    unknown = [name for name in names if name not in MOLECULES]
    if unknown or not names:
        raise InvalidOption(f"unknown molecules {unknown}; choose from {sorted(MOLECULES)}")
    return [MOLECULES[name] for name in names]


__all__ = [
    "DIMER_MONOMERS",
    "FIELD_MOLECULES",
    "MOLECULES",
    "Molecule",
    "get_molecules",
    "parse_xyz_block",
]
