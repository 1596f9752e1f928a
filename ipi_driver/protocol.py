"""The client side of i-PI's socket protocol: message framing and message bodies.

This module knows bytes and atomic units only; it knows nothing about potentials.
Header length and message strings come from i-PI itself
(:mod:`ipi.interfaces.sockets`), so a change there shows up here.

Wire layouts, as i-PI 3.3's server (``ipi/interfaces/sockets.py``) writes and reads them
(all numbers native little-endian; ``nat`` = number of atoms):

* ``INIT``: int32 replica id, int32 length, that many bytes of parameter string. When
  the forcefield has ``batch_size`` B > 1, i-PI appends ``batch_size:B`` to the string.
* ``POSDATA`` (B = 1): cell h (3x3 float64, lattice vectors as *columns*, Bohr), its
  inverse (3x3), int32 nat, positions (nat x 3 float64, Bohr).
* ``POSDATA`` (B > 1): int32 nat, then B blocks of (h, h^-1), then B x nat x 3 positions.
* reply to ``GETFORCE`` (B = 1): ``FORCEREADY``, float64 energy (Hartree), int32 nat,
  forces (nat x 3, Hartree/Bohr), virial (3x3, Hartree), int32 length + extras string.
* reply (B > 1): ``FORCEREADY``, B energies, int32 nat, B x nat x 3 forces, B x 3 x 3
  virials, then B times (int32 length + extras string).

i-PI 3.3 by default sends ``POSDATA`` and ``GETFORCE`` in one write without a
``STATUS`` in between ("consolidated messages"); older servers (and
``consolidate_messages`` false) ask ``STATUS`` between them. A client that reads one
header at a time handles both.

Every count read from the wire is checked before anything is allocated from it.
"""

from __future__ import annotations

import socket
from dataclasses import dataclass

import numpy as np
from ipi.interfaces.sockets import HDRLEN, MESSAGE

#: Refuse INIT parameter strings longer than this (bytes); i-PI's are a few hundred.
MAX_INIT_BYTES = 1 << 20
#: Refuse any single message body larger than this (bytes), whatever the counts say.
MAX_PAYLOAD_BYTES = 1 << 32
#: The largest atom count accepted from the wire before comparing with the template.
MAX_ATOMS = 50_000_000
#: The largest request batch accepted (i-PI pads batches to its ``batch_size``).
MAX_BATCH = 1 << 16
#: |h @ h^-1 - 1| above this means the POSDATA bytes are not framed as we expect.
CELL_INVERSE_TOLERANCE = 1e-6

_INT32 = np.dtype("<i4")
_FLOAT64 = np.dtype("<f8")


class ProtocolError(RuntimeError):
    """The server sent something that is not valid i-PI protocol (or not what we expect)."""


class ServerDisconnected(ConnectionError):
    """The server closed the connection (or it broke) in the middle of the protocol."""


@dataclass
class InitMessage:
    """Body of ``INIT``: replica id, parameter string and the announced batch size."""

    replica: int
    parameters: str
    batch_size: int


@dataclass
class Structure:
    """One structure from ``POSDATA`` in atomic units.

    ``cell``: (3, 3) Bohr, lattice vectors as columns (i-PI's h); ``positions``: (N, 3) Bohr.
    """

    cell: np.ndarray
    positions: np.ndarray


@dataclass
class Result:
    """What the client returns for one structure, in atomic units.

    ``energy`` Hartree; ``forces`` (N, 3) Hartree/Bohr; ``virial`` (3, 3) Hartree
    (= -stress * volume); ``extras`` a JSON string (may be empty).
    """

    energy: float
    forces: np.ndarray
    virial: np.ndarray
    extras: str = ""


class Channel:
    """A connected stream socket with exact-length reads and single-write sends."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self._buffer = bytearray(4096)

    def recv_exact(self, nbytes: int, what: str) -> memoryview:
        """Read exactly ``nbytes`` (a view valid until the next read).

        :raises ServerDisconnected: the peer closed the connection first.
        """
        if nbytes < 0 or nbytes > MAX_PAYLOAD_BYTES:
            raise ProtocolError(f"refusing to read {nbytes} bytes for {what}; the message is malformed")
        if nbytes > len(self._buffer):
            self._buffer = bytearray(nbytes)
        view = memoryview(self._buffer)[:nbytes]
        received = 0
        while received < nbytes:
            try:
                count = self.sock.recv_into(view[received:], nbytes - received)
            except socket.timeout:
                raise ServerDisconnected(
                    f"no data from i-PI for {self.sock.gettimeout():g} s while we waited for {what} "
                    "(idle timeout); i-PI is stuck or the network is down"
                ) from None
            except (ConnectionResetError, BrokenPipeError, ConnectionAbortedError) as error:
                raise ServerDisconnected(f"i-PI closed the connection while we waited for {what} ({error})") from None
            if count == 0:
                raise ServerDisconnected(
                    f"i-PI closed the connection while we waited for {what} "
                    f"({received} of {nbytes} bytes received)"
                )
            received += count
        return view

    def recv_header(self) -> bytes:
        """The next HDRLEN-byte message header."""
        return bytes(self.recv_exact(HDRLEN, "a message header"))

    def recv_int32(self, what: str) -> int:
        return int(np.frombuffer(self.recv_exact(4, what), _INT32)[0])

    def recv_float64(self, count: int, what: str) -> np.ndarray:
        """``count`` float64 values as a new (owned) array."""
        return np.frombuffer(self.recv_exact(8 * count, what), _FLOAT64).copy()

    def send(self, payload: bytes, what: str = "a reply") -> None:
        try:
            self.sock.sendall(payload)
        except (ConnectionResetError, BrokenPipeError, ConnectionAbortedError) as error:
            raise ServerDisconnected(f"i-PI closed the connection while we sent {what} ({error})") from None


def describe_header(header: bytes) -> str:
    """A readable name for a header, for error messages."""
    for name, value in MESSAGE.items():
        if header == value:
            return name.upper()
    return repr(header)


def parse_batch_size(parameters: str) -> int:
    """The ``batch_size:B`` token i-PI appends to the INIT string (1 when absent)."""
    batch = 1
    for token in parameters.split(","):
        key, separator, value = token.partition(":")
        if separator and key.strip() == "batch_size":
            try:
                batch = int(value.strip())
            except ValueError:
                raise ProtocolError(f"INIT announces a non-integer batch size {value.strip()!r}") from None
    if not 1 <= batch <= MAX_BATCH:
        raise ProtocolError(f"INIT announces batch_size {batch}; expected 1..{MAX_BATCH}")
    return batch


def read_init(channel: Channel) -> InitMessage:
    """The body of an ``INIT`` message (after its header)."""
    replica = channel.recv_int32("the INIT replica id")
    length = channel.recv_int32("the INIT string length")
    if not 0 <= length <= MAX_INIT_BYTES:
        raise ProtocolError(
            f"INIT announces a parameter string of {length} bytes (allowed 0..{MAX_INIT_BYTES}); "
            "the server is not speaking the i-PI protocol"
        )
    text = bytes(channel.recv_exact(length, "the INIT string")).decode("utf-8", errors="replace")
    return InitMessage(replica=replica, parameters=text, batch_size=parse_batch_size(text))


def check_atom_count(received: int, expected: int) -> None:
    """Refuse absurd counts and counts that differ from the init structure."""
    if received < 0 or received > MAX_ATOMS:
        raise ProtocolError(
            f"POSDATA announces {received} atoms, which is not a valid atom count; "
            "the server is not speaking the i-PI protocol (or the stream is out of step)"
        )
    if received != expected:
        raise ProtocolError(
            f"i-PI sent {received} atoms but the init structure has {expected}; "
            "use the same structure (same atoms, same order) for i-PI and the driver"
        )


def _check_cell(h: np.ndarray, ih: np.ndarray) -> None:
    if not (np.all(np.isfinite(h)) and np.all(np.isfinite(ih))):
        raise ProtocolError("POSDATA carries a non-finite cell; the message is malformed")
    if np.abs(h @ ih - np.eye(3)).max() > CELL_INVERSE_TOLERANCE:
        raise ProtocolError(
            "POSDATA's inverse cell is not the inverse of its cell: the bytes are not framed as "
            "the socket protocol expects (is i-PI using mode='shm'? use mode='unix' or 'inet')"
        )


def read_posdata(channel: Channel, natoms: int, batch_size: int = 1) -> list[Structure]:
    """The body of a ``POSDATA`` message (after its header): ``batch_size`` structures."""
    if batch_size == 1:
        block = channel.recv_float64(18, "the POSDATA cell")
        h, ih = block[:9].reshape(3, 3), block[9:].reshape(3, 3)
        check_atom_count(channel.recv_int32("the POSDATA atom count"), natoms)
        _check_cell(h, ih)
        positions = channel.recv_float64(3 * natoms, "the POSDATA positions").reshape(natoms, 3)
        return [Structure(cell=h, positions=positions)]
    check_atom_count(channel.recv_int32("the batched POSDATA atom count"), natoms)
    cells = channel.recv_float64(18 * batch_size, "the batched POSDATA cells").reshape(batch_size, 2, 3, 3)
    positions = channel.recv_float64(3 * natoms * batch_size, "the batched POSDATA positions")
    positions = positions.reshape(batch_size, natoms, 3)
    structures = []
    for index in range(batch_size):
        _check_cell(cells[index, 0], cells[index, 1])
        structures.append(Structure(cell=cells[index, 0], positions=positions[index]))
    return structures


def _extras_bytes(result: Result) -> bytes:
    data = result.extras.encode("utf-8")
    return np.int32(len(data)).astype(_INT32).tobytes() + data


def encode_forces(results: list[Result], natoms: int, batched: bool) -> bytes:
    """``FORCEREADY`` and the force payload for ``results`` (one write)."""
    nat = np.asarray(natoms, _INT32).tobytes()
    for result in results:
        if result.forces.shape != (natoms, 3) or result.virial.shape != (3, 3):
            raise ValueError(
                f"a result has forces {result.forces.shape} and virial {result.virial.shape}; "
                f"expected ({natoms}, 3) and (3, 3)"
            )
    if not batched:
        if len(results) != 1:
            raise ValueError(f"an unbatched reply carries one result, got {len(results)}")
        (result,) = results
        return b"".join([
            MESSAGE["forceready"],
            np.asarray(result.energy, _FLOAT64).tobytes(),
            nat,
            np.ascontiguousarray(result.forces, _FLOAT64).tobytes(),
            np.ascontiguousarray(result.virial, _FLOAT64).tobytes(),
            _extras_bytes(result),
        ])
    chunks = [
        MESSAGE["forceready"],
        np.asarray([r.energy for r in results], _FLOAT64).tobytes(),
        nat,
        np.ascontiguousarray(np.stack([r.forces for r in results]), _FLOAT64).tobytes(),
        np.ascontiguousarray(np.stack([r.virial for r in results]), _FLOAT64).tobytes(),
    ]
    chunks.extend(_extras_bytes(r) for r in results)
    return b"".join(chunks)


__all__ = [
    "HDRLEN", "MESSAGE", "Channel", "InitMessage", "ProtocolError", "Result", "ServerDisconnected",
    "Structure", "check_atom_count", "describe_header", "encode_forces", "parse_batch_size",
    "read_init", "read_posdata",
]
