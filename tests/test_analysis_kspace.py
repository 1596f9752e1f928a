"""k-vectors, S_QQ(k) and polarization modes against cases with known answers (float64)."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from mace_lr.analysis import (
    DiagnosticsInputError,
    KBins,
    SpectrumAccumulator,
    fourier_modes,
    kvectors,
    reciprocal_cell,
    structure_factor_per_k,
)
from mace_lr.analysis.polarization import polarization_modes
from mace_lr.analysis.structure_factor import CHUNK_ELEMENTS

TRICLINIC = np.array([[7.1, 0.0, 0.0], [2.3, 6.4, 0.0], [-1.2, 1.7, 8.9]])
SKEWED = np.array([[5.0, 0.0, 0.0], [4.9, 1.0, 0.0], [0.3, -0.2, 5.0]])  # a, b at 11 degrees


def brute_force_kvectors(cell: np.ndarray, kmax: float, n: int = 20) -> set[tuple[int, int, int]]:
    """All integer triplets in [-n, n]^3 with 0 < |k| <= kmax (both k and -k); n = 20 is
    5x the largest index these cells need (kmax |a_j| / (2 pi) < 4)."""
    recip = 2 * np.pi * np.linalg.inv(cell).T
    grid = np.array(list(itertools.product(range(-n, n + 1), repeat=3)))
    norms = np.linalg.norm(grid @ recip, axis=1)
    return {tuple(m) for m in grid[(norms > 0) & (norms <= kmax)]}


@pytest.mark.parametrize("cell", [np.eye(3) * 9.0, TRICLINIC, SKEWED], ids=["cubic", "triclinic", "skewed"])
@pytest.mark.parametrize("kmax", [1.3, 2.7])
def test_kvectors_equal_brute_force_enumeration(cell, kmax):
    k, hkl = kvectors(cell, kmax)
    half = {tuple(m) for m in hkl}
    full = half | {tuple(-m) for m in hkl}
    assert len(full) == 2 * len(half), "a k-vector and its negative are both in the half space"
    assert full == brute_force_kvectors(cell, kmax)
    # k . a_j = 2 pi n_j, and sorted by |k|
    np.testing.assert_allclose(k @ cell.T, 2 * np.pi * hkl, atol=1e-10)
    assert np.all(np.diff(np.linalg.norm(k, axis=1)) >= -1e-12)


def test_reciprocal_cell_and_bad_cells():
    np.testing.assert_allclose(reciprocal_cell(TRICLINIC) @ TRICLINIC.T, 2 * np.pi * np.eye(3), atol=1e-12)
    with pytest.raises(DiagnosticsInputError, match="no volume"):
        kvectors(np.zeros((3, 3)), 2.0)
    with pytest.raises(DiagnosticsInputError, match="kmax"):
        kvectors(np.eye(3) * 5, 0.0)


def test_fourier_modes_chunking_and_dipole_limit(monkeypatch):
    rng = np.random.default_rng(3)
    positions = rng.uniform(0, 10, (50, 3))
    charges = rng.normal(size=50)
    k, _ = kvectors(np.eye(3) * 10, 3.0)
    direct = np.exp(-1j * k @ positions.T) @ charges
    np.testing.assert_allclose(fourier_modes(positions, charges, k), direct, atol=1e-11)
    monkeypatch.setattr("mace_lr.analysis.structure_factor.CHUNK_ELEMENTS", 7 * 50 + 3)
    np.testing.assert_allclose(fourier_modes(positions, charges, k), direct, atol=1e-11)
    assert CHUNK_ELEMENTS > 1000

    # a +-q pair at separation d is a point dipole q d: P_L from charges -> k_hat . mu e^{-ik.r}
    # up to O(k d)^2 (the pair is centred on r, so the O(kd) term cancels)
    centre, mu = np.array([1.0, 2.0, 3.0]), np.array([0.3, -0.2, 0.5])
    d = 1e-4 * mu / np.linalg.norm(mu)
    q = np.linalg.norm(mu) / np.linalg.norm(d)
    pair = np.array([centre + d / 2, centre - d / 2])
    from_charges, _ = polarization_modes(pair, k, charges=np.array([q, -q]))
    from_dipole, transverse = polarization_modes(centre[None], k, dipoles=mu[None])
    np.testing.assert_allclose(from_charges, from_dipole, rtol=0, atol=1e-8 * np.linalg.norm(mu))
    # P_T is orthogonal to k and P_L^2 + |P_T|^2 = |mu|^2 for one dipole
    assert np.max(np.abs(np.einsum("mc,mc->m", transverse, k))) < 1e-12
    np.testing.assert_allclose(np.abs(from_dipole) ** 2 + np.sum(np.abs(transverse) ** 2, 1), mu @ mu)


def rock_salt_supercell(a: float, n: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Conventional NaCl cell (4 Na at fcc sites, 4 Cl shifted by a/2 x) repeated n^3 times."""
    fcc = np.array([[0, 0, 0], [0, 0.5, 0.5], [0.5, 0, 0.5], [0.5, 0.5, 0]])
    basis = np.concatenate([fcc, fcc + [0.5, 0, 0]]) * a
    shifts = np.array(list(itertools.product(range(n), repeat=3))) * a
    positions = (shifts[:, None, :] + basis[None]).reshape(-1, 3)
    charges = np.tile([1.0] * 4 + [-1.0] * 4, n**3)
    return positions, charges, np.eye(3) * n * a


@pytest.mark.parametrize("n", [1, 2, 3])
def test_rock_salt_bragg_peaks(n):
    """rho(k) = (sum over cells) x (fcc factor) x (1 - e^{-i k.(a/2) x}). The cell sum is n^3
    when k = 2 pi (h, k, l)/a with integer hkl (else 0), the fcc factor 4 when h, k, l have
    one parity (else 0), the last factor 2 when h is odd (else 0). So S = |rho|^2/N = N at
    all-odd hkl (111, 311, 331, ...) and exactly 0 everywhere else."""
    a = 5.64
    positions, charges, cell = rock_salt_supercell(a, n)
    k, hkl, s = structure_factor_per_k(positions, charges, cell, kmax=2 * np.pi * np.sqrt(20) / a)
    conventional = hkl / n
    on_lattice = np.all(np.isclose(conventional, np.round(conventional)), axis=1)
    all_odd = on_lattice & np.all(np.round(conventional) % 2 == 1, axis=1)
    n_atoms = len(positions)
    assert all_odd.sum() > 0
    np.testing.assert_allclose(s[all_odd], n_atoms, rtol=1e-12)
    assert np.max(s[~all_odd]) < 1e-20 * n_atoms**2  # round-off only
    # peak positions: |k| = (2 pi / a) sqrt(h^2 + k^2 + l^2), h^2+k^2+l^2 in {3, 11, 19}
    shells = np.unique(np.round((np.linalg.norm(k[all_odd], axis=1) * a / (2 * np.pi)) ** 2, 8))
    np.testing.assert_allclose(shells, [3, 11, 19])


def test_rock_salt_primitive_triclinic_cell_has_the_same_peaks():
    """The 2-atom fcc primitive cell (triclinic, 60 degrees) repeated 3x3x3: reciprocal
    lattice of fcc = bcc, the same Cartesian peaks (all-odd conventional hkl), height N."""
    a = 5.64
    primitive = 0.5 * a * np.array([[0, 1, 1], [1, 0, 1], [1, 1, 0]])
    n = 3
    shifts = np.array(list(itertools.product(range(n), repeat=3))) @ primitive
    basis = np.array([[0, 0, 0], [0.5 * a, 0, 0]])
    positions = (shifts[:, None, :] + basis[None]).reshape(-1, 3)
    charges = np.tile([1.0, -1.0], n**3)
    k, _, s = structure_factor_per_k(positions, charges, n * primitive, kmax=2 * np.pi * np.sqrt(12) / a)
    conventional = k * a / (2 * np.pi)
    peak = s > 1e-6
    np.testing.assert_allclose(s[peak], len(positions), rtol=1e-12)
    np.testing.assert_allclose(conventional[peak], np.round(conventional[peak]), atol=1e-10)
    assert np.all(np.round(conventional[peak]) % 2 == 1)
    assert peak.sum() == 4 + 12  # half of the 8 (111) and 24 (311) vectors


def test_uncorrelated_random_charges_give_mean_square_charge_at_all_k():
    """Positions uniform in the (triclinic) cell, independent per frame: for every allowed
    k != 0, <exp(i k.(r_i - r_j))> = delta_ij, so S_QQ(k) = mean(q^2) exactly in
    expectation, whatever the charges (here not even neutral). Each |rho(k)|^2 is close to
    exponentially distributed (relative std 1), so a bin with m vectors over F frames has
    standard error mean(q^2)/sqrt(m F). Checked: every bin within 4.5 sigma, the rms of
    the z-scores within 1 +- 0.25 (~75 bins: 3x its standard deviation), and the
    block-average error bars within 25% of the analytic ones on average."""
    rng = np.random.default_rng(7)
    n_atoms, n_frames = 60, 240
    charges = rng.uniform(-1.0, 2.0, n_atoms)
    expected = np.mean(charges**2)
    cell = 2 * TRICLINIC
    k, _ = kvectors(cell, 2.5)
    spectrum = SpectrumAccumulator(KBins(2.5, 100))
    for _ in range(n_frames):
        rho = fourier_modes(rng.uniform(size=(n_atoms, 3)) @ cell, charges, k)
        spectrum.add(np.linalg.norm(k, axis=1), np.abs(rho) ** 2 / n_atoms)
    result = spectrum.result(n_blocks=20)
    sigma = expected / np.sqrt(result.n_vectors * n_frames)
    z = (result.value - expected) / sigma
    assert len(z) > 60
    assert np.max(np.abs(z)) < 4.5
    assert 0.75 < np.sqrt(np.mean(z**2)) < 1.25
    assert abs(np.mean(z)) < 0.4  # 3.5 / sqrt(len(z))
    assert 0.75 < np.mean(result.error / sigma) < 1.25


def test_constants_are_the_engines_and_analysis_does_not_load_torch():
    import subprocess
    import sys

    from mace_lr.analysis.units import BOLTZMANN, COULOMB_CONSTANT
    from mace_lr.electrostatics import COULOMB_CONSTANT as ENGINE_CONSTANT

    assert COULOMB_CONSTANT == ENGINE_CONSTANT == pytest.approx(14.399645, abs=1e-6)
    assert BOLTZMANN == pytest.approx(8.617333e-5, rel=1e-6)
    code = "import sys, mace_lr.cli.diagnose; sys.exit('torch' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code], timeout=120).returncode == 0


def test_changing_cells_are_binned_by_vector_counts():
    """NPT-like frames (two box sizes): each bin averages over all k-vectors of all frames,
    sum_f sum_{k in bin} s_f(k) / sum_f n_f(bin), with the k-set of each frame's own cell."""
    rng = np.random.default_rng(4)
    charges = rng.normal(size=20)
    bins = KBins(2.0, 25)
    spectrum = SpectrumAccumulator(bins)
    numerator, denominator = np.zeros(25), np.zeros(25)
    for length in [8.0, 8.0, 9.5, 8.0, 9.5, 9.5]:
        cell = np.eye(3) * length
        k, _, s = structure_factor_per_k(rng.uniform(0, length, (20, 3)), charges, cell, 2.0)
        knorm = np.linalg.norm(k, axis=1)
        spectrum.add(knorm, s)
        index = np.minimum(np.ceil(knorm / 0.08).astype(int) - 1, 24)  # (lo, hi] bins of width 0.08
        np.add.at(numerator, index, s)
        np.add.at(denominator, index, 1.0)
    result = spectrum.result(n_blocks=2)
    keep = denominator > 0
    np.testing.assert_allclose(result.value, numerator[keep] / denominator[keep], rtol=1e-12)
    np.testing.assert_allclose(result.n_vectors, denominator[keep] / 6, rtol=1e-12)
