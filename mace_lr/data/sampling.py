"""Shared sampling machinery: per-configuration random streams, rotations, retry loop.

Configuration ``i`` of a data set generated with seed ``s`` draws its random numbers
from ``numpy.random.default_rng([s, i, attempt])``. The output therefore depends only
on (seed, options), a file with ``n`` configurations is a prefix of the file with
``n + k``, and a rejected attempt (too-close atoms, unconverged SCF) is redone with
the next ``attempt`` without disturbing any other configuration.
"""

from __future__ import annotations

from typing import Callable

import numpy as np
from ase import Atoms
from tqdm.auto import tqdm


class RejectedSample(Exception):
    """Raised by a sampler to ask for a fresh attempt at the same configuration."""


class InvalidOption(ValueError):
    """A generator option (or combination of options) that cannot work."""


def config_rng(seed: int, index: int, attempt: int = 0) -> np.random.Generator:
    """The random stream of configuration ``index``, try number ``attempt``."""
    return np.random.default_rng([seed, index, attempt])


def random_rotation(rng: np.random.Generator) -> np.ndarray:
    """A rotation matrix [3, 3] drawn uniformly from SO(3) (unit quaternion)."""
    w, x, y, z = rng.standard_normal(4)
    norm = np.sqrt(w * w + x * x + y * y + z * z)
    w, x, y, z = w / norm, x / norm, y / norm, z / norm
    return np.array(
        [
            [1 - 2 * (y * y + z * z), 2 * (x * y - z * w), 2 * (x * z + y * w)],
            [2 * (x * y + z * w), 1 - 2 * (x * x + z * z), 2 * (y * z - x * w)],
            [2 * (x * z - y * w), 2 * (y * z + x * w), 1 - 2 * (x * x + y * y)],
        ]
    )


def random_unit_vector(rng: np.random.Generator) -> np.ndarray:
    """A unit vector [3] drawn uniformly from the sphere."""
    vector = rng.standard_normal(3)
    return vector / np.linalg.norm(vector)


def random_pose(positions: np.ndarray, rng: np.random.Generator, noise: float) -> np.ndarray:
    """``positions`` [N, 3] (Å) rotated uniformly at random about the origin, then each
    coordinate displaced by Gaussian noise of standard deviation ``noise`` (Å)."""
    rotated = np.asarray(positions, dtype=float) @ random_rotation(rng).T
    return rotated + noise * rng.standard_normal(rotated.shape)


def check_positive(name: str, value: float) -> None:
    """Raise ``InvalidOption`` unless ``value > 0``."""
    if not value > 0:
        raise InvalidOption(f"{name} must be positive, got {value!r}")


def check_non_negative(name: str, value: float) -> None:
    """Raise ``InvalidOption`` unless ``value >= 0``."""
    if not value >= 0:
        raise InvalidOption(f"{name} must be non-negative, got {value!r}")


def check_seed(seed: int) -> None:
    """Raise ``InvalidOption`` unless ``seed`` is a non-negative integer."""
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise InvalidOption(f"seed must be a non-negative integer, got {seed!r}")


def generate_configs(
    sample: Callable[[np.random.Generator, int], Atoms],
    n_configs: int,
    seed: int,
    *,
    max_attempts: int = 50,
    progress: bool | None = False,
    desc: str = "configs",
) -> list[Atoms]:
    """Call ``sample(rng, index)`` for configurations ``index = 0 .. n_configs-1``.

    ``sample`` raises :class:`RejectedSample` to have its configuration redrawn (at
    most ``max_attempts`` times, then ``RuntimeError``). ``progress``: show a tqdm bar
    (``None`` shows it only on a terminal).
    """
    if isinstance(n_configs, bool) or not isinstance(n_configs, (int, np.integer)):
        raise InvalidOption(f"n_configs must be an integer, got {n_configs!r}")
    check_positive("n_configs", n_configs)
    check_seed(seed)
    frames: list[Atoms] = []
    rejected = 0
    last_reason: Exception | None = None
    disable = None if progress is None else not progress
    bar = tqdm(range(n_configs), desc=desc, unit="config", disable=disable)
    for index in bar:
        for attempt in range(max_attempts):
            try:
                frames.append(sample(config_rng(seed, index, attempt), index))
                break
            except RejectedSample as why:
                rejected += 1
                last_reason = why
                bar.set_postfix(rejected=rejected)
        else:
            raise RuntimeError(
                f"configuration {index} rejected {max_attempts} times; last reason: "
                f"{last_reason}"
            )
    return frames


__all__ = [
    "InvalidOption",
    "RejectedSample",
    "check_non_negative",
    "check_positive",
    "check_seed",
    "config_rng",
    "generate_configs",
    "random_pose",
    "random_rotation",
    "random_unit_vector",
]
