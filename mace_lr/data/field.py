"""Small neutral molecules and clusters in random uniform electric fields (GFN2-xTB).

Configuration ``i`` takes molecule ``i mod len(molecules)`` (default
:data:`~mace_lr.data.molecules.FIELD_MOLECULES`: H2O, NH3, HF, CO, CH3OH, (H2O)2),
rotates it uniformly at random, adds Gaussian noise (``noise`` Å per component) and
applies a field F with |F| ~ U(0, max_field) (V/Å) along a uniformly random direction.
Energies include the field interaction, E(F) = E(0) - mu·F + O(F^2), with the field
in tblite's sign convention verified in the tests (F is the physical field; the force
on a charge q is +qF). Molecules are neutral, so the dipole does not depend on the
origin.
"""

from __future__ import annotations

import numpy as np
from ase import Atoms

from .molecules import FIELD_MOLECULES, get_molecules
from .sampling import (
    InvalidOption,
    check_non_negative,
    check_positive,
    generate_configs,
    random_pose,
    random_unit_vector,
)
from .xtb import DEFAULT_ACCURACY, xtb_labelled_atoms


def generate_field(
    n_configs: int,
    seed: int = 0,
    *,
    molecules: tuple[str, ...] | list[str] = FIELD_MOLECULES,
    max_field: float = 0.1,
    noise: float = 0.02,
    accuracy: float = DEFAULT_ACCURACY,
    progress: bool | None = False,
) -> list[Atoms]:
    """``n_configs`` GFN2-xTB-labelled molecules in uniform fields (module docstring).

    ``max_field`` in V/Å, ``noise`` in Å. Labels: ``REF_energy`` (eV, field term
    included), ``REF_forces`` (eV/Å), ``REF_charges`` (e), ``REF_dipole`` (e·Å, induced
    part included), ``external_field`` (V/Å), ``total_charge``, ``total_spin``;
    ``config_type="field"``, ``molecule`` (name).
    """
    chosen = get_molecules(list(molecules))
    charged = [m.name for m in chosen if m.charge != 0]
    if charged:
        raise InvalidOption(
            f"field data uses neutral molecules only (origin-free dipole), got {charged}"
        )
    check_positive("max_field", max_field)
    check_non_negative("noise", noise)

    def sample(rng: np.random.Generator, index: int) -> Atoms:
        molecule = chosen[index % len(chosen)]
        positions = random_pose(molecule.positions, rng, noise)
        field = rng.uniform(0.0, max_field) * random_unit_vector(rng)
        labelled = xtb_labelled_atoms(
            molecule.atoms().numbers,
            positions,
            total_charge=0,
            field=field,
            config_type="field",
            accuracy=accuracy,
        )
        labelled.info["molecule"] = molecule.name
        return labelled

    return generate_configs(sample, n_configs, seed, progress=progress, desc="field")


__all__ = ["generate_field"]
