"""ipi_driver's unit factors against ASE's independent CODATA constants."""

import pytest
from ase import units

from ipi_driver import from_atomic_units, to_atomic_units


def test_factors_agree_with_ase():
    assert to_atomic_units("length", 1.0) == pytest.approx(1.0 / units.Bohr, rel=1e-6)
    assert to_atomic_units("energy", 1.0) == pytest.approx(1.0 / units.Hartree, rel=1e-6)
    assert to_atomic_units("force", 1.0) == pytest.approx(units.Bohr / units.Hartree, rel=1e-6)
    assert to_atomic_units("electric-field", 1.0) == pytest.approx(units.Bohr / units.Hartree, rel=1e-6)
    assert from_atomic_units("dipole", to_atomic_units("dipole", 2.5)) == pytest.approx(2.5)


def test_unknown_quantity_is_a_clear_error():
    with pytest.raises(KeyError, match="unknown quantity 'pressure'"):
        to_atomic_units("pressure", 1.0)
