"""PME-style k-space sums with a different kernel per channel, on FFT-friendly meshes; compilable.

torch-pme's :class:`~torchpme.PMECalculator` filters every channel of the charges with
one kernel G(k). ``ewald_mp`` needs C channels each filtered by its own learned mix
f_c(k) = sum_m a_mc s_m G_m(k) of several smoothed-Coulomb kernels; one torch-pme call
per width would build, transform and differentiate the whole C-channel mesh once per
width. :class:`ChannelKernelMesh` does it once: torch-pme's
:class:`~torchpme.lib.MeshInterpolator` (Lagrange, as in PME) spreads the sources on a
mesh, one ``rfftn`` transforms all channels, each channel is multiplied by its kernel,
one ``irfftn`` goes back, and the interpolator reads the potentials at the atoms:

    V_ic = (1 / volume) sum_k f_c(k) rho_c(k) exp(i k.r_i)       (before self/background terms)

and, for ``lode``, the field E_ic = -grad V_ic from the same filtered density times -i k
(three more inverse transforms; P3M's "ik" differentiation), instead of differentiating
the potential at probe copies of the atoms.

Mesh size: torch-pme rounds every axis up to a power of two (``get_ns_mesh``), which can
make the mesh up to 8x larger than its error bound asks for (256^3 instead of 162^3 for a
31 Å box at 0.39 Å spacing). Here every axis gets the smallest 2^a 3^b 5^c >= 2 L / h + 1,
the point count torch-pme's :class:`~torchpme.tuning.pme.PMEErrorBounds` assumes for
spacing ``h``; torch.fft is as fast on those sizes. The accuracy this gives is checked in
the tests against a converged Ewald sum.
"""

from __future__ import annotations

from typing import List, Tuple

import torch
from torchpme.lib import MeshInterpolator, generate_kvectors_for_mesh


def fft_friendly_size(minimum: int) -> int:
    """Smallest integer >= ``minimum`` whose only prime factors are 2, 3 and 5."""
    n = max(int(minimum), 1)
    rest = 0
    while rest != 1:
        rest = n
        for prime in [2, 3, 5]:
            while rest % prime == 0:
                rest = rest // prime
        n += 1
    return n - 1


def channel_mesh_shape(cell: torch.Tensor, mesh_spacing: float) -> torch.Tensor:
    """Mesh points per axis [3] (long) for cell [3, 3] Å: smallest 2^a 3^b 5^c >= 2 |a_i| / h + 1."""
    lengths = torch.linalg.norm(cell.detach(), dim=1)
    sizes: List[int] = []
    for d in range(3):
        sizes.append(fft_friendly_size(int(torch.ceil(2.0 * lengths[d] / mesh_spacing + 1.0))))
    return torch.tensor(sizes, dtype=torch.long, device=cell.device)


class ChannelKernelMesh(torch.nn.Module):
    """Mesh k-space sums of sources [N, C] with one kernel per channel, for one 3D-periodic structure.

    Use: ``kvectors = mesh.prepare(positions, cell)`` (the rfft grid's k-vectors, Å^-1,
    [nx, ny, nz // 2 + 1, 3]), then ``mesh.potential(sources, kernel, cell)`` (or
    :meth:`potential_and_field`) with ``kernel`` [C, nx, ny, nz // 2 + 1] (real; or
    broadcastable to it) built from |k|^2.
    Differentiable in positions, cell, sources and kernel.

    Args:
        mesh_spacing: torch-pme's ``mesh_spacing`` (Å; the mesh step is about half of it).
        interpolation_nodes: Lagrange interpolation nodes per axis (3-7).
    """

    def __init__(self, mesh_spacing: float, interpolation_nodes: int) -> None:
        super().__init__()
        if not mesh_spacing > 0.0:
            raise ValueError(f"mesh_spacing must be > 0 Å, got {mesh_spacing}")
        self.mesh_spacing = float(mesh_spacing)
        self.interpolator = MeshInterpolator(
            cell=torch.eye(3), ns_mesh=torch.ones(3, dtype=torch.long), interpolation_nodes=interpolation_nodes,
            method="Lagrange")

    def extra_repr(self) -> str:
        return f"mesh_spacing={self.mesh_spacing}"

    def prepare(self, positions: torch.Tensor, cell: torch.Tensor) -> torch.Tensor:
        """Set the mesh and interpolation weights for positions [N, 3] Å in cell [3, 3] Å.

        Returns the k-vectors of the rfft grid, [nx, ny, nz // 2 + 1, 3] Å^-1.
        """
        return self.prepare_shape(positions, cell, channel_mesh_shape(cell, self.mesh_spacing))

    def prepare_shape(self, positions: torch.Tensor, cell: torch.Tensor, shape: torch.Tensor) -> torch.Tensor:
        """:meth:`prepare` on a given mesh ``shape`` [3] (long) instead of one from the spacing."""
        self.interpolator.update(cell, shape)
        self.interpolator.compute_weights(positions)
        return generate_kvectors_for_mesh(cell, shape)

    def _filtered(self, sources: torch.Tensor, kernel: torch.Tensor) -> torch.Tensor:
        """kernel_c(k) rho_c(k) as real pairs [C, nx, ny, nz // 2 + 1, 2]."""
        # one channel at a time: torch-pme fills a C-channel mesh channel by channel in place,
        # and autograd then copies the whole mesh once per channel (O(C^2) memory traffic)
        mesh = torch.cat([self.interpolator.points_to_mesh(particle_weights=sources[:, c:c + 1])
                          for c in range(sources.shape[1])], dim=0)  # [C, nx, ny, nz]
        # no 1/n factors in either direction, as torch-pme's PME filter (fft "backward", ifft "forward")
        transformed = torch.view_as_real(torch.fft.rfftn(mesh, dim=[1, 2, 3], norm="backward"))
        return transformed * kernel.unsqueeze(-1)  # real kernel: no complex copy of it

    def _at_atoms(self, pairs: torch.Tensor, volume: torch.Tensor) -> torch.Tensor:
        """[N, C]: the inverse transform of real pairs [C, nx, ny, nz // 2 + 1, 2], read at the atoms, / volume."""
        ns = self.interpolator.ns_mesh
        back = torch.fft.irfftn(torch.view_as_complex(pairs.contiguous()), s=[int(ns[0]), int(ns[1]), int(ns[2])],
                                dim=[1, 2, 3], norm="forward")
        return self.interpolator.mesh_to_points(back) / volume

    def potential(self, sources: torch.Tensor, kernel: torch.Tensor, cell: torch.Tensor) -> torch.Tensor:
        """[N, C]: (1 / volume) sum_k kernel_c(k) rho_c(k) e^{ik.r_i} at the atoms of :meth:`prepare`."""
        return self.potential_volume(sources, kernel, torch.abs(torch.linalg.det(cell)))

    def potential_volume(self, sources: torch.Tensor, kernel: torch.Tensor, volume: torch.Tensor) -> torch.Tensor:
        """:meth:`potential` for a cell of ``volume`` (Å^3, differentiable)."""
        return self._at_atoms(self._filtered(sources, kernel), volume)

    def potential_and_field(self, sources: torch.Tensor, kernel: torch.Tensor, kvectors: torch.Tensor,
                            cell: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        """(:meth:`potential` [N, C], its field -grad V [N, C, 3]) with ``kvectors`` from :meth:`prepare`.

        The field is differentiated in k-space (-i k times the filtered density, one more
        inverse transform per direction), as P3M's "ik" scheme.
        """
        return self.potential_and_field_volume(sources, kernel, kvectors, torch.abs(torch.linalg.det(cell)))

    def potential_and_field_volume(self, sources: torch.Tensor, kernel: torch.Tensor, kvectors: torch.Tensor,
                                   volume: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        """:meth:`potential_and_field` for a cell of ``volume`` (Å^3, differentiable)."""
        filtered = self._filtered(sources, kernel)
        potential = self._at_atoms(filtered, volume)
        real = filtered[..., 0]
        imaginary = filtered[..., 1]
        components: List[torch.Tensor] = []
        for axis in range(3):
            k = kvectors[..., axis]
            # -i k (a + i b) = k b - i k a
            components.append(self._at_atoms(torch.stack([k * imaginary, -k * real], dim=-1), volume))
        return potential, torch.stack(components, dim=-1)

    def potential_and_field_with_dipoles_volume(self, charges: torch.Tensor, dipoles: torch.Tensor,
                                                kernel: torch.Tensor, kvectors: torch.Tensor,
                                                volume: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        """(V [N], E = -grad V [N, 3]) at the atoms of :meth:`prepare` of point-like sources
        q_j + p_j . grad_{r_j} (charges [N], dipoles [N, 3]) filtered by ``kernel``
        (mesh-shaped, real), with ``kvectors`` from :meth:`prepare`:

            V_i = (1 / volume) sum_k kernel(k) S(k) e^{ik.r_i},   S(k) = sum_j (q_j - i k.p_j) e^{-ik.r_j}.

        The four source channels (q and the three dipole components) are spread and transformed
        one at a time and folded into one spectrum, S = rho_q - i k . rho_p; V and the three field
        components (-i k_a S, as in :meth:`potential_and_field_volume`) are transformed back one at
        a time and read at the atoms together: about half the peak memory of four-channel meshes.
        """
        sources = torch.cat([charges.unsqueeze(-1), dipoles], dim=1)  # [N, 4]
        ns = self.interpolator.ns_mesh
        size = [int(ns[0]), int(ns[1]), int(ns[2])]
        k = kvectors.unbind(-1)
        spectrum = torch.fft.rfftn(self.interpolator.points_to_mesh(particle_weights=sources[:, 0:1])[0],
                                   norm="backward")  # no 1/n factors either way, as _filtered / _at_atoms
        for axis in range(3):
            mesh = self.interpolator.points_to_mesh(particle_weights=sources[:, axis + 1:axis + 2])[0]
            spectrum = spectrum - 1j * (k[axis] * torch.fft.rfftn(mesh, norm="backward"))
        filtered = kernel * spectrum
        back: List[torch.Tensor] = [torch.fft.irfftn(filtered, s=size, norm="forward")]
        for axis in range(3):
            back.append(torch.fft.irfftn(-1j * (k[axis] * filtered), s=size, norm="forward"))
        at_atoms = self.interpolator.mesh_to_points(torch.stack(back, dim=0)) / volume  # [N, 4]
        return at_atoms[:, 0], at_atoms[:, 1:]


__all__ = ["ChannelKernelMesh", "channel_mesh_shape", "fft_friendly_size"]
