"""Small-k behaviour of S_QQ(k): power-law exponent, Stillinger-Lovett ratio, verdict.

The exponent p of S_QQ ~ k^p comes from a weighted least-squares fit to (ln k, ln S) of
the lowest ``n_bins`` non-empty bins, weights 1/sigma_ln^2 with sigma_ln = err/S from
the block averages; its uncertainty is the fit's standard error, inflated by
sqrt(chi^2/dof) when the points scatter more than their error bars. Two models:

- ``curvature`` (default of ``mace_lr_diagnose``): ln S = ln A + p ln k + c k^2. S_QQ is
  analytic in k^2 for short-ranged correlations, S = s0 + s2 k^2 + s4 k^4 + ..., with
  s0 = 0 when charges are screened: both cases are k^p (1 + c k^2 + ...) with p = 2 or 0.
  The c k^2 term absorbs the leading correction, so p is the k -> 0 exponent even when
  the lowest bins of a small box are not far below the screening wavevector. Measured on
  the 216-ion melt of :mod:`mace_lr.data.molten_salt` (L = 17.8 Å, 4 ps, 4 seeds, 8 bins):
  Ewald 1.87 +- 0.10 where a plain fit of the lowest 3 bins gives 2.25 +- 0.09;
  truncated Coulomb -0.01 +- 0.25 (plain: 0.96 +- 0.31).
- ``power``: ln S = ln A + p ln k (smaller error, biased by the k^4 term in small boxes).

Verdict (:func:`verdict`), for an exponent known to +-0.5 or better:

- ``screened``: p >= 1.5. Real Coulomb screening (Stillinger-Lovett) makes charge
  fluctuations vanish as k^2 at long wavelength;
- ``unscreened``: p < 1. S_QQ(k) tends to a finite limit, as for charges with
  short-ranged (truncated) interactions (for S = s0 + s2 k^2 the local exponent is
  2x/(1+x), x = s2 k^2/s0: p < 1 means the finite part already dominates);
- ``inconclusive``: 1 <= p < 1.5, or an exponent uncertain by more than 0.5.

With a temperature, the Stillinger-Lovett ratio R(k) = 4 pi k_e rho S_QQ(k) / (k^2 k_B T)
(= 4 pi k_e beta chi_L(k) = 1 - 1/eps_L(k)) at the lowest bin is reported too: -> 1 for
an ionic conductor, 1 - 1/eps < 1 for a dielectric as k -> 0 (at finite k it may exceed
1: overscreening). A k^2 law with R far above 1 can be the k^2 of neutral molecules
(rho_q = -i k.P) whose longitudinal polarization is not screened; the verdict says so.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .errors import DiagnosticsInputError
from .units import BOLTZMANN, COULOMB_CONSTANT

SCREENED_MIN_EXPONENT = 1.5
UNSCREENED_MAX_EXPONENT = 1.0
MAX_EXPONENT_ERROR = 0.5


@dataclass
class PowerLawFit:
    """S = prefactor * k^exponent * exp(curvature * k^2) over ``k_range`` (1/Å), ``n_bins``
    points; ``curvature`` (Å^2) is 0 for the plain power law."""

    exponent: float
    exponent_error: float
    prefactor: float
    curvature: float
    k_range: tuple[float, float]
    n_bins: int
    reduced_chi2: float

    def __call__(self, k: np.ndarray) -> np.ndarray:
        """The fitted S_QQ at k (1/Å)."""
        k = np.asarray(k, dtype=float)
        return self.prefactor * k**self.exponent * np.exp(self.curvature * k**2)


def fit_power_law(
    k: np.ndarray, value: np.ndarray, error: np.ndarray, n_bins: int = 3, curvature: bool = False
) -> PowerLawFit | None:
    """Fit ln S = ln A + p ln k (+ c k^2 with ``curvature``) to the lowest ``n_bins`` points.

    k [B] (1/Å), value [B], error [B] (block-average errors). ``curvature`` adds the
    leading analytic correction, S = A k^p (1 + c k^2 + ...): both a screened
    (S = s2 k^2 + s4 k^4) and an unscreened (S = s0 + s2 k^2) S_QQ have this form, so p
    is the k -> 0 exponent even when the lowest bins are not far below the screening
    wavevector (small boxes), at the price of a larger error. ``None`` when the lowest two
    points are not positive (e.g. a perfect crystal: S = 0), or fewer than 2 (3) remain.
    """
    n_params = 3 if curvature else 2
    min_bins = 4 if curvature else 2
    if n_bins < min_bins:
        raise DiagnosticsInputError(
            f"the small-k fit{' with the curvature term' if curvature else ''} needs at "
            f"least {min_bins} bins, got --fit-bins {n_bins}"
        )
    order = np.argsort(k)
    k, value, error = (np.asarray(a, dtype=float)[order][:n_bins] for a in (k, value, error))
    scale = max(float(np.nanmax(np.abs(value), initial=0.0)), 1e-300)
    ok = np.isfinite(value) & (value > 1e-12 * scale)
    if ok.sum() < n_params or not ok[:2].all():
        return None
    k, value, error = k[ok], value[ok], error[ok]
    x, y = np.log(k), np.log(value)
    sigma = error / value
    has_errors = bool(np.all(sigma > 0) and np.all(np.isfinite(sigma)))
    weights = 1.0 / sigma**2 if has_errors else np.ones_like(x)
    columns = [np.ones_like(x), x] + ([k**2] if curvature else [])
    design = np.stack(columns, axis=1)
    normal = design.T @ (weights[:, None] * design)
    coef = np.linalg.solve(normal, design.T @ (weights * y))
    covariance = np.linalg.inv(normal)
    dof = len(x) - n_params
    chi2 = float(np.sum(weights * (y - design @ coef) ** 2) / dof) if dof > 0 else float("nan")
    if dof > 0 and (chi2 > 1.0 or not has_errors):
        covariance = covariance * chi2  # scatter beyond the error bars (or no error bars)
    elif not has_errors:
        covariance = covariance * np.inf
    return PowerLawFit(
        exponent=float(coef[1]),
        exponent_error=float(np.sqrt(covariance[1, 1])),
        prefactor=float(np.exp(coef[0])),
        curvature=float(coef[2]) if curvature else 0.0,
        k_range=(float(k[0]), float(k[-1])),
        n_bins=int(len(x)),
        reduced_chi2=chi2,
    )


def stillinger_lovett_slope(number_density: float, temperature: float) -> float:
    """Perfect-screening limit of S_QQ(k)/k^2 = k_B T / (4 pi k_e rho) in e^2 Å^2
    (rho = N/V in 1/Å^3, T in K)."""
    return BOLTZMANN * temperature / (4.0 * np.pi * COULOMB_CONSTANT * number_density)


@dataclass
class Verdict:
    """``code``: ``screened``, ``unscreened``, ``inconclusive`` or ``undetermined``; ``text``: plain language."""

    code: str
    text: str


def verdict(fit: PowerLawFit | None, sl_ratio: float | None = None, sl_ratio_error: float | None = None) -> Verdict:
    """Plain-language reading of the small-k exponent (module docstring)."""
    if fit is None:
        return Verdict(
            "undetermined",
            "S_QQ(k) vanishes (or is not positive) in the lowest k bins, so no exponent can "
            "be fitted: no charge fluctuations at long wavelength (a perfect crystal?).",
        )
    p, dp = fit.exponent, fit.exponent_error
    where = f"S_QQ ~ k^{p:.2f} +- {dp:.2f} for k = {fit.k_range[0]:.3f}-{fit.k_range[1]:.3f} 1/Å"
    if dp > MAX_EXPONENT_ERROR:
        return Verdict(
            "inconclusive",
            f"{where}: too uncertain to tell; use more frames, a bigger box or fewer fit bins.",
        )
    if p >= SCREENED_MIN_EXPONENT:
        text = (
            f"{where}: screened. Long-wavelength charge fluctuations are suppressed as "
            "k^2 (Stillinger-Lovett), the fingerprint of long-range Coulomb interactions."
        )
        if sl_ratio is not None and sl_ratio > 2.0 and (sl_ratio_error is None or sl_ratio - 2.0 > 3.0 * sl_ratio_error):
            text += (
                f" But S_QQ/k^2 at the lowest k is {sl_ratio:.2f}x the perfect-screening limit"
                " k_BT/(4 pi k_e rho) (which it may not exceed as k -> 0): the k^2 may come"
                " from neutral molecules whose polarization is not screened."
            )
        return Verdict("screened", text)
    if p < UNSCREENED_MAX_EXPONENT:
        return Verdict(
            "unscreened",
            f"{where}: unscreened. S_QQ(k) tends to a finite limit at long wavelength, as for "
            "charges with short-ranged (truncated) interactions: no long-range screening.",
        )
    return Verdict(
        "inconclusive",
        f"{where}: between the screened (2) and unscreened (0) limits; check that the "
        "lowest bins lie below the screening wavevector (a bigger box), or use the "
        "curvature fit.",
    )


__all__ = [
    "MAX_EXPONENT_ERROR",
    "PowerLawFit",
    "SCREENED_MIN_EXPONENT",
    "UNSCREENED_MAX_EXPONENT",
    "Verdict",
    "fit_power_law",
    "stillinger_lovett_slope",
    "verdict",
]
