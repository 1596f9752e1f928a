"""mace-lr's electrostatics engine: imports torch, torch-pme and vesin only, never MACE.

Main entry point: :class:`Electrostatics` (batched energies, potentials, fields of
Gaussian-smeared charges and point dipoles; direct sum, Ewald, PME, slab).
"""

from .coulomb import METHODS, Electrostatics
from .neighbors import PairList, half_neighbor_list
from .parameters import KSpaceParameters, choose_parameters
from .units import COULOMB_CONSTANT
from .validation import ElectrostaticsInputError

__all__ = [
    "COULOMB_CONSTANT",
    "Electrostatics",
    "ElectrostaticsInputError",
    "KSpaceParameters",
    "METHODS",
    "PairList",
    "choose_parameters",
    "half_neighbor_list",
]
