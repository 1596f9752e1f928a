"""Rigid-ion molten salt: NVT molecular dynamics with full or truncated Coulomb.

The model of :mod:`mace_lr.data.random_charges`: ``n_ions`` ions, half Na (+1 e) and
half Cl (-1 e), Born-Mayer repulsion (A = 1000 eV, rho = 0.3 Å, cut at 5 Å) plus
Coulomb, either

- ``coulomb="ewald"``: the full periodic sum from the engine
  (:class:`mace_lr.electrostatics.Electrostatics`, Ewald at relative force accuracy
  ``accuracy``), or
- ``coulomb="truncated"``: shifted-force Coulomb cut at ``cutoff`` (default 6 Å, a
  typical short-range model cutoff), k_e q_i q_j [1/r - 1/r_c + (r - r_c)/r_c^2] for
  r < r_c, pairs from vesin. Energy and force go to zero at r_c; its Fourier transform
  stays finite at k = 0 (k_e pi r_c^2 / 3 per unit charge product), so it cannot
  screen long-wavelength charge fluctuations.

Dynamics: ASE's Langevin integrator (NVT; time step 4 fs, which keeps the total energy
of plain velocity Verlet constant to 1e-4 eV/ion over 500 steps), positions left
unwrapped. The start is a random insertion
(:func:`mace_lr.data.random_charges.random_positions`) relaxed by ``relax_steps``
truncated-Coulomb steps of 2 fs with strong friction (0.1/fs); production frames are
written every ``sample_every`` steps after ``equilibration_steps``.

Default state point: 26 Å^3 per ion (0.0385 ions/Å^3; 216 ions: L = 17.8 Å),
T = 1500 K, a liquid (ions diffuse ~30 Å^2 in 8 ps); the rock-salt crystal of these
ions has 17 Å^3 per ion (nearest neighbours 2.57 Å).
"""

from __future__ import annotations

from typing import Iterator

import numpy as np
from ase import Atoms, units
from ase.calculators.calculator import Calculator, all_changes

from .random_charges import REPULSION_A, REPULSION_CUTOFF, REPULSION_RHO, born_mayer_repulsion, random_positions
from .sampling import InvalidOption

COULOMB_MODES = ("ewald", "truncated")


def truncated_coulomb(atoms: Atoms, charges: np.ndarray, cutoff: float) -> tuple[float, np.ndarray]:
    """Shifted-force Coulomb energy (eV) and forces [N, 3] (eV/Å), cut at ``cutoff`` (Å)."""
    import vesin

    from mace_lr.electrostatics.units import COULOMB_CONSTANT

    i, j, vectors = vesin.NeighborList(cutoff=cutoff, full_list=False).compute(
        atoms.positions, atoms.cell.array, True, quantities="ijD"
    )
    r = np.linalg.norm(vectors, axis=1)
    qq = COULOMB_CONSTANT * charges[i] * charges[j]
    energy = float(np.sum(qq * (1.0 / r - 1.0 / cutoff + (r - cutoff) / cutoff**2)))
    de_dr = qq * (-1.0 / r**2 + 1.0 / cutoff**2)
    pair_forces = -(de_dr / r)[:, None] * vectors  # on j
    forces = np.zeros((len(atoms), 3))
    np.add.at(forces, j, pair_forces)
    np.add.at(forces, i, -pair_forces)
    return energy, forces


class MoltenSaltCalculator(Calculator):
    """Born-Mayer repulsion + Coulomb (``ewald`` or ``truncated``) of ions with
    ``atoms.get_initial_charges()`` (e): energy (eV) and forces (eV/Å).

    ``cutoff``: truncation radius (Å) of the truncated model; ``accuracy``: relative
    force accuracy of the Ewald sum; ``torch_threads``: torch threads during the Ewald
    call (``None``: leave torch's setting alone).
    """

    implemented_properties = ["energy", "free_energy", "forces"]

    def __init__(
        self,
        coulomb: str = "ewald",
        cutoff: float = 6.0,
        accuracy: float = 1e-3,
        torch_threads: int | None = 1,
        **kwargs,
    ) -> None:
        super().__init__(**kwargs)
        if coulomb not in COULOMB_MODES:
            raise InvalidOption(f"coulomb must be one of {COULOMB_MODES}, got {coulomb!r}")
        self.coulomb, self.cutoff, self.accuracy = coulomb, float(cutoff), float(accuracy)
        self.torch_threads = torch_threads
        self._engine = None

    def _ewald(self, atoms: Atoms, charges: np.ndarray) -> tuple[float, np.ndarray]:
        """Engine energy and forces; torch runs on ``torch_threads`` threads meanwhile
        (hundreds of ions: 1 thread is fastest; measured 45 ms per step against 340 ms
        with 2 threads on a busy 2-core machine), and the caller's setting is restored."""
        import torch

        from mace_lr.electrostatics import Electrostatics

        if self._engine is None:
            self._engine = Electrostatics(method="ewald", accuracy=self.accuracy)
        previous = torch.get_num_threads()
        if self.torch_threads is not None:
            torch.set_num_threads(self.torch_threads)
        try:
            positions = torch.tensor(atoms.positions, dtype=torch.float64, requires_grad=True)
            cell = torch.tensor(atoms.cell.array, dtype=torch.float64).unsqueeze(0)
            pbc = torch.ones(1, 3, dtype=torch.bool)
            energy = self._engine(positions, torch.tensor(charges, dtype=torch.float64), cell, pbc)["energy"][0]
            (grad,) = torch.autograd.grad(energy, positions)
        finally:
            torch.set_num_threads(previous)
        return float(energy.detach()), -grad.numpy()

    def calculate(self, atoms=None, properties=("energy",), system_changes=all_changes) -> None:
        super().calculate(atoms, properties, system_changes)
        charges = self.atoms.get_initial_charges()
        e_rep, f_rep, _ = born_mayer_repulsion(self.atoms, REPULSION_A, REPULSION_RHO, REPULSION_CUTOFF)
        if self.coulomb == "ewald":
            e_coul, f_coul = self._ewald(self.atoms, charges)
        else:
            e_coul, f_coul = truncated_coulomb(self.atoms, charges, self.cutoff)
        energy = e_rep + e_coul
        self.results.update(energy=energy, free_energy=energy, forces=f_rep + f_coul)


def initial_melt(n_ions: int, volume_per_ion: float, seed: int) -> Atoms:
    """Random ±1 ions (Na first, then Cl) in a cubic box at ``volume_per_ion`` (Å^3),
    no two closer than 1.8 Å, with ``initial_charges`` set."""
    if isinstance(n_ions, bool) or not isinstance(n_ions, (int, np.integer)) or n_ions < 2 or n_ions % 2:
        raise InvalidOption(f"n_ions must be an even integer >= 2, got {n_ions!r}")
    if not volume_per_ion > 4.0:
        raise InvalidOption(f"volume_per_ion must be > 4 Å^3 (random insertion), got {volume_per_ion}")
    length = float((n_ions * volume_per_ion) ** (1.0 / 3.0))
    rng = np.random.default_rng(seed)
    half = n_ions // 2
    atoms = Atoms(
        numbers=[11] * half + [17] * half,
        positions=random_positions(rng, n_ions, length, 1.8),
        cell=np.eye(3) * length,
        pbc=True,
    )
    atoms.set_initial_charges([1.0] * half + [-1.0] * half)
    return atoms


def _langevin(atoms: Atoms, timestep: float, temperature: float, friction: float, rng: np.random.Generator):
    from ase.md.langevin import Langevin

    return Langevin(atoms, timestep * units.fs, temperature_K=temperature, friction=friction / units.fs,
                    fixcm=False, rng=rng)


def run_molten_salt(
    coulomb: str,
    n_ions: int = 216,
    temperature: float = 1500.0,
    volume_per_ion: float = 26.0,
    n_frames: int = 200,
    sample_every: int = 10,
    equilibration_steps: int = 100,
    relax_steps: int = 300,
    timestep: float = 4.0,
    friction: float = 0.01,
    cutoff: float = 6.0,
    accuracy: float = 1e-3,
    seed: int = 0,
    start: Atoms | None = None,
    progress: bool = False,
) -> list[Atoms]:
    """NVT trajectory of the rigid-ion melt (module docstring): ``n_frames`` frames.

    ``temperature`` K, ``timestep`` fs, ``friction`` 1/fs (Langevin), ``cutoff`` Å (the
    truncated model only), ``accuracy`` the Ewald force accuracy. ``start``: a
    configuration to continue from (else :func:`initial_melt` relaxed with
    ``relax_steps`` truncated-Coulomb steps at friction 0.1/fs). Frames are copies with
    unwrapped positions, ``initial_charges``, info ``time_fs`` and ``coulomb``.
    """
    if coulomb not in COULOMB_MODES:
        raise InvalidOption(f"coulomb must be one of {COULOMB_MODES}, got {coulomb!r}")
    rng = np.random.default_rng(seed)
    if start is None:
        atoms = initial_melt(n_ions, volume_per_ion, seed)
        atoms.calc = MoltenSaltCalculator("truncated", cutoff=cutoff)
        _langevin(atoms, 0.5 * timestep, temperature, 0.1, rng).run(relax_steps)
    else:
        atoms = start.copy()
    atoms.calc = MoltenSaltCalculator(coulomb, cutoff=cutoff, accuracy=accuracy)
    dynamics = _langevin(atoms, timestep, temperature, friction, rng)
    dynamics.run(equilibration_steps)
    frames = []
    steps: Iterator[int] = range(n_frames)
    if progress:
        from tqdm import tqdm

        steps = tqdm(steps, desc=f"molten salt ({coulomb})")
    for _ in steps:
        dynamics.run(sample_every)
        frame = Atoms(atoms.numbers, positions=atoms.positions, cell=atoms.cell, pbc=True)
        frame.set_initial_charges(atoms.get_initial_charges())
        frame.set_momenta(atoms.get_momenta())
        frame.info.update(time_fs=dynamics.get_time() / units.fs, coulomb=coulomb)
        frames.append(frame)
    return frames


__all__ = ["COULOMB_MODES", "MoltenSaltCalculator", "initial_melt", "run_molten_salt", "truncated_coulomb"]
