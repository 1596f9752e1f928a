"""User-facing settings of the long-range heads (what ``--long_range`` and friends set)."""

from __future__ import annotations

from dataclasses import dataclass, field

#: Heads that exist now; later issues add qeq, dipoles, lode, ewald_mp.
HEAD_NAMES: tuple[str, ...] = ("charges", "latent")


@dataclass(frozen=True)
class LongRangeConfig:
    """Settings shared by all heads.

    heads: names in evaluation order (``()`` = plain short-range MACE).
    charge_width: Gaussian std of every model charge (Å); 0 = point charges.
    method: ``auto``, ``direct`` (non-periodic data only), ``ewald`` or ``pme``.
    accuracy: relative accuracy of the Coulomb sums (RMS force error relative to the
        nearest-neighbour Coulomb scale); 1e-5 is far below model errors.
    readout_hidden: hidden width of the charge readout MLPs.
    """

    heads: tuple[str, ...] = ()
    charge_width: float = 1.0
    method: str = "auto"
    accuracy: float = 1e-5
    readout_hidden: int = 32
    extra: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        for name in self.heads:
            if name not in HEAD_NAMES:
                raise ValueError(f"unknown long-range head {name!r}; valid heads: {', '.join(HEAD_NAMES)}")
        if len(set(self.heads)) != len(self.heads):
            raise ValueError(f"long-range head listed twice in {'+'.join(self.heads)}")
        if self.charge_width < 0.0:
            raise ValueError(f"charge_width must be >= 0 Å, got {self.charge_width}")


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
    return names
