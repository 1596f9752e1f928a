"""Charge equilibration: the solvers against numpy, the qeq head's physics and derivatives.

float64 throughout. Tolerances: the dense solve is a Cholesky factorisation of a
well-conditioned matrix (smallest eigenvalue ~ a few eV/e^2), so it meets numpy's
bordered solve to 1e-10; the iterative solve stops at a relative residual tol, so its
charges are within cond(A) * tol of the exact ones (cond(A) < 100 here). Finite
differences as in test_model.py (central, eps 1e-4 Å / 1e-5 strain, compared at 1e-6).
"""

from __future__ import annotations

import mace  # noqa: F401
import numpy as np
import pytest
import torch
from ase import Atoms
from ase.build import molecule
from ase.calculators.fd import calculate_numerical_forces, calculate_numerical_stress
from e3nn.util import jit
from scipy.spatial.transform import Rotation

from helpers import random_neutral_ions
from mace_lr.calculators import MACELRCalculator
from mace_lr.electrostatics import COULOMB_CONSTANT, Electrostatics, half_neighbor_list
from mace_lr.electrostatics.qeq import GaussianCoulombOperator, equilibrate_charges
from mace_lr.heads import LongRangeConfig, parse_long_range
from mace_lr.models import build_macelr
from model_helpers import batch_dict, nacl_crystal, tiny_backbone, water_cluster


def qeq_model(solver: str = "auto", seed: int = 0, heads=("qeq",), **config):
    """Tiny float64 MACELR with a qeq head whose electronegativities vary by ~1 V."""
    torch.manual_seed(seed)
    model = build_macelr(tiny_backbone(seed=seed), LongRangeConfig(heads=heads, qeq_solver=solver, qeq_tolerance=1e-12,
                                                                   **config))
    with torch.no_grad():
        for head in model.long_range_heads:
            head.readout.mlp[-1].weight.mul_(20.0)
            if hasattr(head, "raw_hardness"):
                head.readout.offsets.copy_(torch.linspace(-2.0, 2.0, head.readout.offsets.numel()))
    return model


def ion_box(seed: int = 3) -> Atoms:
    return random_neutral_ions(16, np.eye(3) * 8.5, seed=seed)


def full_pair_list(positions, cell, cutoff):
    pairs = half_neighbor_list(positions, cell, (True, True, True), cutoff)
    lengths = torch.linalg.norm(pairs.vectors(positions, cell), dim=-1)
    edges = torch.stack([torch.cat([pairs.j, pairs.i]), torch.cat([pairs.i, pairs.j])])
    return edges, torch.cat([lengths, lengths])


def bordered_numpy_solve(matrix: np.ndarray, chi: np.ndarray, total: float) -> tuple[np.ndarray, float]:
    n = len(chi)
    bordered = np.block([[matrix, -np.ones((n, 1))], [np.ones((1, n)), np.zeros((1, 1))]])
    solution = np.linalg.solve(bordered, np.concatenate([-chi, [total]]))
    return solution[:n], solution[n]


# ------------------------------------------------------------------ the operator and the solvers


def test_coulomb_matrix_matches_engine_and_matrix_free_product():
    """C from torch-pme + edges equals the engine's per-atom-width Coulomb energy (self-energy aside)."""
    atoms = ion_box()
    rng = np.random.default_rng(0)
    positions, cell = torch.tensor(atoms.positions), torch.tensor(atoms.cell.array)
    widths = torch.tensor(rng.uniform(0.25, 0.42, len(atoms)))
    charges = torch.tensor(rng.normal(size=len(atoms)))
    charges -= charges.mean()
    operator = GaussianCoulombOperator(cutoff=4.0, accuracy=1e-8)
    edges, lengths = full_pair_list(positions, cell, 4.0)
    engine = Electrostatics(method="ewald", accuracy=1e-9)
    for periodic in (True, False):
        pbc = torch.tensor([periodic] * 3)
        if not periodic:
            edges, lengths = edges[:, :0], lengths[:0]
        matrix = operator.matrix(positions, widths, cell, pbc, edges, lengths)
        assert torch.equal(matrix, matrix.T)
        assert float(torch.linalg.eigvalsh(matrix).min()) > 0.0  # positive definite
        product = operator.apply(charges.unsqueeze(-1), positions, widths, cell, pbc, edges, lengths).squeeze(-1)
        torch.testing.assert_close(product, matrix @ charges, rtol=0, atol=1e-10)
        self_energy = 0.5 * COULOMB_CONSTANT * (charges**2 / (np.sqrt(np.pi) * widths)).sum()
        reference = engine(positions, charges, (cell if periodic else 0 * cell)[None], pbc[None], widths=widths,
                           compute_field=False)["energy"][0]
        # relative accuracy 1e-8 requested of both sums
        assert float(0.5 * charges @ matrix @ charges - self_energy) == pytest.approx(float(reference), rel=1e-7)


@pytest.mark.parametrize("pbc", [(True, True, True), (True, True, False)], ids=["3D", "slab"])
def test_pme_products_match_the_engine_at_the_requested_accuracy(pbc):
    """QEq's PME path (FFT-friendly mesh, not torch-pme's power-of-two one) against the engine's Ewald
    sum at 1e-9, charged cell included: products C q at accuracy 1e-5, measured max error 8e-8 (3D)
    and 5e-8 (slab) of the largest potential; tolerance the requested 1e-5."""
    atoms = ion_box(seed=3)
    rng = np.random.default_rng(4)
    positions, cell = torch.tensor(atoms.positions), torch.tensor(atoms.cell.array)
    widths = torch.tensor(rng.uniform(0.25, 0.42, len(atoms)))
    charges = torch.tensor(rng.normal(size=len(atoms)))
    charges += (0.7 - charges.sum()) / len(atoms)
    pbc = torch.tensor(pbc)
    operator = GaussianCoulombOperator(cutoff=4.0, accuracy=1e-5, method="pme")
    assert operator._use_pme(len(atoms), 1, cell)
    edges, lengths = full_pair_list(positions, cell, 4.0)
    product = operator.apply(charges.unsqueeze(-1), positions, widths, cell, pbc, edges, lengths).squeeze(-1)
    reference = Electrostatics(method="ewald", accuracy=1e-9)(
        positions, charges, cell[None], pbc[None], widths=widths, compute_field=False)["potential"]
    self_potential = COULOMB_CONSTANT * charges / (np.sqrt(np.pi) * widths)  # C holds the self term, the engine not
    torch.testing.assert_close(product - self_potential, reference, rtol=0,
                               atol=1e-5 * float(reference.abs().max()))


@pytest.mark.parametrize("method,pbc,cache_max_bytes,cached", [
    ("ewald", (True, True, True), 2e9, "phases"),
    ("ewald", (True, True, False), 2e9, "phases"),  # slab correction
    ("ewald", (True, True, True), 10.0, "pme"),  # phase table over the cap: CG falls back to cached PME
    ("pme", (True, True, True), 2e9, "pme"),
    ("pme", (True, True, False), 2e9, "pme"),
    ("ewald", (False, False, False), 2e9, "direct"),  # open boundaries: the pair kernel is kept
])
@pytest.mark.parametrize("total_charge", [0.0, 1.5])
def test_products_from_prepared_kspace_factors_equal_fresh_calls(method, pbc, cache_max_bytes, cached,
                                                                 total_charge):
    """CG reuses phase factors / PME weights / the open pair kernel across products; each must equal a fresh call.

    Equal to rounding (1e-12 relative) to the fresh call of the method the cache holds (torch-pme's
    Ewald, or the PME mesh); an Ewald table over the cap gives the PME product (accuracy 1e-3 keeps
    the mesh small here). The PME mesh itself is checked against the engine above.
    """
    atoms = ion_box(seed=7)
    rng = np.random.default_rng(2)
    positions, cell = torch.tensor(atoms.positions), torch.tensor(atoms.cell.array)
    widths = torch.tensor(rng.uniform(0.25, 0.42, len(atoms)))
    charges = torch.tensor(rng.normal(size=(len(atoms), 3)))
    charges += (total_charge - charges.sum(0)) / len(atoms)
    operator = GaussianCoulombOperator(cutoff=4.0, accuracy=1e-3, method=method, cache_max_bytes=cache_max_bytes)
    edges, lengths = full_pair_list(positions, cell, 4.0)
    pbc = torch.tensor(pbc)
    same_method = GaussianCoulombOperator(cutoff=4.0, accuracy=1e-3, method="pme" if cached == "pme" else "ewald")
    if cached == "direct":
        edges, lengths = edges[:, :0], lengths[:0]
    cache = operator._prepare_products(positions, widths, cell, pbc, charges.shape[1])
    reference = same_method.apply(charges, positions, widths, cell, pbc, edges, lengths)
    assert ("cos" in cache) == (cached == "phases") and ("direct" in cache) == (cached == "direct")
    for _ in range(2):  # the cache is reused, not consumed
        product = operator._product(charges, positions, widths, cell, pbc, edges, lengths, cache)
        torch.testing.assert_close(product, reference, rtol=0, atol=1e-12 * float(reference.abs().max()))


@pytest.mark.parametrize("periodic", [True, False])
@pytest.mark.parametrize("total_charge", [0.0, 1.0])
def test_dense_and_iterative_solvers_match_numpy(periodic, total_charge):
    atoms = ion_box(seed=5)
    rng = np.random.default_rng(1)
    n = len(atoms)
    positions, cell = torch.tensor(atoms.positions), torch.tensor(atoms.cell.array)
    chi, hardness = torch.tensor(rng.normal(size=n)), torch.tensor(rng.uniform(0.0, 5.0, n))
    widths = torch.tensor(rng.uniform(0.25, 0.42, n))
    pbc = torch.tensor([periodic] * 3)
    dense = equilibrate_charges(positions, chi, hardness, widths, cell, pbc, total_charge, solver="dense", accuracy=1e-8)
    operator = GaussianCoulombOperator(cutoff=4.0, accuracy=1e-8)
    edges, lengths = full_pair_list(positions, cell, 4.0) if periodic else (torch.zeros((2, 0), dtype=torch.long),
                                                                           torch.zeros(0))
    matrix = (operator.matrix(positions, widths, cell, pbc, edges, lengths) + torch.diag(hardness)).numpy()
    charges, mu = bordered_numpy_solve(matrix, chi.numpy(), total_charge)
    np.testing.assert_allclose(dense["charges"].detach().numpy(), charges, rtol=0, atol=1e-10)
    assert float(dense["chemical_potential"]) == pytest.approx(mu, abs=1e-10)
    assert float(dense["charges"].sum()) == pytest.approx(total_charge, abs=1e-10)
    condition = np.linalg.cond(matrix)
    assert condition < 100
    for tolerance in (1e-5, 1e-10):
        iterative = equilibrate_charges(positions, chi, hardness, widths, cell, pbc, total_charge, solver="iterative",
                                        accuracy=1e-8, tolerance=tolerance)
        error = np.abs(iterative["charges"].numpy() - charges).max()
        assert error <= condition * tolerance * np.abs(charges).max(), (tolerance, error)
        assert float(iterative["charges"].sum()) == pytest.approx(total_charge, abs=1e-10)
        assert int(iterative["iterations"]) > 0


def test_solver_charges_invariant_under_rotation_translation_and_permutation():
    atoms = molecule("CH3CH2OH") + molecule("H2O")
    atoms.positions[-3:] += [3.0, 0.5, 0.0]
    rng = np.random.default_rng(2)
    n = len(atoms)
    chi, hardness, widths = rng.normal(size=n), rng.uniform(1.0, 3.0, n), rng.uniform(0.4, 0.8, n)
    reference = equilibrate_charges(torch.tensor(atoms.positions), chi, hardness, widths, total_charge=-1.0)["charges"]
    rotation = Rotation.random(random_state=3).as_matrix()
    moved = atoms.positions @ rotation.T + [10.0, -3.0, 2.0]
    permutation = rng.permutation(n)
    for solver in ("dense", "iterative"):
        charges = equilibrate_charges(torch.tensor(moved[permutation]), chi[permutation], hardness[permutation],
                                      widths[permutation], total_charge=-1.0, solver=solver)["charges"]
        torch.testing.assert_close(charges, reference[permutation].detach(), rtol=0, atol=1e-9)


def test_standalone_api_rejects_bad_input():
    positions = torch.tensor([[0.0, 0.0, 0.0], [1.0, 0.0, 0.0]])
    good = dict(electronegativity=[0.0, 1.0], hardness=[1.0, 1.0], widths=[0.5, 0.5])
    from mace_lr.electrostatics import ElectrostaticsInputError

    for change, message in [({"widths": [0.5, 0.0]}, "widths > 0"), ({"hardness": [1.0, -1.0]}, "hardness must be"),
                            ({"electronegativity": [0.0]}, "one value per atom"),
                            ({"electronegativity": [0.0, float("nan")]}, "NaN")]:
        with pytest.raises(ElectrostaticsInputError, match=message):
            equilibrate_charges(positions, **{**good, **change})
    with pytest.raises(ValueError, match="solver"):
        equilibrate_charges(positions, **good, solver="magic")


# ------------------------------------------------------------------ the qeq head


def test_qeq_head_cannot_be_combined_with_other_charge_heads():
    for text in ("qeq+latent", "charges+qeq"):
        with pytest.raises(ValueError, match="cannot be combined"):
            parse_long_range(text)
    with pytest.raises(ValueError, match="cannot be combined"):
        LongRangeConfig(heads=("latent", "qeq"))


def test_iterative_head_equals_dense_head_for_every_output():
    """Envelope theorem (forces, stress) and adjoint solve (BEC) make the non-differentiated solve exact."""
    dense, iterative = qeq_model("dense"), qeq_model("iterative")
    iterative.load_state_dict(dense.state_dict())
    for atoms in (water_cluster(charge=1.0), nacl_crystal()):
        periodic = bool(atoms.pbc.all())
        out_dense = dense(batch_dict([atoms], dense), compute_stress=periodic, compute_bec=True)
        out_iterative = iterative(batch_dict([atoms], dense), compute_stress=periodic, compute_bec=True)
        assert float(out_dense["charges"].abs().max()) > 0.05
        for key in ("energy", "forces", "charges", "dipole", "bec", "node_energy") + (("stress",) if periodic else ()):
            torch.testing.assert_close(out_iterative[key], out_dense[key], rtol=0, atol=1e-9, msg=key)


def test_qeq_forces_and_stress_equal_finite_differences(tmp_path):
    """Dense solver; the iterative one gives the same numbers (test_iterative_head_equals_dense_head...)."""
    path = tmp_path / "qeq.model"
    torch.save(qeq_model("dense"), path)
    for atoms in (nacl_crystal(), water_cluster(charge=-1.0)):
        atoms.calc = MACELRCalculator(str(path))
        forces = atoms.get_forces()
        assert np.abs(forces).max() > 0.01
        np.testing.assert_allclose(forces, calculate_numerical_forces(atoms, eps=1e-4), atol=1e-6)
        if atoms.pbc.all():
            np.testing.assert_allclose(atoms.get_stress(), calculate_numerical_stress(atoms, eps=1e-5), atol=1e-6)
        bec = atoms.calc.get_property("bec", atoms)
        # charge response: without it BEC would be q_i * identity
        charges = atoms.calc.results["charges"]
        assert np.abs(bec - charges[:, None, None] * np.eye(3)).max() > 1e-3


def test_bec_of_qeq_equals_finite_difference_of_dipole_and_obeys_sum_rule():
    model = qeq_model("iterative")
    atoms = water_cluster(charge=0.0)
    out = model(batch_dict([atoms], model), compute_bec=True)
    step = 1e-4
    numerical = np.zeros((len(atoms), 3, 3))
    for i in range(len(atoms)):
        for a in range(3):
            dipoles = []
            for sign in (1, -1):
                moved = atoms.copy()
                moved.positions[i, a] += sign * step
                dipoles.append(model(batch_dict([moved], model))["dipole"][0].detach().numpy())
            numerical[i, a] = (dipoles[0] - dipoles[1]) / (2 * step)
    np.testing.assert_allclose(out["bec"].detach().numpy(), numerical, atol=1e-6)
    # a rigid translation of a neutral molecule does not change its dipole: sum_i Z*_i = 0
    np.testing.assert_allclose(out["bec"].detach().numpy().sum(0), np.zeros((3, 3)), atol=1e-9)


def test_charges_flow_between_fragments_far_beyond_the_receptive_field():
    """Changing one fragment changes the charges of another 30 Å away (receptive field 2 x 4 Å)."""
    first = water_cluster(seed=2)
    second = molecule("H2O")
    second.translate([30.0, 0.0, 0.0])
    changed = second.copy()
    changed.positions[1] += [0.1, -0.05, 0.05]
    charges = {}
    for name, model in (("qeq", qeq_model()), ("charges", qeq_model(heads=("charges",)))):
        for label, partner in (("before", second), ("after", changed)):
            atoms = first + partner
            atoms.info["total_charge"] = 1.0
            charges[name, label] = model(batch_dict([atoms], model))["charges"][: len(first)].detach().numpy()
    # A local model's charges move only through the total-charge correction, which shifts every atom
    # by the same amount; QEq redistributes charge within the distant fragment.
    def non_uniform_shift(name: str) -> float:
        shift = charges[name, "after"] - charges[name, "before"]
        return float(np.abs(shift - shift.mean()).max())

    assert non_uniform_shift("qeq") > 1e-4
    assert non_uniform_shift("charges") < 1e-12


def test_total_charge_mixed_batch_and_torchscript():
    model = qeq_model()
    structures = [nacl_crystal(), water_cluster(charge=1.0), water_cluster(seed=5, charge=-2.0)]
    together = model(batch_dict(structures, model), compute_stress=True, compute_bec=True)
    start = 0
    for atoms in structures:
        alone = model(batch_dict([atoms], model), compute_stress=bool(atoms.pbc.all()), compute_bec=True)
        stop = start + len(atoms)
        charges = together["charges"][start:stop]
        assert float(charges.sum()) == pytest.approx(atoms.info.get("total_charge", 0.0), abs=1e-10)
        torch.testing.assert_close(charges, alone["charges"], rtol=0, atol=1e-10)
        torch.testing.assert_close(together["forces"][start:stop], alone["forces"], rtol=0, atol=1e-10)
        start = stop
    iterative = qeq_model("iterative")
    iterative.load_state_dict(model.state_dict())
    for eager in (model, iterative):  # auto picks the dense solver here; the iterative path compiles too
        scripted = jit.compile(eager)(batch_dict(structures, model), compute_stress=True, compute_bec=True)
        for key in ("energy", "forces", "stress", "charges", "dipole", "bec"):
            torch.testing.assert_close(scripted[key], together[key], rtol=0, atol=1e-9, msg=key)


def test_periodic_width_limit_is_a_clear_error():
    model = qeq_model(qeq_max_width=2.0)  # fine for molecules, too wide for r_max = 4 Å in a crystal
    model(batch_dict([water_cluster()], model))
    with pytest.raises(RuntimeError, match="real-space part would extend past the cutoff"):
        model(batch_dict([nacl_crystal()], model))


def test_auto_solver_avoids_dense_solves_that_would_not_fit_in_memory():
    """A periodic dense solve holds the k-space sums once per atom; auto must switch to CG before that
    exhausts memory, and training (always dense) must stop with a clear error."""
    auto, dense = qeq_model("auto"), qeq_model("dense")
    dense.load_state_dict(auto.state_dict())
    crystal = nacl_crystal()
    head = auto.long_range_heads[0]
    cell = torch.tensor(crystal.cell.array)
    small = head.operator.dense_memory_bytes(len(crystal), cell, torch.ones(3, dtype=torch.bool))
    large = head.operator.dense_memory_bytes(8 * len(crystal), 2 * cell, torch.ones(3, dtype=torch.bool))
    assert 0 < small < large  # grows with atoms x mesh
    assert head.operator.dense_memory_bytes(100, cell, torch.zeros(3, dtype=torch.bool)) == 32.0 * 100 * 100
    solves = []
    conjugate_gradient = head.operator.conjugate_gradient
    head.operator.conjugate_gradient = lambda *args: solves.append(1) or conjugate_gradient(*args)
    auto(batch_dict([crystal], auto))
    assert solves == []  # fits: dense
    head.dense_max_bytes = 0.5 * small  # pretend the machine is tiny
    out_auto = auto(batch_dict([crystal], auto))
    assert len(solves) == 1  # CG
    out_dense = dense(batch_dict([crystal], dense))
    torch.testing.assert_close(out_auto["charges"], out_dense["charges"], rtol=0, atol=1e-9)
    with pytest.raises(RuntimeError, match="train on smaller cells"):
        auto(batch_dict([crystal], auto), training=True)


def test_dense_solve_falls_back_to_lu_when_the_matrix_is_not_positive_definite():
    """A coarse k-space accuracy can leave C + diag(J) slightly indefinite; the bordered solve still holds."""
    from mace_lr.electrostatics.qeq import dense_equilibration

    rng = np.random.default_rng(3)
    basis = np.linalg.qr(rng.normal(size=(6, 6)))[0]
    matrix = basis @ np.diag([-0.05, 0.5, 1.0, 2.0, 3.0, 4.0]) @ basis.T  # one small negative eigenvalue
    chi = rng.normal(size=6)
    charges, mu = dense_equilibration(torch.tensor(matrix), torch.tensor(chi), torch.tensor(0.5))
    expected, expected_mu = bordered_numpy_solve(matrix, chi, 0.5)
    np.testing.assert_allclose(charges.numpy(), expected, rtol=0, atol=1e-10)
    assert float(mu) == pytest.approx(expected_mu, abs=1e-10)
