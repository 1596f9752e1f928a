"""The k-space layer (mace_lr.electrostatics.kspace, split_coulomb) against independent truth.

* Achieved accuracy: RMS force error of PeriodicCoulomb against the engine's torch-pme Ewald
  at 1e-10 (an independent code path), for Ewald and PME, point charges and Gaussian widths
  0.5 / 1.0 Å, water-like (0.1 /Å^3), molten-salt (0.044 /Å^3) density and a slab with 50%
  vacuum. The error model is meant to land within ~3x below the request: we require
  requested / achieved in [0.9, 3.5] (measured 1.00-3.03, benchmarks/kspace_calibration.py;
  0.9 leaves room for the random sample, 216 charges).
* Madelung constant of CsCl through both methods (NaCl: tests/test_graph_coulomb.py).
* The splitting no longer depends on the backbone's r_max; memory budget refusals are clear;
  meshes are 2^a 3^b 5^c; clusters in big boxes are planned on their own density.
* Second derivatives (training through forces): gradgradcheck on the Ewald and PME paths.
* Saved models from before the layer (GraphCoulomb pickled with torch-pme calculators) load.
"""

from __future__ import annotations

import math
import pickle

import pytest
import torch

from mace_lr.electrostatics import COULOMB_CONSTANT, Electrostatics
from mace_lr.electrostatics.channel_mesh import fft_friendly_size
from mace_lr.electrostatics.graph import GraphCoulomb
from mace_lr.electrostatics.kspace import KSpacePlanner, occupied_density
from mace_lr.electrostatics.split_coulomb import PeriodicCoulomb

from helpers import jittered_ions


def _forces(potential_fn, positions, charges):
    pos = positions.clone().requires_grad_(True)
    energy = 0.5 * (charges * potential_fn(pos)).sum()
    return -torch.autograd.grad(energy, pos)[0]


@pytest.mark.parametrize("cell_kind", ["water", "molten_salt", "slab"])
def test_achieved_accuracy_is_close_to_the_request(cell_kind):
    density, vacuum = {"water": (0.1, 0.0), "molten_salt": (0.044, 0.0), "slab": (0.1, 1.0)}[cell_kind]
    positions, charges, cell = jittered_ions(6, density, seed=2, vacuum=vacuum)
    pbc = torch.tensor([True, True, vacuum == 0.0])
    scale = float((charges**2).mean()) * occupied_density(positions, cell) ** (2.0 / 3.0)
    for width in (0.0, 0.5, 1.0):
        engine = Electrostatics(method="ewald", smearing=width, accuracy=1e-10)
        reference = _forces(lambda p: engine(p, charges, cell[None], pbc[None])["potential"] / COULOMB_CONSTANT,
                            positions, charges)
        widths = torch.full_like(charges, width)
        for method in ("ewald", "pme"):
            for accuracy in (1e-3, 1e-5):
                module = PeriodicCoulomb(accuracy, method)
                forces = _forces(lambda p: module(charges, p, cell, pbc, widths), positions, charges)
                error = float(((forces - reference) ** 2).sum(-1).mean().sqrt()) / scale
                ratio = accuracy / error
                assert 0.9 <= ratio <= 3.5, (cell_kind, width, method, accuracy, error)


@pytest.mark.parametrize("method", ["ewald", "pme"])
def test_cscl_madelung(method):
    a = 4.0
    positions = torch.tensor([[0.0, 0.0, 0.0], [0.5, 0.5, 0.5]], dtype=torch.float64) * a
    shifts = torch.stack(torch.meshgrid(*[torch.arange(3)] * 3, indexing="ij"), -1).reshape(-1, 1, 3).double() * a
    positions = (positions.unsqueeze(0) + shifts).reshape(-1, 3)
    charges = torch.tensor([1.0, -1.0], dtype=torch.float64).repeat(27)
    cell = torch.eye(3, dtype=torch.float64) * 3 * a
    module = PeriodicCoulomb(1e-7, method)
    phi = module(charges, positions, cell, torch.ones(3, dtype=torch.bool), torch.zeros_like(charges))
    per_pair = float(0.5 * (charges * phi).sum()) / 27
    nearest = a * math.sqrt(3.0) / 2.0
    assert per_pair == pytest.approx(-1.762675 / nearest, rel=1e-6)


def test_splitting_is_independent_of_the_backbone_cutoff():
    positions, charges, cell = jittered_ions(5, 0.044, seed=3)
    args = (charges * 0.4, positions, cell[None], torch.ones(1, 3, dtype=torch.bool), torch.tensor([0, len(charges)]),
            torch.zeros(2, 0, dtype=torch.long), torch.zeros(0, dtype=torch.float64))
    short = GraphCoulomb(width=0.5, cutoff=3.0, accuracy=1e-5)(*args)
    long = GraphCoulomb(width=0.5, cutoff=6.0, accuracy=1e-5)(*args)
    torch.testing.assert_close(short, long, rtol=0, atol=0)


def test_memory_budget_refuses_with_a_clear_message():
    positions, charges, cell = jittered_ions(4, 0.1, seed=4)
    module = PeriodicCoulomb(1e-5, "auto", memory_budget=1e3)
    with pytest.raises(RuntimeError, match="memory budget.*MACE_LR_MEMORY_BUDGET_GB"):
        module(charges, positions, cell, torch.ones(3, dtype=torch.bool), torch.zeros_like(charges))


def test_meshes_are_fft_friendly_and_clusters_use_their_own_density():
    planner = KSpacePlanner(1e-5, "pme")
    cell = torch.diag(torch.tensor([31.0, 29.0, 47.0], dtype=torch.float64))
    plan = planner(cell, 3000, 1.0, 1e6)
    assert all(fft_friendly_size(n) == n for n in plan.mesh)
    # a 64-atom cluster in the middle of a 40 Å box: the local density, not N / V, sets the errors
    positions, _, small = jittered_ions(4, 0.1, seed=5)
    positions = positions + 20.0 - 0.5 * small[0, 0]
    box = torch.eye(3, dtype=torch.float64) * 40.0
    assert occupied_density(positions, box) > 10 * 64 / 40.0**3
    filled = occupied_density(*jittered_ions(4, 0.1, seed=5)[::2])
    assert filled == pytest.approx(0.1, rel=1e-6)


@pytest.mark.parametrize("method", ["ewald", "pme"])
def test_second_derivatives_for_training(method):
    positions, charges, cell = jittered_ions(2, 0.1, seed=6)
    module = PeriodicCoulomb(1e-4, method)
    pbc = torch.ones(3, dtype=torch.bool)
    widths = torch.full_like(charges, 0.3)

    def energy(pos, q):
        return 0.5 * (q * module(q, pos, cell, pbc, widths)).sum()

    inputs = (positions.clone().requires_grad_(True), (0.5 * charges).requires_grad_(True))
    assert torch.autograd.gradgradcheck(energy, inputs, eps=1e-6, atol=1e-5, rtol=1e-4)


def test_old_pickled_graph_coulomb_loads_and_matches():
    positions, charges, cell = jittered_ions(3, 0.1, seed=7)
    new = GraphCoulomb(width=0.5, cutoff=5.0, accuracy=1e-6, method="ewald")
    old = GraphCoulomb(width=0.5, cutoff=5.0, accuracy=1e-6, method="ewald")
    # the state a model saved before the k-space layer carries
    import torchpme

    del old._modules["periodic"]
    old._modules["ewald"] = torchpme.EwaldCalculator(torchpme.CoulombPotential(smearing=1.0), lr_wavelength=0.5)
    old.__dict__.update(smearing=1.0, lr_wavelength=0.5, mesh_spacing=0.3, needs_real_space=True,
                        pme_threshold=3000, ewald_max_work=5e7)
    loaded = pickle.loads(pickle.dumps(old))
    args = (charges, positions, cell[None], torch.ones(1, 3, dtype=torch.bool), torch.tensor([0, len(charges)]),
            torch.zeros(2, 0, dtype=torch.long), torch.zeros(0, dtype=torch.float64))
    torch.testing.assert_close(loaded(*args), new(*args), rtol=0, atol=0)
    assert not hasattr(loaded, "pme_threshold")


def test_old_pickled_smeared_potential_and_message_block_load_and_match():
    """LODE / Wannier-centroid potentials and ewald_mp blocks saved before the layer (torch-pme
    calculators, own mesh, an Ewald wavelength encoding the accuracy) load onto the layer with
    the accuracy recovered from that wavelength."""
    import mace  # noqa: F401  (before e3nn, which ewald_mp imports)
    import torchpme

    from mace_lr.electrostatics.smeared import SmearedPotential
    from mace_lr.heads.ewald_mp import EwaldMessageBlock

    positions, charges, cell = jittered_ions(3, 0.1, seed=3)
    sources = torch.stack([charges, charges.roll(1)], dim=1)
    args = (sources, positions, cell[None], torch.ones(1, 3, dtype=torch.bool), torch.tensor([0, len(charges)]))
    new = SmearedPotential(1.2, accuracy=1e-6)
    old = SmearedPotential(1.2, accuracy=1e-6)
    del old._modules["periodic"]
    x = math.sqrt(2.0 * math.log(1.0 / (0.1 * 1e-6)))  # the old rule: exp(-x^2 / 2) = 0.1 accuracy
    old._modules["ewald"] = torchpme.EwaldCalculator(torchpme.CoulombPotential(smearing=1.2), lr_wavelength=1.0)
    old.__dict__.update(lr_wavelength=math.pi * 1.2 / x, pme_threshold=3000, ewald_max_work=5e7, self_value=0.6)
    del old.__dict__["accuracy"]
    loaded = pickle.loads(pickle.dumps(old))
    assert loaded.accuracy == pytest.approx(1e-6) and not hasattr(loaded, "lr_wavelength")
    for a, b in zip(loaded(*args), new(*args)):
        torch.testing.assert_close(a, b, rtol=0, atol=0)

    block = EwaldMessageBlock(0, torch.arange(2), 2, (0.8, 1.6), accuracy=1e-6).double()
    pbc = torch.ones(3, dtype=torch.bool)
    reference = block._single_pass_message(sources, positions, cell, pbc)
    del block._modules["reciprocal"]
    del block._modules["planner"]
    del block._modules["slab"]
    block.__dict__.update(finest_wavelength=0.3)
    restored = pickle.loads(pickle.dumps(block))
    torch.testing.assert_close(restored._single_pass_message(sources, positions, cell, pbc), reference, rtol=0, atol=0)


@pytest.mark.parametrize("method", ["ewald", "pme"])
def test_slab_in_an_inflated_cell_runs_in_a_compact_one_and_keeps_its_accuracy(method):
    """MACE's data pipeline stores a slab's non-periodic vector inflated to 5 r_max x the largest
    coordinate (~900 Å here); the sums run in a cell with only the vacuum the slab correction
    needs for the accuracy (kspace.slab_cell), and the forces still meet the request against a
    converged sum with an even larger gap (accuracy 1e-10: gap 4 lateral periods)."""
    from mace_lr.electrostatics.kspace import slab_cell

    positions, charges, cell = jittered_ions(6, 0.1, seed=4, vacuum=1.0)
    pbc = torch.tensor([True, True, False])
    inflated = cell.clone()
    inflated[2, 2] = 900.0
    compact = slab_cell(positions, inflated, pbc, 1e-5)
    assert float(compact[2, 2]) < 4.0 * float(cell[0, 0])  # extent + 2.2 lateral periods, not 900 Å
    torch.testing.assert_close(slab_cell(positions, cell, pbc, 1e-5), cell)  # enough vacuum already: unchanged
    wide = cell.clone()
    wide[2, 2] = 6.0 * float(cell[0, 0])
    engine = Electrostatics(method="ewald", accuracy=1e-10)
    reference = _forces(lambda p: engine(p, charges, wide[None], pbc[None])["potential"] / COULOMB_CONSTANT,
                        positions, charges)
    module = PeriodicCoulomb(1e-5, method)
    forces = _forces(lambda p: module(charges, p, inflated, pbc, torch.zeros_like(charges)), positions, charges)
    scale = float((charges**2).mean()) * occupied_density(positions, cell) ** (2.0 / 3.0)
    error = float(((forces - reference) ** 2).sum(-1).mean().sqrt()) / scale
    assert error <= 1e-5, error
