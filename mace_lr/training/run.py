"""Run MACE's ``mace_run_train`` with the long-range heads (see :mod:`.patches`)."""

from __future__ import annotations

import argparse
import os

import mace.cli.run_train

from .compile import check_compiled_models
from .patches import patched_mace
from .settings import settings_from_args


def run(args: argparse.Namespace) -> None:
    """Train as ``mace_run_train`` would, with ``--long_range`` heads, strict compilation and CPU DDP.

    ValueError for inconsistent long-range arguments (before any work is done);
    :class:`~mace_lr.training.compile.ModelCompileError` if the final model cannot be
    compiled; RuntimeError if a compiled model was not written.
    """
    settings = settings_from_args(args)
    with patched_mace(settings):
        mace.cli.run_train.run(args)
    if args.dry_run or (args.distributed and int(os.environ.get("RANK", "0")) != 0):
        return
    model_dir = args.model_dir if args.model_dir is not None else args.work_dir
    check_compiled_models(model_dir, args.name)
