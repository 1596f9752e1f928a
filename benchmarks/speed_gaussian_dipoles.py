#!/usr/bin/env python
"""Gaussian charges + dipoles (the dipoles head's atomic mode) in a periodic cell: time and memory.

Energy + forces (one call + backward to positions) of
:class:`mace_lr.electrostatics.gaussian_dipoles.GaussianChargesAndDipoles`, one CPU thread,
float64: SPC-like charges (-0.8, +0.4, +0.4, neutral) and random dipoles (0.3 e·Å per
component) at uniform random positions at water density (0.1 /Å^3), width 1.0 Å,
accuracy 1e-5. Each (size, method) runs in a fresh process; time = the faster of two
calls (CPU time and wall time); peak = the process's maximum resident set after the calls
minus before the first call. The plan line gives the planner's choice and its predicted
seconds and bytes.

Usage::

    python benchmarks/speed_gaussian_dipoles.py                      # 3000 atoms, auto / ewald / pme
    python benchmarks/speed_gaussian_dipoles.py --sizes 1000 10000 --methods auto
"""

from __future__ import annotations

import argparse
import resource
import subprocess
import sys
import time


def run_one(n: int, method: str, width: float, accuracy: float) -> None:
    import mace  # noqa: F401  (before e3nn)
    import torch

    from mace_lr.electrostatics.gaussian_dipoles import GaussianChargesAndDipoles

    torch.set_num_threads(1)
    length = (n / 0.1) ** (1.0 / 3.0)
    g = torch.Generator().manual_seed(0)
    positions = torch.rand(n, 3, generator=g, dtype=torch.float64) * length
    charges = torch.full((n,), 0.4, dtype=torch.float64)
    charges[::3] = -0.8
    charges -= charges.mean()
    dipoles = 0.3 * torch.randn(n, 3, generator=g, dtype=torch.float64)
    cell = torch.eye(3, dtype=torch.float64) * length
    module = GaussianChargesAndDipoles(width, accuracy, method)
    pbc = torch.ones(1, 3, dtype=torch.bool)
    ptr = torch.tensor([0, n])
    plan = module._plan(charges, dipoles, positions, cell)
    base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    cpu, wall = [], []
    for _ in range(2):
        moving = positions.clone().requires_grad_(True)
        start_cpu, start_wall = time.process_time(), time.perf_counter()
        energy = module(charges, dipoles, moving, cell[None], pbc, ptr).sum()
        torch.autograd.grad(energy, moving)
        cpu.append(time.process_time() - start_cpu)
        wall.append(time.perf_counter() - start_wall)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024 - base
    print(f"N={n:6d} {method:5s} -> {plan.method} (mesh {plan.mesh}, kcut {plan.kcut:.3f}; predicted "
          f"{plan.seconds:.2f} s, {plan.memory / 1e6:.0f} MB): CPU {min(cpu):.2f} s, wall {min(wall):.2f} s, "
          f"peak +{peak:.0f} MB, E = {float(energy):.6f} e^2/Å", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", type=int, nargs="+", default=[3000])
    parser.add_argument("--methods", nargs="+", default=["auto", "ewald", "pme"])
    parser.add_argument("--width", type=float, default=1.0)
    parser.add_argument("--accuracy", type=float, default=1e-5)
    parser.add_argument("--one", nargs=2, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.one:
        run_one(int(args.one[0]), args.one[1], args.width, args.accuracy)
        return
    for n in args.sizes:
        for method in args.methods:
            subprocess.run([sys.executable, __file__, "--one", str(n), method, "--width", str(args.width),
                            "--accuracy", str(args.accuracy)], check=False)


if __name__ == "__main__":
    main()
