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


SLAB_VACUUM = 25.0  # Å: wider than every real-space cutoff here, so z images never pair


def slab_geometry(positions: torch.Tensor, cell: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The ions of ion_box as a slab: SLAB_VACUUM Å of vacuum along z, the ions in the middle.

    Slab sums (3D sum + Yeh-Berkowitz correction) describe a slab only with vacuum; without it the
    result depends on how the real-space images along z are counted (the engine's PeriodicCoulomb
    omits them, QEq keeps them for a complete 3D sum) and on the splitting width.
    """
    slab_cell = cell.clone()
    slab_cell[2, 2] += SLAB_VACUUM
    return positions + torch.tensor([0.0, 0.0, 0.5 * SLAB_VACUUM], dtype=positions.dtype), slab_cell


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
    sum at 1e-9, charged cell included: products C q at accuracy 1e-5, measured max error 1.2e-6 (3D)
    and 6e-7 (slab) of the largest potential; tolerance the requested 1e-5."""
    atoms = ion_box(seed=3)
    rng = np.random.default_rng(4)
    positions, cell = torch.tensor(atoms.positions), torch.tensor(atoms.cell.array)
    if not all(pbc):
        positions, cell = slab_geometry(positions, cell)
    widths = torch.tensor(rng.uniform(0.25, 0.42, len(atoms)))
    charges = torch.tensor(rng.normal(size=len(atoms)))
    charges += (0.7 - charges.sum()) / len(atoms)
    pbc = torch.tensor(pbc)
    operator = GaussianCoulombOperator(cutoff=4.0, accuracy=1e-5, method="pme")
    assert operator.plan(positions, widths, cell).method == "pme"
    no_edges = torch.zeros((2, 0), dtype=torch.long), torch.zeros(0)
    product = operator.apply(charges.unsqueeze(-1), positions, widths, cell, pbc, *no_edges).squeeze(-1)
    reference = Electrostatics(method="ewald", accuracy=1e-9)(
        positions, charges, cell[None], pbc[None], widths=widths, compute_field=False)["potential"]
    self_potential = COULOMB_CONSTANT * charges / (np.sqrt(np.pi) * widths)  # C holds the self term, the engine not
    torch.testing.assert_close(product - self_potential, reference, rtol=0,
                               atol=1e-5 * float(reference.abs().max()))


@pytest.mark.parametrize("method,pbc,cache_max_bytes,cached", [
    ("ewald", (True, True, True), 2e9, "kspace"),
    ("ewald", (True, True, False), 2e9, "kspace"),  # slab correction
    ("pme", (True, True, True), 2e9, "kspace"),
    ("pme", (True, True, False), 2e9, "kspace"),
    ("ewald", (False, False, False), 2e9, "direct"),  # open boundaries: the pair kernel is kept
    ("ewald", (False, False, False), 10.0, "nothing"),  # pair kernel over the cap: blocked sums per product
])
@pytest.mark.parametrize("total_charge", [0.0, 1.5])
def test_products_from_prepared_kspace_factors_equal_fresh_calls(method, pbc, cache_max_bytes, cached,
                                                                 total_charge):
    """CG prepares the reciprocal sum (phase tables / PME weights, kernel, remainder pairs) or the open
    pair kernel once and reuses it across products; each product must equal a fresh ``apply``.

    Equal to rounding (1e-12 relative): the same plan, the same arithmetic. Accuracy 1e-3 keeps the
    PME mesh small; the PME mesh itself is checked against the engine above.
    """
    atoms = ion_box(seed=7)
    rng = np.random.default_rng(2)
    positions, cell = torch.tensor(atoms.positions), torch.tensor(atoms.cell.array)
    widths = torch.tensor(rng.uniform(0.25, 0.42, len(atoms)))
    charges = torch.tensor(rng.normal(size=(len(atoms), 3)))
    charges += (total_charge - charges.sum(0)) / len(atoms)
    operator = GaussianCoulombOperator(cutoff=4.0, accuracy=1e-3, method=method, cache_max_bytes=cache_max_bytes)
    pbc = torch.tensor(pbc)
    no_edges = torch.zeros((2, 0), dtype=torch.long), torch.zeros(0)
    reference = operator.apply(charges, positions, widths, cell, pbc, *no_edges)
    for for_solve in (False, True):  # True: the remainder as a sparse matrix, as CG uses it
        cache = operator.prepare(positions, widths, cell, pbc, for_solve)
        assert ("kernel" in cache) == (cached == "kspace") and ("direct" in cache) == (cached == "direct")
        assert ("remainder" in cache) == (for_solve and cached == "kspace")
        if cached == "kspace":
            assert operator.plan(positions, widths, cell).method == method
            assert cache["pair_i"].numel() > 0  # unequal widths: a real-space remainder
        for _ in range(2):  # the cache is reused, not consumed
            product = operator.product(charges, positions, widths, cell, pbc, cache)
            torch.testing.assert_close(product, reference, rtol=0, atol=1e-12 * float(reference.abs().max()))
        operator.release()


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
    """Dense solver; the iterative one gives the same numbers (test_iterative_head_equals_dense_head...).

    Accuracy 1e-9: the real-space remainder ends at the plan's cutoff, where it is of the
    order of the requested accuracy; a pair crossing the cutoff within the FD step (at 1e-5,
    one pair of the crystal sits 3e-5 Å inside) makes the energy jump by ~1e-8 eV, i.e. 4e-5 eV/Å
    in a central difference of step 1e-4 Å. At 1e-9 such a jump is ~1e-12 eV, far below atol.
    """
    path = tmp_path / "qeq.model"
    torch.save(qeq_model("dense", accuracy=1e-9), path)
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


def test_wide_gaussians_in_a_crystal_need_no_larger_graph_cutoff():
    """The splitting width follows the widest Gaussian, not r_max: widths far above the former periodic
    limit (sigma(r_max = 4 Å) / sqrt 2 = 0.54 Å) are summed in a crystal; dense and iterative agree as
    for narrow widths (1e-9: both solve the same matrix, CG tolerance 1e-12)."""
    from mace_lr.electrostatics.qeq import default_max_width

    dense, iterative = qeq_model("dense", qeq_max_width=2.0), qeq_model("iterative", qeq_max_width=2.0)
    iterative.load_state_dict(dense.state_dict())
    head = dense.long_range_heads[0]
    assert float(head.element_width().max()) > 2.5 * default_max_width(4.0, 1e-5)
    crystal = nacl_crystal()
    out_dense = dense(batch_dict([crystal], dense), compute_stress=True)
    out_iterative = iterative(batch_dict([crystal], dense), compute_stress=True)
    assert float(out_dense["charges"].abs().max()) > 0.01
    for key in ("energy", "forces", "stress", "charges"):
        torch.testing.assert_close(out_iterative[key], out_dense[key], rtol=0, atol=1e-9, msg=key)


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


# ------------------------------------------------------------------ the k-space layer


@pytest.fixture(scope="module")
def converged_reference():
    """{pbc: (positions, cell, widths, C)} for ion_box (slab: with vacuum, slab_geometry): C (V/e) from
    the engine's Ewald at accuracy 1e-10 (its own plan and pair list), one unit-charge column at a time,
    plus the self-energy."""
    atoms = ion_box(seed=11)
    rng = np.random.default_rng(5)
    positions, cell = torch.tensor(atoms.positions), torch.tensor(atoms.cell.array)
    widths = torch.tensor(rng.uniform(0.3, 0.9, len(atoms)))
    engine = Electrostatics(method="ewald", accuracy=1e-10)
    references = {}
    for pbc in ((True, True, True), (True, True, False)):
        if not all(pbc):
            positions, cell = slab_geometry(positions, cell)
        columns = []
        for k in range(len(atoms)):
            unit = torch.zeros(len(atoms), dtype=torch.float64)
            unit[k] = 1.0
            columns.append(engine(positions, unit, cell[None], torch.tensor(pbc)[None], widths=widths,
                                  compute_field=False)["potential"])
        matrix = torch.stack(columns, dim=1) + torch.diag(COULOMB_CONSTANT / (np.sqrt(np.pi) * widths))
        references[pbc] = positions, cell, widths, 0.5 * (matrix + matrix.T)
    return references


@pytest.mark.parametrize("method", ["ewald", "pme"])
@pytest.mark.parametrize("pbc", [(True, True, True), (True, True, False)], ids=["3D", "slab"])
@pytest.mark.parametrize("total_charge", [0.0, 1.0])
def test_periodic_charges_and_energy_match_a_converged_reference(converged_reference, method, pbc, total_charge):
    """Charges and energy from the planner's Ewald or PME (accuracy 1e-6) against numpy's bordered solve
    with the converged Ewald matrix, both solvers.

    Tolerances tied to the request: max |dq| <= accuracy * max |q| and |dE| <= accuracy * |E| (measured
    0.03-0.14x and 0.01-0.33x of those bounds over methods, 3D/slab, neutral/charged; the charge error
    follows the potential error, which the planner keeps below the requested relative accuracy). At
    1e-8 the errors shrink in proportion (0.04-0.06x of the bound for the charges), so the agreement is
    convergence, not luck.
    """
    positions, cell, widths, matrix = converged_reference[pbc]
    n = len(positions)
    rng = np.random.default_rng(6)
    chi, hardness = torch.tensor(rng.normal(size=n)), torch.tensor(rng.uniform(1.0, 5.0, n))
    expected, expected_mu = bordered_numpy_solve((matrix + torch.diag(hardness)).numpy(), chi.numpy(), total_charge)
    expected = torch.tensor(expected)
    energy = float(chi @ expected + 0.5 * (hardness * expected**2).sum() + 0.5 * expected @ matrix @ expected)
    scale = float(expected.abs().max())
    for accuracy in (1e-6, 1e-8):
        for solver in ("dense", "iterative"):
            result = equilibrate_charges(positions, chi, hardness, widths, cell, torch.tensor(pbc), total_charge,
                                         solver=solver, accuracy=accuracy, tolerance=1e-12, method=method)
            error = float((result["charges"].detach() - expected).abs().max())
            assert error <= accuracy * scale, (solver, accuracy, error / scale)
            assert abs(float(result["energy"]) - energy) <= accuracy * abs(energy), (solver, accuracy)
            assert float(result["charges"].sum()) == pytest.approx(total_charge, abs=1e-10)


def test_charges_do_not_depend_on_the_graph_cutoff():
    """Operators built for r_max = 3 and 9 Å, each given its own graph's edges, plan the same sum
    (sigma from the widths, cutoffs from the accuracy): the same charges to rounding (1e-12), and the
    splitting width is not the former r_max / x."""
    atoms = ion_box(seed=2)
    rng = np.random.default_rng(7)
    n = len(atoms)
    positions, cell = torch.tensor(atoms.positions), torch.tensor(atoms.cell.array)
    chi, hardness = torch.tensor(rng.normal(size=n)), torch.tensor(rng.uniform(1.0, 5.0, n))
    widths = torch.tensor(rng.uniform(0.3, 0.6, n))
    pbc = torch.ones(3, dtype=torch.bool)
    results = {}
    for cutoff in (3.0, 9.0):
        operator = GaussianCoulombOperator(cutoff=cutoff, accuracy=1e-6)
        edges, lengths = full_pair_list(positions, cell, cutoff)
        for dense in (True, False):
            results[cutoff, dense] = operator.equilibrate(chi, hardness, torch.tensor(0.0), positions, widths, cell,
                                                          pbc, edges, lengths, dense, 1e-12, 1000)["charges"]
    for dense in (True, False):
        torch.testing.assert_close(results[3.0, dense], results[9.0, dense], rtol=0, atol=1e-12)
    plans = [GaussianCoulombOperator(cutoff=c, accuracy=1e-6).plan(positions, widths, cell) for c in (3.0, 9.0)]
    assert plans[0] == plans[1] and plans[0].smearing >= np.sqrt(2.0) * float(widths.max())


def test_memory_budget_refusal_comes_from_the_planner():
    atoms = ion_box()
    positions, cell = torch.tensor(atoms.positions), torch.tensor(atoms.cell.array)
    n = len(atoms)
    operator = GaussianCoulombOperator(accuracy=1e-6, memory_budget=1e3)
    with pytest.raises(RuntimeError, match="above the memory budget"):
        operator.equilibrate(torch.zeros(n), torch.ones(n), torch.tensor(0.0), positions, torch.full((n,), 0.4), cell,
                             torch.ones(3, dtype=torch.bool), torch.zeros((2, 0), dtype=torch.long), torch.zeros(0),
                             False, 1e-8, 100)


def test_dense_solve_has_second_derivatives_in_a_periodic_cell():
    """Training differentiates forces (from the solved charges) again: gradgradcheck of the dense QEq energy
    in positions and widths, Ewald and PME, with unequal widths (real-space remainder) and a slab."""
    atoms = random_neutral_ions(3, np.eye(3) * 5.0, seed=1)
    rng = np.random.default_rng(8)
    n = len(atoms)
    cell = torch.tensor(atoms.cell.array)
    chi, hardness = torch.tensor(rng.normal(size=n)), torch.tensor(rng.uniform(1.0, 5.0, n))
    no_edges = torch.zeros((2, 0), dtype=torch.long), torch.zeros(0)
    for method, pbc in (("ewald", (True, True, True)), ("pme", (True, True, False))):
        operator = GaussianCoulombOperator(accuracy=1e-4, method=method)
        pbc = torch.tensor(pbc)

        def energy(positions, widths):
            result = operator.equilibrate(chi, hardness, torch.tensor(0.5), positions, widths, cell, pbc, *no_edges,
                                          True, 1e-10, 100)
            q = result["charges"]
            return (chi * q).sum() + 0.5 * (hardness * q * q).sum() + 0.5 * (q * result["potential"]).sum()

        inputs = (torch.tensor(atoms.positions, requires_grad=True),
                  torch.tensor(rng.uniform(0.3, 0.5, n), requires_grad=True))
        assert torch.autograd.gradgradcheck(energy, inputs, eps=1e-6, atol=1e-5, rtol=1e-4)


def test_old_pickled_operator_loads_and_matches():
    """An operator pickled before the k-space layer (torch-pme calculators, sigma tied to the cutoff)
    is upgraded on load: the same numbers as a new one (bitwise: the same plan), no stale state."""
    import pickle

    import torchpme

    from mace_lr.electrostatics.channel_mesh import ChannelKernelMesh

    new = GaussianCoulombOperator(cutoff=4.0, accuracy=1e-6, method="ewald")
    old = GaussianCoulombOperator(cutoff=4.0, accuracy=1e-6, method="ewald")
    # the state an operator saved before the k-space layer carries
    for name in ("planner", "dense_planner", "reciprocal", "slab"):
        del old._modules[name]
    del old.__dict__["plan_channels"]
    old._modules["ewald"] = torchpme.EwaldCalculator(torchpme.CoulombPotential(smearing=0.7), lr_wavelength=0.4)
    old._modules["mesh"] = ChannelKernelMesh(0.3, 6)
    old.__dict__.update(smearing=0.7, periodic_max_width=0.49, lr_wavelength=0.4, mesh_spacing=0.3,
                        pme_threshold=3000, ewald_max_work=5e7)
    loaded = pickle.loads(pickle.dumps(old))
    for stale in ("ewald", "mesh", "smearing", "periodic_max_width", "lr_wavelength", "pme_threshold"):
        assert not hasattr(loaded, stale), stale
    atoms = ion_box(seed=4)
    rng = np.random.default_rng(9)
    n = len(atoms)
    args = (torch.tensor(rng.normal(size=n)), torch.tensor(rng.uniform(1.0, 5.0, n)), torch.tensor(0.0),
            torch.tensor(atoms.positions), torch.tensor(rng.uniform(0.3, 0.6, n)), torch.tensor(atoms.cell.array),
            torch.ones(3, dtype=torch.bool), torch.zeros((2, 0), dtype=torch.long), torch.zeros(0))
    for dense in (True, False):
        expected = new.equilibrate(*args, dense, 1e-12, 1000)["charges"]
        torch.testing.assert_close(loaded.equilibrate(*args, dense, 1e-12, 1000)["charges"], expected, rtol=0, atol=0)
