"""Python API: serve an ASE calculator to a running i-PI server.

>>> from ipi_driver import serve
>>> serve(calculator, atoms, address="mysim", unix=True, extras=("dipole", "bec"))

The calculator is evaluated once on ``atoms`` before connecting, so a model that does
not fit the structure fails here with :class:`~ipi_driver.potential.SetupError`, not
inside i-PI's first step.
"""

from __future__ import annotations

from typing import Callable, Iterable

from ase import Atoms
from ase.calculators.calculator import Calculator

from .client import DEFAULT_SOCKETS_PREFIX, ClientStats, connect, run_client, stderr_log
from .potential import ASEPotential
from .protocol import Channel


def serve(
    calculator: Calculator,
    atoms_template: Atoms,
    address: str = "localhost",
    port: int | None = None,
    unix: bool = False,
    sockets_prefix: str = DEFAULT_SOCKETS_PREFIX,
    extras: Iterable[str] | str = (),
    connect_timeout: float = 60.0,
    idle_timeout: float | None = None,
    log: Callable[[str], None] | None = stderr_log,
    verbose: bool = False,
) -> ClientStats:
    """Answer i-PI's force requests with ``calculator`` until i-PI sends EXIT.

    :param atoms_template: the structure i-PI simulates (same atoms, same order).
    :param address: UNIX socket name (with ``unix=True``) or host name / IP.
    :param port: TCP port (INET only).
    :param extras: extra properties to return, see :mod:`ipi_driver.extras`.
    :param connect_timeout: seconds to keep retrying while i-PI starts up.
    :param idle_timeout: give up when i-PI sends nothing for this long (s); None waits
        for ever (i-PI may legitimately be quiet while other drivers work).
    :param log: where progress lines go (None: silent); ``verbose`` adds protocol events.
    :returns: the counters of the connection.
    :raises SetupError: calculator, structure and extras do not fit (before connecting).
    :raises ServerDisconnected: i-PI could not be reached or went away without EXIT.
    :raises ProtocolError: the server sent invalid data.
    """
    potential = ASEPotential(calculator, atoms_template, extras)
    potential.preflight()
    where = f"UNIX socket {sockets_prefix}{address}" if unix else f"{address}:{port}"
    if log is not None:
        log(f"init structure evaluated ({potential.natoms} atoms, extras: "
            f"{', '.join(potential.extras) or 'none'}); connecting to i-PI at {where}")
    sock = connect(address, port=port, unix=unix, sockets_prefix=sockets_prefix, timeout=connect_timeout)
    sock.settimeout(idle_timeout)
    if log is not None:
        log(f"connected to i-PI at {where}")
    try:
        return run_client(Channel(sock), potential, log=log if verbose else None)
    finally:
        sock.close()


__all__ = ["serve"]
