"""Types and helpers shared by the solvers: results, option literals, block sizes, step size."""

from __future__ import annotations

import dataclasses
from concurrent.futures import ThreadPoolExecutor
from typing import Literal, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from jaxsae.kernels.lasso import lipschitz_constant

# batches of at least this many samples are compacted as samples finish
COMPACT_MIN = 256

# a dictionary's Gram matrix W Wᵀ is kept only up to this many bytes (64 MiB); above it, Gram
# rows are formed from the atoms that need them
GRAM_BUDGET = 1 << 26

Restart = Literal["gradient", "function"] | None
Form = Literal["auto", "gram", "direct"]


@dataclasses.dataclass(frozen=True)
class IterOptions:
    """Static options of the proximal iterations, validated (hashable: ``jit`` takes it as one
    static argument).

    Attributes:
      accel: FISTA momentum; ``False`` for ISTA.
      restart: adaptive restart of the momentum, ``"gradient"``, ``"function"`` or ``None``
        (always ``None`` without ``accel``).
      nonneg: constrain the codes to ``C ≥ 0``.
      form: ``"direct"`` (``C W``, ``Wᵀ`` products), ``"gram"`` (``G = W Wᵀ``) or ``"auto"``.
      check_every: iterations between two duality-gap checks.
      polish: try an exact solve on each sample's support at each check.
      max_support: the largest support polished.
    """

    accel: bool = True
    restart: Restart = "gradient"
    nonneg: bool = False
    form: Form = "auto"
    check_every: int = 10
    polish: bool = True
    max_support: int = 64

    def __post_init__(self):
        if self.restart not in (None, "gradient", "function"):
            raise ValueError(
                f"restart: expected None, 'gradient' or 'function', found {self.restart!r}"
            )
        if self.form not in ("auto", "gram", "direct"):
            raise ValueError(f"form: expected 'auto', 'gram' or 'direct', found {self.form!r}")
        if self.check_every < 1:
            raise ValueError(f"check_every: expected an int >= 1, found {self.check_every!r}")
        if self.max_support < 1:
            raise ValueError(f"max_support: expected an int >= 1, found {self.max_support!r}")
        if not self.accel:
            object.__setattr__(self, "restart", None)


class Solution(NamedTuple):
    """Result of a batched lasso solve.

    Attributes:
      codes: ``(B, F)`` codes (``(F,)`` for a single input). Differentiable w.r.t. ``X``, ``W``
        and ``reg`` by implicit differentiation (reverse mode).
      num_steps: scalar int, iterations run (the same for the whole batch); with the homotopy,
        the kinks of the longest path plus the FISTA iterations that followed, if any.
      converged: scalar bool, every sample's relative duality gap ``gap / objective ≤ tol``.
      objective: ``(B,)`` per-sample ``½‖x − c W‖² + Σ_i λ_i |c_i|``.
      gap: ``(B,)`` per-sample *absolute* duality gap, a certified bound on
        ``objective − optimum``; the relative gap is ``gap / objective``.
    """

    codes: jax.Array
    num_steps: jax.Array
    converged: jax.Array
    objective: jax.Array
    gap: jax.Array


class SolverTrace(NamedTuple):
    """Result of a fixed-length solve (``fista_trace`` / ``ista_trace``).

    Attributes:
      codes: ``(B, F)`` codes after the last iteration.
      objective: ``(num_steps + 1, B)`` objective of the iterate ``C_k`` for ``k = 0..num_steps``
        (row 0 is the initial point).
    """

    codes: jax.Array
    objective: jax.Array


def bucket(n: int, smallest: int = COMPACT_MIN // 4) -> int:
    """The static block size for ``n`` running samples: a power of two ``≥ n`` and
    ``≥ smallest``."""
    return max(smallest, 1 << max(n - 1, 0).bit_length())


def pad_index(rows: np.ndarray, size: int) -> np.ndarray:
    """``rows`` (non-empty) padded to ``size`` entries by repeating its first entry: the gather
    index of a block whose first ``len(rows)`` rows are real."""
    return np.concatenate([rows, np.full(size - len(rows), rows[0])])


def relative_gaps(gap: np.ndarray, objective: np.ndarray) -> np.ndarray:
    """``gap / objective`` per sample for NumPy results (``gap > 0`` where the objective is not
    positive; ``nan``, never certified, for ``inf / inf``: a negative code under ``nonneg``)."""
    with np.errstate(invalid="ignore"):
        return np.where(objective > 0, gap / np.where(objective > 0, objective, 1), gap > 0)


def default_step(W: jax.Array, dtype) -> jax.Array:
    """``1 / L``, the default step size (``L = lipschitz_constant(W)``, which iterates on the
    ``D × D`` Cholesky factor of ``Wᵀ W`` for a wide dictionary)."""
    return jnp.asarray(1 / lipschitz_constant(jax.lax.stop_gradient(W)), dtype)


# (a pool of its own, not host_argtop's: a part that waited on a selection in the pool it
# occupies could deadlock it; no part may itself map parts on it)
_PART_POOLS: dict[int, ThreadPoolExecutor] = {}  # by worker count


def map_parts(fn, parts: list, workers: int):
    """``map(fn, parts)`` (results in order), on a pool of ``workers`` threads when there are
    several of both: independent parts of a solve (the paths of blocks of samples), whose many
    small XLA:CPU operations leave cores idle, run on every core."""
    if workers == 1 or len(parts) == 1:
        return map(fn, parts)
    if workers not in _PART_POOLS:
        _PART_POOLS[workers] = ThreadPoolExecutor(max_workers=workers)
    return _PART_POOLS[workers].map(fn, parts)
