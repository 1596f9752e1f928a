"""Head ``charges``: explicit local charges q_i = f(X_i), fitted to ``REF_charges``, then Coulomb.

Per-element offsets start at the training set's mean reference charge of each element,
so the MLP only learns the environment dependence. Train with ``--charges_weight > 0``.
"""

from __future__ import annotations

from typing import Mapping, Optional, Sequence

from ..electrostatics.graph import GraphCoulomb
from .charge_head import ChargeHead
from .readouts import ScalarReadout


def build_charges_head(
    num_scalars: int,
    atomic_numbers: Sequence[int],
    coulomb: GraphCoulomb,
    hidden: int,
    element_charges: Optional[Mapping[int, float]] = None,
) -> ChargeHead:
    """Explicit-charge head; ``element_charges`` maps Z to its mean reference charge (e)."""
    offsets = [float((element_charges or {}).get(int(z), 0.0)) for z in atomic_numbers]
    readout = ScalarReadout(num_scalars, hidden, len(atomic_numbers), offsets, learn_offsets=True,
                            output_bias=False)  # a uniform shift is removed by the total-charge constraint
    return ChargeHead(readout, coulomb)
