"""Reference Born effective charges in MACE's data pipeline (only with ``--bec_weight > 0``).

MACE 0.3.16 reads any per-atom array named in its ``KeySpecification`` into
``Configuration.properties``, but its ``AtomicData`` has a fixed set of fields and drops
the rest. Two patches (applied by :mod:`mace_lr.training.patches`) carry BEC through:

* :func:`key_specification_with_bec`: MACE's key specification plus ``bec -> --bec_key``
  (and ``external_field -> --external_field_key`` whenever a long-range model trains);
* :func:`atomic_data_with_bec`: MACE's ``AtomicData.from_config`` plus two fields,
  ``bec`` [N, 3, 3] (e, ``bec[i, a, b] = d mu_b / d r_{i,a}``; zeros when the
  configuration has none) and ``bec_weight`` [1] (0 when it has none, else MACE's
  ``config_bec_weight``, default 1).

Every configuration gets both fields, so batches collate; MACE's batching concatenates
them along atoms / graphs. A batch dict that contains ``bec`` makes :class:`MACELR`
compute Born charges (with a graph for the loss when training).
"""

from __future__ import annotations

from typing import Any, Callable, Optional

import numpy as np
import torch

#: Name of the property in MACE's ``Configuration.properties``.
BEC_PROPERTY = "bec"


#: Name of the reference polarization (e/Å^2, periodic structures) in ``Configuration.properties``.
POLARIZATION_PROPERTY = "polarization"

#: Name of the field property in MACE's ``Configuration.properties`` (read by its ``AtomicData``).
FIELD_PROPERTY = "external_field"


def key_specification_with_bec(keyspec: Any, keydict: Any, *, original: Callable, bec_key: Optional[str],
                               field_key: Optional[str] = None, polarization_key: Optional[str] = None) -> Any:
    """MACE's ``update_keyspec_from_kwargs`` plus ``arrays_keys['bec'] = bec_key`` and
    ``info_keys['external_field'] = field_key`` (each only when given).

    MACE 0.3.16's ``AtomicData`` reads ``external_field`` (zeros when a configuration has
    none) but its command line has no key for it, so without this every training field is 0.
    """
    result = original(keyspec, keydict)
    if bec_key is not None:
        result.update(arrays_keys={BEC_PROPERTY: bec_key})
    if field_key is not None:
        result.update(info_keys={FIELD_PROPERTY: field_key})
    if polarization_key is not None:
        result.update(info_keys={POLARIZATION_PROPERTY: polarization_key})
    return result


def reference_bec(config: Any, num_atoms: int) -> tuple[torch.Tensor, float]:
    """(bec [N, 3, 3] in the default dtype, weight) of a MACE Configuration.

    ValueError if the stored array has the wrong size (it must be (N, 9) or (N, 3, 3)).
    """
    value = config.properties.get(BEC_PROPERTY)
    dtype = torch.get_default_dtype()
    if value is None:
        return torch.zeros((num_atoms, 3, 3), dtype=dtype), 0.0
    array = np.asarray(value, dtype=float)
    if array.size != num_atoms * 9:
        raise ValueError(
            f"reference BEC has shape {array.shape} for {num_atoms} atoms; store it as an (N, 9) per-atom "
            "array, bec[i, 3a+b] = d mu_b / d r_(i,a) in e (see mace_lr.data.labelled_atoms)"
        )
    weight = float(config.property_weights.get(BEC_PROPERTY, 1.0))
    return torch.tensor(array.reshape(num_atoms, 3, 3), dtype=dtype), weight


def reference_polarization(config: Any) -> tuple[torch.Tensor, float]:
    """(polarization [1, 3] e/Å^2 in the default dtype, weight) of a MACE Configuration."""
    value = config.properties.get(POLARIZATION_PROPERTY)
    dtype = torch.get_default_dtype()
    if value is None:
        return torch.zeros((1, 3), dtype=dtype), 0.0
    array = np.asarray(value, dtype=float)
    if array.size != 3:
        raise ValueError(f"reference polarization has shape {array.shape}; store it as 3 numbers (e/Å^2) in info")
    if config.pbc is None or not np.all(config.pbc):
        raise ValueError("a reference polarization needs a 3D-periodic structure; give finite systems a dipole "
                         "(--dipole_key) instead")
    weight = float(config.property_weights.get(POLARIZATION_PROPERTY, 1.0))
    return torch.tensor(array.reshape(1, 3), dtype=dtype), weight


def atomic_data_with_bec(config: Any, *args: Any, original: Callable, with_bec: bool = True,
                         with_polarization: bool = False, **kwargs: Any) -> Any:
    """MACE's ``AtomicData.from_config(config, ...)`` with ``bec``/``bec_weight`` and (optionally)
    ``polarization`` [1, 3] / ``polarization_weight`` [1] attached."""
    data = original(config, *args, **kwargs)
    if with_bec:
        bec, weight = reference_bec(config, int(data.num_nodes))
        data.bec = bec
        data.bec_weight = torch.tensor([weight], dtype=bec.dtype)
    if with_polarization:
        polarization, weight = reference_polarization(config)
        data.polarization = polarization
        data.polarization_weight = torch.tensor([weight], dtype=polarization.dtype)
    return data
