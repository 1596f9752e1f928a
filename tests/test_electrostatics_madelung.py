"""Madelung constants through CoulombCalculator: Ewald and PME to 1e-6 relative.

Reference values (DESIGN.md section 4) are given to 7 significant digits, so 1e-6
relative is the tightest meaningful tolerance.
"""

import numpy as np
import pytest
from ase.build import bulk
from scipy.spatial.transform import Rotation

from mace_lr.calculators import CoulombCalculator
from mace_lr.electrostatics import COULOMB_CONSTANT

A = 5.0  # lattice constant (Å); any value works, energies scale as 1/a


def wurtzite(a: float):
    c = a * np.sqrt(8.0 / 3.0)
    return bulk("ZnO", "wurtzite", a=a, c=c, u=0.375), 0.375 * c


# name -> (atoms, charges per primitive cell, nearest-neighbour distance, Madelung M)
CRYSTALS = {
    "NaCl": (bulk("NaCl", "rocksalt", a=A), [1, -1], A / 2, 1.747565),
    "CsCl": (bulk("CsCl", "cesiumchloride", a=A), [1, -1], A * np.sqrt(3) / 2, 1.762675),
    "zincblende": (bulk("ZnS", "zincblende", a=A), [1, -1], A * np.sqrt(3) / 4, 1.638055),
    "wurtzite": (wurtzite(A)[0], [1, -1, 1, -1], wurtzite(A)[1], 1.641322),
    "CaF2": (bulk("CaF2", "fluorite", a=A), [2, -1, -1], A * np.sqrt(3) / 4, 5.038785),
}


def madelung(atoms, charges, r0, method, formula_units):
    atoms = atoms.copy()
    atoms.set_initial_charges(charges)
    atoms.calc = CoulombCalculator(method=method, accuracy=1e-7)
    energy = atoms.get_potential_energy()
    return -energy / formula_units * r0 / COULOMB_CONSTANT


@pytest.mark.parametrize("method", ["ewald", "pme"])
@pytest.mark.parametrize("name", list(CRYSTALS))
def test_madelung_constant(name, method):
    atoms, charges, r0, reference = CRYSTALS[name]
    if name == "wurtzite":
        # check the structure is the ideal one: 4 equal nearest neighbours at r0
        from ase.neighborlist import neighbor_list

        i, d = neighbor_list("id", atoms, 1.05 * r0)
        assert np.bincount(i).tolist() == [4] * len(atoms)
        assert d == pytest.approx(np.full(len(d), r0), rel=1e-12)
    units_per_cell = 2 if name == "wurtzite" else 1
    value = madelung(atoms, charges, r0, method, units_per_cell)
    assert value == pytest.approx(reference, rel=1e-6)


@pytest.mark.parametrize("name", ["NaCl", "CaF2", "wurtzite"])
def test_madelung_invariant_under_supercell_rotation_and_scaling(name):
    atoms, charges, r0, reference = CRYSTALS[name]
    units = 2 if name == "wurtzite" else 1
    base = madelung(atoms, charges, r0, "ewald", units)

    supercell = atoms.repeat((2, 1, 3))
    value = madelung(supercell, list(charges) * 6, r0, "ewald", units * 6)
    assert value == pytest.approx(base, rel=1e-7)

    rotated = atoms.copy()
    rotation = Rotation.from_euler("zyx", [0.3, -1.1, 0.7]).as_matrix()
    rotated.set_cell(atoms.cell.array @ rotation.T, scale_atoms=True)
    assert madelung(rotated, charges, r0, "ewald", units) == pytest.approx(base, rel=1e-7)

    scaled = atoms.copy()
    scaled.set_cell(atoms.cell.array * 1.37, scale_atoms=True)
    assert madelung(scaled, charges, r0 * 1.37, "ewald", units) == pytest.approx(base, rel=1e-7)
    # energy per formula unit scales as 1/a
    e1 = madelung(atoms, charges, 1.0, "ewald", units)
    e2 = madelung(scaled, charges, 1.0, "ewald", units)
    assert e2 == pytest.approx(e1 / 1.37, rel=1e-7)


def test_slab_square_checkerboard_madelung():
    """2D NaCl monolayer (checkerboard of +-1 on a square lattice), slab correction.

    Known Madelung constant of the 2D square lattice with alternating charges:
    M = 1.6155426267 (energy per ion -M k_e / r0 / 2 ... per ion pair -M k_e / r0).
    """
    r0 = 2.8
    for vacuum in (40.0, 80.0):
        from ase import Atoms

        atoms = Atoms(
            "NaCl",
            positions=[[0, 0, 0], [r0, 0, 0]],
            cell=[[r0, r0, 0], [r0, -r0, 0], [0, 0, vacuum]],
            pbc=[True, True, False],
        )
        atoms.set_initial_charges([1, -1])
        atoms.calc = CoulombCalculator(method="ewald", accuracy=1e-8)
        value = -atoms.get_potential_energy() * r0 / COULOMB_CONSTANT
        assert value == pytest.approx(1.6155426267, rel=1e-6)


def test_polar_slab_energy_independent_of_vacuum():
    """A polar layer: the 3D sum drifts with the vacuum (spurious dipole field), the
    slab-corrected sum does not (to the accuracy requested)."""
    from ase import Atoms

    energies = {True: [], False: []}
    for vacuum in (25.0, 50.0, 100.0):
        for slab in (True, False):
            atoms = Atoms("NaCl", positions=[[0, 0, 0], [0, 0, 2.0]], cell=[[4.0, 0, 0], [0, 4.0, 0], [0, 0, vacuum]], pbc=[True, True, not slab])
            atoms.set_initial_charges([1, -1])
            atoms.calc = CoulombCalculator(method="ewald", accuracy=1e-9)
            energies[slab].append(atoms.get_potential_energy())
    assert np.ptp(energies[True]) < 1e-6 * abs(energies[True][0])
    assert np.ptp(energies[False]) > 0.1  # control: without the correction it drifts
