"""Expected failures, and the checks that turn bad files and options into them.

The ``jaxsae`` command (``jaxsae.cli.main``) splits failures in two:

* **Expected** — bad input, a missing or damaged file, a refused checkpoint, an output that
  cannot be written, a training run that diverged: one line ``jaxsae <cmd>: error: …`` on
  stderr, naming what was expected, what was found and what to do, and exit status 2 (130 for
  Ctrl-C). These are the exception classes in ``EXPECTED``: ``JaxsaeError`` (raised where the
  library knows the failure is the user's to fix), ``ValueError`` (the library's "expected …,
  found …" input checks; ``UnicodeDecodeError`` and JSON errors are ValueErrors too),
  ``OSError`` (missing files, permissions, a full disk), ``EOFError``,
  ``pickle.UnpicklingError`` (a checkpoint's pickle refused or broken), ``zipfile.BadZipFile``.
* **Bugs** — any other exception (``TypeError``, ``KeyError``, ``AssertionError``, …): the
  traceback is printed, exit status 1.

``jaxsae --debug <cmd>`` prints the traceback of expected failures too.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import pickle
import zipfile
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import numpy as np

__all__ = [
    "JaxsaeError",
    "InputError",
    "EXPECTED",
    "is_expected",
    "one_line",
    "renamed_options",
    "positive_int",
    "check_output_dir",
    "check_output_file",
    "load_npy",
]


class JaxsaeError(Exception):
    """Base of the failures the user is expected to fix (bad input, damaged files, …)."""


class InputError(JaxsaeError, ValueError):
    """Bad input: a file, an array or an option that is not what was expected."""


#: Exception classes reported as one line by the ``jaxsae`` command (see the module docstring).
EXPECTED: tuple[type[BaseException], ...] = (
    JaxsaeError,
    ValueError,
    OSError,
    EOFError,
    pickle.UnpicklingError,
    zipfile.BadZipFile,
)


def is_expected(err: BaseException) -> bool:
    """True when ``err`` is an expected failure (reported in one line, not as a bug)."""
    if isinstance(err, EXPECTED):
        return True
    # safetensors' error type lives in a compiled module: matched by name, not imported
    return type(err).__name__ == "SafetensorError"


def one_line(err: BaseException) -> str:
    """The message of ``err`` on one line (an ``OSError`` as ``path: reason``)."""
    if isinstance(err, OSError) and err.strerror and err.filename is not None:
        msg = f"{err.filename}: {err.strerror}"
        if err.filename2 is not None:
            msg += f" (and {err.filename2})"
    else:
        msg = str(err) or type(err).__name__
    return " ".join(msg.split())


@contextlib.contextmanager
def renamed_options(names: Mapping[str, str]) -> Iterator[None]:
    """Re-raise expected failures with library keywords replaced by command-line flags.

    Library messages name keywords (``invalid='unk'``); under a command they should name the
    flag (``--invalid unk``). The exception is re-raised as an ``InputError`` from the original.

    Args:
      names: ``{library spelling: command-line spelling}``.
    """
    try:
        yield
    except EXPECTED as err:
        msg = str(err)
        new = msg
        for lib, flag in names.items():
            new = new.replace(lib, flag)
        if new == msg:
            raise
        raise InputError(new) from err


def positive_int(text: str) -> int:
    """``argparse`` type: an integer ``>= 1``."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer >= 1, found {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected an integer >= 1, found {text}")
    return value


def _nearest_existing(path: Path) -> Path:
    p = path.absolute()
    while not p.exists() and p != p.parent:
        p = p.parent
    return p


def check_output_dir(path: str | os.PathLike, what: str = "output directory") -> Path:
    """Check, without creating anything, that ``path`` can be (or is) a writable directory.

    Raises:
      InputError: ``path`` is a file, or the directory (or its nearest existing parent) is not
        writable.
    """
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise InputError(f"{what} {path}: expected a directory, found a file; choose another path")
    base = _nearest_existing(path)
    if not base.is_dir():
        raise InputError(
            f"{what} {path}: expected a directory path, found that {base} is a file; "
            "choose another path"
        )
    if not os.access(base, os.W_OK | os.X_OK):
        raise InputError(
            f"{what} {path}: {base} is not writable by you; choose another path or fix its "
            "permissions"
        )
    return path


def check_output_file(path: str | os.PathLike, what: str = "output file") -> Path:
    """Check, without creating anything, that file ``path`` can be written.

    Raises:
      InputError: ``path`` is a directory, its directory does not exist or is not writable, or
        it exists and is not writable.
    """
    path = Path(path)
    if path.is_dir():
        raise InputError(f"{what} {path}: expected a file name, found a directory")
    parent = path.absolute().parent
    if parent.exists() and not parent.is_dir():
        raise InputError(f"{what} {path}: expected {parent} to be a directory, found a file")
    if not parent.is_dir():
        raise InputError(
            f"{what} {path}: expected an existing directory {parent}, found none; create it first"
        )
    if not os.access(parent, os.W_OK | os.X_OK) or (path.exists() and not os.access(path, os.W_OK)):
        raise InputError(
            f"{what} {path}: not writable by you; choose another path or fix its permissions"
        )
    return path


def load_npy(path: str | os.PathLike, what: str = "input", *, mmap: bool = False) -> np.ndarray:
    """Read a numeric ``.npy`` file, with one clear error for each way it can be wrong.

    Never unpickles: an object-dtype array is refused before its data is read.

    Args:
      path: the file.
      what: how messages name it (``"inputs"``, ``"dictionary"``).
      mmap: memory-map it read-only instead of reading it.

    Returns:
      The array (a read-only memmap with ``mmap=True``).

    Raises:
      InputError: missing file, a directory, not a ``.npy`` file, a non-numeric dtype, or a
        truncated file.
    """
    import numpy as np  # here, so that `jaxsae --help` does not import it

    path = Path(path)
    if not path.exists():
        raise InputError(f"{what} {path}: expected a .npy file, found no such file")
    if path.is_dir():
        raise InputError(f"{what} {path}: expected a .npy file, found a directory")
    with open(path, "rb") as f:
        head = f.read(6)
        if head != b"\x93NUMPY":
            raise InputError(
                f"{what} {path}: expected a .npy file (written by numpy.save), found a file "
                f"starting with {head!r}; save the array with numpy.save"
            )
        f.seek(0)
        try:
            version = np.lib.format.read_magic(f)
            read = (
                np.lib.format.read_array_header_1_0
                if version == (1, 0)
                else np.lib.format.read_array_header_2_0
            )
            shape, _, dtype = read(f)
        except (ValueError, OSError, EOFError, SyntaxError, UnicodeDecodeError) as err:
            raise InputError(f"{what} {path}: damaged .npy header ({err})") from err
    if dtype.hasobject or not (np.issubdtype(dtype, np.number) or np.issubdtype(dtype, np.bool_)):
        raise InputError(
            f"{what} {path}: expected a numeric array, found dtype {dtype} with shape {shape}; "
            "save it as a float array (e.g. numpy.save(path, x.astype(numpy.float32)))"
        )
    try:
        return np.load(path, mmap_mode="r" if mmap else None, allow_pickle=False)
    except (ValueError, OSError, EOFError) as err:
        raise InputError(
            f"{what} {path}: expected {int(np.prod(shape))} values of {dtype} (shape {shape}), "
            "found a shorter file: it is truncated; write it again"
        ) from err
