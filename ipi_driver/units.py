"""Conversion between mace-lr units (eV, Å, e, V/Å) and i-PI's atomic units.

The factors come from i-PI's own unit tables (``ipi.utils.units``), so the driver and
the server agree to the last digit.
"""

from __future__ import annotations

from ipi.utils.units import unit_to_internal

#: One mace-lr unit of each quantity expressed in i-PI atomic units.
ATOMIC_UNITS: dict[str, float] = {
    "energy": unit_to_internal("energy", "electronvolt", 1.0),  # eV -> Hartree
    "length": unit_to_internal("length", "angstrom", 1.0),  # Å -> Bohr
    "force": unit_to_internal("energy", "electronvolt", 1.0)
    / unit_to_internal("length", "angstrom", 1.0),  # eV/Å -> Hartree/Bohr
    "dipole": unit_to_internal("length", "angstrom", 1.0),  # e·Å -> e·Bohr
    "electric-field": unit_to_internal("energy", "electronvolt", 1.0)
    / unit_to_internal("length", "angstrom", 1.0),  # V/Å -> Hartree/(e·Bohr)
    "charge": 1.0,  # e -> e
    "polarizability": unit_to_internal("length", "angstrom", 1.0) ** 2
    / unit_to_internal("energy", "electronvolt", 1.0),  # e·Å^2/V -> e^2·Bohr^2/Hartree
}


def to_atomic_units(quantity: str, value):
    """Convert ``value`` of ``quantity`` from mace-lr units to atomic units."""
    try:
        return value * ATOMIC_UNITS[quantity]
    except KeyError:
        raise KeyError(f"unknown quantity {quantity!r}; known: {sorted(ATOMIC_UNITS)}") from None


def from_atomic_units(quantity: str, value):
    """Convert ``value`` of ``quantity`` from atomic units to mace-lr units."""
    try:
        return value / ATOMIC_UNITS[quantity]
    except KeyError:
        raise KeyError(f"unknown quantity {quantity!r}; known: {sorted(ATOMIC_UNITS)}") from None
