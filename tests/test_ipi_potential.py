"""The ASE-calculator adapter (units, cell convention, virial, extras) and set-up errors.

No i-PI server here: i-PI's own classes (BEC reader, PES loader) check what it would read.
"""

from __future__ import annotations

import json
import time
from types import SimpleNamespace

import numpy as np
import pytest
from ase import Atoms
from ase.calculators.calculator import Calculator, all_changes
from ase.calculators.lj import LennardJones
from ase.io import write

from ipi_driver import ATOMIC_UNITS
from ipi_driver.cli import PES_PATH, main
from ipi_driver.loading import read_template
from ipi_driver.potential import ASEPotential, SetupError
from ipi_driver.protocol import Structure
from ipi_helpers import saved_lr_model
from model_helpers import nacl_crystal, water_cluster

L = ATOMIC_UNITS["length"]  # Å -> Bohr
EV = ATOMIC_UNITS["energy"]  # eV -> Hartree


@pytest.fixture(scope="module")
def model_path(tmp_path_factory):
    return saved_lr_model(tmp_path_factory)


def macelr(path, **kwargs):
    from mace_lr.calculators import MACELRCalculator

    return MACELRCalculator(model_paths=path, device="cpu", default_dtype="float64", **kwargs)


def ipi_structure(atoms: Atoms) -> Structure:
    """What i-PI sends for ``atoms``: h with lattice vectors as columns, Bohr."""
    return Structure(cell=atoms.cell.array.T * L, positions=atoms.positions * L)


def strain_derivative(calc, atoms: Atoms, step: float = 1e-5, cell_too: bool = True) -> np.ndarray:
    """dE/d(eps_ab) (eV) by central differences of a symmetric strain."""
    derivative = np.zeros((3, 3))
    for a in range(3):
        for b in range(a, 3):
            energies = []
            for sign in (1, -1):
                eps = np.zeros((3, 3))
                eps[a, b] += 0.5 * sign * step
                eps[b, a] += 0.5 * sign * step
                strained = atoms.copy()
                strained.positions = atoms.positions @ (np.eye(3) + eps)
                if cell_too:
                    strained.set_cell(atoms.cell.array @ (np.eye(3) + eps), scale_atoms=False)
                strained.calc = calc
                energies.append(strained.get_potential_energy())
            derivative[a, b] = derivative[b, a] = (energies[0] - energies[1]) / (2 * step)
    return derivative


def test_triclinic_cell_convention_units_and_virial():
    """Energy/forces in atomic units, i-PI's column cell, virial = -dE/d(strain) (periodic)."""
    from ase.build import bulk

    atoms = bulk("Ar", "fcc", a=5.3).repeat((2, 2, 2))  # primitive fcc cell: triclinic
    atoms.set_cell(atoms.cell.array @ np.array([[1.0, 0.05, 0.0], [0.0, 0.97, 0.03], [0.02, 0.0, 1.04]]), scale_atoms=True)
    atoms.rattle(0.1, seed=4)
    calc = LennardJones(sigma=3.4, epsilon=0.0104, rc=8.0, smooth=True)
    result = ASEPotential(calc, atoms).compute(ipi_structure(atoms))
    reference = atoms.copy()
    reference.calc = calc
    assert result.energy == pytest.approx(reference.get_potential_energy() * EV, rel=1e-12)
    np.testing.assert_allclose(result.forces, reference.get_forces() * EV / L, rtol=1e-10, atol=1e-14)
    virial_fd = -strain_derivative(calc, atoms) * EV
    assert np.abs(virial_fd - np.diag(np.diag(virial_fd))).max() > 1e-4 * np.abs(virial_fd).max()  # off-diagonal
    np.testing.assert_allclose(result.virial, virial_fd, atol=1e-7 * np.abs(virial_fd).max())
    # a transposed cell is a different crystal: the adapter must not give the same energy for it
    wrong = ASEPotential(calc, atoms).compute(Structure(cell=atoms.cell.array * L, positions=atoms.positions * L))
    assert abs(wrong.energy - result.energy) > 1e-6


def test_cluster_virial_is_minus_strain_derivative():
    atoms = Atoms("Ar4", positions=[[0, 0, 0], [3.6, 0.3, 0], [0.5, 3.5, 0.4], [1.7, 1.2, 3.3]])
    calc = LennardJones(sigma=3.4, epsilon=0.0104, rc=10.0)
    result = ASEPotential(calc, atoms).compute(ipi_structure(atoms))
    virial_fd = -strain_derivative(calc, atoms, cell_too=False) * EV
    np.testing.assert_allclose(result.virial, virial_fd, atol=1e-8 * np.abs(virial_fd).max())


def test_macelr_extras_bec_layout_is_what_ipi_reads(model_path):
    """i-PI's BEC reader accepts our JSON (ASR check included) and e Z @ E is the field force."""
    from ipi.engine.motion.driven_dynamics import BEC

    atoms = water_cluster()
    potential = ASEPotential(macelr(model_path), atoms, ("dipole", "bec", "charges", "electrostatic_energy"))
    result = potential.compute(ipi_structure(atoms))
    extras = json.loads(result.extras)
    assert set(extras) == {"dipole", "BEC", "charges", "electrostatic_energy"}

    reader = BEC(cbec=True, asr_threshold=1e-8)  # i-PI's own reshape and acoustic-sum-rule check
    reader.nbeads, reader.natoms = 1, len(atoms)
    reader.forces = SimpleNamespace(extras={"BEC": [extras["BEC"]]})
    z = reader._get_driver_BEC()[0]
    assert z.shape == (3 * len(atoms), 3)

    # the model's own constant-field term: forces(E) - forces(0) = Z @ E, so i-PI's e Z @ E is right
    field = np.array([0.03, -0.02, 0.05])  # V/Å
    calc = potential.calculator
    calc.reset()  # ASE's cache does not look at info["external_field"]
    with_field = atoms.copy()
    with_field.info["external_field"] = field
    forces_with_field = calc.get_forces(with_field)
    calc.reset()
    plain = atoms.copy()
    plain.calc = calc
    delta = (forces_with_field - plain.get_forces()).reshape(-1) * EV / L
    np.testing.assert_allclose(z @ (field * ATOMIC_UNITS["electric-field"]), delta, atol=1e-9)

    charges = plain.calc.results["charges"]
    np.testing.assert_allclose(extras["charges"], charges, atol=1e-12)
    np.testing.assert_allclose(extras["dipole"], plain.calc.results["dipole"] * L, atol=1e-10)
    assert extras["electrostatic_energy"] == pytest.approx(plain.calc.results["electrostatic_energy"] * EV, rel=1e-10)


class FieldResponse(Calculator):
    """Harmonic springs plus a dipole q.r + alpha0 @ E that responds to info['external_field']."""

    implemented_properties = ["energy", "forces", "dipole"]
    alpha0 = np.array([[1.5, 0.2, 0.0], [0.2, 0.9, 0.1], [0.0, 0.1, 2.1]])  # e·Å²/V
    charges = np.array([0.5, -0.5])

    def calculate(self, atoms=None, properties=("energy",), system_changes=all_changes):
        super().calculate(atoms, properties, system_changes)
        field = np.asarray(self.atoms.info.get("external_field", np.zeros(3)), float)
        d = self.atoms.positions[1] - self.atoms.positions[0]
        self.results["energy"] = 0.5 * float(d @ d)
        self.results["forces"] = np.array([d, -d])
        self.results["dipole"] = self.charges @ self.atoms.positions + self.alpha0 @ field


def test_polarizability_by_field_differences():
    atoms = Atoms("HF", positions=[[0, 0, 0], [0.9, 0.1, 0.0]])
    atoms.info["external_field"] = np.array([0.0, 0.0, 0.2])
    potential = ASEPotential(FieldResponse(), atoms, "dipole+polarizability")
    extras = json.loads(potential.compute(ipi_structure(atoms)).extras)
    np.testing.assert_allclose(extras["polarizability"], FieldResponse.alpha0 * ATOMIC_UNITS["polarizability"], rtol=1e-8)
    # the dipole is the one at the structure's own field, not at a finite-difference point
    expected_dipole = FieldResponse.charges @ atoms.positions + FieldResponse.alpha0 @ [0.0, 0.0, 0.2]
    np.testing.assert_allclose(extras["dipole"], expected_dipole * L, rtol=1e-12)
    assert potential.atoms.info["external_field"].tolist() == [0.0, 0.0, 0.2]


class EnergyOnly(Calculator):
    implemented_properties = ["energy", "forces"]

    def calculate(self, atoms=None, properties=("energy",), system_changes=all_changes):
        super().calculate(atoms, properties, system_changes)
        self.results["energy"] = 0.0
        self.results["forces"] = np.zeros((len(self.atoms), 3))


def test_setup_errors_are_clear(model_path):
    from mace_lr.calculators import CoulombCalculator

    crystal = nacl_crystal()
    with pytest.raises(SetupError, match="periodic .* gives no stress"):
        ASEPotential(EnergyOnly(), crystal)
    with pytest.raises(SetupError, match="extra 'dipole' needs the calculator property 'dipole'"):
        ASEPotential(CoulombCalculator(), crystal, ("dipole",))
    with pytest.raises(ValueError, match="unknown extra 'stress'"):
        ASEPotential(CoulombCalculator(), crystal, ("stress",))
    # a fixed-charge calculator for 3 atoms on a 4-atom structure
    ions = Atoms("NaClNaCl", positions=[[0, 0, 0], [2.8, 0, 0], [0, 2.8, 0], [2.8, 2.8, 0]])
    with pytest.raises(SetupError, match="3 charges for 4 atoms"):
        ASEPotential(CoulombCalculator(charges=[1, -1, 1]), ions).preflight()
    # a model that does not know potassium
    potassium = water_cluster()
    potassium[-1].symbol = "K"
    with pytest.raises(SetupError, match=r"elements \[19\] are not in the model"):
        ASEPotential(macelr(model_path), potassium).preflight()


def test_cli_reports_setup_errors_before_connecting(model_path, tmp_path, capsys):
    potassium = water_cluster()
    potassium[-1].symbol = "K"
    write(tmp_path / "k.xyz", potassium, format="extxyz")
    began = time.monotonic()
    code = main(["--model", model_path, "--init", str(tmp_path / "k.xyz"), "-u", "-a", "nobody",
                 "-S", str(tmp_path) + "/", "--connect-timeout", "300"])
    assert code == 1
    assert time.monotonic() - began < 60  # did not wait for a server
    assert "elements [19] are not in the model" in capsys.readouterr().err

    # an i-PI-style xyz (cell in a comment, units unknown to ASE) is refused with advice
    (tmp_path / "ipi.xyz").write_text(
        "2\n# CELL(abcABC):   20.0 20.0 20.0 90.0 90.0 90.0  Step: 0 Bead: 0 positions{angstrom} cell{angstrom}\n"
        "Na 0 0 0\nCl 2.8 0 0\n"
    )
    assert main(["--model", model_path, "--init", str(tmp_path / "ipi.xyz"), "-u", "-a", "x"]) == 1
    assert "looks like an i-PI xyz file" in capsys.readouterr().err
    assert main(["--model", model_path, "--init", str(tmp_path / "missing.xyz"), "-u", "-a", "x"]) == 1
    assert "does not exist" in capsys.readouterr().err
    assert main(["--model", model_path, "--init", str(tmp_path / "k.xyz")]) == 1
    assert "give -u" in capsys.readouterr().err
    assert main(["--calculator", "mace_lr.calculators:NoSuchThing", "--init", str(tmp_path / "k.xyz"), "-u", "-a", "x"]) == 1
    assert "has no 'NoSuchThing'" in capsys.readouterr().err


def test_cli_no_server_is_a_connection_error(model_path, tmp_path, capsys):
    write(tmp_path / "w.xyz", water_cluster(), format="extxyz")
    code = main(["--model", model_path, "--init", str(tmp_path / "w.xyz"), "-u", "-a", "nobody",
                 "-S", str(tmp_path) + "/", "--connect-timeout", "0.5"])
    assert code == 2
    assert "could not connect to i-PI" in capsys.readouterr().err


def test_template_overrides_and_pes_file_follows_ipi_convention(tmp_path):
    """``--pes-path`` names a file that i-PI's own scanner recognises as a PES."""
    from ipi.pes import scan_pes_file

    assert PES_PATH.exists()
    assert scan_pes_file(str(PES_PATH)) == ("MACELR_driver", "mace_lr")
    write(tmp_path / "w.xyz", water_cluster(charge=0.0), format="extxyz")
    atoms = read_template(str(tmp_path / "w.xyz"), total_charge=1.0, external_field=[0, 0, 0.1])
    assert atoms.info["total_charge"] == 1.0
    assert atoms.info["external_field"].tolist() == [0, 0, 0.1]
