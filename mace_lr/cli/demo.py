"""``mace_lr_demo``: short-range MACE vs MACE-LR on charged dimers, end to end.

1. The electrostatics engine reproduces the Madelung constants of five ionic crystals
   (Ewald and PME through torch-pme).
2. It generates GFN2-xTB data (tblite): NH4+ / Cl- dimers at 2-15 Å, and a rigid
   NH4+...Cl- scan.
3. It trains a short-range MACE and a MACE-LR (``--long_range charges``) with
   ``mace_lr_run_train``, identical settings otherwise.
4. It prints their test errors side by side, within and beyond the backbone's
   receptive field (num_interactions x r_max), and plots the binding curve.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
from ase.build import bulk

from mace_lr.calculators import CoulombCalculator
from mace_lr.electrostatics import COULOMB_CONSTANT

# name, structure, charges, nearest-neighbour distance (Å), Madelung constant
_A = 5.0
CRYSTALS = [
    ("NaCl", bulk("NaCl", "rocksalt", a=_A), [1, -1], _A / 2, 1.747565),
    ("CsCl", bulk("CsCl", "cesiumchloride", a=_A), [1, -1], _A * np.sqrt(3) / 2, 1.762675),
    ("zincblende", bulk("ZnS", "zincblende", a=_A), [1, -1], _A * np.sqrt(3) / 4, 1.638055),
    ("wurtzite", bulk("ZnO", "wurtzite", a=_A, c=_A * np.sqrt(8 / 3), u=0.375), [1, -1, 1, -1], 0.375 * _A * np.sqrt(8 / 3), 2 * 1.641322),
    ("CaF2", bulk("CaF2", "fluorite", a=_A), [2, -1, -1], _A * np.sqrt(3) / 4, 5.038785),
]

MONOMERS = ("NH4+", "Cl-")

#: Thread settings of the training subprocesses (xTB runs single-threaded, see main).
TRAINING_THREADS: dict[str, str] = {}


@dataclass(frozen=True)
class DemoSettings:
    """Data sizes and the training budget shared by both models."""

    n_train: int = 200
    n_test: int = 60
    epochs: int = 40
    channels: int = 16
    r_max: float = 4.0
    num_interactions: int = 2

    @property
    def receptive_field(self) -> float:
        return self.r_max * self.num_interactions


QUICK = DemoSettings(n_train=12, n_test=6, epochs=2, channels=8)


def madelung_table(accuracy: float = 1e-7) -> list[tuple[str, str, float, float]]:
    """(crystal, method, computed M per primitive cell, reference) for every crystal."""
    rows = []
    for name, atoms, charges, r0, reference in CRYSTALS:
        for method in ("ewald", "pme"):
            crystal = atoms.copy()
            crystal.set_initial_charges(charges)
            crystal.calc = CoulombCalculator(method=method, accuracy=accuracy)
            value = -crystal.get_potential_energy() * r0 / COULOMB_CONSTANT
            rows.append((name, method, value, reference))
    return rows


def make_data(out: Path, settings: DemoSettings) -> tuple[Path, Path, list]:
    """Train and test dimers (different seeds) and a scan; xTB via tblite."""
    from mace_lr import data

    common = dict(monomers=MONOMERS, max_charge_transfer=0.05, progress=True)
    train = data.write_dataset(data.generate_dimers(settings.n_train, seed=1, **common), out / "train.xyz")
    test = data.write_dataset(data.generate_dimers(settings.n_test, seed=2, **common), out / "test.xyz")
    scan = data.dimer_scan(MONOMERS[0], MONOMERS[1], np.linspace(2.2, 15.0, 33), seed=3)
    return train, test, scan


def train(out: Path, name: str, long_range: str, train_file: Path, settings: DemoSettings) -> Path:
    """Run ``mace_lr_run_train`` in a subprocess; returns the saved model's path."""
    command = [
        sys.executable, "-m", "mace_lr.cli.run_train", f"--name={name}", f"--train_file={train_file}",
        "--valid_fraction=0.1", "--energy_key=REF_energy", "--forces_key=REF_forces",
        "--charges_key=REF_charges", "--total_charge_key=total_charge", "--model=MACE",
        f"--r_max={settings.r_max}", f"--num_channels={settings.channels}", "--max_L=1",
        f"--num_interactions={settings.num_interactions}", "--correlation=2",
        f"--max_num_epochs={settings.epochs}", "--batch_size=5", "--lr=0.01", "--E0s=average",
        "--energy_weight=100", "--forces_weight=10", "--scheduler_patience=5",
        "--default_dtype=float64", "--device=cpu", "--seed=1", f"--long_range={long_range}",
        f"--model_dir={out}", f"--log_dir={out / 'logs'}", f"--checkpoints_dir={out / 'checkpoints'}",
        f"--results_dir={out / 'results'}",
    ]
    if long_range != "none":
        command.append("--charges_weight=10")
    log = out / f"{name}.log"
    environment = {k: v for k, v in os.environ.items() if k != "OMP_NUM_THREADS"}
    environment.update(TRAINING_THREADS)
    with open(log, "w") as stream:
        finished = subprocess.run(command, stdout=stream, stderr=subprocess.STDOUT, env=environment)
    if finished.returncode != 0:
        raise RuntimeError(f"training {name} failed (exit {finished.returncode}); see {log}")
    return out / f"{name}.model"


def predict(model_path: Path, structures: list) -> dict[str, list]:
    """Energies (eV), forces (eV/Å) and charges (e, or None) of a model on ``structures``."""
    from mace_lr.calculators import MACELRCalculator

    calc = MACELRCalculator(str(model_path))
    result: dict[str, list] = {"energy": [], "forces": [], "charges": []}
    for atoms in structures:
        calc.calculate(atoms, ["energy"])
        result["energy"].append(calc.results["energy"])
        result["forces"].append(calc.results["forces"])
        result["charges"].append(calc.results.get("charges"))
    return result


def error_rows(structures: list, predictions: dict[str, dict], receptive_field: float) -> list[tuple]:
    """(model, E MAE near, E MAE far (meV), F MAE (meV/Å), Q MAE (me)) per model."""
    separation = np.array([a.info["separation"] for a in structures])
    far = separation > receptive_field
    reference = np.array([a.info["REF_energy"] for a in structures])
    rows = []
    for name, pred in predictions.items():
        energy_error = np.abs(np.array(pred["energy"]) - reference) * 1000
        force_error = np.concatenate([np.abs(f - a.arrays["REF_forces"]).ravel() for f, a in zip(pred["forces"], structures)])
        charges = pred["charges"]
        charge_mae = (
            1000 * np.mean(np.concatenate([np.abs(q - a.arrays["REF_charges"]) for q, a in zip(charges, structures)]))
            if charges[0] is not None else float("nan")
        )
        near = energy_error[~far].mean() if (~far).any() else float("nan")
        beyond = energy_error[far].mean() if far.any() else float("nan")
        rows.append((name, near, beyond, 1000 * force_error.mean(), charge_mae))
    return rows


def plot(path: Path, scan: list, scan_predictions: dict, test: list, test_predictions: dict, receptive_field: float) -> None:
    """Binding curve (left) and test energy errors vs separation (right)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, (left, right) = plt.subplots(1, 2, figsize=(10, 4))
    distance = [a.info["separation"] for a in scan]
    reference = np.array([a.info["REF_energy"] for a in scan])
    left.plot(distance, reference - reference[-1], "k-", label="GFN2-xTB")
    for name, pred in scan_predictions.items():
        left.plot(distance, np.array(pred["energy"]) - reference[-1], "--", label=name)
    left.set(xlabel="NH4+ ... Cl- closest distance (Å)", ylabel="E - E_xTB(15 Å) (eV)", title="binding curve")
    separation = [a.info["separation"] for a in test]
    for name, pred in test_predictions.items():
        error = np.abs(np.array(pred["energy"]) - np.array([a.info["REF_energy"] for a in test]))
        right.semilogy(separation, 1000 * error, "o", ms=3, label=name)
    for axis in (left, right):
        axis.axvline(receptive_field, color="grey", lw=0.8)
        axis.legend()
    right.set(xlabel="closest intermolecular distance (Å)", ylabel="|energy error| (meV)", title="test set")
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="mace_lr_demo", description=__doc__.splitlines()[0])
    parser.add_argument("-o", "--output-dir", default="mace_lr_demo_output", help="folder for data, models, plot")
    parser.add_argument("--quick", action="store_true", help="tiny data and 2 epochs (smoke test, ~1 min)")
    args = parser.parse_args(argv)
    settings = QUICK if args.quick else DemoSettings()
    if "OMP_NUM_THREADS" in os.environ:
        TRAINING_THREADS["OMP_NUM_THREADS"] = os.environ["OMP_NUM_THREADS"]
    # tblite's OpenMP threads slow small molecules ~300x on shared cores (mace_lr.data.xtb);
    # tblite is loaded later, in make_data, and reads this then
    os.environ["OMP_NUM_THREADS"] = "1"
    out = Path(args.output_dir).resolve()
    out.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()

    print("1. Madelung constants (energy per cell = -M k_e / r0), accuracy 1e-7")
    print(f"   {'crystal':<11} {'method':<6} {'computed':>12} {'reference':>12} {'rel. error':>10}")
    for name, method, value, reference in madelung_table():
        print(f"   {name:<11} {method:<6} {value:12.7f} {reference:12.7f} {abs(value / reference - 1):10.1e}")

    print(f"\n2. GFN2-xTB dimers of {' and '.join(MONOMERS)}: {settings.n_train} train, {settings.n_test} test, 33-point scan")
    train_file, test_file, scan = make_data(out, settings)
    from ase.io import read

    test = read(test_file, ":")

    print(f"\n3. Training (same settings, {settings.epochs} epochs, r_max {settings.r_max} Å, "
          f"{settings.num_interactions} layers: receptive field {settings.receptive_field} Å)")
    models = {}
    for label, long_range in (("short-range MACE", "none"), ("MACE-LR charges", "charges")):
        tic = time.perf_counter()
        models[label] = train(out, long_range.replace("+", "_"), long_range, train_file, settings)
        print(f"   {label:<17} {time.perf_counter() - tic:6.0f} s  -> {models[label]}")

    test_predictions = {label: predict(path, test) for label, path in models.items()}
    scan_predictions = {label: predict(path, scan) for label, path in models.items()}
    print(f"\n4. Test errors (MAE; 'far' = beyond the receptive field, {settings.receptive_field} Å)")
    print(f"   {'model':<17} {'E near/meV':>10} {'E far/meV':>10} {'F/meV/Å':>9} {'Q/me':>7}")
    for name, near, far, force, charge in error_rows(test, test_predictions, settings.receptive_field):
        print(f"   {name:<17} {near:10.1f} {far:10.1f} {force:9.1f} {charge:7.1f}")
    figure = out / "demo.png"
    plot(figure, scan, scan_predictions, test, test_predictions, settings.receptive_field)
    print(f"\nPlot: {figure}\nTotal time {time.perf_counter() - start:.0f} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
