"""mace-lr as an i-PI PES, for i-PI's own entry points (its custom-PES convention).

i-PI loads this file by path (``ipi.pes.load_pes("custom", path)``) and instantiates
``__DRIVER_CLASS__`` with the parameters:

* Python driver: ``i-pi-py_driver -m custom -P $(mace_lr_ipi --pes-path) -u -a NAME
  -o template=init.xyz,model=lr.model,extras=dipole+bec``
* in-process: ``<ffdirect name='lr' pes='custom'><pes_path>...</pes_path>
  <parameters>{template: init.xyz, model: lr.model, extras: dipole+bec}</parameters>``

Parameters: ``template`` (init structure, extxyz), ``model`` (saved model; several
separated by ``+`` for a committee), ``device`` (cpu), ``dtype`` (float64), ``extras``
(names separated by ``+``, ``;`` or spaces: ``-o`` splits on commas; default
``dipole+charges``; ``none`` for none), ``total_charge`` (e), ``external_field``
(V/Å, ``Ex Ey Ez``), ``calculator`` (``module:Class`` to serve another ASE
calculator; then ``model`` is passed as ``model_paths``). Units at i-PI's side are
atomic (see :mod:`ipi_driver.potential`).
"""

from __future__ import annotations

import numpy as np
from ipi.pes.dummy import Dummy_driver

from ipi_driver.loading import build_calculator, default_extras, read_template
from ipi_driver.potential import ASEPotential
from ipi_driver.protocol import Structure

__DRIVER_NAME__ = "mace_lr"
__DRIVER_CLASS__ = "MACELR_driver"


def _split(text, separators=";+ ") -> list[str]:
    text = str(text)
    for separator in separators:
        text = text.replace(separator, ",")
    return [item for item in text.split(",") if item.strip()]


class MACELR_driver(Dummy_driver):
    """i-PI PES wrapping :class:`ipi_driver.potential.ASEPotential` (see the module docstring)."""

    def __init__(
        self,
        template,
        model=None,
        device="cpu",
        dtype="float64",
        extras=None,
        total_charge=None,
        external_field=None,
        calculator=None,
        *args,
        **kwargs,
    ):
        self.template = str(template)
        self.model = None if model is None else _split(model, "+;")
        self.device = str(device)
        self.dtype = str(dtype)
        self.extras_option = extras
        self.total_charge = None if total_charge is None else float(total_charge)
        self.external_field = None if external_field is None else [float(v) for v in _split(external_field, "; ")]
        self.calculator_spec = None if calculator is None else str(calculator)
        kwargs.pop("verbosity", None)  # <ffdirect> adds it; Dummy_driver has `verbose`
        super().__init__(*args, **kwargs)

    def check_parameters(self):
        """Load the structure and the model (called by Dummy_driver.__init__)."""
        atoms = read_template(self.template, self.total_charge, self.external_field)
        model = None if self.model is None else (self.model[0] if len(self.model) == 1 else self.model)
        calculator = build_calculator(
            model, device=self.device, dtype=self.dtype, calculator=self.calculator_spec,
            total_charge=self.total_charge if self.calculator_spec is None else None,
            external_field=self.external_field if self.calculator_spec is None else None,
        )
        if self.extras_option is None:
            extras = default_extras(calculator, atoms)
        elif str(self.extras_option).strip().lower() == "none":
            extras = ()
        else:
            extras = _split(self.extras_option)
        self.potential = ASEPotential(calculator, atoms, extras)
        self.potential.preflight()

    def compute_structure(self, cell, pos):
        """i-PI's PES call: cell h (3, 3) and positions (N, 3), Bohr -> (pot, forces, virial, extras)."""
        result = self.potential.compute(Structure(cell=np.asarray(cell), positions=np.asarray(pos).reshape(-1, 3)))
        return result.energy, result.forces, result.virial, result.extras
