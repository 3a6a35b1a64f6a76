"""The public solvers: ``fista``, ``ista``, ``solve_lasso`` and the trace modes."""

from __future__ import annotations

import jax
import jax.numpy as jnp
from jax.typing import ArrayLike

from jaxsae.kernels._checks import check_array, is_concrete
from jaxsae.kernels.lasso import check_problem
from jaxsae.kernels.solvers.common import (
    COMPACT_MIN,
    Form,
    IterOptions,
    Restart,
    Solution,
    SolverTrace,
    default_step,
)
from jaxsae.kernels.solvers.implicit import implicit_codes
from jaxsae.kernels.solvers.pipeline import iterate, solve_from_path
from jaxsae.kernels.solvers.proximal import trace_core

__all__ = [
    "fista",
    "ista",
    "solve_lasso",
    "fista_trace",
    "ista_trace",
    "default_method",
    "default_tol",
]


def _prepare(X, W, reg, init, step_size, lazy: bool = False):
    """Validate; return 2-D arrays, the squeeze flag and the step size (``None`` for the
    default with ``lazy``: ``default_step`` computes it when needed)."""
    X, W, reg, init = check_problem(X, W, reg, init)
    squeeze = X.ndim == 1
    if squeeze:
        X = X[None, :]
        init = None if init is None else init[None, :]
    if init is None:
        init = jnp.zeros((X.shape[0], W.shape[0]), X.dtype)
    if step_size is None:
        if lazy:
            return X, W, reg, init, None, squeeze
        step_size = default_step(W, X.dtype)
    else:
        step_size = check_array("step_size", step_size, ndim=0)
        if is_concrete(step_size) and not float(step_size) > 0:
            raise ValueError(f"step_size: expected a value > 0, found {float(step_size)}")
    return X, W, reg, init, jnp.asarray(step_size, X.dtype), squeeze


def _check_budget(max_steps, tol) -> None:
    if isinstance(max_steps, int) and max_steps < 0:
        raise ValueError(f"max_steps: expected an int >= 0, found {max_steps}")
    if is_concrete(tol) and not float(tol) >= 0:
        raise ValueError(f"tol: expected a relative gap >= 0, found {tol}")


def _options(*, max_support, F: int, D: int, **options) -> IterOptions:
    """The validated static options; ``max_support`` ``None`` -> ``min(64, D, F)``, and at
    most ``F``."""
    if max_support is not None and max_support < 1:
        raise ValueError(f"max_support: expected an int >= 1, found {max_support}")
    k = min(64, D, F) if max_support is None else min(max_support, F)
    return IterOptions(max_support=k, **options)


def default_method(backend: str | None = None) -> str:
    """The method the default solver starts with on ``backend`` (default: JAX's default).

    ``"homotopy"`` on a CPU: the path touches only the active atoms besides one product over
    the dictionary per kink, and a CPU's matmul rate is low enough that doing less work wins
    (10–40× fewer flops than FISTA on the benchmark grid). ``"fista"`` on GPU/TPU: FISTA with
    restart and polish is a sequence of large dense matmuls, which accelerators run near their
    peak, while the path's kinks are many small dependent steps (gathers, rank-one updates)
    that leave them idle. Pass ``homotopy=True``/``False`` to ``fista`` to override.
    """
    backend = jax.default_backend() if backend is None else backend
    return "homotopy" if backend == "cpu" else "fista"


def default_tol(dtype) -> float:
    """Default relative duality gap: ``1e-6`` in float64, ``1e-4`` in lower precision."""
    return 1e-6 if jnp.dtype(dtype) == jnp.float64 else 1e-4


def _solve(X, W, reg, *, opts: dict, max_steps, tol, init, step_size, homotopy=False) -> Solution:
    """The solvers' common body; ``opts``: ``IterOptions``' fields, ``max_support`` possibly
    ``None``."""
    init_given = init is not None
    X, W, reg, init, eta, squeeze = _prepare(X, W, reg, init, step_size, lazy=True)
    F, D = W.shape
    tol = default_tol(X.dtype) if tol is None else tol
    _check_budget(max_steps, tol)
    options = _options(F=F, D=D, **opts)
    sg = jax.lax.stop_gradient
    concrete = all(is_concrete(a) for a in (X, W, reg, init, tol, max_steps))
    concrete = concrete and (eta is None or is_concrete(eta))
    if homotopy is None:  # auto: the default solver, outside jit, from zero, on a CPU
        homotopy = options.polish and not init_given and default_method() == "homotopy"
    homotopy = homotopy and concrete and int(max_steps) > 0 and bool(jnp.all(reg > 0))
    tol_a = jnp.asarray(tol, X.dtype)
    if homotopy:
        sol = solve_from_path(sg(X), sg(W), sg(reg), eta, tol_a, int(max_steps), options)
    else:
        eta = default_step(W, X.dtype) if eta is None else eta
        args = (sg(X), sg(W), sg(reg), sg(init), sg(eta), tol_a)
        compact = concrete and X.shape[0] >= COMPACT_MIN
        sol = iterate(*args, int(max_steps) if compact else max_steps, options, compact=compact)
    codes = implicit_codes(X, W, reg, sol.codes)
    sol = sol._replace(codes=codes)
    if squeeze:
        sol = sol._replace(codes=sol.codes[0], objective=sol.objective[0], gap=sol.gap[0])
    return sol


def fista(
    X: ArrayLike,
    W: ArrayLike,
    reg: ArrayLike,
    *,
    nonneg: bool = False,
    max_steps: int = 1000,
    tol: float | None = None,
    init: ArrayLike | None = None,
    step_size: ArrayLike | None = None,
    restart: Restart = "gradient",
    polish: bool = True,
    max_support: int | None = None,
    check_every: int = 10,
    form: Form = "auto",
    homotopy: bool | None = None,
) -> Solution:
    """Solve the batched lasso ``min_C ½‖X − C W‖² + Σ_i λ_i |C_{·i}|`` by FISTA.

    Args:
      X: ``(B, D)`` inputs, or ``(D,)`` for one.
      W: ``(F, D)`` dictionary, row ``i`` = atom ``i`` (the layout of an SAE's ``W_dec``).
      reg: ``λ ≥ 0``, a scalar or ``(F,)`` per atom.
      nonneg: constrain the codes to ``C ≥ 0``.
      max_steps: the most iterations.
      tol: stop when every sample's *relative* duality gap ``gap / P(c)`` is ``≤ tol`` (a
        certificate: ``P(c) − P* ≤ tol · P(c)``). Default ``1e-6`` in float64 and ``1e-4`` in
        float32 (the float32 gap cannot certify much below ~1e-6). With ``reg = 0`` the gap is
        not defined (see ``duality_gap``): the solver runs ``max_steps``.
      init: ``(B, F)`` warm start (default zeros).
      step_size: ``η``; default ``1 / lipschitz_constant(W)``.
      restart: adaptive restart of the momentum, per sample: ``"gradient"`` (restart when
        ``⟨Y_k − C_{k+1}, C_{k+1} − C_k⟩ > 0``), ``"function"`` (when the objective goes up) or
        ``None`` (plain FISTA).
      polish: at each check, try an exact solve on each sample's support, kept only where the
        duality gap certifies it (see the module docstring).
      max_support: the largest support polished (default ``min(64, D, F)``); a sample with a
        larger support is left to the iterations.
      check_every: iterations between two duality-gap checks (``num_steps`` is a multiple of it,
        or ``max_steps``).
      form: ``"direct"`` (``C W``, ``Wᵀ`` products), ``"gram"`` (``G = W Wᵀ``) or ``"auto"``
        (Gram iff ``F < 2D``).
      homotopy: follow each sample's lasso path from zero first and iterate only for the
        samples it does not certify (see the module docstring). ``None`` (default): on when
        ``polish`` is, ``init`` is not given, the call is not traced (``jit``/``vmap``),
        every ``λ_i > 0`` and JAX's default backend is a CPU (``default_method``: on GPU/TPU
        the dense FISTA path is the default). ``True`` forces it with ``init`` too (the path
        starts from zero); traced calls, ``max_steps=0`` and a zero ``λ_i`` always use the
        iterations alone.

    Returns:
      ``Solution(codes (B, F), num_steps, converged, objective (B,), gap (B,))``; see
      ``Solution``. ``codes`` is differentiable (reverse mode, implicit differentiation).

    Raises:
      ValueError: bad ranks or shapes, ``λ < 0``, non-finite inputs, empty batch, bad options.

    Examples:
      >>> sol = fista(X, params.W_dec, 0.1, nonneg=True)
      >>> sol.codes.shape, bool(sol.converged)
    """
    opts = dict(
        accel=True,
        restart=restart,
        nonneg=nonneg,
        form=form,
        check_every=check_every,
        polish=polish,
        max_support=max_support,
    )
    return _solve(
        X,
        W,
        reg,
        opts=opts,
        max_steps=max_steps,
        tol=tol,
        init=init,
        step_size=step_size,
        homotopy=homotopy,
    )


def ista(
    X: ArrayLike,
    W: ArrayLike,
    reg: ArrayLike,
    *,
    nonneg: bool = False,
    max_steps: int = 1000,
    tol: float | None = None,
    init: ArrayLike | None = None,
    step_size: ArrayLike | None = None,
    polish: bool = False,
    max_support: int | None = None,
    check_every: int = 10,
    form: Form = "auto",
) -> Solution:
    """Solve the batched lasso by ISTA (proximal gradient without momentum).

    Same problem, arguments and result as ``fista`` (no ``restart``; ``polish`` off by default,
    so that it is the textbook algorithm).
    """
    opts = dict(
        accel=False,
        restart=None,
        nonneg=nonneg,
        form=form,
        check_every=check_every,
        polish=polish,
        max_support=max_support,
    )
    return _solve(
        X, W, reg, opts=opts, max_steps=max_steps, tol=tol, init=init, step_size=step_size
    )


def solve_lasso(
    X: ArrayLike, W: ArrayLike, reg: ArrayLike, *, nonneg: bool = False, **options
) -> Solution:
    """The recommended solver: ``fista`` with its defaults (gradient restart, support polish).

    Same arguments and result as ``fista``. For a certified relative duality gap of 1e-6 with
    float32 inputs, enable x64 (the polish and its certificate then run in float64) and pass
    ``tol=1e-6``; the float32 default ``tol=1e-4`` needs neither.
    """
    return fista(X, W, reg, nonneg=nonneg, **options)


def _trace(X, W, reg, *, num_steps, accel, nonneg, init, step_size, restart, form):
    if not isinstance(num_steps, int) or num_steps < 0:
        raise ValueError(f"num_steps: expected an int >= 0, found {num_steps!r}")
    opts = IterOptions(accel=accel, restart=restart, nonneg=nonneg, form=form)
    X, W, reg, init, eta, squeeze = _prepare(X, W, reg, init, step_size)
    out = trace_core(X, W, reg, init, eta, num_steps=num_steps, opts=opts)
    if squeeze:
        out = SolverTrace(codes=out.codes[0], objective=out.objective[:, 0])
    return out


def fista_trace(
    X: ArrayLike,
    W: ArrayLike,
    reg: ArrayLike,
    *,
    num_steps: int,
    nonneg: bool = False,
    init: ArrayLike | None = None,
    step_size: ArrayLike | None = None,
    restart: Restart = None,
    form: Form = "auto",
) -> SolverTrace:
    """FISTA for exactly ``num_steps`` iterations (``lax.scan``), recording the objective.

    For convergence curves and for gradients by unrolling (reverse mode through the scan).
    Arguments as ``fista``; plain FISTA (``restart=None``) by default.

    Returns:
      ``SolverTrace(codes (B, F), objective (num_steps + 1, B))``.
    """
    return _trace(
        X,
        W,
        reg,
        num_steps=num_steps,
        accel=True,
        nonneg=nonneg,
        init=init,
        step_size=step_size,
        restart=restart,
        form=form,
    )


def ista_trace(
    X: ArrayLike,
    W: ArrayLike,
    reg: ArrayLike,
    *,
    num_steps: int,
    nonneg: bool = False,
    init: ArrayLike | None = None,
    step_size: ArrayLike | None = None,
    form: Form = "auto",
) -> SolverTrace:
    """ISTA for exactly ``num_steps`` iterations; see ``fista_trace``."""
    return _trace(
        X,
        W,
        reg,
        num_steps=num_steps,
        accel=False,
        nonneg=nonneg,
        init=init,
        step_size=step_size,
        restart=None,
        form=form,
    )
