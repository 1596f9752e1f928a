"""Per-atom scalar readouts from the backbone's invariant features (plain torch, scriptable)."""

from __future__ import annotations

from typing import Optional, Sequence

import torch


class ScalarReadout(torch.nn.Module):
    """y_i = MLP(h_i) + b_{Z_i}: one number per atom (e.g. a charge in e).

    in_features: width of ``node_scalars``; hidden: MLP width (0 = linear);
    offsets: initial per-element biases b_Z (len = number of elements), or None for 0;
    learn_offsets: whether b_Z trains (else a fixed buffer);
    output_bias: whether the MLP's last layer has a bias (a head that removes the mean
    of its output, such as a charge head under a total-charge constraint, has no use for one).
    """

    def __init__(
        self,
        in_features: int,
        hidden: int,
        num_elements: int,
        offsets: Optional[Sequence[float]] = None,
        learn_offsets: bool = True,
        output_bias: bool = True,
    ) -> None:
        super().__init__()
        if hidden > 0:
            self.mlp = torch.nn.Sequential(
                torch.nn.Linear(in_features, hidden), torch.nn.SiLU(), torch.nn.Linear(hidden, 1, bias=output_bias)
            )
        else:
            self.mlp = torch.nn.Sequential(torch.nn.Linear(in_features, 1, bias=output_bias))
        initial = torch.zeros(num_elements) if offsets is None else torch.tensor(list(offsets), dtype=torch.get_default_dtype())
        if initial.shape != (num_elements,):
            raise ValueError(f"need {num_elements} element offsets, got {tuple(initial.shape)}")
        if learn_offsets:
            self.offsets = torch.nn.Parameter(initial)
        else:
            self.register_buffer("offsets", initial)

    def forward(self, node_scalars: torch.Tensor, node_attrs: torch.Tensor) -> torch.Tensor:
        return self.mlp(node_scalars).squeeze(-1) + node_attrs @ self.offsets
