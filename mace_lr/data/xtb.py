"""Thin GFN-xTB wrapper around ``tblite.interface.Calculator`` (non-periodic).

tblite works in atomic units: positions in, and energy, gradient, dipole out, are in
Bohr, Hartree, Hartree/Bohr and e·Bohr; charges are Mulliken charges in e. This module
converts everything to eV, Å, eV/Å, e·Å and V/Å (``ase.units``).

Things found out about tblite 0.8 (checked in ``tests/test_data_generators.py``):

* The uniform field enters through ``Calculator.add("electric-field", vector)``, whose
  wrapper hands ``vector`` straight to the C function ``tblite_new_electric_field(double*)``:
  a numpy array is rejected by cffi, so the vector (Hartree/(e·Bohr)) is passed as
  ``ffi.new("double[]", ...)``. tblite's own ASE calculator passes a numpy array and
  therefore cannot apply a field.
* Sign: E(F) = E(0) - mu·F + O(F^2) with mu the dipole tblite reports, i.e. F is the
  physical field (force on a positive charge is +qF). 1 V/Å = Bohr/Hartree a.u.
* The dipole is taken about the coordinate origin (it shifts by Q·d when a charged
  structure is translated by d).
* GFN2-xTB has no spin-dependent energy term unless the ``spin-polarization``
  interaction is added, so ``uhf`` (number of unpaired electrons) changes nothing for
  an odd electron count, and tblite accepts ``uhf=0`` there silently. We still pass
  the parity of the electron count explicitly and record ``total_spin = uhf + 1``.
* An unconverged SCF raises ``TBLiteRuntimeError("SCF not converged in N cycles")``.
  Ion pairs at 5-15 Å fail often with the default damping (0.4); we retry with
  smaller damping (:data:`MIXER_DAMPING`) and, if all fail, raise
  :class:`XTBConvergenceError`, which the generators treat as a rejected sample and
  redraw deterministically.
* Speed: for these 2-20 atom systems tblite's OpenMP threads never help, and when the
  cores are shared (another process, or torch's own OpenMP pool) a 3-atom molecule went
  from 1 ms to 0.3-0.5 s. Set ``OMP_NUM_THREADS=1`` before tblite is first loaded (the
  ``mace_lr_generate`` command does so unless the variable is set).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np
from ase import Atoms
from ase.units import Bohr, Hartree

from .io import labelled_atoms, snap_positions
from .sampling import RejectedSample

#: tblite's SCF thresholds times 0.01: energies converged to ~1e-11 eV, forces to
#: ~3e-6 eV/Å, charges to ~1e-6 e (tblite's default 1.0: 2e-8 eV, 2e-4 eV/Å, 3e-5 e).
DEFAULT_ACCURACY = 0.01
#: Broyden damping values tried in turn; tblite's default 0.4 first.
MIXER_DAMPING: tuple[float, ...] = (0.4, 0.2, 0.1)


@dataclass(frozen=True)
class XTBResult:
    """One xTB single point: energy (eV), forces [N, 3] (eV/Å), charges [N] (e),
    dipole [3] about the origin (e·Å)."""

    energy: float
    forces: np.ndarray
    charges: np.ndarray
    dipole: np.ndarray


class XTBConvergenceError(RejectedSample, RuntimeError):
    """The SCF did not converge within ``max_iter`` cycles."""


def unpaired_electrons(numbers: Sequence[int] | np.ndarray, total_charge: int) -> int:
    """Lowest-spin number of unpaired electrons: parity of sum(Z) - total_charge."""
    n_electrons = int(np.sum(numbers)) - int(total_charge)
    if n_electrons < 0:
        raise ValueError(f"total charge {total_charge} leaves a negative electron count")
    return n_electrons % 2


def field_to_atomic_units(field: np.ndarray) -> np.ndarray:
    """Convert a field [3] from V/Å to Hartree/(e·Bohr)."""
    return np.asarray(field, dtype=float) * Bohr / Hartree


def xtb_singlepoint(
    numbers: Sequence[int] | np.ndarray,
    positions: np.ndarray,
    *,
    total_charge: int = 0,
    uhf: int | None = None,
    field: np.ndarray | None = None,
    method: str = "GFN2-xTB",
    accuracy: float = DEFAULT_ACCURACY,
    max_iter: int = 250,
    mixer_damping: Sequence[float] = MIXER_DAMPING,
) -> XTBResult:
    """Run one non-periodic tblite calculation, quietly, in ASE units.

    ``positions`` [N, 3] in Å; ``field`` [3] in V/Å (uniform external field);
    ``uhf`` defaults to :func:`unpaired_electrons`. The SCF is tried with each Broyden
    ``mixer_damping`` in turn (same Hamiltonian and electronic temperature, only the
    solver path changes); :class:`XTBConvergenceError` if none converges.
    """
    from tblite.exceptions import TBLiteRuntimeError
    from tblite.interface import Calculator
    from tblite.library import ffi

    numbers = np.asarray(numbers, dtype=np.int32)
    if total_charge != int(total_charge):
        raise ValueError(f"total_charge must be an integer, got {total_charge!r}")
    if uhf is None:
        uhf = unpaired_electrons(numbers, int(total_charge))
    failures = []
    for damping in mixer_damping:
        calc = Calculator(
            method,
            numbers,
            np.asarray(positions, dtype=float) / Bohr,
            charge=float(total_charge),
            uhf=int(uhf),
        )
        calc.set("verbosity", 0)
        calc.set("accuracy", float(accuracy))
        calc.set("max-iter", int(max_iter))
        calc.set("mixer-damping", float(damping))
        if field is not None:
            field_au = field_to_atomic_units(field).reshape(3)
            c_field = ffi.new("double[]", [float(x) for x in field_au])  # not a numpy array
            calc.add("electric-field", c_field)
        try:
            result = calc.singlepoint()
            break
        except TBLiteRuntimeError as error:
            if "not converged" not in str(error):
                raise
            failures.append(f"damping {damping}: {error}")
    else:
        raise XTBConvergenceError("; ".join(failures))
    return XTBResult(
        energy=float(result["energy"]) * Hartree,
        forces=-np.asarray(result["gradient"]) * (Hartree / Bohr),
        charges=np.array(result["charges"], dtype=float),
        dipole=np.asarray(result["dipole"], dtype=float) * Bohr,
    )


def xtb_labelled_atoms(
    numbers: Sequence[int] | np.ndarray,
    positions: np.ndarray,
    *,
    total_charge: int = 0,
    field: np.ndarray | None = None,
    config_type: str | None = None,
    method: str = "GFN2-xTB",
    accuracy: float = DEFAULT_ACCURACY,
    max_iter: int = 250,
) -> Atoms:
    """Snap ``positions`` (Å) to the extxyz grid, label them with xTB, return Atoms.

    Labels: ``REF_energy``, ``REF_forces``, ``REF_charges``, ``REF_dipole``,
    ``total_charge``, ``total_spin`` (2S+1) and, when ``field`` (V/Å) is given,
    ``external_field``.
    """
    positions = snap_positions(positions)
    uhf = unpaired_electrons(numbers, int(total_charge))
    result = xtb_singlepoint(
        numbers,
        positions,
        total_charge=total_charge,
        uhf=uhf,
        field=field,
        method=method,
        accuracy=accuracy,
        max_iter=max_iter,
    )
    return labelled_atoms(
        numbers,
        positions,
        energy=result.energy,
        forces=result.forces,
        charges=result.charges,
        dipole=result.dipole,
        total_charge=float(total_charge),
        total_spin=float(uhf + 1),
        external_field=None if field is None else np.asarray(field, dtype=float),
        config_type=config_type,
    )


__all__ = [
    "DEFAULT_ACCURACY",
    "MIXER_DAMPING",
    "XTBConvergenceError",
    "XTBResult",
    "field_to_atomic_units",
    "unpaired_electrons",
    "xtb_labelled_atoms",
    "xtb_singlepoint",
]
