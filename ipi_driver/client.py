"""The driver loop: connect to i-PI, answer STATUS/INIT/POSDATA/GETFORCE until EXIT.

The loop reads one header at a time, so it follows both i-PI 3.3's consolidated
exchange (``POSDATA`` and ``GETFORCE`` in one write) and the older one with ``STATUS``
in between. It knows the potential only through :class:`Evaluator` (structures in,
results out, atomic units).
"""

from __future__ import annotations

import os
import socket
import sys
import time
from dataclasses import dataclass, field
from typing import Callable, Protocol, Sequence

from .protocol import (
    MESSAGE,
    Channel,
    ProtocolError,
    Result,
    ServerDisconnected,
    Structure,
    describe_header,
    encode_forces,
    read_init,
    read_posdata,
)

#: i-PI's default prefix for UNIX socket addresses (``<ffsocket mode='unix'>``).
DEFAULT_SOCKETS_PREFIX = "/tmp/ipi_"


class Evaluator(Protocol):
    """What the loop needs from a potential (see :class:`ipi_driver.potential.ASEPotential`)."""

    natoms: int

    def compute_batch(self, structures: Sequence[Structure]) -> list[Result]: ...


@dataclass
class ClientStats:
    """Counters of one connection: structures evaluated and where the time went (s)."""

    structures: int = 0
    requests: int = 0
    compute_seconds: float = 0.0
    wall_seconds: float = 0.0
    replicas: set = field(default_factory=set)

    @property
    def protocol_seconds(self) -> float:
        """Time inside the loop not spent in the potential (framing, waiting for i-PI)."""
        return self.wall_seconds - self.compute_seconds


def unix_socket_path(address: str, sockets_prefix: str = DEFAULT_SOCKETS_PREFIX) -> str:
    """Where i-PI binds ``<address>`` in ``mode='unix'``: prefix + address."""
    return sockets_prefix + address


def connect(
    address: str,
    port: int | None = None,
    unix: bool = False,
    sockets_prefix: str = DEFAULT_SOCKETS_PREFIX,
    timeout: float = 60.0,
    retry_interval: float = 0.2,
) -> socket.socket:
    """Connect to an i-PI server, retrying for ``timeout`` seconds while it starts.

    UNIX: ``address`` is the name in ``<address>`` (the socket is ``sockets_prefix +
    address``). INET: ``address`` is a host name or IP and ``port`` its port.
    """
    if unix:
        target: object = unix_socket_path(address, sockets_prefix)
        family = socket.AF_UNIX
        where = f"UNIX socket {target}"
    else:
        if port is None:
            raise ValueError("an INET connection needs a port (-p PORT), or use -u for a UNIX socket")
        target = (address, int(port))
        family = socket.AF_INET
        where = f"{address}:{port}"
    deadline = time.monotonic() + timeout
    while True:
        sock = socket.socket(family, socket.SOCK_STREAM)
        if family == socket.AF_INET:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        sock.settimeout(max(deadline - time.monotonic(), retry_interval))  # an unreachable host
        try:
            sock.connect(target)
            sock.settimeout(None)
            return sock
        except (FileNotFoundError, ConnectionRefusedError, ConnectionResetError, socket.timeout) as error:
            sock.close()
            if time.monotonic() >= deadline:
                raise ServerDisconnected(
                    f"could not connect to i-PI at {where} within {timeout:g} s ({error}); "
                    "start i-PI first and check the address/port in its <ffsocket> block"
                ) from None
            time.sleep(retry_interval)
        except OSError:
            sock.close()
            raise


def run_client(
    channel: Channel,
    evaluator: Evaluator,
    log: Callable[[str], None] | None = None,
) -> ClientStats:
    """Serve i-PI on ``channel`` until it sends EXIT; return the counters.

    :raises ServerDisconnected: i-PI went away without EXIT.
    :raises ProtocolError: i-PI (or whatever is on the other end) sent invalid data.
    """
    stats = ClientStats()
    start = time.perf_counter()
    initialized = False
    batch_size = 1
    pending: list[Result] | None = None
    natoms = evaluator.natoms
    try:
        while True:
            header = channel.recv_header()
            if header == MESSAGE["status"]:
                if not initialized:
                    channel.send(MESSAGE["needinit"])
                elif pending is not None:
                    channel.send(MESSAGE["havedata"])
                else:
                    channel.send(MESSAGE["ready"])
            elif header == MESSAGE["init"]:
                init = read_init(channel)
                batch_size = init.batch_size
                initialized = True
                stats.replicas.add(init.replica)
                if log is not None:
                    log(f"INIT from i-PI: replica {init.replica}, batch size {batch_size}")
            elif header == MESSAGE["posdata"]:
                if not initialized:
                    raise ProtocolError("i-PI sent POSDATA before INIT; the exchange is out of order")
                structures = read_posdata(channel, natoms, batch_size)
                began = time.perf_counter()
                pending = evaluator.compute_batch(structures)
                stats.compute_seconds += time.perf_counter() - began
                stats.structures += len(structures)
                stats.requests += 1
            elif header == MESSAGE["getforce"]:
                if pending is None:
                    raise ProtocolError("i-PI asked for forces (GETFORCE) before sending positions")
                channel.send(encode_forces(pending, natoms, batched=batch_size > 1), "the forces")
                pending = None
            elif header == MESSAGE["exit"]:
                if log is not None:
                    log("EXIT from i-PI")
                return stats
            else:
                raise ProtocolError(
                    f"unexpected message header {describe_header(header)} from the server "
                    f"(expected one of {', '.join(sorted(n.upper() for n in MESSAGE))}); "
                    "is this an i-PI server?"
                )
    finally:
        stats.wall_seconds = time.perf_counter() - start


def stderr_log(message: str) -> None:
    """Default logger: one line on stderr with the process id."""
    print(f"mace_lr_ipi[{os.getpid()}]: {message}", file=sys.stderr, flush=True)


__all__ = ["ClientStats", "DEFAULT_SOCKETS_PREFIX", "Evaluator", "connect", "run_client", "stderr_log", "unix_socket_path"]
