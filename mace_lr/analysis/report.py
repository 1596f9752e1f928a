"""What one analysis is asked (:class:`DiagnosticsOptions`) and what it found
(:class:`DiagnosticsReport`, with :meth:`DiagnosticsReport.to_dict` for the JSON of
``mace_lr_diagnose``: NaN written as None, units in its ``units`` entry)."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from .dielectric import DielectricResult
from .fitting import PowerLawFit, Verdict
from .polarization import response_factor
from .structure_factor import Spectrum


#: Lowest k bins in the small-k fit, per fit model (see :mod:`.fitting`).
DEFAULT_FIT_BINS = {"curvature": 8, "power": 3}


@dataclass
class DiagnosticsOptions:
    """Settings of one analysis.

    ``kmax`` (1/Å) and ``n_bins``: |k| bins on (0, kmax]; ``n_blocks``: blocks of the
    error bars; ``fit_model``: ``curvature`` or ``power`` (:mod:`.fitting`);
    ``fit_bins``: lowest non-empty bins in the small-k fit (default
    :data:`DEFAULT_FIT_BINS` of the model);
    ``temperature`` (K): needed for the dielectric constant and the Stillinger-Lovett
    ratio; ``dipole_key``: per-frame total dipole (``"auto"``: ``REF_dipole`` etc. if
    present, else from charges; ``None``: always from charges);
    ``atomic_dipoles_key``: per-atom dipoles (e·Å) to add to the polarization;
    ``unwrap``: unwrap positions by minimum image between frames for M = sum q r.
    """

    kmax: float = 3.0
    n_bins: int = 150
    n_blocks: int = 5
    fit_model: str = "curvature"
    fit_bins: int | None = None
    temperature: float | None = None
    dipole_key: str | None = "auto"
    atomic_dipoles_key: str | None = None
    unwrap: bool = False
    progress: bool | None = None


@dataclass
class DiagnosticsReport:
    """Everything :func:`diagnose_frames` measured (units in :meth:`to_dict`)."""

    n_frames: int
    n_atoms: int
    volume: float
    mean_square_charge: float
    total_charge: float
    charge_source: str
    options: DiagnosticsOptions
    structure_factor: Spectrum
    chi_longitudinal: Spectrum
    chi_transverse: Spectrum | None
    fit: PowerLawFit | None
    verdict: Verdict
    stillinger_lovett_slope: float | None = None
    stillinger_lovett_ratio: float | None = None
    stillinger_lovett_ratio_err: float | None = None
    dielectric: DielectricResult | None = None
    dipole_source: str | None = None
    warnings: list[str] = field(default_factory=list)

    @property
    def number_density(self) -> float:
        """N / V (1/Å^3)."""
        return self.n_atoms / self.volume

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready numbers (NaN -> None); units in the ``units`` entry."""
        s, chi_l, chi_t = self.structure_factor, self.chi_longitudinal, self.chi_transverse
        out: dict[str, Any] = {
            "n_frames": self.n_frames,
            "n_atoms": self.n_atoms,
            "volume": self.volume,
            "number_density": self.number_density,
            "charges": self.charge_source,
            "mean_square_charge": self.mean_square_charge,
            "total_charge": self.total_charge,
            "kmax": self.options.kmax,
            "bins": self.options.n_bins,
            "blocks": self.options.n_blocks,
            "k": s.k,
            "s_qq": s.value,
            "s_qq_err": s.error,
            "n_kvectors": s.n_vectors,
            "small_k_exponent": None if self.fit is None else self.fit.exponent,
            "small_k_exponent_err": None if self.fit is None else self.fit.exponent_error,
            "fit_k_range": None if self.fit is None else list(self.fit.k_range),
            "fit_model": self.options.fit_model,
            "fit_bins": None if self.fit is None else self.fit.n_bins,
            "fit_curvature": None if self.fit is None else self.fit.curvature,
            "fit_reduced_chi2": None if self.fit is None else self.fit.reduced_chi2,
            "verdict": self.verdict.text,
            "verdict_code": self.verdict.code,
            "temperature": self.options.temperature,
            "stillinger_lovett_slope": self.stillinger_lovett_slope,
            "stillinger_lovett_ratio": self.stillinger_lovett_ratio,
            "stillinger_lovett_ratio_err": self.stillinger_lovett_ratio_err,
            "chi_longitudinal": chi_l.value,
            "chi_longitudinal_err": chi_l.error,
            "dielectric_constant": None,
            "dielectric_constant_err": None,
            "dipole_source": self.dipole_source,
            "warnings": list(self.warnings),
        }
        if self.options.temperature is not None:
            factor = response_factor(self.options.temperature)
            out["longitudinal_response"] = factor * chi_l.value
            out["longitudinal_response_err"] = factor * chi_l.error
        if chi_t is not None:
            out.update(chi_transverse=chi_t.value, chi_transverse_err=chi_t.error)
            if self.options.temperature is not None:
                factor = response_factor(self.options.temperature)
                out["transverse_response"] = factor * chi_t.value
                out["transverse_response_err"] = factor * chi_t.error
        if self.dielectric is not None:
            d = self.dielectric
            out.update(
                dielectric_constant=d.value,
                dielectric_constant_err=d.error,
                dipole_variance=d.dipole_variance,
                mean_dipole=d.mean_dipole,
                dipole_drift_ratio=d.drift_ratio,
            )
        out["units"] = {
            "k": "1/Å", "s_qq": "e^2", "volume": "Å^3", "number_density": "1/Å^3",
            "temperature": "K", "stillinger_lovett_slope": "e^2 Å^2 (S_QQ/k^2 limit)",
            "chi_longitudinal": "e^2/Å (<|P_L(k)|^2>/V)", "chi_transverse": "e^2/Å",
            "longitudinal_response": "1 - 1/eps_L(k)", "transverse_response": "eps_T(k) - 1",
            "dielectric_constant": "dimensionless", "dipole_variance": "e^2 Å^2",
            "mean_dipole": "e·Å",
        }
        return _jsonable(out)


def _jsonable(value: Any) -> Any:
    """Arrays -> lists, numpy scalars -> Python, NaN/inf -> None."""
    if isinstance(value, dict):
        return {key: _jsonable(item) for key, item in value.items()}
    if isinstance(value, np.ndarray):
        value = value.tolist()
    if isinstance(value, (list, tuple)):
        return [_jsonable(item) for item in value]
    if isinstance(value, (float, np.floating)):
        return None if not math.isfinite(float(value)) else float(value)
    if isinstance(value, np.integer):
        return int(value)
    return value


__all__ = ["DEFAULT_FIT_BINS", "DiagnosticsOptions", "DiagnosticsReport"]
