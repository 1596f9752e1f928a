#!/usr/bin/env python
"""Cost of a MACE-LR model (backbone + one long-range head) against the bare backbone, at MD scale.

Energy + forces of one structure, one CPU thread, float64 (and float32 with
``--float32``), time and peak memory of every head against the same backbone alone.

Rows (each combination of):

* ``--sizes`` (default 3000,10000 atoms; water and slab round down to a multiple of 3,
  molten salt to a multiple of 2);
* ``--kinds``: ``water`` (O/H 1:2 at 0.1 atoms/Å^3, 3D-periodic), ``molten_salt``
  (Na/Cl 1:1 at 0.044 /Å^3, 3D-periodic), ``slab`` (O/H 1:2 at 0.1 /Å^3 in the slab, 50%
  vacuum along z, pbc T,T,F). Atoms sit on randomly chosen sites of the smallest simple
  cubic lattice with >= N sites (so that the size is exact), jittered by +-0.15 of the
  lattice step, hence no pair closer than 0.7 steps (1.45 Å for water at 3000 atoms,
  1.9 Å for the salt); elements drawn at random in the stated ratio;
* ``--rmax`` (4, 5 Å): the backbone's cutoff (the neighbour list and the heads' r_max);
* ``--backbones``: ``tiny`` (ScaleShiftMACE, 32x0e, max_ell 1, 2 interactions,
  correlation 2, 8 Bessel, MLP 16x0e: about the cheapest sensible MACE) and
  ``realistic`` (benchmarks/speed_model.py's ``backbone_kwargs``: 64x0e+64x1o,
  max_ell 3, 2 interactions, correlation 3, 8 Bessel, MLP 16x0e), both for H, O, Na, Cl,
  avg_num_neighbors from the structure's own graph;
* ``--widths`` (0.5, 1.0 Å): ``LongRangeConfig.charge_width`` (``--lr_charge_width``).
  It enters the heads ``charges``, ``latent`` and ``dipoles`` only; ``bare``, ``qeq``
  (own learnable width, at most 1 Å), ``lode`` (densities of s = 1 Å) and ``ewald_mp``
  (widths 1, 2, 4 Å) are run once per row group and printed with width ``-``;
* dtype float64, plus float32 with ``--float32`` (backbone, heads and batch built in
  that dtype).

Variants (``--heads``, default all): ``bare`` (the ScaleShiftMACE alone) and one MACELR
per head, built with ``build_macelr(backbone, LongRangeConfig(heads=(head,),
charge_width=width, accuracy=--accuracy))`` around a backbone with the same weights
(same seed): ``charges`` (fixed element offsets H 0.4, O -0.8, Na 0.8, Cl -0.8 e),
``latent``, ``qeq`` (solver ``auto``: dense up to 1000 atoms, conjugate gradients
above), ``dipoles`` (Wannier centroids: ions H +1, O +6, Na +1, Cl +7; one centroid of
-8 e on O and on Cl; needs l=1 features, so the ``tiny`` backbone is refused),
``lode`` (element densities) and ``ewald_mp`` (after layer 0, 16 channels). Random
weights: timings hardly depend on them (except qeq's number of conjugate-gradient
iterations). Eager PyTorch, as in speed_model.py (no TorchScript / torch.compile).

Measurement: each (row, variant) runs in a fresh process (``--child``) with one torch
thread (``OMP_NUM_THREADS=1``, ``torch.set_num_threads(1)``) and prints a JSON line.
The batch (MACE's data pipeline: neighbour list at the backbone's r_max) and the model
are built first, untimed (``setup_batch_s`` / ``setup_s`` in the JSON). Then one warm-up
call ``model(batch, compute_force=True)`` (energy + forces; during it the k-space plans
that the heads' ``KSpacePlanner`` modules return are recorded: the ``plan`` column),
then ``--repeats`` calls; time = their median. Clocks (``--clock``; all three go to
``--json``): ``wall``; ``cpu`` = user + system time of the process; ``user``. On a
loaded machine wall time includes waiting for a core; compare ``cpu`` there. Peak = the
process's highest resident set (VmHWM, reset after the build via /proc/self/clear_refs)
during the calls minus its resident set before the first call (GB = 1e9 bytes).

glibc malloc is left at its defaults: tensors above its mmap threshold are mapped and
page-faulted in again on every call, which shows up as system time (tiny backbone, 3000
atoms: 2.6 s system for 1.4 s user per call). ``--malloc-env`` runs the children with
speed_model.py's ``MALLOC_MMAP_THRESHOLD_`` / ``MALLOC_TRIM_THRESHOLD_`` instead: less
system time, but a larger peak (tiny, 3000 atoms: 2.1 -> 4.0 GB; speed_model.py saw the
untrimmed heap of the realistic backbone outgrow 23 GB at 3000 atoms).

Failures do not stop the run: a model that raises (e.g. a k-space plan above the memory
budget ``MACE_LR_MEMORY_BUDGET_GB``, a head that refuses a geometry) is reported as
``refused: <first line of the message>`` (traceback in ``--json``); a child killed by
``--timeout`` or a signal as ``killed: ...``. Memory guard: every child runs under
``RLIMIT_AS`` = ``--memory-gb`` GB (default 18; address space, which is somewhat above
the resident set); an allocation past it raises and reads ``out of memory (> N GB address
space): ...``. A variant is skipped without starting when the estimated peak of the
backbone alone (bytes per graph edge, measured with this script) exceeds ``--memory-gb``.
The heads' k-space sums are each capped by their planner's budget.

Usage::

    python benchmarks/speed_heads.py                                # all rows (hours)
    python benchmarks/speed_heads.py --sizes 3000 --kinds water --backbones tiny --heads charges,latent
    python benchmarks/speed_heads.py --float32 --json heads.json
    python benchmarks/speed_heads.py --clock cpu                    # loaded machine
    python benchmarks/speed_heads.py --quick                        # smoke run: 300 atoms
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import resource
import statistics
import subprocess
import sys
import time
import traceback

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if REPO not in sys.path:  # measure the checkout this script lives in (also when not pip-installed)
    sys.path.insert(0, REPO)

KINDS = {"water": (0.1, 0.0), "molten_salt": (0.044, 0.0), "slab": (0.1, 1.0)}  # atoms/Å^3, vacuum / slab
ELEMENTS = {"water": ((8, 1), (1, 2)), "molten_salt": ((11, 1), (17, 1)), "slab": ((8, 1), (1, 2))}  # (Z, share)
ATOMIC_NUMBERS = [1, 8, 11, 17]
ATOMIC_ENERGIES = [-13.6, -2040.0, -4420.0, -12500.0]
HEADS = ("charges", "latent", "qeq", "dipoles", "lode", "ewald_mp")
WIDTH_HEADS = ("charges", "latent", "dipoles")  # heads that use LongRangeConfig.charge_width
ELEMENT_CHARGES = {1: 0.4, 8: -0.8, 11: 0.8, 17: -0.8}
WANNIER_IONS = ((1, 1.0), (8, 6.0), (11, 1.0), (17, 7.0))
WANNIER_CENTROIDS = ((8, -8.0), (17, -8.0))
MALLOC_ENV = {"MALLOC_MMAP_THRESHOLD_": str(16 * 1024**3), "MALLOC_TRIM_THRESHOLD_": str(64 * 1024**3)}
JITTER = 0.15  # of the lattice step, each way
#: Backbone peak (energy + forces) per graph edge, bytes, float64, default malloc; measured with
#: this script (tiny: 17 kB at 300 atoms, 12.8 kB at 3000; realistic: 109-151 kB at 300 atoms,
#: fixed costs included) and rounded. Only for the skip estimate (half in float32).
BYTES_PER_EDGE = {"tiny": 1.4e4, "realistic": 1.1e5}

FULL = {"sizes": "3000,10000", "kinds": "water,molten_salt,slab", "widths": "0.5,1.0", "rmax": "4,5",
        "backbones": "tiny,realistic", "heads": ",".join(HEADS), "repeats": 3}
QUICK = {"sizes": "300", "kinds": "water", "widths": "1.0", "rmax": "5", "backbones": "tiny",
         "heads": "charges,lode", "repeats": 1}


# ------------------------------------------------------------------------------ systems
def n_atoms_of(n: int, kind: str) -> int:
    step = sum(share for _, share in ELEMENTS[kind])
    return n - n % step


def structure(n: int, kind: str, seed: int = 0):
    """ASE Atoms: ``n`` atoms on random sites of a jittered simple cubic lattice (module docstring)."""
    import numpy as np
    from ase import Atoms

    n = n_atoms_of(n, kind)
    density, vacuum = KINDS[kind]
    rng = np.random.default_rng(seed * 1_000_003 + n)
    n_side = math.ceil(n ** (1.0 / 3.0) - 1e-9)
    length = (n / density) ** (1.0 / 3.0)
    step = length / n_side
    sites = np.stack(np.meshgrid(*[np.arange(n_side)] * 3, indexing="ij"), -1).reshape(-1, 3)
    sites = sites[rng.choice(len(sites), n, replace=False)]
    positions = (sites + 0.5 + rng.uniform(-JITTER, JITTER, sites.shape)) * step
    positions[:, 2] += 0.5 * vacuum * length
    total = sum(share for _, share in ELEMENTS[kind])
    numbers = np.concatenate([np.full(n * share // total, z) for z, share in ELEMENTS[kind]])
    rng.shuffle(numbers)
    cell = [length, length, length * (1.0 + vacuum)]
    return Atoms(numbers=numbers, positions=positions, cell=cell, pbc=[True, True, vacuum == 0.0])


def batch_dict(atoms, r_max: float) -> dict:
    from mace import data as mace_data
    from mace import tools
    from mace.tools import torch_geometric

    config = mace_data.config_from_atoms(atoms)
    config.properties["total_charge"] = 0.0
    item = mace_data.AtomicData.from_config(config, z_table=tools.AtomicNumberTable(ATOMIC_NUMBERS), cutoff=r_max,
                                            heads=["Default"])
    loader = torch_geometric.dataloader.DataLoader([item], batch_size=1, shuffle=False)
    return next(iter(loader)).to_dict()


def estimated_edges(n: int, kind: str, r_max: float) -> float:
    return n * KINDS[kind][0] * 4.0 / 3.0 * math.pi * r_max**3


# ------------------------------------------------------------------------------ models
def backbone_kwargs(name: str, r_max: float, avg_num_neighbors: float) -> dict:
    import numpy as np
    import torch
    from e3nn import o3
    from mace import modules

    block = modules.interaction_classes["RealAgnosticResidualInteractionBlock"]
    common = dict(
        r_max=r_max, num_bessel=8, num_polynomial_cutoff=5, interaction_cls=block, interaction_cls_first=block,
        num_interactions=2, num_elements=len(ATOMIC_NUMBERS), MLP_irreps=o3.Irreps("16x0e"),
        atomic_energies=np.array(ATOMIC_ENERGIES), avg_num_neighbors=avg_num_neighbors,
        atomic_numbers=ATOMIC_NUMBERS, gate=torch.nn.functional.silu, atomic_inter_scale=1.0,
        atomic_inter_shift=0.0,
    )
    if name == "tiny":
        return dict(common, hidden_irreps=o3.Irreps("32x0e"), max_ell=1, correlation=2)
    if name == "realistic":  # benchmarks/speed_model.py's backbone_kwargs
        return dict(common, hidden_irreps=o3.Irreps("64x0e+64x1o"), max_ell=3, correlation=3)
    raise ValueError(f"unknown backbone {name!r}; use tiny or realistic")


def build_model(args, avg_num_neighbors: float, dtype):
    import torch
    from mace import modules

    from mace_lr.heads import LongRangeConfig
    from mace_lr.models import build_macelr

    torch.manual_seed(args.seed)  # the same backbone weights in every variant
    backbone = modules.ScaleShiftMACE(**backbone_kwargs(args.backbone, args.r_max, avg_num_neighbors))
    backbone = backbone.to(dtype).eval()
    if args.variant == "bare":
        return backbone
    torch.manual_seed(args.seed + 1)
    config = LongRangeConfig(heads=(args.variant,), charge_width=args.width, accuracy=args.accuracy,
                             wannier_ion_charges=WANNIER_IONS if args.variant == "dipoles" else (),
                             wannier_centroid_charges=WANNIER_CENTROIDS if args.variant == "dipoles" else ())
    return build_macelr(backbone, config, ELEMENT_CHARGES).eval()


def plan_text(plan) -> str:
    head = f"{plan.method} sigma={plan.smearing:.2f}"
    if plan.cutoff > 0.0:
        head += f" rc={plan.cutoff:.1f}"
    return head + (" mesh=" + "x".join(str(m) for m in plan.mesh) if plan.method == "pme" else f" kc={plan.kcut:.2f}")


# ------------------------------------------------------------------------------ child
def memory_status() -> dict:
    """VmRSS / VmHWM of this process, bytes."""
    values = {}
    with open("/proc/self/status") as handle:
        for line in handle:
            if line.startswith(("VmRSS:", "VmHWM:")):
                values[line.split(":")[0]] = int(line.split()[1]) * 1024
    return values


def reset_peak() -> bool:
    try:
        with open("/proc/self/clear_refs", "w") as handle:
            handle.write("5")
        return True
    except OSError:
        return False


def child(args: argparse.Namespace) -> None:
    """Build, time and measure one variant on one row; prints ``RESULT {json}``."""
    limit = int(args.memory_gb * 1e9)
    resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
    out: dict = {}
    try:
        import warnings

        import mace  # noqa: F401  (before e3nn)
        import torch

        torch.set_num_threads(1)
        dtype = torch.float32 if args.dtype == "float32" else torch.float64
        torch.set_default_dtype(dtype)
        start = time.perf_counter()
        atoms = structure(args.n, args.kind, args.seed)
        batch = batch_dict(atoms, args.r_max)
        n = len(atoms)
        edges = int(batch["edge_index"].shape[1])
        out.update(atoms=n, edges=edges, setup_batch_s=time.perf_counter() - start)
        with warnings.catch_warnings():  # TorchScript annotation warnings from e3nn / mace
            warnings.simplefilter("ignore")
            model = build_model(args, edges / n, dtype)
        out["setup_s"] = time.perf_counter() - start

        from mace_lr.electrostatics.kspace import KSpacePlanner

        plans: list = []
        hooks = [m.register_forward_hook(lambda _m, _i, plan: plans.append(plan))
                 for m in model.modules() if isinstance(m, KSpacePlanner)]

        def call():
            return model(batch, compute_force=True)["forces"]

        import gc

        gc.collect()
        exact = reset_peak()
        before = memory_status()["VmRSS"] if exact else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
        forces = call()
        for hook in hooks:
            hook.remove()
        if forces is None or not bool(torch.isfinite(forces).all()):
            raise RuntimeError("forces are missing or not finite")
        del forces
        walls, users, systems = [], [], []
        for _ in range(args.repeats):
            usage, wall = resource.getrusage(resource.RUSAGE_SELF), time.perf_counter()
            call()
            walls.append(time.perf_counter() - wall)
            usage_after = resource.getrusage(resource.RUSAGE_SELF)
            users.append(usage_after.ru_utime - usage.ru_utime)
            systems.append(usage_after.ru_stime - usage.ru_stime)
        after = memory_status()["VmHWM"] if exact else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
        unique = list(dict.fromkeys(plan_text(p) for p in plans))
        out.update(seconds=statistics.median(walls), user_seconds=statistics.median(users),
                   cpu_seconds=statistics.median([u + s for u, s in zip(users, systems)]), walls=walls,
                   users=users, systems=systems, peak_gb=(after - before) / 1e9, process_peak_gb=after / 1e9,
                   plan="; ".join(unique[:3]) + ("; ..." if len(unique) > 3 else ""))
    except BaseException as error:  # noqa: BLE001  (reported, not raised: the run goes on)
        message = (str(error).strip().splitlines() or [type(error).__name__])[0][:200]
        oom = isinstance(error, MemoryError) or "can't allocate memory" in str(error)
        if oom:
            out["oom"] = f"out of memory (> {args.memory_gb:g} GB address space): {message}"
        else:
            out["refused"] = message
        out["error_type"] = type(error).__name__
        out["traceback"] = traceback.format_exc()[-4000:]
        traceback.print_exc()
    print("RESULT " + json.dumps(out), flush=True)


# ------------------------------------------------------------------------------ parent
def run_child(row: dict, variant: str, width: float, args) -> dict:
    estimate = BYTES_PER_EDGE[row["backbone"]] * estimated_edges(row["n"], row["kind"], row["r_max"]) / 1e9
    estimate *= 0.5 if row["dtype"] == "float32" else 1.0
    if estimate > args.memory_gb:
        return {"skipped": f"backbone alone ~{estimate:.0f} GB > --memory-gb {args.memory_gb:g}"}
    command = [sys.executable, os.path.abspath(__file__), "--child", "--n", str(row["n"]), "--kind", row["kind"],
               "--width", str(width), "--r-max", str(row["r_max"]), "--backbone", row["backbone"],
               "--dtype", row["dtype"], "--variant", variant, "--repeats", str(args.repeats),
               "--accuracy", str(args.accuracy), "--seed", str(args.seed), "--memory-gb", str(args.memory_gb)]
    env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", **(MALLOC_ENV if args.malloc_env else {}))
    started = time.perf_counter()
    try:
        done = subprocess.run(command, capture_output=True, text=True, env=env, timeout=args.timeout)
    except subprocess.TimeoutExpired:
        return {"killed": f"timeout after {args.timeout:g} s"}
    elapsed = time.perf_counter() - started
    for line in done.stdout.splitlines():
        if line.startswith("RESULT "):
            return dict(json.loads(line[7:]), child_s=elapsed)
    tail = (done.stderr or done.stdout).strip().splitlines()[-1:] or ["no output"]
    if done.returncode < 0:
        import signal

        name = signal.Signals(-done.returncode).name
        hint = " (likely out of memory)" if name in ("SIGKILL", "SIGABRT", "SIGSEGV") else ""
        return {"killed": f"{name}{hint} after {elapsed:.0f} s: {tail[0][:160]}"}
    return {"killed": f"exit {done.returncode} after {elapsed:.0f} s: {tail[0][:160]}"}


def machine() -> str:
    import torch

    model = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as handle:
            model = next((line.split(":", 1)[1].strip() for line in handle if line.startswith("model name")), model)
    except OSError:
        pass
    memory = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 1e9
    here = os.path.dirname(os.path.abspath(__file__))
    try:
        commit = subprocess.run(["git", "-C", here, "rev-parse", "--short", "HEAD"], capture_output=True,
                                text=True).stdout.strip()
        dirty = subprocess.run(["git", "-C", here, "status", "--porcelain", "--untracked-files=no"],
                               capture_output=True, text=True).stdout.strip()
        commit += " (+ local changes)" if dirty else ""
    except OSError:
        commit = "?"
    try:
        from importlib.metadata import version

        versions = ", ".join(f"{p} {version(p)}" for p in ("mace-torch", "torch-pme", "vesin-torch"))
    except Exception:  # noqa: BLE001
        versions = ""
    return (f"machine: {model}, {os.cpu_count()} cores, {memory:.0f} GB, one torch thread per process; python "
            f"{platform.python_version()}, torch {torch.__version__}, {versions}; code {commit}; load average "
            f"{' '.join(f'{x:.2f}' for x in os.getloadavg())}; {time.strftime('%Y-%m-%d %H:%M %Z')}")


def cell_text(result: dict, bare: dict | None, clock: str) -> str:
    if "seconds" not in result:
        kind = next((k for k in ("refused", "oom", "killed", "skipped") if k in result), "failed")
        text = result[kind] if kind == "oom" else f"{kind}: {result.get(kind, result)}"
        return f"{text} | | | | |"
    key = {"wall": "seconds", "cpu": "cpu_seconds", "user": "user_seconds"}[clock]
    ok = bare is not None and key in bare
    ratio = f"{result[key] / bare[key]:.2f}" if ok else "-"
    peak_ratio = f"{result['peak_gb'] / bare['peak_gb']:.2f}" if ok and bare["peak_gb"] > 0 else "-"
    return f"{result[key]:.3f} | {ratio} | {result['peak_gb']:.2f} | {peak_ratio} | {result.get('plan') or '-'} |"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", help=f"atom counts (default {FULL['sizes']})")
    parser.add_argument("--kinds", help=f"default {FULL['kinds']}")
    parser.add_argument("--widths", help=f"charge widths, Å (default {FULL['widths']})")
    parser.add_argument("--rmax", help=f"backbone cutoffs, Å (default {FULL['rmax']})")
    parser.add_argument("--backbones", help=f"default {FULL['backbones']}")
    parser.add_argument("--heads", help=f"default {FULL['heads']}")
    parser.add_argument("--float32", action="store_true", help="also run every row in float32")
    parser.add_argument("--repeats", type=int, help="timed calls after the warm-up (default 3)")
    parser.add_argument("--accuracy", type=float, default=1e-5, help="LongRangeConfig.accuracy")
    parser.add_argument("--clock", choices=("wall", "cpu", "user"), default="wall",
                        help="time printed in the table: wall, CPU (user + system) or user CPU of the process")
    parser.add_argument("--malloc-env", action="store_true",
                        help="run children with glibc's MALLOC_MMAP_THRESHOLD_ / MALLOC_TRIM_THRESHOLD_ raised")
    parser.add_argument("--timeout", type=float, default=3600.0, help="seconds per child process")
    parser.add_argument("--memory-gb", type=float, default=18.0, help="address-space limit of each child")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--quick", action="store_true", help="smoke run: " + json.dumps(QUICK))
    parser.add_argument("--json", default=None, help="write all results here")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--n", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--kind", help=argparse.SUPPRESS)
    parser.add_argument("--width", type=float, default=1.0, help=argparse.SUPPRESS)
    parser.add_argument("--r-max", type=float, help=argparse.SUPPRESS)
    parser.add_argument("--backbone", help=argparse.SUPPRESS)
    parser.add_argument("--dtype", default="float64", help=argparse.SUPPRESS)
    parser.add_argument("--variant", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args)
        return
    for key, value in (QUICK if args.quick else FULL).items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    heads = [h for h in args.heads.split(",") if h]
    unknown = [h for h in heads + args.backbones.split(",") + args.kinds.split(",")
               if h not in HEADS + ("tiny", "realistic") + tuple(KINDS)]
    if unknown:
        parser.error(f"unknown head / backbone / kind: {', '.join(unknown)}")
    dtypes = ["float64", "float32"] if args.float32 else ["float64"]
    description = machine()
    print(description, flush=True)
    print(f"energy + forces, median of {args.repeats} calls after a warm-up, {args.clock} clock; accuracy "
          f"{args.accuracy:g}; memory limit {args.memory_gb:g} GB per process; glibc malloc "
          + ("with " + " ".join(f"{k}={v}" for k, v in MALLOC_ENV.items()) if args.malloc_env else "defaults"))
    print("\n| atoms | kind | r_max Å | backbone | dtype | edges | variant | width Å | s | / bare | GB | / bare GB "
          "| plan |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|---|")
    results = []
    for n in [int(s) for s in args.sizes.split(",")]:
        for kind in args.kinds.split(","):
            for r_max in [float(r) for r in args.rmax.split(",")]:
                for backbone in args.backbones.split(","):
                    for dtype in dtypes:
                        row = {"n": n, "kind": kind, "r_max": r_max, "backbone": backbone, "dtype": dtype}
                        bare = None
                        jobs = [("bare", None)] + [(h, None) for h in heads if h not in WIDTH_HEADS] + [
                            (h, float(w)) for w in args.widths.split(",") for h in heads if h in WIDTH_HEADS]
                        for variant, width in jobs:
                            result = run_child(row, variant, 1.0 if width is None else width, args)
                            if variant == "bare":
                                bare = result
                            results.append(dict(row, variant=variant, width=width, result=result))
                            shown = "-" if width is None else f"{width:g}"
                            print(f"| {n_atoms_of(n, kind)} | {kind} | {r_max:g} | {backbone} | {dtype} | "
                                  f"{result.get('edges', '-')} | {variant} | {shown} | "
                                  + cell_text(result, bare, args.clock), flush=True)
                            if args.json:
                                with open(args.json + ".tmp", "w") as handle:
                                    json.dump({"machine": description, "args": vars(args), "rows": results}, handle,
                                              indent=1)
                                os.replace(args.json + ".tmp", args.json)


if __name__ == "__main__":
    main()
