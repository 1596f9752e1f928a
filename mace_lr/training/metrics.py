"""Charge and dipole errors in MACE's validation logs and final error tables.

Units: charges in me (milli-elementary charge), dipoles in me·Å (the total dipole of a
structure, not per atom; 1 me·Å = 4.803 mD). MACE's metric object already accumulates
dipole errors whenever the model returns ``dipole`` and the data has one;
:class:`LongRangeMetrics` adds per-atom charge errors. Only configurations with a
reference (non-zero ``charges_weight`` / ``dipole_weight``) count.
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
    """MACE's validation metrics plus ``rmse_q`` / ``mae_q`` (e) of per-atom charges."""

    def __init__(self, loss_fn: torch.nn.Module) -> None:
        super().__init__(loss_fn=loss_fn)
        self.add_state("Qs_computed", default=torch.tensor(0.0), dist_reduce_fx="sum")
        self.add_state("delta_qs", default=[], dist_reduce_fx="cat")

    def update(self, batch, output) -> None:  # pylint: disable=arguments-differ
        super().update(batch, output)
        charges = output.get("charges")
        weight = getattr(batch, "charges_weight", None)
        if charges is None or batch.charges is None or weight is None:
            return
        mask = (batch.weight * weight)[batch.batch] > 0
        if bool(mask.any()):
            self.delta_qs.append((batch.charges - charges.detach())[mask])
            self.Qs_computed += mask.sum()

    def compute(self):
        loss, aux = super().compute()
        if self.Qs_computed:
            delta = self.convert(self.delta_qs)
            aux["rmse_q"] = compute_rmse(delta)
            aux["mae_q"] = compute_mae(delta)
        return loss, aux


def _value(metrics: Mapping, key: str) -> Optional[float]:
    """``metrics[key]`` if it was computed (MACE's dict returns placeholders for missing keys)."""
    value = metrics.get(key) if isinstance(metrics, dict) else None
    return float(value) if isinstance(value, numbers.Real) else None


def long_range_line(metrics: Mapping) -> Optional[str]:
    """``RMSE_Q=... me, RMSE_MU=... me A`` for a validation log line, or None."""
    parts = []
    if (q := _value(metrics, "rmse_q")) is not None:
        parts.append(f"RMSE_Q={q * MILLI:8.2f} me")
    if (mu := _value(metrics, "rmse_mu")) is not None:
        parts.append(f"RMSE_MU={mu * MILLI:8.2f} me A")
    return ", ".join(parts) or None


def log_long_range_errors(metrics: Mapping, head: str, epoch: Optional[int]) -> None:
    """One extra validation log line with the charge and dipole errors, if any."""
    line = long_range_line(metrics)
    if line is not None:
        when = "Initial" if epoch is None else f"Epoch {epoch}"
        logging.info(f"{when}: head: {head}, {line}")


def add_table_columns(table: PrettyTable, table_type: str, metrics_by_name: Dict[str, Mapping]) -> PrettyTable:
    """Append charge and dipole columns (RMSE, or MAE for MAE tables) to MACE's error table.

    Rows are matched by their first cell (the data set name); "-" where a set has no
    reference. Columns appear only if some row has a value; MACE's dipole tables keep
    their own dipole column.
    """
    kind = "mae" if "MAE" in table_type else "rmse"
    columns = [(f"{kind}_q", f"{kind.upper()} Q / me")]
    if "Dipole" not in table_type:
        columns.append((f"{kind}_mu", f"{kind.upper()} MU / me A"))
    names = [row[0] for row in table.rows]
    for key, title in columns:
        values: List[Optional[float]] = [_value(metrics_by_name.get(name, {}), key) for name in names]
        if names and any(v is not None for v in values):
            table.add_column(title, ["-" if v is None else f"{v * MILLI:8.2f}" for v in values])
    return table
