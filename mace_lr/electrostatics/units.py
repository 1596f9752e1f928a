"""Physical constants used throughout mace-lr.

Internal units follow MACE and ASE: energy eV, length Å, charge e, field V/Å.
The Coulomb constant is taken from ASE's CODATA set so that our numbers agree with
ASE calculators to the last digit (k_e = 14.399645 eV·Å/e²).
Conversions to i-PI's atomic units live in :mod:`ipi_driver`, not here.
"""

from __future__ import annotations

from ase import units as _ase_units

#: Coulomb constant k_e = 1 / (4 pi eps0) in eV·Å/e² (ASE's CODATA values).
COULOMB_CONSTANT: float = float(_ase_units.Hartree * _ase_units.Bohr)

#: 1 e·Å expressed in Debye.
EANGSTROM_TO_DEBYE: float = float(1.0 / _ase_units.Debye)

__all__ = ["COULOMB_CONSTANT", "EANGSTROM_TO_DEBYE"]
