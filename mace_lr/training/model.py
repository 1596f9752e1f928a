"""Turn the ScaleShiftMACE that MACE configured into a MACELR (backbone + heads)."""

from __future__ import annotations

import logging
from typing import Dict, Iterable, Optional, Sequence

import torch

from ..models import build_macelr
from .settings import LongRangeTraining


def element_charges(dataset: Iterable, atomic_numbers: Sequence[int]) -> Optional[Dict[int, float]]:
    """Mean reference charge (e) of each element over the configurations that have charges.

    ``dataset`` yields MACE AtomicData (one-hot ``node_attrs`` in the order of
    ``atomic_numbers``, ``charges``, ``charges_weight``); None when no configuration has
    reference charges. Elements never seen with a charge get 0.
    """
    num_elements = len(atomic_numbers)
    sums = torch.zeros(num_elements, dtype=torch.float64)
    counts = torch.zeros(num_elements, dtype=torch.float64)
    for item in dataset:
        weight = getattr(item, "charges_weight", None)
        if item.charges is None or weight is None or float(weight) <= 0.0:
            continue
        one_hot = item.node_attrs.to(torch.float64)
        sums += one_hot.T @ item.charges.to(torch.float64)
        counts += one_hot.sum(dim=0)
    if counts.sum() == 0:
        return None
    means = torch.where(counts > 0, sums / counts.clamp(min=1.0), torch.zeros_like(sums))
    return {int(z): float(q) for z, q in zip(atomic_numbers, means)}


def wrap_backbone(
    backbone: torch.nn.Module, settings: LongRangeTraining, train_dataset: Iterable
) -> torch.nn.Module:
    """``build_macelr(backbone, ...)`` with element charges from ``train_dataset``.

    The backbone is returned as it is when no head is requested. Only the ``charges``
    head uses the element charges (initial offsets), so only then is the data scanned.
    """
    if not settings.active:
        return backbone
    atomic_numbers = [int(z) for z in backbone.atomic_numbers]
    charges = element_charges(train_dataset, atomic_numbers) if "charges" in settings.long_range.heads else None
    if charges is not None:
        logging.info("Mean reference charge per element (e): %s", {z: round(q, 4) for z, q in charges.items()})
    model = build_macelr(backbone, settings.long_range, element_charges=charges)
    logging.info("Long-range heads: %s (%d parameters)", "+".join(settings.long_range.heads) or "none",
                 sum(p.numel() for p in model.long_range_heads.parameters()))
    if model.field_conditioned:
        logging.info("Field input after interaction layers %s (%d parameters)", model.field_conditioning[0].layers,
                     sum(p.numel() for p in model.field_conditioning.parameters()))
    return model
