"""GraphCoulomb (the compilable Coulomb sum the heads use) against independent references.

Madelung constants (point charges; the real-space pairs come from the module's own list),
the eager engine (smeared charges, slabs), a numpy double loop (open boundaries), and
TorchScript = eager. Tolerances: accuracy 1e-6 is requested; energies per ion agree to
~1e-6 relative, potentials to 1e-5 V (the engine's own converged result at 1e-9).
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from ase.build import bulk
from vesin import NeighborList

from helpers import numpy_coulomb, random_neutral_ions
from mace_lr.electrostatics import COULOMB_CONSTANT, Electrostatics
from mace_lr.electrostatics.graph import GraphCoulomb

CUTOFF = 5.0


def _edges(atoms, cutoff=CUTOFF):
    """Full edge list (sender, receiver) and lengths, like MACE's graph."""
    i, j, d = NeighborList(cutoff=cutoff, full_list=True).compute(
        atoms.positions, np.asarray(atoms.cell), bool(atoms.pbc.any()), "ijd"
    )
    return torch.tensor(np.stack([j, i]).astype(np.int64)), torch.tensor(d)


def _potential(module, atoms_list, charges):
    positions = torch.tensor(np.concatenate([a.positions for a in atoms_list]))
    cells = torch.tensor(np.stack([np.asarray(a.cell) for a in atoms_list]))
    pbc = torch.tensor(np.stack([a.pbc for a in atoms_list]))
    counts = [0] + [len(a) for a in atoms_list]
    ptr = torch.tensor(np.cumsum(counts))
    senders, lengths = [], []
    for offset, atoms in zip(ptr[:-1], atoms_list):
        edge_index, length = _edges(atoms)
        senders.append(edge_index + offset)
        lengths.append(length)
    return module(
        torch.as_tensor(charges), positions, cells, pbc, ptr, torch.cat(senders, dim=1), torch.cat(lengths)
    )


@pytest.mark.parametrize("method", ["ewald", "pme"])
def test_nacl_madelung_with_point_charges(method):
    atoms = bulk("NaCl", "rocksalt", a=5.64).repeat(3)
    charges = np.where(atoms.numbers == 11, 1.0, -1.0)
    module = GraphCoulomb(width=0.0, cutoff=CUTOFF, accuracy=1e-6, method=method)
    potential = _potential(module, [atoms], charges)
    energy_per_pair = float(0.5 * (torch.as_tensor(charges) * potential).sum()) / (len(atoms) / 2)
    expected = -1.747565 * COULOMB_CONSTANT / 2.82
    assert energy_per_pair == pytest.approx(expected, rel=1e-6)


@pytest.mark.parametrize("width", [0.0, 0.4, 1.0])
@pytest.mark.parametrize("method", ["ewald", "pme"])
def test_matches_eager_engine_for_smeared_charges(width, method):
    atoms = random_neutral_ions(20, np.diag([9.0, 10.0, 11.0]) + 0.8 * np.eye(3)[[1, 2, 0]], seed=3)
    charges = atoms.get_initial_charges() * 0.7
    module = GraphCoulomb(width=width, cutoff=CUTOFF, accuracy=1e-6, method=method)
    ours = _potential(module, [atoms], charges)
    reference = Electrostatics(method="ewald", smearing=width, accuracy=1e-9)(
        torch.tensor(atoms.positions), torch.tensor(charges),
        torch.tensor(np.asarray(atoms.cell))[None], torch.ones(1, 3, dtype=torch.bool),
    )["potential"]
    np.testing.assert_allclose(ours.numpy(), reference.numpy(), atol=1e-5)


def test_slab_matches_eager_engine():
    atoms = random_neutral_ions(10, np.diag([10.0, 10.0, 10.0]), seed=4)
    atoms.cell[2, 2] = 40.0
    atoms.pbc = [True, True, False]
    charges = atoms.get_initial_charges()
    module = GraphCoulomb(width=0.5, cutoff=CUTOFF, accuracy=1e-6, method="ewald")
    ours = _potential(module, [atoms], charges)
    reference = Electrostatics(method="ewald", smearing=0.5, accuracy=1e-9)(
        torch.tensor(atoms.positions), torch.tensor(charges),
        torch.tensor(np.asarray(atoms.cell))[None], torch.tensor([[True, True, False]]),
    )["potential"]
    np.testing.assert_allclose(ours.numpy(), reference.numpy(), atol=1e-5)


@pytest.mark.parametrize("width", [0.0, 0.8])
def test_open_boundaries_match_double_loop_and_ignore_the_cell(width):
    rng = np.random.default_rng(1)
    atoms = random_neutral_ions(6, np.eye(3) * 8.0, seed=5)
    atoms.pbc = False  # a cell is present but not periodic: must not be summed as periodic
    charges = rng.normal(size=len(atoms))
    module = GraphCoulomb(width=width, cutoff=CUTOFF)
    ours = _potential(module, [atoms], charges).numpy()
    _, expected, _ = numpy_coulomb(atoms.positions, charges, width)
    np.testing.assert_allclose(ours, COULOMB_CONSTANT * expected, rtol=1e-12, atol=1e-12)


def test_mixed_batch_and_torchscript():
    crystal = random_neutral_ions(8, np.eye(3) * 7.5, seed=6)
    molecule = random_neutral_ions(3, np.eye(3) * 6.0, seed=7)
    molecule.pbc = False
    charges = np.concatenate([crystal.get_initial_charges(), molecule.get_initial_charges() * 0.5])
    module = GraphCoulomb(width=0.3, cutoff=CUTOFF, accuracy=1e-6)
    together = _potential(module, [crystal, molecule], charges)
    scripted = _potential(torch.jit.script(module), [crystal, molecule], charges)
    first = _potential(module, [crystal], charges[: len(crystal)])
    second = _potential(module, [molecule], charges[len(crystal):])
    torch.testing.assert_close(together, torch.cat([first, second]), rtol=0, atol=1e-12)
    torch.testing.assert_close(scripted, together, rtol=0, atol=1e-12)


def test_unsupported_requests_fail_clearly():
    crystal = random_neutral_ions(4, np.eye(3) * 6.0, seed=8)
    charges = crystal.get_initial_charges()
    with pytest.raises(RuntimeError, match="cannot sum a periodic structure"):
        _potential(GraphCoulomb(method="direct"), [crystal], charges)
    crystal.pbc = [True, False, False]
    with pytest.raises(RuntimeError, match="1D-periodic"):
        _potential(GraphCoulomb(), [crystal], charges)
    with pytest.raises(ValueError, match="method"):
        GraphCoulomb(method="p3m")
    with pytest.raises(ValueError, match="width"):
        GraphCoulomb(width=-1.0)
