"""Turn the ScaleShiftMACE that MACE configured into a MACELR (backbone + heads)."""

from __future__ import annotations

import logging
from typing import Dict, Iterable, Optional, Sequence

import torch

from ..heads.config import CHARGE_HEADS
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


def absorb_initial_head_energy(model: torch.nn.Module, dataset: Sequence, atomic_numbers: Sequence[int],
                               max_configs: int = 1000, batch_size: int = 16) -> Optional[torch.Tensor]:
    """Move the per-element mean of the heads' initial electrostatic energy into the backbone's E0s.

    A head's energy at initialisation is largely intramolecular Coulomb (the Wannier-centroid
    head: about -50 eV per water molecule; element charges of -0.6/+0.3 e: a few eV), a
    near-constant the fixed E0s fitted to E_ref do not contain, which the readout would
    otherwise have to learn to cancel with large weights. This evaluates the
    model on up to ``max_configs`` training configurations, fits the electrostatic energy
    (eV) by least squares on the element counts, and subtracts that per-element shift
    (eV) from the E0s, so that E0s . counts + E_heads ~ E_ref at the start of training.
    Returns the shift [num_elements] (None for an empty dataset).
    """
    from mace.tools.torch_geometric import DataLoader

    configs = [dataset[i] for i in range(min(len(dataset), max_configs))]
    if not configs:
        return None
    counts, energies = [], []
    for batch in DataLoader(configs, batch_size=batch_size, shuffle=False, drop_last=False):
        data = batch.to_dict()
        data.pop("bec", None)
        output = model(data, training=False, compute_force=False)
        num_graphs = int(data["ptr"].numel()) - 1
        one_hot = data["node_attrs"].to(torch.float64)
        counts.append(torch.zeros(num_graphs, one_hot.shape[1], dtype=torch.float64).index_add(0, data["batch"], one_hot))
        energies.append(output["electrostatic_energy"].detach().to(torch.float64))
    matrix, target = torch.cat(counts), torch.cat(energies)
    shift = torch.linalg.lstsq(matrix, target.unsqueeze(-1), driver="gelsd").solution.squeeze(-1)
    buffer = model.backbone.atomic_energies_fn.atomic_energies
    with torch.no_grad():
        buffer.sub_(shift.to(buffer.dtype))
    residual = target - matrix @ shift
    logging.info("E0s shifted by the heads' initial energy per element (eV): %s; remaining spread %.3f eV (std over "
                 "%d configurations)", {int(z): round(float(e), 3) for z, e in zip(atomic_numbers, shift)},
                 float(residual.std()) if residual.numel() > 1 else 0.0, len(configs))
    return shift


def wrap_backbone(
    backbone: torch.nn.Module, settings: LongRangeTraining, train_dataset: Iterable
) -> torch.nn.Module:
    """``build_macelr(backbone, ...)`` with element charges from ``train_dataset``.

    The backbone is returned as it is when no head is requested. Only the ``charges``
    head uses the element charges (initial offsets), so only then is the data scanned for
    them. The charge heads' initial electrostatic energy is moved into the E0s
    (:func:`absorb_initial_head_energy`).
    """
    if not settings.active:
        return backbone
    atomic_numbers = [int(z) for z in backbone.atomic_numbers]
    charges = element_charges(train_dataset, atomic_numbers) if "charges" in settings.long_range.heads else None
    if charges is not None:
        logging.info("Mean reference charge per element (e): %s", {z: round(q, 4) for z, q in charges.items()})
    model = build_macelr(backbone, settings.long_range, element_charges=charges)
    if any(head in CHARGE_HEADS for head in settings.long_range.heads):  # the others have no electrostatic energy
        absorb_initial_head_energy(model, train_dataset, atomic_numbers)
    logging.info("Long-range heads: %s (%d parameters)", "+".join(settings.long_range.heads) or "none",
                 sum(p.numel() for p in model.long_range_heads.parameters()))
    if model.field_conditioned:
        logging.info("Field input after interaction layers %s (%d parameters)", model.field_conditioning[0].layers,
                     sum(p.numel() for p in model.field_conditioning.parameters()))
    return model
