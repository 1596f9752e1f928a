"""i-PI socket driver for mace-lr models (the client side of i-PI's socket protocol).

The wire side is kept apart from the potential, as i-PI does
(``ipi/interfaces/sockets.py`` vs ``ipi/pes/``):

* :mod:`ipi_driver.protocol`: message framing and bodies (bytes, atomic units, bounds checks);
* :mod:`ipi_driver.client`: connecting and the STATUS/INIT/POSDATA/GETFORCE/EXIT loop;
* :mod:`ipi_driver.potential`: an ASE calculator seen from i-PI (units, cell convention, virial);
* :mod:`ipi_driver.extras`: the extras JSON (dipole, BEC, charges, ...);
* :mod:`ipi_driver.loading`: reading the init structure and building the calculator;
* :mod:`ipi_driver.serving`: :func:`serve`, the Python API; :mod:`ipi_driver.cli`: ``mace_lr_ipi``;
* :mod:`ipi_driver.mace_lr_pes`: the PES file for i-PI's ``i-pi-py_driver -m custom`` and
  ``<ffdirect pes='custom'>``.

Unit conversion between mace-lr's units (eV, Å, e) and i-PI's atomic units lives here
and nowhere else: :mod:`ipi_driver.units`.
"""

from .units import ATOMIC_UNITS, from_atomic_units, to_atomic_units

__all__ = ["ATOMIC_UNITS", "PES_PATH", "serve", "to_atomic_units", "from_atomic_units"]


def __getattr__(name: str):
    # lazy: importing ipi_driver for its units must not import torch/MACE
    if name == "serve":
        from .serving import serve

        return serve
    if name == "PES_PATH":
        from .cli import PES_PATH

        return PES_PATH
    raise AttributeError(f"module 'ipi_driver' has no attribute {name!r}")
