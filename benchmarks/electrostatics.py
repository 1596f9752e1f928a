#!/usr/bin/env python
"""Benchmark of mace-lr's electrostatics engine against torch-pme called directly.

Systems: random neutral +-1 charges on a jittered simple-cubic lattice (density
``--density`` atoms/Å^3; every atom moves at most 0.2 lattice spacings from its site,
so no two atoms are closer than 0.6 spacings) in a cubic box. Energy + forces
(autograd) are timed for

* ours: ``Electrostatics(method=..., accuracy=...)(positions, charges, cell[None],
  pbc[None])["energy"]`` then ``torch.autograd.grad``. This includes the parameter
  choice (``choose_parameters``), the vesin neighbour list and all input checks;
* torch-pme: the same vesin half neighbour list (same cutoff), pair distances rebuilt
  in torch, ``torchpme.EwaldCalculator`` / ``PMECalculator`` with
  ``CoulombPotential(smearing)`` and *the parameters our engine chose*, energy
  ``k_e * sum(q * potential)`` and autograd forces (calculator built once, untimed);
* direct (open boundaries, same positions, pbc False): ours against torch-pme's
  real-space ``Calculator(CoulombPotential())`` over all N(N-1)/2 pairs.

The parameter choice is also timed on its own (``tune`` columns); it is *inside* the
``ours`` time. Each row: one untimed warm-up call of each path (heap growth, FFT
plans at a new size), then ``repeats`` calls of each path, alternating which goes
first; the median is reported (and, as a check on noise, the ratio of the minima). The ``others`` column is the CPU (in cores) used by *other* processes
during the row, from /proc/stat: when it is not ~0 the machine was shared and the
absolute times are inflated (the ratio, measured interleaved, suffers less).

Also reported: the accuracy reached at N = 1000 against two tight independent Ewald
references, fitted exponents t ~ N^p for N >= 1000, the N at which PME becomes
faster than Ewald, and with ``--sigma-scan`` our time for other splitting widths at
the same accuracy targets.

Memory: glibc returns large freed blocks to the kernel, so every big torch tensor is
page-faulted in again on every call (system time above user time). By default the
script re-executes itself with ``MALLOC_MMAP_THRESHOLD_`` and ``MALLOC_TRIM_THRESHOLD_``
set (see :data:`MALLOC_ENV`); ``--no-malloc-env`` runs with the environment as it is.

Usage::

    python benchmarks/electrostatics.py                 # full run (N up to 30,000)
    python benchmarks/electrostatics.py --quick         # smoke run (N up to 3,000)
    python benchmarks/electrostatics.py --max-n 10000 --dtype float32
    python benchmarks/electrostatics.py --sigma-scan-only   # splitting-width scan
"""

from __future__ import annotations

import argparse
import gc
import json
import math
import os
import platform
import subprocess
import sys
import threading
import time
import warnings

#: Environment set before re-executing (glibc malloc tunables, bytes): every block
#: below 16 GiB comes from the heap instead of a fresh mmap, and freed heap memory is
#: never trimmed (threshold above the machine's memory), so repeated calls reuse pages
#: instead of faulting them in again (glibc 2.36 accepts values above its 32 MiB
#: dynamic maximum when set this way). The process keeps its high-water mark of memory
#: (~18 GB from N = 5,000 on with the default sizes).
MALLOC_ENV = {
    "MALLOC_MMAP_THRESHOLD_": str(16 * 1024**3),
    "MALLOC_TRIM_THRESHOLD_": str(64 * 1024**3),
}

FULL_SIZES = [100, 200, 500, 1000, 1500, 2000, 3000, 5000, 10000, 20000, 30000]
QUICK_SIZES = [100, 300, 1000, 2000, 3000]
METHOD_ORDER = ("direct", "ewald", "pme")
#: Splitting-width scan: multipliers of our sigma, and the sizes they are timed at.
SCAN_SCALES = {"ewald": [0.7, 0.85, 1.0, 1.2, 1.4], "pme": [0.75, 1.0, 1.25, 1.5, 2.0]}
SCAN_SIZES = {"ewald": [1000, 2000, 3000, 10000], "pme": [1000, 3000, 5000, 10000, 20000, 30000]}


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="smoke run: N up to 3,000, 3 repeats")
    parser.add_argument("--max-n", type=int, default=None, help="largest N to run")
    parser.add_argument("--sizes", type=str, default=None, help="comma-separated N list")
    parser.add_argument("--methods", type=str, default="direct,ewald,pme")
    parser.add_argument("--dtype", choices=("float64", "float32"), default="float64")
    parser.add_argument("--accuracy", type=float, default=1e-6)
    parser.add_argument("--density", type=float, default=0.1, help="atoms per Å^3")
    parser.add_argument("--direct-max-n", type=int, default=10000,
                        help="largest N for the O(N^2) direct sum (default 10000)")
    parser.add_argument("--memory-budget-gb", type=float, default=18.0,
                        help="skip rows whose estimated peak memory exceeds this")
    parser.add_argument("--repeats", type=int, default=None,
                        help="timed calls per path and row (default: 5 up to N = 10,000, then 3)")
    parser.add_argument("--sigma-scan", action="store_true",
                        help="also time other splitting widths (same accuracy targets)")
    parser.add_argument("--sigma-scan-only", action="store_true",
                        help="only the splitting-width scan (and its accuracy check)")
    parser.add_argument("--no-accuracy", action="store_true",
                        help="skip the accuracy check at N = 1000")
    parser.add_argument("--threads", type=int, default=None, help="torch threads")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", type=str, default=None, help="write raw results here")
    parser.add_argument("--no-malloc-env", action="store_true",
                        help="do not re-execute with the glibc malloc tunables")
    return parser.parse_args(argv)


def maybe_reexec(args: argparse.Namespace) -> None:
    """Re-execute once with :data:`MALLOC_ENV` (glibc reads it at start-up only)."""
    if args.no_malloc_env or all(os.environ.get(k) == v for k, v in MALLOC_ENV.items()):
        return
    env = dict(os.environ, **MALLOC_ENV)
    sys.stdout.flush()
    os.execve(sys.executable, [sys.executable, *sys.argv], env)


ARGS = parse_args() if __name__ == "__main__" else None
if ARGS is not None:
    maybe_reexec(ARGS)

import numpy as np  # noqa: E402
import torch  # noqa: E402
import torchpme  # noqa: E402
import vesin  # noqa: E402

from mace_lr.electrostatics import (  # noqa: E402
    COULOMB_CONSTANT,
    PME_THRESHOLD,
    Electrostatics,
    KSpaceParameters,
    choose_parameters,
)
from mace_lr.electrostatics import parameters as _parameters  # noqa: E402


# ------------------------------------------------------------------------------ systems
def make_system(n_atoms: int, density: float, seed: int, dtype: torch.dtype):
    """Jittered simple-cubic lattice, N/2 charges +1 and N/2 charges -1, cubic box."""
    if n_atoms % 2:
        raise ValueError("N must be even for a neutral +-1 system")
    rng = np.random.default_rng(seed * 1_000_003 + n_atoms)
    length = (n_atoms / density) ** (1.0 / 3.0)
    per_side = math.ceil(n_atoms ** (1.0 / 3.0) - 1e-9)
    spacing = length / per_side
    grid = np.stack(np.meshgrid(*[np.arange(per_side)] * 3, indexing="ij"), -1).reshape(-1, 3)
    sites = grid[rng.choice(len(grid), n_atoms, replace=False)]
    positions = (sites + 0.5 + rng.uniform(-0.2, 0.2, size=(n_atoms, 3))) * spacing
    charges = np.repeat([1.0, -1.0], n_atoms // 2)
    rng.shuffle(charges)
    return (
        torch.tensor(positions, dtype=dtype),
        torch.tensor(charges, dtype=dtype),
        torch.eye(3, dtype=dtype) * length,
    )


# ------------------------------------------------------------------------------ timing
class Monitor:
    """Peak resident memory of this process (sampled) and CPU used by other processes.

    With :data:`MALLOC_ENV` freed memory stays in the process, so the peak is the
    high-water mark of the run so far, not the memory of the row alone.
    """

    def __init__(self, interval: float = 0.01) -> None:
        self.interval = interval
        self.peak = 0
        self._stop = threading.Event()
        self._page = os.sysconf("SC_PAGE_SIZE")
        self._tick = os.sysconf("SC_CLK_TCK")

    def _rss(self) -> int:
        with open("/proc/self/statm") as handle:
            return int(handle.read().split()[1]) * self._page

    @staticmethod
    def _busy_ticks() -> int:
        with open("/proc/stat") as handle:
            values = [int(v) for v in handle.readline().split()[1:9]]
        return sum(values) - values[3] - values[4]  # all but idle and iowait

    @staticmethod
    def _own_ticks() -> int:
        with open("/proc/self/stat") as handle:
            fields = handle.read().rsplit(")", 1)[1].split()
        return int(fields[11]) + int(fields[12])  # utime + stime, all threads

    def _run(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, self._rss())
            self._stop.wait(self.interval)

    def __enter__(self) -> "Monitor":
        self.peak = self._rss()
        self._start = (time.perf_counter(), self._busy_ticks(), self._own_ticks())
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, self._rss())
        wall = time.perf_counter() - self._start[0]
        others = (self._busy_ticks() - self._start[1]) - (self._own_ticks() - self._start[2])
        self.other_cores = max(others, 0) / self._tick / max(wall, 1e-9)

    @property
    def gb(self) -> float:
        return self.peak / 1024**3


def timed(fn):
    gc.collect()
    start = time.perf_counter()
    out = fn()
    return time.perf_counter() - start, out


def default_repeats(n_atoms: int) -> int:
    if n_atoms <= 10000:
        return 5
    return 3


# ------------------------------------------------------------------------------ paths
def ours_fn(method, positions, charges, cell, pbc, accuracy, parameters=None):
    """Our engine, energy + autograd forces (parameters chosen inside unless given)."""
    engine = Electrostatics(method=method, accuracy=accuracy, parameters=parameters)

    def run():
        pos = positions.detach().clone().requires_grad_(True)
        energy = engine(pos, charges, cell[None], pbc[None])["energy"].sum()
        (grad,) = torch.autograd.grad(energy, pos)
        return float(energy.detach()), -grad

    return run


def torchpme_fn(method, positions, charges, cell, params: KSpaceParameters | None):
    """torch-pme called directly with the given parameters (vesin half list)."""
    dtype = positions.dtype
    if method == "direct":
        calculator = torchpme.Calculator(torchpme.CoulombPotential())
    elif method == "ewald":
        calculator = torchpme.EwaldCalculator(
            torchpme.CoulombPotential(smearing=params.smearing),
            lr_wavelength=params.lr_wavelength,
        )
    else:
        calculator = torchpme.PMECalculator(
            torchpme.CoulombPotential(smearing=params.smearing),
            mesh_spacing=params.mesh_spacing,
            interpolation_nodes=params.interpolation_nodes,
        )
    calculator = calculator.to(dtype=dtype)
    q = charges.unsqueeze(-1)
    n_atoms = positions.shape[0]

    def run():
        pos = positions.detach().clone().requires_grad_(True)
        if method == "direct":
            pairs = torch.triu_indices(n_atoms, n_atoms, offset=1)
            distances = torch.linalg.norm(pos[pairs[1]] - pos[pairs[0]], dim=1)
            neighbor_indices = pairs.T
        else:
            nl = vesin.NeighborList(cutoff=float(params.cutoff), full_list=False)
            i, j, shifts = nl.compute(
                pos.detach().to(torch.float64).numpy(),
                cell.detach().to(torch.float64).numpy(),
                True,
                quantities="ijS",
            )
            i = torch.from_numpy(i.astype(np.int64))
            j = torch.from_numpy(j.astype(np.int64))
            shifts = torch.from_numpy(shifts.astype(np.int64)).to(dtype)
            distances = torch.linalg.norm(pos[j] - pos[i] + shifts @ cell, dim=1)
            neighbor_indices = torch.stack([i, j], dim=1)
        potential = calculator(
            charges=q,
            cell=cell,
            positions=pos,
            neighbor_indices=neighbor_indices,
            neighbor_distances=distances,
        )
        energy = COULOMB_CONSTANT * (q * potential).sum()
        (grad,) = torch.autograd.grad(energy, pos)
        return float(energy.detach()), -grad

    return run


# ------------------------------------------------------------------------------ parameters
def mesh_size(params: KSpaceParameters, cell: torch.Tensor) -> list[int]:
    """torch-pme's mesh (power of two >= 2 L / h + 1 per axis)."""
    lengths = torch.linalg.norm(cell.to(torch.float64), dim=1).tolist()
    return [int(2 ** math.ceil(math.log2(2 * length / params.mesh_spacing + 1))) for length in lengths]


def ewald_kvectors(params: KSpaceParameters, cell: torch.Tensor) -> list[int]:
    """torch-pme's Ewald k-grid (ceil(L / lr_wavelength) per axis)."""
    lengths = torch.linalg.norm(cell.to(torch.float64), dim=1).tolist()
    return [math.ceil(length / params.lr_wavelength) for length in lengths]


def estimated_gb(method, n_atoms, cell, params) -> float:
    """Rough peak memory of one energy + forces call (GB), calibrated on this machine."""
    if params is None:  # direct: ours holds ~10 [1024, N] blocks, torch-pme ~12 [P] arrays
        return 8 * 12 * n_atoms**2 / 2 / 1024**3
    density = n_atoms / float(torch.abs(torch.det(cell.to(torch.float64))))
    pairs = 0.5 * n_atoms * density * 4.0 / 3.0 * math.pi * params.cutoff**3
    real = 200 * pairs
    if method == "ewald":
        kspace = 14 * 8 * math.prod(ewald_kvectors(params, cell)) * n_atoms
    else:
        kspace = 12 * 8 * math.prod(mesh_size(params, cell))
    return (real + kspace) / 1024**3


def scaled_parameters(method, positions, charges, cell, accuracy, scale, nodes=None) -> KSpaceParameters:
    """Our choice with the splitting width multiplied by ``scale``, same error targets.

    Ewald: both Gaussian tails cut where :func:`choose_parameters` cuts them. PME: the
    mesh spacing solved as :func:`choose_parameters` does (same bound, same
    calibration), optionally with another interpolation order ``nodes``.
    """
    base = choose_parameters(method, positions, charges, cell, accuracy)
    tolerance = _parameters.SAFETY_FACTOR * accuracy
    x = _parameters._gaussian_tail_argument(tolerance)
    smearing = scale * base.smearing
    if method == "ewald":
        return KSpaceParameters("ewald", smearing, x * smearing, lr_wavelength=math.pi * smearing / x)
    nodes = nodes or base.interpolation_nodes
    calibration = getattr(_parameters, "PME_BOUND_CALIBRATION", 1.0)
    spacing = _parameters._pme_mesh_spacing(
        positions, charges, cell, smearing, tolerance / calibration, nodes)
    return KSpaceParameters("pme", smearing, x * smearing, mesh_spacing=spacing,
                            interpolation_nodes=nodes)


def scan_cases(method, positions, charges, cell, accuracy):
    """(label, parameters) of the splitting-width scan at one size.

    Fixed multipliers of our sigma, plus one targeted variant: Ewald with sigma cut so
    that the real-space cutoff stays below half the box (vesin is ~10x slower per pair
    beyond it), PME with the smallest sigma whose mesh is half ours per axis.
    """
    def scaled(scale):
        return scaled_parameters(method, positions, charges, cell, accuracy, scale)

    cases = [(f"{method} σ×{scale:g}", scaled(scale)) for scale in SCAN_SCALES[method]]
    base = choose_parameters(method, positions, charges, cell, accuracy)
    half_box = 0.5 * float(torch.linalg.norm(cell.to(torch.float64), dim=1).min())
    if method == "ewald" and base.cutoff > half_box:
        scale = 0.999 * half_box / base.cutoff
        cases.append((f"ewald rc<L/2 (σ×{scale:.2f})", scaled(scale)))
    if method == "pme":
        target = mesh_size(base, cell)[0] // 2
        low, high = 1.0, 4.0
        if mesh_size(scaled(high), cell)[0] <= target:
            for _ in range(12):
                mid = math.sqrt(low * high)
                low, high = (low, mid) if mesh_size(scaled(mid), cell)[0] <= target else (mid, high)
            cases.append((f"pme mesh/2 (σ×{high:.2f})", scaled(high)))
    return cases


def describe(params: KSpaceParameters | None, cell: torch.Tensor) -> str:
    if params is None:
        return "all pairs"
    text = f"σ={params.smearing:.2f} rc={params.cutoff:.1f}"
    if params.method == "ewald":
        return text + f" k={ewald_kvectors(params, cell)[0]}³"
    return text + f" mesh={mesh_size(params, cell)[0]}³ p={params.interpolation_nodes}"


# ------------------------------------------------------------------------------ rows
def run_row(method, n_atoms, args, dtype, repeats, parameters=None, label=None,
            warmup=True, baseline=True):
    positions, charges, cell = make_system(n_atoms, args.density, args.seed, dtype)
    periodic = method != "direct"
    pbc = torch.tensor([periodic] * 3)
    row = {"N": n_atoms, "method": label or method, "dtype": args.dtype}
    params = parameters
    tune_times = []
    if periodic and parameters is None:
        for _ in range(max(repeats, 3)):
            t, params = timed(lambda: choose_parameters(method, positions, charges, cell, args.accuracy))
            tune_times.append(t)
    row["tune_s"] = float(np.median(tune_times)) if tune_times else 0.0
    row["params"] = describe(params, cell)
    if params is not None:
        row["parameters"] = dict(params.__dict__)
    estimate = estimated_gb(method, n_atoms, cell, params)
    row["estimated_gb"] = estimate
    if estimate > args.memory_budget_gb:
        row["skipped"] = f"memory ~{estimate:.0f} GB > budget {args.memory_budget_gb:g} GB"
        return row
    paths = {"ours": ours_fn(method, positions, charges, cell, pbc, args.accuracy, parameters)}
    if baseline:
        paths["torchpme"] = torchpme_fn(method, positions, charges, cell, params)
    times = {name: [] for name in paths}
    outputs = {}
    with warnings.catch_warnings(), Monitor() as monitor:
        warnings.simplefilter("ignore")  # torch-pme's warnings on cutoffs
        if warmup:  # first call at a new size: heap growth, FFT plans (not timed)
            row["warmup_s"] = [timed(fn)[0] for fn in paths.values()]
        names = list(paths)
        for r in range(repeats):
            for name in (names[::-1] if r % 2 == 0 else names):  # torch-pme first on r=0
                t, outputs[name] = timed(paths[name])
                times[name].append(t)
    row["others_cores"] = monitor.other_cores
    row["peak_rss_gb"] = monitor.gb
    for name, values in times.items():
        row[f"{name}_s"] = float(np.median(values))
        row[f"{name}_all"] = values
    if baseline:
        row["ratio"] = row["ours_s"] / row["torchpme_s"]
        row["ratio_min"] = min(times["ours"]) / min(times["torchpme"])
        # same parameters -> same numbers (checks that the comparison is like for like)
        (e_ours, f_ours), (e_base, f_base) = outputs["ours"], outputs["torchpme"]
        scale = float(f_base.pow(2).sum(1).mean().sqrt())
        row["force_diff"] = float((f_ours - f_base).pow(2).sum(1).mean().sqrt()) / scale
        row["energy_diff"] = abs(e_ours - e_base) / abs(e_base)
    return row


TABLE_HEADER = (
    "| N | method | parameters (Å) | ours (s) | torch-pme (s) | ours / torch-pme "
    "| ratio of minima | tune (s) | tune / ours | RSS high-water (GB) | others (cores) "
    "| force diff |\n"
    "|---:|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|"
)


def format_row(row) -> str:
    n, method = row["N"], row["method"]
    if "skipped" in row:
        return f"| {n} | {method} | {row['params']} | skipped: {row['skipped']} | | | | | | | | |"
    tune = row["tune_s"]
    share = f"{100 * tune / row['ours_s']:.1f}%" if tune else "-"
    base = f"{row['torchpme_s']:.4f}" if "torchpme_s" in row else "-"
    ratio = f"{row['ratio']:.2f} | {row['ratio_min']:.2f}" if "ratio" in row else "- | -"
    diff = f"{row['force_diff']:.0e}" if "force_diff" in row else "-"
    return (
        f"| {n} | {method} | {row['params']} | {row['ours_s']:.4f} | {base} | {ratio} "
        f"| {tune:.4f} | {share} | {row['peak_rss_gb']:.1f} | {row['others_cores']:.2f} | {diff} |"
    )


# ------------------------------------------------------------------------------ accuracy
def reference(positions, charges, cell, fraction):
    """Converged Ewald: torch-pme directly, float64, sigma = fraction * L, tails exp(-32)."""
    x = 8.0
    smearing = fraction * float(cell[0, 0])
    params = KSpaceParameters("ewald", smearing, x * smearing, lr_wavelength=math.pi * smearing / x)
    energy, forces = torchpme_fn("ewald", positions, charges, cell, params)()
    return energy, forces, params


def rms(forces: torch.Tensor) -> float:
    return float(forces.to(torch.float64).pow(2).sum(1).mean().sqrt())


def accuracy_check(n_atoms, args, dtype, scan=False):
    positions, charges, cell = make_system(n_atoms, args.density, args.seed, torch.float64)
    pbc = torch.tensor([True] * 3)
    e_ref, f_ref, ref_params = reference(positions, charges, cell, 0.10)
    e_ref2, f_ref2, ref_params2 = reference(positions, charges, cell, 0.125)
    spacing = (float(torch.det(cell)) / n_atoms) ** (1 / 3)
    rms_force = rms(f_ref)
    coulomb_scale = COULOMB_CONSTANT * float((charges**2).mean()) / spacing**2
    energy_scale = COULOMB_CONSTANT / spacing * n_atoms
    pos, q, c = positions.to(dtype), charges.to(dtype), cell.to(dtype)
    cases = [(m, m, None) for m in ("ewald", "pme")]
    if scan:
        cases += [(m, label, params) for m in ("ewald", "pme")
                  for label, params in scan_cases(m, pos, q, c, args.accuracy) if "σ×1 " not in label + " "]
    rows = [{
        "method": "reference 2 (σ=L/8) vs reference 1 (σ=L/10)",
        "force_rms_rel": rms(f_ref2 - f_ref) / rms_force,
        "force_rms_coulomb": rms(f_ref2 - f_ref) / coulomb_scale,
        "energy_rel": abs(e_ref2 - e_ref) / energy_scale,
    }]
    for method, label, params in cases:
        energy, forces = ours_fn(method, pos, q, c, pbc, args.accuracy, params)()
        err = rms(forces.to(torch.float64) - f_ref)
        rows.append({
            "method": label,
            "force_rms_rel": err / rms_force,
            "force_rms_coulomb": err / coulomb_scale,
            "energy_rel": abs(energy - e_ref) / energy_scale,
        })
    return {
        "N": n_atoms,
        "rms_force": rms_force,
        "coulomb_scale": coulomb_scale,
        "reference": (
            f"torch-pme EwaldCalculator, float64, σ={ref_params.smearing:.2f} Å, "
            f"rc={ref_params.cutoff:.1f} Å, lr_wavelength={ref_params.lr_wavelength:.3f} Å "
            "(both Gaussian tails exp(-32))"
        ),
        "rows": rows,
    }


def print_accuracy(acc) -> None:
    print(f"\nAccuracy at N = {acc['N']}, reference: {acc['reference']}. RMS force "
          f"{acc['rms_force']:.3f} eV/Å; Coulomb scale k_e q²/a² = {acc['coulomb_scale']:.3f} eV/Å.")
    print("| method | RMS force error / RMS force | RMS force error / (k_e q²/a²) "
          "| energy error / (N k_e/a) |\n|---|---:|---:|---:|")
    for r in acc["rows"]:
        print(f"| {r['method']} | {r['force_rms_rel']:.1e} | {r['force_rms_coulomb']:.1e} "
              f"| {r['energy_rel']:.1e} |", flush=True)


# ------------------------------------------------------------------------------ analysis
def fit_exponent(rows, method, key, n_min=1000):
    points = [(r["N"], r[key]) for r in rows if r["method"] == method and key in r and r["N"] >= n_min]
    if len(points) < 2:
        return None
    slope, _ = np.polyfit(np.log([p[0] for p in points]), np.log([p[1] for p in points]), 1)
    return float(slope), int(min(p[0] for p in points)), int(max(p[0] for p in points))


def crossover(rows):
    """N from which ours-PME is faster than ours-Ewald (log-log interpolation)."""
    ewald = {r["N"]: r["ours_s"] for r in rows if r["method"] == "ewald" and "ours_s" in r}
    pme = {r["N"]: r["ours_s"] for r in rows if r["method"] == "pme" and "ours_s" in r}
    log_ratio = [(n, math.log(pme[n] / ewald[n])) for n in sorted(set(ewald) & set(pme))]
    crossings = []
    for (n0, r0), (n1, r1) in zip(log_ratio, log_ratio[1:]):
        if r0 > 0 >= r1:
            frac = r0 / (r0 - r1)
            crossings.append(math.exp(math.log(n0) + frac * (math.log(n1) - math.log(n0))))
    return crossings, log_ratio


def machine_description() -> dict:
    def git(*cmd):
        try:
            return subprocess.run(["git", *cmd], capture_output=True, text=True, check=True,
                                  cwd=os.path.dirname(os.path.abspath(__file__))).stdout.strip()
        except (OSError, subprocess.CalledProcessError):
            return "?"

    return {
        "platform": platform.platform(),
        "cpu": platform.processor() or "?",
        "python": platform.python_version(),
        "torch": torch.__version__,
        "torch_threads": torch.get_num_threads(),
        "torchpme": torchpme.__version__,
        "vesin": getattr(vesin, "__version__", "?"),
        "nproc": os.cpu_count(),
        "malloc_env": {k: os.environ.get(k) for k in MALLOC_ENV},
        "git_head": git("rev-parse", "--short", "HEAD"),
        "engine_dirty": git("status", "--porcelain", "--", "mace_lr/electrostatics") or "clean",
        "pme_threshold": PME_THRESHOLD,
        "date": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
        "command": " ".join(["python", *sys.argv]),
    }


def sigma_scan(args, dtype, max_n, start):
    print("\nSplitting-width scan (ours only; σ×1 is the current choice; same accuracy targets):")
    print(TABLE_HEADER, flush=True)
    rows = []
    for method in ("ewald", "pme"):
        for n_atoms in [n for n in SCAN_SIZES[method] if n <= max_n]:
            positions, charges, cell = make_system(n_atoms, args.density, args.seed, dtype)
            for label, params in scan_cases(method, positions, charges, cell, args.accuracy):
                repeats = args.repeats or (3 if n_atoms <= 3000 else 2 if n_atoms <= 10000 else 1)
                row = run_row(method, n_atoms, args, dtype, repeats, parameters=params,
                              label=label, baseline=False)
                rows.append(row)
                print(format_row(row), f"  [{time.perf_counter() - start:.0f} s]", flush=True)
    return rows


def main(args: argparse.Namespace) -> None:
    if args.threads:
        torch.set_num_threads(args.threads)
    dtype = getattr(torch, args.dtype)
    sizes = [int(s) for s in args.sizes.split(",")] if args.sizes else (
        QUICK_SIZES if args.quick else FULL_SIZES)
    if args.max_n:
        sizes = [n for n in sizes if n <= args.max_n]
    methods = [m for m in METHOD_ORDER if m in args.methods.split(",")]
    info = machine_description()
    print(json.dumps(info, indent=1), flush=True)
    start = time.perf_counter()
    results = {"machine": info, "args": vars(args)}

    for method in methods:  # warm-up (lazy initialisation), not reported
        run_row(method, 100, args, dtype, 1, warmup=False)

    if not args.sigma_scan_only:
        rows = []
        print(TABLE_HEADER, flush=True)
        for n_atoms in sizes:
            for method in methods:
                if method == "direct" and n_atoms > args.direct_max_n:
                    rows.append({"N": n_atoms, "method": "direct", "params": "all pairs",
                                 "skipped": f"direct capped at N <= {args.direct_max_n}"})
                    print(format_row(rows[-1]), flush=True)
                    continue
                repeats = args.repeats or (3 if args.quick else default_repeats(n_atoms))
                rows.append(run_row(method, n_atoms, args, dtype, repeats))
                print(format_row(rows[-1]), f"  [{time.perf_counter() - start:.0f} s]", flush=True)
        results["rows"] = rows

        print("\nScaling exponents t ~ N^p (least squares on log-log, N >= 1000):")
        exponents = {}
        for method in methods:
            for key in ("ours_s", "torchpme_s"):
                fit = fit_exponent(rows, method, key)
                if fit:
                    exponents[f"{method}/{key}"] = fit
                    print(f"  {method:6s} {key[:-2]:8s} p = {fit[0]:.2f}  (N = {fit[1]}..{fit[2]})")
        results["exponents"] = exponents

        crossings, log_ratio = crossover(rows)
        results["crossover"] = crossings
        results["pme_over_ewald"] = [(n, math.exp(r)) for n, r in log_ratio]
        if log_ratio:
            print("\nours PME time / ours Ewald time: "
                  + ", ".join(f"N={n}: {math.exp(r):.2f}" for n, r in log_ratio))
            print("PME becomes faster than Ewald at N ~ "
                  + (", ".join(f"{n:.0f}" for n in crossings) if crossings else "(no crossing)")
                  + f"  (engine PME_THRESHOLD = {PME_THRESHOLD})", flush=True)

    run_scan = args.sigma_scan or args.sigma_scan_only
    if not args.no_accuracy and {"ewald", "pme"} <= set(methods) and max(sizes) >= 1000:
        results["accuracy"] = accuracy_check(1000, args, dtype, scan=run_scan)
        print_accuracy(results["accuracy"])

    if run_scan:
        results["sigma_scan"] = sigma_scan(args, dtype, max(sizes), start)

    results["total_s"] = time.perf_counter() - start
    print(f"\nTotal benchmark time: {results['total_s']:.0f} s", flush=True)
    if args.json:
        with open(args.json, "w") as handle:
            json.dump(results, handle, indent=1)


if __name__ == "__main__":
    main(ARGS)
