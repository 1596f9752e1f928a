"""Nonlocal descriptors (lode) and reciprocal-space message passing (ewald_mp).

float64. The smeared potentials are checked against the electrostatics engine (same
kernel: a LODE cloud of std s is an engine charge of width s / sqrt 2) to the engine's
requested accuracy. Finite differences: central, 1e-4 Å and 1e-5 strain, compared at
1e-6 (truncation error ~eps^2 * third derivative, below 1e-7 here).
"""

from __future__ import annotations

import math

import mace  # noqa: F401
import numpy as np
import pytest
import torch
from ase.build import molecule
from e3nn.util import jit
from scipy.spatial.transform import Rotation

from helpers import random_neutral_ions
from mace_lr.electrostatics import COULOMB_CONSTANT, Electrostatics
from mace_lr.electrostatics.smeared import SmearedPotential, neutralise
from mace_lr.heads import LongRangeConfig
from mace_lr.models import build_macelr
from model_helpers import batch_dict, nacl_crystal, tiny_backbone, water_cluster

VARIANTS = [("lode",), ("ewald_mp",), ("qeq", "lode"), ("latent", "ewald_mp")]


def nonlocal_model(heads, seed: int = 0, **config):
    """Tiny float64 MACELR whose zero-initialised nonlocal parts are given random weights."""
    torch.manual_seed(seed)
    options = {"ewald_mp_layers": (0, 1), "ewald_mp_channels": 4, "ewald_mp_smearings": (1.0, 2.5), **config}
    model = build_macelr(tiny_backbone(seed=seed), LongRangeConfig(heads=tuple(heads), **options))
    generator = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            if "mlp.2" in name and "long_range_heads" in name and "readout" not in name:  # lode's last layer
                parameter.copy_(0.5 * torch.randn(parameter.shape, generator=generator))
            if "to_features" in name:
                parameter.copy_(0.5 * torch.randn(parameter.shape, generator=generator))
    return model


# ------------------------------------------------------------------ the descriptors


@pytest.mark.parametrize("periodic", [True, False])
def test_smeared_potential_and_field_match_the_engine(periodic):
    atoms = random_neutral_ions(16, np.array([[9.0, 0, 0], [1.0, 8.5, 0], [0.5, 0.3, 9.5]]), seed=4)
    positions, cell = torch.tensor(atoms.positions), torch.tensor(atoms.cell.array)
    sources = neutralise(torch.tensor(np.random.default_rng(0).normal(size=(len(atoms), 2))),
                         torch.zeros(len(atoms), dtype=torch.long), torch.tensor([0, len(atoms)]))
    assert torch.allclose(sources.sum(0), torch.zeros(2), atol=1e-12)
    smearing = 1.2
    pbc = torch.tensor([[periodic] * 3])
    # both sums at accuracy <= 1e-9 (relative to c / a, a = 3.6 Å here): their difference is below 1e-9
    potential, field = SmearedPotential(smearing, accuracy=1e-10)(sources, positions, cell[None], pbc,
                                                                  torch.tensor([0, len(atoms)]))
    engine = Electrostatics(method="ewald", smearing=smearing / math.sqrt(2), accuracy=1e-9)
    for c in range(2):
        out = engine(positions, sources[:, c], (cell if periodic else 0 * cell)[None], pbc, compute_field=True)
        torch.testing.assert_close(potential[:, c], out["potential"] / COULOMB_CONSTANT, rtol=0, atol=1e-9)
        torch.testing.assert_close(field[:, c], out["field"] / COULOMB_CONSTANT, rtol=0, atol=1e-9)


@pytest.mark.parametrize("method", ["ewald", "pme"])
@pytest.mark.parametrize("geometry", ["3d", "slab"])
def test_analytic_field_is_minus_the_gradient_of_the_potential(method, geometry):
    """E_ic = -dV_ic/dr_i (the atom's own cloud and images do not change when it moves), taken
    by autograd through the potential-only path, for Ewald and PME, 3D cells and slabs,
    charged channels included (the background shifts V, not E).

    The analytic field differentiates the truncated sum term by term (pairs, Ewald k-vectors,
    slab term), so on the Ewald path it equals the gradient to rounding (1e-10 here). On PME
    the field is differentiated in k-space while the gradient goes through the mesh
    interpolation: they differ by the mesh error, bounded by the requested accuracy (1e-6)
    times the field scale c / a^2 ~ 0.1, so tolerance 1e-6.
    """
    atoms = random_neutral_ions(20, np.array([[9.0, 0, 0], [1.0, 8.5, 0], [0.5, 0.3, 9.5]]), seed=7)
    positions, cell = torch.tensor(atoms.positions), torch.tensor(atoms.cell.array)
    pbc = torch.ones(3, dtype=torch.bool)
    if geometry == "slab":
        cell = torch.diag(torch.tensor([9.0, 8.5, 30.0], dtype=torch.float64))
        positions = positions @ torch.linalg.inv(torch.tensor(atoms.cell.array)) @ torch.diag(
            torch.tensor([9.0, 8.5, 9.5], dtype=torch.float64)) + torch.tensor([0.0, 0.0, 10.0], dtype=torch.float64)
        pbc = torch.tensor([True, True, False])
    sources = torch.tensor(np.random.default_rng(3).normal(size=(len(atoms), 3)))  # not neutral
    ptr = torch.tensor([0, len(atoms)])
    smeared = SmearedPotential(1.1, accuracy=1e-6, method=method)
    _, field = smeared(sources, positions, cell[None], pbc[None], ptr)
    # the potential-only path with the plan the field call used (a call without the field may
    # plan differently: the field changes the cost model)
    periodic = smeared.periodic
    widths = torch.full((len(atoms),), 1.1 / math.sqrt(2.0), dtype=torch.float64)
    box = periodic.compact(positions, cell, pbc)
    plan = periodic.plan(positions, box, 1.1 / math.sqrt(2.0), True, 3, True)

    def potential(moved):
        return periodic.potential_and_field_with_plan(sources, moved, box, pbc, widths, False, plan)[0]

    jacobian = torch.autograd.functional.jacobian(potential, positions)  # [N, C, N, 3]
    n = len(atoms)
    gradient = jacobian[torch.arange(n), :, torch.arange(n), :]  # dV_ic / dr_i, [N, C, 3]
    tolerance = 1e-10 if method == "ewald" else 1e-6
    torch.testing.assert_close(field, -gradient, rtol=0, atol=tolerance)
    assert float(field.abs().max()) > 0.1


def test_descriptors_see_a_group_moved_far_beyond_the_receptive_field():
    """An atom's lode descriptor (and ewald_mp features) change when an ion pair 25-30 Å away moves;
    the backbone's own features (receptive field 2 x 4 Å) do not."""
    near = water_cluster(seed=2)
    far = molecule("H2O") + random_neutral_ions(1, np.eye(3) * 3.0, seed=1)
    far.translate([25.0, 0.0, 0.0])
    moved = far.copy()
    moved.positions[-2:] += [[2.0, 0.0, 0.0], [-0.5, 1.0, 0.0]]
    outputs = {}
    for heads in (("lode",), ("ewald_mp",)):
        model = nonlocal_model(heads)
        for label, group in (("before", far), ("after", moved)):
            batch = batch_dict([near + group], model)
            out = model(batch)
            inputs = model._head_inputs(batch, out["node_feats"], batch["positions"], batch["cell"].view(-1, 3, 3),
                                        batch["shifts"])
            backbone_feats = model.backbone(batch_dict([near + group], model))["node_feats"]
            outputs[heads, label] = (out["node_feats"][: len(near)], backbone_feats[: len(near)],
                                     model.long_range_heads[0].descriptors(inputs)[: len(near)] if heads == ("lode",) else None)
    lode_before, lode_after = outputs[("lode",), "before"][2], outputs[("lode",), "after"][2]
    assert float((lode_after - lode_before).abs().max()) > 1e-4
    mp_before, mp_after = outputs[("ewald_mp",), "before"][0], outputs[("ewald_mp",), "after"][0]
    assert float((mp_after - mp_before).abs().max()) > 1e-6
    for heads in (("lode",), ("ewald_mp",)):  # the plain backbone cannot see it
        torch.testing.assert_close(outputs[heads, "after"][1], outputs[heads, "before"][1], rtol=0, atol=1e-12)


# ------------------------------------------------------------------ models


@pytest.mark.parametrize("heads", VARIANTS, ids=lambda h: "+".join(h))
def test_invariance_and_equivariance(heads):
    model = nonlocal_model(heads)
    for atoms in (water_cluster(charge=1.0), nacl_crystal()):
        rotation = Rotation.random(random_state=5).as_matrix()
        moved = atoms.copy()
        moved.positions = atoms.positions @ rotation.T + [0.7, -1.1, 2.3]
        if atoms.pbc.all():
            moved.cell = atoms.cell.array @ rotation.T
        first = model(batch_dict([atoms], model))
        second = model(batch_dict([moved], model))
        torch.testing.assert_close(second["energy"], first["energy"], rtol=0, atol=1e-9)
        torch.testing.assert_close(second["forces"], first["forces"] @ torch.tensor(rotation).T, rtol=0, atol=1e-9)


@pytest.mark.parametrize("heads", VARIANTS, ids=lambda h: "+".join(h))
def test_forces_and_stress_equal_finite_differences(heads):
    model = nonlocal_model(heads)
    for atoms in (nacl_crystal(), water_cluster(charge=-1.0)):
        periodic = bool(atoms.pbc.all())
        out = model(batch_dict([atoms], model), compute_stress=periodic)

        def energy(structure) -> float:
            return float(model(batch_dict([structure], model), compute_force=False)["energy"][0])

        step = 1e-4
        for i in (3,):
            for a in range(3):
                plus, minus = atoms.copy(), atoms.copy()
                plus.positions[i, a] += step
                minus.positions[i, a] -= step
                numerical = -(energy(plus) - energy(minus)) / (2 * step)
                assert float(out["forces"][i, a]) == pytest.approx(numerical, abs=1e-6), (heads, i, a)
        if periodic:
            volume = atoms.get_volume()
            for a, b in ((0, 0), (1, 2)):
                strained = []
                for sign in (1, -1):
                    strain = np.eye(3)
                    strain[a, b] += sign * 0.5e-5
                    strain[b, a] += sign * 0.5e-5
                    copy = atoms.copy()
                    copy.set_cell(atoms.cell.array @ strain, scale_atoms=True)
                    strained.append(energy(copy))
                numerical = (strained[0] - strained[1]) / (2e-5 * volume)
                assert float(out["stress"][0, a, b]) == pytest.approx(numerical, abs=1e-6), (heads, a, b)


@pytest.mark.parametrize("heads", VARIANTS, ids=lambda h: "+".join(h))
def test_torchscript_equals_eager_and_mixed_batch_equals_one_by_one(heads):
    model = nonlocal_model(heads)
    structures = [nacl_crystal(), water_cluster(charge=1.0)]
    together = model(batch_dict(structures, model), compute_stress=True)
    scripted = jit.compile(model)(batch_dict(structures, model), compute_stress=True)
    for key in ("energy", "forces", "stress", "node_energy"):
        torch.testing.assert_close(scripted[key], together[key], rtol=0, atol=1e-10, msg=key)
    start = 0
    for atoms in structures:
        alone = model(batch_dict([atoms], model), compute_stress=bool(atoms.pbc.all()))
        stop = start + len(atoms)
        torch.testing.assert_close(together["forces"][start:stop], alone["forces"], rtol=0, atol=1e-10)
        start = stop
        assert float(alone["node_energy"].sum()) == pytest.approx(float(alone["energy"][0]), abs=1e-9)


def _message_block_and_box(accuracy: float, method: str = "auto"):
    """ewald_mp block (3 channels, widths 0.8 / 1.7 / 3 Å, random filter) and 48 ions in a triclinic cell."""
    from mace_lr.heads.ewald_mp import EwaldMessageBlock

    torch.manual_seed(0)
    block = EwaldMessageBlock(0, torch.arange(4), 3, (0.8, 1.7, 3.0), accuracy=accuracy, method=method).double()
    with torch.no_grad():
        block.filter.copy_(torch.randn(block.filter.shape, generator=torch.Generator().manual_seed(1),
                                       dtype=torch.float64))
    atoms = random_neutral_ions(24, np.array([[9.0, 0, 0], [1.0, 8.5, 0], [0.5, 0.3, 9.5]]), seed=2)
    positions, cell = torch.tensor(atoms.positions), torch.tensor(atoms.cell.array)
    sources = torch.tensor(np.random.default_rng(5).normal(size=(len(atoms), 3)))  # channels not neutral
    return block, positions, cell, sources


def test_ewald_mp_single_pass_equals_one_potential_per_width():
    """3D cells: all widths filtered in one k-space pass = the sum of one periodic sum per width.

    The single pass is planned for the finest width (more k-vectors than the wider ones need),
    the per-width sums split each width by cost; the two agree to the accuracy (1e-8 here;
    tolerance 1e-7 on messages of scale 1).
    """
    block, positions, cell, sources = _message_block_and_box(1e-8)
    pbc = torch.ones(3, dtype=torch.bool)
    assert block._single_pass(cell, pbc) and block.plan(positions, cell, 3).method == "ewald"
    assert not block._single_pass(cell, torch.zeros(3, dtype=torch.bool))
    single = block._single_pass_message(sources, positions, cell, pbc)
    per_width = block._message_per_width(sources, positions, cell[None], pbc[None])
    torch.testing.assert_close(single, per_width, rtol=0, atol=1e-7)
    assert float(single.abs().max()) > 0.1
    # slab: the same single pass plus the width-independent slab correction
    slab_cell = torch.diag(torch.tensor([9.0, 8.5, 28.0], dtype=torch.float64))
    slab_positions = positions @ torch.linalg.inv(cell) @ torch.diag(torch.tensor([9.0, 8.5, 9.5],
                                                                                  dtype=torch.float64))
    slab_positions[:, 2] += 9.0
    slab = torch.tensor([True, True, False])
    assert block._single_pass(slab_cell, slab)
    single = block._single_pass_message(sources, slab_positions, slab_cell, slab)
    per_width = block._message_per_width(sources, slab_positions, slab_cell[None], slab[None])
    torch.testing.assert_close(single, per_width, rtol=0, atol=1e-7)


def test_ewald_mp_mesh_pass_equals_the_ewald_pass_with_gradients():
    """The single pass on one C-channel PME mesh (FFT-friendly sizes) against the Ewald pass at
    1e-8: the message and its gradients in positions and cell (forces and stress flow through
    both). Accuracy 1e-5 (RMS, relative to the pseudo-charge scale, ~1 here); the plan splits
    at sigma = 3.1 Å with a 15 Å real-space remainder for the two narrower widths. Measured:
    message max 7.5e-6 (scale 5); positions RMS 2.4e-6, max 1.3e-5 (scale 0.8); cell RMS
    2.2e-5, max 5e-5 (scale 1.2: every atom's error adds to the cell derivative).
    Tolerances: message max 1e-5, positions RMS 1e-5 and max 3e-5, cell max 1e-4.
    """
    from mace_lr.electrostatics.channel_mesh import fft_friendly_size

    block, positions, cell, sources = _message_block_and_box(1e-5, method="pme")
    reference, *_ = _message_block_and_box(1e-8)
    plan = block.plan(positions, cell, 3)
    assert plan.method == "pme" and all(fft_friendly_size(n) == n for n in plan.mesh)

    def message_and_gradients(function):
        p = positions.clone().requires_grad_(True)
        c = cell.clone().requires_grad_(True)
        message = function(sources, p, c)
        weights = torch.tensor(np.random.default_rng(8).normal(size=message.shape))
        dp, dc = torch.autograd.grad((message * weights).sum(), [p, c])
        return message, dp, dc

    pbc = torch.ones(3, dtype=torch.bool)
    mesh = message_and_gradients(lambda *a: block._single_pass_message(*a, pbc))
    ewald = message_and_gradients(lambda *a: reference._single_pass_message(*a, pbc))
    assert plan.cutoff > 0.0  # the split path, with a real-space remainder
    for name, a, b, tolerance in zip(("message", "d/dpositions", "d/dcell"), mesh, ewald, (1e-5, 3e-5, 1e-4)):
        torch.testing.assert_close(a, b, rtol=0, atol=tolerance, msg=name)
        assert float(b.abs().max()) > 0.1, name
    assert float(((mesh[1] - ewald[1]) ** 2).mean().sqrt()) < 1e-5


@pytest.mark.parametrize("heads", [("ewald_mp",), ("lode",)], ids=lambda h: h[0])
def test_mesh_paths_keep_forces_stress_and_torchscript(heads):
    """method="pme" sends ewald_mp and lode through their one-mesh paths: finite differences (as
    above), TorchScript, and forces as on the Ewald path: both at accuracy 1e-4 (for speed), measured
    2.5e-6 on a long-range force part of ~0.01 eV/Å (two sums each within 1e-4 of the truth, relative
    to the Coulomb scale of the pseudo-charges); tolerance 1e-5, 0.3% of that part."""
    model = nonlocal_model(heads, method="pme", accuracy=1e-4)
    atoms = nacl_crystal()
    positions, cell = torch.tensor(atoms.positions), torch.tensor(atoms.cell.array)
    if heads == ("ewald_mp",):
        assert model.message_passing[0].blocks[0].plan(positions, cell, 1).method == "pme"
    else:
        assert model.long_range_heads[0].potential.periodic.plan(positions, cell, 1.0, True).method == "pme"
    out = model(batch_dict([atoms], model), compute_stress=True)

    def energy(structure) -> float:
        return float(model(batch_dict([structure], model), compute_force=False)["energy"][0])

    step = 1e-4
    for a in range(3):
        plus, minus = atoms.copy(), atoms.copy()
        plus.positions[5, a] += step
        minus.positions[5, a] -= step
        assert float(out["forces"][5, a]) == pytest.approx(-(energy(plus) - energy(minus)) / (2 * step), abs=1e-6)
    strained = []
    for sign in (1, -1):
        copy = atoms.copy()
        copy.set_cell(atoms.cell.array @ (np.eye(3) + sign * 0.5e-5 * np.array([[0, 0, 0], [0, 0, 1], [0, 1, 0]])),
                      scale_atoms=True)
        strained.append(energy(copy))
    numerical = (strained[0] - strained[1]) / (2e-5 * atoms.get_volume())
    assert float(out["stress"][0, 1, 2]) == pytest.approx(numerical, abs=1e-6)
    scripted = jit.compile(model)(batch_dict([atoms], model), compute_stress=True)
    for key in ("energy", "forces", "stress"):
        torch.testing.assert_close(scripted[key], out[key], rtol=0, atol=1e-10, msg=key)
    auto = nonlocal_model(heads, accuracy=1e-4)(batch_dict([atoms], model), compute_stress=True)  # Ewald
    torch.testing.assert_close(out["forces"], auto["forces"], rtol=0, atol=1e-5)
    local = nonlocal_model(heads, accuracy=1e-4)
    with torch.no_grad():  # the same model without its nonlocal contribution
        for name, parameter in local.named_parameters():
            if "to_features" in name or ("mlp.2" in name and "long_range_heads" in name and "readout" not in name):
                parameter.zero_()
    long_range_part = auto["forces"] - local(batch_dict([atoms], local))["forces"]
    assert float(long_range_part.abs().max()) > 3e-3


def test_bad_ewald_mp_layers_are_refused():
    with pytest.raises(ValueError, match="do not exist"):
        build_macelr(tiny_backbone(), LongRangeConfig(heads=("ewald_mp",), ewald_mp_layers=(5,)))


def test_lode_field_path_uses_the_last_layer_with_vectors():
    """Standard MACE ends in scalars; the field's equivariant path takes the earlier layer's 1o features."""
    from mace_lr.heads.lode import vector_feature_indices

    standard = vector_feature_indices(["16x0e+16x1o", "16x0e"])
    assert standard.tolist() == list(range(16, 16 + 48))
    both = vector_feature_indices(["4x0e+2x1o", "3x0e+1x1o+1x2e"])
    assert both.tolist() == [10 + 3, 10 + 4, 10 + 5]  # layer 1 starts at 4 + 6 = 10; its 1o after 3 scalars
    assert vector_feature_indices(["8x0e", "8x0e"]).numel() == 0


def test_channels_absent_from_a_structure_are_skipped_and_exactly_zero():
    """Element densities of elements a structure lacks are zero after neutralising: the periodic
    sum skips them (V = E = 0 exactly there) and the other channels equal a sum over just them
    (same plan, since the planner sees the same active channel count)."""
    atoms = random_neutral_ions(10, np.array([[9.0, 0, 0], [1.0, 8.5, 0], [0.5, 0.3, 9.5]]), seed=3)
    positions, cell = torch.tensor(atoms.positions, requires_grad=True), torch.tensor(atoms.cell.array)
    active = torch.tensor(np.random.default_rng(1).normal(size=(len(atoms), 2)))
    active = active - active.mean(0)
    sources = torch.stack([active[:, 0], torch.zeros(len(atoms), dtype=torch.float64), active[:, 1]], dim=1)
    args = (cell[None], torch.ones(1, 3, dtype=torch.bool), torch.tensor([0, len(atoms)]))
    smeared = SmearedPotential(1.0, accuracy=1e-6)
    potential, field = smeared(sources, positions, *args)
    reference_potential, reference_field = smeared(active, positions, *args)
    assert float(potential[:, 1].abs().max()) == 0.0 and float(field[:, 1].abs().max()) == 0.0
    torch.testing.assert_close(potential[:, [0, 2]], reference_potential, rtol=0, atol=1e-14)
    torch.testing.assert_close(field[:, [0, 2]], reference_field, rtol=0, atol=1e-14)
    (gradient,) = torch.autograd.grad((field**2).sum() + potential.sum(), positions)
    assert torch.isfinite(gradient).all() and float(gradient.abs().max()) > 0.0
