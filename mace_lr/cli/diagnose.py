"""``mace_lr_diagnose``: does a trajectory show long-range (Coulomb) screening?

Examples::

    mace_lr_diagnose md.extxyz --charges Na=1,Cl=-1 --temperature 1500 --json out.json --plot out.png
    mace_lr_diagnose md.traj --model lr.model --every 10 --json out.json
    mace_lr_diagnose simulation.pos_0.xyz --charges O=-0.8476,H=0.4238 --temperature 300

Computes the charge structure factor S_QQ(k), its small-k exponent and a verdict
(screened: S_QQ ~ k^2; unscreened: finite limit), the longitudinal (and, with per-atom
dipoles, transverse) polarization correlations and, with ``--temperature``, the
Stillinger-Lovett ratio and the dielectric constant from total-dipole fluctuations.
Bad input exits with status 2 and a message saying what to do.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Sequence

from mace_lr.analysis import (
    DiagnosticsInputError,
    DiagnosticsOptions,
    DiagnosticsReport,
    ElementCharges,
    diagnose_file,
    parse_element_charges,
)
from mace_lr.analysis.charges import ArrayCharges, ChargeSource, ModelCharges
from mace_lr.analysis.trajectory import FORMATS


def _positive(kind: type):
    def parse(text: str):
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"not a valid {kind.__name__}: {text!r}") from None
        if not value > 0 or value == float("inf"):
            raise argparse.ArgumentTypeError(f"must be positive, got {text}")
        return value

    return parse


def _non_negative_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a valid int: {text!r}") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be >= 0, got {text}")
    return value


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="mace_lr_diagnose",
        description=__doc__.split("\n\n")[0].split(": ", 1)[1],
        epilog="Units: Å, 1/Å, e, e·Å, K. See README.md, section mace_lr_diagnose.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument("trajectory", type=Path, help="extxyz, ASE .traj, or i-PI xyz/extxyz trajectory")
    parser.add_argument("--format", default="auto", choices=FORMATS, help="reader (auto: i-PI xyz if the comment line has CELL(...), else ASE)")
    source = parser.add_mutually_exclusive_group()
    source.add_argument("--charges", metavar="EL=Q,...", help="charge (e) per element, e.g. Na=1,Cl=-1")
    source.add_argument("--charges-key", metavar="KEY", help="per-atom charge array of the file (default: the first of REF_charges, initial_charges, charges, MACE_charges)")
    source.add_argument("--model", metavar="PATH", help="mace-lr model whose predicted charges are used")
    parser.add_argument("--device", default="cpu", help="torch device of --model")
    parser.add_argument("--default-dtype", default="float64", choices=["float32", "float64"], help="dtype of --model")
    parser.add_argument("--kmax", type=_positive(float), default=3.0, help="largest |k| (1/Å)")
    parser.add_argument("--bins", type=_positive(int), default=150, help="number of |k| bins on (0, kmax]")
    parser.add_argument("--blocks", type=_positive(int), default=5, help="blocks of the block-average error bars")
    parser.add_argument("--fit-model", default="curvature", choices=["curvature", "power"], help="small-k fit: ln S = ln A + p ln k (+ c k^2 with curvature)")
    parser.add_argument("--fit-bins", type=_positive(int), default=None, help="lowest non-empty k bins in the small-k fit (default 8 with curvature, 3 with power)")
    parser.add_argument("--temperature", type=_positive(float), help="temperature (K): dielectric constant, Stillinger-Lovett ratio")
    dipole = parser.add_mutually_exclusive_group()
    dipole.add_argument("--dipole-key", default="auto", help="per-frame total dipole (e·Å) for the dielectric constant (auto: REF_dipole, dipole, MACE_dipole if present, else from charges)")
    dipole.add_argument("--dipole-from-charges", action="store_true", help="M = sum_i q_i r_i (+ atomic dipoles) even if the file has a total dipole")
    parser.add_argument("--atomic-dipoles-key", metavar="KEY", help="per-atom dipoles (e·Å) to add to the polarization")
    parser.add_argument("--unwrap", action="store_true", help="unwrap positions (minimum image between frames) for M = sum q r")
    parser.add_argument("--start", type=_non_negative_int, default=0, help="first frame")
    parser.add_argument("--stop", type=_non_negative_int, default=None, help="stop before this frame")
    parser.add_argument("--every", type=_positive(int), default=1, help="use every n-th frame")
    parser.add_argument("--json", type=Path, metavar="PATH", help="write every number to this JSON file")
    parser.add_argument("--plot", type=Path, metavar="PATH", help="write a PNG figure")
    parser.add_argument("--quiet", action="store_true", help="no progress bar, no summary")
    return parser


def _charge_source(args: argparse.Namespace) -> ChargeSource | None:
    if args.charges is not None:
        return ElementCharges(parse_element_charges(args.charges))
    if args.charges_key is not None:
        return ArrayCharges(args.charges_key)
    if args.model is not None:
        return ModelCharges(args.model, device=args.device, default_dtype=args.default_dtype)
    return None


def summary(report: DiagnosticsReport, n_rows: int = 6) -> str:
    """Plain-text summary of a report."""
    s = report.structure_factor
    lines = [
        f"{report.n_frames} frames, {report.n_atoms} atoms, <V> = {report.volume:.1f} Å^3 "
        f"(rho = {report.number_density:.4f} 1/Å^3); charges {report.charge_source}, <q^2> = {report.mean_square_charge:.4g} e^2",
        "      k (1/Å)      S_QQ (e^2)        error   k-vectors",
    ]
    for i in range(min(n_rows, len(s.k))):
        lines.append(f"  {s.k[i]:11.4f}  {s.value[i]:14.6g}  {s.error[i]:11.3g}  {s.n_vectors[i]:10.0f}")
    lines.append(f"verdict: {report.verdict.text}")
    if report.stillinger_lovett_ratio is not None:
        lines.append(
            f"Stillinger-Lovett ratio at k = {s.k[0]:.3f} 1/Å: {report.stillinger_lovett_ratio:.3f} +- "
            f"{report.stillinger_lovett_ratio_err:.3f} (1: perfect screening of a conductor; <1: dielectric)"
        )
    if report.dielectric is not None:
        d = report.dielectric
        caveat = "; NOT converged, see the warning" if d.warnings else ""
        lines.append(f"dielectric constant: {d.value:.4g} +- {d.error:.2g} ({d.source}{caveat})")
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point: parse, analyse, write JSON/PNG, print. Bad input: status 2."""
    parser = build_parser()
    args = parser.parse_args(argv)
    options = DiagnosticsOptions(
        kmax=args.kmax,
        n_bins=args.bins,
        n_blocks=args.blocks,
        fit_model=args.fit_model,
        fit_bins=args.fit_bins,
        temperature=args.temperature,
        dipole_key=None if args.dipole_from_charges else args.dipole_key,
        atomic_dipoles_key=args.atomic_dipoles_key,
        unwrap=args.unwrap,
        progress=False if args.quiet else None,
    )
    for path in (args.json, args.plot):
        if path is not None and not path.parent.resolve().is_dir():
            print(f"mace_lr_diagnose: error: output directory does not exist: {path.parent}", file=sys.stderr)
            return 2
    try:
        report = diagnose_file(
            args.trajectory, _charge_source(args), options, args.start, args.stop, args.every, args.format
        )
    except DiagnosticsInputError as error:
        print(f"mace_lr_diagnose: error: {error}", file=sys.stderr)
        return 2
    for warning in report.warnings:
        print(f"mace_lr_diagnose: warning: {warning}", file=sys.stderr)
    if args.json is not None:
        args.json.write_text(json.dumps(report.to_dict(), indent=1) + "\n")
    if args.plot is not None:
        from mace_lr.analysis.plotting import save_report_plot

        save_report_plot(report, args.plot, title=str(args.trajectory.name))
    if not args.quiet:
        print(summary(report))
    return 0


if __name__ == "__main__":
    sys.exit(main())
