"""Head ``latent``: implicit charges learned only from energies, forces (and dipoles), LES-style.

The readout has no per-element offsets: charges start near zero and grow only as far
as the energy and force (and optional dipole) losses ask for them.
"""

from __future__ import annotations

from typing import Sequence

from ..electrostatics.graph import GraphCoulomb
from .charge_head import ChargeHead
from .readouts import ScalarReadout


def build_latent_head(
    num_scalars: int, atomic_numbers: Sequence[int], coulomb: GraphCoulomb, hidden: int
) -> ChargeHead:
    """Latent-charge head."""
    readout = ScalarReadout(num_scalars, hidden, len(atomic_numbers), None, learn_offsets=False,
                            output_bias=False)  # a uniform shift is removed by the total-charge constraint
    return ChargeHead(readout, coulomb)
