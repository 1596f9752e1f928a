"""The "extras" JSON that the driver returns to i-PI with every structure.

Each extra maps an ASE calculator property (mace-lr units) to a JSON key that i-PI reads
(atomic units). i-PI's driven dynamics (``ipi/engine/motion/driven_dynamics.py``) reads
``"BEC"`` as a (3N, 3) array with ``Z[3i + a, b] = d mu_b / d r_{i,a}`` (e), applies the
force ``e Z @ E(t)`` and checks the acoustic sum rule ``|sum_i Z_i| / N <=
asr_threshold * N``; it reads ``"dipole"`` (e·Bohr) for its ``dipole`` property.

=======================  ================  ===============================================
name (``--extras``)      JSON key          value sent to i-PI
=======================  ================  ===============================================
``dipole``               ``dipole``        (3,) e·Bohr
``bec``                  ``BEC``           (3N, 3) e, row 3i+a, column b: d mu_b / d r_{i,a}
``charges``              ``charges``       (N,) e
``electrostatic_energy`` ``electrostatic_energy``  Hartree
``polarizability``       ``polarizability``  (3, 3) e²·Bohr²/Hartree, alpha[a, b] = d mu_a / d E_b
=======================  ================  ===============================================

``polarizability`` comes from the calculator's ``polarizability`` property when it has
one; otherwise from central differences of the dipole with respect to
``atoms.info["external_field"]`` (V/Å, mace-lr's convention), at fixed positions
(clamped ions). Models whose charges do not respond to the field give exactly zero.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Iterable, Mapping

import numpy as np
from ase import Atoms
from ase.calculators.calculator import Calculator, all_changes

from .units import ATOMIC_UNITS


@dataclass(frozen=True)
class ExtraSpec:
    """One extra: its CLI name, i-PI's JSON key, the ASE property and its unit quantity."""

    name: str
    key: str
    ase_property: str
    quantity: str
    shape: str


EXTRAS: dict[str, ExtraSpec] = {
    spec.name: spec
    for spec in (
        ExtraSpec("dipole", "dipole", "dipole", "dipole", "(3,)"),
        ExtraSpec("bec", "BEC", "bec", "charge", "(3N, 3)"),
        ExtraSpec("charges", "charges", "charges", "charge", "(N,)"),
        ExtraSpec("electrostatic_energy", "electrostatic_energy", "electrostatic_energy", "energy", "()"),
        ExtraSpec("polarizability", "polarizability", "polarizability", "polarizability", "(3, 3)"),
    )
}

#: Field step (V/Å) of the finite-difference polarizability.
POLARIZABILITY_FIELD_STEP = 1e-3


def parse_extras(names: str | Iterable[str]) -> tuple[str, ...]:
    """Validate extra names; a string may separate them by commas, ``;``, ``+`` or spaces."""
    if isinstance(names, str):
        for separator in ";+ ":
            names = names.replace(separator, ",")
        names = [n for n in names.split(",") if n.strip()]
    result = []
    for name in names:
        key = name.strip().lower()
        if key not in EXTRAS:
            raise ValueError(f"unknown extra {name!r}; choose from {', '.join(EXTRAS)}")
        if key not in result:
            result.append(key)
    return tuple(result)


def check_calculator_supports(calculator: Calculator, names: Iterable[str]) -> None:
    """Raise ValueError naming each requested extra the calculator cannot give."""
    implemented = set(getattr(calculator, "implemented_properties", ()))
    for name in names:
        spec = EXTRAS[name]
        if spec.ase_property in implemented:
            continue
        if name == "polarizability" and "dipole" in implemented:
            continue  # finite differences of the dipole
        raise ValueError(
            f"extra {name!r} needs the calculator property {spec.ase_property!r}, which "
            f"{type(calculator).__name__} does not implement (it has {sorted(implemented)}); "
            "drop it from --extras or use a calculator that provides it"
        )


def finite_difference_polarizability(calculator: Calculator, atoms: Atoms, step: float = POLARIZABILITY_FIELD_STEP) -> np.ndarray:
    """alpha[a, b] = d mu_a / d E_b (e·Å²/V) by central differences in ``info["external_field"]``.

    Calls ``calculator.calculate`` directly (ASE's cache does not see ``info``) and
    resets the calculator afterwards; ``atoms.info`` is restored.
    """
    had_field = "external_field" in atoms.info
    saved = atoms.info.get("external_field")
    if saved is None:  # the calculator's own default field (MACELRCalculator(external_field=...))
        default = getattr(calculator, "default_field", None)
        base = np.zeros(3) if default is None else np.asarray(default, dtype=float).reshape(3)
    else:
        base = np.asarray(saved, dtype=float).reshape(3)
    alpha = np.empty((3, 3))
    try:
        for b in range(3):
            dipoles = []
            for sign in (1.0, -1.0):
                field = base.copy()
                field[b] += sign * step
                atoms.info["external_field"] = field
                calculator.calculate(atoms, ["dipole"], all_changes)
                dipoles.append(np.asarray(calculator.results["dipole"], dtype=float).reshape(3))
            alpha[:, b] = (dipoles[0] - dipoles[1]) / (2.0 * step)
    finally:
        if had_field:
            atoms.info["external_field"] = saved
        else:
            atoms.info.pop("external_field", None)
        calculator.reset()
    return alpha


def to_atomic_json_value(name: str, value, natoms: int):
    """Convert one calculator value (mace-lr units) to i-PI's JSON value (atomic units)."""
    spec = EXTRAS[name]
    array = np.asarray(value, dtype=float) * ATOMIC_UNITS[spec.quantity]
    if name == "bec":
        if array.shape != (natoms, 3, 3):
            raise ValueError(f"the calculator's bec has shape {array.shape}; expected ({natoms}, 3, 3)")
        return array.reshape(3 * natoms, 3).tolist()
    if name == "electrostatic_energy":
        return float(array.reshape(()))
    return array.tolist()


def encode_extras(values: Mapping[str, object], natoms: int) -> str:
    """The JSON string for ``values`` (name -> calculator value); "" when empty."""
    if not values:
        return ""
    return json.dumps({EXTRAS[name].key: to_atomic_json_value(name, value, natoms) for name, value in values.items()})


__all__ = [
    "EXTRAS", "ExtraSpec", "POLARIZABILITY_FIELD_STEP", "check_calculator_supports", "encode_extras",
    "finite_difference_polarizability", "parse_extras", "to_atomic_json_value",
]
