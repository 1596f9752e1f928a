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
  :mod:`mace_lr.training.bec_data`);
* polarization (3D-periodic structures): ``w_P * 100 * mean_{g,a} (dM_ga / N_g)^2`` with
  dM = mu - V P^ref reduced to the branch nearest zero modulo the quanta e R_j
  (:func:`mace_lr.field.dipole_difference_modulo_quantum`), so shifting a reference by a
  quantum e R / V changes nothing; per atom and scaled like the dipole term ((e·Å)^2).

Means are over all atoms/graphs of the batch, reduced across processes like MACE's own
terms (:func:`mace.modules.loss.reduce_loss`). A term whose weight is 0, or whose
prediction the model does not return, is skipped (the same on every process).
"""

from __future__ import annotations

from typing import Dict, Optional

import torch
from mace.modules.loss import reduce_loss

from ..field import dipole_difference_modulo_quantum

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


def polarization_mse(ref, pred: Dict[str, torch.Tensor], ddp: Optional[bool] = None) -> torch.Tensor:
    """Weighted per-atom MSE of the dipole per cell against V P^ref modulo quanta ((e·Å)^2), times
    :data:`DIPOLE_SCALE`."""
    dipole = pred["dipole"]
    cell = ref.cell.view(-1, 3, 3).to(dipole.dtype)
    volume = torch.linalg.det(cell).abs().unsqueeze(-1)
    pbc = ref.pbc.view(-1, 3) if getattr(ref, "pbc", None) is not None else (volume > 0.0).expand(-1, 3)
    difference = dipole_difference_modulo_quantum(dipole - volume * ref.polarization.view(-1, 3), cell, pbc)
    num_atoms = (ref.ptr[1:] - ref.ptr[:-1]).unsqueeze(-1).to(dipole.dtype)
    weight = (ref.weight * ref.polarization_weight).unsqueeze(-1)
    return DIPOLE_SCALE * reduce_loss(weight * torch.square(difference / num_atoms), ddp)


class LongRangeLoss(torch.nn.Module):
    """``base(ref, pred) + charges_weight * charges_mse + dipole_weight * dipole_mse + bec_weight * bec_mse
    + polarization_weight * polarization_mse``."""

    def __init__(self, base: torch.nn.Module, charges_weight: float, dipole_weight: float,
                 bec_weight: float = 0.0, polarization_weight: float = 0.0) -> None:
        super().__init__()
        self.base = base
        self.charges_weight = float(charges_weight)
        self.dipole_weight = float(dipole_weight)
        self.bec_weight = float(bec_weight)
        self.polarization_weight = float(polarization_weight)

    def forward(self, ref, pred: Dict[str, torch.Tensor], ddp: Optional[bool] = None) -> torch.Tensor:
        loss = self.base(ref=ref, pred=pred) if ddp is None else self.base(ref=ref, pred=pred, ddp=ddp)
        if self.charges_weight > 0.0 and pred.get("charges") is not None:
            loss = loss + self.charges_weight * charges_mse(ref, pred, ddp)
        if self.dipole_weight > 0.0 and pred.get("dipole") is not None:
            loss = loss + self.dipole_weight * dipole_mse(ref, pred, ddp)
        if self.bec_weight > 0.0 and pred.get("bec") is not None and getattr(ref, "bec", None) is not None:
            loss = loss + self.bec_weight * bec_mse(ref, pred, ddp)
        if (self.polarization_weight > 0.0 and pred.get("dipole") is not None
                and getattr(ref, "polarization", None) is not None):
            loss = loss + self.polarization_weight * polarization_mse(ref, pred, ddp)
        return loss

    def __repr__(self) -> str:
        text = f"charges_weight={self.charges_weight:.3f}, dipole_weight={self.dipole_weight:.3f}"
        if self.bec_weight > 0.0:
            text += f", bec_weight={self.bec_weight:.3f}"
        if self.polarization_weight > 0.0:
            text += f", polarization_weight={self.polarization_weight:.3f}"
        return f"{self.base!r} + LongRangeLoss({text})"
