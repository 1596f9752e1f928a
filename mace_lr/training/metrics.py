"""Charge, dipole and Born-charge errors in MACE's validation logs and final error tables.

Units: charges in me (milli-elementary charge), dipoles in me·Å (the total dipole of a
structure, not per atom; 1 me·Å = 4.803 mD), Born charges in me (per component).
MACE's metric object already accumulates dipole errors whenever the model returns
``dipole`` and the data has one; :class:`LongRangeMetrics` adds per-atom charge and
BEC errors. Only configurations with a reference (non-zero ``charges_weight`` /
``dipole_weight`` / ``bec_weight``) count.
"""

from __future__ import annotations

import logging
import numbers
from typing import Dict, List, Mapping, Optional

import torch
from mace.tools.train import MACELoss
from mace.tools.utils import compute_mae, compute_rmse
from prettytable import PrettyTable

MILLI = 1000.0


class LongRangeMetrics(MACELoss):
    """MACE's validation metrics plus ``rmse_q`` / ``mae_q`` (e) of per-atom charges and
    ``rmse_bec`` / ``mae_bec`` (e) of Born-charge components."""

    def __init__(self, loss_fn: torch.nn.Module) -> None:
        super().__init__(loss_fn=loss_fn)
        self.add_state("Qs_computed", default=torch.tensor(0.0), dist_reduce_fx="sum")
        self.add_state("delta_qs", default=[], dist_reduce_fx="cat")
        self.add_state("BECs_computed", default=torch.tensor(0.0), dist_reduce_fx="sum")
        self.add_state("delta_becs", default=[], dist_reduce_fx="cat")

    def update(self, batch, output) -> None:  # pylint: disable=arguments-differ
        super().update(batch, output)
        self._update_charges(batch, output)
        self._update_bec(batch, output)

    def _update_charges(self, batch, output) -> None:
        charges = output.get("charges")
        weight = getattr(batch, "charges_weight", None)
        if charges is None or batch.charges is None or weight is None:
            return
        mask = (batch.weight * weight)[batch.batch] > 0
        if bool(mask.any()):
            self.delta_qs.append((batch.charges - charges.detach())[mask])
            self.Qs_computed += mask.sum()

    def _update_bec(self, batch, output) -> None:
        bec = output.get("bec")
        reference = getattr(batch, "bec", None)
        weight = getattr(batch, "bec_weight", None)
        if bec is None or reference is None or weight is None:
            return
        mask = (batch.weight * weight)[batch.batch] > 0
        if bool(mask.any()):
            self.delta_becs.append((reference.view(-1, 3, 3) - bec.detach())[mask].reshape(-1))
            self.BECs_computed += mask.sum()

    def compute(self):
        loss, aux = super().compute()
        if self.Qs_computed:
            delta = self.convert(self.delta_qs)
            aux["rmse_q"] = compute_rmse(delta)
            aux["mae_q"] = compute_mae(delta)
        if self.BECs_computed:
            delta = self.convert(self.delta_becs)
            aux["rmse_bec"] = compute_rmse(delta)
            aux["mae_bec"] = compute_mae(delta)
        return loss, aux


def _value(metrics: Mapping, key: str) -> Optional[float]:
    """``metrics[key]`` if it was computed (MACE's dict returns placeholders for missing keys)."""
    value = metrics.get(key) if isinstance(metrics, dict) else None
    return float(value) if isinstance(value, numbers.Real) else None


def long_range_line(metrics: Mapping) -> Optional[str]:
    """``RMSE_Q=... me, RMSE_MU=... me A, RMSE_BEC=... me`` for a validation log line, or None."""
    parts = []
    if (q := _value(metrics, "rmse_q")) is not None:
        parts.append(f"RMSE_Q={q * MILLI:8.2f} me")
    if (mu := _value(metrics, "rmse_mu")) is not None:
        parts.append(f"RMSE_MU={mu * MILLI:8.2f} me A")
    if (z := _value(metrics, "rmse_bec")) is not None:
        parts.append(f"RMSE_BEC={z * MILLI:8.2f} me")
    return ", ".join(parts) or None


def log_long_range_errors(metrics: Mapping, head: str, epoch: Optional[int]) -> None:
    """One extra validation log line with the charge and dipole errors, if any."""
    line = long_range_line(metrics)
    if line is not None:
        when = "Initial" if epoch is None else f"Epoch {epoch}"
        logging.info(f"{when}: head: {head}, {line}")


def add_table_columns(table: PrettyTable, table_type: str, metrics_by_name: Dict[str, Mapping]) -> PrettyTable:
    """Append charge, dipole and BEC columns (RMSE, or MAE for MAE tables) to MACE's error table.

    Rows are matched by their first cell (the data set name); "-" where a set has no
    reference. Columns appear only if some row has a value; MACE's dipole tables keep
    their own dipole column.
    """
    kind = "mae" if "MAE" in table_type else "rmse"
    columns = [(f"{kind}_q", f"{kind.upper()} Q / me")]
    if "Dipole" not in table_type:
        columns.append((f"{kind}_mu", f"{kind.upper()} MU / me A"))
    columns.append((f"{kind}_bec", f"{kind.upper()} BEC / me"))
    names = [row[0] for row in table.rows]
    for key, title in columns:
        values: List[Optional[float]] = [_value(metrics_by_name.get(name, {}), key) for name in names]
        if names and any(v is not None for v in values):
            table.add_column(title, ["-" if v is None else f"{v * MILLI:8.2f}" for v in values])
    return table
