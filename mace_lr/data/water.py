"""Small water clusters (H2O)_n with GFN2-xTB labels, for dipole and Wannier-centroid models.

Configuration ``i`` holds n ~ U{min_molecules..max_molecules} rigid water molecules (the
G2 geometry of :data:`~mace_lr.data.molecules.MOLECULES`) with random orientations,
placed one after the other at random points within ``radius`` (Å) of the centre so that
every O-O distance is at least ``min_oo`` (Å) and every intermolecular H-O/H-H distance at
least ``min_contact``, then Gaussian noise (``noise`` Å per component). Neutral, open
boundaries; the dipole is origin-free.
"""

from __future__ import annotations

import numpy as np
from ase import Atoms

from .molecules import get_molecules
from .sampling import InvalidOption, RejectedSample, check_non_negative, check_positive, generate_configs, random_pose
from .xtb import DEFAULT_ACCURACY, xtb_labelled_atoms


def place_waters(n_molecules: int, rng: np.random.Generator, radius: float, min_oo: float, min_contact: float,
                 noise: float, max_tries: int = 200) -> np.ndarray:
    """Positions [3n, 3] (O, H, H per molecule) of ``n_molecules`` non-overlapping waters."""
    water = get_molecules(["H2O"])[0]
    oxygen = int(np.flatnonzero(water.atoms().numbers == 8)[0])
    template = water.positions - water.positions[oxygen]
    placed: list[np.ndarray] = []
    for _ in range(n_molecules):
        for _ in range(max_tries):
            centre = rng.uniform(-radius, radius, 3)
            if np.linalg.norm(centre) > radius:
                continue
            candidate = random_pose(template, rng, 0.0) + centre
            if all(np.linalg.norm(candidate[oxygen] - other[oxygen]) >= min_oo
                   and np.min(np.linalg.norm(candidate[:, None] - other[None], axis=-1)) >= min_contact
                   for other in placed):
                placed.append(candidate)
                break
        else:
            raise RejectedSample(f"could not place {n_molecules} waters within {radius} Å")
    positions = np.concatenate(placed)
    order = np.concatenate([[oxygen], np.delete(np.arange(3), oxygen)])  # O first in every molecule
    positions = positions.reshape(n_molecules, 3, 3)[:, order].reshape(-1, 3)
    return positions + rng.normal(0.0, noise, positions.shape) if noise > 0 else positions


def generate_water_clusters(
    n_configs: int,
    seed: int = 0,
    *,
    min_molecules: int = 2,
    max_molecules: int = 6,
    radius: float = 3.5,
    min_oo: float = 2.6,
    min_contact: float = 1.5,
    noise: float = 0.03,
    accuracy: float = DEFAULT_ACCURACY,
    progress: bool | None = False,
) -> list[Atoms]:
    """``n_configs`` GFN2-xTB-labelled water clusters (module docstring).

    Labels: ``REF_energy`` (eV), ``REF_forces`` (eV/Å), ``REF_charges`` (e),
    ``REF_dipole`` (e·Å), ``total_charge`` 0, ``total_spin``; ``config_type="water"``,
    ``n_molecules``. Atoms are ordered O, H, H per molecule.
    """
    if not 1 <= min_molecules <= max_molecules:
        raise InvalidOption(f"need 1 <= min_molecules <= max_molecules, got {min_molecules}, {max_molecules}")
    for name, value in (("radius", radius), ("min_oo", min_oo), ("min_contact", min_contact)):
        check_positive(name, value)
    check_non_negative("noise", noise)

    def sample(rng: np.random.Generator, index: int) -> Atoms:
        n_molecules = int(rng.integers(min_molecules, max_molecules + 1))
        positions = place_waters(n_molecules, rng, radius, min_oo, min_contact, noise)
        labelled = xtb_labelled_atoms([8, 1, 1] * n_molecules, positions, total_charge=0, config_type="water",
                                      accuracy=accuracy)
        labelled.info["n_molecules"] = n_molecules
        return labelled

    return generate_configs(sample, n_configs, seed, progress=progress, desc="water")


__all__ = ["generate_water_clusters", "place_waters"]
