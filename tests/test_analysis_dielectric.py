"""Dielectric constant from dipole fluctuations against the Debye/Langevin result (float64)."""

from __future__ import annotations

import numpy as np
import pytest
from ase import Atoms
from ase.units import kB

from mace_lr.analysis import (
    DiagnosticsOptions,
    ElementCharges,
    debye_dielectric_constant,
    diagnose_frames,
    dielectric_constant,
)
from mace_lr.analysis.polarization import response_factor
from mace_lr.electrostatics import COULOMB_CONSTANT

N_DIPOLES, DIPOLE, LENGTH, TEMPERATURE = 64, 0.4, 20.0, 300.0  # e·Å, Å, K


def random_orientations(rng: np.random.Generator, shape: tuple[int, ...]) -> np.ndarray:
    """Unit vectors uniform on the sphere (normalised Gaussians): the exact zero-field
    Boltzmann distribution of non-interacting rigid dipoles."""
    v = rng.normal(size=shape + (3,))
    return v / np.linalg.norm(v, axis=-1, keepdims=True)


def test_formula_and_units_on_a_two_state_dipole():
    """M = +-m x alternating: <M^2> - <M>^2 = m^2, eps = 1 + 4 pi k_e m^2 / (3 V k_B T)."""
    m, volume = 2.5, 1234.0
    dipoles = np.array([[m, 0, 0], [-m, 0, 0]] * 50)
    result = dielectric_constant(dipoles, np.full(100, volume), TEMPERATURE, n_blocks=5)
    expected = 1 + 4 * np.pi * 14.399645 * m**2 / (3 * volume * 8.617333e-5 * TEMPERATURE)
    assert result.value == pytest.approx(expected, rel=1e-6)  # constants to 7 digits
    assert result.error == pytest.approx(0.0, abs=1e-12)  # every block has the same variance
    assert result.dipole_variance == pytest.approx(m**2)
    assert not result.warnings


def test_debye_rigid_dipoles_within_error_bars_over_seeds():
    """Random orientations sampled exactly: eps must equal 1 + 4 pi k_e N mu^2/(3 V k_B T)
    (= 3.99 here) within its block-average error. With 20 blocks the z-score is close to
    a t-distribution with 19 dof (rms 1.06); over 24 seeds its rms must lie in 0.7-1.45
    (+-2.5 standard deviations of an rms of 24), every |z| below 3.5, and the error
    bar must match the exact standard error, (eps - 1) sqrt(2 / (3 F)) for Gaussian M,
    within 25%."""
    expected = debye_dielectric_constant(N_DIPOLES, DIPOLE, LENGTH**3, TEMPERATURE)
    assert expected == pytest.approx(
        1 + 4 * np.pi * COULOMB_CONSTANT * N_DIPOLES * DIPOLE**2 / (3 * LENGTH**3 * kB * TEMPERATURE)
    )
    n_frames = 1000
    z, errors = [], []
    for seed in range(24):
        rng = np.random.default_rng(seed)
        total = DIPOLE * random_orientations(rng, (n_frames, N_DIPOLES)).sum(axis=1)
        result = dielectric_constant(total, np.full(n_frames, LENGTH**3), TEMPERATURE, n_blocks=20)
        z.append((result.value - expected) / result.error)
        errors.append(result.error)
        assert result.drift_ratio < 1.3, "independent frames: no drift"
        assert not result.warnings
    z = np.array(z)
    assert np.max(np.abs(z)) < 3.5
    assert 0.7 < np.sqrt(np.mean(z**2)) < 1.45
    exact_error = (expected - 1) * np.sqrt(2 / (3 * n_frames))
    assert np.mean(errors) == pytest.approx(exact_error, rel=0.25)


def test_a_random_walk_dipole_is_flagged():
    """M of diffusing ions random-walks: its variance grows with the window, so the whole
    run varies ~n_blocks times more than a block (ratio measured 3-9 for 10 blocks)."""
    rng = np.random.default_rng(1)
    walk = np.cumsum(rng.normal(size=(2000, 3)), axis=0)
    result = dielectric_constant(walk, np.full(2000, 1000.0), TEMPERATURE, n_blocks=10)
    assert result.drift_ratio > 2.5
    assert any("drifts" in w for w in result.warnings)


def dipolar_frames(n_frames: int, seed: int) -> list[Atoms]:
    """Rigid point dipoles at random positions, random orientations, zero charges."""
    rng = np.random.default_rng(seed)
    frames = []
    for _ in range(n_frames):
        atoms = Atoms(["O"] * N_DIPOLES, positions=rng.uniform(0, LENGTH, (N_DIPOLES, 3)),
                      cell=np.eye(3) * LENGTH, pbc=True)
        atoms.arrays["dipoles"] = DIPOLE * random_orientations(rng, (N_DIPOLES,))
        atoms.info["REF_dipole"] = atoms.arrays["dipoles"].sum(axis=0)
        frames.append(atoms)
    return frames


def test_diagnose_frames_gives_debye_eps_and_polarization_responses():
    """Through the full pass: eps from per-atom dipoles and from the file's REF_dipole agree
    (same M), and, for uncorrelated dipoles, <|P_L(k)|^2>/V = <|P_T(k)|^2>/(2V) = N mu^2/(3V)
    at every k, i.e. 4 pi k_e beta chi_L = 4 pi k_e beta chi_T = eps_Debye - 1: checked on
    the mean over all k bins (within 4 of its standard errors) and per bin (5 sigma)."""
    frames = dipolar_frames(400, seed=3)
    expected = debye_dielectric_constant(N_DIPOLES, DIPOLE, LENGTH**3, TEMPERATURE)
    zero = ElementCharges({8: 0.0})
    reports = {}
    for dipole_key in ("auto", None):
        options = DiagnosticsOptions(kmax=1.5, n_bins=30, n_blocks=10, temperature=TEMPERATURE,
                                     dipole_key=dipole_key, atomic_dipoles_key="dipoles", progress=False)
        reports[dipole_key] = diagnose_frames(frames, zero, options)
    from_file, from_atoms = reports["auto"], reports[None]
    assert from_file.dipole_source.startswith("total dipole from the file")
    assert from_atoms.dipole_source.startswith("sum_i q_i r_i")
    assert from_file.dielectric.value == pytest.approx(from_atoms.dielectric.value, rel=1e-10)
    d = from_file.dielectric
    assert abs(d.value - expected) < 3 * d.error
    factor = response_factor(TEMPERATURE)
    for spectrum in (from_file.chi_longitudinal, from_file.chi_transverse):
        response = factor * spectrum.value
        error = factor * spectrum.error
        assert np.all(np.abs(response - (expected - 1)) < 5 * error)
        mean_error = np.sqrt(np.sum(error**2)) / len(error)
        assert abs(np.mean(response) - (expected - 1)) < 4 * mean_error
    assert from_file.verdict.code in ("undetermined",)  # no charges: S_QQ = 0
