"""Optimizer parameter groups that cover every trainable parameter (backbone and heads).

MACE's ``get_params_options`` groups parameters by attribute name (``node_embedding``,
``interactions``, ``products``, ``readouts``, ...) and silently leaves out anything else,
which is how MACE's own LES heads ended up never trained. Here:

* the backbone (``model.backbone``) gets MACE's own groups, so ``--freeze``,
  ``--lr_params_factors`` and weight decay behave as in MACE;
* the long-range heads (and the ``ewald_mp`` and field-input blocks) get two groups: weight matrices (ndim >= 2) with ``--weight_decay``,
  and biases, per-element offsets and physical scalars (widths, hardness, ...) without it,
  since decaying those would pull the charges towards zero rather than regularise;
  ``lr_params_factors["long_range_lr_factor"]`` scales their learning rate;
* any trainable parameter still missing (a future head, a MACE change) goes into a
  group of its own with a warning; :func:`check_coverage` then proves that every
  parameter with ``requires_grad`` is in exactly one group.
"""

from __future__ import annotations

import json
import logging
from typing import Any, Callable, Dict, List

import torch

ParamOptions = Dict[str, Any]


def _materialise(options: ParamOptions) -> ParamOptions:
    """Generators (MACE passes ``module.parameters()``) become lists, so they can be checked."""
    for group in options["params"]:
        group["params"] = list(group["params"])
    return options


def _assigned(options: ParamOptions) -> set[int]:
    return {id(p) for group in options["params"] for p in group["params"]}


def head_groups(args, heads: torch.nn.Module) -> List[Dict[str, Any]]:
    """Two groups for the long-range heads: decayed matrices, undecayed vectors/scalars."""
    factors = json.loads(args.lr_params_factors)
    lr = factors.get("long_range_lr_factor", 1.0) * args.lr
    decay = [p for p in heads.parameters() if p.ndim >= 2]
    no_decay = [p for p in heads.parameters() if p.ndim < 2]
    return [
        {"name": "long_range_heads_decay", "params": decay, "weight_decay": args.weight_decay, "lr": lr},
        {"name": "long_range_heads_no_decay", "params": no_decay, "weight_decay": 0.0, "lr": lr},
    ]


def check_coverage(model: torch.nn.Module, options: ParamOptions) -> None:
    """RuntimeError unless every trainable parameter is in exactly one group."""
    counts: Dict[int, int] = {}
    for group in options["params"]:
        for p in group["params"]:
            counts[id(p)] = counts.get(id(p), 0) + 1
    missing = [n for n, p in model.named_parameters() if p.requires_grad and id(p) not in counts]
    twice = [n for n, p in model.named_parameters() if counts.get(id(p), 0) > 1]
    if missing or twice:
        raise RuntimeError(f"optimizer groups are wrong: missing {missing}, in several groups {twice}")


def param_options(
    args, model: torch.nn.Module, mace_param_options: Callable[[Any, torch.nn.Module], ParamOptions]
) -> ParamOptions:
    """MACE's groups for the backbone, plus the heads' groups and a catch-all group."""
    heads = getattr(model, "long_range_heads", None)
    backbone = model.backbone if heads is not None else model
    options = _materialise(mace_param_options(args, backbone))
    if heads is not None:  # heads and the ewald_mp blocks inside the backbone
        long_range = torch.nn.ModuleList([heads, getattr(model, "message_passing", torch.nn.ModuleList()),
                                          getattr(model, "field_conditioning", torch.nn.ModuleList())])
        options["params"].extend(head_groups(args, long_range))
    assigned = _assigned(options)
    leftover = [(n, p) for n, p in model.named_parameters() if p.requires_grad and id(p) not in assigned]
    if leftover:
        logging.warning("Parameters outside MACE's optimizer groups, trained without weight decay: %s",
                        ", ".join(n for n, _ in leftover))
        options["params"].append(
            {"name": "other", "params": [p for _, p in leftover], "weight_decay": 0.0, "lr": args.lr}
        )
    options["params"] = [group for group in options["params"] if group["params"]]
    check_coverage(model, options)
    return options
