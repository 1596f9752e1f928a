"""Tiny MACE backbones and batches for model tests (float64)."""

from __future__ import annotations

from typing import Sequence

import mace  # noqa: F401  (before e3nn)
import numpy as np
import torch
from ase import Atoms
from e3nn import o3
from mace import data as mace_data
from mace import modules, tools
from mace.tools import torch_geometric


def tiny_backbone(
    atomic_numbers: Sequence[int] = (1, 8, 11, 17),
    r_max: float = 4.0,
    hidden: str = "8x0e+8x1o",
    num_interactions: int = 2,
    seed: int = 0,
) -> modules.ScaleShiftMACE:
    """A small random ScaleShiftMACE in float64."""
    torch.manual_seed(seed)
    model = modules.ScaleShiftMACE(
        r_max=r_max,
        num_bessel=4,
        num_polynomial_cutoff=5,
        max_ell=2,
        interaction_cls=modules.interaction_classes["RealAgnosticResidualInteractionBlock"],
        interaction_cls_first=modules.interaction_classes["RealAgnosticResidualInteractionBlock"],
        num_interactions=num_interactions,
        num_elements=len(atomic_numbers),
        hidden_irreps=o3.Irreps(hidden),
        MLP_irreps=o3.Irreps("8x0e"),
        atomic_energies=np.linspace(-1.0, -2.0, len(atomic_numbers)),
        avg_num_neighbors=6.0,
        atomic_numbers=list(atomic_numbers),
        correlation=2,
        gate=torch.nn.functional.silu,
        atomic_inter_scale=1.0,
        atomic_inter_shift=0.0,
    )
    return model.double()


def batch_dict(atoms_list: Sequence[Atoms], model: torch.nn.Module) -> dict:
    """MACE batch dict for ``atoms_list`` (reads ``total_charge`` from atoms.info)."""
    z_table = tools.AtomicNumberTable([int(z) for z in model.atomic_numbers])
    r_max = float(model.r_max)
    items = []
    for atoms in atoms_list:
        config = mace_data.config_from_atoms(atoms)
        config.properties["total_charge"] = float(atoms.info.get("total_charge", 0.0))
        items.append(mace_data.AtomicData.from_config(config, z_table=z_table, cutoff=r_max, heads=["Default"]))
    loader = torch_geometric.dataloader.DataLoader(items, batch_size=len(items), shuffle=False)
    return next(iter(loader)).to_dict()


def amplify_charge_readouts(model: torch.nn.Module, factor: float = 20.0) -> None:
    """Scale the heads' last readout layers so random models carry charges of order 0.1-1 e."""
    with torch.no_grad():
        for head in model.long_range_heads:
            head.readout.mlp[-1].weight.mul_(factor)


def lr_model(heads=("charges", "latent"), seed: int = 0, **config):
    """A tiny float64 MACELR with sizeable random charges."""
    from mace_lr.heads import LongRangeConfig
    from mace_lr.models import build_macelr

    backbone = tiny_backbone(seed=seed)
    model = build_macelr(backbone, LongRangeConfig(heads=tuple(heads), **config), {11: 0.8, 17: -0.8, 8: -0.6, 1: 0.3})
    amplify_charge_readouts(model)
    return model


def nacl_crystal(seed: int = 1) -> Atoms:
    from ase.build import bulk

    atoms = bulk("NaCl", "rocksalt", a=5.64).repeat((2, 2, 2))
    atoms.rattle(0.15, seed=seed)
    return atoms


def water_cluster(seed: int = 2, charge: float = 0.0) -> Atoms:
    """Two water molecules and a Na (open boundaries); ``total_charge`` in info."""
    from ase.build import molecule

    first = molecule("H2O")
    second = molecule("H2O")
    second.translate([2.9, 0.3, 0.2])
    ion = Atoms("Na", positions=[[1.2, 2.6, -0.4]])
    atoms = first + second + ion
    atoms.rattle(0.05, seed=seed)
    atoms.info["total_charge"] = charge
    return atoms


def capture_training(monkeypatch) -> dict:
    """Make an in-process ``mace_lr.training.run`` record the MACELR it builds ("model") and its
    optimizer ("optimizer") in the returned dict."""
    import mace.cli.run_train

    from mace_lr.training import model as lr_model

    captured: dict = {}
    wrap, get_optimizer = lr_model.wrap_backbone, mace.cli.run_train.get_optimizer

    def record_model(*args, **kwargs):
        captured["model"] = wrap(*args, **kwargs)
        return captured["model"]

    def record_optimizer(args, param_options):
        captured["optimizer"] = get_optimizer(args, param_options)
        return captured["optimizer"]

    monkeypatch.setattr(lr_model, "wrap_backbone", record_model)
    monkeypatch.setattr(mace.cli.run_train, "get_optimizer", record_optimizer)
    return captured
