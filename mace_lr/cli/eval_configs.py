"""``mace_lr_eval_configs``: evaluate a MACE-LR (or plain MACE) model on an extxyz file.

Like ``mace_eval_configs``; writes, with the prefix ``--info_prefix`` (default ``MACE_``):

==========================  =======  ===============================================
key                         where    meaning (units)
==========================  =======  ===============================================
``<prefix>energy``          info     total energy (eV)
``<prefix>forces``          arrays   forces [N, 3] (eV/Å)
``<prefix>stress``          info     stress, Voigt xx yy zz yz xz xy (eV/Å^3), with
                                     ``--compute_stress`` (like ``REF_stress``)
``<prefix>charges``         arrays   model charges [N] (e), long-range models
``<prefix>dipole``          info     dipole sum_i q_i r_i [3] (e·Å), long-range models
``<prefix>electrostatic_energy``  info  Coulomb energy of the charges (eV)
``<prefix>bec``             arrays   Born charges [N, 9] (e), ``bec[i, 3a+b] =
                                     d mu_b / d r_{i,a}``, with ``--compute_bec``
==========================  =======  ===============================================

The model file may be the eager ``.model`` or the TorchScript ``_compiled.model``.
``total_charge`` and ``external_field`` (V/Å) are read from each structure's info.
"""

from __future__ import annotations

import argparse
from typing import Dict, List, Optional, Sequence

import mace  # noqa: F401  (mace before e3nn)
import ase.io
import numpy as np
import torch
from ase.stress import full_3x3_to_voigt_6_stress
from mace import data
from mace.tools import torch_geometric, torch_tools, utils
from tqdm import tqdm

#: Model output -> extxyz key (after the prefix): per structure (info) and per atom (arrays).
GRAPH_OUTPUTS = {"energy": "energy", "stress": "stress", "dipole": "dipole",
                 "electrostatic_energy": "electrostatic_energy"}
ATOM_OUTPUTS = {"forces": "forces", "charges": "charges", "bec": "bec"}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--configs", required=True, help="extxyz file to evaluate")
    parser.add_argument("--model", required=True, help="model file (.model or _compiled.model)")
    parser.add_argument("--output", required=True, help="extxyz file to write")
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument("--default_dtype", default="float64", choices=["float32", "float64"])
    parser.add_argument("--batch_size", type=int, default=16)
    parser.add_argument("--compute_stress", action="store_true", help="also write the stress")
    parser.add_argument("--compute_bec", action="store_true", help="also write Born effective charges")
    parser.add_argument("--info_prefix", default="MACE_", help="prefix of the written keys")
    parser.add_argument("--head", default=None, help="MACE head to evaluate (multi-head models)")
    parser.add_argument("--total_charge_key", default="total_charge", help="info key of the total charge (e)")
    parser.add_argument("--external_field_key", default="external_field", help="info key of the field (V/Å)")
    parser.add_argument("--no_progress", action="store_true", help="no progress bar")
    return parser


def is_long_range(model: torch.nn.Module) -> bool:
    """True for MACELR, eager or compiled."""
    return hasattr(model, "long_range_heads")


def load_model(path: str, device: str) -> torch.nn.Module:
    """Eager or TorchScript model (torch.load hands TorchScript archives to torch.jit.load)."""
    model = torch.load(path, map_location=device, weights_only=False)
    for param in model.parameters():
        param.requires_grad = False
    return model.to(device)


def _loader(atoms_list, model: torch.nn.Module, args: argparse.Namespace):
    heads = list(model.heads) if hasattr(model, "heads") else None
    head = args.head or "Default"
    if heads is not None and head not in heads:
        if args.head is not None:
            raise ValueError(f"head {head!r} not in the model's heads {heads}")
        head = heads[-1]  # fine-tuned models: pt_head first, the user's head last
    keys = data.KeySpecification(info_keys={"total_charge": args.total_charge_key,
                                            "external_field": args.external_field_key})
    z_table = utils.AtomicNumberTable([int(z) for z in model.atomic_numbers])
    dataset = [
        data.AtomicData.from_config(data.config_from_atoms(atoms, key_specification=keys, head_name=head),
                                    z_table=z_table, cutoff=float(model.r_max), heads=heads)
        for atoms in atoms_list
    ]
    return torch_geometric.dataloader.DataLoader(dataset, batch_size=args.batch_size, shuffle=False, drop_last=False)


def evaluate(model: torch.nn.Module, atoms_list, args: argparse.Namespace) -> List[Dict[str, np.ndarray]]:
    """One dict of numpy outputs per structure (keys of GRAPH_OUTPUTS / ATOM_OUTPUTS present)."""
    kwargs = {"compute_stress": args.compute_stress}
    if args.compute_bec:
        kwargs["compute_bec"] = True
    results: List[Dict[str, np.ndarray]] = []
    loader = _loader(atoms_list, model, args)
    with tqdm(total=len(atoms_list), unit="config", disable=args.no_progress) as progress:
        for batch in loader:
            batch = batch.to(args.device)
            output = model(batch.to_dict(), **kwargs)
            ptr = batch.ptr.cpu().numpy()
            per_graph: List[Dict[str, np.ndarray]] = [{} for _ in range(batch.num_graphs)]
            for key in GRAPH_OUTPUTS:
                if output.get(key) is not None:
                    for g, value in enumerate(torch_tools.to_numpy(output[key])):
                        per_graph[g][key] = value
            for key in ATOM_OUTPUTS:
                if output.get(key) is not None:
                    values = torch_tools.to_numpy(output[key])
                    for g in range(batch.num_graphs):
                        per_graph[g][key] = values[ptr[g]: ptr[g + 1]]
            results.extend(per_graph)
            progress.update(batch.num_graphs)
    return results


def write_results(atoms_list, results: List[Dict[str, np.ndarray]], prefix: str, output: str) -> None:
    for atoms, result in zip(atoms_list, results):
        atoms.calc = None
        for key, value in result.items():
            name = prefix + (GRAPH_OUTPUTS.get(key) or ATOM_OUTPUTS[key])
            if key in ATOM_OUTPUTS:  # charges [N], forces [N, 3], bec [N, 3, 3] -> [N, 9]
                atoms.arrays[name] = value if value.ndim < 3 else value.reshape(len(atoms), 9)
            elif key == "stress":
                atoms.info[name] = full_3x3_to_voigt_6_stress(value)
            else:
                atoms.info[name] = value.item() if value.ndim == 0 else value
    ase.io.write(output, atoms_list, format="extxyz")


def run(args: argparse.Namespace) -> None:
    torch_tools.set_default_dtype(args.default_dtype)
    model = load_model(args.model, args.device)
    if args.compute_bec and not is_long_range(model):
        raise ValueError("--compute_bec needs a mace-lr model with long-range heads (a MACELR)")
    atoms_list = ase.io.read(args.configs, index=":")
    results = evaluate(model, atoms_list, args)
    write_results(atoms_list, results, args.info_prefix, args.output)


def main(argv: Optional[Sequence[str]] = None) -> None:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        run(args)
    except ValueError as exc:
        parser.error(str(exc))


if __name__ == "__main__":
    main()
