"""Accuracy: charged molecular dimers (GFN2-xTB) beyond the backbone's receptive field.

Data: ``mace_lr_generate dimers`` (two of H2O NH3 HF NH4+ OH- Cl- HCOO- CH3NH3+, random
orientations, shortest intermolecular distance d ~ U(2, 15) Å), with
``--max-charge-transfer`` dropping dimers whose xTB charges leak between the monomers
(GFN2-xTB's delocalisation error for OH-/cation pairs at long range).

Models, same backbone, data, split, seed and budget:
* ``none``: short-range MACE. For d > r_max the graph has no edge between the monomers,
  so it predicts E(A) + E(B) whatever d is (2 r_max is the nominal receptive field);
* ``charges``: explicit charges fitted to the xTB charges (``--charges_weight``);
* ``latent``: latent charges from energies and forces only (``--dipole_weight 0``);
* ``latent_mu``: latent charges, plus the xTB dipole in the loss (``--dipole_weight``);
* ``qeq``: charge equilibration, its charges fitted to the xTB charges;
* ``lode``: nonlocal descriptors (potential and field of element densities) in the readout;
* ``ewald_mp``: reciprocal-space message passing after the first interaction layer.

``--models`` selects a subset (default: the first four, as recorded in RESULTS.md first).

Reported on the test set: energy MAE per dimer (meV) binned by d (< r_max, r_max to
2 r_max, > 2 r_max), force MAE (meV/Å, components), charge MAE against xTB (e), dipole
MAE (e·Å, Cartesian components), and rigid scans of three pairs along d (interaction energy against the isolated monomers).

    python benchmarks/accuracy_dimers.py --quick      # smoke test, < 1 min
    python benchmarks/accuracy_dimers.py              # full run (see RESULTS.md)
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
    "charges": ("charges", {"dipole_weight": 0.0}),
    "latent": ("latent", {"dipole_weight": 0.0}),
    "latent_mu": ("latent", {}),  # dipole_weight from --dipole-weight
    "qeq": ("qeq", {"dipole_weight": 0.0}),  # charges fitted to xTB (--charges-weight), as in 4G-HDNNP
    "lode": ("lode", {"dipole_weight": 0.0}),
    "ewald_mp": ("ewald_mp", {"dipole_weight": 0.0}),
}
#: rigid binding-curve scans: (first, second) monomers, distances in Å
SCAN_PAIRS = (("HCOO-", "Cl-"), ("NH4+", "H2O"), ("NH4+", "Cl-"))
SCAN_DISTANCES = (2.5, 3.0, 4.0, 5.0, 6.0, 8.0, 10.0, 12.0, 15.0, 20.0)
PAIR_CLASSES = ("cation-anion", "like charges", "ion-neutral", "neutral-neutral")


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    tr.add_common_arguments(parser, n_configs=2000, test_fraction=0.2, epochs=100, batch_size=16, max_l=1,
                            models="none,charges,latent,latent_mu")
    parser.add_argument("--max-charge-transfer", type=float, default=0.05, help="e; generator filter")
    parser.add_argument("--correlation", type=int, default=2)
    tr.add_loss_arguments(parser, start_swa=0.6, dipole_weight=1.0, dipole_help="for latent_mu")
    args = parser.parse_args(argv)
    if args.quick:
        args.n_configs, args.epochs, args.batch_size = 40, 1, 8
    return args


def training_options(args, train_file: Path, test_file: Path, run: str) -> dict:
    """mace_lr_run_train options; identical for every run except the long-range ones."""
    long_range, extra = MODELS[run]
    keys = tr.XTB_KEYS
    options = tr.base_options(args, train_file, test_file, long_range, energy_weight=args.energy_weight,
                              start_swa_fraction=args.start_swa, valid_batch_size=32, error_table="PerAtomMAE",
                              correlation=args.correlation, keys=keys)
    if long_range != "none":
        options.update(lr_charge_width=args.charge_width, dipole_weight=args.dipole_weight,
                       swa_dipole_weight=args.dipole_weight)
        options.update({key: value for key, value in extra.items()})
        if "dipole_weight" in extra:
            options["swa_dipole_weight"] = extra["dipole_weight"]
    if long_range in ("charges", "qeq"):
        options["charges_weight"] = args.charges_weight
    return options


def separation_bins(r_max: float) -> list:
    return [(0.0, r_max, f"d < {r_max:g} Å (r_max)"), (r_max, 2 * r_max, f"{r_max:g}-{2 * r_max:g} Å"),
            (2 * r_max, np.inf, f"d > {2 * r_max:g} Å (2 r_max)")]


def pair_class(atoms) -> str:
    """Which of PAIR_CLASSES a dimer belongs to (from its monomers' nominal charges)."""
    from mace_lr.data.molecules import get_molecules

    q1, q2 = (m.charge for m in get_molecules(atoms.info["monomers"].split()))
    if q1 * q2 != 0:
        return PAIR_CLASSES[0] if q1 * q2 < 0 else PAIR_CLASSES[1]
    return PAIR_CLASSES[2] if q1 or q2 else PAIR_CLASSES[3]


def class_rows(test, predictions: dict, r_max: float) -> tuple[list, list]:
    """Energy MAE (meV) of dimers beyond r_max, by pair class; (headers, rows)."""
    far = np.array([a.info["separation"] >= r_max for a in test])
    classes = np.array([pair_class(a) for a in test])
    counts = {c: int(np.sum(far & (classes == c))) for c in PAIR_CLASSES}
    headers = ["model"] + [f"{c} ({counts[c]})" for c in PAIR_CLASSES]
    rows = []
    for name, pred in predictions.items():
        errors = tr.energy_force_errors(test, pred)["energy"]
        rows.append([name] + [1e3 * tr.mae(errors[far & (classes == c)]) for c in PAIR_CLASSES])
    return headers, rows


def model_row(name: str, test, pred, bins, minutes: float) -> list:
    errors = tr.energy_force_errors(test, pred)
    d = np.array([a.info["separation"] for a in test])
    row = [name] + [1e3 * tr.mae(errors["energy"][(d >= lo) & (d < hi)]) for lo, hi, _ in bins]
    row += [1e3 * tr.mae(errors["energy"]), 1e3 * tr.mae(errors["forces"])]
    if pred[0]["charges"] is not None and np.any(pred[0]["charges"]):
        row.append(tr.mae([p["charges"] - a.arrays["REF_charges"] for a, p in zip(test, pred)]))
        row.append(tr.mae([p["dipole"] - a.info["REF_dipole"] for a, p in zip(test, pred)]))
    else:
        row += [float("nan"), float("nan")]
    return row + [minutes]


def scan_configs(first: str, second: str) -> list:
    """xTB-labelled rigid dimers along x at SCAN_DISTANCES (shortest contact, Å), then the
    two isolated monomers (same geometries, own charges): the separated-limit reference."""
    from mace_lr.data.dimers import contact_shift
    from mace_lr.data.molecules import get_molecules
    from mace_lr.data.xtb import XTBConvergenceError, xtb_labelled_atoms

    a, b = get_molecules([first, second])
    direction = np.array([1.0, 0.0, 0.0])
    numbers = [*a.atoms().numbers, *b.atoms().numbers]
    configs = []
    for d in SCAN_DISTANCES:
        positions = np.vstack([a.positions, b.positions + contact_shift(a.positions, b.positions, direction, d) * direction])
        try:
            atoms = xtb_labelled_atoms(numbers, positions, total_charge=a.charge + b.charge)
        except XTBConvergenceError:  # GFN2-xTB's SCF fails for some distant cation-anion pairs
            print(f"{first} + {second} at {d:g} Å: xTB SCF did not converge; left out")
            continue
        atoms.info["separation"] = d
        atoms.info["charge_transfer"] = float(np.sum(atoms.arrays["REF_charges"][len(a.symbols):]) - b.charge)
        configs.append(atoms)
    return configs + [xtb_labelled_atoms(m.atoms().numbers, m.positions, total_charge=m.charge) for m in (a, b)]


def scan_table(pair, models: dict) -> str:
    """Interaction energy E(dimer at d) - E(A) - E(B) in meV: xTB and every model."""
    configs = scan_configs(*pair)
    ref = np.array([a.info["REF_energy"] for a in configs])
    columns = {name: np.array([p["energy"] for p in tr.predict(path, configs)]) for name, path in models.items()}
    rows = []
    for k, atoms in enumerate(configs[:-2]):
        row = [f"{atoms.info['separation']:g}", 1e3 * (ref[k] - ref[-2] - ref[-1])]
        row += [1e3 * (e[k] - e[-2] - e[-1]) for e in columns.values()]
        rows.append(row + [f"{atoms.info['charge_transfer']:+.3f}"])
    headers = ["d (Å)", "xTB"] + list(columns) + ["xTB charge transfer (e)"]
    return f"\n{' + '.join(pair)}: interaction energy E(d) - E(A) - E(B), meV\n\n" + tr.markdown_table(headers, rows)


def main(argv=None) -> None:
    args = parse_args(argv)
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="acc_dimers_"))
    workdir.mkdir(parents=True, exist_ok=True)
    print(f"workdir: {workdir}\n{tr.machine_line()}")
    train, test, train_file, test_file = tr.prepare_data(
        workdir, "dimers", args.n_configs, args.seed, args.test_fraction,
        "--max-charge-transfer", str(args.max_charge_transfer))
    bins = separation_bins(args.r_max)
    d = np.array([a.info["separation"] for a in test])
    counts = ", ".join(f"{label}: {int(np.sum((d >= lo) & (d < hi)))}" for lo, hi, label in bins)
    print(f"{len(train)} train+valid, {len(test)} test dimers ({counts})")

    trained = tr.train_models(args, workdir, training_options, train_file, test_file)

    headers = ["model"] + [f"E MAE {label} (meV)" for _, _, label in bins]
    headers += ["E MAE all (meV)", "F MAE (meV/Å)", "q MAE vs xTB (e)", "μ MAE (e·Å)", "train (min)"]
    predictions = {name: tr.predict(path, test) for name, (path, _) in trained.items()}
    rows = [model_row(name, test, predictions[name], bins, trained[name][1] / 60.0) for name in trained]
    print(f"\n### Test set ({len(test)} dimers)\n")
    print(tr.markdown_table(headers, rows))
    print(f"\nEnergy MAE (meV) of test dimers with d > {args.r_max:g} Å by pair class (count)\n")
    print(tr.markdown_table(*class_rows(test, predictions, args.r_max)))
    for pair in SCAN_PAIRS:
        print(scan_table(pair, {name: path for name, (path, _) in trained.items()}))


if __name__ == "__main__":
    main()
