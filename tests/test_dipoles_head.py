"""The ``dipoles`` head (issue 7): ions plus Wannier centroids (DPLR style).

float64 throughout; finite differences with h = 1e-5 Å (error ~1e-9 relative) are compared
to 1e-6 absolute; exact identities (sum rules, rotations) to 1e-9.
"""

from __future__ import annotations

import mace  # noqa: F401  (before e3nn)
import numpy as np
import pytest
import torch
from ase import Atoms
from ase.build import molecule
from e3nn.util import jit
from scipy.spatial.transform import Rotation

from mace_lr.heads import LongRangeConfig, parse_long_range
from mace_lr.models import build_macelr
from helpers import fd_force, fd_stress
from model_helpers import batch_dict, tiny_backbone

WATER = dict(wannier_ion_charges=((1, 1.0), (8, 6.0)), wannier_centroid_charges=((8, -8.0),))


ATOMIC = dict(dipoles_mode="atomic", wannier_ion_charges=((1, 0.4), (8, -0.8)))  # SPC-like ions
MODES = ["centroids", "atomic"]


def water_model(width: float = 0.5, seed: int = 0, mode: str = "centroids", **config):
    settings = WATER if mode == "centroids" else ATOMIC
    model = build_macelr(tiny_backbone(atomic_numbers=(1, 8), seed=seed),
                         LongRangeConfig(heads=("dipoles",), charge_width=width, **settings, **config))
    head = model.long_range_heads[0]
    with torch.no_grad():  # centroids ~0.1-0.3 Å off the O, as in water; atomic dipoles of ~0.1-0.5 e·Å
        for parameter in (head.displacement if mode == "centroids" else head.dipole_map).parameters():
            parameter.mul_(300.0 if mode == "centroids" else 100.0)
    return model


def water_pair(offset=(2.8, 0.4, 0.3), seed: int = 1) -> Atoms:
    first, second = molecule("H2O"), molecule("H2O")
    second.translate(offset)
    atoms = first + second
    atoms.rattle(0.05, seed=seed)
    return atoms


def water_box(seed: int = 2) -> Atoms:
    atoms = Atoms()
    rng = np.random.default_rng(seed)
    for corner in np.array([[0, 0, 0], [0.5, 0.5, 0], [0.5, 0, 0.5], [0, 0.5, 0.5]]) * 6.2:
        water = molecule("H2O")
        water.rotate(rng.uniform(0, 360), rng.normal(size=3))
        water.translate(corner + 1.0)
        atoms += water
    atoms.cell = np.eye(3) * 6.2 + 0.2 * rng.uniform(-1, 1, (3, 3))
    atoms.pbc = True
    atoms.rattle(0.03, seed=seed)
    return atoms


def assert_born_charges_are_dipole_derivatives(model, atoms, bec: np.ndarray, h: float = 1e-5) -> None:
    """Sum rule of a neutral structure, and Z*_{i,a} = d mu / d r_{i,a} by central differences (1e-6)."""
    np.testing.assert_allclose(bec.sum(0), np.zeros((3, 3)), atol=1e-9)  # neutral: translation moves nothing
    for i, a in [(0, 2), (1, 0), (3, 1)]:
        dipoles = []
        for sign in (1, -1):
            moved = atoms.copy()
            moved.positions[i, a] += sign * h
            dipoles.append(model(batch_dict([moved], model))["dipole"][0].detach().numpy())
        np.testing.assert_allclose(bec[i, a], (dipoles[0] - dipoles[1]) / (2 * h), atol=1e-6)


def test_dipole_includes_the_centroids_and_born_charges_are_its_derivative():
    model = water_model()
    atoms = water_pair()
    out = model(batch_dict([atoms], model), compute_bec=True)
    charges = out["charges"].detach().numpy()
    np.testing.assert_allclose(charges, [-2, 1, 1, -2, 1, 1], atol=1e-12)  # net Z + q_c
    head = model.long_range_heads[0]
    displacement = head.displacement(head_features(model, atoms)).detach().numpy()
    expected = charges @ atoms.positions - 8.0 * (displacement[0] + displacement[3])
    np.testing.assert_allclose(out["dipole"][0].detach().numpy(), expected, atol=1e-10)
    assert 0.05 < np.linalg.norm(displacement[0]) < 0.5  # centroids really move, by a Wannier-like distance
    assert_born_charges_are_dipole_derivatives(model, atoms, out["bec"].detach().numpy())


def test_atomic_dipoles_enter_the_dipole_and_born_charges_are_its_derivative():
    model = water_model(mode="atomic")
    atoms = water_pair()
    out = model(batch_dict([atoms], model), compute_bec=True)
    charges = out["charges"].detach().numpy()
    np.testing.assert_allclose(charges, [-0.8, 0.4, 0.4, -0.8, 0.4, 0.4], atol=1e-12)
    head = model.long_range_heads[0]
    batch = batch_dict([atoms], model)
    dipoles = head.dipole_map(model.backbone(batch, compute_force=False)["node_feats"]).detach().numpy()
    assert 0.05 < np.abs(dipoles).max() < 1.0  # e·Å: atomic dipoles of a realistic size
    np.testing.assert_allclose(out["dipole"][0].detach().numpy(), charges @ atoms.positions + dipoles.sum(0),
                               atol=1e-10)
    assert_born_charges_are_dipole_derivatives(model, atoms, out["bec"].detach().numpy())


def test_atomic_dipole_mode_settings_are_checked():
    from mace_lr.training.settings import build_parser, settings_from_args

    args = build_parser().parse_args(["--name=t", "--train_file=x.xyz", "--max_L=1", "--long_range=dipoles",
                                      "--dipoles_mode=atomic", "--wannier_ion_charges=1:0.4,8:-0.8"])
    config = settings_from_args(args).long_range
    assert config.dipoles_mode == "atomic" and config.wannier_ion_charges == ((1, 0.4), (8, -0.8))
    with pytest.raises(ValueError, match="belong to --dipoles_mode centroids"):
        LongRangeConfig(heads=("dipoles",), dipoles_mode="atomic", wannier_centroid_charges=((8, -8.0),))
    with pytest.raises(ValueError, match="dipoles_mode must be one of"):
        LongRangeConfig(heads=("dipoles",), dipoles_mode="wannier")
    model = water_model(mode="atomic")
    slab = water_box()
    slab.pbc = (True, True, False)
    with pytest.raises(RuntimeError, match="not slabs"):
        model(batch_dict([slab], model))


def head_features(model, atoms):
    """The node features the head sees (backbone run as in MACELR)."""
    batch = batch_dict([atoms], model)
    out = model.backbone(batch, compute_force=False)
    features = out["node_feats"]
    centroid = (batch["node_attrs"] @ model.long_range_heads[0].centroid_charges) != 0.0
    return features * centroid.unsqueeze(-1)


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("periodic", [False, True])
def test_forces_and_stress_are_energy_derivatives(periodic, mode):
    # accuracy 1e-10: a truncated periodic sum jumps by ~accuracy x q^2/a when a pair or k-vector
    # crosses its cutoff under the 1e-5 strain, and the stress difference quotient divides that jump
    # by 2e-5 V: measured 1e-5 eV/Å^3 at accuracy 1e-5 and at 1e-8; within the tolerance 1e-7 at 1e-10
    model = water_model(mode=mode, accuracy=1e-10)
    atoms = water_box() if periodic else water_pair()
    out = model(batch_dict([atoms], model), compute_stress=periodic)
    forces = out["forces"].detach().numpy()

    def energy_of(configuration):
        return float(model(batch_dict([configuration], model))["energy"])

    for i, a in [(0, 0), (2, 1), (4, 2)]:
        assert forces[i, a] == pytest.approx(fd_force(energy_of, atoms, i, a), abs=1e-6)
    if periodic:
        stress = out["stress"][0].detach().numpy()
        for a, b in [(0, 0), (1, 2)]:
            assert stress[a, b] == pytest.approx(fd_stress(energy_of, atoms, a, b), abs=1e-7)


@pytest.mark.parametrize("mode", MODES)
def test_rotation_translation_and_torchscript(mode):
    model = water_model(mode=mode)
    atoms = water_pair()
    rotation = Rotation.from_euler("xyz", [0.3, -0.8, 1.9]).as_matrix()
    moved = atoms.copy()
    moved.positions = atoms.positions @ rotation.T + np.array([1.0, -2.0, 0.5])
    reference = model(batch_dict([atoms], model), compute_bec=True)
    rotated = model(batch_dict([moved], model), compute_bec=True)
    assert float(rotated["energy"]) == pytest.approx(float(reference["energy"]), abs=1e-9)
    np.testing.assert_allclose(rotated["dipole"][0].detach(), rotation @ reference["dipole"][0].detach().numpy(),
                               atol=1e-9)  # neutral: the translation does not change mu
    np.testing.assert_allclose(rotated["bec"].detach(), np.einsum("ab,ibc,dc->iad", rotation,
                                                                  reference["bec"].detach().numpy(), rotation),
                               atol=1e-9)
    scripted = jit.compile(model)(batch_dict([atoms], model), compute_bec=True)
    for key in ("energy", "forces", "dipole", "bec", "charges", "electrostatic_energy"):
        np.testing.assert_allclose(scripted[key].detach(), reference[key].detach(), atol=1e-12, err_msg=key)


@pytest.mark.parametrize("mode", MODES)
def test_field_term_and_atomic_energies(mode):
    model = water_model(mode=mode)
    atoms = water_pair()
    field = np.array([0.02, -0.01, 0.03])
    zero = model(batch_dict([atoms], model))
    atoms.info["external_field"] = field
    from mace_lr.batching import atoms_to_batch
    from mace.tools import AtomicNumberTable

    fielded = model(atoms_to_batch([atoms], AtomicNumberTable([1, 8]), 4.0))
    mu = zero["dipole"][0].detach().numpy()
    assert float(fielded["energy"]) == pytest.approx(float(zero["energy"]) - mu @ field, abs=1e-10)
    assert float(fielded["node_energy"].sum()) == pytest.approx(float(fielded["energy"]), abs=1e-9)


def test_bad_configurations_are_clear_errors():
    with pytest.raises(ValueError, match="cannot be combined"):
        parse_long_range("dipoles+latent")
    with pytest.raises(ValueError, match="centroid charges"):
        LongRangeConfig(heads=("dipoles",))
    with pytest.raises(ValueError, match="l=1"):
        build_macelr(tiny_backbone(atomic_numbers=(1, 8), hidden="8x0e"), LongRangeConfig(heads=("dipoles",), **WATER))
    with pytest.raises(ValueError, match="elements \\[17\\]"):
        build_macelr(tiny_backbone(atomic_numbers=(1, 8)), LongRangeConfig(
            heads=("dipoles",), wannier_ion_charges=((17, 7.0),), wannier_centroid_charges=((8, -8.0),)))
    model = water_model()
    charged = water_pair()
    charged.info["total_charge"] = 1.0
    with pytest.raises(RuntimeError, match="total charge is 1.0"):
        model(batch_dict([charged], model))


@pytest.mark.parametrize("mode", MODES)
def test_every_head_parameter_gets_a_gradient_from_energy_and_dipole(mode):
    model = water_model(mode=mode)
    out = model(batch_dict([water_pair(), water_pair(offset=(0.3, 3.0, -0.5), seed=3)], model), training=True)
    loss = out["energy"].square().sum() + out["dipole"].square().sum() + out["forces"].square().sum()
    loss.backward()
    for name, parameter in model.long_range_heads.named_parameters():
        assert parameter.grad is not None and parameter.grad.abs().max() > 0.0, name


def test_initial_head_energy_moves_into_the_e0s():
    """The E0s lose the per-element least-squares fit of the heads' initial energy (float64, 1e-8 eV)."""
    from mace import data as mace_data
    from mace import tools

    from mace_lr.training.model import absorb_initial_head_energy

    model = water_model()
    z_table = tools.AtomicNumberTable([1, 8])
    clusters = [molecule("H2O"), water_pair(), water_pair(offset=(0.4, 3.1, -0.5), seed=4)]
    for atoms in clusters[1:]:
        atoms.rattle(0.02, seed=7)
    items = [mace_data.AtomicData.from_config(mace_data.config_from_atoms(atoms), z_table=z_table, cutoff=4.0,
                                              heads=["Default"]) for atoms in clusters]
    before = model(batch_dict(clusters, model), compute_force=False)
    head_energy = before["electrostatic_energy"].detach()
    counts = torch.tensor([[2.0, 1.0], [4.0, 2.0], [4.0, 2.0]], dtype=torch.float64)
    shift = absorb_initial_head_energy(model, items, [1, 8], batch_size=2)
    after = model(batch_dict(clusters, model), compute_force=False)
    # the H2O stoichiometry fixes only 2 s_H + s_O: minimum-norm least squares
    expected = torch.linalg.lstsq(counts, head_energy.unsqueeze(-1), driver="gelsd").solution.squeeze(-1)
    torch.testing.assert_close(shift, expected, rtol=0, atol=1e-8)
    torch.testing.assert_close(after["energy"], before["energy"] - counts @ shift, rtol=0, atol=1e-8)
    assert float(head_energy.abs().min()) > 10.0  # tens of eV of intramolecular Coulomb were at stake
