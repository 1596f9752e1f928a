"""Reference data generators: GFN2-xTB (tblite) and classical point-charge systems.

Each generator returns a list of labelled :class:`ase.Atoms` (MACE keys, see
:mod:`mace_lr.data.io`) and is deterministic in its ``seed``; :func:`write_dataset`
writes them to extxyz. The command ``mace_lr_generate`` wraps them.
"""

from .clusters import CLUSTER_SYSTEMS, generate_clusters
from .dimers import dimer_scan, generate_dimers
from .field import generate_field
from .water import generate_water_clusters
from .io import BEC_KEY, MACE_TRAIN_KEYS, labelled_atoms, mace_key_specification, read_dataset, write_dataset
from .molecules import DIMER_MONOMERS, FIELD_MOLECULES, MOLECULES
from .random_charges import RepulsionCalculator, born_mayer_repulsion, generate_random_charges
from .sampling import InvalidOption
from .xtb import XTBConvergenceError, XTBResult, xtb_labelled_atoms, xtb_singlepoint

__all__ = [
    "BEC_KEY",
    "CLUSTER_SYSTEMS",
    "DIMER_MONOMERS",
    "FIELD_MOLECULES",
    "InvalidOption",
    "MACE_TRAIN_KEYS",
    "MOLECULES",
    "RepulsionCalculator",
    "XTBConvergenceError",
    "XTBResult",
    "born_mayer_repulsion",
    "generate_clusters",
    "dimer_scan",
    "generate_dimers",
    "generate_field",
    "generate_water_clusters",
    "generate_random_charges",
    "labelled_atoms",
    "mace_key_specification",
    "read_dataset",
    "write_dataset",
    "xtb_labelled_atoms",
    "xtb_singlepoint",
]
