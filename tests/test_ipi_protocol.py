"""The socket client against i-PI's own server-side code, and against malformed servers.

i-PI's ``Driver`` class (``ipi/interfaces/sockets.py``) is the object the real server
uses per client; here it talks to our client over a socket pair, so every layout
(old exchange, consolidated, batched) is checked against i-PI's reading of it.
"""

from __future__ import annotations

import socket

import numpy as np
import pytest
from ase import Atoms
from ase.calculators.lj import LennardJones
from ipi.engine.forcefields import ForceRequest
from ipi.interfaces.sockets import HDRLEN, MESSAGE, Driver

from ipi_driver.client import ClientStats, run_client
from ipi_driver.potential import ASEPotential
from ipi_driver.protocol import (
    MAX_ATOMS,
    Channel,
    ProtocolError,
    ServerDisconnected,
    Structure,
    encode_forces,
    parse_batch_size,
)
from ipi_helpers import Background

BOHR = 1.0 / 0.52917721  # Å -> Bohr, only to build test geometries


def argon_cluster(n: int = 5, seed: int = 3) -> Atoms:
    rng = np.random.default_rng(seed)
    positions = rng.uniform(0.0, 6.0, size=(n, 3))
    positions[:, 0] += 3.5 * np.arange(n)
    return Atoms(f"Ar{n}", positions=positions)


def lj_potential(n: int = 5, extras=()) -> ASEPotential:
    return ASEPotential(LennardJones(sigma=3.4, epsilon=0.0104, rc=10.0), argon_cluster(n), extras)


def request(potential: ASEPotential, shift: float, rid: int = 0) -> ForceRequest:
    """An i-PI force request: flat positions (Bohr), (h, ih) with h's columns the lattice vectors."""
    structure = potential.template_structure()
    h = np.array([[30.0, 2.0, 1.0], [0.0, 28.0, 3.0], [0.0, 0.0, 33.0]])  # upper triangular, as i-PI keeps it
    pos = (structure.positions + shift).reshape(-1).copy()
    return ForceRequest({
        "id": rid, "pos": pos, "active": np.arange(pos.size), "cell": (h, np.linalg.inv(h)),
        "pars": " foo : bar , ", "result": None, "status": "Queued", "start": -1, "offset": 0.0,
        "t_queued": 0.0, "t_dispatched": 0, "t_finished": 0,
    })


def expected(potential: ASEPotential, r: ForceRequest):
    return potential.compute(Structure(cell=r["cell"][0], positions=r["pos"].reshape(-1, 3)))


@pytest.fixture
def pair():
    """(i-PI's Driver on the server end, our Channel on the client end)."""
    server, client = socket.socketpair()
    server.settimeout(10.0)
    ipi_side = Driver(server)
    yield ipi_side, Channel(client)
    for s in (server, client):
        s.close()
    ipi_side.close()


def assert_same(result_list, reference) -> None:
    energy, forces, virial, extras = result_list
    assert energy == reference.energy
    np.testing.assert_array_equal(forces, reference.forces.reshape(-1))
    np.testing.assert_array_equal(virial, reference.virial)
    return extras


def test_consolidated_exchange_is_read_by_ipi(pair):
    """i-PI 3.3's default path: STATUS/INIT, then POSDATA+GETFORCE in one write."""
    ipi_side, channel = pair
    potential = lj_potential(extras=())
    client = Background(lambda: run_client(channel, potential))
    requests = [request(potential, shift, rid=k) for k, shift in enumerate((0.0, 0.05, -0.03))]
    for r in requests:
        assert ipi_side.dispatch_send(r)
        assert ipi_side.dispatch_recv(r)
        assert r["status"] == "Done"
        assert ipi_side.status & 2  # Ready again after the reply
        assert_same(r["result"], expected(potential, r))
    ipi_side.send_msg("exit")
    stats = client.result(timeout=20)
    assert isinstance(stats, ClientStats)
    assert stats.structures == 3 and stats.requests == 3


def test_old_exchange_with_status_in_between(pair):
    """consolidate_messages=false: STATUS between POSDATA and GETFORCE, INIT per request."""
    ipi_side, channel = pair
    potential = lj_potential()
    client = Background(lambda: run_client(channel, potential))
    r = request(potential, 0.02)
    ipi_side.dispatch(r)
    assert r["status"] == "Done"
    assert_same(r["result"], expected(potential, r))
    ipi_side.send_msg("exit")
    assert client.result(timeout=20).structures == 1


def test_batched_exchange(pair):
    """batch_size 3 announced in INIT; 2 real requests padded to 3 by i-PI."""
    ipi_side, channel = pair
    ipi_side.batch_size = 3
    potential = lj_potential()
    client = Background(lambda: run_client(channel, potential))
    reqs = [request(potential, 0.01 * k, rid=k) for k in range(2)]
    assert ipi_side.dispatch_send_batch(reqs)
    assert ipi_side.dispatch_recv_batch(reqs)
    for r in reqs:
        assert_same(r["result"], expected(potential, r))
    ipi_side.send_msg("exit")
    assert client.result(timeout=20).structures == 3  # the padded copy is evaluated too


def test_extras_reach_ipi_as_json(pair):
    """The extras string is parsed by i-PI's parse_extra into the values we computed."""
    from ase.calculators.calculator import all_changes

    class DipoleLJ(LennardJones):
        implemented_properties = LennardJones.implemented_properties + ["dipole", "charges"]

        def calculate(self, atoms=None, properties=("energy",), system_changes=all_changes):
            super().calculate(atoms, properties, system_changes)
            charges = np.tile([0.4, -0.4], len(self.atoms))[: len(self.atoms)]
            self.results["charges"] = charges
            self.results["dipole"] = charges @ self.atoms.positions

    ipi_side, channel = pair
    potential = ASEPotential(DipoleLJ(sigma=3.4, epsilon=0.0104, rc=10.0), argon_cluster(4), ("dipole", "charges"))
    client = Background(lambda: run_client(channel, potential))
    r = request(potential, 0.0)
    ipi_side.dispatch_send(r)
    ipi_side.dispatch_recv(r)
    extras = r["result"][3]
    positions_angstrom = r["pos"].reshape(-1, 3) / BOHR
    charges = np.array([0.4, -0.4, 0.4, -0.4])
    np.testing.assert_allclose(extras["charges"], charges)
    np.testing.assert_allclose(extras["dipole"], charges @ positions_angstrom * BOHR, rtol=1e-7)
    ipi_side.send_msg("exit")
    client.result(timeout=20)


# --------------------------------------------------------------------- malformed servers


def serve_against(payload: bytes, natoms: int = 5, close: bool = True):
    """Run our client against a fake server that writes ``payload``; return the exception."""
    server, client = socket.socketpair()
    potential = lj_potential(natoms)
    runner = Background(lambda: run_client(Channel(client), potential))
    server.sendall(payload)
    if close:
        server.shutdown(socket.SHUT_WR)
    try:
        runner.result(timeout=20)
    except (ProtocolError, ServerDisconnected) as error:
        return error
    finally:
        server.close()
        client.close()
    raise AssertionError("the client accepted the payload")


def init_message(text: str = "") -> bytes:
    return MESSAGE["init"] + np.int32(0).tobytes() + np.int32(len(text)).tobytes() + text.encode()


def posdata(natoms_on_wire: int, positions: np.ndarray | None = None) -> bytes:
    h = np.eye(3) * 30.0
    body = h.tobytes() + np.linalg.inv(h).tobytes() + np.int32(natoms_on_wire).tobytes()
    return MESSAGE["posdata"] + body + (b"" if positions is None else positions.tobytes())


def test_wrong_header_is_a_clear_error():
    error = serve_against(b"HELLO WORLD!")
    assert isinstance(error, ProtocolError)
    assert "unexpected message header b'HELLO WORLD!'" in str(error) and "i-PI server" in str(error)


@pytest.mark.parametrize("count", [-1, -(2**31), MAX_ATOMS + 1, 2**31 - 1])
def test_absurd_atom_count_is_refused_before_allocating(count):
    error = serve_against(init_message() + posdata(count))
    assert isinstance(error, ProtocolError)
    assert f"announces {count} atoms" in str(error)


def test_atom_count_different_from_init_structure():
    error = serve_against(init_message() + posdata(7), natoms=5)
    assert isinstance(error, ProtocolError)
    assert "i-PI sent 7 atoms but the init structure has 5" in str(error)


@pytest.mark.parametrize("length", [-5, 2**30])
def test_absurd_init_length(length):
    payload = MESSAGE["init"] + np.int32(0).tobytes() + np.int32(length).tobytes()
    error = serve_against(payload)
    assert isinstance(error, ProtocolError) and f"{length} bytes" in str(error)


def test_bad_batch_size_and_out_of_order_messages():
    assert parse_batch_size(" a : 1 , , batch_size:4") == 4
    assert parse_batch_size(" a : 1 , ") == 1
    with pytest.raises(ProtocolError, match="batch_size 0"):
        parse_batch_size("batch_size:0")
    error = serve_against(posdata(5))
    assert isinstance(error, ProtocolError) and "POSDATA before INIT" in str(error)
    error = serve_against(init_message() + MESSAGE["getforce"])
    assert isinstance(error, ProtocolError) and "before sending positions" in str(error)


def test_garbled_cell_is_detected():
    """Bytes that are not i-PI's (h, h^-1) layout, e.g. a server in mode='shm'."""
    h = np.eye(3) * 30.0
    payload = init_message() + MESSAGE["posdata"] + h.tobytes() + h.tobytes() + np.int32(5).tobytes()
    error = serve_against(payload + np.zeros(15).tobytes())
    assert isinstance(error, ProtocolError) and "inverse cell" in str(error)


def test_server_closing_mid_message_is_a_disconnect():
    positions = np.zeros((2, 3))  # 5 atoms announced, 2 sent
    error = serve_against(init_message() + posdata(5, positions))
    assert isinstance(error, ServerDisconnected)
    assert "closed the connection" in str(error) and "POSDATA positions" in str(error)
    error = serve_against(MESSAGE["status"][: HDRLEN - 3])
    assert isinstance(error, ServerDisconnected)


def test_encode_forces_checks_shapes():
    from ipi_driver.protocol import Result

    bad = Result(energy=0.0, forces=np.zeros((4, 3)), virial=np.zeros((3, 3)))
    with pytest.raises(ValueError, match=r"expected \(5, 3\)"):
        encode_forces([bad], 5, batched=False)


def test_idle_timeout_gives_up_on_a_silent_server():
    server, client = socket.socketpair()
    client.settimeout(0.3)
    runner = Background(lambda: run_client(Channel(client), lj_potential()))
    server.sendall(MESSAGE["status"])
    assert server.recv(HDRLEN) == MESSAGE["needinit"]
    with pytest.raises(ServerDisconnected, match="no data from i-PI for 0.3 s"):
        runner.result(timeout=10)
    server.close()
    client.close()
