"""Electrostatics engine against independent truth: numpy loops, finite differences,
analytic limits, and agreement between independent summation methods."""

import math

import numpy as np
import pytest
import torch
from ase import Atoms
from ase.calculators.fd import calculate_numerical_forces, calculate_numerical_stress
from helpers import numpy_coulomb, random_neutral_ions

from mace_lr.calculators import CoulombCalculator
from mace_lr.electrostatics import (
    COULOMB_CONSTANT as KE,
    Electrostatics,
    ElectrostaticsInputError,
    KSpaceParameters,
    choose_parameters,
)

TRICLINIC = np.array([[9.0, 0.0, 0.0], [2.1, 8.5, 0.0], [-1.3, 1.7, 10.2]])


def run(atoms, method="auto", smearing=0.0, accuracy=1e-6, field=False, dipoles=None):
    engine = Electrostatics(method=method, smearing=smearing, accuracy=accuracy)
    return engine(
        torch.tensor(atoms.positions),
        torch.tensor(atoms.get_initial_charges()),
        torch.tensor(atoms.cell.array).unsqueeze(0),
        torch.tensor(atoms.pbc).unsqueeze(0),
        dipoles=None if dipoles is None else torch.tensor(dipoles),
        compute_field=field,
    )


def molecule(n=12, seed=3, smear=False):
    rng = np.random.default_rng(seed)
    positions = rng.normal(scale=2.5, size=(n, 3))
    charges = rng.normal(size=n)
    charges -= charges.mean()
    atoms = Atoms(["O"] * n, positions=positions)
    atoms.set_initial_charges(charges)
    return atoms


# ----------------------------------------------------------------- open boundaries
@pytest.mark.parametrize("smearing", [0.0, 0.7])
def test_direct_sum_equals_numpy_double_loop(smearing):
    atoms = molecule()
    out = run(atoms, smearing=smearing, field=True)
    energy, potential, field = numpy_coulomb(atoms.positions, atoms.get_initial_charges(), smearing)
    assert out["energy"].item() == pytest.approx(KE * energy, rel=1e-12, abs=1e-12)
    np.testing.assert_allclose(out["potential"].numpy(), KE * potential, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(out["field"].numpy(), KE * field, rtol=1e-12, atol=1e-12)


def test_direct_sum_blocks_rows_for_large_molecules(monkeypatch):
    import mace_lr.electrostatics.direct as direct

    atoms = molecule(n=40)
    reference = run(atoms, field=True)
    monkeypatch.setattr(direct, "BLOCK_ROWS", 7)
    blocked = run(atoms, field=True)
    for key in ("energy", "potential", "field"):
        torch.testing.assert_close(blocked[key], reference[key], rtol=1e-13, atol=1e-13)


SLAB_CELL = np.array([[9.0, 0.0, 0.0], [2.1, 8.5, 0.0], [0.0, 0.0, 30.0]])


@pytest.mark.parametrize("method", ["ewald", "pme"])
@pytest.mark.parametrize("geometry", ["3d", "slab"])
@pytest.mark.parametrize("smearing", [0.0, 0.6])
def test_potential_is_energy_derivative_and_force_is_charge_times_field(method, geometry, smearing):
    cell = TRICLINIC if geometry == "3d" else SLAB_CELL
    atoms = random_neutral_ions(6, cell, seed=1)
    if geometry == "slab":
        atoms.positions[:, 2] *= 8.0 / 30.0  # a 8 Å thick slab with 22 Å of vacuum
    positions = torch.tensor(atoms.positions, requires_grad=True)
    charges = torch.tensor(atoms.get_initial_charges(), requires_grad=True)
    pbc = torch.tensor([[True, True, geometry == "3d"]])
    engine = Electrostatics(method=method, smearing=smearing, accuracy=1e-8)
    out = engine(positions, charges, torch.tensor(cell)[None], pbc, compute_field=True)
    dq, dr = torch.autograd.grad(out["energy"].sum(), [charges, positions])
    # potential = dE/dq (exact identity of the implementation up to summation error)
    torch.testing.assert_close(out["potential"], dq, rtol=1e-9, atol=1e-9)
    # the ghost-site field reproduces the forces: F_i = q_i E_i
    torch.testing.assert_close(-dr, charges.detach()[:, None] * out["field"], rtol=1e-6, atol=1e-6)


# ------------------------------------------------------------ finite differences
@pytest.mark.parametrize("method,accuracy,tolerance", [("ewald", 1e-10, 1e-6), ("pme", 1e-6, 1e-5)])
@pytest.mark.parametrize("smearing", [0.0, 0.8])
def test_forces_and_stress_equal_central_differences(method, accuracy, tolerance, smearing):
    atoms = random_neutral_ions(5, TRICLINIC, seed=7)
    atoms.calc = CoulombCalculator(method=method, smearing=smearing, accuracy=accuracy)
    forces = atoms.get_forces()
    stress = atoms.get_stress()
    numeric_forces = calculate_numerical_forces(atoms, eps=1e-4)
    numeric_stress = calculate_numerical_stress(atoms, eps=1e-5)
    scale_f = np.abs(forces).max()
    scale_s = np.abs(stress).max()
    # relative to the largest component; FD error (h^2 ~ 1e-8) is far below
    assert np.abs(forces - numeric_forces).max() < tolerance * scale_f
    assert np.abs(stress - numeric_stress).max() < tolerance * scale_s


def test_open_boundary_forces_equal_central_differences():
    atoms = molecule(smear=True)
    atoms.calc = CoulombCalculator(smearing=0.5)
    forces = atoms.get_forces()
    numeric = calculate_numerical_forces(atoms, eps=1e-4)
    assert np.abs(forces - numeric).max() < 1e-7 * np.abs(forces).max()
    assert "stress" not in atoms.calc.results


# ------------------------------------------------------------ periodic physics
def test_charged_cell_energy_independent_of_splitting():
    atoms = random_neutral_ions(4, TRICLINIC, seed=2)
    charges = atoms.get_initial_charges()
    charges[0] = 2.0  # net charge +1
    atoms.set_initial_charges(charges)
    energies = []
    for sigma in (0.9, 1.4, 2.2):
        params = KSpaceParameters("ewald", smearing=sigma, cutoff=sigma * 7.5, lr_wavelength=math.pi * sigma / 7.5)
        engine = Electrostatics(parameters=params)
        with pytest.warns(UserWarning, match="neutralising background"):
            out = engine(torch.tensor(atoms.positions), torch.tensor(charges), torch.tensor(TRICLINIC)[None], torch.ones(1, 3, dtype=torch.bool))
        energies.append(out["energy"].item())
    assert np.ptp(energies) < 1e-8 * abs(energies[0])


def test_charged_cell_without_background_would_depend_on_splitting():
    """Control for the test above: the background term is what removes the sigma dependence."""
    from torchpme import CoulombPotential

    sigmas = (0.9, 2.2)
    values = [math.pi * s**2 * 1.0**2 / abs(np.linalg.det(TRICLINIC)) for s in sigmas]
    assert abs(values[1] - values[0]) > 1e-3  # background term changes by this much
    assert float(CoulombPotential(smearing=1.0).background_correction()) == pytest.approx(math.pi)


def test_neutral_molecule_in_big_box_matches_open_boundaries_with_tinfoil_term():
    """Cubic box, tin-foil Ewald: E_pbc = E_isolated - 2 pi M^2 / (3 V) + O(L^-5)."""
    mol = molecule(n=6, seed=11)
    mol.positions *= 0.4
    for smearing in (0.0, 0.6):
        isolated = run(mol, smearing=smearing)["energy"].item()
        box = mol.copy()
        box.set_cell(np.eye(3) * 40.0)
        box.pbc = True
        box.center()
        periodic = run(box, method="ewald", smearing=smearing, accuracy=1e-9)["energy"].item()
        dipole = (box.get_initial_charges()[:, None] * box.positions).sum(0)
        correction = -KE * 2 * math.pi * (dipole @ dipole) / (3 * box.get_volume())
        assert periodic == pytest.approx(isolated + correction, rel=2e-6)


def test_ewald_and_pme_agree_on_1000_atoms():
    rng = np.random.default_rng(5)
    n_side = 10
    spacing = 2.2
    grid = np.stack(np.meshgrid(*[np.arange(n_side)] * 3, indexing="ij"), -1).reshape(-1, 3)
    positions = (grid + rng.uniform(-0.25, 0.25, grid.shape)) * spacing
    charges = rng.permutation(np.repeat([1.0, -1.0], 500))
    atoms = Atoms(["Na"] * 1000, positions=positions, cell=np.eye(3) * n_side * spacing, pbc=True)
    atoms.set_initial_charges(charges)
    accuracy = 1e-5
    results = {}
    for method in ("ewald", "pme"):
        atoms.calc = CoulombCalculator(method=method, accuracy=accuracy)
        results[method] = (atoms.get_potential_energy(), atoms.get_forces())
    (e_ew, f_ew), (e_pme, f_pme) = results["ewald"], results["pme"]
    force_scale = KE / spacing**2  # nearest-neighbour Coulomb force of unit charges
    rms = np.sqrt(((f_ew - f_pme) ** 2).sum(1).mean())
    # each sum meets the request (RMS force relative to k_e / a^2; energy per atom to k_e / a),
    # so two independent ones differ by up to twice it (measured: energy 1.2x the single request)
    assert rms < 2.0 * accuracy * force_scale
    assert abs(e_ew - e_pme) / len(atoms) < 2.0 * accuracy * KE / spacing


# --------------------------------------------------------------------- dipoles
def numpy_dipoles(positions, charges, dipoles):
    n = len(positions)
    energy = 0.0
    field = np.zeros((n, 3))
    for i in range(n):
        for j in range(n):
            if i == j:
                continue
            r = positions[i] - positions[j]
            d = np.linalg.norm(r)
            field[i] += charges[j] * r / d**3 + (3 * (dipoles[j] @ r) * r / d**5 - dipoles[j] / d**3)
            if j > i:
                energy += charges[i] * charges[j] / d
                energy += charges[i] * (dipoles[j] @ r) / d**3 - charges[j] * (dipoles[i] @ r) / d**3
                energy += (dipoles[i] @ dipoles[j]) / d**3 - 3 * (dipoles[i] @ r) * (dipoles[j] @ r) / d**5
    return energy, field


def test_point_dipoles_open_boundaries_equal_numpy():
    atoms = molecule(n=8)
    dipoles = np.random.default_rng(4).normal(scale=0.3, size=(8, 3))
    out = run(atoms, dipoles=dipoles, field=True)
    energy, field = numpy_dipoles(atoms.positions, atoms.get_initial_charges(), dipoles)
    assert out["energy"].item() == pytest.approx(KE * energy, rel=1e-12)
    np.testing.assert_allclose(out["field"].numpy(), KE * field, rtol=1e-11, atol=1e-12)


def test_dipole_lattice_lorentz_field():
    """Simple cubic lattice of parallel dipoles, tin-foil Ewald: local field (4 pi / 3) P,
    energy per dipole -(2 pi / 3) mu^2 / V."""
    mu = np.array([0.0, 0.0, 0.4])
    atoms = Atoms("X", positions=[[0, 0, 0]], cell=np.eye(3) * 3.0, pbc=True).repeat(2)
    atoms.set_initial_charges(np.zeros(8))
    out = run(atoms, method="ewald", accuracy=1e-9, dipoles=np.tile(mu, (8, 1)), field=True)
    volume = 27.0
    assert out["energy"].item() / 8 == pytest.approx(-KE * 2 * math.pi / 3 * (mu @ mu) / volume, rel=1e-7)
    np.testing.assert_allclose(out["field"].numpy(), np.tile(KE * 4 * math.pi / 3 * mu / volume, (8, 1)), rtol=1e-7, atol=1e-10)


def test_periodic_dipoles_equal_limit_of_charge_pairs():
    """A point dipole is the limit of +-q at +-d/2 with q d = mu. The periodic-minus-open
    energy of charges + dipoles must equal that of the charge-pair system (the pairs'
    huge own energies cancel in the difference; the open-boundary dipole path is
    checked against numpy above). Error O(d^2): 6e-7 relative at d = 3e-3 Å."""
    atoms = random_neutral_ions(3, TRICLINIC, seed=9)
    dipoles = np.random.default_rng(1).normal(scale=0.2, size=(6, 3))
    size = np.linalg.norm(dipoles, axis=1)
    d = 3e-3
    offsets = dipoles / size[:, None] * d / 2
    pairs = Atoms(["X"] * 18, positions=np.concatenate([atoms.positions, atoms.positions + offsets, atoms.positions - offsets]), cell=TRICLINIC)
    pairs.set_initial_charges(np.concatenate([atoms.get_initial_charges(), size / d, -size / d]))

    def periodic_minus_open(structure, accuracy, dipoles=None):
        energies = []
        for pbc in (True, False):
            structure.pbc = pbc
            energies.append(run(structure, method="ewald", accuracy=accuracy, dipoles=dipoles)["energy"].item())
        return energies[0] - energies[1]

    with_dipoles = periodic_minus_open(atoms.copy(), 1e-10, dipoles)
    with_pairs = periodic_minus_open(pairs, 1e-12)
    assert with_dipoles == pytest.approx(with_pairs, rel=3e-6)


# ----------------------------------------------------------------- batches, symmetry
def test_mixed_batch_equals_separate_calls():
    crystal = random_neutral_ions(4, TRICLINIC, seed=4)
    mol = molecule(n=5)
    engine = Electrostatics(accuracy=1e-8, smearing=0.3)
    positions = torch.tensor(np.concatenate([crystal.positions, mol.positions]))
    charges = torch.tensor(np.concatenate([crystal.get_initial_charges(), mol.get_initial_charges()]))
    cell = torch.tensor(np.stack([TRICLINIC, np.zeros((3, 3))]))
    pbc = torch.tensor([[True] * 3, [False] * 3])
    batch = torch.tensor([0] * 8 + [1] * 5)
    batched = engine(positions, charges, cell, pbc, batch, compute_field=True)
    separate = [run(crystal, smearing=0.3, accuracy=1e-8, field=True), run(mol, smearing=0.3, field=True)]
    torch.testing.assert_close(batched["energy"], torch.cat([s["energy"] for s in separate]))
    torch.testing.assert_close(batched["field"], torch.cat([s["field"] for s in separate]))


def test_rotation_translation_permutation_invariance():
    atoms = random_neutral_ions(4, TRICLINIC, seed=8)
    reference = run(atoms, method="ewald", accuracy=1e-9, field=True)
    rotation = np.linalg.qr(np.random.default_rng(0).normal(size=(3, 3)))[0]
    rotated = atoms.copy()
    rotated.set_cell(TRICLINIC @ rotation.T, scale_atoms=True)
    out = run(rotated, method="ewald", accuracy=1e-9, field=True)
    assert out["energy"].item() == pytest.approx(reference["energy"].item(), rel=1e-8)
    np.testing.assert_allclose(out["field"].numpy(), reference["field"].numpy() @ rotation.T, atol=1e-7)
    shifted = atoms.copy()
    shifted.positions += [0.3, -1.2, 4.0]
    assert run(shifted, method="ewald", accuracy=1e-9)["energy"].item() == pytest.approx(reference["energy"].item(), rel=1e-8)
    order = np.random.default_rng(1).permutation(len(atoms))
    permuted = atoms[order]
    out = run(permuted, method="ewald", accuracy=1e-9)
    np.testing.assert_allclose(out["potential"].numpy(), reference["potential"].numpy()[order], atol=1e-7)


# ------------------------------------------------------------------- bad input
def test_bad_input_gives_clear_errors():
    atoms = random_neutral_ions(2, TRICLINIC, seed=0)
    engine = Electrostatics()
    pos = torch.tensor(atoms.positions)
    q = torch.tensor(atoms.get_initial_charges())
    cell = torch.tensor(TRICLINIC)[None]
    pbc = torch.ones(1, 3, dtype=torch.bool)
    coincide = pos.clone()
    coincide[1] = coincide[0]
    with pytest.raises(ElectrostaticsInputError, match="coincide"):
        engine(coincide, q, cell, pbc)
    with pytest.raises(ElectrostaticsInputError, match="coincide"):
        engine(coincide, q)  # open boundaries
    with pytest.raises(ElectrostaticsInputError, match="singular"):
        engine(pos, q, torch.tensor([[[5.0, 0, 0], [0, 5.0, 0], [0, 0, 0]]]), pbc)
    nan_pos = pos.clone()
    nan_pos[2, 1] = float("nan")
    with pytest.raises(ElectrostaticsInputError, match="NaN"):
        engine(nan_pos, q, cell, pbc)
    with pytest.raises(ElectrostaticsInputError, match="one charge per atom"):
        engine(pos, q[:-1], cell, pbc)
    with pytest.raises(ElectrostaticsInputError, match="wire"):
        engine(pos, q, cell, torch.tensor([[True, False, False]]))
    with pytest.raises(ElectrostaticsInputError, match="slab"):
        engine(pos, q, cell, torch.tensor([[True, True, False]]))
    with pytest.raises(ElectrostaticsInputError, match="method='direct'"):
        Electrostatics(method="direct")(pos, q, cell, pbc)
    with pytest.raises(ValueError, match="method must be one of"):
        Electrostatics(method="p3m")
    atoms.calc = CoulombCalculator(charges=[1.0, -1.0])
    with pytest.raises(ElectrostaticsInputError, match="one charge per atom"):
        atoms.get_potential_energy()


def test_auto_method_choice_by_cost_and_fixed_legacy_parameters():
    """``auto`` takes the cheaper plan of the k-space layer (Ewald for a few atoms, PME for
    thousands); legacy fixed ``KSpaceParameters`` become the equivalent fixed plan."""
    engine = Electrostatics(accuracy=1e-5)
    small = random_neutral_ions(4, TRICLINIC, seed=1)
    assert engine.plan(torch.tensor(small.positions), torch.tensor(TRICLINIC)).method == "ewald"
    big = torch.rand(3000, 3, generator=torch.Generator().manual_seed(0), dtype=torch.float64) * 31.0
    assert engine.plan(big, torch.eye(3, dtype=torch.float64) * 31.0).method == "pme"
    params = choose_parameters("pme", torch.zeros(4, 3), torch.ones(4), torch.eye(3) * 6.0, 1e-5)
    fixed = Electrostatics(parameters=params).plan(torch.zeros(4, 3), torch.eye(3) * 6.0)
    assert fixed.method == "pme" and fixed.smearing == params.smearing and min(fixed.mesh) >= 12


@pytest.mark.parametrize("method", ["ewald", "pme"])
def test_charge_dipole_forces_equal_central_differences(method):
    """Forces of charges + dipoles need the double backward through the ghost field."""
    atoms = random_neutral_ions(3, TRICLINIC, seed=12)
    dipoles = torch.tensor(np.random.default_rng(2).normal(scale=0.3, size=(6, 3)))
    charges = torch.tensor(atoms.get_initial_charges())
    cell = torch.tensor(TRICLINIC)[None]
    pbc = torch.ones(1, 3, dtype=torch.bool)
    params = choose_parameters(method, torch.tensor(atoms.positions), charges, cell[0], 1e-9)
    engine = Electrostatics(parameters=params)

    def energy(pos):
        return engine(pos, charges, cell, pbc, dipoles=dipoles)["energy"].sum()

    positions = torch.tensor(atoms.positions, requires_grad=True)
    (grad,) = torch.autograd.grad(energy(positions), positions)
    numeric = torch.zeros_like(grad)
    h = 1e-4
    for a in range(6):
        for b in range(3):
            plus, minus = positions.detach().clone(), positions.detach().clone()
            plus[a, b] += h
            minus[a, b] -= h
            numeric[a, b] = (energy(plus) - energy(minus)) / (2 * h)
    assert (grad - numeric).abs().max() < 1e-6 * grad.abs().max()


@pytest.mark.filterwarnings("ignore:structure 0 is periodic with net charge")
def test_charged_cell_stress_includes_background_term():
    """Stress of a non-neutral cell (background term depends on the volume) equals
    the central finite difference of the energy."""
    atoms = random_neutral_ions(4, TRICLINIC, seed=3)
    charges = atoms.get_initial_charges()
    charges[1] = 0.5  # net charge +1.5 e
    atoms.set_initial_charges(charges)
    atoms.calc = CoulombCalculator(method="ewald", accuracy=1e-10)
    stress = atoms.get_stress()
    numeric = calculate_numerical_stress(atoms, eps=1e-5)
    assert np.abs(stress - numeric).max() < 1e-6 * np.abs(stress).max()


# ------------------------------------------------------------ per-atom widths
MIXED_WIDTHS = np.array([0.0, 0.4, 0.9, 0.4, 1.3, 0.0, 0.7, 0.5, 0.9, 0.4, 1.1, 0.6])


def test_per_atom_widths_direct_sum_equals_numpy_double_loop():
    atoms = molecule()
    engine = Electrostatics()
    out = engine(torch.tensor(atoms.positions), torch.tensor(atoms.get_initial_charges()), compute_field=True, widths=torch.tensor(MIXED_WIDTHS))
    energy, potential, field = numpy_coulomb(atoms.positions, atoms.get_initial_charges(), MIXED_WIDTHS)
    assert out["energy"].item() == pytest.approx(KE * energy, rel=1e-12)
    np.testing.assert_allclose(out["potential"].numpy(), KE * potential, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(out["field"].numpy(), KE * field, rtol=1e-12, atol=1e-12)


def test_uniform_widths_equal_module_smearing():
    atoms = random_neutral_ions(4, TRICLINIC, seed=6)
    args = (torch.tensor(atoms.positions), torch.tensor(atoms.get_initial_charges()), torch.tensor(TRICLINIC)[None], torch.ones(1, 3, dtype=torch.bool))
    by_module = Electrostatics(smearing=0.7, accuracy=1e-9)(*args)
    by_widths = Electrostatics(accuracy=1e-9)(*args, widths=torch.full((8,), 0.7))
    torch.testing.assert_close(by_module["energy"], by_widths["energy"], rtol=1e-13, atol=0)


def test_per_atom_widths_periodic_matches_open_boundaries_with_tinfoil_term():
    mol = molecule(n=12, seed=11)
    mol.positions *= 0.4
    widths = torch.tensor(MIXED_WIDTHS)
    isolated = Electrostatics()(torch.tensor(mol.positions), torch.tensor(mol.get_initial_charges()), widths=widths)["energy"].item()
    box = mol.copy()
    box.set_cell(np.eye(3) * 40.0)
    box.center()
    for method in ("ewald", "pme"):
        periodic = Electrostatics(method=method, accuracy=1e-9)(
            torch.tensor(box.positions), torch.tensor(box.get_initial_charges()), torch.tensor(box.cell.array)[None], torch.ones(1, 3, dtype=torch.bool), widths=widths
        )["energy"].item()
        dipole = (box.get_initial_charges()[:, None] * box.positions).sum(0)
        correction = -KE * 2 * math.pi * (dipole @ dipole) / (3 * box.get_volume())
        assert periodic == pytest.approx(isolated + correction, rel=1e-5)


@pytest.mark.parametrize("periodic", [False, True])
def test_per_atom_widths_forces_field_and_width_gradient(periodic):
    """Forces = q E (ghost sites carry their twin's width) and dE/dwidth equals a
    central finite difference: widths can be learned."""
    atoms = random_neutral_ions(6, TRICLINIC, seed=5)
    positions = torch.tensor(atoms.positions, requires_grad=True)
    charges = torch.tensor(atoms.get_initial_charges())
    widths = torch.tensor(MIXED_WIDTHS, requires_grad=True)
    cell = torch.tensor(TRICLINIC)[None]
    pbc = torch.full((1, 3), periodic)
    params = choose_parameters("ewald", positions.detach(), charges, cell[0], 1e-10)
    engine = Electrostatics(parameters=params)
    out = engine(positions, charges, cell, pbc, compute_field=True, widths=widths)
    d_r, d_w = torch.autograd.grad(out["energy"].sum(), [positions, widths])
    torch.testing.assert_close(-d_r, charges[:, None] * out["field"].detach(), rtol=1e-7, atol=1e-8)
    h = 1e-5
    assert torch.isfinite(d_w).all()
    for k in (0, 1, 4, 7):  # 0: a point charge (width 0), one-sided difference below
        if MIXED_WIDTHS[k] == 0.0:
            # E depends on s_k only through s_k^2 (w_ij = sqrt(2 (s_i^2 + s_j^2))), so the
            # slope at s_k = 0 is 0: the energy change grows as h^2 (ratio 4 from h to 2h)
            def changed(h):
                bumped = widths.detach().clone()
                bumped[k] += h
                return engine(positions.detach(), charges, cell, pbc, widths=bumped)["energy"].item() - out["energy"].item()

            assert d_w[k].item() == pytest.approx(0.0, abs=1e-12)
            assert changed(2e-3) / changed(1e-3) == pytest.approx(4.0, rel=1e-2)
            continue
        plus, minus = widths.detach().clone(), widths.detach().clone()
        plus[k] += h
        minus[k] -= h
        e_plus = engine(positions.detach(), charges, cell, pbc, widths=plus)["energy"].item()
        e_minus = engine(positions.detach(), charges, cell, pbc, widths=minus)["energy"].item()
        assert d_w[k].item() == pytest.approx((e_plus - e_minus) / (2 * h), rel=1e-6, abs=1e-9)


def test_bad_widths_are_clear_errors():
    atoms = molecule(n=4)
    args = (torch.tensor(atoms.positions), torch.tensor(atoms.get_initial_charges()))
    with pytest.raises(ElectrostaticsInputError, match="one Gaussian width per atom"):
        Electrostatics()(*args, widths=torch.ones(3))
    with pytest.raises(ElectrostaticsInputError, match=">= 0"):
        Electrostatics()(*args, widths=torch.tensor([0.5, -0.1, 0.5, 0.5]))
    with pytest.raises(ElectrostaticsInputError, match="NaN"):
        Electrostatics()(*args, widths=torch.tensor([0.5, float("nan"), 0.5, 0.5]))


def test_unsorted_or_out_of_range_batch_is_rejected():
    atoms = molecule(n=4)
    args = (torch.tensor(atoms.positions), torch.tensor(atoms.get_initial_charges()), torch.zeros(2, 3, 3), torch.zeros(2, 3, dtype=torch.bool))
    with pytest.raises(ElectrostaticsInputError, match="non-decreasing"):
        Electrostatics()(*args, torch.tensor([0, 1, 0, 1]))
    with pytest.raises(ElectrostaticsInputError, match="non-decreasing"):
        Electrostatics()(*args, torch.tensor([0, 0, 1, 2]))


@pytest.mark.parametrize("with_dipoles", [False, True])
def test_width_gradient_survives_the_field_path(with_dipoles):
    """Only the widths require grad (a learned sigma_Z with fixed geometry): asking for
    the field, or adding dipoles, must not cut dE/dwidth."""
    atoms = random_neutral_ions(6, TRICLINIC, seed=5)
    args = (torch.tensor(atoms.positions), torch.tensor(atoms.get_initial_charges()), torch.tensor(TRICLINIC)[None], torch.ones(1, 3, dtype=torch.bool))
    dipoles = torch.tensor(np.random.default_rng(3).normal(scale=0.2, size=(12, 3))) if with_dipoles else None
    engine = Electrostatics(method="ewald", accuracy=1e-9)
    grads = []
    for compute_field in (False, True):
        widths = torch.tensor(MIXED_WIDTHS, requires_grad=True)
        energy = engine(*args, dipoles=dipoles, compute_field=compute_field, widths=widths)["energy"].sum()
        assert energy.requires_grad
        (grad,) = torch.autograd.grad(energy, widths)
        grads.append(grad)
    assert torch.isfinite(grads[0]).all()  # zero widths (point charges) included
    torch.testing.assert_close(grads[1], grads[0], rtol=1e-10, atol=1e-12)
