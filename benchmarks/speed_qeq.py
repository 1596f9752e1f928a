#!/usr/bin/env python
"""Charge-equilibration solver cost against system size: dense (Cholesky) vs iterative (PCG).

System: N ions on a jittered simple-cubic lattice at 0.05 ions/Å^3 (rock-salt-like
alternation of two species), electronegativity ±1 V plus noise, hardness 5 eV/e^2,
Gaussian widths 0.5 Å, neutral; periodic cube and the same ions in open boundaries.
Both solvers go through :func:`mace_lr.electrostatics.qeq.equilibrate_charges` (the
public API; the pair list from vesin is included in the time), accuracy 1e-5 (relative
accuracy of the Coulomb sums), tolerance 1e-8 (relative residual of PCG). Reported:
seconds per solve (median of ``--repeats``; one solve from 3,000 atoms on), PCG
iterations, and the largest charge difference between the two solvers where both ran. The dense solver is skipped where its
estimated memory exceeds ``--memory-budget-gb``
(:meth:`~mace_lr.electrostatics.qeq.GaussianCoulombOperator.dense_memory_bytes`; periodic:
the k-space plan's reciprocal sum of N unit-charge columns; open: the N x N matrix).
Periodic sums: the k-space layer's plan per structure (Ewald or PME by cost, see
:mod:`mace_lr.electrostatics.kspace`), prepared once per solve.

    python benchmarks/speed_qeq.py                      # 100 ... 10,000 atoms
    python benchmarks/speed_qeq.py --sizes 100,1000     # a subset
"""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import time

import numpy as np
import torch

from mace_lr.electrostatics.qeq import equilibrate_charges, standalone_operator

DENSITY = 0.05  # ions / Å^3
SIZES = [100, 300, 1000, 3000, 10000]


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", default=",".join(str(n) for n in SIZES))
    parser.add_argument("--boundaries", default="periodic,open", help="comma-separated: periodic, open")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--clock", choices=("wall", "cpu"), default="wall",
                        help="wall time, or CPU time of this process (with --threads 1: robust to other jobs)")
    parser.add_argument("--accuracy", type=float, default=1e-5)
    parser.add_argument("--tolerance", type=float, default=1e-8)
    parser.add_argument("--memory-budget-gb", type=float, default=12.0)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--json", default=None)
    return parser.parse_args(argv)


def lattice_ions(n_atoms: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray, float]:
    """(positions [N, 3] Å, species sign [N] ±1, box length Å): jittered cubic lattice."""
    per_side = math.ceil(n_atoms ** (1.0 / 3.0))
    length = (n_atoms / DENSITY) ** (1.0 / 3.0)
    spacing = length / per_side
    grid = np.stack(np.meshgrid(*[np.arange(per_side)] * 3, indexing="ij"), -1).reshape(-1, 3)
    rng = np.random.default_rng(seed)
    chosen = grid[np.sort(rng.choice(len(grid), n_atoms, replace=False))]
    sign = np.where(chosen.sum(1) % 2 == 0, 1.0, -1.0)
    positions = (chosen + 0.5 + rng.uniform(-0.2, 0.2, chosen.shape)) * spacing
    return positions, sign, length


def dense_memory_gb(inputs: dict, accuracy: float) -> float:
    """Peak memory estimate (GB) of the dense solve, from the operator equilibrate_charges builds."""
    operator = standalone_operator(inputs["positions"], inputs["widths"], inputs["cell"], inputs["pbc"], accuracy)
    return operator.dense_memory_bytes(len(inputs["positions"]), inputs["cell"], inputs["pbc"], inputs["positions"],
                                       inputs["widths"]) / 1e9


def time_solver(inputs: dict, solver: str, repeats: int, accuracy: float, tolerance: float, clock: str = "wall"):
    timer = time.perf_counter if clock == "wall" else time.process_time
    seconds, result = [], None
    for _ in range(repeats):
        start = timer()
        with torch.no_grad():
            result = equilibrate_charges(**inputs, solver=solver, accuracy=accuracy, tolerance=tolerance,
                                         max_iterations=5000)
        seconds.append(timer() - start)
    return statistics.median(seconds), result


def main(args: argparse.Namespace) -> None:
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.set_default_dtype(torch.float64)
    print(json.dumps({"cpu": os.uname().machine, "nproc": os.cpu_count(), "torch": torch.__version__,
                      "threads": torch.get_num_threads(), "clock": args.clock, "date": time.strftime("%Y-%m-%d %H:%M:%S %Z")}))
    rows = []
    for n_atoms in [int(n) for n in args.sizes.split(",")]:
        positions, sign, length = lattice_ions(n_atoms)
        electronegativity = torch.tensor(sign + 0.2 * np.random.default_rng(1).normal(size=n_atoms))
        for periodic in [name == "periodic" for name in args.boundaries.split(",")]:
            inputs = dict(positions=torch.tensor(positions), electronegativity=electronegativity,
                          hardness=torch.full((n_atoms,), 5.0), widths=torch.full((n_atoms,), 0.5),
                          cell=torch.eye(3) * length, pbc=torch.tensor([periodic] * 3), total_charge=0.0)
            row = {"N": n_atoms, "periodic": periodic}
            repeats = 1 if n_atoms >= 3000 else args.repeats  # single solves of minutes: one is enough
            iterative_time, iterative = time_solver(inputs, "iterative", repeats, args.accuracy, args.tolerance,
                                                     args.clock)
            row.update(iterative_s=iterative_time, iterations=int(iterative["iterations"]))
            memory = dense_memory_gb(inputs, args.accuracy)
            if memory <= args.memory_budget_gb:
                dense_time, dense = time_solver(inputs, "dense", repeats, args.accuracy, args.tolerance, args.clock)
                row.update(dense_s=dense_time,
                           max_dq=float((dense["charges"] - iterative["charges"]).abs().max()))
            else:
                row["dense_skipped"] = f"~{memory:.0f} GB"
            rows.append(row)
            print(json.dumps(row), flush=True)
    print("\n| N | boundary | dense (s) | iterative (s) | PCG iterations | dense / iterative | max abs(dq) (e) |")
    print("|---:|---|---:|---:|---:|---:|---:|")
    for row in rows:
        dense = row.get("dense_s")
        dense_cell = f"skipped ({row['dense_skipped']})" if dense is None else f"{dense:.3g}"
        ratio = "-" if dense is None else f"{dense / row['iterative_s']:.2f}"
        difference = "-" if dense is None else f"{row['max_dq']:.1e}"
        boundary = "periodic" if row["periodic"] else "open"
        print(f"| {row['N']} | {boundary} | {dense_cell} | {row['iterative_s']:.3g} | {row['iterations']} | "
              f"{ratio} | {difference} |")
    if args.json:
        with open(args.json, "w") as handle:
            json.dump(rows, handle, indent=1)


if __name__ == "__main__":
    main(parse_args())
