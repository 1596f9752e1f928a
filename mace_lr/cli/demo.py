"""``mace_lr_demo``: the main job at this stage of mace-lr, end to end in a minute.

1. The electrostatics engine reproduces the Madelung constants of five ionic crystals
   with Ewald and with PME (torch-pme), through the ASE ``CoulombCalculator``.
2. It writes two reference data sets (the LES random-charges benchmark, labelled by
   our Ewald sum, and xTB-labelled charged/polar dimers) and reads them back with
   MACE's own loader, ready for ``mace_run_train``.
"""

from __future__ import annotations

import argparse
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


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="mace_lr_demo", description=__doc__.splitlines()[0])
    parser.add_argument("-o", "--output-dir", default="mace_lr_demo_output", help="folder for the data sets")
    parser.add_argument("--n-configs", type=int, default=8, help="structures per data set")
    args = parser.parse_args(argv)
    if args.n_configs < 1:
        parser.error("--n-configs must be a positive integer")

    print("1. Madelung constants (energy per cell = -M k_e / r0), accuracy 1e-7")
    print(f"   {'crystal':<11} {'method':<6} {'computed':>12} {'reference':>12} {'rel. error':>10}")
    for name, method, value, reference in madelung_table():
        print(f"   {name:<11} {method:<6} {value:12.7f} {reference:12.7f} {abs(value / reference - 1):10.1e}")

    from mace_lr import data  # imported here: pulls in tblite and MACE only when needed

    out = Path(args.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    print(f"\n2. Reference data in {out}/ (deterministic, seed 0)")
    sets = {
        "random_charges.xyz": lambda: data.generate_random_charges(args.n_configs, seed=0, progress=True),
        "dimers.xyz": lambda: data.generate_dimers(args.n_configs, seed=0, progress=True),
    }
    from mace.data.utils import load_from_xyz

    for filename, generate in sets.items():
        path = data.write_dataset(generate(), out / filename)
        _, configs = load_from_xyz(
            file_path=str(path),
            config_type_weights={"Default": 1.0},
            key_specification=data.mace_key_specification(),
        )
        keys = sorted(k for k, v in configs[0].properties.items() if v is not None)
        print(f"   {filename}: {len(configs)} structures read back by mace.data.utils.load_from_xyz; labels {keys}")
    flags = " ".join(f"--{name}={key}" for name, key in data.MACE_TRAIN_KEYS.items())
    print(f"\nTrain on them with: mace_run_train --train_file=... {flags}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
