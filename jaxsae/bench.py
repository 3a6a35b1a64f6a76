"""``jaxsae bench``: benchmarks that ship with the package.

    jaxsae bench convergence [--out DIR]

``convergence`` compares ISTA, FISTA and FISTA with adaptive restart on a seeded sparse-coding
problem (float64): it plots the objective gap ``F(c_k) − F*`` against the iteration ``k`` on
log–log axes with ``O(1/k)`` and ``O(1/k²)`` reference lines, saves the PNG under ``DIR``
(default ``benchmarks/results/``), and prints the iterations each method needs to reach relative
objective gaps of 1e-3 and 1e-6 — both from the trace (the true gap against a converged
reference) and as the certified stopping step of the solver (duality gap checked every 10
iterations), with the default solver (FISTA + restart + support polish) for comparison.
"""

from __future__ import annotations

import argparse
from pathlib import Path

HELP = "benchmarks: 'convergence' plots ISTA vs FISTA vs FISTA+restart and prints a table"

THRESHOLDS = (1e-3, 1e-6)


def make_lasso_problem(
    seed: int, B: int, D: int, F: int, *, nnz=(5, 20), snr_db=20.0, reg_frac=0.1, dtype="float64"
):
    """A seeded problem ``(X (B, D), W (F, D), λ)`` (NumPy arrays and a float).

    Unit-norm Gaussian atoms; each input is a Gaussian combination of ``nnz`` random atoms plus
    white noise at ``snr_db``; ``λ = reg_frac · median_b ‖W x_b‖∞``.
    """
    import numpy as np

    rng = np.random.default_rng(seed)
    W = rng.standard_normal((F, D))
    W /= np.linalg.norm(W, axis=1, keepdims=True)
    S = np.zeros((B, F))
    for b in range(B):
        k = int(rng.integers(nnz[0], min(nnz[1], F) + 1))
        S[b, rng.choice(F, k, replace=False)] = rng.standard_normal(k)
    X = S @ W
    noise = rng.standard_normal((B, D))
    scale = np.linalg.norm(X, axis=1, keepdims=True) / np.linalg.norm(noise, axis=1, keepdims=True)
    X = X + noise * scale * 10 ** (-snr_db / 20)
    reg = reg_frac * float(np.median(np.max(np.abs(X @ W.T), axis=1)))
    return X.astype(dtype), W.astype(dtype), reg


def _first_below(rel, thr):
    """Iterations until every sample's relative gap is ≤ ``thr`` for good (or None)."""
    import numpy as np

    worst = rel.max(axis=1)
    above = np.nonzero(worst > thr)[0]
    if len(above) == 0:
        return 0
    k = int(above[-1]) + 1
    return k if k < len(worst) else None


def run_convergence(
    out_dir: str | Path = "benchmarks/results",
    *,
    docs_path=None,
    seed: int = 0,
    B: int = 256,
    D: int = 64,
    F: int = 256,
    num_steps: int = 3000,
) -> list[dict]:
    """Run the convergence comparison; save the plot; print and return the table rows."""
    import jax

    jax.config.update("jax_enable_x64", True)
    X, W, reg = make_lasso_problem(seed, B, D, F)
    f_star = _reference_objective(X, W, reg, seed)
    rows, curves = _convergence_rows(X, W, reg, f_star, num_steps)
    paths = [Path(out_dir) / "convergence.png"]
    if docs_path is not None:
        paths.append(Path(docs_path))
    _plot_convergence(curves, f"lasso, D={D}, F={F}, B={B}, λ={reg:.3f}", paths)
    _print_convergence(rows, num_steps)
    print("plot saved to " + ", ".join(str(p) for p in paths))
    return rows


def _reference_objective(X, W, reg: float, seed: int):
    """``F*`` per sample ``(B,)``: FISTA run to a 1e-14 duality gap (the problem is printed)."""
    import numpy as np

    from jaxsae.kernels.lasso import lipschitz_constant
    from jaxsae.kernels.solvers import fista

    (B, D), F = X.shape, W.shape[0]
    L = float(lipschitz_constant(W))
    print(
        f"problem: B={B} inputs, D={D}, F={F} unit-norm Gaussian atoms, 5-20 active + 20 dB "
        f"noise, λ = 0.1·median‖W x‖∞ = {reg:.4f}, L = {L:.3f}, float64, seed {seed}"
    )
    ref = fista(X, W, reg, tol=1e-14, max_steps=100_000)
    f_star = np.asarray(ref.objective)
    print(
        f"reference F*: {int(ref.num_steps)} iterations, max relative duality gap "
        f"{float(np.max(np.asarray(ref.gap) / f_star)):.1e}"
    )
    return f_star


def _convergence_rows(X, W, reg: float, f_star, num_steps: int) -> tuple[list[dict], dict]:
    """Per method, the iterations to each threshold (from the trace and as the solver's
    certified stop), and the batch-total relative gap curve ``(num_steps + 1,)`` of the traced
    methods."""
    import numpy as np

    from jaxsae.kernels.solvers import fista, fista_trace, ista, ista_trace

    traces = {
        "ISTA": ista_trace(X, W, reg, num_steps=num_steps),
        "FISTA": fista_trace(X, W, reg, num_steps=num_steps),
        "FISTA + restart": fista_trace(X, W, reg, num_steps=num_steps, restart="gradient"),
    }
    solvers = {
        "ISTA": lambda tol: ista(X, W, reg, tol=tol, max_steps=20 * num_steps),
        "FISTA": lambda tol: fista(
            X, W, reg, tol=tol, restart=None, polish=False, max_steps=20 * num_steps
        ),
        "FISTA + restart": lambda tol: fista(
            X, W, reg, tol=tol, polish=False, max_steps=20 * num_steps
        ),
        "default (restart + polish)": lambda tol: fista(
            X, W, reg, tol=tol, max_steps=20 * num_steps
        ),
    }
    rows, curves = [], {}
    for name in solvers:
        row = {"method": name}
        if name in traces:
            objs = np.asarray(traces[name].objective)
            rel = np.maximum(objs - f_star[None, :], 0) / f_star[None, :]
            for thr in THRESHOLDS:
                row[f"trace {thr:g}"] = _first_below(rel, thr)
            curves[name] = np.maximum(np.sum(objs - f_star[None, :], axis=1), 1e-300) / np.sum(
                f_star
            )
        for thr in THRESHOLDS:
            sol = solvers[name](thr)
            row[f"solver {thr:g}"] = int(sol.num_steps) if bool(sol.converged) else None
        rows.append(row)
    return rows, curves


def _plot_convergence(curves: dict, title: str, paths: list[Path]) -> None:
    """The gap curves on log–log axes with ``O(1/k)`` and ``O(1/k²)`` lines through ISTA's
    first step, saved at each of ``paths``."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    fig, ax = plt.subplots(figsize=(6, 4.2), dpi=90)
    for name, mean_gap in curves.items():
        k = np.arange(len(mean_gap))
        ax.loglog(k[1:], mean_gap[1:], label=name)
    g1 = curves["ISTA"][1]
    ax.loglog(k[1:], g1 / k[1:], "k:", lw=1, label="O(1/k)")
    ax.loglog(k[1:], g1 / k[1:] ** 2, "k--", lw=1, label="O(1/k²)")
    ax.set_ylim(1e-14, 2 * g1)
    ax.set_xlabel("iteration k")
    ax.set_ylabel("(F(c_k) − F*) / F*  (batch total)")
    ax.set_title(title)
    ax.grid(True, which="major", alpha=0.3)
    ax.legend(fontsize=8, loc="lower left")  # (not "best": a timed search that may warn)
    fig.tight_layout()
    for p in paths:
        p.parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(p)
    plt.close(fig)


def _print_convergence(rows: list[dict], num_steps: int) -> None:
    """The table of iterations, in Markdown, and what its columns mean."""

    def fmt(v):
        return "—" if v is None else str(v)

    head = (
        "| method | iters to 1e-3 (trace) | iters to 1e-6 (trace) | certified stop, tol 1e-3 "
        "| certified stop, tol 1e-6 |"
    )
    print()
    print(head)
    print("| --- | --- | --- | --- | --- |")
    for r in rows:
        print(
            f"| {r['method']} | {fmt(r.get('trace 0.001'))} | {fmt(r.get('trace 1e-06'))} | "
            f"{fmt(r['solver 0.001'])} | {fmt(r['solver 1e-06'])} |"
        )
    print()
    print(
        "trace: first k after which every sample's true relative objective gap (F(c_k) − F*)/F* "
        f"stays below the threshold (— : not within {num_steps}); certified stop: iterations "
        "the while-loop solver runs until every sample's relative duality gap is ≤ tol "
        "(checked every 10 iterations)."
    )


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("which", choices=("convergence",), help="which benchmark to run")
    parser.add_argument("--out", default="benchmarks/results", help="folder for the PNG")
    parser.add_argument("--docs", default=None, help="also save the PNG at this path")
    parser.add_argument("--seed", type=int, default=0)


def run(args: argparse.Namespace) -> int:
    run_convergence(args.out, docs_path=args.docs, seed=args.seed)
    return 0
