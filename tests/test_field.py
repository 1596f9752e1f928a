"""Finite fields (issue 7): field-conditioned models, constant D, polarization quanta, sum rule.

Tolerances (float64): central finite differences with step h have an error ~h^2 f'''
(h = 1e-4 V/Å or 1e-5 Å here: ~1e-8 relative), so derivatives are compared to 1e-6
absolute on quantities of order 0.1-1; identities that hold exactly (mixed second
derivatives, rotations) to 1e-9.
"""

from __future__ import annotations

import mace  # noqa: F401  (before e3nn)
import numpy as np
import pytest
import torch
from e3nn.util import jit
from mace.tools import AtomicNumberTable
from scipy.spatial.transform import Rotation

from mace_lr.batching import StructureError, atoms_to_batch
from mace_lr.field import (
    INVERSE_EPSILON0,
    dipole_difference_modulo_quantum,
    displacement_for_field,
    impose_acoustic_sum_rule,
)
from mace_lr.heads import LongRangeConfig
from mace_lr.models import build_macelr
from helpers import fd_force, fd_stress
from model_helpers import amplify_charge_readouts, nacl_crystal, tiny_backbone, water_cluster

Z_TABLE = AtomicNumberTable([1, 8, 11, 17])
FIELD = np.array([0.05, -0.02, 0.03])  # V/Å


def field_model(heads=("charges",), scale: float = 1.0, **config):
    """A tiny field-conditioned MACELR whose field term is switched fully on (scale 1, not 0.01)."""
    model = build_macelr(tiny_backbone(), LongRangeConfig(heads=tuple(heads), field_conditioned=True, **config),
                         {11: 0.8, 17: -0.8, 8: -0.6, 1: 0.3})
    if heads:
        amplify_charge_readouts(model)
    with torch.no_grad():
        for block in model.field_conditioning[0].blocks:
            block.scale.fill_(scale)
    return model


def evaluate(model, atoms, field=None, **kwargs):
    atoms = atoms.copy()
    if field is not None:
        atoms.info["external_field"] = np.asarray(field, dtype=float)
    batch = atoms_to_batch([atoms], Z_TABLE, float(model.r_max))
    return model(batch, **kwargs)


def numpy_out(out, *keys):
    return [out[k].detach().numpy() for k in keys]


@pytest.mark.parametrize("heads", [(), ("charges",)])
def test_dipole_polarizability_and_born_charges_are_field_derivatives(heads):
    model = field_model(heads)
    atoms = water_cluster()
    energy, dipole, alpha, bec, forces = numpy_out(
        evaluate(model, atoms, FIELD, compute_bec=True, compute_polarizability=True),
        "energy", "dipole", "polarizability", "bec", "forces")
    h = 1e-4
    plus = [evaluate(model, atoms, FIELD + h * e) for e in np.eye(3)]
    minus = [evaluate(model, atoms, FIELD - h * e) for e in np.eye(3)]
    fd_dipole = [-(float(p["energy"]) - float(m["energy"])) / (2 * h) for p, m in zip(plus, minus)]
    np.testing.assert_allclose(dipole[0], fd_dipole, atol=1e-6)
    fd_alpha = np.stack([(p["dipole"][0] - m["dipole"][0]).detach().numpy() / (2 * h) for p, m in zip(plus, minus)],
                        axis=-1)  # [a, b] = d mu_a / d F_b
    np.testing.assert_allclose(alpha[0], fd_alpha, atol=1e-6)
    np.testing.assert_allclose(alpha[0], alpha[0].T, atol=1e-9)  # -d2E/dF_a dF_b is symmetric
    assert np.abs(alpha).max() > 1e-2  # the field really changes the dipole
    # Z*_{i,ab} = d mu_b / d r_{i,a} = d f_{i,a} / d F_b (mixed second derivatives of -E)
    fd_force_response = np.stack([(p["forces"] - m["forces"]).detach().numpy() / (2 * h) for p, m in zip(plus, minus)],
                                 axis=-1)
    np.testing.assert_allclose(bec, fd_force_response, atol=1e-6)
    step = 1e-5
    for i, a in [(0, 0), (4, 2), (6, 1)]:
        shifted = []
        for sign in (1, -1):
            moved = atoms.copy()
            moved.positions[i, a] += sign * step
            shifted.append(evaluate(model, moved, FIELD)["dipole"][0].detach().numpy())
        np.testing.assert_allclose(bec[i, a], (shifted[0] - shifted[1]) / (2 * step), atol=1e-6)


def test_field_free_energy_is_the_unconditioned_models():
    model = field_model(("charges",))
    atoms = water_cluster()
    conditioned = evaluate(model, atoms, np.zeros(3))
    model.field_conditioning = torch.nn.ModuleList()
    model.field_conditioned = False
    plain = evaluate(model, atoms, np.zeros(3))
    assert float(conditioned["energy"]) == pytest.approx(float(plain["energy"]), abs=1e-12)
    np.testing.assert_allclose(conditioned["forces"].detach(), plain["forces"].detach(), atol=1e-12)
    # and -dE/dF at F = 0 is sum q r plus the field input's own zero-field response
    assert not np.allclose(conditioned["dipole"].detach(), plain["dipole"].detach(), atol=1e-6)


@pytest.mark.parametrize("periodic", [False, True])
def test_rotation_dipole_vector_bec_and_polarizability_tensors(periodic):
    model = field_model(("latent",))
    atoms = nacl_crystal() if periodic else water_cluster()
    rotation = Rotation.from_euler("zyx", [0.4, -1.1, 2.3]).as_matrix()
    reference = evaluate(model, atoms, FIELD, compute_bec=True, compute_polarizability=True, compute_stress=periodic)
    rotated_atoms = atoms.copy()
    rotated_atoms.positions = atoms.positions @ rotation.T
    if periodic:
        rotated_atoms.cell = atoms.cell.array @ rotation.T
    rotated = evaluate(model, rotated_atoms, rotation @ FIELD, compute_bec=True, compute_polarizability=True,
                       compute_stress=periodic)
    e0, mu0, z0, a0, f0 = numpy_out(reference, "energy", "dipole", "bec", "polarizability", "forces")
    e1, mu1, z1, a1, f1 = numpy_out(rotated, "energy", "dipole", "bec", "polarizability", "forces")
    assert e1[0] == pytest.approx(e0[0], abs=1e-9)
    np.testing.assert_allclose(f1, f0 @ rotation.T, atol=1e-9)
    np.testing.assert_allclose(mu1[0], rotation @ mu0[0], atol=1e-9)
    np.testing.assert_allclose(z1, np.einsum("ab,ibc,dc->iad", rotation, z0, rotation), atol=1e-9)
    np.testing.assert_allclose(a1[0], rotation @ a0[0] @ rotation.T, atol=1e-9)
    if periodic:
        s0, s1 = reference["stress"][0].detach().numpy(), rotated["stress"][0].detach().numpy()
        np.testing.assert_allclose(s1, rotation @ s0 @ rotation.T, atol=1e-9)


def test_periodic_field_conditioned_stress_is_the_strain_derivative():
    model = field_model(("charges",))
    atoms = nacl_crystal()
    out = evaluate(model, atoms, FIELD, compute_stress=True)
    stress = out["stress"][0].detach().numpy()
    for a, b in [(0, 0), (1, 2), (2, 0)]:
        expected = fd_stress(lambda strained: float(evaluate(model, strained, FIELD)["energy"]), atoms, a, b, h=1e-6)
        assert stress[a, b] == pytest.approx(expected, abs=1e-8)


def test_torchscript_equals_eager_for_field_outputs():
    model = field_model(("charges",))
    scripted = jit.compile(model)
    atoms = water_cluster()
    eager = evaluate(model, atoms, FIELD, compute_bec=True, compute_polarizability=True)
    compiled = evaluate(scripted, atoms, FIELD, compute_bec=True, compute_polarizability=True)
    for name in ("energy", "dipole", "polarizability", "bec", "forces"):
        np.testing.assert_allclose(compiled[name].detach(), eager[name].detach(), atol=1e-12, err_msg=name)


# ------------------------------------------------------------------ constant D


def charges_model():
    model = build_macelr(tiny_backbone(), LongRangeConfig(heads=("charges",)), {11: 0.8, 17: -0.8, 8: -0.6, 1: 0.3})
    amplify_charge_readouts(model)
    return model


def test_constant_d_forces_are_constant_e_forces_at_the_internal_field():
    """-dU_D/dr = -dU/dr + Z*^T E_int: the constant-E force at F = E_int (same configuration)."""
    model = charges_model()
    atoms = nacl_crystal()
    zero = evaluate(model, atoms, np.zeros(3))
    cell = torch.tensor(atoms.cell.array).unsqueeze(0)
    displacement = displacement_for_field(zero["dipole"].detach(), cell, torch.tensor([FIELD])).numpy()[0]
    constant_d = atoms.copy()
    constant_d.info["displacement_field"] = displacement
    out_d = model(atoms_to_batch([constant_d], Z_TABLE, 4.0), compute_stress=True)
    out_e = evaluate(model, atoms, FIELD, compute_stress=True)
    np.testing.assert_allclose(out_d["field"][0].detach(), FIELD, atol=1e-12)
    np.testing.assert_allclose(out_d["forces"].detach(), out_e["forces"].detach(), atol=1e-10)
    # energy: U + V/(2 eps0)|D - P|^2 = U + V eps0 |E|^2 / 2 here
    expected = float(zero["energy"]) + 0.5 * atoms.get_volume() * (FIELD @ FIELD) / INVERSE_EPSILON0
    assert float(out_d["energy"]) == pytest.approx(expected, abs=1e-10)


def test_constant_d_forces_and_stress_are_derivatives():
    model = charges_model()
    atoms = nacl_crystal()
    atoms.info["displacement_field"] = np.array([0.002, -0.001, 0.0015])  # e/Å^2
    out = model(atoms_to_batch([atoms], Z_TABLE, 4.0), compute_stress=True)
    forces, stress = out["forces"].detach().numpy(), out["stress"][0].detach().numpy()
    def energy_of(configuration):
        return float(model(atoms_to_batch([configuration], Z_TABLE, 4.0))["energy"])

    for i, a in [(0, 0), (5, 1), (11, 2)]:
        assert forces[i, a] == pytest.approx(fd_force(energy_of, atoms, i, a), abs=1e-6)
    for a, b in [(0, 0), (0, 1)]:
        assert stress[a, b] == pytest.approx(fd_stress(energy_of, atoms, a, b), abs=1e-7)


def test_constant_d_refuses_finite_systems_and_both_fields():
    model = charges_model()
    cluster = water_cluster()
    cluster.info["displacement_field"] = np.array([0.001, 0.0, 0.0])
    with pytest.raises(RuntimeError, match="3D-periodic"):
        model(atoms_to_batch([cluster], Z_TABLE, 4.0))
    crystal = nacl_crystal()
    crystal.info["displacement_field"] = np.array([0.001, 0.0, 0.0])
    crystal.info["external_field"] = FIELD
    with pytest.raises(StructureError, match="not both"):
        atoms_to_batch([crystal], Z_TABLE, 4.0)
    crystal.info.pop("external_field")
    with pytest.raises(RuntimeError, match="field-conditioned"):
        field_model()(atoms_to_batch([crystal], Z_TABLE, 4.0))


# ------------------------------------------------------------------ quanta and sum rule


def test_dipole_difference_is_reduced_modulo_polarization_quanta():
    rng = np.random.default_rng(0)
    cell = torch.tensor(np.diag([5.0, 6.0, 7.0]) + rng.uniform(-1, 1, (3, 3)))[None]
    pbc = torch.tensor([[True, True, False]])
    difference = torch.tensor([[0.3, -0.7, 0.2]])
    reduced = dipole_difference_modulo_quantum(difference, cell, pbc)
    for shift in ([1, 0, 0], [0, -2, 0], [3, 1, 0]):  # whole quanta e R_j along periodic directions
        shifted = difference + torch.tensor([shift], dtype=torch.float64) @ cell[0]
        np.testing.assert_allclose(dipole_difference_modulo_quantum(shifted, cell, pbc), reduced, atol=1e-12)
    # along the open direction nothing is removed; small differences are unchanged
    open_shift = difference + cell[0, 2]
    assert not torch.allclose(dipole_difference_modulo_quantum(open_shift, cell, pbc), reduced)
    small = torch.tensor([[0.01, 0.02, -0.03]])
    np.testing.assert_allclose(dipole_difference_modulo_quantum(small, cell, pbc), small, atol=1e-14)
    fractions = np.linalg.solve(cell[0].numpy().T, reduced[0].numpy())
    assert np.all(np.abs(fractions[:2]) <= 0.5 + 1e-12)


def test_acoustic_sum_rule():
    rng = np.random.default_rng(1)
    bec = torch.tensor(rng.normal(size=(7, 3, 3)))
    ptr = torch.tensor([0, 3, 7])
    batch = torch.tensor([0, 0, 0, 1, 1, 1, 1])
    charge = torch.tensor([0.0, 1.0])
    fixed = impose_acoustic_sum_rule(bec, charge, batch, ptr)
    np.testing.assert_allclose(fixed[:3].sum(0), np.zeros((3, 3)), atol=1e-12)
    np.testing.assert_allclose(fixed[3:].sum(0), np.eye(3), atol=1e-12)
    # a set that already obeys it is unchanged
    np.testing.assert_allclose(impose_acoustic_sum_rule(fixed, charge, batch, ptr), fixed, atol=1e-12)


# ------------------------------------------------------------------ calculator, i-PI extras, training


def test_calculator_field_properties_and_ipi_polarizability(tmp_path):
    from ase.calculators.calculator import PropertyNotImplementedError

    from ipi_driver.extras import finite_difference_polarizability
    from mace_lr.calculators import MACELRCalculator

    model = field_model(("charges",))
    torch.save(model, tmp_path / "field.model")
    calc = MACELRCalculator(model_paths=str(tmp_path / "field.model"), external_field=FIELD, acoustic_sum_rule=True)
    atoms = water_cluster()  # the field comes from the calculator's default
    atoms.calc = calc
    alpha = calc.get_property("polarizability", atoms)
    expected = evaluate(model, atoms, FIELD, compute_polarizability=True)["polarizability"][0].detach().numpy()
    np.testing.assert_allclose(alpha, expected, atol=1e-12)
    np.testing.assert_allclose(atoms.calc.results["field"], FIELD, atol=1e-15)
    # what the i-PI driver computes for calculators without the property: central differences, step 1e-3 V/Å
    # (truncation error ~ h^2 alpha''/6 ~ 1e-6 relative for this strongly nonlinear random model)
    np.testing.assert_allclose(finite_difference_polarizability(calc, atoms), alpha, rtol=1e-5, atol=1e-6)
    bec = calc.get_property("bec", atoms)
    np.testing.assert_allclose(bec.sum(axis=0), np.zeros((3, 3)), atol=1e-12)  # neutral: sum rule imposed

    charges_only = charges_model()
    torch.save(charges_only, tmp_path / "charges.model")
    plain = MACELRCalculator(model_paths=str(tmp_path / "charges.model"))
    assert "polarizability" not in plain.implemented_properties  # the driver falls back to differences
    with pytest.raises(PropertyNotImplementedError):
        plain.get_property("polarizability", water_cluster())
    # a new field in atoms.info is a new calculation (ASE's cache alone would not notice)
    probe = water_cluster()
    probe.calc = MACELRCalculator(model_paths=str(tmp_path / "field.model"))
    energies = []
    for value in ([0.0, 0.0, 0.0], [0.0, 0.0, 0.05], [0.0, 0.0, 0.05]):
        probe.info["external_field"] = np.array(value)
        energies.append(probe.get_potential_energy())
    assert energies[0] != energies[1] and energies[1] == energies[2]
    probe.info["total_charge"] = 1.0
    assert "total_charge" in probe.calc.check_state(probe)
    crystal = nacl_crystal()
    crystal.calc = MACELRCalculator(model_paths=str(tmp_path / "charges.model"), displacement_field=[0.002, 0.0, 0.0])
    crystal.get_potential_energy()
    dipole = crystal.calc.results["dipole"]
    internal = INVERSE_EPSILON0 * (np.array([0.002, 0.0, 0.0]) - dipole / crystal.get_volume())
    np.testing.assert_allclose(crystal.calc.results["field"], internal, atol=1e-10)


def test_field_conditioned_training_reads_fields_and_trains_every_parameter(tmp_path, monkeypatch):
    """mace_lr_run_train --field_conditioned on xTB molecules in fields: fields reach the batches, every
    parameter of the field input moves, and the compiled model gives the polarizability."""
    import subprocess
    import sys

    from mace.modules.loss import WeightedEnergyForcesLoss
    from mace.tools.train import take_step

    from mace_lr import data
    from mace_lr.calculators import MACELRCalculator
    from mace_lr.training import LongRangeLoss, build_parser
    from mace_lr.training import run as run_training
    from model_helpers import capture_training

    dataset = tmp_path / "field.xyz"
    subprocess.run([sys.executable, "-m", "mace_lr.cli.generate", "field", "-n=8", "--seed=5", "-q", f"-o={dataset}"],
                   check=True, capture_output=True, timeout=180)
    captured = capture_training(monkeypatch)
    argv = [
        "--name=field", f"--work_dir={tmp_path}", f"--train_file={dataset}", "--valid_fraction=0.25",
        *[f"--{flag}={key}" for flag, key in data.MACE_TRAIN_KEYS.items()], "--E0s=average",
        "--hidden_irreps=8x0e+8x1o", "--r_max=4.0", "--num_interactions=2", "--max_ell=2", "--correlation=2",
        "--num_radial_basis=4", "--MLP_irreps=4x0e", "--radial_MLP=[8]", "--max_num_epochs=1", "--batch_size=4",
        "--valid_batch_size=4", "--device=cpu", "--default_dtype=float64", "--plot=False", "--seed=1",
        "--long_range=none", "--field_conditioned", "--dipole_weight=1.0",
    ]
    run_training(build_parser().parse_args(argv))
    model, optimizer = captured["model"], captured["optimizer"]
    assert type(model).__name__ == "MACELR" and model.field_conditioned
    assert model.field_conditioning[0].layers == [0, 1]

    frames = data.read_dataset(dataset)
    keys = data.mace_key_specification()
    from mace_lr.training import bec_data as lr_bec
    from mace import data as mace_data
    from mace.tools import torch_geometric

    keys = lr_bec.key_specification_with_bec(keys, {}, original=lambda spec, _: spec, bec_key=None,
                                             field_key="external_field")
    z_table = AtomicNumberTable([int(z) for z in model.atomic_numbers])
    items = [mace_data.AtomicData.from_config(mace_data.config_from_atoms(a, key_specification=keys), z_table=z_table,
                                              cutoff=4.0, heads=["Default"]) for a in frames[:4]]
    batch = next(iter(torch_geometric.dataloader.DataLoader(items, batch_size=4)))
    np.testing.assert_allclose(batch.external_field.numpy(), [a.info["external_field"] for a in frames[:4]])
    for parameter in model.parameters():  # MACE freezes the model after training, before saving it
        parameter.requires_grad_(True)
    trainable = dict(model.named_parameters())
    before = {n: p.detach().clone() for n, p in trainable.items()}
    loss_fn = LongRangeLoss(WeightedEnergyForcesLoss(1.0, 100.0), charges_weight=0.0, dipole_weight=1.0)
    take_step(model, loss_fn, batch, optimizer, None, {"forces": True, "virials": False, "stress": False},
              max_grad_norm=10.0, device=torch.device("cpu"))
    unchanged = [n for n, p in trainable.items() if torch.equal(p.detach(), before[n])]
    assert unchanged == [] and any(n.startswith("field_conditioning.") for n in trainable)

    compiled = tmp_path / "field_compiled.model"
    assert compiled.exists()
    calc = MACELRCalculator(model_paths=str(compiled))
    atoms = frames[0].copy()
    atoms.calc = calc
    assert calc.get_property("polarizability", atoms).shape == (3, 3)
    assert np.abs(calc.get_property("dipole", atoms)).max() > 0.0


def polarization_batch(frames, model, key="REF_polarization"):
    from mace import data as mace_data
    from mace.tools import torch_geometric

    from mace_lr import data
    from mace_lr.training import bec_data as lr_bec

    keys = lr_bec.key_specification_with_bec(data.mace_key_specification(), {}, original=lambda spec, _: spec,
                                             bec_key=None, polarization_key=key)
    items = [lr_bec.atomic_data_with_bec(mace_data.config_from_atoms(a, key_specification=keys), z_table=Z_TABLE,
                                         cutoff=4.0, heads=["Default"], original=mace_data.AtomicData.from_config,
                                         with_bec=False, with_polarization=True) for a in frames]
    return next(iter(torch_geometric.dataloader.DataLoader(items, batch_size=len(items))))


def test_polarization_loss_is_unchanged_by_a_quantum_shift_of_the_reference():
    from mace_lr.training.loss import LongRangeLoss, polarization_mse

    model = charges_model()
    frames = [nacl_crystal(seed=s) for s in (1, 2)]
    frames[1].set_cell(frames[1].cell.array @ np.diag([1.0, 1.1, 0.95]) + 0.3 * np.eye(3)[::-1], scale_atoms=True)
    for atoms, p in zip(frames, ([0.003, -0.001, 0.002], [0.0, 0.004, -0.002])):
        atoms.info["REF_polarization"] = np.array(p)
    batch = polarization_batch(frames, model)
    pred = model(batch.to_dict(), training=True)
    base = float(polarization_mse(batch, pred))
    assert base > 0.0
    for j in range(3):  # P_ref + e R_j / V: one quantum along each lattice vector, for one structure
        shifted = [a.copy() for a in frames]
        quantum = shifted[1].cell.array[j] / shifted[1].get_volume()
        shifted[1].info["REF_polarization"] = frames[1].info["REF_polarization"] + (2 if j == 1 else 1) * quantum
        assert float(polarization_mse(polarization_batch(shifted, model), pred)) == pytest.approx(base, rel=1e-10)
    half = [a.copy() for a in frames]
    half[0].info["REF_polarization"] = frames[0].info["REF_polarization"] + 0.5 * half[0].cell.array[0] / half[0].get_volume()
    assert abs(float(polarization_mse(polarization_batch(half, model), pred)) - base) > 1e-3 * base
    # through the training loss, with a gradient for the charge head
    loss = LongRangeLoss(lambda ref, pred: torch.zeros(()), 0.0, 0.0, polarization_weight=2.0)(batch, pred)
    assert float(loss) == pytest.approx(2.0 * base, rel=1e-12)
    loss.backward()
    assert model.long_range_heads[0].readout.mlp[-1].weight.grad.abs().max() > 0.0


def test_reference_polarization_of_a_finite_structure_is_refused():
    cluster = water_cluster()
    cluster.info["REF_polarization"] = np.array([0.0, 0.0, 0.001])
    with pytest.raises(ValueError, match="3D-periodic"):
        polarization_batch([cluster], charges_model())


def test_field_and_polarization_flags_are_checked():
    from mace_lr.training import build_parser, settings_from_args

    def settings(*flags):
        return settings_from_args(build_parser().parse_args(["--name=x", *flags]))

    fielded = settings("--field_conditioned", "--field_layers=1", "--polarization_weight=2")
    assert fielded.active and fielded.long_range.field_conditioned and fielded.long_range.field_layers == (1,)
    assert fielded.trains_polarization and fielded.swa_polarization_weight == 2.0
    assert not settings("--long_range=charges").trains_polarization
    with pytest.raises(ValueError, match="needs --field_conditioned"):
        settings("--field_layers=0")
    with pytest.raises(ValueError, match="needs a model with a dipole"):
        settings("--polarization_weight=1")
    with pytest.raises(ValueError, match="--bec_weight needs"):
        settings("--bec_weight=1")
