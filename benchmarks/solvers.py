"""Batched lasso: jaxsae's solvers against jaxopt, scikit-learn, SPAMS and celer.

    python benchmarks/solvers.py [--quick] [--core] [--points D,F,B ...] [--budget SECONDS]

Problems: ``make_lasso_problem`` (unit-norm Gaussian dictionary, 5–20 active atoms per input,
20 dB noise, ``λ = 0.1·median‖W x‖∞``) on the grid ``D ∈ {64, 256}``, ``F ∈ {4D, 16D}``,
``B ∈ {1024, 8192}`` (``--quick``: the smallest point only).

Accuracy: every method must reach a *true* relative objective gap ``max_b (F(c_b) − F*_b)/F*_b
≤ 1e-6``, measured in float64 against a reference from jaxsae's float64 solver certified by its
duality gap (≤ 1e-13). How each method is brought there (calibrated once, untimed):

* jaxsae default (``solve_lasso``, float32: batched homotopy (LARS-lasso) path, Newton-refined
  and certified in float64, then FISTA + gradient restart + support polish for any sample it
  does not certify): ``tol=1e-6`` on the certified relative duality gap. Its "iterations" are
  the kinks of the longest path plus the FISTA iterations.
* jaxsae FISTA (± restart) and ISTA, float32, ``polish=False``: the float32 duality gap cannot
  certify 1e-6, so the iteration count is calibrated: the smallest multiple of 10 whose codes
  reach the target (from a float32 trace), then the while-loop solver runs exactly that many
  iterations (``tol=0``; gap checks included in the time).
* jaxopt ``ProximalGradient`` (float32, ``vmap`` over inputs, ``prox_lasso``), accelerated or
  not, with its default line search or a fixed step ``1/L``: its ``tol`` (fixed-point residual)
  is lowered by decades from 1e-3 until the target is met.
* scikit-learn ``sparse_encode`` (float64, ``n_jobs=2``): ``lasso_cd`` (its internal tolerance)
  and ``lasso_lars`` (exact homotopy).
* SPAMS ``lasso`` (``spams-bin``, LARS, float64, 2 threads) and celer ``Lasso`` (one fit per
  input, ``alpha = λ/D``, ``tol=1e-10``), when installed.

SAE-scale points (``--sae``): dictionaries the size of real SAE decoders, ``D320 F10240 B4096``,
``D1280 F10240 B1024`` and ``D1280 F40960 B1024``, signed and non-negative, at about 50 and about
200 non-zeros per code (``sae_problem``: each input mixes ``k`` random unit-norm atoms, with
non-negative weights for the non-negative problems, plus 20 dB noise; ``λ`` a fixed fraction of
the mean ``‖W x‖∞``). Only the jaxsae default and SPAMS (float64, ``pos=True`` for the
non-negative problems) run there: jaxsae's first call (compilation included) is timed apart,
then both alternate (``--rounds``, default one; medians; SPAMS compiles nothing, so it gets no
warm-up); both are checked by the float64 relative duality gap of their codes (``≤ 1e-6``).
``--compile-cache DIR`` keeps the compiled code in JAX's persistent cache, as ``jaxsae solve``
does: run the same command twice, and the second run's first calls show what a user's later
runs pay.
The process's peak RSS is printed after jaxsae's runs, before SPAMS runs (SPAMS precomputes
the ``F × F`` Gram matrix below 50,000 atoms: 13 GB at ``F = 40,960``, so ``--no-spams-above F``
skips it there).

A method whose calibration or warm-up call exceeds ``--budget`` seconds is reported
``> budget``. Times are medians over rounds that alternate methods, after a warm-up, including
``block_until_ready``. ``ratio`` is time / the jaxsae default's time. The last line gives the
fraction of this machine's measured JAX float32 matmul GFLOP/s that plain FISTA iterations reach
(``4·B·D·F`` flops per iteration, direct form).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import jax  # noqa: E402
from _common import fmt_time, machine_line, matmul_gflops, time_once, time_rounds  # noqa: E402

jax.config.update("jax_enable_x64", True)
import jax.numpy as jnp  # noqa: E402

from jaxsae.bench import make_lasso_problem  # noqa: E402
from jaxsae.kernels.lasso import duality_gap, lasso_objective, lipschitz_constant  # noqa: E402
from jaxsae.kernels.solvers import fista, fista_trace, ista, ista_trace, solve_lasso  # noqa: E402

TARGET = 1e-6
DEFAULT = "jaxsae default (homotopy, then FISTA+restart+polish)"
GRID = [(D, F, B) for D in (64, 256) for F in (4 * D, 16 * D) for B in (1024, 8192)]


def true_gap(X64, W64, reg, codes, f_star):
    codes = getattr(codes, "codes", codes)
    f = np.asarray(lasso_objective(X64, W64, np.asarray(codes, np.float64), reg))
    return float(np.max((f - f_star) / f_star))


def calibrate_steps(trace_fn, X, W, reg, X64, W64, f_star, start=10, limit=20000):
    """Smallest multiple of 10 whose iterate meets the target (doubling search on a trace)."""
    n = start
    while n <= limit:
        tr = trace_fn(X, W, reg, num_steps=n)
        objs = np.asarray(tr.objective, np.float64)
        ok = np.all((objs - f_star[None, :]) <= 0.5 * TARGET * f_star[None, :], axis=1)
        if ok[-1]:
            k = int(np.argmax(ok))
            k = ((k + 9) // 10) * 10
            while k <= n:  # confirm on the true float64 objective, step by 10
                codes = trace_fn(X, W, reg, num_steps=k).codes
                if true_gap(X64, W64, reg, codes, f_star) <= TARGET:
                    return k
                k += 10
        n *= 2
    return None


def jaxopt_solver(W, reg, accel, fixed_step, tol, maxiter=20000):
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        from jaxopt import ProximalGradient
        from jaxopt.prox import prox_lasso

    def fun(c, x):
        r = x - c @ W
        return 0.5 * jnp.sum(r * r)

    step = 1 / float(lipschitz_constant(W)) if fixed_step else 0.0
    pg = ProximalGradient(
        fun=fun,
        prox=prox_lasso,
        stepsize=step,
        maxiter=maxiter,
        tol=tol,
        acceleration=accel,
        jit=True,
    )

    @jax.jit
    def solve(X):
        c0 = jnp.zeros((W.shape[0],), X.dtype)
        return jax.vmap(lambda x: pg.run(c0, hyperparams_prox=reg, x=x).params)(X)

    return solve


def run_point(D, F, B, budget, seed=0, core=False):
    X64, W64, reg = make_lasso_problem(seed, B, D, F)
    X, W = X64.astype(np.float32), W64.astype(np.float32)
    Xj, Wj = jnp.asarray(X), jnp.asarray(W)
    print(f"\n## D={D}, F={F}, B={B}, λ={reg:.4f} (seed {seed})")
    t0 = time.perf_counter()
    ref = fista(X64, W64, reg, tol=1e-13, max_steps=200_000)
    f_star = np.asarray(ref.objective)
    print(
        f"reference: float64, {int(ref.num_steps)} iterations, certified "
        f"{float(np.max(np.asarray(ref.gap) / f_star)):.1e}, {time.perf_counter() - t0:.1f} s"
    )

    methods, iters, notes = {}, {}, {}

    def add(name, fn, n_iter=None, keep=False):
        t = time_once(fn)  # warm-up (compilation)
        if t > budget and not keep:
            methods[name] = None
            notes[name] = f"warm-up {t:.0f} s"
            return
        methods[name] = fn
        iters[name] = n_iter

    # jaxsae default
    def jx_default():
        return solve_lasso(Xj, Wj, reg, tol=TARGET, max_steps=20000)

    add(DEFAULT, jx_default, keep=True)  # the baseline
    sol = jx_default()
    iters[DEFAULT] = int(sol.num_steps)

    # jaxsae FISTA / ISTA with calibrated iteration counts
    cal = {
        "jaxsae FISTA": (lambda *a, **k: fista_trace(*a, **k), dict(restart=None)),
        "jaxsae FISTA+restart": (
            lambda *a, **k: fista_trace(*a, restart="gradient", **k),
            dict(restart="gradient"),
        ),
        "jaxsae ISTA": (lambda *a, **k: ista_trace(*a, **k), None),
    }
    for name, (trace_fn, opts) in ({} if core else cal).items():
        t0 = time.perf_counter()
        k = calibrate_steps(trace_fn, Xj, Wj, reg, X64, W64, f_star)
        if k is None or time.perf_counter() - t0 > 4 * budget:
            methods[name], notes[name] = None, "not calibrated"
            continue
        if opts is None:

            def fn(k=k):
                return ista(Xj, Wj, reg, tol=0.0, max_steps=k)
        else:

            def fn(k=k, o=opts):
                return fista(Xj, Wj, reg, tol=0.0, max_steps=k, polish=False, **o)

        add(name, fn, k)

    # jaxopt
    try:
        for accel in (True,) if core else (True, False):
            for fixed in (True, False):
                name = f"jaxopt {'FISTA' if accel else 'ISTA'} {'1/L' if fixed else 'linesearch'}"
                chosen = None
                for tol in (1e-3, 1e-4, 1e-5, 1e-6, 1e-7):
                    solve = jaxopt_solver(Wj, reg, accel, fixed, tol)
                    t = time_once(lambda s=solve: s(Xj))
                    if t > budget:
                        break
                    if true_gap(X64, W64, reg, solve(Xj), f_star) <= TARGET:
                        chosen = solve
                        break
                if chosen is None:
                    methods[name], notes[name] = None, "target not met within budget"
                else:
                    methods[name] = lambda s=chosen: s(Xj)
                    notes[name] = f"tol {tol:g}"
    except ImportError:
        pass

    # scikit-learn
    from sklearn.decomposition import sparse_encode

    for algo in ("lasso_cd",) if core else ("lasso_cd", "lasso_lars"):
        add(
            f"sklearn {algo} f64",
            lambda a=algo: sparse_encode(X64, W64, algorithm=a, alpha=reg, n_jobs=2),
        )

    # SPAMS
    try:
        import spams

        Xf, Df = np.asfortranarray(X64.T), np.asfortranarray(W64.T)
        add(
            "SPAMS lasso (LARS) f64",
            lambda: spams.lasso(Xf, D=Df, lambda1=reg, mode=2, numThreads=2).T.toarray(),
        )
    except ImportError:
        notes["SPAMS"] = "not installed"

    # celer
    try:
        if core:
            raise ImportError
        import warnings

        from celer import Lasso as CelerLasso

        def celer_all():
            out = np.zeros((B, F))
            model = CelerLasso(alpha=reg / D, fit_intercept=False, tol=1e-10)
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                for b in range(B):
                    out[b] = model.fit(W64.T, X64[b]).coef_
            return out

        add("celer f64 (per input)", celer_all)
    except ImportError:
        pass

    live = {k: v for k, v in methods.items() if v is not None}
    times = time_rounds(live, rounds=3, warmup=0, budget_s=budget)
    base = times[DEFAULT]
    rows = []
    print("| method | time | ratio to jaxsae default | iterations | max rel. gap | note |")
    print("| --- | --- | --- | --- | --- | --- |")
    for name in methods:
        if methods[name] is None:
            print(f"| {name} | > budget | — | — | — | {notes.get(name, '')} |")
            continue
        t = times[name]
        gap = true_gap(X64, W64, reg, methods[name](), f_star)
        it = iters.get(name)
        print(
            f"| {name} | {fmt_time(t, budget)} | {t / base:.2f}× | {it if it else '—'} | "
            f"{gap:.1e} | {notes.get(name, '')} |"
        )
        rows.append((name, t, gap))
    # matmul throughput of plain FISTA iterations
    k = iters.get("jaxsae FISTA")
    if k and methods.get("jaxsae FISTA") is not None:
        per_iter = times["jaxsae FISTA"] / k
        gflops = 4 * B * D * F / per_iter / 1e9
        print(f"plain FISTA: {gflops:.1f} GFLOP/s per iteration (4·B·D·F flops)")
    return rows, times, iters


# (D, F, B, atoms mixed per input, λ fraction): about 50 and about 200 non-zeros per code
# (mean L0 of SPAMS's codes on 128 inputs, signed / non-negative: D320 L50 57 / 44, D320 L200
# 201 / 171, D1280 F10240 L200 202 / 166; D1280 L50 interpolated between 23 at 30 atoms and 45 at
# 60; the F = 40,960 points use the D1280 F10240 mixes, their L0 not checked)
SAE_POINTS = {
    "D320F10240B4096-L50": (320, 10240, 4096, 38, 0.12),
    "D320F10240B4096-L200": (320, 10240, 4096, 75, 0.09),
    "D1280F10240B1024-L50": (1280, 10240, 1024, 66, 0.12),
    "D1280F10240B1024-L200": (1280, 10240, 1024, 150, 0.06),
    "D1280F40960B1024-L50": (1280, 40960, 1024, 66, 0.12),
    "D1280F40960B1024-L200": (1280, 40960, 1024, 150, 0.06),
}


def sae_problem(seed, B, D, F, k, reg_frac, nonneg):
    """``(X (B, D), W (F, D), λ)`` float32: inputs mixing ``k`` random unit-norm atoms
    (non-negative weights if ``nonneg``) plus 20 dB noise; ``λ = reg_frac · mean‖W x‖∞``."""
    rng = np.random.default_rng(seed)
    W = rng.standard_normal((F, D), dtype=np.float32)
    W /= np.linalg.norm(W, axis=1, keepdims=True)
    idx = np.stack([rng.choice(F, k, replace=False) for _ in range(B)])
    w = rng.standard_normal((B, k)).astype(np.float32)
    w = np.abs(w) if nonneg else w
    X = np.einsum("bk,bkd->bd", w, W[idx])
    noise = rng.standard_normal((B, D)).astype(np.float32)
    noise *= np.linalg.norm(X, axis=1, keepdims=True) / np.linalg.norm(noise, axis=1, keepdims=True)
    X += noise * 10 ** (-20 / 20)
    G = X @ W.T
    peak = np.max(np.maximum(G, 0) if nonneg else np.abs(G), axis=1)
    return X, W, reg_frac * float(np.mean(peak))


def peak_rss_gb() -> float:
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20


def max_rel_gap64(X, W, reg, codes, nonneg):
    """Largest float64 relative duality gap of ``codes`` (blocks of 256 rows)."""
    worst = 0.0
    W64 = np.asarray(W, np.float64)
    for s in range(0, X.shape[0], 256):
        C = np.asarray(codes[s : s + 256], np.float64)
        Xs = np.asarray(X[s : s + 256], np.float64)
        rel = duality_gap(Xs, W64, C, reg, nonneg=nonneg, relative=True)
        worst = max(worst, float(np.max(np.asarray(rel))))
    return worst


def _timed(fn):
    """``(seconds, result)`` of one call, ``block_until_ready`` included."""
    t0 = time.perf_counter()
    out = jax.block_until_ready(fn())
    return time.perf_counter() - t0, out


def alternate_point(D, F, B, rounds, seed=0):
    """jaxsae's default solver and SPAMS alternating ``rounds`` times on one grid point
    (``time_rounds``: medians, after two warm-up calls of each): their ratio with less of the
    machine's drift than the grid's runs of one method after another."""
    import spams

    X64, W64, reg = make_lasso_problem(seed, B, D, F)
    Xj, Wj = jnp.asarray(X64.astype(np.float32)), jnp.asarray(W64.astype(np.float32))
    Xf, Df = np.asfortranarray(X64.T), np.asfortranarray(W64.T)
    fns = {
        "jaxsae": lambda: solve_lasso(Xj, Wj, reg, tol=TARGET, max_steps=20000),
        "SPAMS": lambda: spams.lasso(Xf, D=Df, lambda1=reg, mode=2, numThreads=2),
    }
    times = time_rounds(fns, rounds=rounds, warmup=2)
    jx, sp = times["jaxsae"], times["SPAMS"]
    print(f"| D{D} F{F} B{B} | {fmt_time(jx)} | {fmt_time(sp)} | {sp / jx:.2f}× |", flush=True)


def run_sae_point(name, nonneg, spams_max_f, batch=None, rounds=1):
    """One SAE-scale point: jaxsae's first call (compilation included), then ``rounds`` rounds
    alternating jaxsae and SPAMS (medians); the gaps are those of the last round's codes (SPAMS
    has no warm-up to exclude, so it runs only in the timed rounds)."""
    D, n_atoms, B, k, frac = SAE_POINTS[name]
    B = batch or B
    X, W, reg = sae_problem(0, B, D, n_atoms, k, frac, nonneg)
    Xj, Wj = jnp.asarray(X), jnp.asarray(W)
    label = f"{name} {'nonneg' if nonneg else 'signed'}" + (f" (B {B})" if batch else "")

    def jx():
        return solve_lasso(Xj, Wj, reg, nonneg=nonneg, tol=TARGET, max_steps=20000)

    fns = {"jaxsae": jx}
    if n_atoms <= spams_max_f:
        import spams

        Xf = np.asfortranarray(X.T.astype(np.float64))
        Df = np.asfortranarray(W.T.astype(np.float64))

        def sp():
            return spams.lasso(Xf, D=Df, lambda1=reg, mode=2, numThreads=-1, pos=nonneg)

        fns["SPAMS"] = sp
    first, _ = _timed(jx)
    times, outs, rss = {n: [] for n in fns}, {}, None
    for _ in range(rounds):
        for n, fn in fns.items():
            t, outs[n] = _timed(fn)
            times[n].append(t)
            if n == "jaxsae" and rss is None:
                rss = peak_rss_gb()  # after jaxsae's runs, before any SPAMS run
    med = {n: float(np.median(v)) for n, v in times.items()}
    codes = np.asarray(outs["jaxsae"].codes)
    l0 = float(np.mean(np.sum(codes != 0, axis=1)))
    gap_j = max_rel_gap64(X, W, reg, codes, nonneg)
    line = f"| {label} | {l0:.0f} | {fmt_time(med['jaxsae'])} (first {fmt_time(first)}) | "
    if "SPAMS" in fns:
        gap_s = max_rel_gap64(X, W, reg, outs["SPAMS"].T.toarray(), nonneg)
        line += f"{fmt_time(med['SPAMS'])} | {med['SPAMS'] / med['jaxsae']:.2f}× | "
        line += f"{gap_j:.1e} / {gap_s:.1e} | {rss:.2f} GB |"
    else:
        line += f"not run (F > {spams_max_f}) | — | {gap_j:.1e} / — | {rss:.2f} GB |"
    print(line, flush=True)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="smallest grid point only")
    parser.add_argument("--points", nargs="*", default=None, help="grid points D,F,B")
    parser.add_argument("--budget", type=float, default=60.0, help="seconds per method run")
    parser.add_argument(
        "--core",
        action="store_true",
        help="only the default solver, jaxopt FISTA, lasso_cd and SPAMS",
    )
    parser.add_argument(
        "--sae",
        nargs="*",
        default=None,
        metavar="POINT",
        help=f"SAE-scale points instead of the grid (default all: {', '.join(SAE_POINTS)})",
    )
    parser.add_argument(
        "--sign",
        choices=("both", "signed", "nonneg"),
        default="both",
        help="SAE-scale points: signed, non-negative or both",
    )
    parser.add_argument(
        "--no-spams-above",
        type=int,
        default=20480,
        metavar="F",
        help="SAE-scale points: skip SPAMS for dictionaries larger than F atoms",
    )
    parser.add_argument(
        "--batch", type=int, default=None, help="SAE-scale points: this many inputs instead"
    )
    parser.add_argument(
        "--rounds", type=int, default=1, help="SAE-scale points: timed rounds (median)"
    )
    parser.add_argument(
        "--alternate",
        type=int,
        default=None,
        metavar="ROUNDS",
        help="grid points: only the default solver and SPAMS, alternating ROUNDS times (medians)",
    )
    parser.add_argument(
        "--compile-cache",
        default=None,
        metavar="DIR",
        help="keep compiled code in JAX's persistent cache at DIR, as `jaxsae solve` does (run "
        "the command twice: the second run's first calls read the cache)",
    )
    args = parser.parse_args()
    if args.compile_cache:
        from jaxsae.solve_cli import enable_compile_cache

        enable_compile_cache(Path(args.compile_cache))
    if args.sae is not None:
        print(machine_line())
        print(
            "| point | L0 | jaxsae default | SPAMS f64 | SPAMS / jaxsae | max rel. gap "
            "(jaxsae / SPAMS) | peak RSS after jaxsae |"
        )
        print("| --- | --- | --- | --- | --- | --- | --- |")
        signs = {"both": (False, True), "signed": (False,), "nonneg": (True,)}[args.sign]
        for name in args.sae or SAE_POINTS:
            for nonneg in signs:
                run_sae_point(name, nonneg, args.no_spams_above, args.batch, args.rounds)
        return
    if args.points:
        grid = [tuple(int(v) for v in p.split(",")) for p in args.points]
    else:
        grid = GRID[:1] if args.quick else GRID
    print(machine_line())
    if args.alternate:
        print("| grid point | jaxsae default | SPAMS LARS (float64) | SPAMS / jaxsae |")
        print("| --- | --- | --- | --- |")
        for D, F, B in grid:
            alternate_point(D, F, B, args.alternate)
        return
    peak = matmul_gflops(1024)
    print(f"matmul float32 GFLOP/s: numpy {peak['numpy']:.1f}, jax {peak['jax']:.1f}")
    for D, F, B in grid:
        run_point(D, F, B, args.budget, core=args.core)
    peak = matmul_gflops(1024)
    print(f"\nmatmul float32 GFLOP/s (again): numpy {peak['numpy']:.1f}, jax {peak['jax']:.1f}")


if __name__ == "__main__":
    main()
