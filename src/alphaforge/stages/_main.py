"""The command-line entry every stage module's ``main()`` uses."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from alphaforge.errors import AlertDeliveryError, PromotionError, RegistryError
from alphaforge.logs import setup_logging
from alphaforge.schema import DataError


def stage_main(name: str, run: Callable[..., dict[str, Any]], argv: Sequence[str] | None = None,
               options: Callable[[argparse.ArgumentParser], None] | None = None, description: str = "") -> int:
    """Parse ``--params``/``--root`` (and the stage's own options), run the stage, and turn a data, configuration
    or promotion error into its message and exit code 2 (a bug still raises with its traceback)."""
    from alphaforge.config import ConfigError, load_params

    parser = argparse.ArgumentParser(prog=f"pipelines/{name}.py", description=description or run.__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--params", "-p", type=Path, default=Path("params.yaml"), help="the params file to read")
    parser.add_argument("--root", type=Path, default=Path("."),
                        help="the folder holding data/, models/ and reports/ (default: the current folder)")
    if options is not None:
        options(parser)
    args = vars(parser.parse_args(argv))
    params_path, root = args.pop("params"), args.pop("root")
    setup_logging()
    try:
        run(load_params(params_path), root=root, **args)
    except (DataError, ConfigError, PromotionError, RegistryError, AlertDeliveryError) as err:
        print(f"alphaforge {name}: failed\n{err}", file=sys.stderr)
        return 2
    return 0
