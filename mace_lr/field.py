"""Finite electric fields: the constant-E electric enthalpy (issue 7 adds constant D, P, alpha).

E_field = -mu . F per structure (eV), with mu = sum_i q_i r_i (e·Å) and F in V/Å. For
a periodic cell this is -V P . F with P = mu / V, valid for positions that MD keeps
unwrapped (ASE and i-PI do); forces gain q_i F plus the charges' response. Atomic
shares -q_i r_i . F sum to E_field.
"""

from __future__ import annotations

import torch


def field_node_energy(charges: torch.Tensor, positions: torch.Tensor, field: torch.Tensor, batch: torch.Tensor) -> torch.Tensor:
    """-q_i r_i . F_{g(i)} [N] (eV): each atom's share of the electric enthalpy.

    charges [N] e, positions [N, 3] Å, field [G, 3] V/Å, batch [N].
    """
    return -charges * (positions * field[batch]).sum(-1)
