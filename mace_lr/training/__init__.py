"""The ``mace_run_train`` plugin: MACE's training script with long-range heads.

``mace_lr_run_train`` = ``mace_run_train`` + ``--long_range`` and friends
(:mod:`.settings`). MACE's own ``run()`` does the work; :mod:`.patches` lists the few
names replaced in it. The pieces: :mod:`.model` (wrap the backbone), :mod:`.loss`
(charge and dipole terms), :mod:`.optimizer` (all parameters in a group),
:mod:`.metrics` (errors in logs and tables), :mod:`.compile` (no silent skip),
:mod:`.distributed` (gloo on CPU).
"""

from .compile import ModelCompileError
from .loss import LongRangeLoss
from .patches import MaceIncompatibleError, check_mace, patched_mace
from .run import run
from .settings import LongRangeTraining, build_parser, settings_from_args

__all__ = [
    "LongRangeLoss",
    "LongRangeTraining",
    "MaceIncompatibleError",
    "ModelCompileError",
    "build_parser",
    "check_mace",
    "patched_mace",
    "run",
    "settings_from_args",
]
