"""Charge equilibration (QEq, as in 4G-HDNNP): the Coulomb operator and the linear solve.

Units: eV, e, Å, V (= eV/e). Energy of the charges q [N] (e) of one structure, with
electronegativities chi [N] (V), hardnesses J [N] (eV/e^2) and Gaussian charge widths
s [N] (std, Å):

    E(q) = sum_i chi_i q_i + 1/2 sum_i J_i q_i^2 + 1/2 q^T C q

``C`` (V/e) is the Coulomb matrix of the Gaussian charges, all periodic images included:
``k_e erf(r / sqrt(2 (s_i^2 + s_j^2))) / r`` between different sites and
``C_ii = k_e / (sqrt(pi) s_i)`` on the diagonal (each Gaussian's self-energy, the r -> 0
limit of the pair kernel); k_e = :data:`~.units.COULOMB_CONSTANT` (eV Å / e^2). ``C`` is
then the energy matrix of a continuous charge density, hence positive definite, and so
is ``A = C + diag(J)`` for J >= 0. The minimum under ``sum_i q_i = Q`` solves
``A q = -chi + mu 1`` (mu: the chemical potential, eV/e): with ``x = A^-1 (-chi)`` and
``y = A^-1 1``, ``q = x + mu y`` and ``mu = (Q - sum x) / sum y``.

**Periodic structures** (3D, or slabs with two periodic axes) use the package's k-space
layer (:mod:`.kspace`), as :class:`.split_coulomb.PeriodicCoulomb` does: per
structure, :class:`.kspace.KSpacePlanner` chooses the method (``auto``: Ewald or PME by
its measured cost model, no atom-count threshold), the Ewald splitting width
sigma >= sqrt(2) max(s) and the real-space cutoff, |k| cut-off or FFT-friendly mesh for
the requested ``accuracy`` (RMS force error relative to <q^2> rho^(2/3), see
:mod:`.kspace`) within a memory budget (larger plans are refused by the planner with a
clear error). None of this depends on the model's graph cutoff r_max. Then, in units of
k_e (Å^-1 per e):

    (C q)_i / k_e = (1 / V) sum_k 4 pi exp(-sigma^2 k^2 / 2) / k^2 rho(k) e^{ik.r_i}   [ReciprocalSum]
                  - sqrt(2 / pi) / sigma q_i - 2 pi sigma^2 Q / V          [own splitting Gaussian, background]
                  + sum_j q_j [erf(r_ij / w_ij) - erf(r_ij / (sqrt(2) sigma))] / r_ij   [pairs r_ij < r_c]
                  + q_i / (sqrt(pi) s_i)                                                [self-energy]
                  + slab correction (torch-pme's ``CoulombPotential.pbc_correction``, two periodic axes)

with w_ij = sqrt(2 (s_i^2 + s_j^2)); the pairs come from vesin-torch. The remainder is
non-negative and bounded by the erfc(r / (sqrt(2) sigma)) tail the planner's cutoff is
set for (so the energy jumps by about the requested accuracy when a pair crosses r_c;
finite-difference checks need a tight accuracy); with equal widths and
sigma = sqrt(2) s it vanishes and no pairs are needed. A
charged periodic cell gets the neutralising background (consistently in ``C``; the
result does not depend on sigma). Slabs are the complete 3D sum of the cell replicated
along all three axes plus the Yeh-Berkowitz correction: the remainder pairs include
images along the normal (as in :class:`.split_coulomb.PeriodicCoulomb`), which matter only
when the vacuum is narrower than r_c.

**Solvers** (per structure):

* ``dense``: builds ``A`` and solves both right-hand sides with one Cholesky
  factorisation; differentiable in every input (training, double backward), O(N^3)
  time, O(N^2) memory (periodic: the reciprocal sum of N unit-charge columns).
* ``iterative``: Jacobi-preconditioned conjugate gradients on the same right-hand sides,
  all columns at once. The structure's reciprocal sum is prepared once
  (:meth:`GaussianCoulombOperator.prepare`: Ewald phase tables or PME interpolation
  weights, the kernel on the k-vectors, the real-space pair list and its pair values)
  and every CG product reuses it; open boundaries keep the dense pair kernel while N^2
  doubles fit in ``cache_max_bytes`` (else blocked direct sums). Not differentiated:
  the energy is stationary in q, so forces and stress taken with q held fixed are exact
  (the ``qeq`` head does this; one differentiable product C q gives the graph); Born
  charges come from the adjoint solve (:meth:`GaussianCoulombOperator.equilibrate` with
  ``response=True`` solves it together with the charges).

Both solvers of one structure use the same plan, hence the same matrix C, wherever the
cost model picks Ewald for the CG products; where it picks PME (large cells) and
``method`` is ``auto``, the dense matrix is still built by Ewald (N unit-charge columns
on N meshes would need far more memory than the phase tables), so the two differ within
the requested accuracy. :data:`PLAN_CHANNELS` fixes the planner's column count, so that
the charge solve, the adjoint (Born charge) solve and the final product share one plan.

:func:`equilibrate_charges` is the standalone, eager API for users who bring their own
chi, J and s; the ``qeq`` head (:mod:`mace_lr.heads.qeq`) uses the same operator and
solvers inside TorchScript.

Objects pickled before the k-space layer (whose operator tied sigma to the graph cutoff
and held torch-pme calculators) are upgraded on load
(:meth:`GaussianCoulombOperator.__setstate__`): cutoff, accuracy and method carry over,
the splitting is chosen anew.
"""

from __future__ import annotations

import math
from typing import Dict, List, Optional, Tuple

import torch
import torchpme

from .direct import pair_widths
from .kspace import (
    MEMORY_BUDGET,
    KSpacePlan,
    KSpacePlanner,
    ReciprocalSum,
    background_potential,
    cell_geometry,
    coulomb_kernel,
    ewald_kvector_count,
    occupied_density,
    self_potential,
)
from .parameters import SAFETY_FACTOR, _gaussian_tail_argument
from .split_coulomb import pair_remainder, periodic_pairs
from .units import COULOMB_CONSTANT

SOLVERS = ("auto", "dense", "iterative")

#: Atoms per structure up to which ``solver="auto"`` uses the dense solver (see benchmarks).
DENSE_MAX_ATOMS = 1000

#: Charge columns the planner costs a periodic sum for (the two right-hand sides of the
#: solve). Fixed, so that every sum of one structure (CG products, the adjoint solve, the
#: final differentiable product) uses the same plan and hence the same matrix C.
PLAN_CHANNELS = 2

_INV_SQRT_PI = 1.0 / math.sqrt(math.pi)


def default_max_width(cutoff: float, accuracy: float) -> float:
    """The ``qeq`` head's default largest Gaussian width (Å) for graph cutoff ``cutoff`` (Å): min(1, sigma / sqrt 2).

    sigma = cutoff / x with exp(-x^2 / 2) = 0.1 ``accuracy`` was the splitting width of
    the operator before the k-space layer, and sigma / sqrt 2 the largest width its
    periodic sums allowed. Periodic sums no longer limit the width; the formula is kept so
    that a configuration builds the same model as before.
    """
    x = _gaussian_tail_argument(SAFETY_FACTOR * accuracy)
    return min(1.0, cutoff / x / math.sqrt(2.0))


def dense_equilibration(matrix: torch.Tensor, chi: torch.Tensor,
                        total_charge: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
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


def remainder_pairs(positions: torch.Tensor, cell: torch.Tensor, widths: torch.Tensor,
                    smearing: float, cutoff: float) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(i [P], j [P], values [P] Å^-1): every pair (each once, images along every axis)
    within ``cutoff`` (Å) and its real-space remainder [erf(r / w_ij) - erf(r / (sqrt(2) sigma))] / r.

    The real-space part of :class:`.split_coulomb.PeriodicCoulomb` (its pairs and
    :func:`.split_coulomb.pair_remainder`) with the pair values returned instead of summed,
    so that a solve computes them once and reuses them in every product; differentiable in
    positions, cell and widths (double backward included).
    """
    i, j, vectors = periodic_pairs(positions, cell, cutoff)
    distance = torch.linalg.norm(vectors, dim=1)
    return i, j, pair_remainder(distance, pair_widths(widths[i], widths[j]), smearing)


def _symmetric_csr(i: torch.Tensor, j: torch.Tensor, values: torch.Tensor, n: int) -> torch.Tensor:
    """Sparse CSR matrix [n, n] with ``values`` at (i, j) and (j, i) (repeated entries add up in products).

    Eager calls silence torch's one-time notes that sparse CSR is beta and that invariant
    checks are off (the indices are valid by construction); compiled code shows them once.
    """
    if torch.jit.is_scripting():
        return _build_symmetric_csr(i, j, values, n)
    return _quiet_symmetric_csr(i, j, values, n)


@torch.jit.unused
def _quiet_symmetric_csr(i: torch.Tensor, j: torch.Tensor, values: torch.Tensor, n: int) -> torch.Tensor:
    import warnings

    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*[Ss]parse.*")
        return _build_symmetric_csr(i, j, values, n)


def _build_symmetric_csr(i: torch.Tensor, j: torch.Tensor, values: torch.Tensor, n: int) -> torch.Tensor:
    rows = torch.cat([i, j])
    order = torch.argsort(rows)
    rows = rows[order]
    columns = torch.cat([j, i])[order]
    entries = torch.cat([values, values])[order]
    crow = torch.zeros(n + 1, dtype=torch.long, device=i.device)
    crow[1:] = torch.cumsum(torch.bincount(rows, minlength=n), 0)
    return torch.sparse_csr_tensor(crow, columns, entries, [n, n])


class GaussianCoulombOperator(torch.nn.Module):
    """The Coulomb matrix C (V/e) of Gaussian charges with per-atom widths; compilable.

    Args:
        cutoff: the backbone's graph cutoff r_max (Å); kept for the record (and for
            :func:`default_max_width`): the periodic sums do not depend on it.
        accuracy: relative RMS force accuracy of the periodic sums (:mod:`.kspace`).
        method: ``auto`` (Ewald or PME, whichever the planner's cost model finds cheaper
            for the structure), ``ewald``, ``pme``.
        pme_threshold: deprecated, ignored (``auto`` no longer switches at an atom count);
            accepted so that old configurations and calls still work.
        block: rows per block of the open-boundary direct sum (bounds its memory).
        cache_max_bytes: largest open-boundary pair kernel [N, N] (bytes) kept across the
            products of one CG solve (larger ones are recomputed per product, in blocks).
            Periodic tables are bounded by ``memory_budget`` instead.
        memory_budget: bytes one periodic sum may use (:class:`.kspace.KSpacePlanner`;
            plans above it are refused with a clear error).

    All methods act on one structure: positions [N, 3] Å, widths [N] Å (> 0), cell
    [3, 3] Å (rows are lattice vectors), pbc [3] bool (none, two or three periodic
    axes). ``edge_index`` [2, E] / ``edge_lengths`` [E] (the model graph's edges) are
    accepted for the heads' common signature and ignored: periodic sums find their own
    pairs within the plan's cutoff, open boundaries sum all pairs.
    """

    def __init__(self, cutoff: float = 5.0, accuracy: float = 1e-6, method: str = "auto",
                 pme_threshold: int = 3000, block: int = 2048, cache_max_bytes: float = 2.0e9,
                 memory_budget: float = MEMORY_BUDGET) -> None:
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
        self.block = int(block)
        self.cache_max_bytes = float(cache_max_bytes)
        self.coulomb_constant = COULOMB_CONSTANT
        self.inv_sqrt_pi = _INV_SQRT_PI
        self.plan_channels = PLAN_CHANNELS
        self.planner = KSpacePlanner(accuracy, method, memory_budget)
        self.dense_planner = KSpacePlanner(accuracy, "ewald" if method == "auto" else method, memory_budget)
        self.reciprocal = ReciprocalSum()
        self.slab = torchpme.CoulombPotential(smearing=1.0)  # its pbc_correction does not depend on the smearing

    def __setstate__(self, state: dict) -> None:
        """Upgrade an operator pickled before the k-space layer (see the module docstring)."""
        super().__setstate__(state)
        if "planner" not in self._modules:
            for stale in ("ewald", "mesh"):
                self._modules.pop(stale, None)
            for stale in ("smearing", "lr_wavelength", "mesh_spacing", "periodic_max_width", "pme_threshold",
                          "ewald_max_work"):
                self.__dict__.pop(stale, None)
            self.plan_channels = PLAN_CHANNELS
            self.planner = KSpacePlanner(self.accuracy, self.method, MEMORY_BUDGET)
            self.dense_planner = KSpacePlanner(self.accuracy, "ewald" if self.method == "auto" else self.method,
                                               MEMORY_BUDGET)
            self.reciprocal = ReciprocalSum()
            self.slab = torchpme.CoulombPotential(smearing=1.0)

    def extra_repr(self) -> str:
        return (f"accuracy={self.accuracy}, method={self.method!r}, "
                f"memory_budget={self.planner.memory_budget:.3g}")

    # ------------------------------------------------------------------ plan and preparation
    def _check_pbc(self, pbc: torch.Tensor) -> int:
        n_periodic = int(pbc.sum())
        if n_periodic == 1:
            raise RuntimeError("1D-periodic structures are not supported; make the cell 3D-periodic or a slab")
        return n_periodic

    def plan(self, positions: torch.Tensor, widths: torch.Tensor, cell: torch.Tensor,
             dense: bool = False) -> KSpacePlan:
        """The k-space plan of one periodic structure: sigma from sqrt(2) max(s) up, by cost
        (:class:`.kspace.KSpacePlanner`; RuntimeError if no plan fits the memory budget).

        ``dense``: the plan of the dense matrix (:meth:`matrix`), Ewald where ``method`` is
        ``auto``: the matrix holds the reciprocal sum of N unit-charge columns, which Ewald's
        phase tables [K, N] give without N meshes. It is the CG plan whenever the cost model
        picks Ewald for CG (small and medium cells); where it picks PME, dense and iterative
        solves differ within the requested accuracy.
        """
        n = positions.shape[0]
        max_width = float(widths.detach().max()) if n > 0 else 0.0
        uniform = bool((widths.detach() == max_width).all())
        floor = max(math.sqrt(2.0) * max_width, 1e-3)
        density = occupied_density(positions, cell)
        if dense:
            return self.dense_planner(cell.detach(), n, floor, 1.0e6, self.plan_channels, True, uniform, density)
        return self.planner(cell.detach(), n, floor, 1.0e6, self.plan_channels, True, uniform, density)

    def prepare(self, positions: torch.Tensor, widths: torch.Tensor, cell: torch.Tensor,
                pbc: torch.Tensor, for_solve: bool = False, dense: bool = False) -> Dict[str, torch.Tensor]:
        """What every product C q of one structure reuses (see :meth:`product`); call :meth:`release` after.

        Periodic: plans the sum (``dense``: the plan of :meth:`matrix`), prepares
        :attr:`reciprocal` (its phase tables or mesh weights live in that module until the
        next prepare or :meth:`release`) and returns
        the kernel on its k-vectors (``kernel``), the self and background coefficients
        (``self``, ``background``; Å^-1) and the remainder pairs (``pair_i``, ``pair_j``,
        ``pair_values``). ``for_solve`` (detached inputs, many products): the remainder also
        as a sparse symmetric CSR matrix [N, N] (``remainder``; one sparse product instead of
        two gathers and scatters per product, ~10x faster; built in about the time of six
        scatter products). Open boundaries: the pair kernel [N, N] (``direct``, Å^-1) if it
        fits in :attr:`cache_max_bytes`, else nothing. Differentiable when the inputs are
        (without ``for_solve``).
        """
        cache: Dict[str, torch.Tensor] = {}
        n = positions.shape[0]
        if self._check_pbc(pbc) == 0:
            if 8.0 * n * n <= self.cache_max_bytes:
                cache["direct"] = _direct_kernel(positions, widths, self.block)
            return cache
        plan = self.plan(positions, widths, cell, dense)
        sigma = plan.smearing
        kvectors = self.reciprocal.prepare(positions, cell, plan)
        cache["kernel"] = coulomb_kernel((kvectors * kvectors).sum(-1), sigma)
        cache["self"] = torch.full((), self_potential(sigma), dtype=positions.dtype, device=positions.device)
        cache["background"] = background_potential(sigma, torch.abs(torch.linalg.det(cell)))
        if plan.cutoff > 0.0:  # slabs too: the 3D sum of the replicated cell (+ correction), as the engine
            i, j, values = remainder_pairs(positions, cell, widths, sigma, plan.cutoff)
        else:  # equal widths at sigma = sqrt(2) s: the remainder vanishes
            i = torch.zeros(0, dtype=torch.long, device=positions.device)
            j = i
            values = torch.zeros(0, dtype=positions.dtype, device=positions.device)
        cache["pair_i"] = i
        cache["pair_j"] = j
        cache["pair_values"] = values
        if for_solve and i.numel() > 0:
            cache["remainder"] = _symmetric_csr(i, j, values, n)
        return cache

    def release(self) -> None:
        """Drop the tables :meth:`prepare` left in :attr:`reciprocal` (the module then holds no graph)."""
        self.reciprocal.release()

    # ------------------------------------------------------------------ products
    def product(self, charges: torch.Tensor, positions: torch.Tensor, widths: torch.Tensor, cell: torch.Tensor,
                pbc: torch.Tensor, cache: Dict[str, torch.Tensor]) -> torch.Tensor:
        """C q [N, K] (V) for charges [N, K] (e) from the :meth:`prepare` of the same structure."""
        self_term = charges * (self.inv_sqrt_pi / widths).unsqueeze(-1)
        if self._check_pbc(pbc) == 0:
            if "direct" in cache:
                return self.coulomb_constant * (cache["direct"] @ charges + self_term)
            return self.coulomb_constant * (_blocked_direct(positions, widths, charges, self.block) + self_term)
        potential = self.reciprocal.potential(charges, cache["kernel"])
        potential = potential - cache["self"] * charges - cache["background"] * charges.sum(0)
        i = cache["pair_i"]
        if "remainder" in cache:
            potential = potential + cache["remainder"] @ charges
        elif i.numel() > 0:
            j = cache["pair_j"]
            values = cache["pair_values"].unsqueeze(-1)
            potential = potential.index_add(0, i, values * charges[j]).index_add(0, j, values * charges[i])
        if not bool(pbc.all()):
            potential = potential + self.slab.pbc_correction(pbc, positions, cell, charges)
        return self.coulomb_constant * (potential + self_term)

    def apply(self, charges: torch.Tensor, positions: torch.Tensor, widths: torch.Tensor, cell: torch.Tensor,
              pbc: torch.Tensor, edge_index: torch.Tensor, edge_lengths: torch.Tensor) -> torch.Tensor:
        """C q [N, K] (V) for charges [N, K] (e), without building C; differentiable."""
        cache = self.prepare(positions, widths, cell, pbc)
        out = self.product(charges, positions, widths, cell, pbc, cache)
        self.release()
        return out

    def matrix(self, positions: torch.Tensor, widths: torch.Tensor, cell: torch.Tensor, pbc: torch.Tensor,
               edge_index: torch.Tensor, edge_lengths: torch.Tensor) -> torch.Tensor:
        """C [N, N] (V/e), dense; differentiable in positions, cell and widths (double backward included)."""
        n = positions.shape[0]
        self_energy = torch.diag(self.inv_sqrt_pi / widths)
        if self._check_pbc(pbc) == 0:
            return self.coulomb_constant * (_direct_kernel_rows(positions, widths, 0, n) + self_energy)
        cache = self.prepare(positions, widths, cell, pbc, False, True)
        identity = torch.eye(n, dtype=positions.dtype, device=positions.device)
        smooth = self.reciprocal.potential(identity, cache["kernel"])  # N unit-charge columns
        self.release()
        smooth = smooth - cache["self"] * identity - cache["background"]
        if not bool(pbc.all()):
            smooth = smooth + self.slab.pbc_correction(pbc, positions, cell, identity)
        smooth = 0.5 * (smooth + smooth.transpose(0, 1))  # exact up to rounding; keeps Cholesky happy
        i = cache["pair_i"]
        remainder = torch.zeros((n, n), dtype=positions.dtype, device=positions.device)
        if i.numel() > 0:
            j = cache["pair_j"]
            values = cache["pair_values"]
            remainder = remainder.index_put((torch.cat([i, j]), torch.cat([j, i])), torch.cat([values, values]),
                                            accumulate=True)
        return self.coulomb_constant * (smooth + remainder + self_energy)

    def dense_memory_bytes(self, n: int, cell: torch.Tensor, pbc: torch.Tensor,
                           positions: Optional[torch.Tensor] = None, widths: Optional[torch.Tensor] = None) -> float:
        """Rough peak memory (bytes) of :meth:`matrix` + the Cholesky solve for ``n`` atoms.

        Open boundaries: a few N x N matrices (32 N^2). Periodic: that plus, for the dense
        plan of the structure (:meth:`plan`; ``positions`` and ``widths`` given, else the
        plan for N atoms filling the cell, any width), the reciprocal sum of N unit-charge columns, by the
        planner's cost constants: Ewald's phase tables and their products (K x 2N terms),
        or the PME mesh and stencil held once per column; and the remainder pairs.
        Raises the planner's RuntimeError where even the plan's own (two-column) sum does
        not fit the memory budget.
        """
        matrix = 32.0 * n * n
        if int(pbc.sum()) == 0:
            return matrix
        if positions is not None and widths is not None:
            plan = self.plan(positions, widths, cell, True)
            density = occupied_density(positions, cell)
        else:
            plan = self.dense_planner(cell.detach(), n, 1e-3, 1.0e6, self.plan_channels, True, False, 0.0)
            density = 0.0
        volume, _, _ = cell_geometry(cell)
        if density <= 0.0:
            density = max(n, 1) / volume
        pairs = 0.5 * n * density * 4.0 / 3.0 * math.pi * plan.cutoff**3
        planner = self.planner
        memory = matrix + planner.bytes_per_pair * pairs
        if plan.method == "ewald":
            return memory + planner.bytes_per_ewald_term * ewald_kvector_count(volume, plan.kcut) * 2.0 * n
        points = float(plan.mesh[0] * plan.mesh[1] * plan.mesh[2])
        return memory + (planner.bytes_per_mesh_point * points + planner.bytes_per_stencil * planner.nodes**3 * n) * n

    # ------------------------------------------------------------------ solvers
    def conjugate_gradient(self, rhs: torch.Tensor, hardness: torch.Tensor, positions: torch.Tensor,
                           widths: torch.Tensor, cell: torch.Tensor, pbc: torch.Tensor, edge_index: torch.Tensor,
                           edge_lengths: torch.Tensor, tolerance: float, max_iterations: int,
                           cache: Optional[Dict[str, torch.Tensor]] = None) -> Tuple[torch.Tensor, int]:
        """(x [N, K], iterations) with (C + diag J) x = rhs [N, K] to relative residual ``tolerance``.

        Jacobi-preconditioned CG, every column at once; RuntimeError if it has not
        converged after ``max_iterations`` steps. Pass detached inputs (no graph is built).
        Every product reuses ``cache`` (:meth:`prepare` of the same detached inputs; the
        caller releases it); without one the solve prepares and releases its own.
        """
        own = cache is None
        prepared = self.prepare(positions, widths, cell, pbc, True) if cache is None else cache
        diagonal = (hardness + self.coulomb_constant * self.inv_sqrt_pi / widths).unsqueeze(-1)
        rhs_norm = torch.linalg.norm(rhs, dim=0).clamp(min=1e-300)
        x = rhs / diagonal
        residual = rhs - (self.product(x, positions, widths, cell, pbc, prepared) + hardness.unsqueeze(-1) * x)
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
            product = self.product(direction, positions, widths, cell, pbc, prepared) \
                + hardness.unsqueeze(-1) * direction
            alpha = rz / (direction * product).sum(0)
            x = x + alpha * direction
            residual = residual - alpha * product
            z = residual / diagonal
            rz_new = (residual * z).sum(0)
            direction = z + (rz_new / rz) * direction
            rz = rz_new
            iteration += 1
        if own:
            self.release()
        return x, iteration

    def equilibrate(self, chi: torch.Tensor, hardness: torch.Tensor, total_charge: torch.Tensor,
                    positions: torch.Tensor, widths: torch.Tensor, cell: torch.Tensor, pbc: torch.Tensor,
                    edge_index: torch.Tensor, edge_lengths: torch.Tensor, dense: bool, tolerance: float,
                    max_iterations: int, response: bool = False) -> Dict[str, torch.Tensor]:
        """Equilibrated charges of one structure.

        Returns ``charges`` [N] e, ``chemical_potential`` [] eV/e, ``potential`` [N] V
        (C q, self-energy term included), ``iterations`` [] (0 for dense) and
        ``response`` [3] (zero; with ``response`` and the iterative solver, the surrogate of
        :meth:`charge_response_surrogate`, its adjoint solved in the same CG run as the
        charges). Dense: differentiable in every input. Iterative: charges carry no
        gradient; ``potential`` is one differentiable product C q. The structure's
        reciprocal sum is prepared once for the whole CG solve (and reused for the final
        product when no input needs a gradient).
        """
        zero_response = torch.zeros(3, dtype=positions.dtype, device=positions.device)
        if dense:
            coulomb = self.matrix(positions, widths, cell, pbc, edge_index, edge_lengths)
            charges, mu = dense_equilibration(coulomb + torch.diag(hardness), chi, total_charge)
            return {"charges": charges, "chemical_potential": mu, "potential": coulomb @ charges,
                    "iterations": torch.zeros((), dtype=torch.long), "response": zero_response}
        # every input detached: no graph is built (TorchScript cannot compile a no_grad block here)
        fixed_positions = positions.detach()
        fixed_widths = widths.detach()
        fixed_cell = cell.detach()
        fixed_hardness = hardness.detach()
        columns = [-chi.detach(), torch.ones_like(fixed_widths)]
        if response:  # adjoint right-hand sides r_b (centred: sum y = 0 makes the origin irrelevant)
            centred = fixed_positions - fixed_positions.mean(0)
            columns = columns + [centred[:, 0], centred[:, 1], centred[:, 2]]
        rhs = torch.stack(columns, dim=1)
        cache = self.prepare(fixed_positions, fixed_widths, fixed_cell, pbc, True)
        solution, iterations = self.conjugate_gradient(
            rhs, fixed_hardness, fixed_positions, fixed_widths, fixed_cell, pbc, edge_index, edge_lengths.detach(),
            tolerance, max_iterations, cache)
        x = solution[:, 0]
        y = solution[:, 1]
        mu = (total_charge.detach() - x.sum()) / y.sum()
        charges = x + mu * y
        if positions.requires_grad or widths.requires_grad or cell.requires_grad:
            self.release()
            cache = self.prepare(positions, widths, cell, pbc)
        potential = self.product(charges.unsqueeze(-1), positions, widths, cell, pbc, cache).squeeze(-1)
        self.release()
        surrogate = zero_response
        if response:
            adjoint = solution[:, 2:5] - y.unsqueeze(-1) * (solution[:, 2:5].sum(0) / y.sum())
            gradient_q = potential + hardness * charges + chi
            surrogate = -(adjoint * gradient_q.unsqueeze(-1)).sum(0)
            surrogate = surrogate - surrogate.detach()
        return {"charges": charges, "chemical_potential": mu, "potential": potential,
                "iterations": torch.tensor(iterations), "response": surrogate}

    def charge_response_surrogate(self, charges: torch.Tensor, chi: torch.Tensor, hardness: torch.Tensor,
                                  positions: torch.Tensor, widths: torch.Tensor, cell: torch.Tensor,
                                  pbc: torch.Tensor, edge_index: torch.Tensor, edge_lengths: torch.Tensor,
                                  tolerance: float, max_iterations: int) -> torch.Tensor:
        """S [3] with value 0 whose gradient is the charge-response part of d mu / d r.

        For equilibrated ``charges`` q (no gradient), the dipole mu_b = sum_j q_j r_jb
        changes through q as sum_j r_jb dq_j/dr = -d/dr [y_b . (A q + chi)] with q and
        y_b held fixed, where y_b solves A y_b = r_b - nu 1, sum y_b = 0 (adjoint of the
        constrained solve; one CG run with four columns). Adding ``S - S.detach()`` to the
        dipole gives exact Born charges from a non-differentiated iterative solve.
        ``chi`` must carry its dependence on positions (and the field term).
        :meth:`equilibrate` with ``response=True`` does this within the charge solve.
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
                        accuracy: float, method: str = "auto",
                        memory_budget: float = MEMORY_BUDGET) -> GaussianCoulombOperator:
    """The operator :func:`equilibrate_charges` uses (Å, e): ``accuracy``, ``method`` and
    ``memory_budget`` as for :class:`GaussianCoulombOperator`; the plan (sigma, cutoffs,
    Ewald or PME) is made per structure by the k-space planner. ``positions``, ``widths``,
    ``cell`` and ``pbc`` are accepted for compatibility and unused."""
    return GaussianCoulombOperator(accuracy=accuracy, method=method, memory_budget=memory_budget)


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
    method: str = "auto",
    memory_budget: float = MEMORY_BUDGET,
) -> Dict[str, torch.Tensor]:
    """Standalone QEq for one structure with user-given chi [N] (V), J [N] (eV/e^2), s [N] (Å).

    ``cell`` [3, 3] Å (rows), ``pbc`` [3] bool (default: open boundaries); ``total_charge``
    e. Periodic sums as in the module docstring (``accuracy``, ``method``: ``auto``,
    ``ewald`` or ``pme``; ``memory_budget`` bytes), open boundaries by exact direct sums.
    Returns ``charges`` [N] (e), ``chemical_potential`` [] (eV/e), ``energy`` [] (eV,
    E(q) of the module docstring), ``iterations``. The dense solver is differentiable
    in all inputs; the iterative one returns charges without gradient.
    """
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
    operator = standalone_operator(positions, widths, cell, pbc, accuracy, method, memory_budget)
    edge_index = torch.zeros((2, 0), dtype=torch.long)
    lengths = torch.zeros(0, dtype=dtype)
    result = operator.equilibrate(
        chi, hardness, torch.tensor(float(total_charge), dtype=dtype), positions, widths, cell, pbc, edge_index,
        lengths, _choose_dense(solver, n, dense_max_atoms), tolerance, max_iterations)
    del result["response"]
    q = result["charges"]
    result["energy"] = (chi * q).sum() + 0.5 * (hardness * q * q).sum() + 0.5 * (q * result["potential"]).sum()
    return result


__all__ = ["DENSE_MAX_ATOMS", "SOLVERS", "GaussianCoulombOperator", "default_max_width", "dense_equilibration",
           "equilibrate_charges", "remainder_pairs", "standalone_operator"]
