#!/usr/bin/env python
"""Per-step time through i-PI against the same calculator called in-process.

Routes (each a driver process talking to a fresh ``i-pi`` over a UNIX socket; NVE, one
bead, 1 fs, properties every 10 steps, no trajectory; one torch thread everywhere):

* ``ours-lr``:   ``ipi_driver`` serving a MACE-LR model (``charges+latent`` heads,
                 float64) through ``MACELRCalculator``, extras dipole + charges;
* ``ours-mace``: ``ipi_driver`` serving a plain MACE model (the same ScaleShiftMACE
                 backbone without heads) through ``MACELRCalculator``, no extras;
* ``ipi-mace``:  i-PI's own client, ``i-pi-py_driver -m mace`` (its ``run_driver`` loop and
                 its ``ipi.pes._mace`` PES), on that plain MACE model; in-process
                 reference: mace-torch's ``MACECalculator``;
* ``ours-dummy``: ``ipi_driver`` serving an ASE calculator that costs nothing (zeros):
                 our client's and adapter's own cost plus i-PI's;
* ``ipi-dummy``: ``i-pi-py_driver -m dummy``: the same with i-PI's own client and its
                 zero-cost PES: i-PI's fixed cost per step (integrator, protocol, outputs).

Each driver process loads its model and makes a few untimed warm-up calls, then serves
i-PI for ``--steps`` steps (plus two dropped), stamping the start of every force call
(the time between consecutive stamps is one full MD step: the driver's work plus
i-PI's) and timing the calculator-level call inside it; it records the geometries i-PI
sent. Afterwards the same calculator is called in-process on exactly those geometries,
in the same order (energy, forces, stress): the in-process reference. Reported: median
step through i-PI, median in-process call, their ratio, and the added time = median over
steps of (step - calculator time inside that step), which is measured within each step
so that load changes on the shared machine cancel. Backbone: ``tests/model_helpers.tiny_backbone`` (8x0e+8x1o, 2 interactions,
r_max 4 Å). Systems: rocksalt NaCl supercells (a = 5.64 Å, rattled 0.05 Å).

``--lr-max-atoms`` can skip the MACE-LR route above a size (default: no limit). Before
the k-space layer (issue 17) the route had to stop at 800 atoms: at 3000 atoms the tiny
MACE-LR model was killed by the OOM killer at 21.5 GB; now 3000 atoms take 0.91 s per
step through i-PI against 0.44 s for the plain backbone (benchmarks/RESULTS.md).
A route that fails is reported in the table and the run goes on.

Usage::

    python benchmarks/speed_ipi.py                         # 96, 800, 3000 atoms; writes --out
    python benchmarks/speed_ipi.py --sizes 96 --steps 20   # quick
"""

from __future__ import annotations

import argparse
import importlib.machinery
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np
from ase.calculators.calculator import Calculator, all_changes

REPO = Path(__file__).resolve().parent.parent
SUPERCELLS = {96: (3, 2, 2), 800: (5, 5, 4), 3000: (5, 5, 15)}
#: per size: (timed MD steps through i-PI, untimed warm-up calls before the run)
DEFAULT_COUNTS = {96: (40, 5), 800: (15, 3), 3000: (20, 2)}
ROUTES = ("ours-lr", "ours-mace", "ipi-mace", "ours-dummy", "ipi-dummy")
SINGLE_THREAD = {"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1"}
DROP_STEPS = 2


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", default="96,800,3000", help="atom counts (96, 800, 3000)")
    parser.add_argument("--routes", default=",".join(ROUTES))
    parser.add_argument("--steps", type=int, default=None, help="MD steps through i-PI per run (default by size)")
    parser.add_argument("--warmup", type=int, default=None, help="untimed warm-up calls (default by size)")
    parser.add_argument("--lr-max-atoms", type=int, default=10**9,
                        help="skip the MACE-LR route above this size (default: no limit)")
    parser.add_argument("--out", default="/tmp/results_issue5.md", help="Markdown table")
    parser.add_argument("--json", default=None, help="raw timings")
    parser.add_argument("--role", default=None, help=argparse.SUPPRESS)  # internal: run one driver
    parser.add_argument("--workdir", default=None, help=argparse.SUPPRESS)
    return parser.parse_args(argv)


# ----------------------------------------------------------------------------- driver side


class Stamps:
    """Wraps the driver's force call: records when each call starts (perf_counter, s) and
    the geometries it was given (atomic units), for the in-process replay."""

    def __init__(self, inner, geometries):
        self.inner = inner
        self.geometries = geometries  # callable(*args) -> list of (cell h, positions), Bohr
        self.times: list[float] = []
        self.structures: list[tuple] = []

    def __call__(self, *args):
        self.times.append(time.perf_counter())
        self.structures.extend(self.geometries(*args))
        return self.inner(*args)


class Timer:
    """Wraps a calculator-level callable and records (start, duration) of each call (s)."""

    def __init__(self, inner):
        self.inner = inner
        self.durations: list[tuple[float, float]] = []

    def __call__(self, *args, **kwargs):
        began = time.perf_counter()
        try:
            return self.inner(*args, **kwargs)
        finally:
            self.durations.append((began, time.perf_counter() - began))


class ZeroCalculator(Calculator):
    """An ASE calculator that costs nothing (zero energy, forces, stress): the client's own cost."""

    implemented_properties = ["energy", "forces", "stress"]

    def calculate(self, atoms=None, properties=("energy",), system_changes=all_changes):
        super().calculate(atoms, properties, system_changes)
        n = len(self.atoms)
        self.results = {"energy": 0.0, "forces": np.zeros((n, 3)), "stress": np.zeros(6)}


def one_call(calculator, atoms) -> float:
    """ms for energy + forces + stress of ``atoms`` (a fresh calculation)."""
    calculator.reset()
    atoms.calc = calculator
    began = time.perf_counter()
    atoms.get_potential_energy()
    atoms.get_forces()
    atoms.get_stress()
    return 1000.0 * (time.perf_counter() - began)


def warm_up(calculator, template, count: int) -> None:
    for k in range(count):
        atoms = template.copy()
        atoms.rattle(0.02, seed=100 + k)
        one_call(calculator, atoms)


def replay(calculator, template, structures) -> list[float]:
    """In-process ms per call on the geometries i-PI sent, in the same order."""
    from ipi_driver.units import ATOMIC_UNITS

    bohr = ATOMIC_UNITS["length"]
    samples = []
    for cell, positions in structures:
        atoms = template.copy()
        atoms.set_cell(np.asarray(cell).T / bohr, scale_atoms=False)
        atoms.positions = np.asarray(positions).reshape(-1, 3) / bohr
        samples.append(one_call(calculator, atoms))
    return samples


def run_role(args) -> None:
    """One driver process: warm up, serve i-PI (stamping each step), replay in-process; JSON to workdir."""
    import torch

    torch.set_num_threads(1)
    warnings.filterwarnings("ignore")
    from ase.io import read

    work = Path(args.workdir)
    template = read(work / "init.xyz")
    prefix = str(work) + "/"
    reference = None
    if args.role.startswith("ours"):
        from mace_lr.calculators import MACELRCalculator

        from ipi_driver.client import connect, run_client
        from ipi_driver.potential import ASEPotential
        from ipi_driver.protocol import Channel

        if args.role == "ours-dummy":
            reference = ZeroCalculator()
        else:
            model = work.parent.parent / ("lr.model" if args.role == "ours-lr" else "mace.model")
            reference = MACELRCalculator(model_paths=str(model), device="cpu", default_dtype="float64")
            warm_up(reference, template, args.warmup)
        potential = ASEPotential(reference, template, ("dipole", "charges") if args.role == "ours-lr" else ())
        potential.preflight()
        stamps = Stamps(potential.compute_batch, lambda structures: [(s.cell.copy(), s.positions.copy()) for s in structures])
        potential.compute_batch = stamps  # the loop calls evaluator.compute_batch
        timer = Timer(reference.calculate)
        reference.calculate = timer  # the bare calculator inside each step
        (work / "ready").touch()
        sock = connect("drv", unix=True, sockets_prefix=prefix, timeout=120)
        run_client(Channel(sock), potential)
        sock.close()
        del reference.calculate
    else:
        script = importlib.machinery.SourceFileLoader("ipi_py_driver", shutil.which("i-pi-py_driver")).load_module()
        from ipi.pes import load_pes

        if args.role == "ipi-mace":
            from mace.calculators import MACECalculator

            model = str(work.parent.parent / "mace.model")
            reference = MACECalculator(model_paths=model, device="cpu", default_dtype="float64")
            warm_up(reference, template, args.warmup)
            pes = load_pes("mace", None)(template=str(work / "init.xyz"), model=model)
            from ipi_driver.units import ATOMIC_UNITS

            bohr = ATOMIC_UNITS["length"]
            for _ in range(max(args.warmup, 1)):  # its own warm-up, untimed
                pes(template.cell.array.T * bohr, template.positions * bohr)
            timer = Timer(pes.batched_calculator.compute_batched)
            pes.batched_calculator.compute_batched = timer  # its calculator-level call inside each step
        else:
            pes = load_pes("dummy", None)()
            timer = Timer(lambda: None)
        stamps = Stamps(pes, lambda cell, pos: [(np.array(cell), np.array(pos))])
        (work / "ready").touch()
        deadline = time.monotonic() + 120
        while not (work / "drv").exists():  # i-pi-py_driver does not retry connecting
            if time.monotonic() > deadline:
                raise SystemExit("i-PI socket did not appear")
            time.sleep(0.05)
        script.run_driver(unix=True, address="drv", driver=stamps, sockets_prefix=prefix)
    replayed = reference is not None and args.role != "ours-dummy"
    inproc = replay(reference, template, stamps.structures[DROP_STEPS:-1]) if replayed else []
    (work / "timings.json").write_text(json.dumps({"inproc_ms": inproc, "stamps": stamps.times, "calc": timer.durations}))


# ----------------------------------------------------------------------------- orchestration


def ipi_input(steps: int) -> str:
    return f"""<simulation verbosity='quiet' safe_stride='1000000'>
  <output prefix='sim'>
    <properties stride='10' filename='out'> [ step, time, conserved, potential, temperature ] </properties>
  </output>
  <total_steps> {steps} </total_steps>
  <prng><seed> 12345 </seed></prng>
  <ffsocket name='drv' mode='unix' pbc='false'>
    <address> drv </address>
    <exit_on_disconnect> true </exit_on_disconnect>
  </ffsocket>
  <system>
    <initialize nbeads='1'>
      <file mode='ase'> init.xyz </file>
      <velocities mode='thermal' units='kelvin'> 300 </velocities>
    </initialize>
    <forces><force forcefield='drv'/></forces>
    <motion mode='dynamics'>
      <dynamics mode='nve'><timestep units='femtosecond'> 1.0 </timestep></dynamics>
    </motion>
    <ensemble><temperature units='kelvin'> 300 </temperature></ensemble>
  </system>
</simulation>
"""


def build_inputs(root: Path, sizes: list[int]) -> None:
    sys.path.insert(0, str(REPO / "tests"))
    import torch
    from ase.build import bulk
    from ase.io import write
    from model_helpers import lr_model, tiny_backbone

    torch.save(tiny_backbone(), root / "mace.model")
    torch.save(lr_model(heads=("charges", "latent")), root / "lr.model")
    for size in sizes:
        atoms = bulk("NaCl", "rocksalt", a=5.64, cubic=True).repeat(SUPERCELLS[size])
        atoms.rattle(0.05, seed=size)
        folder = root / f"n{size}"
        folder.mkdir()
        write(folder / "init.xyz", atoms, format="extxyz")


class RouteFailed(RuntimeError):
    """One route at one size did not complete (reported in the table, the run goes on)."""


def counts(size: int, args) -> tuple[int, int]:
    steps, warmup = DEFAULT_COUNTS[size]
    return (args.steps or steps, warmup if args.warmup is None else args.warmup)


def run_route(root: Path, size: int, route: str, args) -> dict:
    work = root / f"n{size}" / route
    work.mkdir()
    shutil.copy(root / f"n{size}" / "init.xyz", work / "init.xyz")
    steps, warmup = counts(size, args)
    (work / "input.xml").write_text(ipi_input(steps + DROP_STEPS))
    env = {**os.environ, **SINGLE_THREAD}
    load_before = os.getloadavg()[0]
    driver = subprocess.Popen(
        [sys.executable, __file__, "--role", route, "--workdir", str(work), "--warmup", str(warmup)],
        env=env, stdout=open(work / "driver.log", "w"), stderr=subprocess.STDOUT,
    )
    # i-PI starts once the driver has loaded and warmed up its model
    while not (work / "ready").exists():
        if driver.poll() is not None:
            killed = " (killed: out of memory?)" if driver.returncode == -9 else ""
            raise RouteFailed(f"driver exited with {driver.returncode}{killed} before i-PI started:\n"
                              f"{_tail(work / 'driver.log')}")
        time.sleep(0.1)
    server = subprocess.Popen(["i-pi", "input.xml", "-S", str(work) + "/"], cwd=work, env=env,
                              stdout=open(work / "ipi.log", "w"), stderr=subprocess.STDOUT)
    for process in (server, driver):
        process.wait(timeout=3600)
    if driver.returncode != 0 or server.returncode != 0:
        raise RouteFailed(f"exit codes driver {driver.returncode}, i-PI {server.returncode}:\n"
                          f"{_tail(work / 'driver.log')}\n{_tail(work / 'ipi.log')}")
    data = json.loads((work / "timings.json").read_text())
    stamps = data["stamps"]
    steps, in_step, added = [], [], []
    for a, b in list(zip(stamps, stamps[1:]))[DROP_STEPS:]:
        calc = sum(d for t, d in data["calc"] if a <= t < b)
        steps.append(1000.0 * (b - a))
        in_step.append(1000.0 * calc)
        added.append(1000.0 * (b - a - calc))
    inproc = data["inproc_ms"]
    result = {
        "route": route, "atoms": size, "inproc_ms": inproc, "step_ms": steps, "calc_in_step_ms": in_step,
        "added_per_step_ms": added,
        "inproc_median": statistics.median(inproc) if inproc else 0.0,
        "step_median": statistics.median(steps),
        "calc_in_step_median": statistics.median(in_step),
        "added_ms": statistics.median(added),
        "added_quartiles": statistics.quantiles(added, n=4)[::2] if len(added) > 1 else [added[0], added[0]],
        "load": [load_before, os.getloadavg()[0]],
    }
    print(f"{route:10s} {size:5d} atoms: in-process {result['inproc_median']:9.2f} ms, through i-PI "
          f"{result['step_median']:9.2f} ms/step (calculator {result['calc_in_step_median']:9.2f}), "
          f"added {result['added_ms']:7.2f} ms", flush=True)
    return result


def _tail(path: Path, chars: int = 3000) -> str:
    return path.read_text()[-chars:] if path.exists() else f"(no {path.name})"


def markdown(results: list[dict], args, seconds: float) -> str:
    lines = [
        "## i-PI driver: time per MD step through i-PI vs in-process (issue 5)",
        "",
        "`benchmarks/speed_ipi.py` (see its docstring for the method). Machine: 2 vCPU AMD EPYC KVM guest, "
        "23 GiB RAM, shared with other sessions (load average before/after each row in the last column); "
        f"Python {platform.python_version()}, one torch/OpenMP thread in every process, float64. "
        f"NVE steps timed / warm-up calls per size: "
        + ", ".join(f"{n}: {'/'.join(str(c) for c in counts(n, args))}" for n in sorted({r['atoms'] for r in results}))
        + f" ({DROP_STEPS} more steps run and dropped). Medians. Total run time {seconds / 60:.1f} min.",
        "",
        "| atoms | route | in-process call (ms) | step through i-PI (ms) | calculator in step (ms) "
        "| added (ms) [quartiles] | step / in-process | step / calculator | load avg |",
        "|---:|---|---:|---:|---:|---:|---:|---:|---|",
    ]
    for r in results:
        if "skipped" in r:
            lines.append(f"| {r['atoms']} | {r['route']} | {r['skipped']} | | | | | | |")
            continue
        ratio = f"{r['step_median'] / r['inproc_median']:.3f}" if r["inproc_median"] > 0 else "-"
        with_model = not r["route"].endswith("dummy")
        slowdown = f"{r['step_median'] / r['calc_in_step_median']:.4f}" if with_model else "-"
        lines.append(
            f"| {r['atoms']} | {r['route']} | {r['inproc_median']:.2f} | {r['step_median']:.2f} | "
            f"{r['calc_in_step_median']:.2f} | {r['added_ms']:.2f} [{r['added_quartiles'][0]:.2f}, "
            f"{r['added_quartiles'][1]:.2f}] | {ratio} | {slowdown} | {r['load'][0]:.1f}/{r['load'][1]:.1f} |"
        )
    lines += [
        "",
        "Routes: `ours-lr` = mace_lr_ipi's client serving the MACE-LR model (extras dipole, charges); "
        "`ours-mace` = mace_lr_ipi's client serving the plain MACE backbone; `ipi-mace` = i-PI's "
        "`i-pi-py_driver -m mace` on the same plain model (in-process reference: mace-torch's "
        "MACECalculator); `ours-dummy` / `ipi-dummy` = our client with a zero-cost ASE calculator / "
        "`i-pi-py_driver -m dummy`: the clients' own cost plus i-PI's, with no model. "
        "In-process call: the calculator alone (energy, forces, stress), replayed in the driver process "
        "on the geometries i-PI sent, in order. Calculator in step: the same calculator-level call timed inside "
        "each MD step (ours: `calculate` of MACELRCalculator; i-PI's: `compute_batched` of its BatchedMACE). "
        "Added: median over steps of (step time - calculator time in that step), i.e. everything the "
        "socket route adds (client, protocol, i-PI's integrator and output); it is measured within each "
        "step, so load changes on the shared machine cancel. Step / in-process: ratio of the medians "
        "(the replay runs minutes after the steps, so on a loaded machine it scatters by more than the "
        "added time); step / calculator: the same ratio with the calculator timed inside the steps.",
    ]
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.role:
        run_role(args)
        return 0
    sizes = [int(s) for s in args.sizes.split(",")]
    unknown = [s for s in sizes if s not in SUPERCELLS]
    if unknown:
        raise SystemExit(f"sizes must be among {sorted(SUPERCELLS)}, got {unknown}")
    routes = [r for r in args.routes.split(",") if r]
    began = time.perf_counter()
    results = []
    with tempfile.TemporaryDirectory(prefix="ipi_bench_", dir="/tmp") as tmp:
        root = Path(tmp)
        build_inputs(root, sizes)
        for size in sizes:
            for route in routes:
                if route == "ours-lr" and size > args.lr_max_atoms:
                    results.append({"route": route, "atoms": size, "skipped": f"skipped (--lr-max-atoms {args.lr_max_atoms})"})
                    continue
                try:
                    results.append(run_route(root, size, route, args))
                except RouteFailed as error:
                    print(f"{route} at {size} atoms failed: {error}", flush=True)
                    results.append({"route": route, "atoms": size, "skipped": "failed: " + str(error).splitlines()[0]})
    text = markdown(results, args, time.perf_counter() - began)
    Path(args.out).write_text(text)
    print(text)
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
