"""Labelled structures in MACE's extxyz convention: building, writing, reading.

Keys (DESIGN.md section 2), all stored with the ``REF_`` prefix so that ASE never turns
them into a ``SinglePointCalculator``:

========================  =======  ==========================================
key                       where    meaning (units)
========================  =======  ==========================================
``REF_energy``            info     total energy (eV)
``REF_forces``            arrays   forces [N, 3] (eV/Å)
``REF_stress``            info     stress, ASE Voigt order xx yy zz yz xz xy
                                   (eV/Å^3, periodic structures only)
``REF_charges``           arrays   atomic charges [N] (e)
``REF_dipole``            info     dipole [3] about the coordinate origin (e·Å)
``REF_bec``               arrays   Born effective charges [N, 9] (e),
                                   ``bec[i, 3a+b] = d mu_b / d r_{i,a}``
``total_charge``          info     total charge (e)
``total_spin``            info     spin multiplicity 2S+1 (MACE's convention)
``external_field``        info     uniform electric field [3] (V/Å)
``config_type``           info     name of the system family (string)
========================  =======  ==========================================

MACE's default ``dipole_key`` is ``dipole``; train with ``--dipole_key=REF_dipole``
(:data:`MACE_TRAIN_KEYS` lists every key argument). Per-atom columns are written by ASE
with 8 decimals, so :func:`snap_positions` rounds positions to that grid *before*
labelling: the geometry in the file is exactly the one the labels belong to.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Any, Iterable, Sequence

import ase.io
import numpy as np
from ase import Atoms

ENERGY_KEY = "REF_energy"
FORCES_KEY = "REF_forces"
STRESS_KEY = "REF_stress"
CHARGES_KEY = "REF_charges"
DIPOLE_KEY = "REF_dipole"
BEC_KEY = "REF_bec"
TOTAL_CHARGE_KEY = "total_charge"
TOTAL_SPIN_KEY = "total_spin"
FIELD_KEY = "external_field"

#: ``mace_run_train`` arguments that make MACE read our keys.
MACE_TRAIN_KEYS: dict[str, str] = {
    "energy_key": ENERGY_KEY,
    "forces_key": FORCES_KEY,
    "stress_key": STRESS_KEY,
    "charges_key": CHARGES_KEY,
    "dipole_key": DIPOLE_KEY,
    "total_charge_key": TOTAL_CHARGE_KEY,
    "total_spin_key": TOTAL_SPIN_KEY,
}

_POSITION_DECIMALS = 8  # ASE's extxyz writes per-atom floats as %16.8f


def snap_positions(positions: np.ndarray) -> np.ndarray:
    """Round positions [N, 3] (Å) exactly as the extxyz writer will print them."""
    flat = np.asarray(positions, dtype=float).ravel()
    snapped = [float(f"{value:.{_POSITION_DECIMALS}f}") for value in flat]
    return np.asarray(snapped, dtype=float).reshape(np.shape(positions))


def labelled_atoms(
    numbers: Sequence[int] | np.ndarray,
    positions: np.ndarray,
    *,
    energy: float,
    forces: np.ndarray,
    charges: np.ndarray | None = None,
    dipole: np.ndarray | None = None,
    bec: np.ndarray | None = None,
    stress: np.ndarray | None = None,
    total_charge: float = 0.0,
    total_spin: float | None = None,
    external_field: np.ndarray | None = None,
    cell: np.ndarray | None = None,
    pbc: bool = False,
    config_type: str | None = None,
    extra_info: dict[str, Any] | None = None,
) -> Atoms:
    """An :class:`ase.Atoms` carrying reference labels under the MACE keys above.

    Units: positions Å, energy eV, forces eV/Å, charges e, dipole e·Å, Born charges e
    ([N, 3, 3] or [N, 9], ``bec[i, a, b] = d mu_b / d r_{i,a}``), stress eV/Å^3 (Voigt, 6),
    field V/Å. ``positions`` are stored as given; call
    :func:`snap_positions` before computing the labels.
    """
    atoms = Atoms(numbers=np.asarray(numbers), positions=positions, cell=cell, pbc=pbc)
    info = atoms.info
    if config_type is not None:
        info["config_type"] = config_type
    info[ENERGY_KEY] = float(energy)
    if stress is not None:
        stress = np.asarray(stress, dtype=float)
        if stress.shape != (6,):
            raise ValueError(f"stress must be Voigt (6,), got shape {stress.shape}")
        info[STRESS_KEY] = stress
    if dipole is not None:
        info[DIPOLE_KEY] = np.asarray(dipole, dtype=float).reshape(3)
    info[TOTAL_CHARGE_KEY] = float(total_charge)
    if total_spin is not None:
        info[TOTAL_SPIN_KEY] = float(total_spin)
    if external_field is not None:
        info[FIELD_KEY] = np.asarray(external_field, dtype=float).reshape(3)
    info.update(extra_info or {})
    atoms.arrays[FORCES_KEY] = np.asarray(forces, dtype=float).reshape(len(atoms), 3)
    if charges is not None:
        atoms.arrays[CHARGES_KEY] = np.asarray(charges, dtype=float).reshape(len(atoms))
    if bec is not None:
        atoms.arrays[BEC_KEY] = np.asarray(bec, dtype=float).reshape(len(atoms), 9)
    return atoms


def write_dataset(atoms_list: Iterable[Atoms], path: str | os.PathLike) -> Path:
    """Write labelled structures to an extxyz file (atomically: temp file + rename).

    Structures must not carry a calculator (its results would be written under the
    bare ``energy``/``forces`` names). Returns the path written.
    """
    path = Path(path)
    frames = list(atoms_list)
    if not frames:
        raise ValueError("refusing to write an empty data set")
    if any(atoms.calc is not None for atoms in frames):
        raise ValueError("structures carry a calculator; labels must live in REF_* keys")
    if not path.parent.is_dir():
        raise FileNotFoundError(f"output directory does not exist: {path.parent}")
    handle, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(handle, "w") as stream:
            ase.io.write(stream, frames, format="extxyz")
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp_name, 0o666 & ~umask)  # mkstemp creates 0600
        os.replace(tmp_name, path)
    except BaseException:
        Path(tmp_name).unlink(missing_ok=True)
        raise
    return path


def read_dataset(path: str | os.PathLike) -> list[Atoms]:
    """Read every structure of an extxyz file written by :func:`write_dataset`."""
    return ase.io.read(path, index=":", format="extxyz")


def mace_key_specification() -> Any:
    """MACE's default ``KeySpecification`` with our keys (imports MACE lazily)."""
    from mace.data.utils import KeySpecification, update_keyspec_from_kwargs

    return update_keyspec_from_kwargs(KeySpecification.from_defaults(), dict(MACE_TRAIN_KEYS))


__all__ = [
    "BEC_KEY",
    "CHARGES_KEY",
    "DIPOLE_KEY",
    "ENERGY_KEY",
    "FIELD_KEY",
    "FORCES_KEY",
    "MACE_TRAIN_KEYS",
    "STRESS_KEY",
    "TOTAL_CHARGE_KEY",
    "TOTAL_SPIN_KEY",
    "labelled_atoms",
    "mace_key_specification",
    "read_dataset",
    "snap_positions",
    "write_dataset",
]
