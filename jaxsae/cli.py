"""The ``jaxsae`` command.

Each subcommand lives beside the library code it drives, in a module that defines

* ``HELP``: one line for ``jaxsae --help``;
* ``configure(parser)``: adds the subcommand's arguments (no heavy imports at module level);
* ``run(args) -> int``: does the work and returns an exit code.

This file only parses and dispatches.
"""

from __future__ import annotations

import argparse
import importlib
import sys

# name -> module that implements it (imported lazily so that `--help` is fast)
COMMANDS: dict[str, str] = {
    "demo": "jaxsae.demo",
    "extract": "jaxsae.protein.cli",
    "train": "jaxsae.training.cli",
    "interpret": "jaxsae.interpret.cli",
    "solve": "jaxsae.solve_cli",
    "bench": "jaxsae.bench",
}


def _available() -> dict[str, object]:
    mods = {}
    for name, path in COMMANDS.items():
        try:
            mods[name] = importlib.import_module(path)
        except ModuleNotFoundError as err:  # a subcommand whose module is not written yet
            if err.name != path:
                raise
    return mods


def build_parser() -> argparse.ArgumentParser:
    """The argument parser with every available subcommand."""
    parser = argparse.ArgumentParser(
        prog="jaxsae",
        description="Sparse dictionary learning in JAX for the features of protein language "
        "models: extract activations, train sparse autoencoders, solve lasso problems, "
        "interpret features.",
    )
    from jaxsae import __version__

    parser.add_argument("--version", action="version", version=f"jaxsae {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, mod in _available().items():
        p = sub.add_parser(name, help=mod.HELP, description=mod.HELP)
        mod.configure(p)
        p.set_defaults(_run=mod.run)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``jaxsae`` console script."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if getattr(args, "_run", None) is None:
        parser.print_help()
        return 0
    try:
        return int(args._run(args) or 0)
    except KeyboardInterrupt:
        print(
            "\ninterrupted: finished work is kept on disk; run the same command to resume.",
            file=sys.stderr,
        )
        return 130


if __name__ == "__main__":
    sys.exit(main())
