#!/usr/bin/env python
"""Energy + forces time of MACE-LR against the same ScaleShiftMACE backbone without head.

Systems: periodic water-like boxes at 0.1 atoms/Å^3: N/3 rigid H2O (O-H 0.9572 Å,
104.52°), O on random sites of the smallest fcc lattice with >= N/3 sites (jitter ±0.05
cubic cell), random orientations redrawn until no intermolecular pair is below 1.5 Å.
float64, one structure per call. Backbone (the same object, hence the same weights, in
every MACE-LR variant): ScaleShiftMACE, 64x0e+64x1o, max_ell 3, 2 interactions
(RealAgnosticResidualInteractionBlock), correlation 3, r_max 5 Å, 8 Bessel, MLP 16x0e,
H and O. Variants: bare; MACE-LR ``latent``, ``charges``, ``charges+latent`` (default
LongRangeConfig: width 1 Å, accuracy 1e-5, method auto), ``qeq`` (dense solve up to 1000
atoms, conjugate gradients above), ``lode`` (element densities, s = 1 Å), ``ewald_mp``
(after layer 0, 16 channels, widths 1, 2, 4 Å); ``latent`` with the method
forced to Ewald / PME; MACE's ``PolarMACE`` (same hyper-parameters, its default
long-range settings, own weights; needs ``graph-longrange==0.4.0``); and the head's
``GraphCoulomb`` alone (call + backward to positions and charges).

The batch (neighbour list) is built once per size, untimed. Each variant gets one
untimed warm-up call, then ``repeats`` rounds calling every variant once (the order
rotates each round, so load changes hit all alike); medians and their ratio to the bare
backbone are reported. ``others``: CPU (cores) used by other processes (/proc/stat).
Clocks (``--clock``; all three go to ``--json``): ``wall``; ``cpu`` (user + system time
of this process); ``user`` (user time only). With ``--threads 1``, cpu and user do not
see other processes, and user leaves out the kernel's page-fault time.

Memory: up to 1500 atoms the script re-executes itself with glibc's
``MALLOC_MMAP_THRESHOLD_`` / ``MALLOC_TRIM_THRESHOLD_`` set (as
benchmarks/electrostatics.py) so that large tensors are not page-faulted in again on
every call. Not beyond: at 3000 atoms each variant peaks at 13-16 GB and the untrimmed
heap outgrew a 23 GB machine; there page faults cost ~3x the backbone's user time (as
system time), so compare ``--clock user``. Variants whose estimated peak exceeds
``--memory-budget-gb`` are skipped.

Usage::

    python benchmarks/speed_model.py --sizes 96,768                 # quiet machine
    python benchmarks/speed_model.py --sizes 3000 --threads 1 --clock user
    python benchmarks/speed_model.py --threads 1 --clock user       # loaded machine
    python benchmarks/speed_model.py --quick                        # smoke run
"""

from __future__ import annotations

import argparse
import json
import math
import os
import resource
import statistics
import sys
import time
import warnings

MALLOC_ENV = {"MALLOC_MMAP_THRESHOLD_": str(16 * 1024**3), "MALLOC_TRIM_THRESHOLD_": str(64 * 1024**3)}
FULL_SIZES = [96, 768, 3000]
QUICK_SIZES = [96, 192]
MALLOC_MAX_ATOMS = 1500  # largest size run with MALLOC_ENV (see the module docstring)
DENSITY = 0.1  # atoms / Å^3


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", type=str, default=None, help="comma-separated atom counts (multiples of 3)")
    parser.add_argument("--quick", action="store_true", help="smoke run: 96 and 192 atoms, 1 repeat")
    parser.add_argument("--repeats", type=int, default=None, help="rounds per size (default 7, 3 from 2000 atoms)")
    parser.add_argument("--no-polar", action="store_true", help="skip PolarMACE")
    parser.add_argument("--variants", type=str, default=None,
                        help="comma-separated subset of the model variants (default: all)")
    parser.add_argument("--memory-budget-gb", type=float, default=18.0,
                        help="skip variants whose estimated peak memory exceeds this")
    parser.add_argument("--threads", type=int, default=None, help="torch intra-op threads")
    parser.add_argument("--clock", choices=("wall", "cpu", "user"), default="wall",
                        help="time reported: wall, CPU (user + system) or user CPU of this process")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--head-accuracy", type=float, default=1e-5,
                        help="LongRangeConfig accuracy of the heads (relative accuracy of their Coulomb / k-space sums)")
    parser.add_argument("--json", type=str, default=None, help="write raw times here")
    parser.add_argument("--no-malloc-env", action="store_true",
                        help="do not re-execute with MALLOC_* set (never done above 1500 atoms)")
    return parser.parse_args(argv)


def sizes(args: argparse.Namespace) -> list:
    if args.sizes:
        return [int(n) for n in args.sizes.split(",")]
    return QUICK_SIZES if args.quick else FULL_SIZES


ARGS = parse_args() if __name__ == "__main__" else None
if (ARGS is not None and not ARGS.no_malloc_env and max(sizes(ARGS)) <= MALLOC_MAX_ATOMS
        and any(os.environ.get(k) != v for k, v in MALLOC_ENV.items())):
    sys.stdout.flush()
    os.execve(sys.executable, [sys.executable, *sys.argv], dict(os.environ, **MALLOC_ENV))

import mace  # noqa: E402,F401  (before e3nn)
import numpy as np  # noqa: E402
import torch  # noqa: E402
from ase import Atoms  # noqa: E402
from e3nn import o3  # noqa: E402
from mace import data as mace_data  # noqa: E402
from mace import modules, tools  # noqa: E402
from mace.modules.utils import get_edge_vectors_and_lengths  # noqa: E402
from mace.tools import torch_geometric  # noqa: E402

import torchpme  # noqa: E402
from mace_lr.electrostatics.graph import GraphCoulomb  # noqa: E402
from mace_lr.heads import LongRangeConfig  # noqa: E402
from mace_lr.models import build_macelr  # noqa: E402

torch.set_default_dtype(torch.float64)
WATER = np.array([[0.0, 0.0, 0.0], [0.9572, 0.0, 0.0], [0.9572 * math.cos(1.8242), 0.9572 * math.sin(1.8242), 0.0]])


# ------------------------------------------------------------------------------ systems
def random_rotation(rng) -> np.ndarray:
    q, r = np.linalg.qr(rng.normal(size=(3, 3)))
    q = q * np.sign(np.diag(r))  # uniform (Haar) orthogonal matrix, then a proper rotation
    return q if np.linalg.det(q) > 0 else -q


def water_box(n_atoms: int, seed: int, min_distance: float = 1.5) -> Atoms:
    """N/3 H2O at 0.1 atoms/Å^3, periodic cube, no intermolecular pair below ``min_distance``."""
    n_mol = n_atoms // 3
    rng = np.random.default_rng(seed * 1_000_003 + n_atoms)
    length = (3 * n_mol / DENSITY) ** (1.0 / 3.0)
    per_side = math.ceil((n_mol / 4) ** (1.0 / 3.0) - 1e-9)  # fcc: 4 sites per cubic cell
    spacing = length / per_side
    grid = np.stack(np.meshgrid(*[np.arange(per_side)] * 3, indexing="ij"), -1).reshape(-1, 1, 3)
    basis = np.array([[0.0, 0.0, 0.0], [0.5, 0.5, 0.0], [0.5, 0.0, 0.5], [0.0, 0.5, 0.5]])
    grid = (grid + basis).reshape(-1, 3)
    sites = grid[rng.choice(len(grid), n_mol, replace=False)]
    placed = np.zeros((0, 3))
    for site in sites:
        oxygen = (site + 0.25 + rng.uniform(-0.05, 0.05, 3)) * spacing
        for _ in range(1000):
            molecule = oxygen + WATER @ random_rotation(rng).T
            diff = molecule[:, None, :] - placed[None, :, :]
            diff -= length * np.round(diff / length)
            if placed.shape[0] == 0 or np.sqrt((diff**2).sum(-1)).min() >= min_distance:
                break
        else:
            raise RuntimeError(f"could not place a water molecule at {n_atoms} atoms")
        placed = np.concatenate([placed, molecule])
    return Atoms("OHH" * n_mol, positions=placed, cell=[length] * 3, pbc=True)


def batch_dict(atoms: Atoms, atomic_numbers) -> dict:
    z_table = tools.AtomicNumberTable(list(atomic_numbers))
    config = mace_data.config_from_atoms(atoms)
    config.properties["total_charge"] = 0.0
    item = mace_data.AtomicData.from_config(config, z_table=z_table, cutoff=5.0, heads=["Default"])
    loader = torch_geometric.dataloader.DataLoader([item], batch_size=1, shuffle=False)
    return next(iter(loader)).to_dict()


# ------------------------------------------------------------------------------ models
def backbone_kwargs(avg_num_neighbors: float) -> dict:
    block = modules.interaction_classes["RealAgnosticResidualInteractionBlock"]
    return dict(
        r_max=5.0, num_bessel=8, num_polynomial_cutoff=5, max_ell=3, interaction_cls=block,
        interaction_cls_first=block, num_interactions=2, num_elements=2,
        hidden_irreps=o3.Irreps("64x0e+64x1o"), MLP_irreps=o3.Irreps("16x0e"),
        atomic_energies=np.array([-13.6, -2040.0]), avg_num_neighbors=avg_num_neighbors,
        atomic_numbers=[1, 8], correlation=3, gate=torch.nn.functional.silu,
        atomic_inter_scale=1.0, atomic_inter_shift=0.0,
    )


def build_models(avg_num_neighbors: float, seed: int, polar: bool, accuracy: float = 1e-5):
    """name -> model (eval mode, float64); PolarMACE's entry is a string when unavailable."""
    torch.manual_seed(seed)
    backbone = modules.ScaleShiftMACE(**backbone_kwargs(avg_num_neighbors)).double().eval()
    models = {"bare": backbone}
    variants = {"latent": ("latent",), "charges": ("charges",), "charges+latent": ("charges", "latent"),
                "qeq": ("qeq",), "lode": ("lode",), "ewald_mp": ("ewald_mp",)}
    for name, heads in variants.items():
        torch.manual_seed(seed + 1)  # same readout weights wherever a head repeats
        models[name] = build_macelr(backbone, LongRangeConfig(heads=heads, accuracy=accuracy), {1: 0.4, 8: -0.8}).eval()
    for method in ("ewald", "pme"):
        torch.manual_seed(seed + 1)
        models[f"latent[{method}]"] = build_macelr(backbone, LongRangeConfig(heads=("latent",), method=method,
                                                                             accuracy=accuracy)).eval()
    if polar:
        models["PolarMACE"] = build_polar(avg_num_neighbors, seed)
    return models


def build_polar(avg_num_neighbors: float, seed: int):
    torch.manual_seed(seed)
    try:  # needs graph-longrange 0.4.0 (0.4.3/0.4.4 raise a TypeError in PolarMACE)
        return modules.PolarMACE(**backbone_kwargs(avg_num_neighbors)).double().eval()
    except Exception as error:  # report, do not abort the run
        return f"n/a: PolarMACE could not be built ({type(error).__name__}: {error})"


def model_call(model, batch):
    return lambda: model(batch, compute_stress=False)["forces"]


def coulomb_call(method: str, batch, seed: int):
    """GraphCoulomb (as in the latent head) + backward to positions and charges."""
    coulomb = GraphCoulomb(width=1.0, cutoff=5.0, accuracy=1e-5, method=method)
    generator = torch.Generator().manual_seed(seed)
    n_atoms = batch["positions"].shape[0]
    charges = (0.3 * torch.randn(n_atoms, generator=generator)).requires_grad_(True)
    positions = batch["positions"].detach().clone().requires_grad_(True)
    cell, pbc = batch["cell"].view(-1, 3, 3), batch["pbc"].view(-1, 3)

    def run():
        _, lengths = get_edge_vectors_and_lengths(positions, batch["edge_index"], batch["shifts"])
        phi = coulomb(charges, positions, cell, pbc, batch["ptr"], batch["edge_index"], lengths.view(-1))
        energy = 0.5 * (charges * phi).sum()
        return torch.autograd.grad(energy, [positions, charges])
    return run


def charge_plan(n_atoms: int, box: float):
    """The k-space plan GraphCoulomb (width 1 Å, 1e-5) takes for a filled cubic box of side ``box`` Å."""
    from mace_lr.electrostatics.kspace import KSpacePlanner

    return KSpacePlanner(1e-5)(torch.eye(3, dtype=torch.float64) * box, n_atoms, math.sqrt(2.0), 1e6, 1, True, True)


def auto_method(n_atoms: int, box: float) -> str:
    return charge_plan(n_atoms, box).method


def nonlocal_gb(n_atoms: int, box: float, accuracy: float, name: str) -> float:
    """qeq / lode / ewald_mp: the memory estimate of the k-space layer's plan for their sum
    (GB): lode's 2 densities of width 1 Å (split by cost), ewald_mp's 16 channels (pure
    k-space at its finest width, 1 Å), qeq's charges (widths up to 1 Å, 2 right-hand sides)."""
    from mace_lr.electrostatics.kspace import KSpacePlanner

    planner = KSpacePlanner(accuracy)
    cell = torch.eye(3, dtype=torch.float64) * box
    if name == "ewald_mp":
        plan = planner(cell, n_atoms, 1.0, 1.0, 16, False, False)
    elif name == "lode":
        plan = planner(cell, n_atoms, 1.0, 1.0e6, 2, True, True)
    else:
        plan = planner(cell, n_atoms, math.sqrt(2.0), 1.0e6, 2, True, False)
    return plan.memory / 1e9


def estimated_gb(name: str, n_atoms: int, box: float, accuracy: float = 1e-5) -> float:
    """Peak GB: backbone ~2.5 MB/atom; each charge head's sum as the k-space planner estimates it."""
    if name.startswith("coulomb"):
        heads, method = 1, name[8:-1]
    else:
        heads = name.count("latent") + name.count("charges")
        method = name[7:-1] if "[" in name else auto_method(n_atoms, box)
    backbone = 0.0 if name.startswith("coulomb") else 2.5e-3 * n_atoms
    if name in ("qeq", "lode", "ewald_mp"):
        return backbone + nonlocal_gb(n_atoms, box, accuracy, name)
    del method  # the planner picks the cheaper method within its memory estimate
    return backbone + heads * charge_plan(n_atoms, box).memory / 1e9


# ------------------------------------------------------------------------------ timing
def busy_ticks() -> tuple[int, int]:
    """(busy ticks of the whole machine, ticks of this process)."""
    with open("/proc/stat") as handle:
        values = [int(v) for v in handle.readline().split()[1:9]]
    with open("/proc/self/stat") as handle:
        fields = handle.read().rsplit(")", 1)[1].split()
    return sum(values) - values[3] - values[4], int(fields[11]) + int(fields[12])


def clocks() -> dict:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return {"wall": time.perf_counter(), "cpu": usage.ru_utime + usage.ru_stime, "user": usage.ru_utime}


def time_calls(calls: dict, repeats: int) -> dict:
    """clock -> name -> seconds per call; one warm-up each, then rotating rounds."""
    for fn in calls.values():
        fn()
    names = list(calls)
    times = {clock: {name: [] for name in names} for clock in ("wall", "cpu", "user")}
    for r in range(repeats):
        for name in names[r % len(names):] + names[: r % len(names)]:
            start = clocks()
            calls[name]()
            for clock, value in clocks().items():
                times[clock][name].append(value - start[clock])
    return times


def run_size(n_atoms: int, args, repeats: int) -> dict:
    atoms = water_box(n_atoms, args.seed)
    batch = batch_dict(atoms, [1, 8])
    avg_neighbors = batch["edge_index"].shape[1] / n_atoms
    with warnings.catch_warnings():  # TorchScript annotation warnings from e3nn/mace
        warnings.simplefilter("ignore")
        models = build_models(avg_neighbors, args.seed, not args.no_polar, args.head_accuracy)
    wanted = set(args.variants.split(",")) | {"bare"} if args.variants else None
    calls = {name: model_call(m, batch) for name, m in models.items()
             if not isinstance(m, str) and (wanted is None or name in wanted)}
    for method in ("ewald", "pme"):
        if wanted is None or f"coulomb[{method}]" in wanted:
            calls[f"coulomb[{method}]"] = coulomb_call(method, batch, args.seed)
    for name in list(calls):
        estimate = estimated_gb(name, n_atoms, float(atoms.cell[0, 0]), args.head_accuracy)
        if estimate > args.memory_budget_gb:
            del calls[name]
            models[name] = f"skipped: memory ~{estimate:.0f} GB > budget {args.memory_budget_gb:g} GB"
    wall0, (busy0, own0) = time.perf_counter(), busy_ticks()
    times = time_calls(calls, repeats)
    wall, (busy1, own1) = time.perf_counter() - wall0, busy_ticks()
    others = max((busy1 - busy0) - (own1 - own0), 0) / os.sysconf("SC_CLK_TCK") / wall
    return {
        "N": n_atoms, "molecules": n_atoms // 3, "box_A": float(atoms.cell[0, 0]),
        "edges": int(batch["edge_index"].shape[1]), "auto_method": auto_method(n_atoms, float(atoms.cell[0, 0])),
        "others_cores": others, "wall_s": wall, **times,
        "skipped": {name: m for name, m in models.items() if isinstance(m, str)},
    }


# ------------------------------------------------------------------------------ output
MAIN_COLUMNS = ["bare", "latent", "charges", "charges+latent", "qeq", "lode", "ewald_mp", "PolarMACE"]
CLOCK = "wall"  # or "cpu", "user" (--clock)


def median_ms(row, name):
    values = row[CLOCK].get(name)
    return 1e3 * statistics.median(values) if values else None


def cell(row, name) -> str:
    t, base = median_ms(row, name), median_ms(row, "bare")
    if t is None:
        return "n/a"
    return f"{t:.1f}" if name == "bare" else f"{t:.1f} ({t / base:.2f}x)"


def print_tables(rows) -> None:
    print(f"\nMedian {CLOCK} time per energy+forces call, ms (ratio to the bare backbone):\n")
    print("| atoms (H2O) | edges | " + " | ".join(MAIN_COLUMNS) + " | others (cores) |")
    print("|---" * (len(MAIN_COLUMNS) + 3) + "|")
    for row in rows:
        cells = " | ".join(cell(row, name) for name in MAIN_COLUMNS)
        print(f"| {row['N']} ({row['molecules']}) | {row['edges']} | {cells} | {row['others_cores']:.2f} |")
    for row in rows:
        for name, reason in row["skipped"].items():
            print(f"\n{name} at {row['N']} atoms: {reason}")
    print("\nHead `latent` by Coulomb method; GraphCoulomb alone = call + backward, ms:\n")
    print("| atoms | box (Å) | auto picks | latent (auto) | latent, Ewald | latent, PME "
          "| GraphCoulomb Ewald | GraphCoulomb PME | head overhead (auto) - its Coulomb |")
    print("|---:|---:|---|---:|---:|---:|---:|---:|---:|")
    for row in rows:
        auto = row["auto_method"]
        parts = [median_ms(row, name) for name in ("latent", "bare", f"coulomb[{auto}]")]
        overhead = "n/a" if None in parts else f"{parts[0] - parts[1] - parts[2]:.1f}"
        coulomb = [median_ms(row, f"coulomb[{m}]") for m in ("ewald", "pme")]
        coulomb = ["n/a" if t is None else f"{t:.1f}" for t in coulomb]
        print(f"| {row['N']} | {row['box_A']:.2f} | {auto} | {cell(row, 'latent')} | {cell(row, 'latent[ewald]')} "
              f"| {cell(row, 'latent[pme]')} | {coulomb[0]} | {coulomb[1]} | {overhead} |")


def machine() -> dict:
    with open("/proc/cpuinfo") as handle:
        model = next((line.split(":", 1)[1].strip() for line in handle if line.startswith("model name")), "?")
    return {"cpu": model, "nproc": os.cpu_count(), "torch": torch.__version__, "threads": torch.get_num_threads(),
            "mace": getattr(mace, "__version__", "?"), "malloc_env": {k: os.environ.get(k) for k in MALLOC_ENV},
            "load_avg": os.getloadavg(), "date": time.strftime("%Y-%m-%d %H:%M:%S %Z")}


def main(args: argparse.Namespace) -> None:
    global CLOCK
    CLOCK = args.clock
    if args.threads:
        torch.set_num_threads(args.threads)
    print(json.dumps(machine()), flush=True)
    start, rows = time.perf_counter(), []
    for n_atoms in sizes(args):
        repeats = args.repeats or (1 if args.quick else 7 if n_atoms < 2000 else 3)
        row = run_size(n_atoms - n_atoms % 3, args, repeats)
        rows.append(row)
        print(f"{row['N']} atoms: {repeats} rounds, {row['wall_s']:.0f} s timed, others {row['others_cores']:.2f} "
              f"cores [{time.perf_counter() - start:.0f} s]", flush=True)
    print_tables(rows)
    print(f"\nload average after: {os.getloadavg()}; total {time.perf_counter() - start:.0f} s")
    if args.json:
        with open(args.json, "w") as handle:
            json.dump({"machine": machine(), "args": vars(args), "rows": rows}, handle, indent=1)


if __name__ == "__main__":
    main(ARGS)
