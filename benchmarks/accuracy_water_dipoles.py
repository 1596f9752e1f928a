"""Dipoles of water clusters: Wannier centroids (DPLR style) vs charges-only models (issue 7).

Data: ``mace_lr_generate water`` ((H2O)_2..6, GFN2-xTB energies, forces, charges, dipoles;
open boundaries). Models, same backbone, data, split, seed and budget:

* ``charges``: explicit charges fitted to the xTB charges (``--charges_weight``), and the
  dipole in the loss (``--dipole-weight``);
* ``latent_mu``: latent charges fitted to energies, forces and the dipole;
* ``dipoles``: ions O +6, H +1 and one -8 e Wannier centroid per O
  (``--long_range dipoles``), fitted to energies, forces and the dipole;
* ``atomic``: fixed SPC-like charges O -0.8, H +0.4 and a Gaussian dipole on every atom
  (``--dipoles_mode atomic``), fitted to energies, forces and the dipole.

Reported on the test set: dipole MAE (e·Å, Cartesian components) and its ratio to the
charges model, energy MAE per cluster (meV), force MAE (meV/Å).

    python benchmarks/accuracy_water_dipoles.py --quick    # smoke test
    python benchmarks/accuracy_water_dipoles.py            # full run
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import _training as tr

#: run name -> (--long_range, extra options)
MODELS = {
    "charges": ("charges", {}),
    "latent_mu": ("latent", {}),
    "dipoles": ("dipoles", {"wannier_ion_charges": "1:1,8:6", "wannier_centroid_charges": "8:-8"}),
    "atomic": ("dipoles", {"dipoles_mode": "atomic", "wannier_ion_charges": "1:0.4,8:-0.8"}),
}


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    tr.add_common_arguments(parser, n_configs=400, test_fraction=0.2, epochs=80, batch_size=8, max_l=1,
                            models=",".join(MODELS))
    tr.add_loss_arguments(parser, start_swa=0.6, dipole_weight=10.0, dipole_help="for every model",
                          charge_width_help="Gaussian std of charges/ions/centroids, Å",
                          charges_help="for the charges model")
    args = parser.parse_args(argv)
    if args.quick:
        args.n_configs, args.epochs, args.batch_size = 16, 1, 4
    return args


def training_options(args, train_file: Path, test_file: Path, run: str) -> dict:
    long_range, extra = MODELS[run]
    keys = tr.XTB_KEYS
    options = tr.base_options(args, train_file, test_file, long_range, energy_weight=args.energy_weight,
                              start_swa_fraction=args.start_swa, valid_batch_size=16, error_table="PerAtomMAE",
                              keys=keys)
    options.update(lr_charge_width=args.charge_width, dipole_weight=args.dipole_weight,
                   swa_dipole_weight=args.dipole_weight, **extra)
    if long_range == "charges":
        options["charges_weight"] = args.charges_weight
    return options


def main(argv=None) -> None:
    args = parse_args(argv)
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="acc_water_"))
    workdir.mkdir(parents=True, exist_ok=True)
    print(f"workdir: {workdir}\n{tr.machine_line()}")
    train, test, train_file, test_file = tr.prepare_data(workdir, "water", args.n_configs, args.seed,
                                                         args.test_fraction)
    print(f"{len(train)} train+valid, {len(test)} test clusters")
    trained = tr.train_models(args, workdir, training_options, train_file, test_file)

    rows, dipole_errors = [], {}
    for name, (path, seconds) in trained.items():
        pred = tr.predict(path, test)
        errors = tr.energy_force_errors(test, pred)
        dipole_errors[name] = tr.mae([p["dipole"] - a.info["REF_dipole"] for a, p in zip(test, pred)])
        rows.append([name, dipole_errors[name], 1e3 * tr.mae(errors["energy"]), 1e3 * tr.mae(errors["forces"]),
                     seconds / 60.0])
    baseline = dipole_errors.get("charges")
    headers = ["model", "μ MAE (e·Å)", "μ MAE / charges", "E MAE (meV/cluster)", "F MAE (meV/Å)", "train (min)"]
    rows = [[r[0], r[1], r[1] / baseline if baseline else float("nan"), *r[2:]] for r in rows]
    print(f"\n### Test set ({len(test)} clusters)\n")
    print(tr.markdown_table(headers, rows))


if __name__ == "__main__":
    main()
