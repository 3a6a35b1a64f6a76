"""Batched lasso solvers: homotopy, ISTA and FISTA (restart, support polish), trace mode, gradients.

Every sample ``b`` of ``X (B, D)`` gets its own lasso problem on the shared dictionary
``W (F, D)`` (row ``i`` = atom ``i``, the layout of an SAE's ``W_dec``):

    c_b* = argmin_c ½‖x_b − c W‖² + Σ_i λ_i |c_i|        (``nonneg``: over c ≥ 0)

solved for the whole block at once by proximal gradient with step ``η = 1/L``:

    C_{k+1} = prox_{ηλ}(Y_k − η (Y_k W − X) Wᵀ),    Y_{k+1} = C_{k+1} + β_k (C_{k+1} − C_k)

ISTA has ``β = 0``; FISTA has Beck–Teboulle momentum ``β_k = (t_k − 1)/t_{k+1}``, ``t_{k+1} =
(1 + √(1 + 4t_k²))/2``, with ``t`` per sample, and optionally O'Donoghue–Candès adaptive restart
(``t ← 1`` for a sample whose step goes uphill). One driver serves both (``solve_core``).

The default (``solve_lasso``: ``fista`` with ``polish``, from zero, outside ``jit``) first
follows each sample's lasso path (homotopy / LARS-lasso, Efron et al. 2004; the method of SPAMS
and ``lasso_lars``) from ``c = 0`` down to ``λ``: the solution is piecewise linear in the
penalty, so a sample whose support ends with ``k`` atoms needs about ``k`` kinks, each one
matmul pair over ``F`` (the correlations) where FISTA needs tens to hundreds of iterations.
Samples the path certifies (duality gap ``≤ tol``) are final; the others (active set out of
slots, singular Gram, too many kinks) continue by FISTA from the path's codes
(``solve_from_path``). For dictionaries of at least ``working_set.MIN_ATOMS`` (2,048) atoms the
path first runs on per-sample *working sets* of a few dozen to a few hundred atoms, checked
against the whole dictionary by one product per round (``working_set``; each round continues
the previous round's path from its active set); the samples they do not certify go on to the
iterations.

Which method the default call starts with depends on the backend (``default_method``): the
paths on a CPU, where doing less work wins; FISTA + restart + polish on GPU/TPU, where large
dense matmuls run near peak and the paths' many small dependent steps would leave the device
idle. ``homotopy=True``/``False`` overrides it.

Memory: no ``F × F`` matrix is formed above a budget: 64 MiB (``common.GRAM_BUDGET``) for the
paths over the whole dictionary and the iterations (whose Gram *form* is used only when
``F < 2D``, i.e. ``F² < 2FD``), 32 MiB (``homotopy.CERT_GRAM_BYTES``) for its float64 copy in
the paths' certificates, 1 GiB (``working_set.GRAM_BYTES``) for the working sets' Gram rows,
formed only where it saves work. Peak memory is ``O(F·D + B·F)`` — the dictionary (and a
float64 copy when x64 is on), codes and correlations — plus per sample ``O(K² + K·D)`` of path
state (``K ≤ 128`` slots over the whole dictionary), or ``O(K²)`` for the active set a working
set carries between rounds (``K`` up to 512) and ``O(k·D + K·k)`` while its path runs, in
chunks of samples with ``n·k·D ≤ 2²⁵``.

Modules: ``api`` (the public functions and their checks), ``proximal`` (the ISTA/FISTA driver,
its gap checks and polish, and the trace mode), ``compaction`` (blocks that shrink as samples
finish), ``homotopy`` (the batched path over the whole dictionary), ``working_set`` (paths on
working sets), ``pipeline`` (the default: working sets, path, iterations), ``implicit``
(gradients of the codes), ``common`` (results and shared helpers).

Implementation notes:
  * Homotopy (``homotopy.path_step``): per sample, the active set lives in ``K`` slots with the
    inverse of its Gram matrix ``G_AA⁻¹ (B, K, K)`` and the direction ``d = G_AA⁻¹ (λ s)_A``,
    both updated by rank-one formulas when an atom joins (Schur complement) or leaves; each kink
    costs the correlations' direction ``G_{·A} d``, the sum of the slots' rows of ``G = W Wᵀ``
    (``O(K F)``) when ``G`` fits its budget and ``K ≤ D / 2`` (``D / 4`` for a ``G`` past a
    core's L2 cache), else ``(d W_A) Wᵀ``: the slots' atoms summed, then one product over all
    atoms (``O(K D + F D)``; without ``G`` the Gram row of a joining atom is formed from its
    atoms, ``O(K D)``), and ``O(F + K²)`` per sample. The passes are written for XLA:CPU: the join
    times take one division per atom (``_first_join``), the argmin reduces float32 indices,
    and from 32 to 64 slots the rank-one term of ``G_AA⁻¹`` is formed from materialised factors
    (``_materialize``), which XLA would otherwise recompute for every element.
    Blocks shrink as samples finish and ``K`` doubles (from 16, up to ``min(128, D, F)``) for
    the samples whose support outgrows it (``follow_paths``). The codes of a finished sample get
    one Newton step on their support (undoing the drift of the incremental updates) and are
    certified by the duality gap in float64 when x64 is enabled (``homotopy.path_finish``:
    from ``W x`` and the rows of a float64 ``W Wᵀ``, one product over all atoms per sample
    instead of four, where that Gram matrix is small and the batch large). The blocks of
    samples (parts of a batch, chunks of a round of working sets) run on every core at once
    (``common.map_parts``): a kink's many small XLA:CPU operations leave cores idle.
  * The iteration is written on the products ``C W`` (*direct* form, ``4·B·D·F`` flops per
    iteration) or ``C G`` with ``G = W Wᵀ`` (*Gram* form, ``2·B·F²``); ``form="auto"`` takes the
    cheaper (Gram iff ``F < 2D``). The product of ``Y`` is a linear combination of those of
    ``C_{k+1}`` and ``C_k``, so each iteration does one (Gram) or two (direct) matmuls and the
    objective for function restart comes for free.
  * Stopping is certified: every ``check_every`` iterations the duality gap
    (``jaxsae.kernels.lasso``) of every sample is computed; a sample whose relative gap
    ``gap / P(c) ≤ tol`` is *done* and frozen; the loop ends when all are done or after
    ``max_steps`` iterations.
  * ``polish``: at each check, each sample's current support ``S`` (at most ``max_support``
    atoms) gets one Newton step on the smooth problem restricted to ``S`` with the current signs,
    ``c_S ← c_S + (W_S W_Sᵀ)⁻¹ (W_S r − λ_S sign(c_S))`` — the exact lasso solution once the
    support and signs are right. It is tried on samples whose support did not change since the
    previous check (at most ``max(B/4, COMPACT_MIN)`` of them per check, gathered into a smaller
    block), in float64 when x64 is enabled (a support of 40 atoms in dimension 64 is
    ill-conditioned enough to miss a 1e-6 gap in float32). The polished codes are kept only for
    samples whose duality gap certifies them (``≤ tol``), so the shortcut can never return a
    worse answer.
  * Compaction: a batch of at least ``COMPACT_MIN`` samples (outside ``jit``) is solved in
    blocks of shrinking static size. When at most half of a block is still running, the
    running samples, with their momentum, are gathered into the next power-of-two block and
    continue there (``solve_compacted``): certification waits for the slowest samples, but
    the work then follows the number of samples still running, not ``B``.
  * Gradients: ``lax.while_loop`` is not reverse-differentiable, so ``Solution.codes`` carries a
    ``custom_vjp`` by implicit differentiation of the optimality conditions on the support
    (``implicit_codes``); ``fista_trace``/``ista_trace`` (a fixed-length ``lax.scan``) give
    unrolled gradients. For dictionary learning, ``stop_gradient`` on optimal codes is exact
    (envelope theorem): ``∇_W min_C P = ∇_W P(C*)``.

References:
  B. Efron, T. Hastie, I. Johnstone, R. Tibshirani. Least angle regression. Annals of
  Statistics, 2004. M. Osborne, B. Presnell, B. Turlach. A new approach to variable selection
  in least squares problems. IMA J. Numerical Analysis, 2000.
  A. Beck, M. Teboulle. A fast iterative shrinkage-thresholding algorithm for linear inverse
  problems. SIAM J. Imaging Sciences, 2009.
  B. O'Donoghue, E. Candès. Adaptive restart for accelerated gradient schemes. Found. Comput.
  Math., 2015.
"""

from jaxsae.kernels.solvers.api import (
    default_method,
    default_tol,
    fista,
    fista_trace,
    ista,
    ista_trace,
    solve_lasso,
)
from jaxsae.kernels.solvers.common import Solution, SolverTrace

__all__ = [
    "Solution",
    "SolverTrace",
    "default_method",
    "default_tol",
    "fista",
    "ista",
    "solve_lasso",
    "fista_trace",
    "ista_trace",
]
