"""i-PI socket driver for mace-lr models (the client side of i-PI's socket protocol).

This package keeps the wire side apart from the potential, as i-PI does
(``ipi/interfaces/sockets.py`` vs ``ipi/pes/``). Unit conversion between mace-lr's
units (eV, Å, e) and i-PI's atomic units lives here and nowhere else:
:mod:`ipi_driver.units`. The socket client and the ``mace_lr_ipi`` command follow in
the i-PI driver issue.
"""

from .units import ATOMIC_UNITS, to_atomic_units, from_atomic_units

__all__ = ["ATOMIC_UNITS", "to_atomic_units", "from_atomic_units"]
