"""Where the batched homotopy's time goes, on the grid's smallest dictionary by default.

    python benchmarks/path_profile.py [--point D,F,B] [--kinks] [--timeline] [--scaling]
                                      [--rounds N]

Problem: ``make_lasso_problem(0, B, D, F)`` (as ``benchmarks/solvers.py``), float32, signed.

``--kinks``: one ``homotopy.path_block`` over the first ``n`` samples from the path's start,
exactly ``KINKS`` kinks (no sample stops the block), for blocks of ``n`` samples with ``K``
slots: microseconds per kink, and per kink and sample. What a kink costs as the blocks of the
samples with the longest paths shrink and gain slots.

``--timeline``: whole ``solve_lasso`` calls at ``D,F,B`` with the full path's jitted steps
(``path_init``, ``path_block``, ``_path_take``, ``path_finish``) timed where they are called
(each waits for its result, which the solver does anyway between blocks), per part of the
samples (``pipeline._full_paths`` runs several parts at once): its first block (every sample,
``FIRST_SLOTS`` slots), the blocks after it (the samples whose paths go on), the moves between
blocks, the certificates and the host's own time between those calls. Medians over parts and
rounds, after two warm-up calls.

``--scaling``: one part of the path over the whole dictionary (``homotopy.follow_paths`` on the
first ``PART`` samples, the arguments ``pipeline._full_paths`` gives it) alone, with its CPU
time over wall time, and two parts at once on two threads of one process; then the same part
in one process pinned to one core (``os.sched_setaffinity`` before JAX is imported, so that
XLA:CPU's thread pool has one thread), alone and with a second such process on another core.

Times include ``block_until_ready``; JIT warm-up is excluded.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import select
import statistics
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

PIN = "PATH_PROFILE_CORE"  # a pinned worker's core, set before JAX starts its thread pool
if PIN in os.environ:
    os.sched_setaffinity(0, {int(os.environ[PIN])})

sys.path.insert(0, str(Path(__file__).resolve().parent))

import jax  # noqa: E402

jax.config.update("jax_enable_x64", True)  # the certificates' float64, as the solvers benchmark

import jax.numpy as jnp  # noqa: E402
from _common import machine_line  # noqa: E402

from jaxsae.bench import make_lasso_problem  # noqa: E402
from jaxsae.kernels.solvers import homotopy, pipeline, solve_lasso, working_set  # noqa: E402

KINKS = 10
PART = 512
WAIT_S = 600  # the pinned workers' every wait
TIMED = ("path_init", "path_block", "_path_take", "path_finish")


def problem(D: int, F: int, B: int):
    """``(X (B, D), W (F, D), λ)`` in float32 (NumPy ``λ``)."""
    X64, W64, reg = make_lasso_problem(0, B, D, F)
    return jnp.asarray(X64, jnp.float32), jnp.asarray(W64, jnp.float32), reg


def kink_costs(X, W, reg, sizes, slots, rounds: int) -> dict:
    """``{(n, K): seconds per kink}`` of ``path_block`` from the path's start."""
    r = jnp.full((W.shape[0],), reg, jnp.float32)
    G = homotopy.dictionary_gram(W)
    out = {}
    for K in slots:
        for n in sizes:
            p = homotopy.path_init(X[:n], W, r, K=K, nonneg=False)

            def run(p=p, n=n):
                args = (X[:n], W, G, r, p, np.int32(-1), np.int32(KINKS))
                return jax.block_until_ready(homotopy.path_block(*args, nonneg=False))

            out[n, K] = median_time(run, rounds)[0] / KINKS
    return out


def print_kinks(costs: dict, sizes, slots) -> None:
    print(f"\nper kink, µs (per kink and sample), {KINKS} kinks from the path's start:")
    print("| samples n | " + " | ".join(f"K {K}" for K in slots) + " |")
    print("| --- |" + " --- |" * len(slots))
    for n in sizes:
        cells = [f"{costs[n, K] * 1e6:.0f} ({costs[n, K] * 1e6 / n:.2f})" for K in slots]
        print(f"| {n} | " + " | ".join(cells) + " |")


@contextlib.contextmanager
def recorded(log: list):
    """The full path's jitted steps, and each part (``pipeline.follow_paths``), timed into
    ``log`` as ``(thread, name, start, seconds, info)`` while inside."""
    saved = {name: getattr(homotopy, name) for name in TIMED}
    saved_part = pipeline.follow_paths

    def timed(name, fn):
        def call(*args, **kwargs):
            t0 = time.perf_counter()
            out = jax.block_until_ready(fn(*args, **kwargs))
            info = int(np.asarray(out[1])[0]) if name == "path_block" else None
            log.append((threading.get_ident(), name, t0, time.perf_counter() - t0, info))
            return out

        return call

    try:
        for name, fn in saved.items():
            setattr(homotopy, name, timed(name, fn))
        pipeline.follow_paths = timed("part", saved_part)
        yield
    finally:
        for name, fn in saved.items():
            setattr(homotopy, name, fn)
        pipeline.follow_paths = saved_part


def part_stages(log: list) -> list[dict]:
    """Per part (a ``follow_paths`` call), the seconds of each stage and the kinks."""
    parts = []
    for tid, name, t0, dt, _ in log:
        if name != "part":
            continue
        calls = [e for e in log if e[0] == tid and e[1] in TIMED and t0 <= e[2] <= t0 + dt]
        blocks = [e for e in calls if e[1] == "path_block"]
        sums = {n: sum(e[3] for e in calls if e[1] == n) for n in TIMED}
        parts.append(
            {
                "first block": blocks[0][3],
                "first kinks": blocks[0][4],
                "later blocks": sums["path_block"] - blocks[0][3],
                "blocks": len(blocks) - 1,
                "kinks": blocks[-1][4],
                "moves": sums["_path_take"] + sums["path_init"],
                "certificates": sums["path_finish"],
                "host": dt - sum(sums.values()),
                "part": dt,
            }
        )
    return parts


def timeline(X, W, reg, rounds: int) -> tuple[list[dict], list[float]]:
    """``part_stages`` of ``rounds`` whole solves (after two warm-up calls), and their times."""

    def solve():
        return jax.block_until_ready(solve_lasso(X, W, reg, tol=1e-6, max_steps=20000).codes)

    for _ in range(2):
        solve()
    parts, walls = [], []
    for _ in range(rounds):
        log: list = []
        with recorded(log):
            t0 = time.perf_counter()
            solve()
            walls.append(time.perf_counter() - t0)
        parts += part_stages(log)
    return parts, walls


def print_timeline(parts: list[dict], walls: list[float], n_parts: int) -> None:
    med = {k: statistics.median(p[k] for p in parts) for k in parts[0]}
    print(
        f"\nwhole solve: {statistics.median(walls) * 1e3:.1f} ms (median of {len(walls)}), "
        f"{n_parts} parts per solve; per part, medians (ms):"
    )
    rows = [
        (f"first block ({med['first kinks']:.0f} kinks, every sample)", med["first block"]),
        (f"{med['blocks']:.0f} later blocks (to kink {med['kinks']:.0f})", med["later blocks"]),
        ("moves between blocks (path_init, _path_take)", med["moves"]),
        ("certificates (path_finish)", med["certificates"]),
        ("host between calls", med["host"]),
        ("part", med["part"]),
    ]
    print("| stage | ms |\n| --- | --- |")
    for name, t in rows:
        print(f"| {name} | {t * 1e3:.2f} |")


def part_runner(X, W, reg, B: int):
    """``run(rows)``: the path over the whole dictionary for the samples ``rows``, as one part
    of a solve of ``B`` samples (``pipeline._full_paths``' arguments), waited for."""
    r, G = jnp.full((W.shape[0],), reg, jnp.float32), homotopy.grams(W, B)

    def run(rows):
        limits = pipeline.path_limits(W)
        out = homotopy.follow_paths(X[rows], W, r, 1e-6, nonneg=False, G=G, **limits)
        return jax.block_until_ready(out)

    return run


def median_time(fn, rounds: int) -> tuple[float, float]:
    """Median wall seconds of ``fn()`` over ``rounds`` (after one warm-up call), and the
    process's CPU time over wall time across them."""
    fn()
    walls, cpu0 = [], time.process_time()
    for _ in range(rounds):
        t0 = time.perf_counter()
        fn()
        walls.append(time.perf_counter() - t0)
    return statistics.median(walls), (time.process_time() - cpu0) / sum(walls)


def in_process(X, W, reg, B: int, rounds: int) -> dict:
    """One part alone and two parts at once on two threads (seconds, CPU/wall)."""
    run = part_runner(X, W, reg, B)
    halves = [np.arange(PART), np.arange(PART, 2 * PART)]
    with ThreadPoolExecutor(2) as pool:
        one, cpu_one = median_time(lambda: run(halves[0]), rounds)
        two, cpu_two = median_time(lambda: list(pool.map(run, halves)), rounds)
    return {"one": one, "cpu_one": cpu_one, "two": two, "cpu_two": cpu_two}


def pinned_worker(point: str, rounds: int) -> None:
    """A pinned worker: warm up, say ``ready``, wait for a line on stdin, print the median."""
    D, F, B = (int(v) for v in point.split(","))
    run = part_runner(*problem(D, F, B), B)
    run(np.arange(PART))
    print("ready", flush=True)
    sys.stdin.readline()
    t, _ = median_time(lambda: run(np.arange(PART)), rounds)
    print(json.dumps({"seconds": t}), flush=True)


def pinned(point: str, cores: list[int], rounds: int) -> list[float]:
    """Median seconds of a part in each of ``len(cores)`` processes, one pinned to each core,
    started together."""
    cmd = [sys.executable, __file__, "--point", point, "--rounds", str(rounds), "--pinned"]
    procs = [
        subprocess.Popen(
            cmd,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
            env={**os.environ, PIN: str(c)},
        )
        for c in cores
    ]
    try:
        for p in procs:  # each says "ready" once compiled
            said, _, _ = select.select([p.stdout], [], [], WAIT_S)
            if not said or p.stdout.readline().strip() != "ready":
                raise RuntimeError(f"a pinned worker was not ready within {WAIT_S} s")
        for p in procs:
            p.stdin.write("go\n")
            p.stdin.flush()
        outs = [p.communicate(timeout=WAIT_S)[0] for p in procs]
    finally:
        for p in procs:
            p.kill()
    return [json.loads(o.strip().splitlines()[-1])["seconds"] for o in outs]


def print_scaling(own: dict, alone: list[float], pair: list[float]) -> None:
    print(f"\none part of {PART} samples, ms (two parts at once: the time for both):")
    print("| run | one part alone | two parts at once | speed-up of two |")
    print("| --- | --- | --- | --- |")
    print(
        f"| one process (CPU time / wall: {own['cpu_one']:.2f} alone, {own['cpu_two']:.2f} two) "
        f"| {own['one'] * 1e3:.1f} | {own['two'] * 1e3:.1f} | {2 * own['one'] / own['two']:.2f}× |"
    )
    print(
        f"| processes pinned to a core each | {alone[0] * 1e3:.1f} | "
        f"{max(pair) * 1e3:.1f} (each: {', '.join(f'{t * 1e3:.1f}' for t in pair)}) | "
        f"{2 * alone[0] / max(pair):.2f}× |"
    )


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--point", default="64,256,1024", help="D,F,B (default 64,256,1024)")
    parser.add_argument("--kinks", action="store_true", help="cost of a kink by block and slots")
    parser.add_argument("--timeline", action="store_true", help="stages of whole solves")
    parser.add_argument("--scaling", action="store_true", help="parts at once, threads and cores")
    parser.add_argument("--rounds", type=int, default=7, help="timed rounds (medians)")
    parser.add_argument("--pinned", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.pinned:
        return pinned_worker(args.point, args.rounds)
    D, F, B = (int(v) for v in args.point.split(","))
    both = not (args.kinks or args.timeline or args.scaling)
    if F >= working_set.MIN_ATOMS:
        raise SystemExit(
            f"F = {F}: from F = {working_set.MIN_ATOMS} the default solver uses working sets, "
            "not the path over the whole dictionary this benchmark profiles"
        )
    print(machine_line())
    print(f"D{D} F{F} B{B}, float32, signed")
    X, W, reg = problem(D, F, B)
    if args.kinks or both:
        sizes = [n for n in (8, 64, 128, 256, 512, 1024) if n <= B]
        slots = [k for k in (16, 32, 48, 64) if k <= min(F, D, 128)]
        print_kinks(kink_costs(X, W, reg, sizes, slots, args.rounds), sizes, slots)
    if args.timeline or both:
        parts, walls = timeline(X, W, reg, args.rounds)
        print_timeline(parts, walls, len(parts) // len(walls))
    if args.scaling or both:
        if B < 2 * PART or len(os.sched_getaffinity(0)) < 2:
            raise SystemExit(f"--scaling needs B >= {2 * PART} and two cores")
        own = in_process(X, W, reg, B, args.rounds)
        cores = sorted(os.sched_getaffinity(0))[:2]
        alone = pinned(args.point, cores[:1], args.rounds)
        print_scaling(own, alone, pinned(args.point, cores, args.rounds))


if __name__ == "__main__":
    main()
