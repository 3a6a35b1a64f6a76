"""The ``jaxsae`` command.

Each subcommand lives beside the library code it drives, in a module that defines

* ``HELP``: one line for ``jaxsae --help``;
* ``configure(parser)``: adds the subcommand's arguments (no heavy imports at module level);
* ``run(args) -> int``: does the work and returns an exit code.

This file only parses and dispatches, and applies the command's error policy (see
``jaxsae.errors``): an expected failure prints one line ``jaxsae <cmd>: error: …`` on stderr and
exits 2; Ctrl-C exits 130; any other exception is a bug and shows its traceback; ``--debug``
shows the traceback of expected failures too.
"""

from __future__ import annotations

import argparse
import importlib
import sys
import warnings

from jaxsae.errors import is_expected, one_line

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


class _Parser(argparse.ArgumentParser):
    """An ``ArgumentParser`` whose usage errors are one line, like every other failure."""

    def error(self, message: str) -> None:  # type: ignore[override]
        self.exit(2, f"{self.prog}: error: {message}; see `{self.prog} --help`\n")


def build_parser() -> argparse.ArgumentParser:
    """The argument parser with every available subcommand."""
    parser = _Parser(
        prog="jaxsae",
        description="Sparse dictionary learning in JAX for the features of protein language "
        "models: extract activations, train sparse autoencoders, solve lasso problems, "
        "interpret features.",
    )
    from jaxsae import __version__

    parser.add_argument("--version", action="version", version=f"jaxsae {__version__}")
    parser.add_argument(
        "--debug",
        action="store_true",
        help="show the Python traceback of expected failures (bad input, damaged files) too",
    )
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
    prog = f"jaxsae {args.command}"
    plain = warnings.formatwarning
    if not args.debug:  # warnings as one line each, like errors
        warnings.formatwarning = lambda message, *_a, **_k: (
            f"{prog}: warning: {' '.join(str(message).split())}\n"
        )
    try:
        return int(args._run(args) or 0)
    except KeyboardInterrupt:
        if args.debug:
            raise
        print(
            f"\n{prog}: interrupted: finished work is kept on disk; run the same command to resume",
            file=sys.stderr,
        )
        return 130
    except Exception as err:
        if args.debug or not is_expected(err):
            raise
        sys.stdout.flush()
        print(f"{prog}: error: {one_line(err)}", file=sys.stderr)
        return 2
    finally:
        warnings.formatwarning = plain


if __name__ == "__main__":
    sys.exit(main())
