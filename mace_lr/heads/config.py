"""User-facing settings of the long-range heads (what ``--long_range`` and friends set)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional

#: Heads that exist now. ``ewald_mp`` is a block inside the backbone.
HEAD_NAMES: tuple[str, ...] = ("charges", "latent", "qeq", "dipoles", "lode", "ewald_mp")

#: Heads that set the charges of the whole structure: they cannot be combined with other charge heads.
EXCLUSIVE_CHARGE_HEADS: tuple[str, ...] = ("qeq", "dipoles")
CHARGE_HEADS: tuple[str, ...] = ("charges", "latent", "qeq", "dipoles")
DIPOLES_MODES: tuple[str, ...] = ("centroids", "atomic")

QEQ_SOLVERS: tuple[str, ...] = ("auto", "dense", "iterative")


@dataclass(frozen=True)
class LongRangeConfig:
    """Settings shared by all heads.

    heads: names in evaluation order (``()`` = plain short-range MACE).
    charge_width: Gaussian std of every model charge (Å); 0 = point charges.
    method: ``auto``, ``direct`` (non-periodic data only), ``ewald`` or ``pme``; ``ewald``
        and ``pme`` also fix the k-space path of ``lode`` and ``ewald_mp`` (else ``auto``).
    accuracy: relative accuracy of the Coulomb sums (RMS force error relative to the
        nearest-neighbour Coulomb scale); 1e-5 is far below model errors.
    readout_hidden: hidden width of the charge readout MLPs.
    qeq_solver: ``auto``, ``dense`` or ``iterative`` (training always uses ``dense``).
    qeq_dense_max_atoms: atoms per structure up to which ``auto`` solves densely.
    qeq_tolerance: relative residual of the iterative solver.
    qeq_max_width: largest learnable Gaussian width (Å); None = min(1 Å, sigma(r_max) / sqrt 2)
        (:func:`mace_lr.electrostatics.qeq.default_max_width`, the former periodic limit,
        kept so that configurations build the same model; periodic sums no longer limit it).
    lode_smearing: Gaussian std of the LODE densities (Å).
    lode_channels: 0 = one density per element; k > 0 = k learned channels.
    ewald_mp_layers: interaction layers (0-based) after which the reciprocal-space
        message is added to the node features.
    ewald_mp_channels: channels of the reciprocal-space messages.
    ewald_mp_smearings: Gaussian widths (Å) whose smoothed Coulomb kernels, mixed with
        learned weights, form the message filter (k-space: sum_m a_m 4 pi exp(-k^2 s_m^2/2) / k^2).
    field_conditioned: the external field enters the backbone as an l=1 input
        (:mod:`mace_lr.field_conditioning`); dipole, polarizability and Born charges are
        then derivatives of the energy with respect to the field.
    field_layers: interaction layers after which the field enters (``()`` = all).
    wannier_ion_charges: ``dipoles`` head: ((Z, charge in e), ...) fixed ionic charges.
    wannier_centroid_charges: ``dipoles`` head: ((Z, charge in e), ...) charge of the one
        Wannier centroid each atom of that element carries (e.g. ((8, -8.0),) for water).
    dipoles_mode: ``dipoles`` head: ``centroids`` (DPLR-style Wannier centroids) or
        ``atomic`` (a Gaussian point dipole on every atom, plus the fixed ionic charges).
    """

    heads: tuple[str, ...] = ()
    charge_width: float = 1.0
    method: str = "auto"
    accuracy: float = 1e-5
    readout_hidden: int = 32
    qeq_solver: str = "auto"
    qeq_dense_max_atoms: int = 1000
    qeq_tolerance: float = 1e-8
    qeq_max_width: Optional[float] = None
    lode_smearing: float = 1.0
    lode_channels: int = 0
    ewald_mp_layers: tuple[int, ...] = (0,)
    ewald_mp_channels: int = 16
    ewald_mp_smearings: tuple[float, ...] = (1.0, 2.0, 4.0)
    field_conditioned: bool = False
    field_layers: tuple[int, ...] = ()
    wannier_ion_charges: tuple[tuple[int, float], ...] = ()
    wannier_centroid_charges: tuple[tuple[int, float], ...] = ()
    dipoles_mode: str = "centroids"
    extra: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        for name in self.heads:
            if name not in HEAD_NAMES:
                raise ValueError(f"unknown long-range head {name!r}; valid heads: {', '.join(HEAD_NAMES)}")
        if len(set(self.heads)) != len(self.heads):
            raise ValueError(f"long-range head listed twice in {'+'.join(self.heads)}")
        if self.charge_width < 0.0:
            raise ValueError(f"charge_width must be >= 0 Å, got {self.charge_width}")
        check_combination(self.heads)
        if self.qeq_solver not in QEQ_SOLVERS:
            raise ValueError(f"qeq_solver must be one of {QEQ_SOLVERS}, got {self.qeq_solver!r}")
        if not 0.0 < self.qeq_tolerance < 1.0:
            raise ValueError(f"qeq_tolerance must be in (0, 1), got {self.qeq_tolerance}")
        if self.qeq_max_width is not None and not self.qeq_max_width > 0.0:
            raise ValueError(f"qeq_max_width must be > 0 Å, got {self.qeq_max_width}")
        if not self.lode_smearing > 0.0 or self.lode_channels < 0:
            raise ValueError(f"lode_smearing must be > 0 Å and lode_channels >= 0, got {self.lode_smearing}, "
                             f"{self.lode_channels}")
        if not self.ewald_mp_layers or any(layer < 0 for layer in self.ewald_mp_layers):
            raise ValueError(f"ewald_mp_layers must list layer indices >= 0, got {self.ewald_mp_layers}")
        if self.ewald_mp_channels < 1 or not self.ewald_mp_smearings or min(self.ewald_mp_smearings) <= 0.0:
            raise ValueError("ewald_mp needs >= 1 channel and smearings > 0 Å")
        if any(layer < 0 for layer in self.field_layers):
            raise ValueError(f"field_layers must be layer indices >= 0, got {self.field_layers}")
        if self.field_layers and not self.field_conditioned:
            raise ValueError("field_layers is set but field_conditioned is False")
        if self.dipoles_mode not in DIPOLES_MODES:
            raise ValueError(f"dipoles_mode must be one of {DIPOLES_MODES}, got {self.dipoles_mode!r}")
        if "dipoles" in self.heads and self.dipoles_mode == "centroids" and not any(
                q != 0.0 for _, q in self.wannier_centroid_charges):
            raise ValueError("the dipoles head needs Wannier centroid charges, e.g. --wannier_centroid_charges 8:-8 "
                             "--wannier_ion_charges 1:1,8:6 for water (or --dipoles_mode atomic)")
        if "dipoles" in self.heads and self.dipoles_mode == "atomic" and self.wannier_centroid_charges:
            raise ValueError("--wannier_centroid_charges belong to --dipoles_mode centroids; atomic dipoles carry "
                             "no centroid charge (ionic charges: --wannier_ion_charges)")

    @property
    def active(self) -> bool:
        """Anything to wrap around the backbone (a head or the field input)."""
        return bool(self.heads) or self.field_conditioned


def check_combination(heads: tuple[str, ...]) -> None:
    """ValueError for head combinations that make no sense (e.g. qeq with another charge head)."""
    for name in EXCLUSIVE_CHARGE_HEADS:
        others = [h for h in heads if h in CHARGE_HEADS and h != name]
        if name in heads and others:
            raise ValueError(
                f"the {name!r} head equilibrates the charges of the whole structure and cannot be combined "
                f"with {' or '.join(repr(o) for o in others)}; use {name!r} alone or with non-charge heads"
            )


def parse_long_range(text: str) -> tuple[str, ...]:
    """``"none"`` -> ``()``; ``"charges+latent"`` -> ``("charges", "latent")``."""
    text = text.strip().lower()
    if text in ("", "none"):
        return ()
    names = tuple(part.strip() for part in text.split("+"))
    for name in names:
        if name not in HEAD_NAMES:
            raise ValueError(
                f"unknown long-range head {name!r} in {text!r}; valid: none, "
                f"{', '.join(HEAD_NAMES)}, or a combination joined by '+'"
            )
    if len(set(names)) != len(names):
        raise ValueError(f"long-range head listed twice in {text!r}")
    check_combination(names)
    return names
