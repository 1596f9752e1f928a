"""ASE Atoms -> MACE batch dictionaries (what the calculator, eval and i-PI driver feed models).

Reads ``atoms.info["total_charge"]`` (e), ``atoms.info["external_field"]`` (V/Å) and
``atoms.info["displacement_field"]`` (e/Å^2, constant D; batch key ``displacement_field``
[G, 3], zeros for structures without one) and
rejects input that would give silent nonsense: NaN positions, atoms on top of each
other, elements the model does not know, periodic structures without a cell.
"""

from __future__ import annotations

from typing import Optional, Sequence

import mace  # noqa: F401  (before e3nn)
import numpy as np
import torch
from ase import Atoms
from mace import data as mace_data
from mace.tools import AtomicNumberTable, torch_geometric

#: Atoms closer than this (Å) are reported as overlapping.
OVERLAP_DISTANCE = 0.1


class StructureError(ValueError):
    """A structure a model cannot evaluate; the message says what to fix."""


def check_atoms(atoms: Atoms, z_table: AtomicNumberTable) -> None:
    """Raise :class:`StructureError` for input that a model would get silently wrong."""
    positions = atoms.get_positions()
    if not np.all(np.isfinite(positions)):
        raise StructureError("positions contain NaN or infinity; check the structure")
    unknown = sorted(set(int(z) for z in atoms.numbers) - set(int(z) for z in z_table.zs))
    if unknown:
        raise StructureError(
            f"elements {unknown} are not in the model (it knows {list(z_table.zs)}); "
            "use a model trained on these elements"
        )
    pbc = atoms.get_pbc()
    if pbc.any() and abs(atoms.cell.volume) < 1e-9 and pbc.sum() == 3:
        raise StructureError("periodic structure without a cell; set atoms.cell or atoms.pbc = False")


def check_overlaps(item) -> None:
    """StructureError if two atoms (or an atom and a periodic image) are closer than
    :data:`OVERLAP_DISTANCE`, read off the graph MACE built (every pair within r_max)."""
    sender, receiver = item.edge_index
    if sender.numel() == 0:
        return
    vectors = item.positions[receiver] - item.positions[sender] + item.shifts
    lengths = torch.linalg.norm(vectors, dim=-1)
    closest = int(torch.argmin(lengths))
    if float(lengths[closest]) < OVERLAP_DISTANCE:
        i, j = int(sender[closest]), int(receiver[closest])
        what = "an atom and its periodic image" if i == j else f"atoms {min(i, j)} and {max(i, j)}"
        raise StructureError(f"{what} are closer than {OVERLAP_DISTANCE} Å (overlapping); fix the geometry")


def atoms_to_batch(
    atoms_list: Sequence[Atoms],
    z_table: AtomicNumberTable,
    r_max: float,
    head: str = "Default",
    heads: Optional[Sequence[str]] = None,
    total_charges: Optional[Sequence[float]] = None,
    external_fields: Optional[Sequence[Sequence[float]]] = None,
    device: str = "cpu",
    displacement_fields: Optional[Sequence[Optional[Sequence[float]]]] = None,
) -> dict:
    """One MACE batch dict for ``atoms_list`` in the current default dtype."""
    items = []
    displacements = []
    head_names = list(heads) if heads is not None else [head]
    for index, atoms in enumerate(atoms_list):
        check_atoms(atoms, z_table)
        config = mace_data.config_from_atoms(atoms)
        config.head = head
        charge = total_charges[index] if total_charges is not None else atoms.info.get("total_charge", 0.0)
        field = external_fields[index] if external_fields is not None else atoms.info.get("external_field")
        config.properties["total_charge"] = float(charge)
        if field is not None:
            field = np.asarray(field, dtype=float).reshape(3)
            config.properties["external_field"] = field
        displacement = (displacement_fields[index] if displacement_fields is not None
                        else atoms.info.get("displacement_field"))
        if displacement is not None:
            displacement = np.asarray(displacement, dtype=float).reshape(3)
            if field is not None and np.any(field != 0.0):
                raise StructureError("give either external_field (constant E) or displacement_field (constant D), "
                                     "not both")
        displacements.append(displacement)
        item = mace_data.AtomicData.from_config(config, z_table=z_table, cutoff=r_max, heads=head_names)
        check_overlaps(item)
        items.append(item)
    loader = torch_geometric.dataloader.DataLoader(items, batch_size=len(items), shuffle=False, drop_last=False)
    batch = next(iter(loader)).to(device).to_dict()
    if any(d is not None for d in displacements):
        values = np.stack([np.zeros(3) if d is None else d for d in displacements])
        batch["displacement_field"] = torch.tensor(values, dtype=torch.get_default_dtype(), device=device)
    return batch
