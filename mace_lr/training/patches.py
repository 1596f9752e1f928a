"""Every change mace-lr makes to MACE's training code, in one place.

``mace_lr_run_train`` runs MACE's own ``mace.cli.run_train.run``; inside
:func:`patched_mace` these names are replaced (and restored on exit):

====================================  ======================================================
name                                  why
====================================  ======================================================
``run_train.configure_model``         wrap the ScaleShiftMACE into MACELR (heads)
``run_train.get_loss_fn``             add the charge and dipole terms to MACE's loss
``run_train.get_swa``                 the same for the stage-two loss
``run_train.get_params_options``      put backbone *and* head parameters in the optimizer
``run_train.create_error_table``      charge and dipole columns in the final tables
``run_train.extract_config_mace_model``  config.yaml of the compiled model: backbone + heads
``run_train.jit``                     compilation errors stop training (MACE: ``except: pass``)
``run_train.init_distributed``        gloo process group for ``--distributed --device cpu``
``run_train.DDP``                     no ``device_ids`` for a CPU module
``tools.train.MACELoss``              charge errors in the validation metrics
``tools.train.valid_err_log``         charge and dipole errors in the validation log
``tools.tables_utils.evaluate``       hand each data set's metrics to the table columns
``run_train.update_keyspec_from_kwargs``  read ``--external_field_key`` and ``--bec_key`` (with ``--bec_weight``)
``data.AtomicData.from_config``       keep reference BEC / polarization in the data (``--bec_weight``, ``--polarization_weight``)
====================================  ======================================================

A dotted name (``AtomicData.from_config``) is an attribute of a class in that module; the
class's own entry is put back on exit.

:func:`check_mace` verifies that each name still exists with the parameters we rely on
and that ``run()`` still calls it; it runs before patching, and the test suite runs it,
so a mace-torch release that moves any of this fails loudly instead of training a model
with heads that never learn.
"""

from __future__ import annotations

import contextlib
import functools
import importlib
import inspect
import logging
from dataclasses import dataclass
from typing import Any, Callable, Dict, Iterator, Optional, Tuple

from . import bec_data as lr_bec
from . import compile as lr_compile
from . import distributed as lr_distributed
from . import loss as lr_loss
from . import metrics as lr_metrics
from . import model as lr_model
from . import optimizer as lr_optimizer
from .settings import LongRangeTraining

RUN_TRAIN = "mace.cli.run_train"
TRAIN = "mace.tools.train"
TABLES = "mace.tools.tables_utils"
ATOMIC_DATA = "mace.data.atomic_data"


@dataclass(frozen=True)
class Target:
    """A MACE attribute we replace: where, which parameters it must take, how run() uses it."""

    module: str
    name: str
    parameters: Tuple[str, ...] = ()  # leading parameter names of the original
    used_in_run_as: Optional[str] = None  # text that must appear in run_train.run's source


TARGETS: Tuple[Target, ...] = (
    Target(RUN_TRAIN, "configure_model",
           ("args", "train_loader", "atomic_energies", "model_foundation", "heads", "z_table", "head_configs"),
           "configure_model(args, train_loader, atomic_energies, model_foundation, heads, z_table, head_configs)"),
    Target(RUN_TRAIN, "get_loss_fn", ("args", "dipole_only", "compute_dipole"), "get_loss_fn("),
    Target(RUN_TRAIN, "get_swa", ("args", "model", "optimizer", "swas", "dipole_only"), "get_swa("),
    Target(RUN_TRAIN, "get_params_options", ("args", "model"), "get_params_options(args, model)"),
    Target(RUN_TRAIN, "create_error_table",
           ("table_type", "all_data_loaders", "model", "loss_fn", "output_args", "log_wandb", "device",
            "distributed", "skip_heads"), "create_error_table("),
    Target(RUN_TRAIN, "extract_config_mace_model", ("model",), "extract_config_mace_model(model)"),
    Target(RUN_TRAIN, "jit", (), "jit.compile(deepcopy(model_to_save))"),
    Target(RUN_TRAIN, "init_distributed", ("args",), "init_distributed(args)"),
    Target(RUN_TRAIN, "DDP", (), "DDP(model, device_ids=[local_rank])"),
    Target(TRAIN, "MACELoss", ("loss_fn",)),
    Target(TRAIN, "valid_err_log", ("valid_loss", "eval_metrics", "logger", "log_errors", "epoch", "valid_loader_name")),
    Target(TABLES, "evaluate", ("model", "loss_fn", "data_loader", "output_args", "device")),
    Target(RUN_TRAIN, "update_keyspec_from_kwargs", ("keyspec", "keydict"),
           "update_keyspec_from_kwargs(args.key_specification, vars(args))"),
    Target(ATOMIC_DATA, "AtomicData.from_config", ("config", "z_table", "cutoff", "heads")),
)


def _owner_and_attribute(target: Target) -> Tuple[Any, str]:
    """(object holding the attribute, attribute name) for a possibly dotted target name."""
    owner: Any = importlib.import_module(target.module)
    *path, attribute = target.name.split(".")
    for part in path:
        owner = getattr(owner, part)
    return owner, attribute


def _lookup(target: Target) -> Any:
    """The current value of a target, or AttributeError."""
    owner, attribute = _owner_and_attribute(target)
    return getattr(owner, attribute)


class MaceIncompatibleError(RuntimeError):
    """mace-torch changed where mace-lr hooks into its training script."""


def check_mace() -> None:
    """MaceIncompatibleError listing every target that is missing or changed."""
    problems = []
    run_source = inspect.getsource(importlib.import_module(RUN_TRAIN).run)
    for target in TARGETS:
        try:
            original = _lookup(target)
        except AttributeError:
            problems.append(f"{target.module}.{target.name} no longer exists")
            continue
        if target.parameters:
            names = tuple(inspect.signature(original).parameters)
            if inspect.isclass(original):
                names = tuple(n for n in names if n != "self")
            if names[: len(target.parameters)] != target.parameters:
                problems.append(f"{target.module}.{target.name} takes {names}, expected {target.parameters}")
        if target.used_in_run_as and target.used_in_run_as not in " ".join(run_source.split()):
            problems.append(f"{RUN_TRAIN}.run no longer calls `{target.used_in_run_as}`")
    if problems:
        raise MaceIncompatibleError(
            "this mace-torch version is not supported by mace-lr's training patches:\n  " + "\n  ".join(problems)
        )


# ---------------------------------------------------------------- adapters (MACE's signatures)


def _configure_model(args, train_loader, atomic_energies, model_foundation=None, heads=None, z_table=None,
                     head_configs=None, *, original: Callable, settings: LongRangeTraining):
    backbone, output_args = original(args, train_loader, atomic_energies, model_foundation, heads, z_table, head_configs)
    return lr_model.wrap_backbone(backbone, settings, train_loader.dataset), output_args


def _get_loss_fn(args, dipole_only, compute_dipole, *, original: Callable, settings: LongRangeTraining):
    base = original(args, dipole_only, compute_dipole)
    if not settings.active:
        return base
    return lr_loss.LongRangeLoss(base, settings.charges_weight, settings.dipole_weight, settings.bec_weight,
                                 settings.polarization_weight)


def _get_swa(args, model, optimizer, swas, dipole_only=False, *, original: Callable, settings: LongRangeTraining):
    swa, swas = original(args, model, optimizer, swas, dipole_only)
    if settings.active and swa is not None:
        swa.loss_fn = lr_loss.LongRangeLoss(swa.loss_fn, settings.charges_weight, settings.swa_dipole_weight,
                                            settings.swa_bec_weight, settings.swa_polarization_weight)
        logging.info(f"Stage Two loss with long-range terms: {swa.loss_fn}")
    return swa, swas


def _get_params_options(args, model, *, original: Callable):
    return lr_optimizer.param_options(args, model, original)


def _extract_config(model, *, original: Callable) -> Dict[str, Any]:
    if not hasattr(model, "long_range_heads"):
        return original(model)
    config = original(model.backbone)
    config["long_range"] = model.long_range
    config["long_range_config"] = dict(model.long_range_config)
    return config


def _init_distributed(args, *, original: Callable):
    return lr_distributed.init_distributed(args, original)


def _valid_err_log(valid_loss, eval_metrics, logger, log_errors, epoch=None, valid_loader_name="Default", *,
                   original: Callable):
    original(valid_loss, eval_metrics, logger, log_errors, epoch, valid_loader_name)
    lr_metrics.log_long_range_errors(eval_metrics, valid_loader_name, epoch)


class _MetricsRecorder:
    """Stands in for ``tables_utils.evaluate``: remembers each data loader's metrics."""

    def __init__(self, original: Callable) -> None:
        self.original = original
        self.by_loader: Dict[int, Any] = {}

    def __call__(self, model, loss_fn, data_loader, output_args, device):
        result = self.original(model, loss_fn=loss_fn, data_loader=data_loader, output_args=output_args, device=device)
        self.by_loader[id(data_loader)] = result[1]
        return result


def _create_error_table(table_type, all_data_loaders, model, loss_fn, output_args, log_wandb, device,
                        distributed=False, skip_heads=None, *, original: Callable, recorder: _MetricsRecorder):
    recorder.by_loader.clear()
    table = original(table_type=table_type, all_data_loaders=all_data_loaders, model=model, loss_fn=loss_fn,
                     output_args=output_args, log_wandb=log_wandb, device=device, distributed=distributed,
                     skip_heads=skip_heads)
    by_name = {name: recorder.by_loader[id(loader)] for name, loader in all_data_loaders.items()
               if id(loader) in recorder.by_loader}
    return lr_metrics.add_table_columns(table, table_type, by_name)


def _from_config(config, z_table, cutoff, heads=None, *, original: Callable, with_bec: bool = True,
                 with_polarization: bool = False, **kwargs):
    return lr_bec.atomic_data_with_bec(config, z_table, cutoff, heads, original=original, with_bec=with_bec,
                                       with_polarization=with_polarization, **kwargs)


# ---------------------------------------------------------------- patching


def _replacements(settings: LongRangeTraining, originals: Dict[Tuple[str, str], Any]) -> Dict[Tuple[str, str], Any]:
    """(module, name) -> replacement; targets that ``settings`` does not need are left out."""
    def orig(module: str, name: str) -> Any:
        return originals[(module, name)]

    recorder = _MetricsRecorder(orig(TABLES, "evaluate"))
    key_patches = {
        (RUN_TRAIN, "update_keyspec_from_kwargs"): functools.partial(
            lr_bec.key_specification_with_bec, original=orig(RUN_TRAIN, "update_keyspec_from_kwargs"),
            bec_key=settings.bec_key if settings.trains_bec else None, field_key=settings.field_key,
            polarization_key=settings.polarization_key if settings.trains_polarization else None),
    } if settings.active else {}
    bec_patches = {
        (ATOMIC_DATA, "AtomicData.from_config"): functools.partial(
            _from_config, original=orig(ATOMIC_DATA, "AtomicData.from_config"), with_bec=settings.trains_bec,
            with_polarization=settings.trains_polarization),
    } if settings.trains_bec or settings.trains_polarization else {}
    return {
        **key_patches,
        **bec_patches,
        (RUN_TRAIN, "configure_model"): functools.partial(
            _configure_model, original=orig(RUN_TRAIN, "configure_model"), settings=settings),
        (RUN_TRAIN, "get_loss_fn"): functools.partial(
            _get_loss_fn, original=orig(RUN_TRAIN, "get_loss_fn"), settings=settings),
        (RUN_TRAIN, "get_swa"): functools.partial(_get_swa, original=orig(RUN_TRAIN, "get_swa"), settings=settings),
        (RUN_TRAIN, "get_params_options"): functools.partial(
            _get_params_options, original=orig(RUN_TRAIN, "get_params_options")),
        (RUN_TRAIN, "create_error_table"): functools.partial(
            _create_error_table, original=orig(RUN_TRAIN, "create_error_table"), recorder=recorder),
        (RUN_TRAIN, "extract_config_mace_model"): functools.partial(
            _extract_config, original=orig(RUN_TRAIN, "extract_config_mace_model")),
        (RUN_TRAIN, "jit"): lr_compile.StrictJit(),
        (RUN_TRAIN, "init_distributed"): functools.partial(
            _init_distributed, original=orig(RUN_TRAIN, "init_distributed")),
        (RUN_TRAIN, "DDP"): lr_distributed.data_parallel,
        (TRAIN, "MACELoss"): lr_metrics.LongRangeMetrics,
        (TRAIN, "valid_err_log"): functools.partial(_valid_err_log, original=orig(TRAIN, "valid_err_log")),
        (TABLES, "evaluate"): recorder,
    }


@contextlib.contextmanager
def patched_mace(settings: LongRangeTraining) -> Iterator[None]:
    """MACE's training code with mace-lr's replacements (see the module docstring); restored on exit."""
    check_mace()
    places = {(t.module, t.name): _owner_and_attribute(t) for t in TARGETS}
    originals = {key: getattr(owner, attribute) for key, (owner, attribute) in places.items()}
    # what to put back: a class's own entry (e.g. the classmethod object), else the module attribute
    saved = {key: vars(owner)[attribute] for key, (owner, attribute) in places.items()}
    try:
        for key, replacement in _replacements(settings, originals).items():
            owner, attribute = places[key]
            setattr(owner, attribute, replacement)
        yield
    finally:
        for key, value in saved.items():
            owner, attribute = places[key]
            setattr(owner, attribute, value)
