"""Long-range diagnostics of trajectories: does a model screen charges like real Coulomb?

- :mod:`.kvectors`: the wave vectors a (triclinic) cell allows;
- :mod:`.structure_factor`: S_QQ(k) = <|sum_i q_i exp(-i k.r_i)|^2> / N, binned by |k|;
- :mod:`.polarization`: longitudinal / transverse polarization correlations;
- :mod:`.dielectric`: eps from total-dipole fluctuations (tin-foil);
- :mod:`.fitting`: small-k exponent of S_QQ and the verdict (screened ~k^2 or not);
- :mod:`.blocking`: block-average error bars;
- :mod:`.trajectory`, :mod:`.charges`: reading frames (extxyz, .traj, i-PI) and charges;
- :mod:`.diagnose`: one pass over a trajectory; :mod:`.report`: options, results, JSON;
  :mod:`.plotting`: figures.

Units: Å, 1/Å, e, e·Å, eV, K. The command is ``mace_lr_diagnose``.
"""

from .charges import ArrayCharges, ElementCharges, ModelCharges, parse_element_charges
from .dielectric import DielectricResult, debye_dielectric_constant, dielectric_constant
from .diagnose import diagnose_file, diagnose_frames
from .errors import DiagnosticsInputError
from .fitting import PowerLawFit, Verdict, fit_power_law, stillinger_lovett_slope, verdict
from .kvectors import kvectors, miller_indices, reciprocal_cell
from .report import DiagnosticsOptions, DiagnosticsReport
from .structure_factor import KBins, Spectrum, SpectrumAccumulator, fourier_modes, structure_factor_per_k
from .trajectory import iter_frames

__all__ = [
    "ArrayCharges",
    "DiagnosticsInputError",
    "DiagnosticsOptions",
    "DiagnosticsReport",
    "DielectricResult",
    "ElementCharges",
    "KBins",
    "ModelCharges",
    "PowerLawFit",
    "Spectrum",
    "SpectrumAccumulator",
    "Verdict",
    "debye_dielectric_constant",
    "diagnose_file",
    "diagnose_frames",
    "dielectric_constant",
    "fit_power_law",
    "fourier_modes",
    "iter_frames",
    "kvectors",
    "miller_indices",
    "parse_element_charges",
    "reciprocal_cell",
    "stillinger_lovett_slope",
    "structure_factor_per_k",
    "verdict",
]
