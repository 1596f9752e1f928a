"""Accuracy: short-range MACE vs long-range heads on random +-1 point charges.

The LES benchmark (B. Cheng, npj Comput. Mater. 2025): 128 ions (+1/-1 e) with a
Born-Mayer repulsion in a periodic box, labelled with an Ewald sum
(``mace_lr_generate random-charges``). The energy is dominated by the Coulomb sum, which
no model with a finite receptive field can represent; the latent head can, by learning
the charges from energies and forces alone.

All models share the backbone, data, split, seed and training budget; they differ only
in ``--long_range``: ``none`` and ``latent`` by default, and any other head or
combination through ``--models`` (``qeq``, ``lode``, ``ewald_mp``, ...; charge heads use
``--charge-width``). Reported on the held-out test set: energy MAE (meV/atom), force MAE
(meV/Å, over Cartesian components), and for heads with charges the Pearson correlation
and MAE of the charges against the true +-1 e (after fixing the global sign, the only
freedom left for latent charges: with Coulomb in vacuum the scale is set).

    python benchmarks/accuracy_random_charges.py --quick      # smoke test, < 1 min
    python benchmarks/accuracy_random_charges.py              # full run (see RESULTS.md)
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import numpy as np

import _training as tr

#: the LES paper's numbers (CACE backbone, 128 atoms, 90 % train)
PUBLISHED = {"short-range (LES paper, CACE)": (6.11, 175.0), "LES (LES paper, CACE)": (0.041, 3.72)}


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    tr.add_common_arguments(parser, n_configs=300, test_fraction=0.1, epochs=80, batch_size=4, max_l=0,
                            models="none,latent")
    parser.add_argument("--charge-width", type=float, default=0.5, help="latent / qeq charge Gaussian std, Å")
    parser.add_argument("--accuracy", type=float, default=1e-3, help="--electrostatics_accuracy")
    parser.add_argument("--no-swa", action="store_true", help="no stage two (SWA, higher energy weight)")
    args = parser.parse_args(argv)
    if args.quick:
        args.n_configs, args.epochs, args.batch_size = 12, 1, 2
    return args


def training_options(args, train_file: Path, test_file: Path, long_range: str) -> dict:
    """mace_lr_run_train options; identical for every model except the long-range ones."""
    options = tr.base_options(args, train_file, test_file, long_range, energy_weight=1.0, start_swa_fraction=0.75,
                              valid_batch_size=8, error_table="PerAtomMAE", swa=not args.no_swa)
    if long_range != "none":
        options.update(electrostatics_accuracy=args.accuracy)
    if any(head in long_range.split("+") for head in ("charges", "latent", "qeq")):
        options.update(lr_charge_width=args.charge_width)
    return options


def charge_metrics(configs, predictions) -> dict:
    """Correlation, best sign and MAE (e) of predicted vs true charges; least-squares scale."""
    true = np.concatenate([a.arrays["REF_charges"] for a in configs])
    pred = np.concatenate([p["charges"] for p in predictions])
    sign = 1.0 if float(true @ pred) >= 0.0 else -1.0
    return {
        "correlation": float(np.corrcoef(true, sign * pred)[0, 1]),
        "sign": sign,
        "mae": float(np.mean(np.abs(sign * pred - true))),
        "scale": float(true @ pred / (pred @ pred)) if np.any(pred) else float("nan"),
        "mean_abs": float(np.mean(np.abs(pred))),
    }


def result_rows(test, predictions: dict, times: dict) -> list:
    rows = []
    for name, pred in predictions.items():
        errors = tr.energy_force_errors(test, pred)
        row = [name, 1e3 * tr.mae(errors["energy_per_atom"]), 1e3 * float(np.mean(errors["energy_per_atom"])),
               1e3 * tr.mae(errors["forces"])]
        if name != "none" and pred[0]["charges"] is not None and np.any(pred[0]["charges"]):
            q = charge_metrics(test, pred)
            row += [f"{q['correlation']:.6f}", q["mae"], f"{q['sign']:+.0f} / {q['scale']:.4f}"]
        else:
            row += ["-", float("nan"), "-"]
        rows.append(row + [times[name] / 60.0])
    return rows


def main(argv=None) -> None:
    args = parse_args(argv)
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="acc_random_charges_"))
    workdir.mkdir(parents=True, exist_ok=True)
    print(f"workdir: {workdir}\n{tr.machine_line()}")
    train, test, train_file, test_file = tr.prepare_data(workdir, "random-charges", args.n_configs, args.seed,
                                                          args.test_fraction)
    n_valid = int(round(args.valid_fraction * len(train)))
    print(f"{len(train)} train+valid ({len(train) - n_valid} train, ~{n_valid} valid), {len(test)} test; "
          f"{len(test[0])} atoms per box")

    trained = tr.train_models(args, workdir, training_options, train_file, test_file)
    predictions = {name: tr.predict(path, test) for name, (path, _) in trained.items()}
    times = {name: seconds for name, (_, seconds) in trained.items()}

    print(f"\n### Test set ({len(test)} configurations x {len(test[0])} atoms)\n")
    headers = ["model", "E MAE (meV/atom)", "E bias (meV/atom)", "F MAE (meV/Å)", "q corr.", "q MAE (e)", "q sign / LSQ scale", "train (min)"]
    rows = result_rows(test, predictions, times)
    rows += [[name, e, "-", f, "-", float("nan"), "-", "-"] for name, (e, f) in PUBLISHED.items()]
    print(tr.markdown_table(headers, rows))
    errors = {name: tr.mae(tr.energy_force_errors(test, p)["forces"]) for name, p in predictions.items()}
    if "none" in errors and len(errors) > 1:
        for name, value in errors.items():
            if name != "none":
                print(f"\nforce MAE ratio none / {name}: {errors['none'] / value:.1f}x")


if __name__ == "__main__":
    main()
