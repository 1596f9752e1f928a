"""One pass over a trajectory: S_QQ(k), polarization correlations, dielectric constant.

:func:`diagnose_frames` consumes frames one at a time (memory: a few numbers per frame
and k-bin), :func:`diagnose_file` reads them from a file (:mod:`.trajectory`); both
return a :class:`.report.DiagnosticsReport`.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Iterable

import numpy as np
from ase import Atoms

from .blocking import check_blocks
from .charges import ChargeSource, atomic_dipoles_from_file, auto_charge_source, total_dipole_from_file
from .dielectric import dielectric_constant
from .errors import DiagnosticsInputError
from .fitting import fit_power_law, stillinger_lovett_slope, verdict
from .kvectors import kvectors
from .polarization import polarization_from_modes
from .report import DEFAULT_FIT_BINS, DiagnosticsOptions, DiagnosticsReport
from .structure_factor import KBins, SpectrumAccumulator, fourier_modes
from .trajectory import iter_frames, minimum_image_steps, unwrap


class _DipoleSeries:
    """Total dipole M (e·Å) of every frame, from the file or from unwrapped charges."""

    def __init__(self, key: str | None, unwrap_positions: bool) -> None:
        self.key = key
        self.unwrap_positions = unwrap_positions
        self.source: str | None = None
        self.values: list[np.ndarray] = []
        self.jumps = 0
        self._previous: np.ndarray | None = None
        self._unwrapped: np.ndarray | None = None

    def add(self, atoms: Atoms, charges: np.ndarray, dipoles: np.ndarray | None) -> None:
        from_file = total_dipole_from_file(atoms, self.key) if self.key is not None else None
        if self.source is None:
            self.source = "file" if from_file is not None else "charges"
        if self.source == "file":
            if from_file is None:
                raise DiagnosticsInputError(
                    f"frame {len(self.values)} lacks the total dipole the first frame had "
                    f"({self.key!r}); every frame needs it, or use --dipole-from-charges"
                )
            self.values.append(from_file)
            return
        positions = atoms.positions
        cell = atoms.cell.array
        if self._previous is not None:  # only charged atoms make M jump
            steps = minimum_image_steps(self._previous, positions, cell)
            if np.any(np.abs(steps[charges != 0.0]) > 0.5):
                self.jumps += 1
        if self.unwrap_positions and self._previous is not None and self._unwrapped is not None:
            self._unwrapped = unwrap(self._unwrapped, self._previous, positions, cell)
        else:
            self._unwrapped = positions.copy()
        self._previous = positions.copy()
        total = charges @ self._unwrapped
        if dipoles is not None:
            total = total + dipoles.sum(axis=0)
        self.values.append(total)

    @property
    def description(self) -> str:
        if self.source == "file":
            return f"total dipole from the file ({self.key!r})"
        how = "positions unwrapped by minimum image" if self.unwrap_positions else "positions as stored"
        return f"sum_i q_i r_i (+ atomic dipoles), {how}"


def _check_options(options: DiagnosticsOptions) -> KBins:
    """Fail before reading any frame; returns the k bins."""
    if options.fit_model not in DEFAULT_FIT_BINS:
        raise DiagnosticsInputError(f"fit model must be one of {sorted(DEFAULT_FIT_BINS)}, got {options.fit_model!r}")
    if options.temperature is not None and not options.temperature > 0.0:
        raise DiagnosticsInputError(f"--temperature must be > 0 K, got {options.temperature}")
    if options.n_blocks < 2:
        raise DiagnosticsInputError(f"--blocks must be at least 2, got {options.n_blocks}")
    return KBins(options.kmax, options.n_bins)


class _KCache:
    """k-vectors of the current cell, recomputed only when the cell changes."""

    def __init__(self, kmax: float) -> None:
        self.kmax = kmax
        self.cell: np.ndarray | None = None

    def __call__(self, cell: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        if self.cell is None or not np.array_equal(cell, self.cell):
            self.k, _ = kvectors(cell, self.kmax)
            if len(self.k) == 0:
                shortest = np.min(np.linalg.norm(2 * np.pi * np.linalg.inv(cell).T, axis=1))
                raise DiagnosticsInputError(
                    f"no k-vector of the cell is shorter than kmax = {self.kmax} 1/Å (the "
                    f"reciprocal basis vectors are {shortest:.3g} 1/Å or longer); raise --kmax"
                )
            self.knorm = np.linalg.norm(self.k, axis=1)
            self.cell = cell.copy()
        return self.k, self.knorm


def _temperature_results(report: DiagnosticsReport, dipoles: _DipoleSeries, volumes: list[float]) -> None:
    """Stillinger-Lovett ratio, verdict with it, and the dielectric constant (in place)."""
    options, structure = report.options, report.structure_factor
    slope = stillinger_lovett_slope(report.number_density, options.temperature)
    report.stillinger_lovett_slope = slope
    report.stillinger_lovett_ratio = float(structure.value[0] / (structure.k[0] ** 2 * slope))
    report.stillinger_lovett_ratio_err = float(structure.error[0] / (structure.k[0] ** 2 * slope))
    report.verdict = verdict(report.fit, report.stillinger_lovett_ratio, report.stillinger_lovett_ratio_err)
    report.dipole_source = dipoles.description
    if dipoles.source == "charges" and dipoles.jumps and not options.unwrap:
        report.warnings.append(
            f"positions look wrapped: atoms jump by more than half a cell between "
            f"{dipoles.jumps} pair(s) of consecutive frames, so M = sum q r jumps too. No "
            "dielectric constant computed: write unwrapped positions, or pass --unwrap "
            "(valid if no atom moves half a cell between frames)"
        )
        return
    report.dielectric = dielectric_constant(
        np.array(dipoles.values), np.array(volumes), options.temperature, options.n_blocks, dipoles.description
    )
    report.warnings.extend(report.dielectric.warnings)


def diagnose_frames(
    frames: Iterable[Atoms], charge_source: ChargeSource | None, options: DiagnosticsOptions
) -> DiagnosticsReport:
    """Analyse ``frames`` (periodic :class:`ase.Atoms`, Å) with charges from
    ``charge_source`` (``None``: a per-atom array of the file, :func:`auto_charge_source`)."""
    from tqdm import tqdm

    bins = _check_options(options)
    s_acc, chi_l_acc, chi_t_acc = SpectrumAccumulator(bins), SpectrumAccumulator(bins), SpectrumAccumulator(bins)
    dipole_series = _DipoleSeries(options.dipole_key, options.unwrap)
    k_cache = _KCache(options.kmax)
    volumes: list[float] = []
    square_charges: list[float] = []
    total_charges: list[float] = []
    disable = None if options.progress is None else not options.progress  # None: only on a terminal
    for index, atoms in enumerate(tqdm(frames, desc="frames", unit="frame", disable=disable)):
        if charge_source is None:
            charge_source = auto_charge_source(atoms)
        charges = np.asarray(charge_source(atoms, index), dtype=float)
        if not np.all(np.isfinite(charges)):
            raise DiagnosticsInputError(f"frame {index} has non-finite charges ({charge_source.description})")
        dipoles = None
        if options.atomic_dipoles_key is not None:
            dipoles = atomic_dipoles_from_file(atoms, options.atomic_dipoles_key, index)
        k, knorm = k_cache(atoms.cell.array)
        volume = abs(float(np.linalg.det(atoms.cell.array)))
        weights = charges[:, None] if dipoles is None else np.concatenate([charges[:, None], dipoles], axis=1)
        modes = fourier_modes(atoms.positions, weights, k)  # one trigonometric pass for all
        s_acc.add(knorm, np.abs(modes[:, 0]) ** 2 / len(atoms))
        longitudinal, transverse = polarization_from_modes(k, modes[:, 0], None if dipoles is None else modes[:, 1:])
        chi_l_acc.add(knorm, np.abs(longitudinal) ** 2 / volume)
        if transverse is not None:
            chi_t_acc.add(knorm, np.sum(np.abs(transverse) ** 2, axis=1) / (2.0 * volume))
        dipole_series.add(atoms, charges, dipoles)
        volumes.append(volume)
        square_charges.append(float(np.mean(charges**2)))
        total_charges.append(float(np.sum(charges)))

    check_blocks(len(volumes), options.n_blocks)
    structure = s_acc.result(options.n_blocks)
    fit_bins = options.fit_bins or DEFAULT_FIT_BINS[options.fit_model]
    fit = fit_power_law(structure.k, structure.value, structure.error, fit_bins, options.fit_model == "curvature")
    report = DiagnosticsReport(
        n_frames=len(volumes),
        n_atoms=len(atoms),
        volume=float(np.mean(volumes)),
        mean_square_charge=float(np.mean(square_charges)),
        total_charge=float(np.mean(total_charges)),
        charge_source=charge_source.description,
        options=options,
        structure_factor=structure,
        chi_longitudinal=chi_l_acc.result(options.n_blocks),
        chi_transverse=chi_t_acc.result(options.n_blocks) if chi_t_acc.n_frames else None,
        fit=fit,
        verdict=verdict(fit),
    )
    if abs(report.total_charge) > 1e-6 * max(1.0, math.sqrt(report.mean_square_charge * report.n_atoms)):
        report.warnings.append(
            f"the cell is not neutral (total charge {report.total_charge:.3g} e): S_QQ(k) of a "
            "charged cell keeps a finite small-k part from the net charge"
        )
    if options.temperature is not None:
        _temperature_results(report, dipole_series, volumes)
    return report


def diagnose_file(
    path: str | Path,
    charge_source: ChargeSource | None,
    options: DiagnosticsOptions,
    start: int = 0,
    stop: int | None = None,
    every: int = 1,
    fmt: str = "auto",
) -> DiagnosticsReport:
    """:func:`diagnose_frames` on frames ``start:stop:every`` of a trajectory file."""
    return diagnose_frames(iter_frames(path, start, stop, every, fmt), charge_source, options)


__all__ = ["diagnose_file", "diagnose_frames"]
