"""The one k-space layer: parameters, method choice and reciprocal sums for every long-range sum.

Every periodic sum in mace-lr (the engine, the charge heads' :class:`.graph.GraphCoulomb`,
LODE densities, Wannier centroids, Gaussian dipoles, QEq, Ewald message passing) takes
its settings from :class:`KSpacePlanner` and its reciprocal-space sum from
:class:`ReciprocalSum`; a kernel or method change touches this file only. As in
torch-pme, the *kernel* G(k) (what interacts) is separate from the *method* (how the
k-space sum is done); callers build their kernel from |k|^2 (e.g. :func:`coulomb_kernel`).

**Accuracy.** ``accuracy`` is the target RMS force error relative to the Coulomb scale
of neighbouring charges, ``<q^2> / a^2`` with ``a = rho^(-1/3)`` (k_e = 1). The error
of each part is estimated for uncorrelated charges (Kolafa & Perram, Mol. Sim. 9, 351
(1992), written for Ewald splitting width sigma):

* real space cut at r_c:  2 rho^(-1/6) r_c^(-1/2) exp(-r_c^2 / (2 sigma^2));
* Ewald cut at |k| = k_c:  2 rho^(-1/6) sigma^(-1) k_c^(-1/2) exp(-sigma^2 k_c^2 / 2);
* PME mesh of step h (6-node Lagrange interpolation, the Ewald kernel), fitted to
  measured errors (``benchmarks/kspace_calibration.py``):
  MESH_ERROR_PREFACTOR rho^(-1/6) sigma^(-1/2) (h / sigma)^MESH_ERROR_EXPONENT.

Each part gets ``accuracy / sqrt(2)``; the tests check the achieved error against a
converged Ewald sum and the Madelung constants (within 3x of the request, never above).

**Method and splitting by cost.** :class:`KSpacePlanner` tries Ewald (spherical k cut-off,
k and -k folded) and PME (one mesh of 2^a 3^b 5^c points per axis) over a few splitting
widths sigma and keeps the cheapest under the measured cost model (:data:`COST`), among
the plans whose memory estimate fits ``memory_budget``; when none fits it raises with
the estimate and what to change. A sum with a fixed width (pure k-space: LODE, Gaussian
dipoles, ewald_mp) gives ``min_smearing == max_smearing``.

Everything here compiles with TorchScript (the model calls it per structure).
"""

from __future__ import annotations

import math
import os
from typing import List, NamedTuple, Tuple

import torch

from .channel_mesh import ChannelKernelMesh, fft_friendly_size

#: Lagrange interpolation nodes per axis of every PME mesh.
INTERPOLATION_NODES = 6

#: Mesh error model (see the module docstring), fitted by benchmarks/kspace_calibration.py.
MESH_ERROR_PREFACTOR = 0.13
MESH_ERROR_EXPONENT = 4.87

#: Default memory budget (bytes) of one sum: ``MACE_LR_MEMORY_BUDGET_GB`` (GB) if set, else 8 GB.
MEMORY_BUDGET = float(os.environ.get("MACE_LR_MEMORY_BUDGET_GB", "8")) * 1.0e9

#: Measured cost model (2-core CPU, float64, one thread; benchmarks/kspace_calibration.py, pairs
#: rechecked at 3,000 atoms: 141-222 ns, mesh 63 ns per point, stencil 59 ns):
#: seconds and bytes (forward + backward) per real-space pair, per Ewald (k-vector x atom x
#: channel), per mesh point and channel, per atom and channel for the interpolation stencil.
SECONDS_PER_PAIR = 1.5e-7
SECONDS_PER_EWALD_TERM = 2.4e-8
SECONDS_PER_MESH_POINT = 6.0e-8
SECONDS_PER_STENCIL = 6.0e-8
BYTES_PER_PAIR = 120.0
BYTES_PER_EWALD_TERM = 48.0
BYTES_PER_MESH_POINT = 64.0
BYTES_PER_STENCIL = 40.0



class KSpacePlan(NamedTuple):
    """Settings of one periodic sum (lengths Å, wavevectors Å^-1).

    ``method``: ``ewald`` or ``pme``; ``smearing``: Ewald splitting width sigma (std of
    the Gaussian in torch-pme's convention); ``cutoff``: real-space cutoff (0 for a pure
    k-space sum); ``kcut``: Ewald's |k| cut-off; ``mesh``: PME points per axis;
    ``seconds`` / ``memory``: the cost model's prediction (s, bytes).
    """

    method: str
    smearing: float
    cutoff: float
    kcut: float
    mesh: List[int]
    seconds: float
    memory: float


def coulomb_kernel(k_sq: torch.Tensor, smearing: float) -> torch.Tensor:
    """Smooth Coulomb kernel 4 pi exp(-sigma^2 k^2 / 2) / k^2 (Å^2), 0 at k = 0."""
    safe = torch.where(k_sq == 0.0, torch.ones_like(k_sq), k_sq)
    return torch.where(k_sq == 0.0, torch.zeros_like(k_sq),
                       4.0 * math.pi * torch.exp(-0.5 * smearing * smearing * safe) / safe)


def self_potential(smearing: float) -> float:
    """Potential (Å^-1 per unit charge) of an atom's own splitting Gaussian at its centre, sqrt(2/pi) / sigma."""
    return math.sqrt(2.0 / math.pi) / smearing


def background_potential(smearing: float, volume: torch.Tensor) -> torch.Tensor:
    """Potential shift (Å^-1 per unit net charge) of the neutralising background, 2 pi sigma^2 / V."""
    return 2.0 * math.pi * smearing * smearing / volume


def cell_geometry(cell: torch.Tensor) -> Tuple[float, List[float], List[float]]:
    """(volume Å^3, face-to-face widths [3] Å, lattice-vector lengths [3] Å) of cell [3, 3]."""
    c = cell.detach().to(torch.float64)
    volume = float(torch.abs(torch.linalg.det(c)))
    widths: List[float] = []
    lengths: List[float] = []
    for d in range(3):
        area = torch.linalg.norm(torch.linalg.cross(c[(d + 1) % 3], c[(d + 2) % 3]))
        widths.append(volume / float(area))
        lengths.append(float(torch.linalg.norm(c[d])))
    return volume, widths, lengths


def occupied_density(positions: torch.Tensor, cell: torch.Tensor) -> float:
    """Atoms per Å^3 of the region the atoms occupy (Å^-3): N / V shrunk to the atoms'
    extent along each lattice direction (plus 3 Å), so that slabs and clusters in boxes
    get the local density that sets the truncation errors; N / V for a filled cell."""
    volume, widths, _ = cell_geometry(cell)
    n = positions.shape[0]
    if n < 2:
        return 1.0 / volume
    fractional = positions.detach().to(torch.float64) @ torch.linalg.inv(cell.detach().to(torch.float64))
    occupied = volume
    for d in range(3):
        column = fractional[:, d] - torch.floor(fractional[:, d])
        extent = float(column.max() - column.min()) + 3.0 / widths[d]
        occupied *= min(1.0, extent)
    return n / occupied


def slab_cell(positions: torch.Tensor, cell: torch.Tensor, periodic: torch.Tensor, accuracy: float) -> torch.Tensor:
    """The cell [3, 3] a slab's sums run in: the non-periodic lattice vector (along its Cartesian
    axis) shortened to the atoms' extent plus the vacuum gap the slab correction needs for
    ``accuracy``, when the given cell is longer; 3D cells and shorter slabs are returned as given.

    The 3D sum plus the Yeh-Berkowitz correction approximates the 2D-periodic sum up to the
    interactions between image slabs, which decay as exp(-2 pi g / L) with the gap g and
    the lateral period L; g = L ln(10 / accuracy) / (2 pi) keeps them below the accuracy.
    MACE's data pipeline stores non-periodic lattice vectors inflated to 5 r_max times the
    largest coordinate (hundreds of Å), which would otherwise size the k-space sum; the
    scale factor is a constant (no gradient), so lateral stress is unaffected."""
    if bool(periodic.all()) or positions.shape[0] == 0:
        return cell
    axis = int(torch.nonzero(~periodic)[0])
    coordinate = positions[:, axis].detach()
    extent = float(coordinate.max() - coordinate.min())
    lateral = 0.0
    for d in range(3):
        if d != axis:
            lateral = max(lateral, float(torch.linalg.norm(cell[d].detach())))
    needed = extent + lateral * math.log(10.0 / accuracy) / (2.0 * math.pi)
    length = float(torch.linalg.norm(cell[axis].detach()))
    if needed >= length:
        return cell
    rows: List[torch.Tensor] = []
    for d in range(3):
        rows.append(cell[d] * (needed / length) if d == axis else cell[d])
    return torch.stack(rows)


def _tail_root(scale: float, prefactor: float, tolerance: float) -> float:
    """x with prefactor x^(-1/2) exp(-x^2 / (2 scale^2)) = tolerance (fixed point; x >= scale)."""
    x = 3.0 * scale
    for _ in range(30):
        ratio = prefactor / (tolerance * math.sqrt(x))
        x = scale * math.sqrt(2.0 * math.log(max(ratio, 1.0 + 1e-12)))
        x = max(x, scale)
    return x


def real_space_cutoff(density: float, smearing: float, tolerance: float) -> float:
    """Real-space cutoff (Å) whose truncation error is ``tolerance`` for splitting width ``smearing``."""
    return _tail_root(smearing, 2.0 * density ** (-1.0 / 6.0), tolerance)


def ewald_kcut(density: float, smearing: float, tolerance: float) -> float:
    """Ewald |k| cut-off (Å^-1) whose truncation error is ``tolerance`` for width ``smearing``."""
    return _tail_root(1.0 / smearing, 2.0 * density ** (-1.0 / 6.0) / smearing, tolerance)


def mesh_step(density: float, smearing: float, tolerance: float, prefactor: float, exponent: float) -> float:
    """Largest PME mesh step (Å) whose error model ``prefactor rho^(-1/6) sigma^(-1/2) (h / sigma)^exponent``
    equals ``tolerance`` for width ``smearing``."""
    scale = prefactor * density ** (-1.0 / 6.0) * smearing ** (-0.5)
    return smearing * (tolerance / scale) ** (1.0 / exponent)


def mesh_shape(widths: List[float], step: float, nodes: int) -> List[int]:
    """FFT-friendly mesh points per axis (2^a 3^b 5^c, at least 2 ``nodes``) with step <= ``step``
    across each face width."""
    shape: List[int] = []
    for d in range(3):
        shape.append(fft_friendly_size(max(int(math.ceil(widths[d] / step)), 2 * nodes)))
    return shape


def ewald_kvector_count(volume: float, kcut: float) -> float:
    """Folded (k, -k) k-vectors inside |k| <= kcut: half the sphere's reciprocal-lattice points."""
    return 0.5 * volume * (4.0 / 3.0) * math.pi * kcut**3 / (8.0 * math.pi**3)


class KSpacePlanner(torch.nn.Module):
    """Chooses method, splitting width, cutoffs and mesh for one periodic sum (see the module docstring).

    Args:
        accuracy: relative RMS force accuracy.
        method: ``auto`` (cheapest by the cost model), ``ewald`` or ``pme``.
        memory_budget: bytes a plan may need; larger ones are refused with a clear error.
    The cost and error constants are attributes (module defaults above), so a benchmark
    can recalibrate them on another machine.
    """

    def __init__(self, accuracy: float = 1e-5, method: str = "auto", memory_budget: float = MEMORY_BUDGET) -> None:
        super().__init__()
        if not 0.0 < accuracy < 1.0:
            raise ValueError(f"electrostatics accuracy must be in (0, 1), got {accuracy}")
        if method not in ("auto", "ewald", "pme"):
            raise ValueError(f"k-space method {method!r} unknown; use auto, ewald or pme")
        if not memory_budget > 0.0:
            raise ValueError(f"memory budget must be > 0 bytes, got {memory_budget}")
        self.accuracy = float(accuracy)
        self.method = method
        self.memory_budget = float(memory_budget)
        self.nodes = INTERPOLATION_NODES
        self.mesh_error_prefactor = MESH_ERROR_PREFACTOR
        self.mesh_error_exponent = MESH_ERROR_EXPONENT
        self.seconds_per_pair = SECONDS_PER_PAIR
        self.seconds_per_ewald_term = SECONDS_PER_EWALD_TERM
        self.seconds_per_mesh_point = SECONDS_PER_MESH_POINT
        self.seconds_per_stencil = SECONDS_PER_STENCIL
        self.bytes_per_pair = BYTES_PER_PAIR
        self.bytes_per_ewald_term = BYTES_PER_EWALD_TERM
        self.bytes_per_mesh_point = BYTES_PER_MESH_POINT
        self.bytes_per_stencil = BYTES_PER_STENCIL

    def extra_repr(self) -> str:
        return f"accuracy={self.accuracy}, method={self.method!r}, memory_budget={self.memory_budget:.3g}"

    def forward(self, cell: torch.Tensor, n_atoms: int, min_smearing: float, max_smearing: float, channels: int = 1,
                real_space: bool = True, exact_at_min: bool = False, density: float = 0.0,
                field: bool = False) -> KSpacePlan:
        """The cheapest plan for one 3D or slab cell [3, 3] Å holding ``n_atoms``.

        ``min_smearing``/``max_smearing`` bound sigma (Å): the physical width sets the lower
        bound (a narrower split only adds k-space work), a fixed-width kernel gives both equal.
        ``channels``: source channels summed together. ``real_space``: whether a real-space
        remainder (cutoff r_c) is summed; without it the kernel itself must be smooth.
        ``exact_at_min``: at sigma = ``min_smearing`` the remainder vanishes (equal Gaussian
        widths), so that plan has no real-space part. ``density`` (atoms/Å^3): the local
        density the error estimates use (:func:`occupied_density`; default N / V). ``field``:
        the field at the atoms is wanted too (analytic in every part: more work per pair, per
        Ewald term and per mesh point, see the cost factors below).
        """
        volume, widths, _ = cell_geometry(cell)
        n = max(n_atoms, 1)
        if density <= 0.0:
            density = n / volume
        spacing = density ** (-1.0 / 3.0)
        tolerance = self.accuracy / math.sqrt(2.0)
        candidates: List[float] = [min_smearing]
        if min_smearing < max_smearing:
            factors: List[float] = [0.5, 0.65, 0.8, 1.0, 1.25, 1.55, 1.9, 2.4]
            for factor in factors:
                s = factor * spacing
                if min_smearing < s < max_smearing:
                    candidates.append(s)
        methods: List[str] = ["ewald", "pme"] if self.method == "auto" else [self.method]
        best = KSpacePlan("none", 0.0, 0.0, 0.0, [0, 0, 0], 1e300, 1e300)
        smallest = KSpacePlan("none", 0.0, 0.0, 0.0, [0, 0, 0], 1e300, 1e300)
        for smearing in candidates:
            cutoff = 0.0
            if real_space and not (exact_at_min and smearing == min_smearing):
                cutoff = real_space_cutoff(density, smearing, tolerance)
            # cost factors measured at 3,000 atoms (water density, one thread, energy + forces):
            # a pair costs one channel's up to 4 channels without the field (the erf evaluations
            # dominate), ~C / 4 times it above (16: 3.8x), ~(1 + C / 2) with the field ([P, C, 3]); Ewald's cos/sin tables [K, N] are shared by all
            # channels (+10% per extra channel, +20% for the field); on the mesh the field adds
            # three inverse FFTs per channel and three gathers per atom
            pair_factor = 1.0 + 0.5 * channels if field else max(1.0, channels / 4.0)
            pair_count = 0.5 * n * density * 4.0 / 3.0 * math.pi * cutoff**3
            # with the field, beyond ~2.5e7 pair values [P, C, 3] the pair tensors are memory-bound:
            # lode's field sum at 10,000 atoms (4.6 M pairs x 4 channels x 3) ran ~2.2x slower per
            # pair than at 3,000 atoms (measured: the model went from 3.85x to 3.04x the backbone
            # with this term); without the field (ewald_mp's 16 channels) the same term made
            # the planner pick a plan that ran slower, so it is not applied there
            values = pair_count * 3.0 * channels
            pairs = pair_count * pair_factor * (max(1.0, values / 2.5e7) if field else 1.0)
            for m in methods:
                if m == "ewald":
                    kcut = ewald_kcut(density, smearing, tolerance)
                    terms = ewald_kvector_count(volume, kcut) * n
                    # the tables outgrow the caches: per-term time doubles from ~1.6e7 terms (measured
                    # 26 ns at 1.6e7, 53 ns at 3.8e7; lode / ewald_mp at 10,000 atoms ran 3-5x slower
                    # than this model without it)
                    term_factor = (1.0 + 0.1 * (channels - 1)) * (1.2 if field else 1.0) * (0.5 + terms / 3.2e7)
                    seconds = self.seconds_per_pair * pairs + self.seconds_per_ewald_term * terms * term_factor
                    memory = self.bytes_per_pair * pairs + self.bytes_per_ewald_term * terms
                    plan = KSpacePlan("ewald", smearing, cutoff, kcut, [0, 0, 0], seconds, memory)
                else:
                    step = mesh_step(density, smearing, tolerance, self.mesh_error_prefactor, self.mesh_error_exponent)
                    shape = mesh_shape(widths, step, self.nodes)
                    points = float(shape[0] * shape[1] * shape[2]) * channels * (2.5 if field else 1.0)
                    stencil = float(n * self.nodes**3 * channels) * (2.0 if field else 1.0)
                    seconds = (self.seconds_per_pair * pairs + self.seconds_per_mesh_point * points
                               + self.seconds_per_stencil * stencil)
                    memory = (self.bytes_per_pair * pairs + self.bytes_per_mesh_point * points
                              + self.bytes_per_stencil * stencil)
                    plan = KSpacePlan("pme", smearing, cutoff, 0.0, shape, seconds, memory)
                if plan.memory <= self.memory_budget and plan.seconds < best.seconds:
                    best = plan
                if plan.memory < smallest.memory:
                    smallest = plan
        if best.method == "none":
            raise RuntimeError(
                "long-range sum: the cheapest " + smallest.method + " plan for this cell (" + str(n_atoms)
                + " atoms, volume " + str(int(volume)) + " Å^3) needs about "
                + str(int(smallest.memory / 1e6)) + " MB, above the memory budget of "
                + str(int(self.memory_budget / 1e6)) + " MB; raise the budget (environment variable "
                + "MACE_LR_MEMORY_BUDGET_GB when the model is built), "
                + "ask for a lower accuracy, or use a wider Gaussian width")
        return best


class ReciprocalSum(torch.nn.Module):
    """(1 / V) sum_k G_c(k) rho_c(k) e^{ik.r_i} at the atoms, by Ewald or PME; compilable.

    Use: ``k = rs.prepare(positions, cell, plan)`` gives the k-vectors (Ewald: [K, 3],
    one of every (k, -k) pair; PME: the rfft grid [nx, ny, nz // 2 + 1, 3]); build the
    kernel G from ``(k * k).sum(-1)`` ([C, ...] or broadcastable, real); then
    :meth:`potential` or :meth:`potential_and_field`. The result includes every atom's
    own Gaussian and no background: callers subtract :func:`self_potential` and
    :func:`background_potential` as their kernel needs, and call :meth:`release` when
    done. Differentiable in positions, cell, sources and kernel (double backward included).
    """

    def __init__(self) -> None:
        super().__init__()
        self.mesh = ChannelKernelMesh(1.0, INTERPOLATION_NODES)  # the spacing is unused: plans give the shape
        self.use_mesh = False
        self.cos = torch.zeros(0, 0)
        self.sin = torch.zeros(0, 0)
        self.multiplicity = torch.zeros(0)
        self.volume = torch.zeros(())
        self.kvectors = torch.zeros(0, 3)

    def prepare(self, positions: torch.Tensor, cell: torch.Tensor, plan: KSpacePlan) -> torch.Tensor:
        """Set up the sum for positions [N, 3] Å in cell [3, 3] Å; returns the k-vectors (Å^-1)."""
        self.volume = torch.abs(torch.linalg.det(cell))
        if plan.method == "pme":
            self.use_mesh = True
            shape = torch.tensor(plan.mesh, dtype=torch.long, device=cell.device)
            self.kvectors = self.mesh.prepare_shape(positions, cell, shape)
            return self.kvectors
        self.use_mesh = False
        kvectors, multiplicity = ewald_half_sphere(cell, plan.kcut)
        phases = kvectors @ positions.transpose(0, 1)
        self.cos = torch.cos(phases)
        self.sin = torch.sin(phases)
        self.multiplicity = multiplicity
        self.kvectors = kvectors
        return kvectors

    def release(self) -> None:
        """Drop the tensors :meth:`prepare` kept (autograd keeps what backward needs), so that
        the module holds no graph between calls (``copy.deepcopy`` of a model, e.g. for EMA, works)."""
        empty = torch.zeros(0)
        self.cos = empty
        self.sin = empty
        self.multiplicity = empty
        self.kvectors = empty
        self.volume = torch.zeros(())
        interpolator = self.mesh.interpolator
        interpolator.cell = torch.eye(3)
        interpolator.inverse_cell = torch.eye(3)
        interpolator.interpolation_weights = empty
        interpolator.x_shifts = empty
        interpolator.y_shifts = empty
        interpolator.z_shifts = empty
        interpolator.x_indices = empty
        interpolator.y_indices = empty
        interpolator.z_indices = empty

    def _weighted(self, sources: torch.Tensor, kernel: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        """Ewald: (G m / V) * (cos @ q), (G m / V) * (sin @ q), each [K, C]."""
        weight = (self.multiplicity * kernel / self.volume)
        if weight.dim() == 1:
            weight = weight.unsqueeze(-1)
        else:
            weight = weight.transpose(0, 1)
        return weight * (self.cos @ sources), weight * (self.sin @ sources)

    def potential(self, sources: torch.Tensor, kernel: torch.Tensor) -> torch.Tensor:
        """[N, C] for sources [N, C] and kernel [K] / [C, K] (Ewald) or mesh-shaped (PME)."""
        if self.use_mesh:
            return self.mesh.potential_volume(sources, kernel, self.volume)
        weighted_cos, weighted_sin = self._weighted(sources, kernel)
        return self.cos.transpose(0, 1) @ weighted_cos + self.sin.transpose(0, 1) @ weighted_sin

    def potential_and_field(self, sources: torch.Tensor, kernel: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        """(:meth:`potential` [N, C], field -grad V [N, C, 3]), both analytic in k-space."""
        if self.use_mesh:
            return self.mesh.potential_and_field_volume(sources, kernel, self.kvectors, self.volume)
        weighted_cos, weighted_sin = self._weighted(sources, kernel)
        potential = self.cos.transpose(0, 1) @ weighted_cos + self.sin.transpose(0, 1) @ weighted_sin
        channels = sources.shape[1]
        k_cos = (weighted_cos.unsqueeze(-1) * self.kvectors.unsqueeze(1)).reshape(-1, channels * 3)
        k_sin = (weighted_sin.unsqueeze(-1) * self.kvectors.unsqueeze(1)).reshape(-1, channels * 3)
        field = self.sin.transpose(0, 1) @ k_cos - self.cos.transpose(0, 1) @ k_sin
        return potential, field.view(sources.shape[0], channels, 3)

    def potential_and_field_with_dipoles(self, charges: torch.Tensor, dipoles: torch.Tensor,
                                         kernel: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        """(V [N], E = -grad V [N, 3]) of charges [N] plus dipoles [N, 3] (point-like sources
        q_j + p_j . grad_{r_j} of the kernel), kernel [K] (Ewald) or [nx, ny, nz // 2 + 1] (PME), real:

            V_i = (1 / V) sum_k G(k) S(k) e^{ik.r_i},   S(k) = sum_j (q_j - i k.p_j) e^{-ik.r_j}.

        Includes every atom's own clouds, as :meth:`potential`. The energy of the sources is
        1/2 sum_i (q_i V_i - p_i . E_i). Ewald: the structure factors of q and of the three
        dipole components from the phase tables, S = A - i B with A = cos q - k . (sin p),
        B = sin q + k . (cos p); PME: :meth:`.ChannelKernelMesh.potential_and_field_with_dipoles_volume`.
        """
        if self.use_mesh:
            return self.mesh.potential_and_field_with_dipoles_volume(charges, dipoles, kernel, self.kvectors,
                                                                    self.volume)
        sources = torch.cat([charges.unsqueeze(-1), dipoles], dim=1)  # [N, 4]
        cos_sums = self.cos @ sources  # [K, 4]
        sin_sums = self.sin @ sources
        real = cos_sums[:, 0] - (self.kvectors * sin_sums[:, 1:]).sum(-1)  # S = real - i imaginary
        imaginary = sin_sums[:, 0] + (self.kvectors * cos_sums[:, 1:]).sum(-1)
        weight = self.multiplicity * kernel / self.volume
        real = (weight * real).unsqueeze(-1)  # [K, 1]
        imaginary = (weight * imaginary).unsqueeze(-1)
        # V = cos . (w A) + sin . (w B);  E = sin . (w A k) - cos . (w B k)
        from_cos = self.cos.transpose(0, 1) @ torch.cat([real, imaginary * self.kvectors], dim=1)  # [N, 4]
        from_sin = self.sin.transpose(0, 1) @ torch.cat([imaginary, real * self.kvectors], dim=1)
        return from_cos[:, 0] + from_sin[:, 0], from_sin[:, 1:] - from_cos[:, 1:]


def ewald_half_sphere(cell: torch.Tensor, kcut: float) -> Tuple[torch.Tensor, torch.Tensor]:
    """(k-vectors [K, 3] Å^-1, multiplicity [K]): one of every (k, -k) pair with 0 < |k| <= kcut.

    k = 2 pi m . inverse(cell)^T for integer m; multiplicity 2 counts the partner -k.
    """
    reciprocal = 2.0 * math.pi * torch.linalg.inv(cell).transpose(0, 1)  # rows b_i, a_i . b_j = 2 pi delta
    _, _, lengths = cell_geometry(cell)
    axes: List[torch.Tensor] = []
    for d in range(3):  # k . a_d = 2 pi m_d, so |m_d| <= kcut |a_d| / (2 pi)
        m_max = int(math.floor(kcut * lengths[d] / (2.0 * math.pi)))
        axes.append(torch.arange(-m_max, m_max + 1, device=cell.device, dtype=torch.long))
    grid = torch.meshgrid(axes[0], axes[1], axes[2], indexing="ij")
    m0 = grid[0].reshape(-1)
    m1 = grid[1].reshape(-1)
    m2 = grid[2].reshape(-1)
    positive = (m0 > 0) | ((m0 == 0) & (m1 > 0)) | ((m0 == 0) & (m1 == 0) & (m2 > 0))
    integers = torch.stack([m0, m1, m2], dim=1)[positive].to(cell.dtype)
    kvectors = integers @ reciprocal
    inside = (kvectors.detach() * kvectors.detach()).sum(-1) <= kcut * kcut
    kvectors = kvectors[inside]
    return kvectors, torch.full((kvectors.shape[0],), 2.0, dtype=cell.dtype, device=cell.device)


__all__ = [
    "INTERPOLATION_NODES",
    "KSpacePlan",
    "MEMORY_BUDGET",
    "ReciprocalSum",
    "background_potential",
    "cell_geometry",
    "coulomb_kernel",
    "ewald_half_sphere",
    "ewald_kcut",
    "mesh_shape",
    "mesh_step",
    "occupied_density",
    "KSpacePlanner",
    "real_space_cutoff",
    "self_potential",
    "slab_cell",
]
