"""Choice of Ewald / PME parameters for a requested accuracy.

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


def choose_parameters(
    method: str,
    positions: torch.Tensor,
    charges: torch.Tensor,
    cell: torch.Tensor,
    accuracy: float,
) -> KSpaceParameters:
    """Ewald or PME settings for one periodic structure at the requested ``accuracy``.

    Ewald: sigma balances real- and reciprocal-space cost, sigma ~ (V^2 / N)^(1/6);
    both Gaussian tails are cut at ``SAFETY_FACTOR * accuracy``.
    PME: sigma ~ 0.9 (V/N)^(1/3) keeps the real-space part short; the mesh spacing is
    the largest one whose torch-pme error bound, calibrated by
    :data:`PME_BOUND_CALIBRATION`, meets the target.
    """
    if not 0.0 < accuracy < 1.0:
        raise ValueError(f"accuracy must be in (0, 1), got {accuracy}")
    n_atoms = max(int(positions.shape[0]), 1)
    volume = float(torch.abs(torch.linalg.det(cell.detach().to(torch.float64))))
    spacing = (volume / n_atoms) ** (1.0 / 3.0)
    tolerance = SAFETY_FACTOR * accuracy
    x = _gaussian_tail_argument(tolerance)
    if method == "ewald":
        smearing = (volume**2 / (16.0 * math.pi**3 * n_atoms)) ** (1.0 / 6.0)
        smearing = max(smearing, 0.35 * spacing)
        k_cutoff = x / smearing
        return KSpaceParameters(
            method="ewald",
            smearing=smearing,
            cutoff=x * smearing,
            lr_wavelength=math.pi / k_cutoff,
        )
    if method == "pme":
        smearing = 0.9 * spacing
        return KSpaceParameters(
            method="pme",
            smearing=smearing,
            cutoff=x * smearing,
            mesh_spacing=_pme_mesh_spacing(
                positions, charges, cell, smearing, tolerance / PME_BOUND_CALIBRATION,
                PME_INTERPOLATION_NODES,
            ),
            interpolation_nodes=PME_INTERPOLATION_NODES,
        )
    raise ValueError(f"unknown periodic method {method!r}; use 'ewald' or 'pme'")


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
    for _ in range(60):
        mid = math.sqrt(low * high)
        err = float(bounds.err_kspace(sigma, torch.tensor(mid, dtype=torch.float64), nodes))
        if err > target:
            high = mid
        else:
            low = mid
    return low


__all__ = ["KSpaceParameters", "choose_parameters", "SAFETY_FACTOR"]
