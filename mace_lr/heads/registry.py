"""Name -> head module, in one place (the only dispatch on head names)."""

from __future__ import annotations

from typing import List, Mapping, Optional, Sequence

import torch

from ..electrostatics.graph import GraphCoulomb
from .charges import build_charges_head
from .config import LongRangeConfig
from .latent import build_latent_head
from .qeq import build_qeq_head


def build_heads(
    config: LongRangeConfig,
    num_scalars: int,
    atomic_numbers: Sequence[int],
    r_max: float,
    element_charges: Optional[Mapping[int, float]] = None,
) -> List[torch.nn.Module]:
    """Modules for ``config.heads``, in order, sharing one Coulomb setting."""
    coulomb = GraphCoulomb(
        width=config.charge_width, cutoff=r_max, accuracy=config.accuracy, method=config.method
    )
    heads: List[torch.nn.Module] = []
    for name in config.heads:
        if name == "charges":
            heads.append(build_charges_head(num_scalars, atomic_numbers, coulomb, config.readout_hidden, element_charges))
        elif name == "latent":
            heads.append(build_latent_head(num_scalars, atomic_numbers, coulomb, config.readout_hidden))
        elif name == "qeq":
            heads.append(build_qeq_head(
                num_scalars, atomic_numbers, r_max, config.accuracy, config.readout_hidden, config.qeq_max_width,
                config.qeq_solver, config.qeq_dense_max_atoms, config.qeq_tolerance, config.method))
        else:  # LongRangeConfig validated the names
            raise AssertionError(name)
    return heads
