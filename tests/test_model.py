"""MACELR: equivalence with ScaleShiftMACE, exact derivatives, symmetry, batching, TorchScript.

All in float64. Finite differences use ase.calculators.fd (central, eps 1e-4 Å for
forces, 1e-5 for strain): their truncation error is ~eps^2 * third derivative, below
1e-6 eV/Å here, so we compare at 1e-5 (eV/Å, eV/Å^3 * volume scale).
"""

from __future__ import annotations

import mace  # noqa: F401
import numpy as np
import pytest
import torch
from ase.calculators.fd import calculate_numerical_forces, calculate_numerical_stress
from e3nn.util import jit
from scipy.spatial.transform import Rotation

from mace_lr.calculators import MACELRCalculator
from mace_lr.heads import LongRangeConfig
from mace_lr.models import build_macelr
from model_helpers import batch_dict, lr_model, nacl_crystal, tiny_backbone, water_cluster


@pytest.fixture(scope="module")
def saved_model(tmp_path_factory):
    torch.set_default_dtype(torch.float64)
    model = lr_model()
    path = tmp_path_factory.mktemp("model") / "lr.model"
    torch.save(model, path)
    return model, str(path)


def test_without_heads_bit_identical_to_scaleshiftmace():
    backbone = tiny_backbone()
    model = build_macelr(backbone, LongRangeConfig(heads=()))
    structures = [nacl_crystal(), water_cluster()]
    # the first call of a fresh model may differ in the last bit (kernel selection); warm up once
    backbone(batch_dict(structures, backbone), compute_stress=True)
    ours = model(batch_dict(structures, model), compute_stress=True)
    theirs = backbone(batch_dict(structures, backbone), compute_stress=True)
    for key in ("energy", "forces", "stress", "node_energy"):
        assert torch.equal(ours[key], theirs[key]), key


def test_heads_add_energy_and_keep_backbone_numbers():
    backbone = tiny_backbone()
    model = lr_model()
    model.backbone.load_state_dict(backbone.state_dict())
    structures = [nacl_crystal(), water_cluster()]
    ours = model(batch_dict(structures, model))
    theirs = backbone(batch_dict(structures, backbone))
    lr_energy = ours["energy"] - theirs["energy"]
    assert torch.all(lr_energy.abs() > 1e-3)  # the heads contribute
    assert torch.allclose(lr_energy, ours["electrostatic_energy"], atol=1e-12)


@pytest.mark.parametrize("structure", ["crystal", "cluster"])
def test_forces_and_stress_equal_finite_differences(saved_model, structure):
    _, path = saved_model
    atoms = nacl_crystal() if structure == "crystal" else water_cluster(charge=1.0)
    atoms.calc = MACELRCalculator(path)
    forces = atoms.get_forces()
    assert np.abs(forces).max() > 0.01
    np.testing.assert_allclose(forces, calculate_numerical_forces(atoms, eps=1e-4), atol=1e-6)
    if structure == "crystal":
        stress = atoms.get_stress()
        np.testing.assert_allclose(stress, calculate_numerical_stress(atoms, eps=1e-5), atol=1e-6)


def test_node_energies_sum_to_total(saved_model):
    _, path = saved_model
    for atoms in (nacl_crystal(), water_cluster(charge=1.0)):
        atoms.calc = MACELRCalculator(path)
        assert atoms.get_potential_energies().sum() == pytest.approx(atoms.get_potential_energy(), abs=1e-9)


def test_total_charge_honoured_and_mixed_batch_equals_one_by_one(saved_model):
    model, _ = saved_model
    structures = [nacl_crystal(), water_cluster(charge=1.0), water_cluster(seed=5, charge=-1.0)]
    together = model(batch_dict(structures, model), compute_stress=True)
    start = 0
    for index, atoms in enumerate(structures):
        alone = model(batch_dict([atoms], model), compute_stress=True)
        stop = start + len(atoms)
        assert float(alone["charges"].sum()) == pytest.approx(atoms.info.get("total_charge", 0.0), abs=1e-10)
        for key in ("energy", "dipole", "electrostatic_energy", "stress"):
            torch.testing.assert_close(together[key][index], alone[key][0], rtol=0, atol=1e-10)
        for key in ("forces", "charges"):
            torch.testing.assert_close(together[key][start:stop], alone[key], rtol=0, atol=1e-10)
        start = stop


def _rotated(atoms, rotation):
    moved = atoms.copy()
    moved.positions = atoms.positions @ rotation.T
    if atoms.pbc.all():
        moved.cell = np.asarray(atoms.cell) @ rotation.T
    return moved


def test_rotation_and_translation(saved_model):
    model, _ = saved_model
    rotation = Rotation.from_euler("xyz", [0.3, -1.1, 2.0]).as_matrix()
    for atoms in (water_cluster(charge=1.0), nacl_crystal()):
        reference = model(batch_dict([atoms], model), compute_bec=True)
        turned = model(batch_dict([_rotated(atoms, rotation)], model), compute_bec=True)
        torch.testing.assert_close(turned["energy"], reference["energy"], rtol=0, atol=1e-10)
        r = torch.tensor(rotation)
        torch.testing.assert_close(turned["forces"], reference["forces"] @ r.T, rtol=0, atol=1e-10)
        torch.testing.assert_close(turned["charges"], reference["charges"], rtol=0, atol=1e-10)
        if not atoms.pbc.any():
            torch.testing.assert_close(turned["dipole"], reference["dipole"] @ r.T, rtol=0, atol=1e-10)
        # bec[i] transforms as R Z R^T
        expected_bec = torch.einsum("ab,nbc,dc->nad", r, reference["bec"], r)
        torch.testing.assert_close(turned["bec"], expected_bec, rtol=0, atol=1e-10)
        shifted = atoms.copy()
        shifted.translate([0.7, -1.3, 2.1])
        moved = model(batch_dict([shifted], model))
        torch.testing.assert_close(moved["energy"], reference["energy"], rtol=0, atol=1e-10)
        torch.testing.assert_close(moved["forces"], reference["forces"], rtol=0, atol=1e-10)


def test_bec_equals_finite_difference_of_dipole(saved_model):
    model, path = saved_model
    atoms = water_cluster(charge=0.0)
    calc = MACELRCalculator(path)
    bec = calc.get_property("bec", atoms)
    assert bec.shape == (len(atoms), 3, 3)
    eps = 1e-5
    numeric = np.zeros_like(bec)
    for i in range(len(atoms)):
        for a in range(3):
            dipoles = []
            for sign in (1, -1):
                moved = atoms.copy()
                moved.positions[i, a] += sign * eps
                dipoles.append(calc.get_property("dipole", moved))
            numeric[i, a] = (dipoles[0] - dipoles[1]) / (2 * eps)
    np.testing.assert_allclose(bec, numeric, atol=1e-7)
    # neutral system: acoustic sum rule holds exactly for q_i r_i dipoles
    np.testing.assert_allclose(bec.sum(axis=0), np.zeros((3, 3)), atol=1e-10)


def test_bec_only_on_request(saved_model):
    _, path = saved_model
    atoms = water_cluster()
    atoms.calc = MACELRCalculator(path)
    atoms.get_potential_energy()
    assert "bec" not in atoms.calc.results
    assert atoms.calc.get_property("bec", atoms).shape == (len(atoms), 3, 3)


def test_torchscript_equals_eager(saved_model):
    model, _ = saved_model
    compiled = jit.compile(model)
    structures = [nacl_crystal(), water_cluster(charge=1.0)]
    eager = model(batch_dict(structures, model), compute_stress=True, compute_bec=True)
    scripted = compiled(batch_dict(structures, model), compute_stress=True, compute_bec=True)
    for key in ("energy", "forces", "stress", "charges", "dipole", "bec", "node_energy"):
        torch.testing.assert_close(scripted[key], eager[key], rtol=0, atol=1e-12)


def test_save_load_round_trip_and_compiled_file(saved_model, tmp_path):
    model, path = saved_model
    compiled_path = tmp_path / "lr_compiled.model"
    torch.jit.save(jit.compile(model), compiled_path)
    atoms = nacl_crystal()
    results = []
    for source in (path, str(compiled_path)):
        atoms.calc = MACELRCalculator(source)
        results.append((atoms.get_potential_energy(), atoms.get_forces(), atoms.get_stress()))
    eager = model(batch_dict([atoms], model), compute_stress=True)
    assert results[0][0] == pytest.approx(float(eager["energy"][0]), abs=1e-12)
    for first, second in zip(*results):
        np.testing.assert_allclose(first, second, atol=1e-12)


def test_upstream_mace_calculator_loads_the_model(saved_model):
    from mace.calculators import MACECalculator

    _, path = saved_model
    for atoms in (nacl_crystal(), water_cluster()):
        ours = MACELRCalculator(path)
        theirs = MACECalculator(model_paths=path, device="cpu", default_dtype="float64")
        energy = ours.get_potential_energy(atoms)
        assert theirs.get_potential_energy(atoms) == pytest.approx(energy, abs=1e-10)
        np.testing.assert_allclose(theirs.get_forces(atoms), ours.get_forces(atoms), atol=1e-10)


def test_external_field_enthalpy(saved_model):
    model, path = saved_model
    atoms = water_cluster(charge=0.0)
    field = np.array([0.05, -0.02, 0.03])
    calc = MACELRCalculator(path, external_field=field)
    plain = MACELRCalculator(path)
    energy = calc.get_potential_energy(atoms)
    dipole = plain.get_property("dipole", atoms)
    assert energy == pytest.approx(plain.get_potential_energy(atoms) - dipole @ field, abs=1e-10)
    # dE/dF = -mu by finite differences in the field
    eps = 1e-4
    numeric = []
    for axis in range(3):
        energies = []
        for sign in (1, -1):
            shifted = field.copy()
            shifted[axis] += sign * eps
            energies.append(MACELRCalculator(path, external_field=shifted).get_potential_energy(atoms))
        numeric.append((energies[0] - energies[1]) / (2 * eps))
    np.testing.assert_allclose(-np.array(numeric), calc.get_property("dipole", atoms), atol=1e-8)
    atoms.calc = calc
    np.testing.assert_allclose(atoms.get_forces(), calculate_numerical_forces(atoms, eps=1e-4), atol=1e-6)


def test_bad_input_is_rejected_with_a_clear_message(saved_model, tmp_path):
    from ase import Atoms

    from mace_lr.batching import StructureError

    _, path = saved_model
    calc = MACELRCalculator(path)
    with pytest.raises(StructureError, match="not in the model"):
        calc.get_potential_energy(Atoms("NaK", positions=[[0, 0, 0], [3, 0, 0]]))
    with pytest.raises(StructureError, match="overlapping"):
        calc.get_potential_energy(Atoms("NaCl", positions=[[0, 0, 0], [0.01, 0, 0]]))
    with pytest.raises(StructureError, match="NaN"):
        calc.get_potential_energy(Atoms("NaCl", positions=[[0, 0, 0], [np.nan, 0, 0]]))
    with pytest.raises(StructureError, match="without a cell"):
        calc.get_potential_energy(Atoms("NaCl", positions=[[0, 0, 0], [2.5, 0, 0]], pbc=True))
    short_range = tmp_path / "sr.model"
    torch.save(build_macelr(tiny_backbone(), LongRangeConfig()), short_range)
    with pytest.raises(ValueError, match="needs a model with charges or a field input"):
        MACELRCalculator(str(short_range), external_field=[0, 0, 0.1]).get_potential_energy(water_cluster())
