"""The driver against the real i-PI server (subprocess, UNIX socket, exit_on_disconnect).

The driver runs in a thread of the test process (:func:`ipi_driver.serve` / ``cli.main``)
where that keeps the test short (importing torch and MACE takes several seconds per
process); the console scripts themselves run as processes in
``test_ipi_routes.py``. Every comparison recomputes what i-PI reports with our ASE
calculator on the geometries i-PI wrote.
"""

from __future__ import annotations

import os
import signal
import socket
import time

import numpy as np
import pytest
import torch
from ase import Atoms
from ase.io import read, write
from ase.stress import voigt_6_to_full_3x3_stress
from ipi.interfaces.sockets import MESSAGE

from ipi_driver import ATOMIC_UNITS, serve
from ipi_driver.cli import main
from ipi_helpers import (
    saved_lr_model,
    Background,
    ffsocket_unix,
    ipi_log,
    ipi_server,
    needs_ipi,
    read_properties,
    run_with_driver,
    simulation_xml,
)
from model_helpers import nacl_crystal, water_cluster

pytestmark = needs_ipi


@pytest.fixture(autouse=True)
def single_torch_thread():
    """i-PI and the driver share two cores here: one torch thread avoids oversubscription."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


@pytest.fixture(scope="module")
def model_path(tmp_path_factory):
    return saved_lr_model(tmp_path_factory)


def calculator(path):
    from mace_lr.calculators import MACELRCalculator

    return MACELRCalculator(model_paths=path, device="cpu", default_dtype="float64")


def cluster_init(folder) -> Atoms:
    """Two waters and a Na (neutral model), in a box i-PI needs but the driver ignores (pbc F)."""
    atoms = water_cluster()
    atoms.cell = np.eye(3) * 20.0
    atoms.pbc = False
    write(folder / "init.xyz", atoms, format="extxyz")
    return atoms


def system_xml(nbeads: int, motion: str, forces: str = "<force forcefield='lr'/>", ensemble: str = "") -> str:
    return f"""  <system>
    <initialize nbeads='{nbeads}'>
      <file mode='ase'> init.xyz </file>
      <velocities mode='thermal' units='kelvin'> 300 </velocities>
    </initialize>
    <forces> {forces} </forces>
    <motion mode='{motion.split()[0]}'>
{motion.split(None, 1)[1]}
    </motion>
    <ensemble><temperature units='kelvin'> 300 </temperature>{ensemble}</ensemble>
  </system>"""


def driver(calc, atoms, folder, extras=()):
    return lambda: serve(calc, atoms, address="lr", unix=True, sockets_prefix=str(folder) + "/", extras=extras, log=None)


def bead_frames(folder, nbeads: int, name: str = "pos") -> list[list[Atoms]]:
    return [read(folder / f"sim.{name}_{b}.extxyz", index=":") for b in range(nbeads)]


def energy_at(calc, template: Atoms, positions, cell=None) -> float:
    atoms = template.copy()
    atoms.positions = positions
    if cell is not None:
        atoms.set_cell(cell, scale_atoms=False)
    atoms.calc = calc
    return atoms.get_potential_energy()


def test_pimd_nvt_four_beads_potentials_match_calculator(model_path, tmp_path):
    atoms = cluster_init(tmp_path)
    nbeads, steps = 4, 4
    pots = ", ".join(f"potential(bead={b}){{electronvolt}}" for b in range(nbeads))
    xml = simulation_xml(
        forcefields=ffsocket_unix("lr", "lr"),
        system=system_xml(nbeads, """dynamics <dynamics mode='nvt'>
        <timestep units='femtosecond'> 0.5 </timestep>
        <thermostat mode='pile_l'><tau units='femtosecond'> 50 </tau></thermostat>
      </dynamics>"""),
        outputs=f"""    <properties stride='1' filename='out'> [ step, {pots} ] </properties>
    <trajectory filename='pos' stride='1' format='ase'> positions{{ase}} </trajectory>""",
        steps=steps,
    )
    stats = run_with_driver(tmp_path, xml, driver(calculator(model_path), atoms, tmp_path))
    assert stats.structures == nbeads * (steps + 1)
    table = read_properties(tmp_path / "sim.out")
    frames = bead_frames(tmp_path, nbeads)
    calc = calculator(model_path)
    ours = np.array([[energy_at(calc, atoms, frames[b][s].positions) for b in range(nbeads)] for s in range(steps + 1)])
    # the ring polymer spreads out: beads differ, so each is checked on its own geometry
    assert np.ptp(ours[-1]) > 1e-3
    print(f"PIMD: max |V_i-PI - V_ours| over {ours.size} bead energies: {np.abs(table[:, 1:] - ours).max():.1e} eV")
    np.testing.assert_allclose(table[:, 1:], ours, atol=2e-6, rtol=0)


def test_nve_conserved_quantity(model_path, tmp_path):
    atoms = cluster_init(tmp_path)
    steps = 40
    xml = simulation_xml(
        forcefields=ffsocket_unix("lr", "lr"),
        system=system_xml(1, """dynamics <dynamics mode='nve'>
        <timestep units='femtosecond'> 0.25 </timestep>
      </dynamics>"""),
        outputs="""    <properties stride='1' filename='out'> [ step, conserved{electronvolt}, potential{electronvolt}, kinetic_md{electronvolt} ] </properties>""",
        steps=steps,
    )
    run_with_driver(tmp_path, xml, driver(calculator(model_path), atoms, tmp_path))
    table = read_properties(tmp_path / "sim.out")
    conserved, potential = table[:, 1], table[:, 2]
    drift = abs(conserved[-1] - conserved[0]) / len(atoms)
    # 40 steps of 0.25 fs: energy moves between potential and kinetic, the total stays put
    print(f"NVE: potential range {np.ptp(potential):.3e} eV, conserved range {np.ptp(conserved):.3e} eV, "
          f"drift {drift:.2e} eV/atom over {steps} steps")
    assert np.ptp(potential) > 2e-2
    assert np.ptp(conserved) < 1e-3 * np.ptp(potential)  # measured: 2e-4
    assert drift < 1e-4  # eV/atom; measured: 1.4e-5


def driven_xml(nbeads: int, field: list[float], steps: int, forces: str) -> str:
    amplitude = ", ".join(str(v) for v in field)
    return simulation_xml(
        forcefields=ffsocket_unix("lr", "lr"),
        system=system_xml(nbeads, f"""driven_dynamics <driven_dynamics mode='eda-nvt'>
        <timestep units='femtosecond'> 0.5 </timestep>
        <thermostat mode='pile_l'><tau units='femtosecond'> 50 </tau></thermostat>
        <efield>
          <amp units='v/ang'> [ {amplitude} ] </amp>
          <freq units='inversecm'> 0.0 </freq>
        </efield>
        <bec mode='driver'> </bec>
      </driven_dynamics>""", forces=forces),
        outputs="""    <properties stride='1' filename='out'> [ step, potential{electronvolt}, Efield{v/ang}, dipole{atomic_unit} ] </properties>
    <trajectory filename='pos' stride='1' format='ase'> positions{ase} </trajectory>
    <trajectory filename='ef' stride='1' format='ase'> Eforces{ase} </trajectory>""",
        steps=steps,
    )


def born_charges(calc, template: Atoms, positions) -> np.ndarray:
    atoms = template.copy()
    atoms.positions = positions
    return calc.get_property("bec", atoms).reshape(-1, 3)


def test_driven_dynamics_field_forces_are_zstar_e(model_path, tmp_path):
    atoms = cluster_init(tmp_path)
    field = [0.02, -0.01, 0.05]  # V/Å
    nbeads, steps = 2, 3
    xml = driven_xml(nbeads, field, steps, "<force forcefield='lr'/>")
    run_with_driver(tmp_path, xml, driver(calculator(model_path), atoms, tmp_path, extras=("dipole", "bec")))
    table = read_properties(tmp_path / "sim.out")
    np.testing.assert_allclose(table[:, 2:5], np.tile(field, (steps + 1, 1)), rtol=1e-12)
    positions, eforces = bead_frames(tmp_path, nbeads), bead_frames(tmp_path, nbeads, "ef")
    calc = calculator(model_path)
    largest_asr = largest_error = 0.0
    for b in range(nbeads):
        for s in range(steps + 1):
            z = born_charges(calc, atoms, positions[b][s].positions)
            largest_asr = max(largest_asr, np.abs(z.reshape(-1, 3, 3).sum(0)).max() / len(atoms))
            expected = (z @ np.array(field)).reshape(-1, 3)  # eV/Å for E in V/Å
            largest_error = max(largest_error, np.abs(eforces[b][s].arrays["Eforces"] - expected).max())
            np.testing.assert_allclose(eforces[b][s].arrays["Eforces"], expected, atol=2e-8)
    print(f"EDA: max |F_i-PI - Z*E| {largest_error:.1e} eV/Å (largest |Z*E| {np.abs(expected).max():.3f}); "
          f"max |sum_i Z_i|/N {largest_asr:.1e} e")
    assert np.abs(expected).max() > 1e-3  # the field force is not trivially zero
    # i-PI stops the run when |sum_i Z_i| / N > asr_threshold * N (1e-8 * N here); it did not
    assert largest_asr < 1e-8 * len(atoms)


def test_driven_dynamics_with_ring_polymer_contraction(model_path, tmp_path):
    """4 beads contracted to the centroid; BEC and dipole interpolated (``interpolate_extras``)."""
    atoms = cluster_init(tmp_path)
    field = [0.0, 0.04, -0.03]
    nbeads, steps = 4, 2
    forces = "<force forcefield='lr' nbeads='1'><interpolate_extras> [ BEC, dipole ] </interpolate_extras></force>"
    run_with_driver(tmp_path, driven_xml(nbeads, field, steps, forces),
                    driver(calculator(model_path), atoms, tmp_path, extras=("bec", "dipole")))
    positions, eforces = bead_frames(tmp_path, nbeads), bead_frames(tmp_path, nbeads, "ef")
    table = read_properties(tmp_path / "sim.out")
    calc = calculator(model_path)
    largest_error = 0.0
    for s in range(steps + 1):
        centroid = np.mean([positions[b][s].positions for b in range(nbeads)], axis=0)
        expected = (born_charges(calc, atoms, centroid) @ np.array(field)).reshape(-1, 3)
        for b in range(nbeads):
            largest_error = max(largest_error, np.abs(eforces[b][s].arrays["Eforces"] - expected).max())
            np.testing.assert_allclose(eforces[b][s].arrays["Eforces"], expected, atol=2e-7)
        assert table[s, 1] == pytest.approx(energy_at(calc, atoms, centroid), abs=2e-6)
        # i-PI's dipole property: the centroid dipole (e·Bohr), copied to every bead by the contraction
        np.testing.assert_allclose(table[s, 5:8], calc.results["dipole"] * ATOMIC_UNITS["dipole"], atol=1e-6)
    assert np.ptp([positions[b][-1].positions for b in range(nbeads)], axis=0).max() > 1e-3  # beads did spread
    print(f"EDA + RPC: max |F_i-PI - Z*(centroid) E| {largest_error:.1e} eV/Å")


def test_npt_virial_matches_stress(model_path, tmp_path):
    """Periodic NaCl under an isotropic barostat: i-PI's virial/V equals -stress of our calculator."""
    atoms = nacl_crystal()
    write(tmp_path / "init.xyz", atoms, format="extxyz")
    steps = 3
    xml = simulation_xml(
        forcefields=ffsocket_unix("lr", "lr"),
        system=system_xml(1, """dynamics <dynamics mode='npt'>
        <timestep units='femtosecond'> 0.5 </timestep>
        <thermostat mode='langevin'><tau units='femtosecond'> 50 </tau></thermostat>
        <barostat mode='isotropic'>
          <tau units='femtosecond'> 100 </tau>
          <thermostat mode='langevin'><tau units='femtosecond'> 50 </tau></thermostat>
        </barostat>
      </dynamics>""", ensemble="<pressure units='gigapascal'> 1.0 </pressure>"),
        outputs="""    <properties stride='1' filename='out'> [ step, volume{angstrom3}, virial_md{ev/ang3}, potential{electronvolt} ] </properties>
    <trajectory filename='pos' stride='1' format='ase'> positions{ase} </trajectory>""",
        steps=steps,
    )
    run_with_driver(tmp_path, xml, driver(calculator(model_path), atoms, tmp_path))
    table = read_properties(tmp_path / "sim.out")
    frames = read(tmp_path / "sim.pos_0.extxyz", index=":")
    print("NPT volumes (Å^3):", table[:, 1])
    assert np.ptp(table[:, 1]) > 1e-3  # the barostat moved the cell
    calc = calculator(model_path)
    largest_error = 0.0
    for s, frame in enumerate(frames):
        config = atoms.copy()
        config.positions = frame.positions
        config.set_cell(frame.cell, scale_atoms=False)
        config.calc = calc
        stress = voigt_6_to_full_3x3_stress(config.get_stress())
        xx, yy, zz, xy, xz, yz = table[s, 2:8]  # i-PI's tensor2vec order
        ipi_virial = np.array([[xx, xy, xz], [xy, yy, yz], [xz, yz, zz]])
        largest_error = max(largest_error, np.abs(ipi_virial + stress).max())
        np.testing.assert_allclose(ipi_virial, -stress, atol=2e-6)
        assert table[s, 8] == pytest.approx(config.get_potential_energy(), abs=2e-6)
    # and the model's stress is the strain derivative of its energy (last frame)
    step = 1e-5
    for a in range(3):
        energies = []
        for sign in (1, -1):
            strained = config.copy()
            deformation = np.eye(3)
            deformation[a, a] += sign * step
            strained.set_cell(config.cell.array @ deformation, scale_atoms=True)
            strained.calc = calc
            energies.append(strained.get_potential_energy())
        fd_stress = (energies[0] - energies[1]) / (2 * step) / config.get_volume()
        print(f"NPT: i-PI -virial/V [{a},{a}] {-ipi_virial[a, a]:.6e} vs finite-difference stress {fd_stress:.6e} eV/Å^3")
        assert -ipi_virial[a, a] == pytest.approx(fd_stress, abs=2e-6)
    print(f"NPT: max |virial_md + stress| over {len(frames)} frames: {largest_error:.1e} eV/Å^3")


def test_server_killed_mid_run_driver_exits_with_message(model_path, tmp_path, capsys):
    atoms = cluster_init(tmp_path)
    xml = simulation_xml(
        forcefields=ffsocket_unix("lr", "lr"),
        system=system_xml(1, """dynamics <dynamics mode='nve'>
        <timestep units='femtosecond'> 0.1 </timestep></dynamics>"""),
        outputs="""    <properties stride='1' filename='out' flush='1'> [ step, potential ] </properties>""",
        steps=100000,
    )
    argv = ["--model", model_path, "--init", str(tmp_path / "init.xyz"), "-u", "-a", "lr",
            "-S", str(tmp_path) + "/", "--connect-timeout", "60"]
    with ipi_server(tmp_path, xml) as process:
        client = Background(lambda: main(argv))
        deadline = time.monotonic() + 90
        out = tmp_path / "sim.out"
        while not (out.exists() and len([l for l in out.read_text().splitlines() if not l.startswith("#")]) >= 3):
            assert process.poll() is None, ipi_log(tmp_path)
            assert time.monotonic() < deadline, "i-PI made no progress"
            time.sleep(0.05)
        os.killpg(process.pid, signal.SIGKILL)
        code = client.result(timeout=30)  # fails the test, instead of hanging, if the driver does not return
    assert code == 2
    err = capsys.readouterr().err
    assert "i-PI closed the connection" in err and "stopped or crashed" in err


def fake_server(path, script):
    """A UNIX socket server that accepts one client and runs ``script(connection)``."""
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(str(path))
    listener.listen(1)

    def run():
        connection, _ = listener.accept()
        with connection:
            script(connection)
        listener.close()

    return Background(run)


@pytest.mark.parametrize("natoms, message", [(-1, "announces -1 atoms"), (2**31 - 1, "announces 2147483647 atoms"),
                                             (3, "i-PI sent 3 atoms but the init structure has 4")])
def test_cli_against_a_bad_server(tmp_path, capsys, natoms, message):
    """``--calculator`` route (ASE's Lennard-Jones); a server announcing absurd atom counts."""
    write(tmp_path / "ar.xyz", Atoms("Ar4", positions=np.arange(12.0).reshape(4, 3) * 1.3), format="extxyz")

    def script(connection):
        connection.sendall(MESSAGE["status"])
        assert connection.recv(12) == MESSAGE["needinit"]
        connection.sendall(MESSAGE["init"] + np.int32(0).tobytes() + np.int32(0).tobytes())
        h = np.eye(3) * 20.0
        connection.sendall(MESSAGE["posdata"] + h.tobytes() + np.linalg.inv(h).tobytes() + np.int32(natoms).tobytes())
        connection.recv(1)  # until the client hangs up

    server = fake_server(tmp_path / "ipi_bad", script)
    code = main(["--calculator", "ase.calculators.lj:LennardJones", "--calculator-kwargs", '{"sigma": 3.4, "rc": 8.0}',
                 "--init", str(tmp_path / "ar.xyz"), "-u", "-a", "bad", "-S", str(tmp_path / "ipi_")])
    server.result(timeout=10)
    assert code == 3
    assert message in capsys.readouterr().err


def test_cli_wrong_header(tmp_path, capsys):
    write(tmp_path / "ar.xyz", Atoms("Ar2", positions=[[0, 0, 0], [3.8, 0, 0]]), format="extxyz")
    server = fake_server(tmp_path / "ipi_bad", lambda c: (c.sendall(b"GARBAGE12345"), c.recv(1)))
    code = main(["--calculator", "ase.calculators.lj:LennardJones", "--init", str(tmp_path / "ar.xyz"),
                 "-u", "-a", "bad", "-S", str(tmp_path / "ipi_"), "--extras", "none"])
    server.result(timeout=10)
    assert code == 3
    assert "unexpected message header b'GARBAGE12345'" in capsys.readouterr().err
