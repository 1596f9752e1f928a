"""mace_lr_diagnose: file formats (extxyz, .traj, i-PI xyz/extxyz), JSON, plot, bad input."""

from __future__ import annotations

import io
import json
import subprocess
import sys

import ase.io
import numpy as np
import pytest
from ase import Atoms

from mace_lr.analysis import DiagnosticsOptions, ElementCharges, diagnose_file, diagnose_frames
from mace_lr.cli.diagnose import main

CELL = np.array([[9.0, 0.0, 0.0], [1.5, 8.5, 0.0], [-0.8, 1.1, 9.4]])  # i-PI's orientation
CHARGES = ElementCharges({11: 1.0, 17: -1.0})
REQUIRED_KEYS = {
    "k", "s_qq", "s_qq_err", "small_k_exponent", "small_k_exponent_err", "verdict",
    "verdict_code", "dielectric_constant", "dielectric_constant_err", "n_frames", "warnings",
}


def walking_ions(n_frames: int = 40, n_ions: int = 24, step: float = 0.35, seed: int = 0) -> list[Atoms]:
    """+-1 ions on a random walk (unwrapped positions) in CELL, charges in initial_charges."""
    rng = np.random.default_rng(seed)
    positions = rng.uniform(size=(n_ions, 3)) @ CELL
    frames = []
    for _ in range(n_frames):
        positions = positions + rng.normal(scale=step, size=positions.shape)
        atoms = Atoms(["Na", "Cl"] * (n_ions // 2), positions=positions, cell=CELL, pbc=True)
        atoms.set_initial_charges([1.0, -1.0] * (n_ions // 2))
        frames.append(atoms)
    return frames


def run(argv: list[str], capsys) -> tuple[int, str, str]:
    code = main(argv)
    out, err = capsys.readouterr()
    return code, out, err


def test_json_plot_and_summary(tmp_path, capsys):
    frames = walking_ions()
    path = tmp_path / "md.extxyz"
    ase.io.write(path, frames)
    code, out, err = run([str(path), "--temperature", "1000", "--blocks", "4", "--kmax", "2.0",
                          "--bins", "40", "--json", str(tmp_path / "out.json"),
                          "--plot", str(tmp_path / "out.png")], capsys)
    assert code == 0, err
    data = json.loads((tmp_path / "out.json").read_text())
    assert REQUIRED_KEYS <= set(data)
    assert data["n_frames"] == 40 and data["charges"] == "per atom from the file ('initial_charges')"
    assert len(data["k"]) == len(data["s_qq"]) == len(data["s_qq_err"]) > 10
    assert all(np.isfinite(data["s_qq"])) and data["dielectric_constant"] > 1.0
    # the CLI is a thin layer: the same numbers as the library
    options = DiagnosticsOptions(kmax=2.0, n_bins=40, n_blocks=4, temperature=1000.0, progress=False)
    report = diagnose_frames(ase.io.read(path, ":"), None, options)
    np.testing.assert_allclose(data["s_qq"], report.structure_factor.value, rtol=1e-12)
    assert data["small_k_exponent"] == pytest.approx(report.fit.exponent, rel=1e-12)
    assert (tmp_path / "out.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "verdict:" in out and "dielectric constant:" in out


def write_ipi_xyz(frames: list[Atoms], handle, units: str, cell_units: str, mode: str = "xyz") -> None:
    """Frames through i-PI's own writer (internal units are Bohr)."""
    from ipi.engine.atoms import Atoms as IpiAtoms
    from ipi.engine.cell import Cell
    from ipi.utils.io import print_file
    from ipi.utils.units import unit_to_internal

    to_bohr = unit_to_internal("length", "angstrom", 1.0)
    for step, atoms in enumerate(frames):
        ipi_atoms = IpiAtoms(len(atoms))
        ipi_atoms.q[:] = atoms.positions.reshape(-1) * to_bohr
        ipi_atoms.names[:] = atoms.get_chemical_symbols()
        cell = Cell(atoms.cell.array.T * to_bohr)  # i-PI: lattice vectors as columns
        print_file(mode, ipi_atoms, cell, handle, title=f"Step: {step:10d} Bead: 0 ", key="positions",
                   dimension="length", units=units, cell_units=cell_units)


@pytest.mark.parametrize(
    "units, cell_units, mode",
    [("angstrom", "atomic_unit", "xyz"), ("atomic_unit", "atomic_unit", "xyz"), ("automatic", "automatic", "ase")],
)
def test_ipi_trajectories_match_extxyz(tmp_path, units, cell_units, mode):
    """i-PI writes positions with 6 significant digits (%12.5e) and the cell with 5
    decimals: phase errors k.dr <= 2 1/Å * 1e-4 Å, so S_QQ agrees to ~1e-3 relative."""
    frames = walking_ions(n_frames=12)
    reference_path = tmp_path / "md.extxyz"
    ase.io.write(reference_path, frames)
    ipi_path = tmp_path / ("simulation.pos_0.xyz" if mode == "xyz" else "simulation.pos_0.extxyz")
    with open(ipi_path, "w") as handle:
        write_ipi_xyz(frames, handle, units, cell_units, mode)
    first_comment = ipi_path.read_text().splitlines()[1]
    assert ("CELL(abcABC)" in first_comment) == (mode == "xyz")
    options = DiagnosticsOptions(kmax=2.0, n_bins=20, n_blocks=3, progress=False)
    reference = diagnose_file(reference_path, CHARGES, options)
    from_ipi = diagnose_file(ipi_path, CHARGES, options)
    assert from_ipi.volume == pytest.approx(reference.volume, rel=1e-6)
    np.testing.assert_allclose(from_ipi.structure_factor.k, reference.structure_factor.k, rtol=1e-6)
    np.testing.assert_allclose(from_ipi.structure_factor.value, reference.structure_factor.value, rtol=1e-3)


def test_ase_traj_matches_extxyz(tmp_path):
    frames = walking_ions(n_frames=8)
    ase.io.write(tmp_path / "md.extxyz", frames)
    ase.io.write(tmp_path / "md.traj", frames)
    options = DiagnosticsOptions(kmax=2.0, n_bins=20, n_blocks=2, progress=False)
    exact = diagnose_frames(frames, None, options).structure_factor.value
    traj = diagnose_file(tmp_path / "md.traj", None, options).structure_factor.value
    extxyz = diagnose_file(tmp_path / "md.extxyz", None, options).structure_factor.value
    np.testing.assert_allclose(traj, exact, rtol=1e-12)  # .traj stores full precision
    np.testing.assert_allclose(extxyz, exact, rtol=1e-6)  # extxyz: 8 decimals (1e-8 Å)


def test_wrapped_positions_are_detected_and_unwrap_repairs_them(tmp_path, capsys):
    """S_QQ does not care about wrapping (exp(i k.r) is periodic); M = sum q r does."""
    frames = walking_ions(n_frames=60, step=0.4)
    wrapped = [atoms.copy() for atoms in frames]
    for atoms in wrapped:
        atoms.wrap()
    ase.io.write(tmp_path / "unwrapped.extxyz", frames)
    ase.io.write(tmp_path / "wrapped.extxyz", wrapped)
    common = ["--temperature", "1200", "--kmax", "1.5", "--bins", "20", "--blocks", "3", "--quiet"]
    results = {}
    for name, extra in [("unwrapped", []), ("wrapped", []), ("wrapped", ["--unwrap"])]:
        out = tmp_path / f"{name}{len(extra)}.json"
        code, _, err = run([str(tmp_path / f"{name}.extxyz"), *common, *extra, "--json", str(out)], capsys)
        assert code == 0
        results[name + "".join(extra)] = (json.loads(out.read_text()), err)
    plain, _ = results["unwrapped"]
    broken, warning = results["wrapped"]
    repaired, _ = results["wrapped--unwrap"]
    assert "positions look wrapped" in warning and "--unwrap" in warning
    assert broken["dielectric_constant"] is None and plain["dielectric_constant"] is not None
    assert repaired["dielectric_constant"] == pytest.approx(plain["dielectric_constant"], rel=1e-9)
    np.testing.assert_allclose(broken["s_qq"], plain["s_qq"], rtol=1e-9)


def test_model_predicted_charges(tmp_path, capsys):
    """--model: the charges a MACE-LR model predicts, the same S_QQ as writing them to the file."""
    import torch

    from mace_lr.calculators import MACELRCalculator
    from model_helpers import lr_model, nacl_crystal

    model_path = tmp_path / "lr.model"
    torch.save(lr_model(), model_path)
    frames = [nacl_crystal(seed=seed) for seed in range(3)]
    calc = MACELRCalculator(model_paths=str(model_path), device="cpu", default_dtype="float64")
    for atoms in frames:
        atoms.calc = calc
        atoms.get_potential_energy()
        atoms.arrays["REF_charges"] = calc.results["charges"].copy()
        atoms.calc = None
    assert np.std(frames[0].arrays["REF_charges"]) > 0.01  # the model's charges, not +-1
    ase.io.write(tmp_path / "md.extxyz", frames)
    args = ["--kmax", "2.0", "--bins", "20", "--blocks", "2", "--quiet"]
    code, _, err = run([str(tmp_path / "md.extxyz"), "--model", str(model_path), *args, "--json", str(tmp_path / "m.json")], capsys)
    assert code == 0, err
    code, _, _ = run([str(tmp_path / "md.extxyz"), "--charges-key", "REF_charges", *args, "--json", str(tmp_path / "f.json")], capsys)
    model, stored = (json.loads((tmp_path / name).read_text()) for name in ("m.json", "f.json"))
    assert "predicted by the model" in model["charges"]
    np.testing.assert_allclose(model["s_qq"], stored["s_qq"], rtol=1e-6)  # extxyz: 8 decimals


def _write(path, frames):
    ase.io.write(path, frames)
    return str(path)


BAD_INPUTS = {
    "no cell": (lambda p: _write(p, [Atoms("NaCl", positions=[[0, 0, 0], [2.8, 0, 0]])] * 3), [], "no 3D periodic cell"),
    "element without charge": (lambda p: _write(p, walking_ions(4)), ["--charges", "Na=1"], "no charge given for element(s) Cl"),
    "single frame": (lambda p: _write(p, walking_ions(1)), [], "1 frame(s)"),
    "no charges at all": (lambda p: _write(p, [Atoms("NaCl", positions=[[0, 0, 0], [2.8, 0, 0]], cell=CELL, pbc=True)] * 3), [], "holds no per-atom charges"),
    "bad charge syntax": (lambda p: _write(p, walking_ions(4)), ["--charges", "Na:1"], "cannot read 'Na:1'"),
    "missing file": (lambda p: str(p), [], "does not exist"),
    "not a trajectory": (lambda p: (p.write_text("hello world\n"), str(p))[1], [], "cannot read frame 0 with ASE"),
    "missing model": (lambda p: _write(p, walking_ions(4)), ["--model", "nowhere.model"], "does not exist"),
    "too many blocks": (lambda p: _write(p, walking_ions(4)), ["--blocks", "9"], "--blocks must be between 2"),
    "changing atoms": (lambda p: _write(p, walking_ions(3, n_ions=24) + walking_ions(3, n_ions=26)), [], "different atom order"),
}


@pytest.mark.parametrize("case", sorted(BAD_INPUTS))
def test_bad_input_exits_2_with_a_message(tmp_path, capsys, case):
    make, extra, message = BAD_INPUTS[case]
    path = make(tmp_path / "bad.extxyz")
    code, out, err = run([path, "--temperature", "300", *extra], capsys)
    assert code == 2
    assert message in err and "Traceback" not in err


def test_ipi_forces_file_is_refused(tmp_path, capsys):
    handle = io.StringIO()
    write_ipi_xyz(walking_ions(3), handle, "atomic_unit", "atomic_unit")
    path = tmp_path / "simulation.for_0.xyz"
    path.write_text(handle.getvalue().replace("positions{", "forces{"))
    code, _, err = run([str(path), "--charges", "Na=1,Cl=-1"], capsys)
    assert code == 2 and "cannot be read as positions" in err


def test_console_script_reports_bad_input_without_traceback(tmp_path):
    path = _write(tmp_path / "one.extxyz", walking_ions(1))
    done = subprocess.run([sys.executable, "-m", "mace_lr.cli.diagnose", path], capture_output=True, text=True, timeout=120)
    assert done.returncode == 2
    assert "mace_lr_diagnose: error:" in done.stderr and "Traceback" not in done.stderr
