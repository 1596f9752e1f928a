"""Small structure builders shared by the tests (not a library API)."""

from __future__ import annotations

import numpy as np
import torch
from ase import Atoms


def random_neutral_ions(n_pairs: int, cell: np.ndarray, seed: int, min_distance: float = 1.5) -> Atoms:
    """n_pairs cations (+1, Na) and anions (-1, Cl) placed at random without overlaps."""
    rng = np.random.default_rng(seed)
    atoms = Atoms(cell=cell, pbc=True)
    positions: list[np.ndarray] = []
    while len(positions) < 2 * n_pairs:
        trial = rng.random(3) @ cell
        candidate = Atoms("H", positions=[trial], cell=cell, pbc=True)
        ok = True
        for p in positions:
            d = candidate.cell.scaled_positions(np.array([trial - p]))[0]
            d -= np.round(d)
            if np.linalg.norm(d @ cell) < min_distance:
                ok = False
                break
        if ok:
            positions.append(trial)
    atoms = Atoms(
        ["Na", "Cl"] * n_pairs, positions=positions, cell=cell, pbc=True
    )
    atoms.set_initial_charges([1.0, -1.0] * n_pairs)
    return atoms


def numpy_coulomb(positions: np.ndarray, charges: np.ndarray, smearing=0.0):
    """Plain double loop: energy, potential, field in Gaussian units (k_e = 1).

    ``smearing``: one Gaussian width for all charges or one per atom (Å); the pair
    kernel is erf(r / sqrt(2 (s_i^2 + s_j^2))) / r.
    """
    widths = np.broadcast_to(np.asarray(smearing, dtype=float), (len(positions),))
    from math import erf, exp, pi, sqrt

    n = len(positions)
    energy = 0.0
    potential = np.zeros(n)
    field = np.zeros((n, 3))
    for i in range(n):
        for j in range(n):
            if i == j:
                continue
            r_vec = positions[i] - positions[j]
            r = sqrt(float(r_vec @ r_vec))
            w = sqrt(2 * (widths[i] ** 2 + widths[j] ** 2))
            if w > 0:
                f = erf(r / w) / r
                g = (erf(r / w) / r - 2 / (sqrt(pi) * w) * exp(-((r / w) ** 2))) / r**2
            else:
                f = 1 / r
                g = 1 / r**3
            potential[i] += charges[j] * f
            field[i] += charges[j] * g * r_vec
            if j > i:
                energy += charges[i] * charges[j] * f
    return energy, potential, field


def fd_force(energy_of, atoms: Atoms, i: int, a: int, h: float = 1e-5) -> float:
    """-dE/dr_{i,a} (eV/Å) by central differences; ``energy_of(atoms) -> float`` (eV)."""
    energies = []
    for sign in (1, -1):
        moved = atoms.copy()
        moved.positions[i, a] += sign * h
        energies.append(energy_of(moved))
    return -(energies[0] - energies[1]) / (2 * h)


def fd_stress(energy_of, atoms: Atoms, a: int, b: int, h: float = 1e-5) -> float:
    """dE/d(eps_ab) / V (eV/Å^3) for a symmetric strain, by central differences."""
    energies = []
    for sign in (1, -1):
        strain = np.eye(3)
        strain[a, b] += sign * h / 2
        strain[b, a] += sign * h / 2
        strained = atoms.copy()
        strained.set_cell(atoms.cell.array @ strain, scale_atoms=True)
        energies.append(energy_of(strained))
    return (energies[0] - energies[1]) / (2 * h) / atoms.get_volume()


def jittered_ions(n_side: int, density: float, seed: int, vacuum: float = 0.0):
    """(positions [N, 3] Å, charges [N] e, cell [3, 3] Å), float64: n_side^3 charges +-1 (half
    each) on a cubic lattice at ``density`` (atoms/Å^3), each jittered by up to +-0.35 of the
    lattice step (no pair closer than 0.3 steps); ``vacuum``: extra fraction of the box along z,
    the atoms centred in it (a slab). Shared by the k-space tests and benchmarks."""
    g = torch.Generator().manual_seed(seed)
    a = density ** (-1.0 / 3.0)
    idx = torch.stack(torch.meshgrid(*[torch.arange(n_side)] * 3, indexing="ij"), -1).reshape(-1, 3).double()
    positions = (idx + 0.5 + 0.7 * (torch.rand(idx.shape, generator=g, dtype=torch.float64) - 0.5)) * a
    charges = torch.ones(len(positions), dtype=torch.float64)
    charges[torch.randperm(len(positions), generator=g)[: len(positions) // 2]] = -1.0
    length = n_side * a
    cell = torch.diag(torch.tensor([length, length, length * (1.0 + vacuum)], dtype=torch.float64))
    positions[:, 2] += 0.5 * vacuum * length
    return positions, charges, cell

