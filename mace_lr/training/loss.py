"""The long-range loss: MACE's selected loss (``--loss``) plus charge, dipole and BEC terms.

Terms added to MACE's energy/forces/stress loss (any of them), each weighted per
configuration by ``config_weight`` and MACE's per-property weight, which is 0 for a
configuration without that reference (``charges_weight``/``dipole_weight`` in AtomicData):

* charges: ``w_q * mean_i (q_i^ref - q_i)^2`` over atoms (e^2);
* dipole: ``w_mu * 100 * mean_{g,a} ((mu_ga^ref - mu_ga) / N_g)^2`` (per-atom dipole,
  (e·Å)^2), the normalisation of MACE's ``energy_forces_dipole`` loss, so that
  ``--dipole_weight`` means what it means there;
* Born charges: ``w_Z * mean_{i,a,b} (Z_iab^ref - Z_iab)^2`` over atoms and the 9
  components (e^2); the reference travels as ``bec``/``bec_weight`` (see
  :mod:`mace_lr.training.bec_data`).

Means are over all atoms/graphs of the batch, reduced across processes like MACE's own
terms (:func:`mace.modules.loss.reduce_loss`). A term whose weight is 0, or whose
prediction the model does not return, is skipped (the same on every process).
"""

from __future__ import annotations

from typing import Dict, Optional

import torch
from mace.modules.loss import reduce_loss

#: MACE's scale of the per-atom dipole MSE in ``WeightedEnergyForcesDipoleLoss``.
DIPOLE_SCALE = 100.0


def charges_mse(ref, pred: Dict[str, torch.Tensor], ddp: Optional[bool] = None) -> torch.Tensor:
    """Weighted per-atom charge MSE (e^2)."""
    weight = (ref.weight * ref.charges_weight)[ref.batch]
    return reduce_loss(weight * torch.square(ref.charges - pred["charges"]), ddp)


def dipole_mse(ref, pred: Dict[str, torch.Tensor], ddp: Optional[bool] = None) -> torch.Tensor:
    """Weighted per-atom dipole MSE ((e·Å)^2), times :data:`DIPOLE_SCALE`."""
    num_atoms = (ref.ptr[1:] - ref.ptr[:-1]).unsqueeze(-1).to(pred["dipole"].dtype)
    weight = ref.weight.unsqueeze(-1) * ref.dipole_weight.view(-1, 3)
    error = (ref.dipole.view(-1, 3) - pred["dipole"]) / num_atoms
    return DIPOLE_SCALE * reduce_loss(weight * torch.square(error), ddp)


def bec_mse(ref, pred: Dict[str, torch.Tensor], ddp: Optional[bool] = None) -> torch.Tensor:
    """Weighted Born-charge MSE (e^2) per atom and Cartesian component pair."""
    weight = (ref.weight * ref.bec_weight)[ref.batch].view(-1, 1, 1)
    return reduce_loss(weight * torch.square(ref.bec.view(-1, 3, 3) - pred["bec"]), ddp)


class LongRangeLoss(torch.nn.Module):
    """``base(ref, pred) + charges_weight * charges_mse + dipole_weight * dipole_mse + bec_weight * bec_mse``."""

    def __init__(self, base: torch.nn.Module, charges_weight: float, dipole_weight: float,
                 bec_weight: float = 0.0) -> None:
        super().__init__()
        self.base = base
        self.charges_weight = float(charges_weight)
        self.dipole_weight = float(dipole_weight)
        self.bec_weight = float(bec_weight)

    def forward(self, ref, pred: Dict[str, torch.Tensor], ddp: Optional[bool] = None) -> torch.Tensor:
        loss = self.base(ref=ref, pred=pred) if ddp is None else self.base(ref=ref, pred=pred, ddp=ddp)
        if self.charges_weight > 0.0 and pred.get("charges") is not None:
            loss = loss + self.charges_weight * charges_mse(ref, pred, ddp)
        if self.dipole_weight > 0.0 and pred.get("dipole") is not None:
            loss = loss + self.dipole_weight * dipole_mse(ref, pred, ddp)
        if self.bec_weight > 0.0 and pred.get("bec") is not None and getattr(ref, "bec", None) is not None:
            loss = loss + self.bec_weight * bec_mse(ref, pred, ddp)
        return loss

    def __repr__(self) -> str:
        text = f"charges_weight={self.charges_weight:.3f}, dipole_weight={self.dipole_weight:.3f}"
        if self.bec_weight > 0.0:
            text += f", bec_weight={self.bec_weight:.3f}"
        return f"{self.base!r} + LongRangeLoss({text})"
