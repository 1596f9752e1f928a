"""Random ±1 e point charges with a short-range repulsion in a cubic periodic box.

The latent-charge benchmark of the LES paper (B. Cheng, "Latent Ewald summation for
machine learning of long-range interactions", npj Comput. Mater. 2025): ``n_atoms``
ions, half Na (+1 e) and half Cl (-1 e, the element types only tell MACE which is
which), energy = Coulomb (Ewald, exact for point charges) + Born-Mayer repulsion

    E_rep = sum_{i<j, r_ij < cutoff} A [exp(-r_ij / rho) - exp(-cutoff / rho)]

between all pairs, with A = 1000 eV, rho = 0.3 Å (close to Tosi-Fumi NaCl's b·exp
prefactors), shifted to zero at the cutoff (5 Å). A ± pair is in balance at
r0 ≈ 2.07 Å, so the ions are smaller than real Na+/Cl-.

Geometry: positions uniform in the box, inserted one at a time and redrawn while
closer than ``min_distance`` (default 1.8 Å) to an ion already placed (minimum image).
Default density: ``volume_per_atom`` = 12 Å^3 (128 atoms: L = 11.54 Å), about 0.75 of
the rock-salt density of these ions (r0^3 ≈ 8.9 Å^3 per ion), i.e. a hot, liquid-like
density at which random insertion (packing fraction ≈ 0.25) never jams.

Coulomb labels (energy, forces, stress) come from the engine through
:class:`mace_lr.calculators.CoulombCalculator` (Ewald, accuracy 1e-8); the repulsion is
computed here with a vesin neighbour list in numpy.
"""

from __future__ import annotations

import numpy as np
from ase import Atoms
from ase.calculators.calculator import Calculator, all_changes

from .io import labelled_atoms, snap_positions
from .sampling import InvalidOption, RejectedSample, check_positive, generate_configs

REPULSION_A = 1000.0  # eV
REPULSION_RHO = 0.3  # Å
REPULSION_CUTOFF = 5.0  # Å


def born_mayer_repulsion(
    atoms: Atoms,
    prefactor: float = REPULSION_A,
    rho: float = REPULSION_RHO,
    cutoff: float = REPULSION_CUTOFF,
) -> tuple[float, np.ndarray, np.ndarray | None]:
    """Shifted Born-Mayer repulsion of all pairs (module docstring).

    Returns energy (eV), forces [N, 3] (eV/Å) and, for a fully periodic cell, the stress
    in ASE Voigt order (eV/Å^3; ``None`` otherwise).
    """
    import vesin  # imports torch: keep it out of ``import mace_lr.data``

    periodic = bool(atoms.pbc.all())
    if atoms.pbc.any() and not periodic:
        raise ValueError("born_mayer_repulsion supports fully periodic or open structures")
    box = atoms.cell.array if periodic else np.zeros((3, 3))
    i, j, vectors = vesin.NeighborList(cutoff=cutoff, full_list=False).compute(
        atoms.positions, box, periodic, quantities="ijD"
    )
    distances = np.linalg.norm(vectors, axis=1)
    exponential = prefactor * np.exp(-distances / rho)
    energy = float(np.sum(exponential - prefactor * np.exp(-cutoff / rho)))
    de_dr = -exponential / rho  # [P]
    pair_forces = -(de_dr / distances)[:, None] * vectors  # force on j, minus on i
    forces = np.zeros((len(atoms), 3))
    np.add.at(forces, j, pair_forces)
    np.add.at(forces, i, -pair_forces)
    if not periodic:
        return energy, forces, None
    virial = np.einsum("p,pa,pb->ab", de_dr / distances, vectors, vectors)
    stress = virial / atoms.get_volume()
    return energy, forces, stress.flat[[0, 4, 8, 5, 2, 1]]


class RepulsionCalculator(Calculator):
    """ASE calculator for :func:`born_mayer_repulsion` (energy eV, forces eV/Å,
    stress eV/Å^3). Add a ``CoulombCalculator`` (``SumCalculator``) for the full model."""

    implemented_properties = ["energy", "free_energy", "forces", "stress"]

    def __init__(
        self,
        prefactor: float = REPULSION_A,
        rho: float = REPULSION_RHO,
        cutoff: float = REPULSION_CUTOFF,
        **kwargs,
    ) -> None:
        super().__init__(**kwargs)
        self.prefactor, self.rho, self.cutoff = prefactor, rho, cutoff

    def calculate(self, atoms=None, properties=("energy",), system_changes=all_changes) -> None:
        super().calculate(atoms, properties, system_changes)
        energy, forces, stress = born_mayer_repulsion(
            self.atoms, self.prefactor, self.rho, self.cutoff
        )
        self.results.update(energy=energy, free_energy=energy, forces=forces)
        if stress is not None:
            self.results["stress"] = stress


def coulomb_labels(atoms: Atoms, charges: np.ndarray) -> tuple[float, np.ndarray, np.ndarray]:
    """Ewald energy (eV), forces (eV/Å) and stress (Voigt, eV/Å^3) of point ``charges``
    (e) from the engine's ``CoulombCalculator``."""
    from mace_lr.calculators import CoulombCalculator

    calc = CoulombCalculator(charges=None, method="ewald", smearing=0.0, accuracy=1e-8)
    probe = atoms.copy()
    probe.set_initial_charges(charges)
    probe.calc = calc
    return probe.get_potential_energy(), probe.get_forces(), probe.get_stress()


def random_positions(
    rng: np.random.Generator,
    n_atoms: int,
    length: float,
    min_distance: float,
    max_trials: int = 10_000,
) -> np.ndarray:
    """Uniform random positions [N, 3] (Å) in a cubic box of side ``length`` (Å), no two
    closer than ``min_distance`` (minimum image); ``RejectedSample`` if insertion stalls."""
    positions = np.empty((n_atoms, 3))
    for k in range(n_atoms):
        for _ in range(max_trials):
            candidate = rng.uniform(0.0, length, size=3)
            delta = positions[:k] - candidate
            delta -= length * np.round(delta / length)
            if k == 0 or np.min(np.einsum("ij,ij->i", delta, delta)) >= min_distance**2:
                positions[k] = candidate
                break
        else:
            raise RejectedSample(f"could not insert atom {k} after {max_trials} trials")
    return positions


def generate_random_charges(
    n_configs: int,
    seed: int = 0,
    *,
    n_atoms: int = 128,
    volume_per_atom: float = 12.0,
    min_distance: float = 1.8,
    progress: bool | None = False,
) -> list[Atoms]:
    """``n_configs`` periodic random-charge boxes (module docstring).

    ``volume_per_atom`` in Å^3, ``min_distance`` in Å. Labels: ``REF_energy`` (eV),
    ``REF_forces`` (eV/Å), ``REF_stress`` (eV/Å^3, Voigt), ``REF_charges`` (±1 e),
    ``total_charge`` = 0; info ``config_type="random_charges"`` and
    ``coulomb_energy`` (eV, the Ewald part of REF_energy).
    """
    if (
        isinstance(n_atoms, bool)
        or not isinstance(n_atoms, (int, np.integer))
        or n_atoms < 2
        or n_atoms % 2
    ):
        raise InvalidOption(f"n_atoms must be an even integer >= 2, got {n_atoms!r}")
    check_positive("volume_per_atom", volume_per_atom)
    check_positive("min_distance", min_distance)
    length = float((n_atoms * volume_per_atom) ** (1.0 / 3.0))
    packing = n_atoms * np.pi * min_distance**3 / 6.0 / length**3
    if packing > 0.3:
        raise InvalidOption(
            f"min_distance {min_distance} Å at {volume_per_atom} Å^3/atom packs spheres to "
            f"{packing:.2f}; random insertion jams near 0.38, keep it below 0.3"
        )
    half = n_atoms // 2
    numbers = np.array([11] * half + [17] * half)
    charges = np.array([1.0] * half + [-1.0] * half)
    cell = np.eye(3) * length

    def sample(rng: np.random.Generator, index: int) -> Atoms:
        positions = snap_positions(random_positions(rng, n_atoms, length, min_distance))
        atoms = Atoms(numbers=numbers, positions=positions, cell=cell, pbc=True)
        e_rep, f_rep, s_rep = born_mayer_repulsion(atoms)
        e_coul, f_coul, s_coul = coulomb_labels(atoms, charges)
        return labelled_atoms(
            numbers,
            positions,
            energy=e_rep + e_coul,
            forces=f_rep + f_coul,
            stress=s_rep + s_coul,
            charges=charges,
            total_charge=0.0,
            cell=cell,
            pbc=True,
            config_type="random_charges",
            extra_info={"coulomb_energy": float(e_coul)},
        )

    return generate_configs(sample, n_configs, seed, progress=progress, desc="random-charges")


__all__ = [
    "REPULSION_A",
    "REPULSION_CUTOFF",
    "REPULSION_RHO",
    "RepulsionCalculator",
    "born_mayer_repulsion",
    "coulomb_labels",
    "generate_random_charges",
    "random_positions",
]
