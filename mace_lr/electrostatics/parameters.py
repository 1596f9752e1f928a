"""Legacy torch-pme settings: the engine's parameter choice before the k-space layer.

Nothing in the package plans with this any more (see :mod:`.kspace`); it remains for
(1) the engine's point-dipole Ewald sum, which is torch-pme's ``CalculatorDipole``,
(2) ``Electrostatics(parameters=KSpaceParameters(...))`` from older scripts, mapped onto
a fixed k-space plan, (3) the torch-pme baselines of ``benchmarks/``, and (4) recovering the
accuracy of modules pickled before the layer (:func:`accuracy_of_legacy_wavelength`).

``accuracy`` is a dimensionless target for the RMS error of forces (and, in practice,
of the energy per atom), relative to the Coulomb scale of neighbouring charges,
``k_e <q^2> / a^2`` with ``a = (V/N)^(1/3)`` the mean interparticle distance.

We do not trust torch-pme's tuners blindly (see DESIGN.md section 4: ``tune_ewald``
underestimates its k-space error because ``EwaldCalculator`` keeps wave vectors only
up to ``pi / lr_wavelength``). The Ewald truncation errors are set from the Gaussian
tails directly; the PME mesh spacing is solved from torch-pme's own
:class:`~torchpme.tuning.pme.PMEErrorBounds` with a safety factor. Every setting is
checked in the tests against a converged reference and the Madelung constants.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torchpme.lib import get_ns_mesh
from torchpme.tuning.pme import PMEErrorBounds

#: Extra margin between the requested accuracy and the truncation target.
SAFETY_FACTOR = 0.1

#: torch-pme 0.5's PME k-space bound underestimates the RMS force error we measure
#: against a converged Ewald sum by 20-100x (1000 random +-1 ions, 4-6 nodes,
#: see tests/test_electrostatics_engine.py): we ask the bound for this much less.
PME_BOUND_CALIBRATION = 100.0

#: PME interpolation order (nodes per axis); 6 reaches 1e-6 on meshes 4x coarser than 4.
PME_INTERPOLATION_NODES = 6


@dataclass(frozen=True)
class KSpaceParameters:
    """Settings of one periodic Coulomb sum (lengths in Å).

    ``smearing``: Ewald splitting width sigma (Gaussian std); ``cutoff``: real-space
    cutoff; ``lr_wavelength``: the value passed to ``torchpme.EwaldCalculator`` (wave
    vectors up to pi / lr_wavelength are summed); ``mesh_spacing`` and
    ``interpolation_nodes``: PME mesh.
    """

    method: str
    smearing: float
    cutoff: float
    lr_wavelength: float = 0.0
    mesh_spacing: float = 0.0
    interpolation_nodes: int = 4


def _gaussian_tail_argument(tolerance: float) -> float:
    """x such that exp(-x^2 / 2) = tolerance."""
    return math.sqrt(2.0 * math.log(1.0 / tolerance))


def accuracy_of_legacy_wavelength(smearing: float, lr_wavelength: float) -> float:
    """The ``accuracy`` a module pickled before the k-space layer was built with: its Ewald
    wavelength was pi s / x with exp(-x^2 / 2) = :data:`SAFETY_FACTOR` accuracy (s: its Ewald
    width). Clipped to [1e-12, 0.5] so that the planner accepts it."""
    x = math.pi * smearing / lr_wavelength
    return min(max(math.exp(-0.5 * x * x) / SAFETY_FACTOR, 1e-12), 0.5)


def choose_parameters(
    method: str,
    positions: torch.Tensor,
    charges: torch.Tensor,
    cell: torch.Tensor,
    accuracy: float,
) -> KSpaceParameters:
    """Ewald or PME settings for one periodic structure at the requested ``accuracy``.

    Both Gaussian tails (real space, reciprocal space) are cut at
    ``SAFETY_FACTOR * accuracy``. Ewald: sigma balances real- and reciprocal-space
    cost, sigma ~ (V^2 / N)^(1/6), capped so that the real-space cutoff stays below
    half the smallest cell width (vesin is ~10x slower per pair beyond it).
    PME: sigma is the cheapest of a few candidates under :func:`pme_cost_model`; the
    mesh spacing is the largest one whose torch-pme error bound, calibrated by
    :data:`PME_BOUND_CALIBRATION`, meets the target.
    """
    if not 0.0 < accuracy < 1.0:
        raise ValueError(f"accuracy must be in (0, 1), got {accuracy}")
    n_atoms = max(int(positions.shape[0]), 1)
    c = cell.detach().to(torch.float64)
    volume = float(torch.abs(torch.linalg.det(c)))
    spacing = (volume / n_atoms) ** (1.0 / 3.0)
    tolerance = SAFETY_FACTOR * accuracy
    x = _gaussian_tail_argument(tolerance)
    half_width = 0.5 * _min_width(c)
    if method == "ewald":
        smearing = (volume**2 / (16.0 * math.pi**3 * n_atoms)) ** (1.0 / 6.0)
        smearing = min(smearing, 0.99 * half_width / x)
        return KSpaceParameters(
            method="ewald",
            smearing=smearing,
            cutoff=x * smearing,
            lr_wavelength=math.pi * smearing / x,
        )
    if method == "pme":
        best: tuple[float, KSpaceParameters] | None = None
        for factor in PME_SMEARING_FACTORS:
            smearing = factor * spacing
            params = KSpaceParameters(
                method="pme",
                smearing=smearing,
                cutoff=x * smearing,
                mesh_spacing=_pme_mesh_spacing(
                    positions, charges, cell, smearing, tolerance / PME_BOUND_CALIBRATION,
                    PME_INTERPOLATION_NODES,
                ),
                interpolation_nodes=PME_INTERPOLATION_NODES,
            )
            cost = pme_cost_model(params, c, n_atoms)
            if best is None or cost < best[0]:
                best = (cost, params)
        assert best is not None
        return best[1]
    raise ValueError(f"unknown periodic method {method!r}; use 'ewald' or 'pme'")


#: Candidate PME splitting widths, in units of the mean interparticle distance.
PME_SMEARING_FACTORS: tuple[float, ...] = (0.6, 0.75, 0.9, 1.1, 1.35, 1.65, 2.0)

#: Cost-model constants measured by benchmarks/electrostatics.py (2-core CPU, float64):
#: seconds per real-space pair within half the cell width, the slow-down of pairs
#: beyond it, and seconds per PME mesh point (256^3: 0.45 s, 512^3: 3.6 s).
SECONDS_PER_PAIR = 90e-9
LONG_CUTOFF_PENALTY = 10.0
SECONDS_PER_MESH_POINT = 27e-9


def pme_cost_model(params: KSpaceParameters, cell: torch.Tensor, n_atoms: int) -> float:
    """Estimated seconds of one PME energy+forces call with ``params``.

    Real-space pairs N/2 * rho * 4/3 pi r_c^3 plus the FFT mesh torch-pme will build
    (powers of two per axis, :func:`torchpme.lib.get_ns_mesh`).
    """
    volume = float(torch.abs(torch.linalg.det(cell)))
    pairs = 0.5 * n_atoms * (n_atoms / volume) * 4.0 / 3.0 * math.pi * params.cutoff**3
    pair_cost = SECONDS_PER_PAIR * pairs
    if params.cutoff > 0.5 * _min_width(cell):
        pair_cost *= LONG_CUTOFF_PENALTY
    mesh_points = float(torch.prod(get_ns_mesh(cell, params.mesh_spacing)))
    return pair_cost + SECONDS_PER_MESH_POINT * mesh_points


def _min_width(cell: torch.Tensor) -> float:
    """Smallest distance between opposite faces of the cell (Å)."""
    volume = torch.abs(torch.linalg.det(cell))
    areas = torch.stack([
        torch.linalg.norm(torch.linalg.cross(cell[1], cell[2])),
        torch.linalg.norm(torch.linalg.cross(cell[2], cell[0])),
        torch.linalg.norm(torch.linalg.cross(cell[0], cell[1])),
    ])
    return float((volume / areas).min())


def _pme_mesh_spacing(
    positions: torch.Tensor,
    charges: torch.Tensor,
    cell: torch.Tensor,
    smearing: float,
    tolerance: float,
    interpolation_nodes: int,
) -> float:
    """Largest mesh spacing (Å) whose PME k-space error bound is below the target."""
    q = charges.detach().to(torch.float64).reshape(-1, 1)
    if float((q**2).sum()) == 0.0:
        q = torch.ones_like(q)
    c = cell.detach().to(torch.float64)
    bounds = PMEErrorBounds(q, c, positions.detach().to(torch.float64))
    n_atoms = q.shape[0]
    volume = float(torch.abs(torch.linalg.det(c)))
    # target absolute RMS force error in torch-pme units (prefactor 1)
    target = tolerance * float((q**2).mean()) * (n_atoms / volume) ** (2.0 / 3.0)
    sigma = torch.tensor(smearing, dtype=torch.float64)
    nodes = torch.tensor(interpolation_nodes)
    low, high = 1e-3 * smearing, 4.0 * smearing
    for _ in range(30):  # bisection in log space: ~1e-8 relative resolution
        mid = math.sqrt(low * high)
        err = float(bounds.err_kspace(sigma, torch.tensor(mid, dtype=torch.float64), nodes))
        if err > target:
            high = mid
        else:
            low = mid
    return low


__all__ = ["KSpaceParameters", "accuracy_of_legacy_wavelength", "choose_parameters", "SAFETY_FACTOR"]
