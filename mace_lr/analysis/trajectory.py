"""Reading trajectories for the diagnostics: extxyz, ASE ``.traj``, i-PI xyz and extxyz.

Every reader yields :class:`ase.Atoms` with positions and cell in Å:

- i-PI xyz files (comment line ``# CELL(abcABC): ... cell{unit} Traj: positions{unit}``,
  or ``CELL(H)``/``CELL(GENH)``) are read with i-PI's own reader
  (:func:`ipi.utils.io.iter_file`), which converts positions and cell from the units
  the comment names (atomic units when it names none) to atomic units; we convert
  Bohr to Å with i-PI's factor.
- Everything else goes through :func:`ase.io.iread`. Files that i-PI wrote in its
  ``ase`` format carry an ``ipi_comment`` (e.g. ``positions{ase}  cell{ase}``); its
  units are interpreted with i-PI's :func:`ipi.utils.io.io_units.auto_units`.

Frames are checked as they come: a 3D periodic cell with a volume, the same atoms in
every frame. :func:`unwrap` rebuilds continuous paths from wrapped positions.
"""

from __future__ import annotations

import itertools
from pathlib import Path
from typing import Iterator

import numpy as np
from ase import Atoms

from .errors import DiagnosticsInputError

#: Formats :func:`iter_frames` accepts (``auto`` looks at the file).
FORMATS = ("auto", "ipi", "ase")


def detect_format(path: str | Path) -> str:
    """``"ipi"`` for an i-PI xyz file (second line holds a ``CELL(...)`` comment), else ``"ase"``."""
    path = Path(path)
    if not path.is_file():
        raise DiagnosticsInputError(f"trajectory file {str(path)!r} does not exist")
    if path.suffix.lower() == ".traj":
        return "ase"
    with open(path, "r", errors="replace") as handle:
        head = list(itertools.islice(handle, 2))
    if len(head) == 2 and head[1].lstrip().startswith("#") and "CELL" in head[1]:
        return "ipi"
    return "ase"


def _bohr_to_angstrom() -> float:
    from ipi.utils.units import unit_to_user

    return float(unit_to_user("length", "angstrom", 1.0))


def _iter_ipi_xyz(path: Path) -> Iterator[Atoms]:
    """i-PI xyz frames through i-PI's reader (units from the comment line)."""
    from ipi.utils.io import iter_file

    to_angstrom = _bohr_to_angstrom()
    with open(path, "r") as handle:
        frames = iter_file("xyz", handle, dimension="length")
        index = 0
        while True:
            try:
                frame = next(frames)
            except StopIteration:
                return
            except Exception as error:  # noqa: BLE001 (a forces file, a broken record)
                raise DiagnosticsInputError(
                    f"{path}: i-PI frame {index} cannot be read as positions "
                    f"({type(error).__name__}: {error}); give an i-PI positions trajectory"
                ) from None
            h = np.array(frame["cell"].h, dtype=float)  # lattice vectors as columns, Bohr
            names = [str(name) for name in frame["atoms"].names]
            positions = np.array(frame["atoms"].q, dtype=float).reshape(-1, 3) * to_angstrom
            if np.linalg.det(h) <= 0.0:  # i-PI's placeholder -1 box: no CELL in the comment
                raise DiagnosticsInputError(
                    f"{path}: i-PI frame {index} has no CELL in its comment line; the "
                    "diagnostics need the periodic box"
                )
            atoms = Atoms(names, positions=positions, cell=h.T * to_angstrom, pbc=True)
            atoms.info["ipi_comment"] = frame["comment"].strip()
            index += 1
            yield atoms


def _ipi_length_factor(comment: str, path: Path, index: int) -> tuple[float, float]:
    """(positions, cell) factors to Å for an i-PI ``ase``-format frame's comment."""
    from ipi.utils.io.io_units import auto_units
    from ipi.utils.units import unit_to_internal

    dimension, units, cell_units = auto_units(comment=comment, mode="ase")
    if dimension not in ("length", "undefined"):
        raise DiagnosticsInputError(
            f"{path}: frame {index} is an i-PI {dimension} trajectory ({comment!r}); "
            "give a positions trajectory"
        )
    to_angstrom = _bohr_to_angstrom()

    def factor(unit: str) -> float:  # "ase" units are ASE's Å already
        return 1.0 if unit == "ase" else float(unit_to_internal("length", unit, 1.0)) * to_angstrom

    return factor(units), factor(cell_units)


def _iter_ase(path: Path) -> Iterator[Atoms]:
    """Frames through :func:`ase.io.iread`; any parser failure becomes a clear error
    (ASE guesses formats from content and its parsers fail in many ways on bad files)."""
    import ase.io

    frames = ase.io.iread(str(path), index=":")
    index = 0
    while True:
        try:
            atoms = next(frames)
        except StopIteration:
            return
        except Exception as error:  # noqa: BLE001 (third-party parsers, see docstring)
            raise DiagnosticsInputError(
                f"{path}: cannot read frame {index} with ASE ({type(error).__name__}: {error}); "
                "give an extxyz, ASE .traj or i-PI xyz file"
            ) from None
        comment = atoms.info.get("ipi_comment")
        if isinstance(comment, str):
            f_pos, f_cell = _ipi_length_factor(comment, path, index)
            if f_pos != 1.0 or f_cell != 1.0:
                atoms.set_cell(atoms.cell.array * f_cell, scale_atoms=False)
                atoms.positions = atoms.positions * f_pos
        index += 1
        yield atoms


def check_frame(atoms: Atoms, index: int, reference: Atoms | None) -> None:
    """Raise :class:`DiagnosticsInputError` for a frame without a 3D cell, or whose atoms
    differ from the first frame's."""
    volume = abs(float(np.linalg.det(atoms.cell.array))) if atoms.cell.rank == 3 else 0.0
    if not atoms.pbc.all() or volume < 1e-8:
        raise DiagnosticsInputError(
            f"frame {index} has no 3D periodic cell (pbc={atoms.pbc.tolist()}, volume "
            f"{volume:.3g} Å^3); S_QQ(k) and the dielectric constant need a periodic box: "
            "write the trajectory with its cell (extxyz Lattice=..., pbc=\"T T T\")"
        )
    if not np.all(np.isfinite(atoms.positions)):
        raise DiagnosticsInputError(f"frame {index} has non-finite positions")
    if reference is not None and not np.array_equal(atoms.numbers, reference.numbers):
        raise DiagnosticsInputError(
            f"frame {index} has {len(atoms)} atoms / a different atom order than frame 0 "
            f"({len(reference)} atoms); the diagnostics need a fixed set of atoms"
        )


def iter_frames(
    path: str | Path,
    start: int = 0,
    stop: int | None = None,
    every: int = 1,
    fmt: str = "auto",
) -> Iterator[Atoms]:
    """Frames ``start:stop:every`` of a trajectory, checked (:func:`check_frame`), in Å."""
    if fmt not in FORMATS:
        raise DiagnosticsInputError(f"format must be one of {FORMATS}, got {fmt!r}")
    if every < 1 or start < 0 or (stop is not None and stop < 0):
        raise DiagnosticsInputError(
            f"frame slicing needs start >= 0, stop >= 0 and every >= 1 (got {start}, {stop}, {every})"
        )
    path = Path(path)
    kind = detect_format(path) if fmt == "auto" else fmt
    frames = _iter_ipi_xyz(path) if kind == "ipi" else _iter_ase(path)
    reference = None
    for index, atoms in enumerate(itertools.islice(frames, start, stop, every)):
        check_frame(atoms, index, reference)
        if reference is None:
            reference = atoms
        yield atoms


def minimum_image_steps(previous: np.ndarray, current: np.ndarray, cell: np.ndarray) -> np.ndarray:
    """Fractional displacements [N, 3] between two frames (cell [3, 3], rows, Å)."""
    return (current - previous) @ np.linalg.inv(cell)


def unwrap(previous_unwrapped: np.ndarray, previous: np.ndarray, current: np.ndarray, cell: np.ndarray) -> np.ndarray:
    """Unwrapped positions [N, 3] of ``current``: each atom moves by the minimum image
    of its displacement since ``previous``. Valid when no atom moves more than half a
    cell between frames (write frames often enough)."""
    steps = minimum_image_steps(previous, current, cell)
    return previous_unwrapped + (steps - np.round(steps)) @ cell


__all__ = [
    "FORMATS",
    "check_frame",
    "detect_format",
    "iter_frames",
    "minimum_image_steps",
    "unwrap",
]
