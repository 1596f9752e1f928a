"""Build what the driver serves: the init structure and the calculator.

Shared by the ``mace_lr_ipi`` command (:mod:`ipi_driver.cli`) and the i-PI PES file
(:mod:`ipi_driver.mace_lr_pes`), so both routes load models the same way.
"""

from __future__ import annotations

import importlib
from typing import Any, Mapping, Sequence

import numpy as np
from ase import Atoms
from ase.calculators.calculator import Calculator
from ase.io import read

from .potential import SetupError

#: Extras sent when none are asked for: those of these the calculator provides.
DEFAULT_EXTRAS = ("dipole", "charges")


def read_template(
    path: str,
    total_charge: float | None = None,
    external_field: Sequence[float] | None = None,
) -> Atoms:
    """The init structure (any ASE format; extxyz recommended), with charge/field in ``info``.

    ``total_charge`` (e) and ``external_field`` (V/Å), when given, override the file's
    ``info`` values. An i-PI-style xyz (``# CELL(abcABC): ...`` comment) is refused:
    ASE would read it without its cell and in the wrong units.
    """
    try:
        atoms = read(path, index=0)
    except FileNotFoundError:
        raise SetupError(f"init file {path!r} does not exist") from None
    except Exception as error:
        raise SetupError(f"cannot read init file {path!r} with ASE ({type(error).__name__}: {error})") from None
    if any(str(key).startswith("CELL(") for key in atoms.info):
        raise SetupError(
            f"{path!r} looks like an i-PI xyz file (# CELL(...) comment): ASE reads it without the cell "
            "and pbc, and i-PI writes positions in atomic units by default. Give the driver an extxyz "
            "file (with Lattice= and pbc=) holding the same atoms in the same order."
        )
    if total_charge is not None:
        atoms.info["total_charge"] = float(total_charge)
    if external_field is not None:
        field = np.asarray(external_field, dtype=float)
        if field.shape != (3,):
            raise SetupError(f"external_field needs 3 components (V/Å), got {field.tolist()}")
        atoms.info["external_field"] = field
    return atoms


def import_calculator_class(spec: str) -> type:
    """``"package.module:ClassName"`` -> the class."""
    module_name, separator, class_name = spec.partition(":")
    if not separator or not module_name or not class_name:
        raise SetupError(f"--calculator must look like 'package.module:ClassName', got {spec!r}")
    try:
        module = importlib.import_module(module_name)
    except ImportError as error:
        raise SetupError(f"cannot import {module_name!r} for --calculator ({error})") from None
    try:
        return getattr(module, class_name)
    except AttributeError:
        raise SetupError(f"module {module_name!r} has no {class_name!r}") from None


def build_calculator(
    model: str | Sequence[str] | None = None,
    device: str = "cpu",
    dtype: str = "float64",
    calculator: str | None = None,
    calculator_kwargs: Mapping[str, Any] | None = None,
    total_charge: float | None = None,
    external_field: Sequence[float] | None = None,
) -> Calculator:
    """A :class:`mace_lr.calculators.MACELRCalculator` for ``model``, or ``calculator(**kwargs)``.

    ``calculator`` is ``"module:Class"``; with it, ``model`` (if given) is passed as
    ``model_paths`` only when ``calculator_kwargs`` does not already set it.
    ``total_charge`` (e) and ``external_field`` (V/Å) go to MACELRCalculator's defaults
    (:func:`read_template` also puts them in the structure's ``info``, which any
    mace-lr calculator reads).
    """
    kwargs = dict(calculator_kwargs or {})
    if calculator is not None:
        cls = import_calculator_class(calculator)
        if model is not None:
            kwargs.setdefault("model_paths", model)
        try:
            return cls(**kwargs)
        except TypeError as error:
            raise SetupError(f"cannot create {calculator} with {kwargs}: {error}") from None
    if model is None:
        raise SetupError("give a model (--model PATH) or a calculator (--calculator module:Class)")
    from mace_lr.calculators import MACELRCalculator

    paths = [model] if isinstance(model, str) else list(model)
    for path in paths:
        try:
            open(path, "rb").close()
        except OSError as error:
            raise SetupError(f"cannot open model file {path!r} ({error.strerror})") from None
    try:
        return MACELRCalculator(
            model_paths=paths if len(paths) > 1 else paths[0], device=device, default_dtype=dtype,
            external_field=external_field, total_charge=total_charge, **kwargs,
        )
    except (ValueError, RuntimeError) as error:
        raise SetupError(f"cannot load model {model!r}: {error}") from None


def default_extras(calculator: Calculator, template: Atoms) -> tuple[str, ...]:
    """The entries of :data:`DEFAULT_EXTRAS` that ``calculator`` returns for ``template``.

    Evaluates the structure once: a calculator may list a property it only returns for
    some models (MACELRCalculator has no charges for a plain MACE model).
    """
    atoms = template.copy()
    atoms.calc = calculator
    try:
        atoms.get_potential_energy()
    except Exception as error:  # reported in full by the pre-flight evaluation that follows
        raise SetupError(
            f"{type(calculator).__name__} cannot evaluate the init structure ({type(error).__name__}: {error}); "
            "check that the model and the init file fit (elements, number of atoms, charges, cell)"
        ) from error
    return tuple(name for name in DEFAULT_EXTRAS if name in calculator.results)


__all__ = ["DEFAULT_EXTRAS", "build_calculator", "default_extras", "import_calculator_class", "read_template"]
