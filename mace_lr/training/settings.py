"""``mace_lr_run_train`` arguments: MACE's parser plus the long-range flags, and their checks.

Every ``mace_run_train`` argument (and YAML ``--config`` file) is accepted unchanged; the
extra flags are listed in :func:`add_long_range_arguments`. MACE's own ``--dipole_weight``
and ``--swa_dipole_weight`` weight the dipole term of the long-range loss.
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass

from mace import tools

from ..electrostatics.graph import GRAPH_METHODS
from ..data.io import BEC_KEY, FIELD_KEY

#: extxyz info key of the reference polarization (e/Å^2) of periodic structures.
POLARIZATION_KEY = "REF_polarization"
from ..heads import LongRangeConfig, parse_long_range
from ..heads.config import CHARGE_HEADS, DIPOLES_MODES

#: ``--charges_weight`` when not given: fit charges only with the explicit ``charges`` head.
DEFAULT_CHARGES_WEIGHT = 100.0

#: MACE model types that :func:`mace_lr.models.build_macelr` can wrap (both give ScaleShiftMACE).
WRAPPABLE_MODELS = ("MACE", "ScaleShiftMACE")


def _long_range_text(text: str) -> str:
    """Canonical ``--long_range`` value ("none" or "a+b"); argparse error if unknown."""
    try:
        heads = parse_long_range(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None
    return "+".join(heads) if heads else "none"


def _non_negative(text: str) -> float:
    value = float(text)
    if not value >= 0.0:  # also rejects nan
        raise argparse.ArgumentTypeError(f"must be >= 0, got {text}")
    return value


def _positive(text: str) -> float:
    value = float(text)
    if not value > 0.0:
        raise argparse.ArgumentTypeError(f"must be > 0, got {text}")
    return value


def _non_negative_int(text: str) -> int:
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be >= 0, got {text}")
    return value


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {text}")
    return value


def _int_list(text: str) -> list:
    try:
        values = [int(part) for part in str(text).strip("[]").split(",") if part.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}") from None
    if not values or min(values) < 0:
        raise argparse.ArgumentTypeError(f"expected layer indices >= 0, got {text!r}")
    return values


def _float_list(text: str) -> list:
    try:
        values = [float(part) for part in str(text).strip("[]").split(",") if part.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated numbers, got {text!r}") from None
    if not values or min(values) <= 0.0:
        raise argparse.ArgumentTypeError(f"expected positive widths, got {text!r}")
    return values


def _element_charges(text: str) -> list:
    """``"1:1,8:6"`` -> [(1, 1.0), (8, 6.0)] (atomic number : charge in e)."""
    pairs = []
    for part in str(text).strip("{}[]").split(","):
        if not part.strip():
            continue
        try:
            z, q = part.split(":")
            pairs.append((int(z), float(q)))
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected Z:charge pairs such as 1:1,8:6, got {text!r}") from None
    return pairs


def add_long_range_arguments(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """Add the long-range flags to a (MACE) argument parser; returns it."""
    group = parser.add_argument_group("long-range electrostatics (mace-lr)")
    group.add_argument(
        "--long_range", type=_long_range_text, default="none",
        help="long-range heads: none, charges, latent, qeq, dipoles, lode, ewald_mp, or a '+' combination (e.g. "
        "charges+latent, qeq+lode, latent+ewald_mp; qeq and dipoles do not combine with other charge heads)",
    )
    group.add_argument("--lr_charge_width", type=_non_negative, default=1.0,
                       help="Gaussian std of the model charges (Å); 0 = point charges")
    group.add_argument(
        "--electrostatics_method", choices=GRAPH_METHODS, default="auto",
        help="Coulomb sum for periodic graphs: auto (Ewald, PME for large cells), ewald, pme, or direct "
        "(data without periodic structures); non-periodic graphs always use the direct sum",
    )
    group.add_argument("--electrostatics_accuracy", type=_positive, default=1e-5,
                       help="relative accuracy of the Coulomb sums")
    group.add_argument("--lr_readout_hidden", type=_non_negative_int, default=32,
                       help="hidden width of the charge readout MLPs (0 = linear)")
    group.add_argument("--qeq_solver", choices=("auto", "dense", "iterative"), default="auto",
                       help="charge equilibration solver of the qeq head at inference (training always solves "
                       "densely): auto = dense up to --qeq_dense_max_atoms atoms per structure, else CG")
    group.add_argument("--qeq_dense_max_atoms", type=_non_negative_int, default=1000,
                       help="atoms per structure up to which --qeq_solver auto solves densely")
    group.add_argument("--qeq_tolerance", type=_positive, default=1e-8,
                       help="relative residual at which the iterative QEq solver stops")
    group.add_argument("--qeq_max_width", type=_positive, default=None,
                       help="largest learnable Gaussian width of the qeq head (Å); default: the largest the "
                       "periodic sums allow with r_max (at most 1 Å)")
    group.add_argument("--lode_smearing", type=_positive, default=1.0,
                       help="Gaussian std of the densities whose potential and field the lode head sees (Å)")
    group.add_argument("--lode_channels", type=_non_negative_int, default=0,
                       help="lode densities: 0 = one per element, k > 0 = k learned channels")
    group.add_argument("--ewald_mp_layers", type=_int_list, default=[0],
                       help="interaction layers (0-based, comma-separated) after which ewald_mp adds its message")
    group.add_argument("--ewald_mp_channels", type=_positive_int, default=16,
                       help="channels of the ewald_mp reciprocal-space messages")
    group.add_argument("--ewald_mp_smearings", type=_float_list, default=[1.0, 2.0, 4.0],
                       help="widths (Å) of the smoothed Coulomb kernels that form the ewald_mp filter")
    group.add_argument("--wannier_ion_charges", type=_element_charges, default=[],
                       help="dipoles head: fixed ionic charge per element as Z:charge pairs (e), e.g. 1:1,8:6")
    group.add_argument("--wannier_centroid_charges", type=_element_charges, default=[],
                       help="dipoles head: charge of the Wannier centroid that each atom of an element carries, "
                       "e.g. 8:-8 (water: 4 centroids x -2 e on O as one)")
    group.add_argument("--dipoles_mode", choices=DIPOLES_MODES, default="centroids",
                       help="dipoles head: Wannier centroids (DPLR style, needs --wannier_centroid_charges) or a "
                       "Gaussian point dipole on every atom (std --lr_charge_width), with the --wannier_ion_charges")
    group.add_argument(
        "--field_conditioned", action="store_true",
        help="the external field (--external_field_key, V/Å) enters the backbone as an l=1 input; the dipole is "
        "then -dE/dF (fitted with --dipole_weight), the polarizability -d2E/dF2 and Born charges d mu/d r. "
        "Works with or without charge heads (--long_range none is allowed)",
    )
    group.add_argument("--field_layers", type=_int_list, default=None,
                       help="interaction layers (0-based, comma-separated) after which the field enters; default all")
    group.add_argument("--external_field_key", type=str, default=FIELD_KEY,
                       help=f"extxyz info key of the uniform field per structure (V/Å, 3 numbers); default {FIELD_KEY}")
    group.add_argument(
        "--charges_weight", type=_non_negative, default=None,
        help=f"weight of the per-atom charge MSE (e^-2); default {DEFAULT_CHARGES_WEIGHT} with the "
        "'charges' head, 0 otherwise. Configs without reference charges never contribute",
    )
    group.add_argument(
        "--bec_weight", type=_non_negative, default=0.0,
        help="weight of the Born effective charge MSE (e^-2) against --bec_key; needs a charge head. "
        "BEC = d mu / d r by autograd in every training step (about 2x the cost of a force step)",
    )
    group.add_argument("--swa_bec_weight", type=_non_negative, default=None,
                       help="BEC weight in stage two (--swa); default: --bec_weight")
    group.add_argument(
        "--bec_key", type=str, default=BEC_KEY,
        help=f"extxyz per-atom array with reference Born charges, (N, 9), bec[i, 3a+b] = d mu_b / d r_(i,a) "
        f"(e); default {BEC_KEY}",
    )
    group.add_argument(
        "--polarization_weight", type=_non_negative, default=0.0,
        help="weight of the polarization term (3D-periodic structures with --polarization_key): per-atom MSE of "
        "mu - V P_ref reduced modulo the polarization quanta e R / V; needs a charge head or --field_conditioned",
    )
    group.add_argument("--swa_polarization_weight", type=_non_negative, default=None,
                       help="polarization weight in stage two (--swa); default: --polarization_weight")
    group.add_argument("--polarization_key", type=str, default=POLARIZATION_KEY,
                       help=f"extxyz info key of the reference polarization (3 numbers, e/Å^2); default {POLARIZATION_KEY}")
    return parser


def build_parser() -> argparse.ArgumentParser:
    """MACE's ``mace_run_train`` parser with the long-range flags added."""
    return add_long_range_arguments(tools.build_default_arg_parser())


@dataclass(frozen=True)
class LongRangeTraining:
    """What the long-range side of training needs, resolved from the arguments.

    long_range: the heads' settings (``heads == ()``: plain MACE, nothing is wrapped);
    charges_weight (e^-2), dipole_weight, swa_dipole_weight, bec_weight (e^-2),
    swa_bec_weight: loss weights (stage one, two); bec_key: extxyz array of reference BEC.
    """

    long_range: LongRangeConfig
    charges_weight: float
    dipole_weight: float
    swa_dipole_weight: float
    bec_weight: float = 0.0
    swa_bec_weight: float = 0.0
    bec_key: str = BEC_KEY
    field_key: str = FIELD_KEY
    polarization_weight: float = 0.0
    swa_polarization_weight: float = 0.0
    polarization_key: str = POLARIZATION_KEY

    @property
    def trains_bec(self) -> bool:
        """Reference BEC must travel with the data (either stage weights them)."""
        return self.active and (self.bec_weight > 0.0 or self.swa_bec_weight > 0.0)

    @property
    def trains_polarization(self) -> bool:
        """Reference polarizations must travel with the data (either stage weights them)."""
        return self.active and (self.polarization_weight > 0.0 or self.swa_polarization_weight > 0.0)

    @property
    def active(self) -> bool:
        """A MACELR is trained (heads or the field input), not a plain MACE."""
        return self.long_range.active


def settings_from_args(args: argparse.Namespace) -> LongRangeTraining:
    """Check the long-range arguments against MACE's and resolve defaults; ValueError if inconsistent."""
    heads = parse_long_range(args.long_range)
    swa_bec_weight = args.bec_weight if args.swa_bec_weight is None else args.swa_bec_weight
    has_charges = any(name in CHARGE_HEADS for name in heads)
    field_conditioned = bool(getattr(args, "field_conditioned", False))
    field_layers = getattr(args, "field_layers", None)
    if field_layers is not None and not field_conditioned:
        raise ValueError("--field_layers needs --field_conditioned")
    polarization_weight = float(getattr(args, "polarization_weight", 0.0))
    swa_polarization_weight = getattr(args, "swa_polarization_weight", None)
    swa_polarization_weight = polarization_weight if swa_polarization_weight is None else float(swa_polarization_weight)
    has_dipole = has_charges or field_conditioned
    if (polarization_weight > 0.0 or swa_polarization_weight > 0.0) and not has_dipole:
        raise ValueError("--polarization_weight needs a model with a dipole: a charge head (--long_range charges, "
                         "latent, qeq) or --field_conditioned")
    if (args.bec_weight > 0.0 or swa_bec_weight > 0.0) and not has_dipole:
        raise ValueError("--bec_weight needs a head that carries charges (--long_range charges, latent, qeq) or "
                         "--field_conditioned; without either the model has no dipole to differentiate")
    if args.distributed and args.launcher == "none":
        raise ValueError("--distributed needs --launcher torchrun, slurm or mpi (MACE starts no process group with 'none')")
    charges_weight = args.charges_weight
    if charges_weight is None:
        charges_weight = DEFAULT_CHARGES_WEIGHT if "charges" in heads else 0.0
    if heads or field_conditioned:
        if args.model not in WRAPPABLE_MODELS:
            what = f"--long_range {args.long_range}" if heads else "--field_conditioned"
            raise ValueError(f"{what} needs --model MACE or ScaleShiftMACE, got {args.model}")
        if getattr(args, "enable_cueq", False) or getattr(args, "enable_oeq", False) or getattr(args, "only_cueq", False):
            raise ValueError("--long_range does not support --enable_cueq/--enable_oeq/--only_cueq yet")
        if args.loss in ("dipole", "dipole_polar", "energy_forces_dipole"):
            raise ValueError(
                f"--loss {args.loss} is for MACE's dipole models; with --long_range the dipole term is "
                "added to any energy/forces loss, weighted by --dipole_weight"
            )
    if args.charges_weight and not has_charges:
        raise ValueError("--charges_weight needs a charge head (--long_range charges, latent, qeq)")
    config = LongRangeConfig(
        heads=heads,
        charge_width=args.lr_charge_width,
        method=args.electrostatics_method,
        accuracy=args.electrostatics_accuracy,
        readout_hidden=args.lr_readout_hidden,
        qeq_solver=args.qeq_solver,
        qeq_dense_max_atoms=args.qeq_dense_max_atoms,
        qeq_tolerance=args.qeq_tolerance,
        qeq_max_width=args.qeq_max_width,
        lode_smearing=args.lode_smearing,
        lode_channels=args.lode_channels,
        ewald_mp_layers=tuple(args.ewald_mp_layers),
        ewald_mp_channels=args.ewald_mp_channels,
        ewald_mp_smearings=tuple(args.ewald_mp_smearings),
        field_conditioned=field_conditioned,
        field_layers=tuple(field_layers or ()),
        wannier_ion_charges=tuple(getattr(args, "wannier_ion_charges", [])),
        wannier_centroid_charges=tuple(getattr(args, "wannier_centroid_charges", [])),
        dipoles_mode=getattr(args, "dipoles_mode", "centroids"),
    )
    return LongRangeTraining(
        long_range=config,
        charges_weight=float(charges_weight),
        dipole_weight=float(args.dipole_weight),
        swa_dipole_weight=float(args.swa_dipole_weight),
        bec_weight=float(args.bec_weight),
        swa_bec_weight=float(swa_bec_weight),
        bec_key=args.bec_key,
        field_key=getattr(args, "external_field_key", FIELD_KEY),
        polarization_weight=polarization_weight,
        swa_polarization_weight=swa_polarization_weight,
        polarization_key=getattr(args, "polarization_key", POLARIZATION_KEY),
    )
