"""Calibrate and check the k-space layer's error model (mace_lr.electrostatics.kspace).

1. Mesh error: PME on meshes of step h for several splitting widths sigma and densities,
   RMS force error against a converged Ewald sum (the engine's torch-pme Ewald at 1e-10),
   fitted to  A rho^(-1/6) sigma^(-1/2) (h / sigma)^P  (prints A and P).
2. Achieved vs requested accuracy of PeriodicCoulomb (methods ewald and pme; widths 0,
   0.5, 1.0 Å; water-like 0.1 and molten-salt 0.044 atoms/Å^3 and a slab with 50% vacuum;
   requested 1e-3 .. 1e-6): the ratio requested / achieved should lie in [1, ~3]. Errors are
   relative to <q^2> rho^(2/3) with rho the density of the occupied region (the slab's own).

Charges: random +-1 on a jittered lattice (no pair closer than ~0.6 a), float64.
Run: python benchmarks/kspace_calibration.py [--quick]
"""

from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path

import torch

from mace_lr.electrostatics import Electrostatics
from mace_lr.electrostatics.kspace import KSpacePlan, ReciprocalSum, coulomb_kernel, occupied_density, self_potential
from mace_lr.electrostatics.split_coulomb import PeriodicCoulomb

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
from helpers import jittered_ions  # noqa: E402  (the tests' lattice, shared)

torch.set_default_dtype(torch.float64)


def forces_of(potential_fn, positions, charges):
    pos = positions.clone().requires_grad_(True)
    phi = potential_fn(pos)
    energy = 0.5 * (charges * phi).sum()
    (grad,) = torch.autograd.grad(energy, pos)
    return -grad


def reference_forces(positions, charges, cell, pbc, width):
    engine = Electrostatics(method="ewald", smearing=width, accuracy=1e-10)
    def fn(pos):
        return engine(pos, charges, cell[None], pbc[None])["potential"] / 14.399645
    return forces_of(fn, positions, charges)


def relative_error(forces, reference, charges, density):
    scale = float((charges**2).mean()) * density ** (2.0 / 3.0)
    return float(((forces - reference) ** 2).sum(-1).mean().sqrt()) / scale


def mesh_fit(quick: bool) -> None:
    rows = []
    for density in (0.1, 0.044):
        positions, charges, cell = jittered_ions(6 if quick else 8, density, 1)
        pbc = torch.tensor([True, True, True])
        ref = reference_forces(positions, charges, cell, pbc, 0.0)
        length = float(cell[0, 0])
        for sigma in (1.0, 2.0, 3.0):
            for ratio in (0.25, 0.35, 0.5, 0.7):
                n_mesh = math.ceil(length / (ratio * sigma))
                from mace_lr.electrostatics.channel_mesh import fft_friendly_size
                n_mesh = fft_friendly_size(n_mesh)
                h = length / n_mesh
                rs = ReciprocalSum()
                coulomb = PeriodicCoulomb(1e-10, "ewald")
                def fn(pos):
                    plan = KSpacePlan("pme", sigma, 0.0, 0.0, [n_mesh] * 3, 0.0, 0.0)
                    k = rs.prepare(pos, cell, plan)
                    phi = rs.potential(charges.unsqueeze(-1), coulomb_kernel((k * k).sum(-1), sigma)).squeeze(-1)
                    phi = phi - self_potential(sigma) * charges
                    # exact real space: the engine's point-charge total minus its own k-space is not exposed;
                    # use PeriodicCoulomb's real-space term with a tight cutoff
                    return phi + coulomb._real_space(charges, pos, cell, pbc, torch.zeros_like(charges), sigma,
                                                     sigma * 8.0)
                err = relative_error(forces_of(fn, positions, charges), ref, charges, density)
                rows.append((density, sigma, h / sigma, err))
                print(f"rho {density:5.3f} sigma {sigma:.1f} h/sigma {h / sigma:.3f} err {err:.3e}", flush=True)
    # fit log err = log A - 1/6 log rho - 1/2 log sigma + P log(h/sigma)
    y = torch.tensor([math.log(e) + math.log(r) / 6 + 0.5 * math.log(s) for r, s, x, e in rows if e > 1e-11])
    x = torch.tensor([math.log(x) for r, s, x, e in rows if e > 1e-11])
    A = torch.stack([torch.ones_like(x), x], 1)
    sol = torch.linalg.lstsq(A, y.unsqueeze(-1)).solution.squeeze()
    resid = y - A @ sol
    print(f"fit: prefactor {math.exp(float(sol[0])):.3g}, exponent {float(sol[1]):.3f}, "
          f"max residual factor {math.exp(float(resid.abs().max())):.2f}")
    # a prefactor covering the worst point (the model must not under-estimate)
    print(f"prefactor covering every point: {math.exp(float(sol[0]) + float(resid.max())):.3g}")


def achieved(quick: bool) -> None:
    print("\n| cell | width Å | method | requested | achieved | requested/achieved | sigma Å | r_c Å | mesh / k_c |")
    print("|---|---|---|---|---|---|---|---|---|")
    cells = [("water 0.1", 0.1, 0.0), ("molten salt 0.044", 0.044, 0.0), ("slab 50% vacuum", 0.1, 1.0)]
    for name, density, vacuum in cells:
        positions, charges, cell = jittered_ions(6 if quick else 8, density, 2, vacuum)
        pbc = torch.tensor([True, True, vacuum == 0.0])
        for width in (0.0, 0.5, 1.0):
            ref = reference_forces(positions, charges, cell, pbc, width)
            widths = torch.full_like(charges, width)
            for method in ("ewald", "pme"):
                for accuracy in ((1e-3, 1e-5) if quick else (1e-3, 1e-4, 1e-5, 1e-6)):
                    module = PeriodicCoulomb(accuracy, method)
                    plan = module.plan(positions, cell, width, True)
                    forces = forces_of(lambda pos: module(charges, pos, cell, pbc, widths), positions, charges)
                    err = relative_error(forces, ref, charges, occupied_density(positions, cell))
                    grid = f"{plan.mesh}" if method == "pme" else f"{plan.kcut:.2f}"
                    print(f"| {name} | {width} | {method} | {accuracy:.0e} | {err:.2e} | {accuracy / err:.2f} | "
                          f"{plan.smearing:.2f} | {plan.cutoff:.2f} | {grid} |", flush=True)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--skip-fit", action="store_true")
    args = parser.parse_args()
    if not args.skip_fit:
        mesh_fit(args.quick)
    achieved(args.quick)
