"""``mace_lr_run_train``: ``mace_run_train`` with long-range heads.

Takes every ``mace_run_train`` argument (and ``--config`` YAML file) plus
``--long_range``, ``--lr_charge_width``, ``--electrostatics_method``,
``--electrostatics_accuracy``, ``--lr_readout_hidden``, ``--charges_weight`` and
``--bec_weight``; see ``mace_lr_run_train --help``.
"""

from __future__ import annotations

from typing import Optional, Sequence

import mace  # noqa: F401  (mace before e3nn)

from mace_lr.training import build_parser, run, settings_from_args


def main(argv: Optional[Sequence[str]] = None) -> None:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        settings_from_args(args)
    except ValueError as exc:
        parser.error(str(exc))
    run(args)


if __name__ == "__main__":
    main()
