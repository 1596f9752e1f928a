"""Input checks shared by the electrostatics engine: clear errors instead of NaN."""

from __future__ import annotations

import warnings

import torch

#: Two charged sites closer than this (Å) are treated as coinciding.
MIN_DISTANCE = 1e-6


class ElectrostaticsInputError(ValueError):
    """Raised when the input to the electrostatics engine is physically invalid."""


def check_finite(name: str, tensor: torch.Tensor) -> None:
    """Raise if ``tensor`` holds NaN or inf, naming the offending rows."""
    bad = ~torch.isfinite(tensor.detach())
    if bad.any():
        rows = torch.nonzero(bad.reshape(bad.shape[0], -1).any(dim=1)).flatten()
        raise ElectrostaticsInputError(
            f"{name} contain NaN or inf at index {rows[:10].tolist()}"
            f"{' ...' if rows.numel() > 10 else ''}; check the structure or the model "
            "that produced it."
        )


def check_shapes(
    positions: torch.Tensor,
    charges: torch.Tensor,
    cell: torch.Tensor,
    pbc: torch.Tensor,
    batch: torch.Tensor,
    dipoles: torch.Tensor | None,
) -> None:
    """Shapes: positions [N,3], charges [N], cell [G,3,3], pbc [G,3], batch [N]."""
    n_atoms = positions.shape[0]
    if positions.ndim != 2 or positions.shape[1] != 3:
        raise ElectrostaticsInputError(
            f"positions must have shape [N, 3], got {list(positions.shape)}"
        )
    if charges.ndim != 1 or charges.shape[0] != n_atoms:
        raise ElectrostaticsInputError(
            f"charges must have shape [N] = [{n_atoms}] (one charge per atom, in e), "
            f"got {list(charges.shape)}"
        )
    if dipoles is not None and tuple(dipoles.shape) != (n_atoms, 3):
        raise ElectrostaticsInputError(
            f"dipoles must have shape [N, 3] = [{n_atoms}, 3] (e·Å), "
            f"got {list(dipoles.shape)}"
        )
    if cell.ndim != 3 or cell.shape[1:] != (3, 3):
        raise ElectrostaticsInputError(f"cell must have shape [G, 3, 3], got {list(cell.shape)}")
    if pbc.shape != (cell.shape[0], 3):
        raise ElectrostaticsInputError(
            f"pbc must have shape [G, 3] = [{cell.shape[0]}, 3], got {list(pbc.shape)}"
        )
    if batch.shape != (n_atoms,):
        raise ElectrostaticsInputError(f"batch must have shape [N], got {list(batch.shape)}")
    if n_atoms > 0 and (bool((batch[1:] < batch[:-1]).any()) or int(batch.min()) < 0
                        or int(batch.max()) >= cell.shape[0]):
        raise ElectrostaticsInputError(
            f"batch must list the structure index (0..{cell.shape[0] - 1}) of every atom in "
            "non-decreasing order, atoms of one structure contiguous (as torch_geometric "
            "batches are)."
        )


def check_widths(widths: torch.Tensor, n_atoms: int) -> None:
    """Gaussian widths: one per atom, finite, non-negative (Å)."""
    if widths.shape != (n_atoms,):
        raise ElectrostaticsInputError(
            f"widths must have shape [N] = [{n_atoms}] (one Gaussian width per atom, Å), "
            f"got {list(widths.shape)}"
        )
    check_finite("widths", widths)
    if bool((widths.detach() < 0).any()):
        raise ElectrostaticsInputError(
            "widths must be >= 0 Å (0 means a point charge); a learned width should be "
            "made positive, e.g. with softplus."
        )


def check_cell(cell: torch.Tensor, graph: int) -> None:
    """A periodic structure needs a cell with non-zero volume."""
    lengths = torch.linalg.norm(cell.detach(), dim=1)
    volume = torch.abs(torch.linalg.det(cell.detach()))
    if bool((lengths == 0).any()) or float(volume) <= 1e-6 * float(torch.prod(lengths)):
        raise ElectrostaticsInputError(
            f"structure {graph} is periodic but its cell is singular "
            f"(volume {float(volume):.3g} Å^3, lattice vector lengths "
            f"{[round(float(x), 4) for x in lengths]}); give a full 3x3 cell or set pbc=False."
        )


def check_slab_cell(cell: torch.Tensor, axis: int, graph: int) -> None:
    """Slab correction needs the non-periodic lattice vector along a Cartesian axis."""
    c = cell.detach()
    vector = c[axis]
    others = [k for k in range(3) if k != axis]
    off_axis = torch.cat([vector[others], c[others][:, axis]]).abs().max()
    if float(off_axis) > 1e-8 * float(torch.linalg.norm(vector)):
        raise ElectrostaticsInputError(
            f"structure {graph}: the slab (2D periodic) correction needs the non-periodic "
            f"lattice vector {axis} along Cartesian axis {axis} and orthogonal to the two "
            "periodic ones; rotate the structure (e.g. surface normal along z)."
        )


def check_min_distance(distances: torch.Tensor, i: torch.Tensor, j: torch.Tensor, graph: int) -> None:
    """Raise if two sites coincide (distance below :data:`MIN_DISTANCE`)."""
    if distances.numel() == 0:
        return
    close = distances.detach() < MIN_DISTANCE
    if close.any():
        k = int(torch.nonzero(close)[0])
        raise ElectrostaticsInputError(
            f"structure {graph}: atoms {int(i[k])} and {int(j[k])} coincide (distance "
            f"{float(distances[k]):.2e} Å); point charges there have infinite energy. "
            "Remove the duplicate atom or check the positions/cell."
        )


def warn_if_charged(total_charge: float, graph: int) -> None:
    """Periodic non-neutral cells get a neutralising background; say so."""
    if abs(total_charge) > 1e-6:
        warnings.warn(
            f"structure {graph} is periodic with net charge {total_charge:+.4g} e: a "
            "uniform neutralising background is added (energy and stress include its "
            "term, independent of the Ewald splitting).",
            stacklevel=4,
        )
