"""Small-k fit and verdict on synthetic S_QQ(k) with known exponents (float64)."""

from __future__ import annotations

import numpy as np
import pytest

from mace_lr.analysis import DiagnosticsInputError, fit_power_law, stillinger_lovett_slope, verdict
from mace_lr.analysis.blocking import block_estimate, block_slices
from mace_lr.electrostatics import COULOMB_CONSTANT

K = 0.353 * np.sqrt([1, 2, 3, 4, 5, 6, 8, 9, 10, 11])  # the shells of a 17.8 Å cubic box


def test_exact_curves_are_recovered():
    """No noise: ln S is exactly linear in (1, ln k, k^2), so the fit is exact."""
    s = 0.02 * K**2 * np.exp(0.8 * K**2)
    fit = fit_power_law(K, s, 0.01 * s, n_bins=8, curvature=True)
    assert fit.exponent == pytest.approx(2.0, abs=1e-10)
    assert fit.curvature == pytest.approx(0.8, abs=1e-10)
    np.testing.assert_allclose(fit(K[:8]), s[:8], rtol=1e-10)
    plain = fit_power_law(K, 0.3 * K**1.3, 0.01 * K, n_bins=3)
    assert plain.exponent == pytest.approx(1.3, abs=1e-12) and plain.curvature == 0.0
    assert plain.k_range == pytest.approx((K[0], K[2]))


def test_the_curvature_term_removes_most_of_the_k4_bias():
    """S = a k^2 (1 + b k^2), the screened form with its leading correction (b = 0.8 Å^2
    as in the melt): the local exponent 2 + 2 b k^2 / (1 + b k^2) exceeds 2.18 at every
    bin, so a plain fit lands above 2.18; the curvature fit removes at least half of
    that bias (what remains is ln(1 + b k^2) - b k^2, with b k^2 up to 0.9).
    S = s0 + s2 k^2 (unscreened, s2 k^2 / s0 from 0.3 to 3) stays below 1."""
    screened = 0.016 * K**2 * (1 + 0.8 * K**2)
    plain = fit_power_law(K, screened, 0.05 * screened, n_bins=3)
    curved = fit_power_law(K, screened, 0.05 * screened, n_bins=8, curvature=True)
    assert plain.exponent > 2 + 2 * 0.8 * K[0] ** 2 / (1 + 0.8 * K[0] ** 2)
    assert abs(curved.exponent - 2.0) < 0.5 * (plain.exponent - 2.0)
    unscreened = 0.006 + 0.016 * K**2
    assert fit_power_law(K, unscreened, 0.05 * unscreened, n_bins=8, curvature=True).exponent < 1.0


def test_exponent_errors_are_calibrated():
    """Gaussian noise of known relative size on S: over 400 replicates the spread of the
    fitted exponent equals the mean reported error within 15% (the error of an
    estimated standard deviation from 400 samples is 3.5%, chi^2 inflation adds a few %)."""
    rng = np.random.default_rng(5)
    truth = 0.016 * K**2 * np.exp(0.8 * K**2)
    exponents, errors = [], []
    for _ in range(400):
        noisy = truth * (1 + 0.08 * rng.normal(size=K.size))
        fit = fit_power_law(K, noisy, 0.08 * truth, n_bins=8, curvature=True)
        exponents.append(fit.exponent)
        errors.append(fit.exponent_error)
    assert np.std(exponents) == pytest.approx(np.mean(errors), rel=0.15)
    assert abs(np.mean(exponents) - 2.0) < 3 * np.std(exponents) / np.sqrt(400)


def test_verdicts():
    curve = 0.016 * K**2 * np.exp(0.8 * K**2)
    screened = fit_power_law(K, curve, 0.03 * curve, n_bins=8, curvature=True)
    assert verdict(screened).code == "screened"
    assert "k^2" in verdict(screened).text
    finite = 0.006 + 0.016 * K**2
    unscreened = fit_power_law(K, finite, 0.03 * finite, n_bins=8, curvature=True)
    assert verdict(unscreened).code == "unscreened" and "finite limit" in verdict(unscreened).text
    middle = fit_power_law(K, K**1.2, 0.03 * K**1.2, n_bins=8, curvature=True)
    assert verdict(middle).code == "inconclusive"
    noisy = fit_power_law(K[:4], np.array([1.0, 0.3, 4.0, 0.5]) * K[:4] ** 2, 0.5 * K[:4] ** 2, n_bins=4, curvature=True)
    assert noisy.exponent_error > 0.5 and verdict(noisy).code == "inconclusive"
    crystal = fit_power_law(K, np.zeros_like(K), np.zeros_like(K), n_bins=8, curvature=True)
    assert crystal is None and verdict(crystal).code == "undetermined"
    # k^2 far above the perfect-screening limit: flagged (neutral molecules)
    assert "neutral molecules" in verdict(screened, sl_ratio=6.0, sl_ratio_error=0.5).text
    assert "neutral molecules" not in verdict(screened, sl_ratio=1.05, sl_ratio_error=0.05).text
    with pytest.raises(DiagnosticsInputError, match="at least 4 bins"):
        fit_power_law(K, K**2, K, n_bins=3, curvature=True)


def test_stillinger_lovett_slope_units():
    """k_B T / (4 pi k_e rho): 1500 K, 0.0385 1/Å^3 -> 0.1293 eV / (4 pi 14.3996 0.0385 eV/Å^2)."""
    expected = 8.617333e-5 * 1500 / (4 * np.pi * COULOMB_CONSTANT * 0.0385)
    assert stillinger_lovett_slope(0.0385, 1500.0) == pytest.approx(expected, rel=1e-6)
    assert expected == pytest.approx(0.01856, rel=1e-3)


def test_block_estimate_of_a_mean_matches_the_standard_error():
    """Independent samples: the block error of a mean is the standard error (within 25%
    for 20 blocks), and blocks tile the frames."""
    rng = np.random.default_rng(2)
    values = rng.normal(3.0, 2.0, size=4000)
    value, error, blocks = block_estimate(lambda s: values[s].mean(), len(values), 20)
    assert value == pytest.approx(values.mean())
    assert error == pytest.approx(2.0 / np.sqrt(4000), rel=0.25)
    slices = block_slices(10, 3)
    assert [s.start for s in slices] == [0, 3, 7] and slices[-1].stop == 10
