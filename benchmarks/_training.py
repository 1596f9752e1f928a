"""Shared helpers of the accuracy benchmarks: data, training, evaluation, tables.

Training runs ``mace_lr_run_train`` in a subprocess (``OMP_NUM_THREADS`` etc. set to
``--threads``), so that each model is trained exactly as a user would train it; the log
goes to ``<workdir>/<name>.log``. Evaluation uses :class:`mace_lr.calculators.MACELRCalculator`
in float64 on held-out configurations. Units: eV, Å, e; tables in meV, meV/Å, e.
"""

from __future__ import annotations

import os
import platform
import subprocess
import time
from pathlib import Path
from typing import Dict, Iterable, List, Mapping, Sequence

import numpy as np

THREAD_VARIABLES = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS")

#: mace_lr_run_train key flags of the xTB data sets (``mace_lr_generate`` dimers, clusters, field, water).
XTB_KEYS = {"energy_key": "REF_energy", "forces_key": "REF_forces", "charges_key": "REF_charges",
            "dipole_key": "REF_dipole", "total_charge_key": "total_charge"}


def thread_env(threads: int) -> Dict[str, str]:
    """The current environment with every BLAS/OpenMP thread count set to ``threads``."""
    env = dict(os.environ)
    env.update({name: str(threads) for name in THREAD_VARIABLES})
    return env


def generate(kind: str, n_configs: int, seed: int, output: Path, *extra: str) -> float:
    """``mace_lr_generate kind -n n_configs --seed seed -o output extra...``; seconds taken."""
    start = time.perf_counter()
    cmd = ["mace_lr_generate", kind, "-n", str(n_configs), "--seed", str(seed), "-o", str(output), "-q", *extra]
    subprocess.run(cmd, check=True, env=thread_env(1))
    return time.perf_counter() - start


def split(configs: Sequence, test_fraction: float, seed: int) -> tuple[list, list]:
    """Random (train, test) split; at least one test configuration."""
    order = np.random.default_rng(seed).permutation(len(configs))
    n_test = max(1, int(round(test_fraction * len(configs))))
    return [configs[i] for i in order[n_test:]], [configs[i] for i in order[:n_test]]


def add_common_arguments(parser, *, n_configs: int, test_fraction: float, epochs: int, batch_size: int,
                         max_l: int, models: str) -> None:
    """The command-line options every accuracy benchmark shares (defaults differ per benchmark)."""
    parser.add_argument("--quick", action="store_true", help="tiny data, 1 epoch (smoke test)")
    parser.add_argument("--workdir", type=Path, default=None, help="data, models and logs (default: a temp folder)")
    parser.add_argument("--n-configs", type=int, default=n_configs)
    parser.add_argument("--test-fraction", type=float, default=test_fraction)
    parser.add_argument("--valid-fraction", type=float, default=0.1, help="of the training part, for MACE's validation")
    parser.add_argument("--epochs", type=int, default=epochs)
    parser.add_argument("--batch-size", type=int, default=batch_size)
    parser.add_argument("--lr", type=float, default=0.01)
    parser.add_argument("--channels", type=int, default=16)
    parser.add_argument("--max-L", type=int, default=max_l)
    parser.add_argument("--r-max", type=float, default=4.0)
    parser.add_argument("--dtype", default="float32", help="training dtype (evaluation is float64)")
    parser.add_argument("--models", default=models, help="comma-separated subset of the models")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1, help="threads per training process")
    parser.add_argument("--parallel", action="store_true", help="train the models at the same time")
    parser.add_argument("--reuse", action="store_true", help="evaluate models already trained in --workdir")


def add_loss_arguments(parser, *, start_swa: float, dipole_weight: float, dipole_help: str,
                       charge_width_help: str = "model charge Gaussian std, Å",
                       charges_help: str | None = None) -> None:
    """--energy-weight, --start-swa, --charge-width, --charges-weight, --dipole-weight of the xTB benchmarks."""
    parser.add_argument("--energy-weight", type=float, default=10.0, help="stage one (stage two: 1000)")
    parser.add_argument("--start-swa", type=float, default=start_swa, help="stage two from this fraction of the epochs")
    parser.add_argument("--charge-width", type=float, default=0.5, help=charge_width_help)
    parser.add_argument("--charges-weight", type=float, default=100.0, help=charges_help)
    parser.add_argument("--dipole-weight", type=float, default=dipole_weight, help=dipole_help)


def prepare_data(workdir: Path, kind: str, n_configs: int, seed: int, test_fraction: float,
                 *extra: str) -> tuple[list, list, Path, Path]:
    """Generate ``workdir/<kind>.xyz`` once, split it; (train, test, train file, test file)."""
    data = workdir / f"{kind.replace('-', '_')}.xyz"
    if not data.exists():
        seconds = generate(kind, n_configs, seed, data, *extra)
        print(f"generated {n_configs} {kind} configurations in {seconds:.0f} s {' '.join(extra)}")
    configs = read_configs(data)[:n_configs]
    train, test = split(configs, test_fraction, seed)
    return train, test, write_configs(workdir / "train.xyz", train), write_configs(workdir / "test.xyz", test)


def base_options(args, train_file: Path, test_file: Path, long_range: str, *, energy_weight: float,
                 start_swa_fraction: float, valid_batch_size: int, error_table: str, correlation: int = 2,
                 swa: bool = True, keys: Mapping[str, str] | None = None) -> Dict[str, object]:
    """``mace_lr_run_train`` options shared by the accuracy benchmarks (MACE backbone, EMA,
    stage two with energy weight 1000); ``args`` supplies the data-independent sizes
    (valid_fraction, channels, max_L, r_max, batch_size, epochs, lr, dtype, seed, quick)."""
    options: Dict[str, object] = {
        "train_file": train_file, "test_file": test_file, "valid_fraction": args.valid_fraction,
        **(keys or {"energy_key": "REF_energy", "forces_key": "REF_forces", "charges_key": "REF_charges"}),
        "model": "MACE", "num_channels": args.channels, "max_L": args.max_L, "num_interactions": 2,
        "correlation": correlation, "r_max": args.r_max, "E0s": "average",
        "batch_size": args.batch_size, "valid_batch_size": valid_batch_size, "max_num_epochs": args.epochs,
        "lr": args.lr, "energy_weight": energy_weight, "forces_weight": 100.0, "ema": True, "ema_decay": 0.99,
        "swa": swa and not args.quick, "start_swa": max(1, int(start_swa_fraction * args.epochs)),
        "swa_lr": args.lr / 10, "swa_energy_weight": 1000.0, "swa_forces_weight": 100.0,
        "error_table": error_table, "default_dtype": args.dtype, "device": "cpu", "seed": args.seed,
        "long_range": long_range,
    }
    return options


def mace_flags(options: Mapping[str, object]) -> List[str]:
    """``{"max_L": 0, "ema": True, "swa": False}`` -> ``["--max_L=0", "--ema"]``."""
    flags = []
    for key, value in options.items():
        if value is True:
            flags.append(f"--{key}")
        elif value is not False and value is not None:
            flags.append(f"--{key}={value}")
    return flags


def start_training(workdir: Path, name: str, options: Mapping[str, object], threads: int) -> subprocess.Popen:
    """Launch ``mace_lr_run_train --name name --work_dir workdir/name <options>``."""
    cmd = ["mace_lr_run_train", f"--name={name}", f"--work_dir={workdir / name}", *mace_flags(options)]
    log = open(workdir / f"{name}.log", "w")  # closed when the process object is collected
    process = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=thread_env(threads))
    process.started = time.perf_counter()  # type: ignore[attr-defined]
    process.name = name  # type: ignore[attr-defined]
    return process


def finish_training(process: subprocess.Popen, workdir: Path) -> tuple[Path, float]:
    """Wait for a training; (model path, wall seconds). RuntimeError with the log tail on failure."""
    name = process.name  # type: ignore[attr-defined]
    returncode = process.wait()
    seconds = time.perf_counter() - process.started  # type: ignore[attr-defined]
    log = (workdir / f"{name}.log").read_text()
    if returncode != 0:
        raise RuntimeError(f"training {name} failed (exit {returncode}); log tail:\n{log[-3000:]}")
    model = trained_model(workdir, name)
    if model is None:
        raise RuntimeError(f"training {name} wrote no model in {workdir / name}")
    (workdir / f"{name}.seconds").write_text(f"{seconds:.1f}\n")
    return model, seconds


def trained_model(workdir: Path, name: str) -> Path | None:
    """The final model of run ``name`` (stage two if there is one), or None."""
    folder = workdir / name
    for candidate in (folder / f"{name}_stagetwo.model", folder / f"{name}.model"):
        if candidate.exists():
            return candidate
    return None


def train_all(workdir: Path, runs: Mapping[str, Mapping[str, object]], threads: int, parallel: bool,
              reuse: bool = False) -> Dict[str, tuple[Path, float]]:
    """Train every ``name -> options`` run, one after the other or all at once.

    ``reuse``: keep a run's model if ``workdir`` already has it (from an earlier call).
    """
    results: Dict[str, tuple[Path, float]] = {}
    if reuse:
        for name in runs:
            model, seconds_file = trained_model(workdir, name), workdir / f"{name}.seconds"
            if model is not None:
                seconds = float(seconds_file.read_text()) if seconds_file.exists() else float("nan")
                results[name] = (model, seconds)
                print(f"reusing {model}")
        runs = {name: options for name, options in runs.items() if name not in results}
    if parallel:
        processes = [start_training(workdir, name, options, threads) for name, options in runs.items()]
        for process in processes:
            results[process.name] = finish_training(process, workdir)  # type: ignore[attr-defined]
        return results
    for name, options in runs.items():
        print(f"training {name} ...", flush=True)
        results[name] = finish_training(start_training(workdir, name, options, threads), workdir)
        print(f"  done in {results[name][1]:.0f} s", flush=True)
    return results


def train_models(args, workdir: Path, training_options, train_file: Path, test_file: Path) -> Dict[str, tuple[Path, float]]:
    """``training_options(args, train_file, test_file, name)`` for every name in ``--models``: print the
    settings, train (or reuse), report the wall time; name -> (model path, seconds)."""
    runs = {name: training_options(args, train_file, test_file, name) for name in args.models.split(",")}
    for name, options in runs.items():
        print_settings(name, options)
    start = time.perf_counter()
    trained = train_all(workdir, runs, args.threads, args.parallel, args.reuse)
    print(f"training wall time {time.perf_counter() - start:.0f} s")
    return trained


def predict(model_path: Path, configs: Iterable, threads: int = 1) -> List[Dict[str, np.ndarray]]:
    """Per configuration: energy (eV), forces [N, 3] (eV/Å), charges [N] (e) or None, dipole."""
    import torch

    import mace  # noqa: F401  (before e3nn)
    from mace_lr.calculators import MACELRCalculator

    torch.set_num_threads(threads)
    calc = MACELRCalculator(model_paths=str(model_path), default_dtype="float64")
    out = []
    for atoms in configs:
        probe = atoms.copy()
        probe.calc = calc
        energy = probe.get_potential_energy()
        out.append({
            "energy": energy,
            "forces": probe.get_forces(),
            "charges": calc.results.get("charges"),
            "dipole": calc.results.get("dipole"),
        })
    return out


def energy_force_errors(configs: Sequence, predictions: Sequence[Mapping]) -> Dict[str, np.ndarray]:
    """Signed energy errors per configuration (eV), per atom (eV), and force component errors (eV/Å)."""
    n_atoms = np.array([len(a) for a in configs], dtype=float)
    d_energy = np.array([p["energy"] - a.info["REF_energy"] for a, p in zip(configs, predictions)])
    d_forces = [p["forces"] - a.arrays["REF_forces"] for a, p in zip(configs, predictions)]
    return {"energy": d_energy, "energy_per_atom": d_energy / n_atoms, "forces": d_forces}


def mae(values) -> float:
    """Mean absolute value of an array or of a list of arrays."""
    if isinstance(values, list):
        values = np.concatenate([np.ravel(v) for v in values]) if values else np.zeros(0)
    return float(np.mean(np.abs(values))) if np.size(values) else float("nan")


def markdown_table(headers: Sequence[str], rows: Iterable[Sequence[object]]) -> str:
    """A markdown table; floats with 4 significant digits."""

    def cell(value: object) -> str:
        if isinstance(value, float):
            return "-" if np.isnan(value) else f"{value:.4g}"
        return str(value)

    lines = ["| " + " | ".join(headers) + " |", "|" + "|".join("---" if i == 0 else "---:" for i in range(len(headers))) + "|"]
    lines += ["| " + " | ".join(cell(v) for v in row) + " |" for row in rows]
    return "\n".join(lines)


def machine_line() -> str:
    """One line describing the machine and software (for RESULTS.md)."""
    import torch

    import mace

    return (f"{platform.machine()}, {os.cpu_count()} CPUs, Python {platform.python_version()}, "
            f"torch {torch.__version__}, mace-torch {mace.__version__}")


def print_settings(title: str, options: Mapping[str, object]) -> None:
    print(f"\n{title}: `mace_lr_run_train " + " ".join(mace_flags(options)) + "`")


def read_configs(path: Path) -> list:
    from ase.io import read

    return read(str(path), ":")


def write_configs(path: Path, configs: Sequence) -> Path:
    from ase.io import write

    write(str(path), list(configs), format="extxyz")
    return path
