"""Charge equilibration (QEq, as in 4G-HDNNP): the Coulomb operator and the linear solve.

Energy of the charges q [N] (e) of one structure, with electronegativities chi [N] (V =
eV/e), hardnesses J [N] (eV/e^2) and Gaussian charge widths s [N] (std, Å):

    E(q) = sum_i chi_i q_i + 1/2 sum_i J_i q_i^2 + 1/2 q^T C q

``C`` (V/e) is the Coulomb matrix of the Gaussian charges, all periodic images included:
``k_e erf(r / sqrt(2 (s_i^2 + s_j^2))) / r`` between different sites and
``C_ii = k_e / (sqrt(pi) s_i)`` on the diagonal (each Gaussian's self-energy, the r -> 0
limit of the pair kernel). ``C`` is then the energy matrix of a continuous charge
density, hence positive definite, and so is ``A = C + diag(J)`` for J >= 0. The
minimum under ``sum_i q_i = Q`` solves ``A q = -chi + mu 1`` (mu: the chemical
potential, eV/e): with ``x = A^-1 (-chi)`` and ``y = A^-1 1``, ``q = x + mu y`` and
``mu = (Q - sum x) / sum y``.

Solvers (per structure):

* ``dense``: builds ``A`` and solves both right-hand sides with one Cholesky
  factorisation; differentiable (training, Born charges), O(N^3) time, O(N^2) memory.
* ``iterative``: Jacobi-preconditioned conjugate gradients on the same two right-hand
  sides; each step is one matrix-vector product ``C p``: Ewald (PME above
  ``pme_threshold`` atoms, on the FFT-friendly mesh of :mod:`.channel_mesh`) for periodic
  cells, with the phase factors (Ewald) or the mesh interpolation weights (PME) computed
  once per solve, a row-blocked direct sum in open
  boundaries (its pair kernel kept across the solve while N^2 doubles fit in
  ``cache_max_bytes``). Not differentiated: the energy is stationary in q, so forces and stress
  taken with q held fixed are exact (the ``qeq`` head does this); Born charges use
  the adjoint solve of :meth:`GaussianCoulombOperator.charge_response_surrogate`.

Periodic sums split as in :mod:`mace_lr.electrostatics.graph`: torch-pme's Ewald (or PME
on the mesh of :mod:`.channel_mesh`, with torch-pme's corrections) with splitting width ``sigma = cutoff / x`` (``exp(-x^2/2) = 0.1 accuracy``) plus the
short-range remainder on the structure's own pair list (all pairs within ``cutoff``).
The remainder ends at the cutoff only if every pair width ``sqrt(s_i^2 + s_j^2)`` is at
most ``sigma``; :attr:`GaussianCoulombOperator.periodic_max_width` (= sigma / sqrt 2)
is therefore the largest width allowed in periodic structures. A charged periodic cell
gets torch-pme's neutralising background (consistently in ``C``).

:func:`equilibrate_charges` is the standalone, eager API for users who bring their own
chi, J and s; the ``qeq`` head (:mod:`mace_lr.heads.qeq`) uses the same operator and
solvers inside TorchScript.
"""

from __future__ import annotations

import math
from typing import Dict, List, Optional, Tuple

import torch
import torchpme

from .channel_mesh import ChannelKernelMesh, channel_mesh_shape
from .ewald_tables import ewald_kvectors, ewald_phases
from .parameters import EWALD_MAX_WORK, PME_INTERPOLATION_NODES, _reference_pme_spacing, SAFETY_FACTOR, _gaussian_tail_argument, ewald_work
from .units import COULOMB_CONSTANT

SOLVERS = ("auto", "dense", "iterative")

#: Atoms per structure up to which ``solver="auto"`` uses the dense solver (see benchmarks).
DENSE_MAX_ATOMS = 1000

_INV_SQRT_PI = 1.0 / math.sqrt(math.pi)


def dense_equilibration(matrix: torch.Tensor, chi: torch.Tensor, total_charge: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
    """(q [N] e, mu [] eV/e) minimising chi.q + 1/2 q^T A q under sum q = Q.

    ``matrix`` [N, N]: A = C + diag(J) (V/e, symmetric positive definite); ``chi`` [N] V;
    ``total_charge`` [] e. Cholesky with two right-hand sides (LU where the factorisation
    fails: a coarse k-space accuracy can make A slightly indefinite); differentiable.
    """
    rhs = torch.stack([-chi, torch.ones_like(chi)], dim=1)
    factor, info = torch.linalg.cholesky_ex(matrix)
    if int(info) == 0:
        solution = torch.cholesky_solve(rhs, factor)
    else:  # a coarse k-space truncation (accuracy ~1e-3) can leave A slightly indefinite: LU instead
        solution = torch.linalg.solve(matrix, rhs)
    x = solution[:, 0]
    y = solution[:, 1]
    mu = (total_charge - x.sum()) / y.sum()
    return x + mu * y, mu


def _direct_kernel_rows(positions: torch.Tensor, widths: torch.Tensor, start: int, stop: int) -> torch.Tensor:
    """erf(r_ij / w_ij) / r_ij [stop - start, N] for rows i in [start, stop), 0 on i = j (Å^-1)."""
    n = positions.shape[0]
    diff = positions[start:stop].unsqueeze(1) - positions.unsqueeze(0)
    squared = (diff * diff).sum(-1)
    rows = torch.arange(start, stop, device=positions.device)
    self_pair = rows.unsqueeze(1) == torch.arange(n, device=positions.device).unsqueeze(0)
    distances = torch.sqrt(torch.where(self_pair, torch.ones_like(squared), squared))
    pair_width = torch.sqrt(2.0 * (widths[start:stop].unsqueeze(1) ** 2 + widths.unsqueeze(0) ** 2))
    return torch.where(self_pair, torch.zeros_like(squared), torch.erf(distances / pair_width) / distances)


def _blocked_direct(positions: torch.Tensor, widths: torch.Tensor, charges: torch.Tensor, block: int) -> torch.Tensor:
    """sum_j erf(r_ij / w_ij) / r_ij q_jc over j != i, rows in blocks (Å^-1 e); charges [N, C]."""
    n = positions.shape[0]
    out: List[torch.Tensor] = []
    for start in range(0, n, block):
        out.append(_direct_kernel_rows(positions, widths, start, min(start + block, n)) @ charges)
    return torch.cat(out, dim=0)


def _direct_kernel(positions: torch.Tensor, widths: torch.Tensor, block: int) -> torch.Tensor:
    """The whole pair kernel [N, N] of :func:`_blocked_direct` (Å^-1), built in row blocks."""
    n = positions.shape[0]
    rows: List[torch.Tensor] = []
    for start in range(0, n, block):
        rows.append(_direct_kernel_rows(positions, widths, start, min(start + block, n)))
    return torch.cat(rows, dim=0)


class GaussianCoulombOperator(torch.nn.Module):
    """The Coulomb matrix C (V/e) of Gaussian charges with per-atom widths; compilable.

    Args:
        cutoff: real-space cutoff (Å); the pair list given to each call must hold every
            pair within it (both directions for ``edge_index``).
        accuracy: relative accuracy of the periodic sums (as :class:`.Electrostatics`).
        method: ``auto`` (Ewald up to ``pme_threshold`` atoms and
            :data:`~.parameters.EWALD_MAX_WORK` (k-vector x (atom + channel)) pairs, PME above),
            ``ewald``, ``pme``.
        pme_threshold: atoms per periodic structure above which ``auto`` uses PME.
        block: rows per block of the open-boundary direct sum (bounds its memory).
        cache_max_bytes: largest table (bytes) kept across the products of one CG solve:
            Ewald phase factors (larger ones make CG use PME, see :meth:`_prepare_kspace`) or
            the open-boundary pair kernel (larger ones are recomputed per product, in blocks).

    All methods act on one structure: positions [N, 3] Å, widths [N] Å (> 0), cell
    [3, 3] Å (rows are lattice vectors), pbc [3] bool, edge_index [2, E] (sender,
    receiver; local indices), edge_lengths [E] Å.
    """

    def __init__(self, cutoff: float, accuracy: float = 1e-6, method: str = "auto",
                 pme_threshold: int = 3000, block: int = 2048, cache_max_bytes: float = 2.0e9) -> None:
        super().__init__()
        if cutoff <= 0.0:
            raise ValueError(f"cutoff must be > 0 Å, got {cutoff}")
        if not 0.0 < accuracy < 1.0:
            raise ValueError(f"accuracy must be in (0, 1), got {accuracy}")
        if method not in ("auto", "ewald", "pme"):
            raise ValueError(f"method {method!r} unknown; use auto, ewald or pme")
        self.cutoff = float(cutoff)
        self.accuracy = float(accuracy)
        self.method = method
        self.pme_threshold = int(pme_threshold)
        self.ewald_max_work = EWALD_MAX_WORK
        self.block = int(block)
        self.cache_max_bytes = float(cache_max_bytes)
        self.coulomb_constant = COULOMB_CONSTANT
        self.inv_sqrt_pi = _INV_SQRT_PI
        x = _gaussian_tail_argument(SAFETY_FACTOR * accuracy)
        self.smearing = self.cutoff / x
        self.periodic_max_width = self.smearing / math.sqrt(2.0)
        self.lr_wavelength = math.pi * self.smearing / x
        self.ewald = torchpme.EwaldCalculator(
            torchpme.CoulombPotential(smearing=self.smearing), lr_wavelength=self.lr_wavelength
        )
        self.mesh_spacing = _reference_pme_spacing(self.smearing, accuracy)
        # PME on FFT-friendly meshes (torch-pme's interpolator; see .channel_mesh)
        self.mesh = ChannelKernelMesh(self.mesh_spacing, PME_INTERPOLATION_NODES)

    def extra_repr(self) -> str:
        return (f"cutoff={self.cutoff}, accuracy={self.accuracy}, method={self.method!r}, "
                f"ewald_sigma={self.smearing:.4f}, periodic_max_width={self.periodic_max_width:.4f}")

    # ------------------------------------------------------------------ pieces of C
    def _check_periodic_widths(self, widths: torch.Tensor) -> None:
        if bool((widths > self.periodic_max_width * (1.0 + 1e-9)).any()):
            raise RuntimeError(
                "Gaussian widths above " + str(self.periodic_max_width) + " Å in a periodic structure: "
                "the real-space part would extend past the cutoff; lower the maximum width or raise the cutoff "
                "(r_max) or the accuracy tolerance"
            )

    def _kspace(self, charges: torch.Tensor, positions: torch.Tensor, cell: torch.Tensor,
                pbc: torch.Tensor) -> torch.Tensor:
        """torch-pme's smooth part (V/e * e, without k_e) for charges [N, C]."""
        n = positions.shape[0]
        empty_pairs = torch.zeros((0, 2), dtype=torch.long, device=positions.device)
        empty_distances = torch.zeros((0,), dtype=positions.dtype, device=positions.device)
        periodic_arg = torch.jit.annotate(Optional[torch.Tensor], None)
        if bool((~pbc).any()):
            periodic_arg = pbc
        if self._use_pme(n, charges.shape[1], cell):
            raw = self.mesh.potential(charges, self._mesh_kernel(positions, cell), cell)
            return self._kspace_corrections(raw, charges, positions, cell, pbc, 1.0 / torch.abs(torch.linalg.det(cell)))
        half = self.ewald(charges=charges, cell=cell, positions=positions, neighbor_indices=empty_pairs,
                          neighbor_distances=empty_distances, periodic=periodic_arg)
        return 2.0 * half

    def _mesh_kernel(self, positions: torch.Tensor, cell: torch.Tensor) -> torch.Tensor:
        """Set :attr:`mesh` up for positions and cell; G(k) on its rfft grid."""
        kvectors = self.mesh.prepare(positions, cell)
        return self.ewald.potential.lr_from_k_sq((kvectors * kvectors).sum(-1))

    def _use_pme(self, n: int, channels: int, cell: torch.Tensor) -> bool:
        """Whether :meth:`_kspace` takes PME (else Ewald) for ``n`` atoms and ``channels`` charge columns."""
        return self.method == "pme" or (self.method == "auto" and (
            n > self.pme_threshold or ewald_work(cell, self.lr_wavelength, n + channels) > self.ewald_max_work))

    def _prepare_products(self, positions: torch.Tensor, widths: torch.Tensor, cell: torch.Tensor, pbc: torch.Tensor,
                          channels: int) -> Dict[str, torch.Tensor]:
        """What :meth:`_product` can reuse across the products of one solve (empty: nothing).

        Periodic: :meth:`_prepare_kspace`. Open boundaries: the pair kernel [N, N] (the dense
        C without its diagonal, Å^-1) if it fits in :attr:`cache_max_bytes`; products are then
        matrix products instead of blocked erf sums.
        """
        if self._check_pbc(pbc) > 0:
            return self._prepare_kspace(positions, cell, channels)
        cache: Dict[str, torch.Tensor] = {}
        n = positions.shape[0]
        if 8.0 * n * n <= self.cache_max_bytes:
            cache["direct"] = _direct_kernel(positions, widths, self.block)
        return cache

    def _prepare_kspace(self, positions: torch.Tensor, cell: torch.Tensor, channels: int) -> Dict[str, torch.Tensor]:
        """Factors of the k-space sum that depend only on positions and cell, for many products (CG).

        Ewald: torch-pme's k-vectors, kernel G(k) / V and the phase factors cos, sin [K, N]
        (the same tables one torch-pme Ewald call builds). Above :attr:`cache_max_bytes`
        for those tables, and wherever :meth:`_use_pme` picks PME: the PME mesh's
        interpolation weights (state kept in :attr:`mesh`) and the kernel on its grid.
        Products then cost two [K, N] matrix products (Ewald) or one spread, FFT pair and
        gather (PME) instead of a full torch-pme call. Use with :meth:`_kspace_prepared`.
        """
        n = positions.shape[0]
        volume = torch.abs(torch.linalg.det(cell))
        cache: Dict[str, torch.Tensor] = {"inverse_volume": 1.0 / volume}
        if not self._use_pme(n, channels, cell):
            kvectors, kernel = self._ewald_kernel(cell)
            if 16.0 * float(kvectors.shape[0]) * n <= self.cache_max_bytes:
                cache["kernel"] = kernel
                cache["cos"], cache["sin"] = ewald_phases(kvectors, positions)
                return cache
        cache["mesh_kernel"] = self._mesh_kernel(positions, cell)
        return cache

    def _ewald_kernel(self, cell: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        """(folded k-vectors [K, 3] Å^-1, multiplicity * G(k) / volume [K]) of the Ewald sum for ``cell``."""
        kvectors, multiplicity = ewald_kvectors(cell, self.lr_wavelength)
        kernel = multiplicity * self.ewald.potential.lr_from_k_sq((kvectors * kvectors).sum(-1))
        return kvectors, kernel / torch.abs(torch.linalg.det(cell))

    def _kspace_prepared(self, charges: torch.Tensor, positions: torch.Tensor, cell: torch.Tensor,
                         pbc: torch.Tensor, cache: Dict[str, torch.Tensor]) -> torch.Tensor:
        """:meth:`_kspace` for charges [N, C] from the factors of :meth:`_prepare_kspace` (same corrections)."""
        if "cos" in cache:
            cos = cache["cos"]
            sin = cache["sin"]
            kernel = cache["kernel"].unsqueeze(-1)
            potential = cos.transpose(0, 1) @ (kernel * (cos @ charges)) \
                + sin.transpose(0, 1) @ (kernel * (sin @ charges))
        else:
            potential = self.mesh.potential(charges, cache["mesh_kernel"], cell)
        return self._kspace_corrections(potential, charges, positions, cell, pbc, cache["inverse_volume"])

    def _kspace_corrections(self, potential: torch.Tensor, charges: torch.Tensor, positions: torch.Tensor,
                            cell: torch.Tensor, pbc: torch.Tensor, inverse_volume: torch.Tensor) -> torch.Tensor:
        """A raw reciprocal sum for charges [N, C] with torch-pme's self, background and slab corrections."""
        # torch-pme's CoulombPotential(smearing) of the Ewald sum; the mesh uses the same kernel
        potential_torchpme = self.ewald.potential
        potential = potential - charges * potential_torchpme.self_contribution()
        potential = potential - 2.0 * potential_torchpme.background_correction() * charges.sum(0) * inverse_volume
        periodic_arg = torch.jit.annotate(Optional[torch.Tensor], None)
        if bool((~pbc).any()):
            periodic_arg = pbc
        return potential + potential_torchpme.pbc_correction(periodic_arg, positions, cell, charges)

    def _remainder_kernel(self, widths: torch.Tensor, edge_index: torch.Tensor, edge_lengths: torch.Tensor) -> torch.Tensor:
        """[erf(r / w_ij) - erf(r / (sqrt 2 sigma))] / r on every edge (Å^-1)."""
        pair_width = torch.sqrt(2.0 * (widths[edge_index[0]] ** 2 + widths[edge_index[1]] ** 2))
        smooth = torch.erf(edge_lengths / (math.sqrt(2.0) * self.smearing))
        return (torch.erf(edge_lengths / pair_width) - smooth) / edge_lengths

    def _check_pbc(self, pbc: torch.Tensor) -> int:
        n_periodic = int(pbc.sum())
        if n_periodic == 1:
            raise RuntimeError("1D-periodic structures are not supported; make the cell 3D-periodic or a slab")
        return n_periodic

    # ------------------------------------------------------------------ public
    def dense_memory_bytes(self, n: int, cell: torch.Tensor, pbc: torch.Tensor) -> float:
        """Rough peak memory (bytes) of :meth:`matrix` + the Cholesky solve for ``n`` atoms.

        Open boundaries: a few N x N matrices. Periodic: Ewald's phase tables cos, sin
        [K, N] and their products (~48 bytes per k-vector and atom, with the backward), or
        the PME mesh held once per unit-charge channel (N times).
        """
        matrix = 32.0 * n * n
        if int(pbc.sum()) == 0:
            return matrix
        if not self._use_pme(n, 0, cell):
            return matrix + 48.0 * ewald_work(cell, self.lr_wavelength, n)
        # the mesh holds N unit-charge channels: ~65 bytes per point and channel with the backward
        return matrix + 65.0 * float(channel_mesh_shape(cell, self.mesh_spacing).prod()) * n

    def matrix(self, positions: torch.Tensor, widths: torch.Tensor, cell: torch.Tensor, pbc: torch.Tensor,
               edge_index: torch.Tensor, edge_lengths: torch.Tensor) -> torch.Tensor:
        """C [N, N] (V/e), dense; differentiable in positions, cell and widths."""
        n = positions.shape[0]
        self_energy = torch.diag(self.inv_sqrt_pi / widths)
        if self._check_pbc(pbc) == 0:
            return self.coulomb_constant * (_direct_kernel_rows(positions, widths, 0, n) + self_energy)
        self._check_periodic_widths(widths)
        identity = torch.eye(n, dtype=positions.dtype, device=positions.device)
        if self._use_pme(n, 0, cell):  # (the phase tables are [K, N], not N charge channels)
            smooth = self._kspace(identity, positions, cell, pbc)
        else:  # Ewald: the k-space matrix straight from the phase tables (half the work of N unit charges)
            kvectors, kernel = self._ewald_kernel(cell)
            kernel = kernel.unsqueeze(-1)
            cos, sin = ewald_phases(kvectors, positions)
            raw = cos.transpose(0, 1) @ (kernel * cos) + sin.transpose(0, 1) @ (kernel * sin)
            smooth = self._kspace_corrections(raw, identity, positions, cell, pbc,
                                              1.0 / torch.abs(torch.linalg.det(cell)))
        smooth = 0.5 * (smooth + smooth.transpose(0, 1))  # exact up to rounding; keeps Cholesky happy
        remainder = torch.zeros((n, n), dtype=positions.dtype, device=positions.device)
        if edge_lengths.numel() > 0:
            values = self._remainder_kernel(widths, edge_index, edge_lengths)
            remainder = remainder.index_put((edge_index[1], edge_index[0]), values, accumulate=True)
        return self.coulomb_constant * (smooth + remainder + self_energy)

    def apply(self, charges: torch.Tensor, positions: torch.Tensor, widths: torch.Tensor, cell: torch.Tensor,
              pbc: torch.Tensor, edge_index: torch.Tensor, edge_lengths: torch.Tensor) -> torch.Tensor:
        """C q [N, K] (V) for charges [N, K] (e), without building C; differentiable."""
        empty: Dict[str, torch.Tensor] = {}
        return self._product(charges, positions, widths, cell, pbc, edge_index, edge_lengths, empty)

    def _product(self, charges: torch.Tensor, positions: torch.Tensor, widths: torch.Tensor, cell: torch.Tensor,
               pbc: torch.Tensor, edge_index: torch.Tensor, edge_lengths: torch.Tensor,
               cache: Dict[str, torch.Tensor]) -> torch.Tensor:
        """:meth:`apply`; periodic k-space from ``cache`` (:meth:`_prepare_kspace`) when it is not empty."""
        self_term = charges * (self.inv_sqrt_pi / widths).unsqueeze(-1)
        if self._check_pbc(pbc) == 0:
            if "direct" in cache:
                return self.coulomb_constant * (cache["direct"] @ charges + self_term)
            return self.coulomb_constant * (_blocked_direct(positions, widths, charges, self.block) + self_term)
        self._check_periodic_widths(widths)
        if len(cache) > 0:
            potential = self._kspace_prepared(charges, positions, cell, pbc, cache)
        else:
            potential = self._kspace(charges, positions, cell, pbc)
        if edge_lengths.numel() > 0:
            values = self._remainder_kernel(widths, edge_index, edge_lengths)
            potential = potential.index_add(0, edge_index[1], values.unsqueeze(-1) * charges[edge_index[0]])
        return self.coulomb_constant * (potential + self_term)

    def conjugate_gradient(self, rhs: torch.Tensor, hardness: torch.Tensor, positions: torch.Tensor,
                           widths: torch.Tensor, cell: torch.Tensor, pbc: torch.Tensor, edge_index: torch.Tensor,
                           edge_lengths: torch.Tensor, tolerance: float, max_iterations: int) -> Tuple[torch.Tensor, int]:
        """(x [N, K], iterations) with (C + diag J) x = rhs [N, K] to relative residual ``tolerance``.

        Jacobi-preconditioned CG, every column at once; RuntimeError if it has not
        converged after ``max_iterations`` steps. Pass detached inputs (no graph is built).
        Periodic k-space factors are computed once per solve (:meth:`_prepare_kspace`); in open
        boundaries the pair kernel [N, N] is, if it fits in :attr:`cache_max_bytes`.
        """
        diagonal = (hardness + self.coulomb_constant * self.inv_sqrt_pi / widths).unsqueeze(-1)
        rhs_norm = torch.linalg.norm(rhs, dim=0).clamp(min=1e-300)
        cache = self._prepare_products(positions, widths, cell, pbc, rhs.shape[1])
        x = rhs / diagonal
        residual = rhs - (self._product(x, positions, widths, cell, pbc, edge_index, edge_lengths, cache)
                          + hardness.unsqueeze(-1) * x)
        z = residual / diagonal
        direction = z
        rz = (residual * z).sum(0)
        iteration = 0
        while bool((torch.linalg.norm(residual, dim=0) / rhs_norm > tolerance).any()):
            if iteration >= max_iterations:
                worst = float((torch.linalg.norm(residual, dim=0) / rhs_norm).max())
                raise RuntimeError(
                    "charge equilibration: conjugate gradients did not converge in " + str(max_iterations)
                    + " iterations (relative residual " + str(worst) + "); raise the iteration limit or the "
                    "tolerance, or use the dense solver"
                )
            product = self._product(direction, positions, widths, cell, pbc, edge_index, edge_lengths, cache) \
                + hardness.unsqueeze(-1) * direction
            alpha = rz / (direction * product).sum(0)
            x = x + alpha * direction
            residual = residual - alpha * product
            z = residual / diagonal
            rz_new = (residual * z).sum(0)
            direction = z + (rz_new / rz) * direction
            rz = rz_new
            iteration += 1
        return x, iteration

    def equilibrate(self, chi: torch.Tensor, hardness: torch.Tensor, total_charge: torch.Tensor,
                    positions: torch.Tensor, widths: torch.Tensor, cell: torch.Tensor, pbc: torch.Tensor,
                    edge_index: torch.Tensor, edge_lengths: torch.Tensor, dense: bool, tolerance: float,
                    max_iterations: int) -> Dict[str, torch.Tensor]:
        """Equilibrated charges of one structure.

        Returns ``charges`` [N] e, ``chemical_potential`` [] eV/e, ``potential`` [N] V
        (C q, self-energy term included) and ``iterations`` [] (0 for dense). Dense:
        differentiable in every input. Iterative: charges carry no gradient.
        """
        if dense:
            coulomb = self.matrix(positions, widths, cell, pbc, edge_index, edge_lengths)
            charges, mu = dense_equilibration(coulomb + torch.diag(hardness), chi, total_charge)
            return {"charges": charges, "chemical_potential": mu, "potential": coulomb @ charges,
                    "iterations": torch.zeros((), dtype=torch.long)}
        # every input detached: no graph is built (TorchScript cannot compile a no_grad block here)
        rhs = torch.stack([-chi.detach(), torch.ones_like(chi).detach()], dim=1)
        solution, iterations = self.conjugate_gradient(
            rhs, hardness.detach(), positions.detach(), widths.detach(), cell.detach(), pbc, edge_index,
            edge_lengths.detach(), tolerance, max_iterations)
        x = solution[:, 0]
        y = solution[:, 1]
        mu = (total_charge.detach() - x.sum()) / y.sum()
        charges = x + mu * y
        potential = self.apply(charges.unsqueeze(-1), positions, widths, cell, pbc, edge_index, edge_lengths).squeeze(-1)
        return {"charges": charges, "chemical_potential": mu, "potential": potential,
                "iterations": torch.tensor(iterations)}

    def charge_response_surrogate(self, charges: torch.Tensor, chi: torch.Tensor, hardness: torch.Tensor,
                                  positions: torch.Tensor, widths: torch.Tensor, cell: torch.Tensor,
                                  pbc: torch.Tensor, edge_index: torch.Tensor, edge_lengths: torch.Tensor,
                                  tolerance: float, max_iterations: int) -> torch.Tensor:
        """S [3] with value 0 whose gradient is the charge-response part of d mu / d r.

        For equilibrated ``charges`` q (no gradient), the dipole mu_b = sum_j q_j r_jb
        changes through q as sum_j r_jb dq_j/dr = -d/dr [y_b . (A q + chi)] with q and
        y_b held fixed, where y_b solves A y_b = r_b - nu 1, sum y_b = 0 (adjoint of the
        constrained solve; three CG solves). Adding ``S - S.detach()`` to the dipole
        gives exact Born charges from a non-differentiated iterative solve.
        ``chi`` must carry its dependence on positions (and the field term).
        """
        centred = positions.detach() - positions.detach().mean(0)  # sum y = 0 makes the origin irrelevant
        rhs = torch.cat([centred, torch.ones_like(centred[:, :1])], dim=1)
        solution, _ = self.conjugate_gradient(
            rhs, hardness.detach(), positions.detach(), widths.detach(), cell.detach(), pbc, edge_index,
            edge_lengths.detach(), tolerance, max_iterations)
        ones_column = solution[:, 3:4]
        adjoint = solution[:, :3] - ones_column * (solution[:, :3].sum(0) / ones_column.sum(0))
        gradient_q = self.apply(charges.detach().unsqueeze(-1), positions, widths, cell, pbc, edge_index,
                                edge_lengths).squeeze(-1) + hardness * charges.detach() + chi
        surrogate = -(adjoint * gradient_q.unsqueeze(-1)).sum(0)
        return surrogate - surrogate.detach()


def _choose_dense(solver: str, n_atoms: int, dense_max_atoms: int) -> bool:
    if solver not in SOLVERS:
        raise ValueError(f"solver {solver!r} unknown; use one of {SOLVERS}")
    return solver == "dense" or (solver == "auto" and n_atoms <= dense_max_atoms)


def standalone_operator(positions: torch.Tensor, widths: torch.Tensor, cell: torch.Tensor, pbc: torch.Tensor,
                        accuracy: float) -> GaussianCoulombOperator:
    """The operator :func:`equilibrate_charges` uses for one structure (Å, e).

    Its cutoff: the engine's cost-balanced Ewald/PME cutoff for a 3D cell
    (:func:`.parameters.choose_parameters`), or longer if the widest Gaussian pair needs
    it; Ewald up to :data:`.coulomb.PME_THRESHOLD` atoms, PME above.
    """
    from .coulomb import PME_THRESHOLD
    from .parameters import choose_parameters

    n = positions.shape[0]
    x = _gaussian_tail_argument(SAFETY_FACTOR * accuracy)
    cutoff = math.sqrt(2.0) * x * float(widths.max()) * (1.0 + 1e-6)  # the widest pair must fit inside
    method = "pme" if n > PME_THRESHOLD else "ewald"
    if bool(pbc.all()):  # the engine's cost-balanced splitting, if it is wider
        alternating = torch.ones(n, dtype=positions.dtype)
        alternating[1::2] = -1.0
        cutoff = max(cutoff, choose_parameters(method, positions.detach(), alternating, cell.detach(), accuracy).cutoff)
    return GaussianCoulombOperator(cutoff=cutoff, accuracy=accuracy, method=method)


def equilibrate_charges(
    positions: torch.Tensor,
    electronegativity: torch.Tensor,
    hardness: torch.Tensor,
    widths: torch.Tensor,
    cell: Optional[torch.Tensor] = None,
    pbc: Optional[torch.Tensor] = None,
    total_charge: float = 0.0,
    solver: str = "auto",
    accuracy: float = 1e-6,
    tolerance: float = 1e-10,
    max_iterations: int = 1000,
    dense_max_atoms: int = DENSE_MAX_ATOMS,
) -> Dict[str, torch.Tensor]:
    """Standalone QEq for one structure with user-given chi [N] (V), J [N] (eV/e^2), s [N] (Å).

    ``cell`` [3, 3] Å (rows), ``pbc`` [3] bool (default: open boundaries); ``total_charge``
    e. The pair list comes from vesin; its cutoff is the engine's cost-balanced Ewald/PME
    cutoff for the cell (:func:`.parameters.choose_parameters`), or longer if the
    widest Gaussian pair needs it.
    Returns ``charges`` [N] (e), ``chemical_potential`` [] (eV/e), ``energy`` [] (eV,
    E(q) of the module docstring), ``iterations``. The dense solver is differentiable
    in all inputs; the iterative one returns charges without gradient.
    """
    from .neighbors import half_neighbor_list
    from .validation import ElectrostaticsInputError

    positions = torch.as_tensor(positions)
    dtype = positions.dtype
    n = positions.shape[0]
    chi = torch.as_tensor(electronegativity, dtype=dtype)
    hardness = torch.as_tensor(hardness, dtype=dtype)
    widths = torch.as_tensor(widths, dtype=dtype)
    for name, value in (("electronegativity", chi), ("hardness", hardness), ("widths", widths)):
        if value.shape != (n,):
            raise ElectrostaticsInputError(f"{name} must have one value per atom ({n}), got shape {tuple(value.shape)}")
        if not bool(torch.isfinite(value).all()):
            raise ElectrostaticsInputError(f"{name} contains NaN or infinity")
    if not bool((widths > 0).all()):
        raise ElectrostaticsInputError("QEq needs Gaussian widths > 0 Å (point charges have no finite self-energy)")
    if bool((hardness < 0).any()):
        raise ElectrostaticsInputError("hardness must be >= 0 eV/e^2 (negative values can make the problem unbounded)")
    cell = torch.zeros((3, 3), dtype=dtype) if cell is None else torch.as_tensor(cell, dtype=dtype)
    pbc = torch.zeros(3, dtype=torch.bool) if pbc is None else torch.as_tensor(pbc, dtype=torch.bool)
    operator = standalone_operator(positions, widths, cell, pbc, accuracy)
    cutoff = operator.cutoff
    edge_index = torch.zeros((2, 0), dtype=torch.long)
    lengths = torch.zeros(0, dtype=dtype)
    if bool(pbc.any()):
        pairs = half_neighbor_list(positions, cell, tuple(bool(p) for p in pbc), cutoff)
        lengths = torch.linalg.norm(pairs.vectors(positions, cell), dim=-1)
        edge_index = torch.stack([torch.cat([pairs.j, pairs.i]), torch.cat([pairs.i, pairs.j])])
        lengths = torch.cat([lengths, lengths])
    result = operator.equilibrate(
        chi, hardness, torch.tensor(float(total_charge), dtype=dtype), positions, widths, cell, pbc, edge_index,
        lengths, _choose_dense(solver, n, dense_max_atoms), tolerance, max_iterations)
    q = result["charges"]
    result["energy"] = (chi * q).sum() + 0.5 * (hardness * q * q).sum() + 0.5 * (q * result["potential"]).sum()
    return result


__all__ = ["DENSE_MAX_ATOMS", "SOLVERS", "GaussianCoulombOperator", "dense_equilibration", "equilibrate_charges",
           "standalone_operator"]
