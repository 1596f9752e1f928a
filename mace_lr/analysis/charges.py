"""Where the charges (e) and dipoles (e·Å) of every frame come from.

A *charge source* maps one frame (:class:`ase.Atoms`) to per-atom charges [N] (e):

- :class:`ElementCharges`: one fixed charge per element (``--charges Na=1,Cl=-1``);
- :class:`ArrayCharges`: a per-atom array of the file (``initial_charges``,
  ``REF_charges``, ``--charges-key``);
- :class:`ModelCharges`: the charges a mace-lr model predicts for the frame
  (:class:`mace_lr.calculators.MACELRCalculator`, ``results["charges"]``).

:func:`total_dipole_from_file` and :func:`atomic_dipoles_from_file` read dipoles the
file provides (a per-frame total ``REF_dipole``, per-atom dipoles).
"""

from __future__ import annotations

from typing import Protocol

import numpy as np
from ase import Atoms
from ase.data import atomic_numbers, chemical_symbols

from .errors import DiagnosticsInputError

#: Per-atom arrays tried, in this order, when no charge source is given.
AUTO_CHARGE_KEYS = ("REF_charges", "initial_charges", "charges", "MACE_charges")

#: Per-frame total-dipole keys tried, in this order, when ``dipole_key="auto"``.
AUTO_DIPOLE_KEYS = ("REF_dipole", "dipole", "MACE_dipole")


class ChargeSource(Protocol):
    """Per-atom charges [N] (e) of a frame."""

    description: str

    def __call__(self, atoms: Atoms, index: int) -> np.ndarray: ...


def parse_element_charges(spec: str) -> dict[int, float]:
    """``"Na=1,Cl=-1"`` -> ``{11: 1.0, 17: -1.0}`` (atomic number -> charge in e)."""
    charges: dict[int, float] = {}
    for item in filter(None, (part.strip() for part in spec.split(","))):
        symbol, _, value = item.partition("=")
        symbol = symbol.strip()
        if symbol not in atomic_numbers or not value:
            raise DiagnosticsInputError(
                f"cannot read {item!r} in --charges {spec!r}: write element=charge pairs "
                "separated by commas, e.g. --charges Na=1,Cl=-1"
            )
        try:
            charges[atomic_numbers[symbol]] = float(value)
        except ValueError:
            raise DiagnosticsInputError(f"charge {value!r} of {symbol} in --charges is not a number") from None
    if not charges:
        raise DiagnosticsInputError("--charges is empty; write e.g. --charges Na=1,Cl=-1")
    return charges


class ElementCharges:
    """One fixed charge (e) per element."""

    def __init__(self, charges: dict[int, float]) -> None:
        self.charges = dict(charges)
        self.description = "per element: " + ", ".join(
            f"{chemical_symbols[z]}={q:g}" for z, q in sorted(self.charges.items())
        )

    def __call__(self, atoms: Atoms, index: int) -> np.ndarray:
        missing = sorted(set(atoms.numbers.tolist()) - set(self.charges))
        if missing:
            names = ", ".join(chemical_symbols[z] for z in missing)
            raise DiagnosticsInputError(
                f"no charge given for element(s) {names} (frame {index}); add them to "
                f"--charges, e.g. --charges {','.join(f'{chemical_symbols[z]}=...' for z in missing)}"
            )
        lookup = np.zeros(int(atoms.numbers.max()) + 1)
        for z, q in self.charges.items():
            if z < lookup.size:
                lookup[z] = q
        return lookup[atoms.numbers]


def _per_atom_array(atoms: Atoms, key: str) -> np.ndarray | None:
    if key in atoms.arrays:
        return np.asarray(atoms.arrays[key], dtype=float)
    calc = getattr(atoms, "calc", None)
    results = getattr(calc, "results", {}) if calc is not None else {}
    if key in results and np.ndim(results[key]) >= 1 and len(results[key]) == len(atoms):
        return np.asarray(results[key], dtype=float)
    return None


class ArrayCharges:
    """Charges from a per-atom array of the file (or of a stored calculator result)."""

    def __init__(self, key: str) -> None:
        self.key = key
        self.description = f"per atom from the file ({key!r})"

    def __call__(self, atoms: Atoms, index: int) -> np.ndarray:
        charges = _per_atom_array(atoms, self.key)
        if charges is None or charges.shape != (len(atoms),):
            available = sorted(k for k in atoms.arrays if k not in ("numbers", "positions"))
            raise DiagnosticsInputError(
                f"frame {index} has no per-atom charges {self.key!r} (per-atom arrays: "
                f"{available}); name the right one with --charges-key, or give --charges "
                "Na=1,Cl=-1 or --model"
            )
        return charges


class ModelCharges:
    """Charges predicted by a mace-lr model, one evaluation per frame."""

    def __init__(self, model_path: str, device: str = "cpu", default_dtype: str = "float64") -> None:
        from pathlib import Path

        from mace_lr.calculators import MACELRCalculator

        if not Path(model_path).is_file():
            raise DiagnosticsInputError(f"model file {model_path!r} does not exist; give the path of a saved mace-lr model")
        self.calculator = MACELRCalculator(model_paths=model_path, device=device, default_dtype=default_dtype)
        if self.calculator.long_range == "none":
            raise DiagnosticsInputError(
                f"the model {model_path!r} has no long-range head and predicts no charges; "
                "give a mace-lr model trained with --long_range charges or latent"
            )
        self.description = f"predicted by the model {model_path!r}"

    def __call__(self, atoms: Atoms, index: int) -> np.ndarray:
        probe = atoms.copy()
        probe.calc = self.calculator
        probe.get_potential_energy()
        return np.asarray(self.calculator.results["charges"], dtype=float).reshape(len(atoms))


def auto_charge_source(atoms: Atoms) -> ArrayCharges:
    """The first of :data:`AUTO_CHARGE_KEYS` the frame has, or a clear error."""
    for key in AUTO_CHARGE_KEYS:
        values = _per_atom_array(atoms, key)
        if values is not None and values.shape == (len(atoms),):
            return ArrayCharges(key)
    raise DiagnosticsInputError(
        "the trajectory holds no per-atom charges (looked for "
        f"{', '.join(AUTO_CHARGE_KEYS)}); give charges per element (--charges Na=1,Cl=-1), "
        "name the per-atom array (--charges-key KEY) or predict them with --model PATH"
    )


def total_dipole_from_file(atoms: Atoms, key: str) -> np.ndarray | None:
    """The frame's total dipole [3] (e·Å) under ``key`` (info or a calculator result);
    ``key="auto"`` tries :data:`AUTO_DIPOLE_KEYS` and a stored calculator ``dipole``."""
    keys = AUTO_DIPOLE_KEYS if key == "auto" else (key,)
    calc = getattr(atoms, "calc", None)
    results = getattr(calc, "results", {}) if calc is not None else {}
    for name in keys:
        for store in (atoms.info, results):
            if name in store and np.size(store[name]) == 3:
                return np.asarray(store[name], dtype=float).reshape(3)
    return None


def atomic_dipoles_from_file(atoms: Atoms, key: str, index: int) -> np.ndarray:
    """Per-atom dipoles [N, 3] (e·Å) under ``key``, or a clear error."""
    dipoles = _per_atom_array(atoms, key)
    if dipoles is None or dipoles.shape != (len(atoms), 3):
        raise DiagnosticsInputError(
            f"frame {index} has no per-atom dipoles {key!r} of shape ({len(atoms)}, 3); "
            "check --atomic-dipoles-key"
        )
    return dipoles


__all__ = [
    "AUTO_CHARGE_KEYS",
    "AUTO_DIPOLE_KEYS",
    "ArrayCharges",
    "ChargeSource",
    "ElementCharges",
    "ModelCharges",
    "atomic_dipoles_from_file",
    "auto_charge_source",
    "parse_element_charges",
    "total_dipole_from_file",
]
