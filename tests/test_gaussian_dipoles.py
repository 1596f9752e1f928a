"""Gaussian charges + Gaussian dipoles (the atomic mode of the dipoles head) against the engine.

float64. Independent truth: the engine's point charges and point dipoles (exact direct
sum in open boundaries; torch-pme Ewald for dipole-dipole plus our charge-dipole terms in
periodic cells, accuracy 1e-10). Gaussian clouds differ from points only within a few
widths, so

* open, w = 0.05 Å, sites >= 2 Å apart: erfc(2 / 0.1) ~ 1e-176, so equal to 1e-11 eV
  once the dipoles' self-energies (the springs, known analytically) are removed;
* periodic, w = 0.35 Å: Gaussian = point + sum over pairs and images within 5 Å of the
  pair-energy difference (erfc(5 / 0.7) ~ 1e-23 beyond) + the springs; compared at 1e-9
  (the Ewald sums' accuracy).
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from mace_lr.electrostatics import COULOMB_CONSTANT, Electrostatics
from mace_lr.electrostatics.gaussian_dipoles import GaussianChargesAndDipoles


def sites(seed: int = 0):
    rng = np.random.default_rng(seed)
    grid = np.stack(np.meshgrid(*[np.arange(2)] * 3, indexing="ij"), -1).reshape(-1, 3) * 3.0
    positions = torch.tensor(grid + rng.uniform(-0.3, 0.3, grid.shape))
    charges = torch.tensor(rng.normal(size=len(grid)))
    charges -= charges.mean()
    dipoles = 0.3 * torch.tensor(rng.normal(size=(len(grid), 3)))
    return positions, charges, dipoles


def springs(dipoles: torch.Tensor, width: float) -> float:
    return float((dipoles**2).sum()) / (12.0 * math.sqrt(math.pi) * width**3)


def pair_energy(q_i, q_j, p_i, p_j, x, a):
    """E_ij (e^2/Å) of two clouds with erf(r/a)/r interaction (a = 0: point multipoles), by numpy."""
    r = np.linalg.norm(x)
    erf = math.erf(r / a) if a else 1.0
    gauss = 2.0 / (math.sqrt(math.pi) * a) * math.exp(-r * r / (a * a)) if a else 0.0
    d1 = gauss / r - erf / r**2
    d2 = (-2.0 / (a * a) * gauss if a else 0.0) - 2.0 * gauss / r**2 + 2.0 * erf / r**3
    hessian = d1 / r * np.eye(3) + (d2 - d1 / r) * np.outer(x, x) / r**2
    return q_i * q_j * erf / r + (q_j * p_i - q_i * p_j) @ (d1 / r * x) - p_i @ hessian @ p_j


def test_open_boundaries_equal_point_multipoles_for_narrow_clouds():
    positions, charges, dipoles = sites()
    width = 0.05
    module = GaussianChargesAndDipoles(width, 1e-8)
    pbc = torch.zeros(1, 3, dtype=torch.bool)
    energy = module(charges, dipoles, positions, torch.zeros(1, 3, 3), pbc, torch.tensor([0, len(positions)])).sum()
    reference = Electrostatics(method="direct")(positions, charges, torch.zeros(1, 3, 3), pbc, dipoles=dipoles,
                                                 compute_field=False)["energy"][0] / COULOMB_CONSTANT
    assert float(energy) - springs(dipoles, width) == pytest.approx(float(reference), abs=1e-11)


def test_periodic_sum_equals_ewald_point_multipoles_plus_short_range_difference():
    positions, charges, dipoles = sites(seed=1)
    width, length = 0.35, 6.0
    cell = torch.eye(3, dtype=torch.float64) * length
    pbc = torch.ones(1, 3, dtype=torch.bool)
    module = GaussianChargesAndDipoles(width, 1e-10)
    per_atom = module(charges, dipoles, positions, cell[None], pbc, torch.tensor([0, len(positions)]))
    reference = Electrostatics(method="ewald", accuracy=1e-10)(positions, charges, cell[None], pbc, dipoles=dipoles,
                                                               compute_field=False)["energy"][0] / COULOMB_CONSTANT
    correction = 0.0
    p, q, d = positions.numpy(), charges.numpy(), dipoles.numpy()
    shifts = np.array(np.meshgrid(*[np.arange(-1, 2)] * 3, indexing="ij")).reshape(3, -1).T * length
    for i in range(len(p)):
        for j in range(len(p)):
            for shift in shifts:
                x = p[i] - p[j] + shift
                r = np.linalg.norm(x)
                if r < 1e-9 or r > 5.0:
                    continue
                correction += 0.5 * (pair_energy(q[i], q[j], d[i], d[j], x, 2 * width)
                                     - pair_energy(q[i], q[j], d[i], d[j], x, 0.0))
    expected = float(reference) + correction + springs(dipoles, width)
    assert float(per_atom.sum()) == pytest.approx(expected, abs=1e-9)


def test_periodic_cells_must_be_neutral_and_not_too_large():
    positions, charges, dipoles = sites()
    cell = torch.eye(3, dtype=torch.float64)[None] * 6.0
    pbc = torch.ones(1, 3, dtype=torch.bool)
    ptr = torch.tensor([0, len(positions)])
    with pytest.raises(RuntimeError, match="must be neutral"):
        GaussianChargesAndDipoles(0.5)(charges + 0.1, dipoles, positions, cell, pbc, ptr)
    with pytest.raises(RuntimeError, match="too many k-vectors"):
        GaussianChargesAndDipoles(0.5)(charges, dipoles, positions, cell * 40.0, pbc, ptr)
