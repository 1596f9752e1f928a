"""``mace_lr_ipi``: serve a mace-lr model (or any ASE calculator) to i-PI over a socket.

    mace_lr_ipi --model lr.model --init init.xyz -u -a mysim
    mace_lr_ipi --model lr.model --init init.xyz -a 10.0.0.1 -p 31415 --extras dipole,bec

Exit codes: 0 i-PI sent EXIT; 1 set-up error (options, model, init file), reported
before connecting; 2 could not connect or i-PI went away without EXIT; 3 i-PI sent
something that is not valid protocol; 4 the calculation failed during the run.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Sequence

from .client import DEFAULT_SOCKETS_PREFIX, stderr_log
from .extras import EXTRAS, parse_extras
from .protocol import ProtocolError, ServerDisconnected

EXIT_OK, EXIT_SETUP, EXIT_CONNECTION, EXIT_PROTOCOL, EXIT_CALCULATION = 0, 1, 2, 3, 4

#: The file to give i-PI's ``i-pi-py_driver -m custom -P`` and ``<ffdirect><pes_path>``.
PES_PATH = Path(__file__).with_name("mace_lr_pes.py")


def _floats3(text: str) -> list[float]:
    values = [float(v) for v in text.replace(",", " ").split()]
    if len(values) != 3:
        raise argparse.ArgumentTypeError(f"need three numbers, got {text!r}")
    return values


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="mace_lr_ipi",
        description="i-PI socket driver for mace-lr models and ASE calculators (see the README).",
    )
    parser.add_argument("--model", nargs="+", help="saved mace-lr / MACE model(s); several = committee average")
    parser.add_argument("--init", help="init structure (extxyz): species, atom order, cell and pbc")
    parser.add_argument("-u", "--unix", action="store_true", help="connect to a UNIX socket (same machine)")
    parser.add_argument("-a", "--address", default="localhost", help="UNIX socket name, or host name/IP for INET")
    parser.add_argument("-p", "--port", type=int, help="TCP port (INET)")
    parser.add_argument("-S", "--sockets-prefix", default=DEFAULT_SOCKETS_PREFIX,
                        help=f"UNIX socket path prefix, as i-PI's (default {DEFAULT_SOCKETS_PREFIX})")
    parser.add_argument("--device", default="cpu", help="torch device (default cpu)")
    parser.add_argument("--dtype", default="float64", choices=["float64", "float32"], help="model dtype")
    parser.add_argument("--extras", default=None,
                        help=f"comma-separated extras for i-PI: {', '.join(EXTRAS)} "
                             "(default: dipole,charges when the calculator has them; 'none' for none)")
    parser.add_argument("--total-charge", type=float, default=None, help="total charge, e (default: init file or 0)")
    parser.add_argument("--external-field", type=_floats3, default=None,
                        help="constant field inside the model, V/Å, 'Ex,Ey,Ez' (not with i-PI's driven dynamics)")
    parser.add_argument("--calculator", default=None, help="serve another ASE calculator: 'module:Class'")
    parser.add_argument("--calculator-kwargs", default="{}", help="JSON dict of keyword arguments for --calculator")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    parser.add_argument("--connect-timeout", type=float, default=60.0, help="seconds to wait for i-PI (default 60)")
    parser.add_argument("--idle-timeout", type=float, default=None,
                        help="exit (code 2) when i-PI sends nothing for this many seconds (default: wait)")
    parser.add_argument("-v", "--verbose", action="store_true", help="log protocol events")
    parser.add_argument("--pes-path", action="store_true",
                        help="print the path of the i-PI PES file (for i-pi-py_driver -m custom -P / <ffdirect>) and exit")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the driver; returns the exit code (see the module docstring)."""
    args = build_parser().parse_args(argv)
    if args.pes_path:
        print(PES_PATH)
        return EXIT_OK
    from .loading import build_calculator, default_extras, read_template
    from .potential import SetupError
    from .serving import serve

    log = stderr_log
    try:
        if args.init is None:
            raise SetupError("--init is required: the structure i-PI simulates (extxyz, same atom order)")
        if not args.unix and args.port is None:
            raise SetupError("give -u for a UNIX socket, or -p PORT (and -a HOST) for a TCP socket")
        try:
            kwargs = json.loads(args.calculator_kwargs)
        except json.JSONDecodeError as error:
            raise SetupError(f"--calculator-kwargs is not valid JSON ({error})") from None
        if not isinstance(kwargs, dict):
            raise SetupError("--calculator-kwargs must be a JSON object, e.g. '{\"method\": \"ewald\"}'")
        if args.threads is not None:
            import torch

            torch.set_num_threads(args.threads)
        template = read_template(args.init, args.total_charge, args.external_field)
        model = None if args.model is None else (args.model[0] if len(args.model) == 1 else args.model)
        calculator = build_calculator(
            model, device=args.device, dtype=args.dtype, calculator=args.calculator, calculator_kwargs=kwargs,
            total_charge=args.total_charge if args.calculator is None else None,
            external_field=args.external_field if args.calculator is None else None,
        )
        if args.extras is None:
            extras = default_extras(calculator, template)
        elif args.extras.strip().lower() == "none":
            extras = ()
        else:
            try:
                extras = parse_extras(args.extras)
            except ValueError as error:
                raise SetupError(str(error)) from None
        stats = serve(
            calculator, template, address=args.address, port=args.port, unix=args.unix,
            sockets_prefix=args.sockets_prefix, extras=extras, connect_timeout=args.connect_timeout,
            idle_timeout=args.idle_timeout,
            log=log, verbose=args.verbose,
        )
    except SetupError as error:
        log(f"error: {error}")
        return EXIT_SETUP
    except ServerDisconnected as error:
        advice = "" if "could not connect" in str(error) else (
            ". i-PI was stopped or crashed (see its output); restart it, then the driver"
        )
        log(f"error: {error}{advice}")
        return EXIT_CONNECTION
    except ProtocolError as error:
        log(f"error: protocol: {error}")
        return EXIT_PROTOCOL
    except KeyboardInterrupt:
        log("interrupted")
        return EXIT_CONNECTION
    except Exception as error:  # a failure inside the calculator during the run
        log(f"error: the calculation failed ({type(error).__name__}: {error})")
        return EXIT_CALCULATION
    log(
        f"done: {stats.structures} structures in {stats.requests} requests, "
        f"{stats.compute_seconds:.2f} s computing of {stats.wall_seconds:.2f} s connected"
    )
    return EXIT_OK


if __name__ == "__main__":
    sys.exit(main())
