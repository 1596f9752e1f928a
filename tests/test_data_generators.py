"""Reference-data generators (mace_lr.data) and the mace_lr_generate command."""

from __future__ import annotations

import itertools
import subprocess
import sys
from pathlib import Path

import ase.io
import numpy as np
import pytest
from ase import Atoms
from ase.units import Bohr, Hartree

from mace_lr.cli.generate import main
from mace_lr.data import (
    MOLECULES,
    InvalidOption,
    generate_clusters,
    generate_dimers,
    generate_field,
    generate_random_charges,
    generate_water_clusters,
    mace_key_specification,
    read_dataset,
    write_dataset,
)
from mace_lr.data.random_charges import REPULSION_A, REPULSION_CUTOFF, REPULSION_RHO
from mace_lr.data.xtb import DEFAULT_ACCURACY, xtb_singlepoint

REPO = Path(__file__).resolve().parents[1]
SMALL_BOX = dict(n_atoms=32)  # L = 7.27 Å at the default 12 Å^3/atom
QUIET_DIMERS = ("H2O", "NH3", "HF", "OH-", "HCOO-", "CH3NH3+")


@pytest.fixture(scope="module")
def dimers() -> list[Atoms]:
    return generate_dimers(3, seed=11, monomers=QUIET_DIMERS)


@pytest.fixture(scope="module")
def clusters() -> list[Atoms]:
    return generate_clusters(2, seed=5, systems=["C10H3+", "Na9Cl8"])


@pytest.fixture(scope="module")
def field_frames() -> list[Atoms]:
    return generate_field(2, seed=3, max_field=0.5)


@pytest.fixture(scope="module")
def water_frames() -> list[Atoms]:
    return generate_water_clusters(2, seed=6, min_molecules=2, max_molecules=3)


@pytest.fixture(scope="module")
def random_frames() -> list[Atoms]:
    return generate_random_charges(1, seed=4, **SMALL_BOX)


def direct_tblite(atoms: Atoms, field: np.ndarray | None = None) -> dict[str, np.ndarray]:
    """tblite called without mace_lr.data: eV, eV/Å, e, e·Å."""
    from tblite.interface import Calculator
    from tblite.library import ffi

    charge = int(round(atoms.info["total_charge"]))
    uhf = int(round(atoms.info["total_spin"])) - 1
    calc = Calculator("GFN2-xTB", atoms.numbers, atoms.positions / Bohr, charge=charge, uhf=uhf)
    calc.set("verbosity", 0)
    calc.set("accuracy", DEFAULT_ACCURACY)
    if field is not None:
        calc.add("electric-field", ffi.new("double[]", list(np.asarray(field) * Bohr / Hartree)))
    result = calc.singlepoint()
    return {
        "energy": result["energy"] * Hartree,
        "forces": -result["gradient"] * Hartree / Bohr,
        "charges": result["charges"],
        "dipole": result["dipole"] * Bohr,
    }


def assert_relative(actual: np.ndarray, expected: np.ndarray, rtol: float = 1e-8) -> None:
    scale = max(np.max(np.abs(expected)), 1e-3)
    np.testing.assert_allclose(actual, expected, rtol=0, atol=rtol * scale)


# --- xTB labels ---------------------------------------------------------------------


@pytest.mark.parametrize("family", ["dimers", "clusters", "field_frames", "water_frames"])
def test_xtb_labels_equal_direct_tblite(family, request, tmp_path):
    frames = request.getfixturevalue(family)
    path = write_dataset(frames, tmp_path / "frames.xyz")
    for atoms, stored in zip(frames, read_dataset(path)):
        field = atoms.info.get("external_field")
        reference = direct_tblite(atoms, field)
        assert_relative(atoms.info["REF_energy"], reference["energy"])
        assert_relative(atoms.arrays["REF_forces"], reference["forces"])
        assert_relative(atoms.arrays["REF_charges"], reference["charges"])
        assert_relative(atoms.info["REF_dipole"], reference["dipole"])
        # the file holds exactly the labelled geometry and the labels to print precision
        np.testing.assert_array_equal(stored.positions, atoms.positions)
        assert stored.info["REF_energy"] == atoms.info["REF_energy"]
        np.testing.assert_allclose(
            stored.arrays["REF_forces"], atoms.arrays["REF_forces"], atol=1e-8
        )


def test_field_energy_is_minus_mu_dot_field():
    """E(F) - E(-F) = -2 mu·F to first order, F in V/Å, mu in e·Å: checks sign and units."""
    water = Atoms("OH2", positions=[[0.0, 0.0, 0.064], [0.0, 0.772, -0.505], [0.1, -0.772, -0.505]])
    mu = xtb_singlepoint(water.numbers, water.positions).dipole
    assert np.linalg.norm(mu) > 0.3
    field = np.array([0.004, -0.006, 0.010])
    e_plus = xtb_singlepoint(water.numbers, water.positions, field=field).energy
    e_minus = xtb_singlepoint(water.numbers, water.positions, field=-field).energy
    np.testing.assert_allclose((e_plus - e_minus) / 2, -mu @ field, rtol=1e-4)


def test_field_force_on_ion_and_finite_difference_forces():
    hydroxide = Atoms("OH", positions=[[0.0, 0.0, 0.0], [0.15, 0.1, 0.95]])
    field = np.array([0.3, -0.5, 0.8])  # V/Å
    result = xtb_singlepoint(hydroxide.numbers, hydroxide.positions, total_charge=-1, field=field)
    # net force on a charge Q in a uniform field is Q F (eV/Å)
    np.testing.assert_allclose(result.forces.sum(axis=0), -field, atol=1e-6)
    step = 1e-4
    for atom, axis in itertools.product(range(2), range(3)):
        energies = []
        for sign in (1, -1):
            moved = hydroxide.positions.copy()
            moved[atom, axis] += sign * step
            energies.append(
                xtb_singlepoint(hydroxide.numbers, moved, total_charge=-1, field=field).energy
            )
        assert result.forces[atom, axis] == pytest.approx(
            -(energies[0] - energies[1]) / (2 * step), abs=1e-4
        )


def test_field_frames_store_field_in_volt_per_angstrom(field_frames):
    for atoms in field_frames:
        field = atoms.info["external_field"]
        assert field.shape == (3,) and 0 < np.linalg.norm(field) <= 0.5
        assert atoms.info["total_charge"] == 0.0
        np.testing.assert_allclose(atoms.arrays["REF_forces"].sum(axis=0), 0.0, atol=1e-6)


def test_total_charge_and_spin_consistency(dimers, clusters, field_frames, random_frames):
    for atoms in dimers + clusters + field_frames + random_frames:
        assert atoms.arrays["REF_charges"].sum() == pytest.approx(
            atoms.info["total_charge"], abs=1e-6
        )
    spins = {atoms.info["config_type"]: atoms.info["total_spin"] for atoms in clusters}
    assert spins == {"C10H3+": 1.0, "Na9Cl8": 2.0}  # Na9Cl8 has an odd electron count
    assert [atoms.info["total_charge"] for atoms in clusters] == [1.0, 0.0]


def test_dimer_geometry(dimers):
    for atoms in dimers:
        first, second = atoms.info["monomers"].split()
        n_first = len(MOLECULES[first].symbols)
        gaps = np.linalg.norm(
            atoms.positions[:n_first, None] - atoms.positions[None, n_first:], axis=-1
        )
        assert gaps.min() == pytest.approx(atoms.info["separation"], abs=1e-6)
        assert 2.0 <= atoms.info["separation"] <= 15.0
        np.testing.assert_allclose(atoms.get_center_of_mass(), 0.0, atol=1e-6)


# --- random charges -----------------------------------------------------------------


def brute_force_repulsion(atoms: Atoms) -> tuple[float, np.ndarray]:
    """Shifted Born-Mayer energy (eV) and forces (eV/Å) by an explicit sum over images."""
    energy, forces = 0.0, np.zeros((len(atoms), 3))
    for shift in itertools.product(range(-2, 3), repeat=3):
        # delta[i, j] = r_j + shift - r_i, every ordered pair: energy counted twice
        delta = atoms.positions[None, :, :] + np.array(shift) @ atoms.cell.array
        delta = delta - atoms.positions[:, None, :]
        distance = np.linalg.norm(delta, axis=-1)
        if shift == (0, 0, 0):
            np.fill_diagonal(distance, np.inf)
        near = distance < REPULSION_CUTOFF
        r = np.where(near, distance, 1.0)
        pair = np.where(near, REPULSION_A * np.exp(-r / REPULSION_RHO), 0.0)
        shifted = REPULSION_A * np.exp(-REPULSION_CUTOFF / REPULSION_RHO)
        energy += 0.5 * np.sum(np.where(near, pair - shifted, 0.0))
        # force on i from j: -dE/dr * d r / d r_i = (pair / rho) * (-delta / r)
        forces -= np.einsum("ij,ijk->ik", pair / REPULSION_RHO / r, delta)
    return float(energy), forces


def total_energy(atoms: Atoms) -> tuple[float, Atoms]:
    """Engine Coulomb (CoulombCalculator, Ewald) + brute-force repulsion (eV), and the probe."""
    from mace_lr.calculators import CoulombCalculator

    probe = Atoms(numbers=atoms.numbers, positions=atoms.positions, cell=atoms.cell, pbc=True)
    probe.set_initial_charges(atoms.arrays["REF_charges"])
    probe.calc = CoulombCalculator(charges=None, method="ewald", smearing=0.0, accuracy=1e-8)
    return probe.get_potential_energy() + brute_force_repulsion(probe)[0], probe


def test_random_charges_labels_equal_engine_plus_repulsion(random_frames):
    (atoms,) = random_frames
    charges = atoms.arrays["REF_charges"]
    assert sorted(set(charges)) == [-1.0, 1.0] and charges.sum() == 0.0
    np.testing.assert_array_equal(np.where(charges > 0, 11, 17), atoms.numbers)
    assert atoms.get_volume() == pytest.approx(32 * 12.0)
    distances = atoms.get_all_distances(mic=True)[np.triu_indices(32, 1)]
    assert distances.min() >= 1.8 - 1e-7

    energy, probe = total_energy(atoms)
    assert atoms.info["REF_energy"] == pytest.approx(energy, rel=1e-10, abs=1e-9)
    assert atoms.info["coulomb_energy"] == pytest.approx(probe.get_potential_energy(), rel=1e-12)
    forces = probe.get_forces() + brute_force_repulsion(probe)[1]
    np.testing.assert_allclose(atoms.arrays["REF_forces"], forces, rtol=0, atol=1e-9)

    # forces: central differences of the independent total energy
    step = 1e-5
    for atom, axis in [(0, 0), (5, 1), (31, 2)]:
        energies = []
        for sign in (1, -1):
            moved = atoms.copy()
            moved.positions[atom, axis] += sign * step
            energies.append(total_energy(moved)[0])
        fd = -(energies[0] - energies[1]) / (2 * step)
        assert atoms.arrays["REF_forces"][atom, axis] == pytest.approx(fd, abs=1e-5)

    # stress: central differences under a symmetric strain, dE/deps / V (ASE Voigt order)
    voigt = [(0, 0), (1, 1), (2, 2), (1, 2), (0, 2), (0, 1)]
    for k, (a, b) in enumerate(voigt):
        energies = []
        for sign in (1, -1):
            strain = np.zeros((3, 3))
            strain[a, b] = strain[b, a] = sign * step / (1 if a == b else 2)
            strained = atoms.copy()
            strained.set_cell(atoms.cell.array @ (np.eye(3) + strain), scale_atoms=True)
            energies.append(total_energy(strained)[0])
        fd = (energies[0] - energies[1]) / (2 * step) / atoms.get_volume()
        assert atoms.info["REF_stress"][k] == pytest.approx(fd, abs=1e-6)


def test_random_charges_bad_density():
    with pytest.raises(InvalidOption, match="packs spheres"):
        generate_random_charges(1, n_atoms=128, volume_per_atom=12.0, min_distance=2.2)
    with pytest.raises(InvalidOption, match="even"):
        generate_random_charges(1, n_atoms=7)


# --- files, determinism, MACE -------------------------------------------------------


def test_same_seed_same_bytes_different_seed_different(tmp_path):
    paths = []
    for name, seed in [("a", 7), ("b", 7), ("c", 8)]:
        frames = generate_dimers(2, seed=seed, monomers=QUIET_DIMERS) + generate_random_charges(
            1, seed=seed, n_atoms=8
        )
        paths.append(write_dataset(frames, tmp_path / f"{name}.xyz"))
    a, b, c = (path.read_bytes() for path in paths)
    assert a == b
    assert a != c
    # configuration i does not depend on how many follow it
    longer = generate_dimers(3, seed=7, monomers=QUIET_DIMERS)
    write_dataset(longer[:2], tmp_path / "prefix.xyz")
    assert (tmp_path / "prefix.xyz").read_bytes() == a[
        : len((tmp_path / "prefix.xyz").read_bytes())
    ]


def test_file_layout_and_mace_loader(tmp_path, dimers, field_frames, random_frames):
    from mace.data.utils import load_from_xyz
    from mace.tools import AtomicNumberTable
    from mace.data import AtomicData

    frames = dimers + field_frames + random_frames
    path = write_dataset(frames, tmp_path / "all.xyz")
    comment = path.read_text().splitlines()[1]
    assert "REF_energy=" in comment and "REF_forces:R:3" in comment and "REF_charges:R:1" in comment
    assert "REF_dipole=" in comment and "total_charge=" in comment
    assert all(atoms.calc is None for atoms in ase.io.read(path, index=":"))

    _, configs = load_from_xyz(
        file_path=str(path),
        config_type_weights={"Default": 1.0},
        key_specification=mace_key_specification(),
    )
    assert len(configs) == len(frames)
    for atoms, config in zip(frames, configs):
        props = config.properties
        assert props["energy"] == atoms.info["REF_energy"]
        np.testing.assert_allclose(props["forces"], atoms.arrays["REF_forces"], atol=1e-8)
        np.testing.assert_allclose(props["charges"], atoms.arrays["REF_charges"], atol=1e-8)
        assert props["total_charge"] == atoms.info["total_charge"]
        if "REF_dipole" in atoms.info:
            np.testing.assert_array_equal(props["dipole"], atoms.info["REF_dipole"])
            assert config.property_weights["dipole"] == 1.0
    periodic = configs[-1]
    assert periodic.pbc == (True, True, True)
    table = AtomicNumberTable(
        sorted(set(np.concatenate([c.atomic_numbers for c in configs]).tolist()))
    )
    data = AtomicData.from_config(periodic, z_table=table, cutoff=4.0)
    voigt = random_frames[0].info["REF_stress"]
    np.testing.assert_allclose(
        data.stress[0].numpy(),
        [
            [voigt[0], voigt[5], voigt[4]],
            [voigt[5], voigt[1], voigt[3]],
            [voigt[4], voigt[3], voigt[2]],
        ],
    )
    np.testing.assert_allclose(data.total_charge.numpy(), 0.0)


# --- command line -------------------------------------------------------------------


@pytest.mark.parametrize(
    "argv, message",
    [
        (["dimers", "--n-configs", "0"], "must be a positive integer"),
        (["field", "--n-configs", "-3"], "must be a positive integer"),
        (["clusters", "--seed", "-1"], "must be a non-negative integer"),
        (["field", "--max-field", "0"], "must be a positive number"),
        (["dimers", "--monomers", "XeF6"], "invalid choice"),
        (["dimers", "--min-separation", "5", "--max-separation", "4"], "must exceed"),
        (["random-charges", "--n-atoms", "3"], "even integer"),
    ],
)
def test_cli_rejects_bad_arguments(argv, message, tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(argv + ["-o", str(tmp_path / "x.xyz")])
    assert exit_info.value.code == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "x.xyz").exists()


def test_cli_missing_output_directory(tmp_path, capsys):
    with pytest.raises(SystemExit):
        main(["field", "-n", "1", "-o", str(tmp_path / "missing" / "x.xyz")])
    assert "output directory does not exist" in capsys.readouterr().err


def test_library_rejects_bad_arguments():
    with pytest.raises(InvalidOption, match="n_configs"):
        generate_field(0)
    with pytest.raises(InvalidOption, match="seed"):
        generate_field(1, seed=-1)
    with pytest.raises(InvalidOption, match="neutral"):
        generate_field(1, molecules=["OH-"])
    with pytest.raises(InvalidOption, match="unknown cluster"):
        generate_clusters(1, systems=["C60"])


def test_cli_end_to_end(tmp_path):
    target = tmp_path / "clusters.xyz"
    assert (
        main(
            [
                "clusters",
                "-n",
                "2",
                "--seed",
                "3",
                "-q",
                "-o",
                str(target),
                "--systems",
                "C10H2",
                "C10H3+",
            ]
        )
        == 0
    )
    assert [a.info["config_type"] for a in read_dataset(target)] == ["C10H2", "C10H3+"]
    in_process = target.read_bytes()
    # the same through a separate interpreter, as the console script runs it
    again = tmp_path / "again.xyz"
    command = [
        sys.executable,
        "-m",
        "mace_lr.cli.generate",
        "clusters",
        "-n",
        "2",
        "--seed",
        "3",
        "-o",
        str(again),
    ]
    command += ["--systems", "C10H2", "C10H3+"]
    finished = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=120)
    assert finished.returncode == 0, finished.stderr
    assert "wrote 2 clusters configurations" in finished.stderr
    assert again.read_bytes() == in_process


def test_water_clusters_are_separate_neutral_molecules(water_frames):
    for atoms in water_frames:
        n = atoms.info["n_molecules"]
        assert 2 <= n <= 3 and list(atoms.numbers) == [8, 1, 1] * n and atoms.info["total_charge"] == 0
        distances = atoms.get_all_distances()
        oxygens = np.flatnonzero(atoms.numbers == 8)
        for i in oxygens:  # each O has its own two H within 1.1 Å, every other O at least 2.6 Å - noise away
            assert np.sum(distances[i, atoms.numbers == 1] < 1.15) == 2
            assert np.all(distances[i, oxygens[oxygens != i]] > 2.4)
    with pytest.raises(InvalidOption):
        generate_water_clusters(1, min_molecules=3, max_molecules=2)
