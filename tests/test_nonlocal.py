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
    potential, field = SmearedPotential(smearing, accuracy=1e-8)(sources, positions, cell[None], pbc,
                                                                 torch.tensor([0, len(atoms)]))
    engine = Electrostatics(method="ewald", smearing=smearing / math.sqrt(2), accuracy=1e-9)
    for c in range(2):
        out = engine(positions, sources[:, c], (cell if periodic else 0 * cell)[None], pbc, compute_field=True)
        torch.testing.assert_close(potential[:, c], out["potential"] / COULOMB_CONSTANT, rtol=0, atol=1e-9)
        torch.testing.assert_close(field[:, c], out["field"] / COULOMB_CONSTANT, rtol=0, atol=1e-9)


@pytest.mark.parametrize("path", ["ewald ghosts", "pme ghosts", "mesh"])
def test_analytic_ewald_field_equals_the_other_paths(path):
    """3D cells on the Ewald path take the analytic k-space field; it must equal -grad V at ghost
    probes (the slab path) and the k-space-differentiated field on one PME mesh (3D PME path, which
    also serves potential-only calls such as the Wannier centroids').

    Charged channels included (torch-pme's background shifts V, not E). Ewald vs Ewald ghosts:
    same k-vectors, so equal to rounding (1e-12). PME ghosts at accuracy 1e-4 (finer meshes
    take minutes in float64): measured 3e-6, tolerance 1e-5. Mesh at 1e-5: measured 3e-8 (V)
    and 2e-8 (E) on field values up to 0.7; tolerance 1e-6.
    """
    atoms = random_neutral_ions(20, np.array([[9.0, 0, 0], [1.0, 8.5, 0], [0.5, 0.3, 9.5]]), seed=7)
    positions, cell = torch.tensor(atoms.positions), torch.tensor(atoms.cell.array)
    sources = torch.tensor(np.random.default_rng(3).normal(size=(len(atoms), 3)))  # not neutral
    pbc = torch.ones(3, dtype=torch.bool)
    potential, field = SmearedPotential(1.1, accuracy=1e-8)._ewald_with_field(sources, positions, cell)
    if path == "mesh":
        other = SmearedPotential(1.1, accuracy=1e-5, method="pme")
        assert other.uses_pme(len(atoms), cell)
        other_potential, other_field = other(sources, positions, cell[None], pbc[None],
                                             torch.tensor([0, len(atoms)]))
        potential_only, _ = other(sources, positions, cell[None], pbc[None], torch.tensor([0, len(atoms)]), False)
        torch.testing.assert_close(potential_only, other_potential, rtol=0, atol=1e-12)  # same mesh without E
    else:
        use_pme = path == "pme ghosts"
        ghosts = SmearedPotential(1.1, accuracy=1e-4 if use_pme else 1e-8)
        other_potential, other_field = ghosts._ghost_field(sources, positions, cell, pbc, use_pme)
    tolerance = {"ewald ghosts": 1e-12, "pme ghosts": 1e-5, "mesh": 1e-6}[path]
    torch.testing.assert_close(potential, other_potential, rtol=0, atol=tolerance)
    torch.testing.assert_close(field, other_field, rtol=0, atol=tolerance)
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
    """3D cells: all widths filtered in one k-space pass = the sum of one torch-pme sum per width.

    The single pass uses the finest width's k-vectors for every width (more than the wider
    ones need), so the two agree to the k-space accuracy (1e-8 here; tolerance 1e-7).
    """
    block, positions, cell, sources = _message_block_and_box(1e-8)
    pbc = torch.ones(3, dtype=torch.bool)
    assert block._single_pass(cell, pbc) and not block._uses_mesh(len(positions), cell)
    assert not block._single_pass(cell, torch.tensor([True, True, False]))
    single = block._ewald_message(sources, positions, cell)
    per_width = block._message_per_width(sources, positions, cell[None], pbc[None])
    torch.testing.assert_close(single, per_width, rtol=0, atol=1e-7)
    assert float(single.abs().max()) > 0.1


def test_ewald_mp_mesh_pass_equals_the_ewald_pass_with_gradients():
    """Above the Ewald work limit the single pass runs on one C-channel PME mesh (FFT-friendly sizes,
    not torch-pme's powers of two). Against the Ewald pass at 1e-8: the message and its gradients
    in positions and cell (forces and stress flow through both). Accuracy 1e-5; measured max
    errors 2e-8 (message, scale 5), 5e-7 (positions), 1.1e-6 (cell; scales ~1); tolerances
    1e-7 for the message and the requested accuracy 1e-5 for the gradients.
    """
    from mace_lr.electrostatics.channel_mesh import channel_mesh_shape, fft_friendly_size

    assert [fft_friendly_size(n) for n in (1, 7, 11, 97, 161, 250)] == [1, 8, 12, 100, 162, 250]
    block, positions, cell, sources = _message_block_and_box(1e-5, method="pme")
    reference, *_ = _message_block_and_box(1e-8)
    assert block._uses_mesh(len(positions), cell)
    shape = channel_mesh_shape(cell, block.mesh.mesh_spacing)
    assert all(fft_friendly_size(int(n)) == int(n) for n in shape)

    def message_and_gradients(function):
        p = positions.clone().requires_grad_(True)
        c = cell.clone().requires_grad_(True)
        message = function(sources, p, c)
        weights = torch.tensor(np.random.default_rng(8).normal(size=message.shape))
        dp, dc = torch.autograd.grad((message * weights).sum(), [p, c])
        return message, dp, dc

    mesh = message_and_gradients(block._mesh_message)
    ewald = message_and_gradients(reference._ewald_message)
    for name, a, b, tolerance in zip(("message", "d/dpositions", "d/dcell"), mesh, ewald, (1e-7, 1e-5, 1e-5)):
        torch.testing.assert_close(a, b, rtol=0, atol=tolerance, msg=name)
        assert float(b.abs().max()) > 0.1, name


@pytest.mark.parametrize("heads", [("ewald_mp",), ("lode",)], ids=lambda h: h[0])
def test_mesh_paths_keep_forces_stress_and_torchscript(heads):
    """method="pme" sends ewald_mp and lode through their one-mesh paths: finite differences (as
    above), TorchScript, and forces as on the Ewald path: both at accuracy 1e-4 (for speed), measured
    2.4e-7 on a long-range force part of ~0.01 eV/Å; tolerance 2e-6."""
    model = nonlocal_model(heads, method="pme", accuracy=1e-4)
    atoms = nacl_crystal()
    if heads == ("ewald_mp",):
        assert model.message_passing[0].blocks[0]._uses_mesh(len(atoms), torch.tensor(atoms.cell.array))
    else:
        assert model.long_range_heads[0].potential.uses_pme(len(atoms), torch.tensor(atoms.cell.array))
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
    torch.testing.assert_close(out["forces"], auto["forces"], rtol=0, atol=2e-6)
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
