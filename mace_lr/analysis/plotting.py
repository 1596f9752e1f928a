"""Plots of the diagnostics (matplotlib).

:func:`plot_structure_factor` draws S_QQ(k) of one or several reports on an axis
(log-log: small-k fit and the Stillinger-Lovett line k^2 k_B T / (4 pi k_e rho));
:func:`save_report_plot` writes a PNG of one report without pyplot (any backend,
no display needed).
"""

from __future__ import annotations

from pathlib import Path
from typing import Mapping

import numpy as np

from .report import DiagnosticsReport


def log_k_axis(ax) -> None:
    """Log-scaled k axis with plain labels at 1, 2, 5 x 10^n (no overlapping minor labels)."""
    from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter

    ax.set_xscale("log")
    ax.xaxis.set_major_locator(LogLocator(subs=(1.0, 2.0, 5.0)))
    ax.xaxis.set_major_formatter(FuncFormatter(lambda value, _: f"{value:g}"))
    ax.xaxis.set_minor_formatter(NullFormatter())


def plot_structure_factor(
    reports: DiagnosticsReport | Mapping[str, DiagnosticsReport],
    ax,
    loglog: bool = True,
    fit: bool = True,
    stillinger_lovett: bool = True,
):
    """S_QQ(k) (e^2) vs k (1/Å) with block-average error bars on ``ax``; returns ``ax``."""
    if isinstance(reports, DiagnosticsReport):
        reports = {"": reports}
    slopes_drawn: list[float] = []
    for index, (label, report) in enumerate(reports.items()):
        s = report.structure_factor
        color = f"C{index}"
        text = label or "S_QQ"
        if report.fit is not None:
            text = f"{text}: p = {report.fit.exponent:.2f} ± {report.fit.exponent_error:.2f}"
        ax.errorbar(s.k, s.value, yerr=s.error, fmt="o-", ms=3, lw=1, color=color, label=text)
        if fit and report.fit is not None and loglog:
            lo, hi = report.fit.k_range
            kk = np.linspace(lo, hi, 20)
            ax.plot(kk, report.fit(kk), "-", color="k", lw=2, alpha=0.6)
        slope = report.stillinger_lovett_slope
        if stillinger_lovett and slope is not None and loglog and not np.isclose(slope, slopes_drawn).any():
            slopes_drawn.append(slope)
            kk = np.linspace(s.k[0], min(s.k[-1], 4 * s.k[0]), 20)
            ax.plot(kk, slope * kk**2, ":", color=color, label="Stillinger-Lovett k²k_BT/(4πk_eρ)")
    if loglog:
        log_k_axis(ax)
        ax.set_yscale("log")
    ax.set_xlabel("k (1/Å)")
    ax.set_ylabel("S_QQ(k) (e²)")
    ax.legend(fontsize=8)
    return ax


def save_report_plot(report: DiagnosticsReport, path: str | Path, title: str = "") -> Path:
    """PNG with S_QQ(k) (log-log and linear) and the polarization responses."""
    from matplotlib.figure import Figure

    with_response = report.options.temperature is not None
    fig = Figure(figsize=(13 if with_response else 9, 4), layout="constrained")
    axes = fig.subplots(1, 3 if with_response else 2)
    plot_structure_factor(report, axes[0])
    axes[0].set_title(report.verdict.code)
    plot_structure_factor(report, axes[1], loglog=False)
    axes[1].axhline(report.mean_square_charge, color="gray", ls="--", lw=1, label="<q²>")
    axes[1].legend(fontsize=8)
    if with_response:
        from .polarization import response_factor

        factor = response_factor(report.options.temperature)
        chi = report.chi_longitudinal
        axes[2].errorbar(chi.k, factor * chi.value, yerr=factor * chi.error, fmt="o-", ms=3, lw=1,
                         label="longitudinal: 1 - 1/ε_L(k)")
        if report.chi_transverse is not None:
            t = report.chi_transverse
            axes[2].errorbar(t.k, factor * t.value, yerr=factor * t.error, fmt="s-", ms=3, lw=1,
                             label="transverse: ε_T(k) - 1")
        axes[2].axhline(1.0, color="gray", ls="--", lw=1, label="perfect screening")
        axes[2].set_xlabel("k (1/Å)")
        axes[2].set_ylabel("4π k_e β χ(k)")
        log_k_axis(axes[2])
        axes[2].set_yscale("log")
        axes[2].legend(fontsize=8)
    if title:
        fig.suptitle(title)
    path = Path(path)
    fig.savefig(path, dpi=120)
    return path


__all__ = ["log_k_axis", "plot_structure_factor", "save_report_plot"]
