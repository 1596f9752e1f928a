"""``mace_lr_generate``: write reference data sets (extxyz with MACE keys).

Examples::

    mace_lr_generate random-charges --n-configs 1000 --seed 0 -o random_charges.xyz
    mace_lr_generate dimers --n-configs 500 --seed 1 -o dimers.xyz --max-separation 12
    mace_lr_generate clusters --n-configs 200 -o clusters.xyz --systems Na9Cl8+ Na8Cl9-
    mace_lr_generate field --n-configs 300 -o field.xyz --max-field 0.2

Same arguments, same seed: byte-identical file. Unless ``OMP_NUM_THREADS`` is set, the
command runs tblite (and torch) single-threaded: the xTB systems are 2-20 atoms, where
OpenMP threads only cost time (up to several hundred times more on shared cores).
Run several commands with different seeds in parallel instead. Train MACE on the output with
``--energy_key=REF_energy --forces_key=REF_forces --dipole_key=REF_dipole`` etc. (see
``mace_lr.data.MACE_TRAIN_KEYS``).
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path
from typing import Callable, Sequence

from ase import Atoms

from mace_lr import data


def _number(kind: type, text: str) -> int | float:
    try:
        return kind(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a valid {kind.__name__}: {text!r}") from None


def _positive_int(text: str) -> int:
    value = _number(int, text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {text}")
    return value


def _non_negative_int(text: str) -> int:
    value = _number(int, text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be a non-negative integer, got {text}")
    return value


def _positive_float(text: str) -> float:
    value = _number(float, text)
    if not value > 0 or value == float("inf"):  # also rejects nan
        raise argparse.ArgumentTypeError(f"must be a positive number, got {text}")
    return value


def _non_negative_float(text: str) -> float:
    value = _number(float, text)
    if not value >= 0 or value == float("inf"):
        raise argparse.ArgumentTypeError(f"must be a non-negative number, got {text}")
    return value


def _random_charges(args: argparse.Namespace, common: dict) -> list[Atoms]:
    return data.generate_random_charges(
        n_atoms=args.n_atoms,
        volume_per_atom=args.volume_per_atom,
        min_distance=args.min_distance,
        **common,
    )


def _dimers(args: argparse.Namespace, common: dict) -> list[Atoms]:
    return data.generate_dimers(
        monomers=args.monomers,
        min_separation=args.min_separation,
        max_separation=args.max_separation,
        noise=args.noise,
        max_charge_transfer=args.max_charge_transfer,
        accuracy=args.xtb_accuracy,
        **common,
    )


def _clusters(args: argparse.Namespace, common: dict) -> list[Atoms]:
    return data.generate_clusters(systems=args.systems, accuracy=args.xtb_accuracy, **common)


def _field(args: argparse.Namespace, common: dict) -> list[Atoms]:
    return data.generate_field(
        molecules=args.molecules,
        max_field=args.max_field,
        noise=args.noise,
        accuracy=args.xtb_accuracy,
        **common,
    )


def _water(args: argparse.Namespace, common: dict) -> list[Atoms]:
    return data.generate_water_clusters(min_molecules=args.min_molecules, max_molecules=args.max_molecules,
                                        noise=args.noise, accuracy=args.xtb_accuracy, **common)


def _subcommand(
    subparsers: argparse._SubParsersAction, name: str, help_text: str, run: Callable, xtb: bool
) -> argparse.ArgumentParser:
    """A subparser with the options every generator shares."""
    parser = subparsers.add_parser(name, help=help_text, description=help_text)
    parser.add_argument(
        "-n",
        "--n-configs",
        type=_positive_int,
        default=100,
        help="number of configurations (default 100)",
    )
    parser.add_argument("--seed", type=_non_negative_int, default=0, help="random seed (default 0)")
    parser.add_argument(
        "-o", "--output", type=Path, required=True, help="output extxyz file (overwritten)"
    )
    parser.add_argument("-q", "--quiet", action="store_true", help="no progress bar, no summary")
    if xtb:
        parser.add_argument(
            "--xtb-accuracy",
            type=_positive_float,
            default=data.xtb.DEFAULT_ACCURACY,
            help="tblite SCF accuracy factor (smaller is tighter; default %(default)s)",
        )
    parser.set_defaults(run=run, subparser=parser)
    return parser


def build_parser() -> argparse.ArgumentParser:
    """The ``mace_lr_generate`` argument parser."""
    parser = argparse.ArgumentParser(
        prog="mace_lr_generate",
        description="Generate labelled reference data (extxyz with MACE keys: REF_energy, ...).",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = _subcommand(
        sub,
        "random-charges",
        "±1 e point charges + Born-Mayer repulsion in a periodic box (LES benchmark)",
        _random_charges,
        xtb=False,
    )
    p.add_argument(
        "--n-atoms", type=_positive_int, default=128, help="ions per box, even (default 128)"
    )
    p.add_argument(
        "--volume-per-atom", type=_positive_float, default=12.0, help="Å^3 per ion (default 12)"
    )
    p.add_argument(
        "--min-distance",
        type=_positive_float,
        default=1.8,
        help="closest allowed approach, Å (default 1.8)",
    )

    p = _subcommand(
        sub,
        "dimers",
        "charged/polar molecular dimers at 2-15 Å, GFN2-xTB labels",
        _dimers,
        xtb=True,
    )
    p.add_argument(
        "--monomers",
        nargs="+",
        choices=sorted(data.MOLECULES),
        default=list(data.DIMER_MONOMERS),
        metavar="NAME",
        help=f"monomer pool (default: {' '.join(data.DIMER_MONOMERS)}; also: Na+ CO CH3OH (H2O)2)",
    )
    p.add_argument(
        "--min-separation",
        type=_positive_float,
        default=2.0,
        help="shortest intermolecular distance, lower bound, Å",
    )
    p.add_argument(
        "--max-separation",
        type=_positive_float,
        default=15.0,
        help="shortest intermolecular distance, upper bound, Å",
    )
    p.add_argument(
        "--noise",
        type=_non_negative_float,
        default=0.02,
        help="Gaussian atom displacement, Å (default 0.02)",
    )
    p.add_argument(
        "--max-charge-transfer",
        type=_positive_float,
        default=None,
        help="redraw dimers whose xTB charge transfer between monomers exceeds this (e)",
    )

    p = _subcommand(
        sub,
        "clusters",
        "Na9Cl8+/Na8Cl9-/Na9Cl8 and C10H2/C10H3+ clusters, GFN2-xTB labels",
        _clusters,
        xtb=True,
    )
    p.add_argument(
        "--systems",
        nargs="+",
        choices=list(data.CLUSTER_SYSTEMS),
        default=list(data.CLUSTER_SYSTEMS),
        metavar="NAME",
        help=f"systems, used in turn (default: all of {' '.join(data.CLUSTER_SYSTEMS)})",
    )

    p = _subcommand(
        sub,
        "field",
        "neutral molecules in random uniform electric fields, GFN2-xTB labels",
        _field,
        xtb=True,
    )
    p.add_argument(
        "--molecules",
        nargs="+",
        choices=list(data.FIELD_MOLECULES),
        default=list(data.FIELD_MOLECULES),
        metavar="NAME",
        help=f"molecules, used in turn (default: {' '.join(data.FIELD_MOLECULES)})",
    )
    p.add_argument(
        "--max-field",
        type=_positive_float,
        default=0.1,
        help="largest field magnitude, V/Å (default 0.1)",
    )
    p.add_argument(
        "--noise",
        type=_non_negative_float,
        default=0.02,
        help="Gaussian atom displacement, Å (default 0.02)",
    )
    p = _subcommand(sub, "water", "water clusters (H2O)_n in open boundaries, GFN2-xTB labels", _water, xtb=True)
    p.add_argument("--min-molecules", type=_positive_int, default=2, help="fewest molecules (default 2)")
    p.add_argument("--max-molecules", type=_positive_int, default=6, help="most molecules (default 6)")
    p.add_argument("--noise", type=_non_negative_float, default=0.03,
                   help="Gaussian atom displacement, Å (default 0.03)")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point: parse, generate, write. Bad arguments exit with status 2."""
    parser = build_parser()
    args = parser.parse_args(argv)
    os.environ.setdefault("OMP_NUM_THREADS", "1")  # read when tblite/torch load, below
    if not args.output.parent.resolve().is_dir():
        args.subparser.error(f"output directory does not exist: {args.output.parent}")
    common = dict(n_configs=args.n_configs, seed=args.seed, progress=False if args.quiet else None)
    start = time.perf_counter()
    try:
        frames = args.run(args, common)
    except data.InvalidOption as error:  # option combinations the library rejects
        args.subparser.error(str(error))
    data.write_dataset(frames, args.output)
    if not args.quiet:
        elapsed = time.perf_counter() - start
        print(
            f"wrote {len(frames)} {args.command} configurations to {args.output} ({elapsed:.1f} s)",
            file=sys.stderr,
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
