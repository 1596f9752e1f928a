"""Constants of the diagnostics (eV, Å, e, K).

k_e is computed exactly as in :mod:`mace_lr.electrostatics.units` (ASE's CODATA set,
Hartree * Bohr = 14.399645 eV·Å/e^2) but without importing the engine, so that
``import mace_lr.analysis`` and ``mace_lr_diagnose`` do not load torch;
tests/test_analysis_kspace.py checks that the two are identical.
"""

from __future__ import annotations

from ase import units as _ase_units

#: Coulomb constant 1/(4 pi eps0) in eV·Å/e^2.
COULOMB_CONSTANT: float = float(_ase_units.Hartree * _ase_units.Bohr)

#: Boltzmann constant in eV/K.
BOLTZMANN: float = float(_ase_units.kB)

__all__ = ["BOLTZMANN", "COULOMB_CONSTANT"]
