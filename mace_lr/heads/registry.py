"""Name -> head module, in one place (the only dispatch on head names)."""

from __future__ import annotations

from typing import List, Mapping, Optional, Sequence

import torch

from ..electrostatics.graph import GraphCoulomb
from .charges import build_charges_head
from .config import LongRangeConfig
from .dipoles import build_dipoles_head
from .latent import build_latent_head
from .lode import build_lode_head
from .qeq import build_qeq_head


def build_heads(
    config: LongRangeConfig,
    num_scalars: int,
    atomic_numbers: Sequence[int],
    r_max: float,
    element_charges: Optional[Mapping[int, float]] = None,
    irreps_per_layer: Sequence[str] = (),
) -> List[torch.nn.Module]:
    """Modules for ``config.heads``, in order, sharing one Coulomb setting.

    ``ewald_mp`` is not a head (it acts inside the backbone; see
    :func:`mace_lr.heads.ewald_mp.build_ewald_message_passing`) and is skipped here.
    """
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
        elif name == "lode":
            heads.append(build_lode_head(num_scalars, atomic_numbers, irreps_per_layer, config.lode_smearing,
                                         config.accuracy, config.readout_hidden, config.lode_channels, config.method))
        elif name == "dipoles":
            heads.append(build_dipoles_head(irreps_per_layer, atomic_numbers, dict(config.wannier_ion_charges),
                                            dict(config.wannier_centroid_charges), config.charge_width,
                                            config.accuracy, config.dipoles_mode))
        elif name == "ewald_mp":
            continue
        else:  # LongRangeConfig validated the names
            raise AssertionError(name)
    return heads
