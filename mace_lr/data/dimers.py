"""Charged and polar molecular dimers at 2-15 Å, labelled with GFN2-xTB.

Each configuration picks two monomers (with replacement) from ``monomers`` (default
:data:`~mace_lr.data.molecules.DIMER_MONOMERS`), rotates each uniformly at random,
jiggles every atom by Gaussian noise (``noise`` Å per component), and places the second
monomer along a random direction so that the *shortest intermolecular atom-atom
distance* equals ``separation`` ~ U(min_separation, max_separation) (Å), with no
closer contact at any larger distance along that direction. The complex is centred on
its centre of mass (the dipole of a charged dimer is taken about that origin).
Total charge = sum of monomer charges.

GFN2-xTB lets some charge leak between separated cation-anion pairs (NH4+/OH-:
~0.3 e at 10-15 Å, delocalisation error). Every dimer records
``charge_transfer`` = (sum of REF_charges on the second monomer) - (its nominal
charge) in e; ``max_charge_transfer`` rejects and redraws configurations above a bound.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
from ase import Atoms

from .io import CHARGES_KEY
from .molecules import DIMER_MONOMERS, Molecule, get_molecules
from .sampling import (
    InvalidOption,
    RejectedSample,
    check_non_negative,
    check_positive,
    generate_configs,
    random_pose,
    random_unit_vector,
)
from .xtb import DEFAULT_ACCURACY, xtb_labelled_atoms


def contact_shift(
    fixed: np.ndarray, moving: np.ndarray, direction: np.ndarray, separation: float
) -> float | None:
    """Smallest shift s (Å) along unit ``direction`` such that ``moving + s'·direction``
    keeps every atom at least ``separation`` (Å) from every atom of ``fixed`` for all
    s' >= s; the closest contact at s is exactly ``separation``. ``None`` if no pair
    ever comes that close along this line.
    """
    pair = moving[None, :, :] - fixed[:, None, :]  # [Nf, Nm, 3]
    b = pair @ direction
    discriminant = b**2 - (np.sum(pair**2, axis=-1) - separation**2)
    crossing = discriminant >= 0.0
    if not np.any(crossing):
        return None
    return float(np.max(-b[crossing] + np.sqrt(discriminant[crossing])))


def sample_dimer(
    rng: np.random.Generator,
    monomers: list[Molecule],
    min_separation: float,
    max_separation: float,
    noise: float,
) -> tuple[Atoms, Molecule, Molecule]:
    """One unlabelled dimer centred on its centre of mass, and its two monomers.

    ``atoms.info`` gets ``monomers`` (names) and ``separation`` (Å).
    """
    first, second = (monomers[k] for k in rng.integers(len(monomers), size=2))
    fixed = random_pose(first.positions, rng, noise)
    moving = random_pose(second.positions, rng, noise)
    separation = float(rng.uniform(min_separation, max_separation))
    direction = random_unit_vector(rng)
    shift = contact_shift(fixed, moving, direction, separation)
    if shift is None:
        raise RejectedSample("monomers never come within the separation along this line")
    atoms = Atoms(
        symbols=list(first.symbols) + list(second.symbols),
        positions=np.vstack([fixed, moving + shift * direction]),
    )
    atoms.positions -= atoms.get_center_of_mass()
    atoms.info["monomers"] = f"{first.name} {second.name}"
    atoms.info["separation"] = separation
    return atoms, first, second


def generate_dimers(
    n_configs: int,
    seed: int = 0,
    *,
    monomers: tuple[str, ...] | list[str] = DIMER_MONOMERS,
    min_separation: float = 2.0,
    max_separation: float = 15.0,
    noise: float = 0.02,
    max_charge_transfer: float | None = None,
    accuracy: float = DEFAULT_ACCURACY,
    progress: bool | None = False,
) -> list[Atoms]:
    """``n_configs`` GFN2-xTB-labelled dimers (see module docstring).

    Distances in Å, charges in e. Labels: ``REF_energy`` (eV), ``REF_forces`` (eV/Å),
    ``REF_charges`` (e), ``REF_dipole`` (e·Å), ``total_charge``, ``total_spin``; info
    ``config_type="dimer"``, ``monomers``, ``separation`` (Å), ``charge_transfer`` (e).
    """
    molecules = get_molecules(list(monomers))
    check_positive("min_separation", min_separation)
    if not max_separation > min_separation:
        raise InvalidOption(
            f"max_separation ({max_separation}) must exceed min_separation ({min_separation})"
        )
    check_non_negative("noise", noise)
    if max_charge_transfer is not None:
        check_positive("max_charge_transfer", max_charge_transfer)

    def sample(rng: np.random.Generator, index: int) -> Atoms:
        atoms, first, second = sample_dimer(rng, molecules, min_separation, max_separation, noise)
        labelled = xtb_labelled_atoms(
            atoms.numbers,
            atoms.positions,
            total_charge=first.charge + second.charge,
            config_type="dimer",
            accuracy=accuracy,
        )
        labelled.info.update(atoms.info)
        transfer = float(np.sum(labelled.arrays[CHARGES_KEY][len(first.symbols) :]) - second.charge)
        labelled.info["charge_transfer"] = transfer
        if max_charge_transfer is not None and abs(transfer) > max_charge_transfer:
            raise RejectedSample(f"charge transfer {transfer:.3f} e between monomers")
        return labelled

    return generate_configs(sample, n_configs, seed, progress=progress, desc="dimers")


def dimer_scan(
    first: str,
    second: str,
    separations: Sequence[float],
    seed: int = 0,
    accuracy: float = DEFAULT_ACCURACY,
) -> list[Atoms]:
    """xTB-labelled rigid scan: monomer ``second`` moved away from ``first`` along one line.

    ``separations``: closest intermolecular distances (Å); both monomers keep one random
    orientation (``seed``). Labels and info as in :func:`generate_dimers`.
    """
    molecules = get_molecules([first, second])
    rng = np.random.default_rng(seed)
    fixed = random_pose(molecules[0].positions, rng, 0.0)
    moving = random_pose(molecules[1].positions, rng, 0.0)
    direction = random_unit_vector(rng)
    scan = []
    for separation in separations:
        check_positive("separation", separation)
        shift = contact_shift(fixed, moving, direction, float(separation))
        if shift is None:
            raise InvalidOption(f"the monomers never come within {separation} Å along the scan line")
        positions = np.vstack([fixed, moving + shift * direction])
        labelled = xtb_labelled_atoms(
            list(molecules[0].atoms().numbers) + list(molecules[1].atoms().numbers),
            positions,
            total_charge=molecules[0].charge + molecules[1].charge,
            config_type="dimer_scan",
            accuracy=accuracy,
        )
        labelled.info["monomers"] = f"{first} {second}"
        labelled.info["separation"] = float(separation)
        scan.append(labelled)
    return scan


__all__ = ["contact_shift", "dimer_scan", "generate_dimers", "sample_dimer"]
