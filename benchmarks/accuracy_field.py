"""Accuracy under electric fields: field-conditioned vs field-blind models (issue 7).

Data: ``mace_lr_generate field`` (GFN2-xTB; H2O, NH3, HF, CO, CH3OH, (H2O)2 rotated at
random in uniform fields |F| ~ U(0, 0.1) V/Å; energies include the field term, dipoles
the induced part).

Models, same backbone, data, split, seed and budget:
* ``blind``: short-range MACE, which never sees the field (``--long_range none``);
* ``charges``: explicit charges (fitted to the xTB charges) and the electric enthalpy
  -mu.F: the field acts on fixed charges, no electronic response;
* ``field``: the field-conditioned backbone (``--field_conditioned``), dipole -dE/dF
  fitted to the xTB dipoles (``--dipole_weight``);
* ``field_charges``: both.

Reported on the test set: energy MAE per molecule (meV), force MAE (meV/Å), dipole MAE
(e·Å, Cartesian components), and for ``--n-alpha`` held-out molecules at zero field the
polarizability MAE (e·Å^2/V, 9 components) against xTB's own central-difference
polarizability (field step ``--alpha-step`` V/Å). Models without a field response give
alpha = 0 (fixed charges) or none (blind); the mean |alpha_xTB| is printed for scale.

    python benchmarks/accuracy_field.py --quick      # smoke test, ~2 min
    python benchmarks/accuracy_field.py              # full run
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np

import _training as tr

#: run name -> (--long_range, field-conditioned)
MODELS = {
    "blind": ("none", False),
    "charges": ("charges", False),
    "field": ("none", True),
    "field_charges": ("charges", True),
}


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    tr.add_common_arguments(parser, n_configs=600, test_fraction=0.2, epochs=100, batch_size=8, max_l=1,
                            models=",".join(MODELS))
    parser.add_argument("--max-field", type=float, default=0.1, help="V/Å, generator option")
    tr.add_loss_arguments(parser, start_swa=0.6, dipole_weight=10.0, dipole_help="for the field-conditioned models")
    parser.add_argument("--n-alpha", type=int, default=30, help="held-out molecules for the polarizability")
    parser.add_argument("--alpha-step", type=float, default=0.005, help="V/Å, xTB finite-difference step")
    args = parser.parse_args(argv)
    if args.quick:
        args.n_configs, args.epochs, args.batch_size, args.n_alpha = 24, 1, 4, 2
    return args


def training_options(args, train_file: Path, test_file: Path, run: str) -> dict:
    long_range, conditioned = MODELS[run]
    keys = tr.XTB_KEYS
    options = tr.base_options(args, train_file, test_file, long_range, energy_weight=args.energy_weight,
                              start_swa_fraction=args.start_swa, valid_batch_size=16, error_table="PerAtomMAE",
                              keys=keys)
    if long_range == "charges":
        options.update(lr_charge_width=args.charge_width, charges_weight=args.charges_weight)
    if conditioned:
        options.update(field_conditioned=True, dipole_weight=args.dipole_weight, swa_dipole_weight=args.dipole_weight)
    elif long_range != "none":
        options.update(dipole_weight=0.0, swa_dipole_weight=0.0)
    return options


def xtb_polarizability(atoms, step: float) -> np.ndarray:
    """alpha[a, b] = d mu_a / d F_b (e·Å^2/V) of GFN2-xTB by central differences at F = 0."""
    from mace_lr.data.xtb import xtb_labelled_atoms

    alpha = np.empty((3, 3))
    for b in range(3):
        dipoles = []
        for sign in (1.0, -1.0):
            field = np.zeros(3)
            field[b] = sign * step
            labelled = xtb_labelled_atoms(atoms.numbers, atoms.positions, total_charge=0, field=field)
            dipoles.append(np.asarray(labelled.info["REF_dipole"]))
        alpha[:, b] = (dipoles[0] - dipoles[1]) / (2 * step)
    return alpha


def model_polarizability(model_path: Path, atoms, conditioned: bool) -> np.ndarray:
    import mace  # noqa: F401
    from mace_lr.calculators import MACELRCalculator

    from ipi_driver.extras import finite_difference_polarizability

    calc = MACELRCalculator(model_paths=str(model_path), default_dtype="float64")
    probe = atoms.copy()
    probe.info.pop("external_field", None)
    probe.calc = calc
    if conditioned:
        return calc.get_property("polarizability", probe)
    return finite_difference_polarizability(calc, probe)


def main(argv=None) -> None:
    args = parse_args(argv)
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="acc_field_"))
    workdir.mkdir(parents=True, exist_ok=True)
    print(f"workdir: {workdir}\n{tr.machine_line()}")
    train, test, train_file, test_file = tr.prepare_data(
        workdir, "field", args.n_configs, args.seed, args.test_fraction, "--max-field", str(args.max_field))
    print(f"{len(train)} train+valid, {len(test)} test molecules")
    trained = tr.train_models(args, workdir, training_options, train_file, test_file)

    alpha_set = test[: args.n_alpha]
    start = time.perf_counter()
    reference_alpha = [xtb_polarizability(atoms, args.alpha_step) for atoms in alpha_set]
    print(f"xTB polarizabilities of {len(alpha_set)} molecules in {time.perf_counter() - start:.0f} s; "
          f"mean |alpha| {np.mean(np.abs(reference_alpha)):.4g} e·Å^2/V, mean trace/3 "
          f"{np.mean([np.trace(a) / 3 for a in reference_alpha]):.4g}")

    headers = ["model", "E MAE (meV/molecule)", "F MAE (meV/Å)", "μ MAE (e·Å)", "α MAE (e·Å²/V)", "train (min)"]
    rows = []
    for name, (path, seconds) in trained.items():
        long_range, conditioned = MODELS[name]
        configs = test
        if long_range == "none" and not conditioned:  # the blind model cannot take a field
            configs = [a.copy() for a in test]
            for atoms in configs:
                atoms.info.pop("external_field", None)
        pred = tr.predict(path, configs)
        errors = tr.energy_force_errors(test, pred)
        dipole_mae = (tr.mae([p["dipole"] - a.info["REF_dipole"] for a, p in zip(test, pred)])
                      if pred[0]["dipole"] is not None else float("nan"))
        alpha_mae = float("nan")
        if long_range != "none" or conditioned:
            alpha_mae = tr.mae([model_polarizability(path, atoms, conditioned) - ref
                                for atoms, ref in zip(alpha_set, reference_alpha)])
        rows.append([name, 1e3 * tr.mae(errors["energy"]), 1e3 * tr.mae(errors["forces"]), dipole_mae, alpha_mae,
                     seconds / 60.0])
    print(f"\n### Test set ({len(test)} molecules; α on {len(alpha_set)} at F = 0)\n")
    print(tr.markdown_table(headers, rows))


if __name__ == "__main__":
    main()
