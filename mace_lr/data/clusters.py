"""Charged clusters of one geometry family at different total charge (GFN2-xTB).

In the spirit of the 4G-HDNNP paper (Ko et al., Nat. Commun. 12, 398 (2021)): adding
or removing one atom/ion changes the charge distribution far away, which local models
cannot see. Systems (:data:`CLUSTER_SYSTEMS`), used in turn (configuration ``i`` is
system ``i mod len(systems)``):

* ``Na9Cl8+`` / ``Na8Cl9-`` / ``Na9Cl8``: a 3x3x2 rock-salt block (9 Na + 9 Cl) with
  one corner Cl (``Na9Cl8``, charge +1 or neutral) or one corner Na (``Na8Cl9-``)
  removed. Nearest-neighbour distance ~ U(2.35, 2.65) Å (GFN2-xTB minima: 2.40-2.56 Å),
  Gaussian noise 0.08 Å per component. Neutral Na9Cl8 has an odd electron count
  (``uhf=1``, ``total_spin=2``).
* ``C10H2`` / ``C10H3+``: the polyyne H-(C≡C)5-H and its cation with an extra H on one
  end (H2C=...), GFN2-xTB minima, stretched along the chain by a factor ~ U(0.98, 1.02)
  with Gaussian noise 0.025 Å per component (both roughly 300-500 K amplitudes).

Every structure is randomly rotated and centred on its centre of mass (the dipole of a
charged cluster is taken about that origin).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np
from ase import Atoms

from .molecules import parse_xyz_block
from .sampling import InvalidOption, generate_configs, random_rotation
from .xtb import DEFAULT_ACCURACY, xtb_labelled_atoms

# GFN2-xTB minima (tblite 0.8), chain along z, centre of mass at the origin; Å.
_C10H2 = parse_xyz_block(
    """
C   0.0  0.0  -5.72264
C   0.0  0.0  -4.51445
C   0.0  0.0  -3.16840
C   0.0  0.0  -1.94656
C   0.0  0.0  -0.61234
C   0.0  0.0   0.61235
C   0.0  0.0   1.94657
C   0.0  0.0   3.16841
C   0.0  0.0   4.51444
C   0.0  0.0   5.72263
H   0.0  0.0  -6.77075
H   0.0  0.0   6.77072
"""
)
_C10H3 = parse_xyz_block(
    """
C   0.0      0.0  -5.76448
C   0.0      0.0  -4.54971
C   0.0      0.0  -3.21687
C   0.0      0.0  -1.98173
C   0.0      0.0  -0.67074
C   0.0      0.0   0.57524
C   0.0      0.0   1.87390
C   0.0      0.0   3.12970
C   0.0      0.0   4.41822
C   0.0      0.0   5.70426
H   0.0      0.0  -6.81714
H   0.91441  0.0   6.28148
H  -0.91441  0.0   6.28148
"""
)


def rock_salt_cluster(
    rng: np.random.Generator,
    vacancy: str,
    nn_range: tuple[float, float] = (2.35, 2.65),
    noise: float = 0.08,
) -> Atoms:
    """A 3x3x2 rock-salt block minus one corner ``vacancy`` ("Na" or "Cl"); Å."""
    sites = np.array([(i, j, k) for i in range(3) for j in range(3) for k in range(2)])
    symbols = np.where(sites.sum(axis=1) % 2 == 0, "Na", "Cl")
    corner = (0, 0, 0) if vacancy == "Na" else (0, 0, 1)
    keep = ~np.all(sites == corner, axis=1)
    assert symbols[~keep][0] == vacancy
    distance = rng.uniform(*nn_range)
    positions = sites[keep] * distance
    positions = positions + noise * rng.standard_normal(positions.shape)
    return Atoms(symbols=list(symbols[keep]), positions=positions)


def carbon_chain(
    rng: np.random.Generator,
    extra_hydrogen: bool,
    stretch: tuple[float, float] = (0.98, 1.02),
    noise: float = 0.025,
) -> Atoms:
    """C10H2 (or C10H3+ geometry when ``extra_hydrogen``) stretched along z; Å."""
    symbols, reference = _C10H3 if extra_hydrogen else _C10H2
    positions = reference.copy()
    positions[:, 2] *= rng.uniform(*stretch)
    positions = positions + noise * rng.standard_normal(positions.shape)
    return Atoms(symbols=symbols, positions=positions)


@dataclass(frozen=True)
class ClusterSystem:
    """A named cluster family member: total ``charge`` (e) and a geometry sampler."""

    name: str
    charge: int
    build: Callable[[np.random.Generator], Atoms]


CLUSTER_SYSTEMS: dict[str, ClusterSystem] = {
    s.name: s
    for s in [
        ClusterSystem("Na9Cl8+", 1, lambda rng: rock_salt_cluster(rng, vacancy="Cl")),
        ClusterSystem("Na8Cl9-", -1, lambda rng: rock_salt_cluster(rng, vacancy="Na")),
        ClusterSystem("Na9Cl8", 0, lambda rng: rock_salt_cluster(rng, vacancy="Cl")),
        ClusterSystem("C10H2", 0, lambda rng: carbon_chain(rng, extra_hydrogen=False)),
        ClusterSystem("C10H3+", 1, lambda rng: carbon_chain(rng, extra_hydrogen=True)),
    ]
}


def generate_clusters(
    n_configs: int,
    seed: int = 0,
    *,
    systems: tuple[str, ...] | list[str] = tuple(CLUSTER_SYSTEMS),
    accuracy: float = DEFAULT_ACCURACY,
    progress: bool | None = False,
) -> list[Atoms]:
    """``n_configs`` GFN2-xTB-labelled clusters, cycling through ``systems``.

    Labels: ``REF_energy`` (eV), ``REF_forces`` (eV/Å), ``REF_charges`` (e),
    ``REF_dipole`` (e·Å, about the centre of mass), ``total_charge`` (e),
    ``total_spin`` (2S+1); ``config_type`` is the system name.
    """
    unknown = [name for name in systems if name not in CLUSTER_SYSTEMS]
    if unknown or not systems:
        raise InvalidOption(
            f"unknown cluster systems {unknown}; choose from {list(CLUSTER_SYSTEMS)}"
        )
    chosen = [CLUSTER_SYSTEMS[name] for name in systems]

    def sample(rng: np.random.Generator, index: int) -> Atoms:
        system = chosen[index % len(chosen)]
        atoms = system.build(rng)
        atoms.positions = atoms.positions @ random_rotation(rng).T
        atoms.positions -= atoms.get_center_of_mass()
        return xtb_labelled_atoms(
            atoms.numbers,
            atoms.positions,
            total_charge=system.charge,
            config_type=system.name,
            accuracy=accuracy,
        )

    return generate_configs(sample, n_configs, seed, progress=progress, desc="clusters")


__all__ = [
    "CLUSTER_SYSTEMS",
    "ClusterSystem",
    "carbon_chain",
    "generate_clusters",
    "rock_salt_cluster",
]
