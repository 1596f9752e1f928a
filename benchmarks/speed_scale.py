#!/usr/bin/env python
"""The charge heads' long-range sum (GraphCoulomb) against standalone torch-pme, at MD scale.

For the same charges, energy + forces (one call + backward to positions), one CPU thread:
* ``torchpme``: the standalone engine as it was before the k-space layer, i.e. torch-pme's
  own ``EwaldCalculator`` (below 3,000 atoms) or ``PMECalculator`` (from 3,000; power-of-two
  meshes) with the settings of :func:`mace_lr.electrostatics.parameters.choose_parameters`
  at the same accuracy, vesin's neighbour list and the Gaussian-width pair correction:
  the baseline the issue measured (0.62 s, 0.8 GB at 3,000 atoms);
* ``engine``: :class:`mace_lr.electrostatics.Electrostatics`, now on the k-space layer
  (the same :class:`~mace_lr.electrostatics.split_coulomb.PeriodicCoulomb` as ``graph``, eager);
* ``graph``: :class:`mace_lr.electrostatics.graph.GraphCoulomb`, the sum inside the
  ``charges`` and ``latent`` heads (the k-space layer: planner, vesin-torch pairs,
  Ewald or FFT-friendly PME), compiled with TorchScript as in a saved model.
Systems: +-1 charges on a jittered cubic lattice at water-like density (0.1 /Å^3),
molten-salt density (0.044 /Å^3), and a slab (0.1 /Å^3 in the slab, 50% vacuum, pbc
T,T,F); Gaussian widths 0.5 and 1.0 Å; accuracy 1e-5; float64 (and float32 with
``--float32``). Each (row, variant) runs in a fresh process: time = median of
``--repeats`` calls after one warm-up; peak = the process's maximum resident set
after the calls minus before the first call (GB). ``error``: RMS force error of
``graph`` relative to <q^2> rho^(2/3) against torch-pme's Ewald with settings for 1e-10
(independent of the k-space layer; rows up to ``--error-max-atoms``).

Usage::

    python benchmarks/speed_scale.py                          # 768, 3000, 10000 atoms
    python benchmarks/speed_scale.py --sizes 30000 --kinds water --widths 1.0
    python benchmarks/speed_scale.py --quick                  # smoke run
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import time

KINDS = {"water": (0.1, 0.0), "molten_salt": (0.044, 0.0), "slab": (0.1, 1.0)}


def system(n_atoms: int, kind: str, dtype, seed: int = 0):
    """+-1 charges of ``kind`` on the tests' jittered cubic lattice (n_atoms rounded to a cube)."""
    import torch

    sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), os.pardir, "tests"))
    from helpers import jittered_ions

    density, vacuum = KINDS[kind]
    positions, charges, cell = jittered_ions(round(n_atoms ** (1.0 / 3.0)), density, seed, vacuum)
    pbc = torch.tensor([True, True, vacuum == 0.0])
    return positions.to(dtype), charges.to(dtype), cell.to(dtype), pbc


def torchpme_energy(method: str, positions, charges, cell, pbc, width: float, accuracy: float):
    """Energy function of torch-pme's own calculator with ``choose_parameters`` settings, vesin
    pairs and the Gaussian-width pair correction -erfc(r / 2s) / r (uniform width s)."""
    import math

    import torch
    import torchpme
    import vesin

    from mace_lr.electrostatics.parameters import SAFETY_FACTOR, _gaussian_tail_argument, choose_parameters

    params = choose_parameters(method, positions, charges, cell, accuracy)
    potential = torchpme.CoulombPotential(smearing=params.smearing)
    if method == "ewald":
        calculator = torchpme.EwaldCalculator(potential, lr_wavelength=params.lr_wavelength)
    else:
        calculator = torchpme.PMECalculator(potential, mesh_spacing=params.mesh_spacing,
                                            interpolation_nodes=params.interpolation_nodes)
    calculator = calculator.to(dtype=positions.dtype)
    pair_width = 2.0 * width
    cutoff = params.cutoff
    if width > 0.0:
        cutoff = max(cutoff, pair_width * _gaussian_tail_argument(SAFETY_FACTOR * accuracy) / math.sqrt(2.0))
    q = charges.unsqueeze(-1)
    periodic = None if bool(pbc.all()) else pbc

    def energy(pos):
        found = vesin.NeighborList(cutoff=float(cutoff), full_list=False).compute(
            pos.detach().double().numpy(), cell.detach().double().numpy(), bool(pbc.all()) or [bool(p) for p in pbc],
            quantities="ijS")
        i, j, shifts = (torch.from_numpy(x.astype("int64")) for x in found)
        distances = torch.linalg.norm(pos[j] - pos[i] + shifts.to(pos.dtype) @ cell, dim=1)
        phi = 2.0 * calculator(charges=q, cell=cell, positions=pos, neighbor_indices=torch.stack([i, j], 1),
                               neighbor_distances=distances, periodic=periodic)
        total = 0.5 * (q * phi).sum()
        if width > 0.0:
            total = total - (charges[i] * charges[j] * torch.erfc(distances / pair_width) / distances).sum()
        return total

    return energy


def child(args: argparse.Namespace) -> None:
    """Time and measure one variant on one row; prints a JSON line."""
    import torch

    from mace_lr.electrostatics import COULOMB_CONSTANT, Electrostatics
    from mace_lr.electrostatics.graph import GraphCoulomb

    torch.set_num_threads(1)
    dtype = torch.float32 if args.dtype == "float32" else torch.float64
    positions, charges, cell, pbc = system(args.n, args.kind, dtype)
    n = len(charges)
    if args.variant == "torchpme":
        energy = torchpme_energy("pme" if n >= 3000 else "ewald", positions, charges, cell, pbc, args.width, 1e-5)
    elif args.variant == "engine":
        module = Electrostatics(method="auto", smearing=args.width, accuracy=1e-5)

        def energy(pos):
            return module(pos, charges, cell[None], pbc[None])["energy"].sum()
    else:
        module = torch.jit.script(GraphCoulomb(width=args.width, cutoff=5.0, accuracy=1e-5).to(dtype))
        ptr = torch.tensor([0, n])
        edges = torch.zeros(2, 0, dtype=torch.long)
        lengths = torch.zeros(0, dtype=dtype)

        def energy(pos):
            phi = module(charges, pos, cell[None], pbc[None], ptr, edges, lengths)
            return 0.5 * (charges * phi).sum()

    def call():
        pos = positions.clone().requires_grad_(True)
        return -torch.autograd.grad(energy(pos), pos)[0]

    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    forces = call()
    times = []
    for _ in range(args.repeats):
        start = time.perf_counter()
        call()
        times.append(time.perf_counter() - start)
    peak = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) / 1e6
    out = {"seconds": statistics.median(times), "peak_gb": peak}
    if args.variant == "graph":
        plan = module.periodic.plan(positions, cell, args.width, True)
        out["plan"] = f"{plan.method} sigma={plan.smearing:.2f} rc={plan.cutoff:.1f} " + (
            f"mesh={plan.mesh}" if plan.method == "pme" else f"kc={plan.kcut:.2f}")
        if n <= args.error_max_atoms:
            pos64, q64, cell64, _ = system(args.n, args.kind, torch.float64)
            reference = torchpme_energy("ewald", pos64, q64, cell64, pbc, args.width, 1e-10)
            pos = pos64.clone().requires_grad_(True)
            ref = -torch.autograd.grad(COULOMB_CONSTANT * reference(pos), pos)[0]  # eV/Å, as graph's
            from mace_lr.electrostatics.kspace import occupied_density

            scale = COULOMB_CONSTANT * occupied_density(pos64, cell64) ** (2.0 / 3.0)  # <q^2> = 1
            out["error"] = float(((forces.double() - ref) ** 2).sum(-1).mean().sqrt()) / scale
    print("RESULT " + json.dumps(out), flush=True)


def run_child(n: int, kind: str, width: float, dtype: str, variant: str, args) -> dict:
    command = [sys.executable, __file__, "--child", "--n", str(n), "--kind", kind, "--width", str(width),
               "--dtype", dtype, "--variant", variant, "--repeats", str(args.repeats),
               "--error-max-atoms", str(args.error_max_atoms)]
    env = dict(os.environ, OMP_NUM_THREADS="1")
    done = subprocess.run(command, capture_output=True, text=True, env=env, timeout=args.timeout)
    for line in done.stdout.splitlines():
        if line.startswith("RESULT "):
            return json.loads(line[7:])
    tail = (done.stderr or done.stdout).strip().splitlines()[-1:] or ["no output"]
    return {"failed": tail[0][:160]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", default="768,3000,10000")
    parser.add_argument("--kinds", default="water,molten_salt,slab")
    parser.add_argument("--widths", default="0.5,1.0")
    parser.add_argument("--float32", action="store_true", help="also run every row in float32")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--error-max-atoms", type=int, default=1000)
    parser.add_argument("--timeout", type=float, default=1200.0)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--json", default=None)
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--n", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--kind", help=argparse.SUPPRESS)
    parser.add_argument("--width", type=float, help=argparse.SUPPRESS)
    parser.add_argument("--dtype", default="float64", help=argparse.SUPPRESS)
    parser.add_argument("--variant", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args)
        return
    if args.quick:
        args.sizes, args.kinds, args.widths, args.repeats = "216", "water,slab", "1.0", 1
    sizes = [int(s) for s in args.sizes.split(",")]
    dtypes = ["float64", "float32"] if args.float32 else ["float64"]
    print(f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores, one torch thread; "
          f"python {platform.python_version()}")
    print("\n| atoms | cell | width Å | dtype | torch-pme s | engine s | graph s | graph / torch-pme | torch-pme GB "
          "| engine GB | graph GB | graph error | graph plan |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|---|")
    rows = []
    for n in sizes:
        for kind in args.kinds.split(","):
            for width in [float(w) for w in args.widths.split(",")]:
                for dtype in dtypes:
                    base = run_child(n, kind, width, dtype, "torchpme", args)
                    engine = run_child(n, kind, width, dtype, "engine", args)
                    graph = run_child(n, kind, width, dtype, "graph", args)
                    rows.append({"n": n, "kind": kind, "width": width, "dtype": dtype, "torchpme": base,
                                 "engine": engine, "graph": graph})
                    if "failed" in base or "failed" in engine or "failed" in graph:
                        print(f"| {n} | {kind} | {width} | {dtype} | {base} | {engine} | {graph} |", flush=True)
                        continue
                    error = f"{graph['error']:.1e}" if "error" in graph else "-"
                    print(f"| {round(n ** (1 / 3)) ** 3} | {kind} | {width} | {dtype} | {base['seconds']:.3f} | "
                          f"{engine['seconds']:.3f} | {graph['seconds']:.3f} | {graph['seconds'] / base['seconds']:.2f} | "
                          f"{base['peak_gb']:.2f} | {engine['peak_gb']:.2f} | {graph['peak_gb']:.2f} | {error} | "
                          f"{graph['plan']} |", flush=True)
    if args.json:
        with open(args.json + ".tmp", "w") as handle:
            json.dump(rows, handle, indent=1)
        os.replace(args.json + ".tmp", args.json)


if __name__ == "__main__":
    main()
