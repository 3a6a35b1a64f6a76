"""``jaxsae solve``: lasso codes for a ``.npy`` of inputs on a ``.npy`` dictionary.

    jaxsae solve inputs.npy dictionary.npy --reg 0.1 -o codes.npy

``inputs.npy`` is ``(B, D)``, ``dictionary.npy`` is ``(F, D)`` (row ``i`` = atom ``i``, the
layout of an SAE's ``W_dec``); ``codes.npy`` gets ``(B, F)`` codes of
``min_c ½‖x − c W‖² + λ‖c‖₁`` (with ``--nonneg``: ``c ≥ 0``). Inputs are solved in blocks of
``--batch-size`` rows (the last block zero-padded, so one compilation serves all).

Compiled solvers are kept across runs in JAX's persistent compilation cache, so that only the
first run on a machine (per problem shape) pays the compilation (tens of seconds for large
batches). The cache lives in ``$XDG_CACHE_HOME/jaxsae/jax`` (default ``~/.cache/jaxsae/jax``);
``--compile-cache DIR`` or the environment variable ``JAXSAE_COMPILE_CACHE=DIR`` moves it, and
``--compile-cache off`` (or ``JAXSAE_COMPILE_CACHE=off``) turns it off.
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

from jaxsae.errors import positive_int

HELP = "solve lasso sparse-coding problems: codes for a .npy of inputs on a .npy dictionary"


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("inputs", help="(B, D) inputs, a .npy file")
    parser.add_argument("dictionary", help="(F, D) dictionary, a .npy file (row i = atom i)")
    parser.add_argument("--reg", type=float, required=True, help="λ ≥ 0, the L1 weight")
    parser.add_argument("-o", "--out", required=True, help="where to write the (B, F) codes .npy")
    parser.add_argument("--nonneg", action="store_true", help="constrain the codes to be ≥ 0")
    parser.add_argument(
        "--method",
        choices=("fista", "ista"),
        default="fista",
        help="solver (default fista: with gradient restart and support polish)",
    )
    parser.add_argument(
        "--max-steps", type=positive_int, default=1000, help="most iterations per block"
    )
    parser.add_argument(
        "--tol",
        type=float,
        default=None,
        help="relative duality gap to reach (default 1e-6 in float64, 1e-4 in float32)",
    )
    parser.add_argument("--batch-size", type=positive_int, default=4096, help="rows solved at once")
    parser.add_argument("--float64", action="store_true", help="solve in float64")
    parser.add_argument(
        "--compile-cache",
        default=None,
        metavar="DIR",
        help=f"JAX persistent compilation cache directory, or 'off' (default ${CACHE_ENV}, else "
        "$XDG_CACHE_HOME/jaxsae/jax)",
    )


CACHE_ENV = "JAXSAE_COMPILE_CACHE"
_OFF = ("", "0", "off", "none", "false")


def compile_cache_dir(option: str | None) -> Path | None:
    """The persistent compilation cache directory: ``option``, else ``$JAXSAE_COMPILE_CACHE``,
    else ``$XDG_CACHE_HOME/jaxsae/jax`` (``~/.cache`` without it); None when turned off."""
    value = option if option is not None else os.environ.get(CACHE_ENV)
    if value is None:
        base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
        return Path(base) / "jaxsae" / "jax"
    return None if value.strip().lower() in _OFF else Path(value).expanduser()


def enable_compile_cache(path: Path) -> None:
    """Keep every compiled executable of this process in JAX's persistent cache at ``path``."""
    import jax

    path.mkdir(parents=True, exist_ok=True)
    jax.config.update("jax_compilation_cache_dir", str(path))
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
    jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)


def load_solve_inputs(inputs: str, dictionary: str, out: str, dtype: type) -> tuple:
    """Check ``solve``'s files before any solving: ``(X memmap (B, D), W (F, D) of dtype)``.

    Raises:
      InputError: a missing, non-``.npy``, non-numeric or truncated file, wrong ranks, a ``D``
        mismatch (with both real shapes), non-finite atoms, or an output that cannot be written.
    """
    import numpy as np

    from jaxsae.errors import InputError, check_output_file, load_npy
    from jaxsae.kernels.lasso import check_problem

    check_output_file(out, "-o/--out")
    X = load_npy(inputs, "inputs", mmap=True)
    W = np.asarray(load_npy(dictionary, "dictionary"), dtype)
    if X.ndim != 2 or X.shape[0] == 0:
        raise InputError(f"inputs {inputs}: expected a (B, D) array with B > 0, found {X.shape}")
    if W.ndim != 2 or X.shape[1] != W.shape[1]:
        raise InputError(
            f"inputs {inputs} have shape {X.shape} = (B, D) and dictionary {dictionary} has "
            f"shape {W.shape}: expected a (F, D) dictionary with the inputs' D={X.shape[1]}"
        )
    check_problem(X[:1], W, 0.0)  # the dictionary's values (finite, non-empty)
    return X, W


def run(args: argparse.Namespace) -> int:
    import jax
    import numpy as np
    from tqdm import tqdm

    if args.float64:
        jax.config.update("jax_enable_x64", True)
    cache = compile_cache_dir(args.compile_cache)
    if cache is not None:
        enable_compile_cache(cache)
    from jaxsae.errors import InputError
    from jaxsae.kernels.solvers import fista, ista

    dtype = np.float64 if args.float64 else np.float32
    if not np.isfinite(args.reg) or args.reg < 0:
        raise InputError(f"--reg: expected a finite number >= 0, found {args.reg:g}")
    X, W = load_solve_inputs(args.inputs, args.dictionary, args.out, dtype)
    solve = fista if args.method == "fista" else ista
    B, F = X.shape[0], W.shape[0]
    bs = min(args.batch_size, B)
    codes = np.zeros((B, F), dtype)
    steps, all_conv, worst, obj_sum = 0, True, 0.0, 0.0
    bar = tqdm(range(0, B, bs), desc="solve", unit="block")
    for start in bar:
        block = np.asarray(X[start : start + bs], dtype)
        n = block.shape[0]
        if n < bs:  # pad: zero rows are solved (zero codes) at the first check
            block = np.concatenate([block, np.zeros((bs - n, block.shape[1]), dtype)])
        try:
            sol = solve(
                block, W, args.reg, nonneg=args.nonneg, max_steps=args.max_steps, tol=args.tol
            )
        except ValueError as err:
            bar.close()  # the error goes on its own line, not on the bar's
            raise InputError(f"inputs {args.inputs}, rows {start}..{start + n - 1}: {err}") from err
        codes[start : start + n] = np.asarray(sol.codes)[:n]
        obj = np.asarray(sol.objective)[:n]
        gap = np.asarray(sol.gap)[:n]
        rel = np.where(obj > 0, gap / np.where(obj > 0, obj, 1), 0)
        steps = max(steps, int(sol.num_steps))
        all_conv &= bool(sol.converged)
        worst = max(worst, float(rel.max()))
        obj_sum += float(obj.sum())
    np.save(args.out, codes)
    nnz = float((codes != 0).sum(axis=1).mean())
    print(f"{args.method}: {B} inputs, {F} atoms, λ={args.reg:g}, {dtype.__name__}")
    print(
        f"iterations (most in a block): {steps}, converged: {all_conv}, "
        f"max relative duality gap: {worst:.3g}"
    )
    print(f"mean objective: {obj_sum / B:.6g}, mean active atoms: {nnz:.2f}")
    print(f"codes {codes.shape} written to {args.out}")
    return 0 if all_conv else 1
