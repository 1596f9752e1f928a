"""Accuracy: charge transfer and total-charge dependence (4G-HDNNP-style clusters, GFN2-xTB).

Data: ``mace_lr_generate clusters`` (Na9Cl8+ / Na8Cl9- / neutral Na9Cl8 rock-salt
blocks, C10H2 / C10H3+ polyynes; see :mod:`mace_lr.data.clusters`). Na9Cl8+ and Na9Cl8
have the same nuclei and differ only in total charge; a model that does not know the
total charge must average them. In C10H3+ the extra proton at one end changes the
charges at the other end, 12 Å away.

Models, same backbone, data, split, seed and budget:
* ``none``: short-range MACE;
* ``latent``: latent charges (energy, forces and dipole loss; no reference charges);
* ``charges``: explicit local charges fitted to the xTB charges;
* ``qeq``: charge equilibration (learned electronegativity, hardness, width), its
  charges fitted to the xTB charges as in 4G-HDNNP.

Reported on the test set, per system family and overall: energy RMSE (meV/atom),
force RMSE (meV/Å, components), charge RMSE (me). Published anchors (4G-HDNNP and
SpookyNet on the original DFT data) are printed for orientation only: different
reference method and data.

    python benchmarks/accuracy_charge_transfer.py --quick     # smoke test, < 2 min
    python benchmarks/accuracy_charge_transfer.py             # full run (see RESULTS.md)
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import numpy as np

import _training as tr

#: run name -> (--long_range, extra options)
MODELS = {
    "none": ("none", {}),
    "latent": ("latent", {}),
    "charges": ("charges", {}),
    "qeq": ("qeq", {}),
}
FAMILIES = {"C10H2/C10H3+": ("C10H2", "C10H3+"), "Na-Cl clusters": ("Na9Cl8+", "Na8Cl9-", "Na9Cl8")}
#: RMSE on the original DFT data: energy meV/atom, forces meV/Å, charges me
ANCHORS = [
    ("4G-HDNNP, C10H2/C10H3+", 1.194, 78.0, 6.58), ("4G-HDNNP, Na8/9Cl8+", 0.481, 32.78, 15.83),
    ("SpookyNet, C10H2/C10H3+", 0.364, 5.80, 0.117), ("SpookyNet, Na8/9Cl8+", 0.135, 1.05, 0.111),
]


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    tr.add_common_arguments(parser, n_configs=1000, test_fraction=0.1, epochs=60, batch_size=8, max_l=1,
                            models=",".join(MODELS))
    parser.add_argument("--correlation", type=int, default=2)
    tr.add_loss_arguments(parser, start_swa=0.7, dipole_weight=1.0, dipole_help="for latent",
                          charge_width_help="Gaussian std of charges/latent heads, Å", charges_help="for charges and qeq")
    args = parser.parse_args(argv)
    if args.quick:
        args.n_configs, args.epochs, args.batch_size = 30, 1, 8
    return args


def training_options(args, train_file: Path, test_file: Path, run: str) -> dict:
    """mace_lr_run_train options; identical for every run except the long-range ones."""
    long_range, extra = MODELS[run]
    keys = {**tr.XTB_KEYS, "total_spin_key": "total_spin"}
    options = tr.base_options(args, train_file, test_file, long_range, energy_weight=args.energy_weight,
                              start_swa_fraction=args.start_swa, valid_batch_size=32, error_table="PerAtomRMSE",
                              correlation=args.correlation, keys=keys)
    if long_range in ("charges", "latent"):
        options["lr_charge_width"] = args.charge_width
    if long_range in ("charges", "qeq"):
        options.update(charges_weight=args.charges_weight, dipole_weight=0.0, swa_dipole_weight=0.0)
    if long_range == "latent":
        options.update(dipole_weight=args.dipole_weight, swa_dipole_weight=args.dipole_weight)
    options.update(extra)
    return options


def rmse(values) -> float:
    if isinstance(values, list):
        values = np.concatenate([np.ravel(v) for v in values]) if values else np.zeros(0)
    return float(np.sqrt(np.mean(np.square(values)))) if np.size(values) else float("nan")


def family_rows(test, predictions: dict) -> list:
    """Per model and family: E RMSE (meV/atom), F RMSE (meV/Å), q RMSE (me)."""
    rows = []
    systems = np.array([a.info["config_type"] for a in test])
    for name, pred in predictions.items():
        errors = tr.energy_force_errors(test, pred)
        for family, members in {**FAMILIES, "all": tuple(set(systems))}.items():
            mask = np.isin(systems, members)
            indices = np.flatnonzero(mask)
            q_errors = [pred[i]["charges"] - test[i].arrays["REF_charges"] for i in indices
                        if pred[i]["charges"] is not None]
            rows.append([name, f"{family} ({mask.sum()})", 1e3 * rmse(errors["energy_per_atom"][mask]),
                         1e3 * rmse([errors["forces"][i] for i in indices]),
                         1e3 * rmse(q_errors) if q_errors else float("nan")])
    return rows


def same_nuclei_table(test, predictions: dict) -> str:
    """Mean signed energy error (meV/atom) on Na9Cl8+ and Na9Cl8: same nuclei, charge +1 vs 0."""
    headers = ["model", "Na9Cl8+ mean error (meV/atom)", "Na9Cl8 mean error (meV/atom)"]
    rows = []
    systems = np.array([a.info["config_type"] for a in test])
    for name, pred in predictions.items():
        errors = tr.energy_force_errors(test, pred)["energy_per_atom"]
        rows.append([name] + [1e3 * float(np.mean(errors[systems == s])) if np.any(systems == s) else float("nan")
                              for s in ("Na9Cl8+", "Na9Cl8")])
    return tr.markdown_table(headers, rows)


def main(argv=None) -> None:
    args = parse_args(argv)
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="acc_charge_transfer_"))
    workdir.mkdir(parents=True, exist_ok=True)
    print(f"workdir: {workdir}\n{tr.machine_line()}")
    train, test, train_file, test_file = tr.prepare_data(workdir, "clusters", args.n_configs, args.seed,
                                                          args.test_fraction)
    print(f"{len(train)} train+valid, {len(test)} test clusters")

    trained = tr.train_models(args, workdir, training_options, train_file, test_file)
    predictions = {name: tr.predict(path, test) for name, (path, _) in trained.items()}
    print(f"\n### Test set ({len(test)} clusters), RMSE\n")
    headers = ["model", "systems (test count)", "E RMSE (meV/atom)", "F RMSE (meV/Å)", "q RMSE (me)"]
    print(tr.markdown_table(headers, family_rows(test, predictions)))
    print("\nSame nuclei, different total charge: mean signed energy error\n")
    print(same_nuclei_table(test, predictions))
    print("\nTraining time (min): " + ", ".join(f"{n} {s / 60:.1f}" for n, (_, s) in trained.items()))
    print("\nPublished anchors (original DFT data, RMSE):\n")
    print(tr.markdown_table(["model, data", "E (meV/atom)", "F (meV/Å)", "q (me)"], ANCHORS))


if __name__ == "__main__":
    main()
