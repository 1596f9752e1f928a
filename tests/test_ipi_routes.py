"""The console scripts as processes: ``mace_lr_ipi`` over TCP (two drivers, batched) and
i-PI's own entry points for our PES file (``i-pi-py_driver -m custom`` and ``<ffdirect>``).
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import time

import numpy as np
import pytest
from ase import Atoms
from ase.io import read, write

from ipi_driver.cli import PES_PATH
from ipi_helpers import (
    saved_lr_model,
    ffsocket_unix,
    free_tcp_port,
    ipi_log,
    ipi_server,
    needs_ipi,
    read_properties,
    simulation_xml,
    sockets_prefix,
    wait_for_path,
)
from model_helpers import water_cluster

pytestmark = needs_ipi
MACE_LR_IPI = shutil.which("mace_lr_ipi")
PY_DRIVER = shutil.which("i-pi-py_driver")
#: one torch/OpenMP thread per process: i-PI and the drivers share two cores
SINGLE_THREAD = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}


@pytest.fixture(scope="module")
def model_path(tmp_path_factory):
    return saved_lr_model(tmp_path_factory)


def cluster_files(folder):
    atoms = water_cluster()
    atoms.cell = np.eye(3) * 20.0
    atoms.pbc = False
    write(folder / "init.xyz", atoms, format="extxyz")
    return atoms


def pimd_system(nbeads: int, forces: str, temperature: float = 300) -> str:
    return f"""  <system>
    <initialize nbeads='{nbeads}'>
      <file mode='ase'> init.xyz </file>
      <velocities mode='thermal' units='kelvin'> {temperature} </velocities>
    </initialize>
    <forces> {forces} </forces>
    <motion mode='dynamics'>
      <dynamics mode='nvt'>
        <timestep units='femtosecond'> 0.5 </timestep>
        <thermostat mode='pile_l'><tau units='femtosecond'> 50 </tau></thermostat>
      </dynamics>
    </motion>
    <ensemble><temperature units='kelvin'> {temperature} </temperature></ensemble>
  </system>"""


def reference_energies(model_path, template, frames) -> np.ndarray:
    from mace_lr.calculators import MACELRCalculator

    calc = MACELRCalculator(model_paths=model_path, device="cpu", default_dtype="float64")
    energies = []
    for frame in frames:
        atoms = template.copy()
        atoms.positions = frame.positions
        atoms.calc = calc
        energies.append(atoms.get_potential_energy())
    return np.array(energies)


def wait_all(processes, timeout: float, folder) -> None:
    deadline = time.monotonic() + timeout
    for process in processes:
        try:
            process.wait(timeout=max(1.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            for p in processes:
                if p.poll() is None:
                    os.killpg(p.pid, signal.SIGKILL)
            raise AssertionError(f"a process did not finish within {timeout} s:\n{ipi_log(folder)}") from None


def wait_for_line(path, text: str, process, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while text not in (path.read_text() if path.exists() else ""):
        assert process.poll() is None, f"driver exited early:\n{path.read_text()}"
        assert time.monotonic() < deadline, f"no {text!r} in {path} within {timeout} s"
        time.sleep(0.1)


@pytest.mark.skipif(MACE_LR_IPI is None, reason="mace_lr_ipi is not installed")
def test_two_tcp_drivers_share_the_beads(tmp_path):
    """Two ``mace_lr_ipi`` processes on 127.0.0.1 serving ASE's Lennard-Jones (``--calculator``),
    batched requests (batch_size 2): both get work, none is lost, energies are right.

    A plain ASE calculator keeps the processes light (no torch/MACE import); the model
    route through the same code is covered by the other tests."""
    from ase.calculators.lj import LennardJones

    lj = {"sigma": 3.4, "epsilon": 0.0104, "rc": 10.0}
    template = Atoms("Ar6", positions=np.array(
        [[0, 0, 0], [3.8, 0, 0], [0, 3.8, 0], [0, 0, 3.8], [3.8, 3.8, 0.2], [1.9, 1.8, 3.0]]), cell=np.eye(3) * 30.0)
    write(tmp_path / "init.xyz", template, format="extxyz")
    template.pbc = False
    port = free_tcp_port()
    nbeads, steps = 4, 5
    drivers, logs = [], []
    for k in range(2):
        logs.append(tmp_path / f"driver{k}.log")
        drivers.append(subprocess.Popen(
            [MACE_LR_IPI, "--calculator", "ase.calculators.lj:LennardJones", "--calculator-kwargs", json.dumps(lj),
             "--init", "init.xyz", "-a", "127.0.0.1", "-p", str(port), "-v"],
            cwd=tmp_path, stdout=subprocess.DEVNULL, stderr=open(logs[k], "w"), start_new_session=True,
        ))
    try:
        # both are ready (init structure evaluated) before i-PI starts, so both connect at once
        for process, log in zip(drivers, logs):
            wait_for_line(log, "connecting to i-PI", process, timeout=60)
        forcefield = f"""  <ffsocket name='lj' mode='inet' pbc='false'>
    <address> 127.0.0.1 </address> <port> {port} </port>
    <exit_on_disconnect> true </exit_on_disconnect>
    <batch_size> 2 </batch_size>
  </ffsocket>"""
        pots = ", ".join(f"potential(bead={b}){{electronvolt}}" for b in range(nbeads))
        xml = simulation_xml(
            forcefields=forcefield, system=pimd_system(nbeads, "<force forcefield='lj'/>", temperature=60),
            outputs=f"""    <properties stride='1' filename='out'> [ step, {pots} ] </properties>
    <trajectory filename='pos' stride='1' format='ase'> positions{{ase}} </trajectory>""",
            steps=steps,
        )
        with ipi_server(tmp_path, xml) as server:
            wait_all([server, *drivers], timeout=90, folder=tmp_path)
            assert server.returncode == 0, ipi_log(tmp_path)
    finally:
        for process in drivers:
            if process.poll() is None:
                os.killpg(process.pid, signal.SIGKILL)
    texts = [log.read_text() for log in logs]
    assert [p.returncode for p in drivers] == [0, 0], texts
    counts = [int(text.split("done: ")[1].split()[0]) for text in texts]
    assert all("batch size 2" in text for text in texts), texts
    assert min(counts) > 0 and sum(counts) == nbeads * (steps + 1), counts  # both worked, nothing lost
    table = read_properties(tmp_path / "sim.out")
    calc = LennardJones(**lj)
    for b in range(nbeads):
        for s, frame in enumerate(read(tmp_path / f"sim.pos_{b}.extxyz", index=":")):
            atoms = template.copy()
            atoms.positions = frame.positions
            atoms.calc = calc
            assert table[s, 1 + b] == pytest.approx(atoms.get_potential_energy(), abs=1e-6)


@pytest.mark.skipif(PY_DRIVER is None, reason="i-pi-py_driver is not installed")
def test_ipi_py_driver_custom_and_ffdirect_routes(model_path, tmp_path):
    """Our PES file through i-PI's own entry points, side by side (two i-PI runs at once):
    ``i-pi-py_driver -m custom -P`` over a UNIX socket, and ``<ffdirect><pes>custom</pes>``
    inside i-PI. Each potential equals our calculator on i-PI's geometries."""
    steps = 3
    outputs = """    <properties stride='1' filename='out'> [ step, potential{electronvolt} ] </properties>
    <trajectory filename='pos' stride='1' format='ase'> positions{ase} </trajectory>"""
    folders = {name: tmp_path / name for name in ("pydriver", "ffdirect")}
    for folder in folders.values():
        folder.mkdir()
        template = cluster_files(folder)
    ffdirect = f"""  <ffdirect name='lr'>
    <pes> custom </pes>
    <pes_path> {PES_PATH} </pes_path>
    <parameters> {{template: init.xyz, model: {model_path}, extras: dipole+charges}} </parameters>
  </ffdirect>"""
    xml = {
        "pydriver": simulation_xml(forcefields=ffsocket_unix("lr", "pyd"), system=pimd_system(1, "<force forcefield='lr'/>"),
                                   outputs=outputs, steps=steps),
        "ffdirect": simulation_xml(forcefields=ffdirect, system=pimd_system(1, "<force forcefield='lr'/>"),
                                   outputs=outputs, steps=steps),
    }
    with ipi_server(folders["ffdirect"], xml["ffdirect"], env=SINGLE_THREAD) as direct, \
            ipi_server(folders["pydriver"], xml["pydriver"], env=SINGLE_THREAD) as server:
        # i-pi-py_driver does not retry connecting: start it once i-PI has opened the socket
        wait_for_path(folders["pydriver"] / "pyd", server, timeout=60)
        driver = subprocess.Popen(
            [PY_DRIVER, "-m", "custom", "-P", str(PES_PATH), "-u", "-a", "pyd", "-S", sockets_prefix(folders["pydriver"]),
             "-o", f"template=init.xyz,model={model_path},extras=bec+dipole"],
            cwd=folders["pydriver"], stdout=subprocess.DEVNULL, stderr=open(tmp_path / "pydriver.log", "w"),
            env=SINGLE_THREAD, start_new_session=True,
        )
        try:
            wait_all([direct, server, driver], timeout=150, folder=tmp_path)
        finally:
            if driver.poll() is None:
                os.killpg(driver.pid, signal.SIGKILL)
        assert server.returncode == 0, ipi_log(folders["pydriver"]) + (tmp_path / "pydriver.log").read_text()
        assert direct.returncode == 0, ipi_log(folders["ffdirect"])
    for folder in folders.values():
        table = read_properties(folder / "sim.out")
        ours = reference_energies(model_path, template, read(folder / "sim.pos_0.extxyz", index=":"))
        assert np.ptp(ours) > 1e-4  # the structure moved
        np.testing.assert_allclose(table[:, 1], ours, atol=2e-6, rtol=0)
