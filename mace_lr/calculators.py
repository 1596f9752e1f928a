"""ASE calculators of mace-lr.

:class:`CoulombCalculator` exposes the electrostatics engine: the Coulomb energy of
fixed (or Gaussian-smeared) charges, with forces and, for periodic cells, stress.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
import torch
from ase import Atoms
from ase.calculators.calculator import Calculator, all_changes
from ase.stress import full_3x3_to_voigt_6_stress

from .electrostatics import Electrostatics, ElectrostaticsInputError
from .field import impose_acoustic_sum_rule


def strained_geometry(
    positions: torch.Tensor, cell: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Apply a zero symmetric strain eps (requires grad) to positions and cell.

    Returns ``(positions, cell, eps)``; the stress is ``dE/deps / volume``.
    """
    strain = torch.zeros(3, 3, dtype=positions.dtype, device=positions.device, requires_grad=True)
    symmetric = 0.5 * (strain + strain.T)
    return positions + positions @ symmetric, cell + cell @ symmetric, strain


class CoulombCalculator(Calculator):
    """Coulomb energy of point or Gaussian charges (eV, eV/Å, eV/Å^3).

    :param charges: charges in e, one per atom; default ``atoms.get_initial_charges()``.
    :param method: ``auto``, ``direct``, ``ewald`` or ``pme`` (see :class:`Electrostatics`).
    :param smearing: Gaussian width of the charges in Å (0: point charges).
    :param accuracy: relative accuracy of the periodic sums.
    """

    implemented_properties = ["energy", "free_energy", "forces", "stress"]

    def __init__(
        self,
        charges: Sequence[float] | np.ndarray | None = None,
        method: str = "auto",
        smearing: float = 0.0,
        accuracy: float = 1e-6,
        **kwargs,
    ) -> None:
        super().__init__(**kwargs)
        self.fixed_charges = None if charges is None else np.asarray(charges, dtype=float)
        self.engine = Electrostatics(method=method, smearing=smearing, accuracy=accuracy)

    def _charges_for(self, atoms: Atoms) -> np.ndarray:
        charges = self.fixed_charges
        if charges is None:
            charges = atoms.get_initial_charges()
        if len(charges) != len(atoms):
            raise ElectrostaticsInputError(
                f"CoulombCalculator has {len(charges)} charges for {len(atoms)} atoms; "
                "pass one charge per atom (charges=...) or set atoms.set_initial_charges()."
            )
        return charges

    def calculate(self, atoms=None, properties=("energy",), system_changes=all_changes):
        super().calculate(atoms, properties, system_changes)
        atoms = self.atoms
        periodic = bool(atoms.pbc.any())
        positions = torch.tensor(atoms.positions, dtype=torch.float64, requires_grad=True)
        cell = torch.tensor(atoms.cell.array, dtype=torch.float64)
        charges = torch.tensor(self._charges_for(atoms), dtype=torch.float64)
        pbc = torch.tensor(atoms.pbc, dtype=torch.bool).unsqueeze(0)
        inputs = [positions]
        strained_positions, strained_cell = positions, cell
        if periodic:
            strained_positions, strained_cell, strain = strained_geometry(positions, cell)
            inputs.append(strain)
        energy = self.engine(strained_positions, charges, strained_cell.unsqueeze(0), pbc)["energy"][0]
        grads = torch.autograd.grad(energy, inputs)
        self.results["energy"] = float(energy.detach())
        self.results["free_energy"] = self.results["energy"]
        self.results["forces"] = -grads[0].numpy()
        if periodic:
            self.results["stress"] = (grads[1].numpy() / atoms.get_volume()).flat[[0, 4, 8, 5, 2, 1]]


__all__ = ["CoulombCalculator", "strained_geometry"]


def load_model(path: str, device: str = "cpu") -> torch.nn.Module:
    """A saved model: ``torch.save``'d MACE/MACE-LR module or a TorchScript (``_compiled``) file."""
    import mace  # noqa: F401  (registers MACE classes for unpickling; before e3nn)

    try:
        model = torch.jit.load(path, map_location=device)
    except RuntimeError:
        model = torch.load(path, map_location=device, weights_only=False)
    return model.to(device)


class MACELRCalculator(Calculator):
    """ASE calculator for mace-lr models (also plain MACE models).

    :param model_paths: path of a saved model (or a list: a committee, averaged).
    :param device: torch device, e.g. ``"cpu"`` or ``"cuda"``.
    :param default_dtype: ``"float64"`` or ``"float32"`` (the model is cast to it).
    :param external_field: uniform field (V/Å, constant E) used when ``atoms.info`` has none.
    :param displacement_field: displacement field D (e/Å^2, constant D, 3D-periodic cells)
        used when ``atoms.info`` has none; exclusive with ``external_field``.
    :param total_charge: total charge (e) used when ``atoms.info`` has none.
    :param acoustic_sum_rule: make the Born charges of each structure sum to Q 1 (the
        excess spread evenly over the atoms; the model's own BEC obey it only approximately
        when the dipole is learned).

    Properties: energy, free_energy, energies (per atom, eV), forces (eV/Å), stress
    (eV/Å^3, 3D-periodic only), charges (e), dipole (e·Å), electrostatic_energy (eV),
    field (the uniform field the model saw, V/Å: the internal field at constant D) and,
    only when asked for, bec: ``calc.get_property("bec", atoms)`` is an (N, 3, 3) array
    with ``bec[i, a, b] = d mu_b / d r_{i,a}`` (e), and polarizability (field-conditioned
    models): a (3, 3) array ``alpha[a, b] = d mu_a / d F_b`` (e·Å^2/V).
    """

    implemented_properties = [
        "energy", "free_energy", "energies", "forces", "stress", "charges", "dipole",
        "electrostatic_energy", "field", "bec", "polarizability",
    ]
    #: computed only when requested (costly autograd passes)
    on_request = ("bec", "polarizability")

    def __init__(
        self,
        model_paths: str | Sequence[str],
        device: str = "cpu",
        default_dtype: str = "float64",
        external_field: Sequence[float] | None = None,
        total_charge: float | None = None,
        displacement_field: Sequence[float] | None = None,
        acoustic_sum_rule: bool = False,
        **kwargs,
    ) -> None:
        super().__init__(**kwargs)
        from mace.tools import AtomicNumberTable

        paths = [model_paths] if isinstance(model_paths, str) else list(model_paths)
        if not paths:
            raise ValueError("model_paths is empty; give the path of a saved model")
        if default_dtype not in ("float64", "float32"):
            raise ValueError(f"default_dtype must be 'float64' or 'float32', got {default_dtype!r}")
        self.dtype = getattr(torch, default_dtype)
        self.device = device
        self.models = [load_model(path, device).to(self.dtype) for path in paths]
        for model in self.models:
            for parameter in model.parameters():
                parameter.requires_grad_(False)
        first = self.models[0]
        self.r_max = float(first.r_max)
        self.z_table = AtomicNumberTable([int(z) for z in first.atomic_numbers])
        self.model_heads = list(getattr(first, "heads", ["Default"]))
        self.long_range = str(getattr(first, "long_range", "none"))
        self.field_conditioned = bool(getattr(first, "field_conditioned", False))
        self.default_field = None if external_field is None else np.asarray(external_field, float).reshape(3)
        self.default_displacement = (None if displacement_field is None
                                     else np.asarray(displacement_field, float).reshape(3))
        if self.default_field is not None and self.default_displacement is not None:
            raise ValueError("give either external_field (constant E) or displacement_field (constant D), not both")
        self.default_total_charge = total_charge
        self.acoustic_sum_rule = bool(acoustic_sum_rule)
        if not self.field_conditioned:  # no field response: tools (the i-PI driver) see it is missing
            self.implemented_properties = [p for p in type(self).implemented_properties if p != "polarizability"]

    #: ``atoms.info`` entries that change the result (ASE's own cache looks at positions, cell, ... only)
    info_inputs = ("total_charge", "external_field", "displacement_field")

    def check_state(self, atoms, tol: float = 1e-15):
        """ASE's changes plus any change of :attr:`info_inputs`, so a new field is never served from the cache."""
        changes = super().check_state(atoms, tol)
        if self.atoms is not None:
            for key in self.info_inputs:
                old, new = self.atoms.info.get(key), atoms.info.get(key)
                if (old is None) != (new is None) or (
                        old is not None and not np.array_equal(np.asarray(old, float), np.asarray(new, float))):
                    changes.append(key)
        return changes

    @property
    def has_dipole(self) -> bool:
        """The model has a dipole: charges from a head, or -dE/dF of a field-conditioned model."""
        return self.long_range != "none" or self.field_conditioned

    def _batch(self, atoms: Atoms) -> dict:
        from .batching import atoms_to_batch

        charge = atoms.info.get("total_charge", self.default_total_charge or 0.0)
        field = atoms.info.get("external_field", self.default_field)
        displacement = atoms.info.get("displacement_field", self.default_displacement)
        if "external_field" in atoms.info and "displacement_field" not in atoms.info:
            displacement = None  # the structure's own field wins over the calculator's default D
        if (field is not None and np.any(np.asarray(field) != 0.0) or displacement is not None) and not self.has_dipole:
            raise ValueError(
                "an external or displacement field needs a model with charges or a field input; this model "
                "has neither (train with --long_range charges, latent or qeq, or with --field_conditioned)"
            )
        previous = torch.get_default_dtype()
        torch.set_default_dtype(self.dtype)
        try:
            return atoms_to_batch(
                [atoms], self.z_table, self.r_max, head=self.model_heads[0], heads=self.model_heads,
                total_charges=[charge], external_fields=None if field is None else [field],
                device=self.device, displacement_fields=None if displacement is None else [displacement],
            )
        finally:
            torch.set_default_dtype(previous)

    def calculate(self, atoms=None, properties=("energy",), system_changes=all_changes) -> None:
        super().calculate(atoms, properties, system_changes)
        periodic = bool(self.atoms.pbc.all())
        want_bec = "bec" in properties
        want_polarizability = "polarizability" in properties
        if want_polarizability and not self.field_conditioned:
            raise ValueError("polarizability needs a field-conditioned model (train with --field_conditioned): "
                             "the charges of the other models do not respond to a field")
        collected: dict[str, list[np.ndarray]] = {}
        for model in self.models:
            batch = self._batch(self.atoms)
            kwargs = {"compute_stress": periodic}
            if want_bec:
                if not self.has_dipole:
                    raise ValueError("BEC needs a model with a dipole (a charge head or --field_conditioned)")
                kwargs["compute_bec"] = True
            if want_polarizability:
                kwargs["compute_polarizability"] = True
            out = model(batch, **kwargs)
            if want_bec and self.acoustic_sum_rule:
                out["bec"] = impose_acoustic_sum_rule(out["bec"], batch["total_charge"].view(-1), batch["batch"],
                                                      batch["ptr"])
            for key in ("energy", "node_energy", "forces", "stress", "charges", "dipole", "electrostatic_energy",
                        "field", "bec", "polarizability"):
                value = out.get(key)
                if value is not None:
                    collected.setdefault(key, []).append(value.detach().cpu().numpy())
        mean = {key: np.mean(values, axis=0) for key, values in collected.items()}
        self.results["energy"] = float(mean["energy"][0])
        self.results["free_energy"] = self.results["energy"]
        self.results["energies"] = mean["node_energy"]
        self.results["forces"] = mean["forces"]
        if periodic and "stress" in mean:
            self.results["stress"] = full_3x3_to_voigt_6_stress(mean["stress"][0])
        for key in ("charges", "electrostatic_energy", "bec"):
            if key in mean:
                self.results[key] = mean[key] if key != "electrostatic_energy" else float(mean[key][0])
        if "dipole" in mean:
            self.results["dipole"] = mean["dipole"][0]
        if "field" in mean:
            self.results["field"] = mean["field"][0]
        if "polarizability" in mean:
            self.results["polarizability"] = mean["polarizability"][0]
        if len(self.models) > 1:
            self.results["energy_var"] = float(np.var([e[0] for e in collected["energy"]]))
