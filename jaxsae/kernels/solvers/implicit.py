"""Implicit differentiation of optimal codes (reverse mode) through the optimality conditions."""

from __future__ import annotations

import jax
import jax.numpy as jnp


@jax.custom_vjp
def implicit_codes(X, W, reg, C):
    return C


def _implicit_fwd(X, W, reg, C):
    return C, (X, W, reg, C)


def _masked_cg(W, mask, b, max_steps: int):
    """Solve ``(P W Wᵀ P + I − P) u = b`` for every row (``P = diag(mask)``) by batched CG."""

    def matvec(u):
        return mask * (((mask * u) @ W) @ W.T) + (1 - mask) * u

    eps = jnp.finfo(b.dtype).eps
    bb = jnp.sum(b * b, -1)

    def cond(s):
        k, _, _, _, rs = s
        return (k < max_steps) & jnp.any(rs > (eps * eps) * bb)

    def body(s):
        k, u, r, p, rs = s
        Ap = matvec(p)
        pAp = jnp.sum(p * Ap, -1)
        alpha = jnp.where(pAp > 0, rs / jnp.where(pAp > 0, pAp, 1), 0)[:, None]
        u = u + alpha * p
        r = r - alpha * Ap
        rs_new = jnp.sum(r * r, -1)
        beta = jnp.where(rs > 0, rs_new / jnp.where(rs > 0, rs, 1), 0)[:, None]
        return k + 1, u, r, r + beta * p, rs_new

    init = (0, jnp.zeros_like(b), b, b, bb)
    return jax.lax.while_loop(cond, body, init)[1]


def _implicit_bwd(res, C_bar):
    """Cotangents from the optimality conditions on the support ``S`` of each sample:
    ``W_S (x − c_S W_S) = λ_S sign(c_S)`` ⇒ with ``u_S = (W_S W_Sᵀ)⁻¹ c̄_S``:
    ``x̄ = u W``, ``W̄ = Σ_b u rᵀ − c (u W)ᵀ``, ``λ̄ = −Σ_b u ⊙ sign(c)``."""
    X, W, reg, C = res
    mask = (C != 0).astype(C.dtype)
    F = W.shape[0]
    U = _masked_cg(W, mask, mask * C_bar, max_steps=2 * F + 10)
    R = X - C @ W
    UW = U @ W
    X_bar = UW
    W_bar = U.T @ R - C.T @ UW
    reg_bar = -jnp.sum(U * jnp.sign(C), axis=0)
    return X_bar, W_bar, reg_bar, jnp.zeros_like(C)


implicit_codes.defvjp(_implicit_fwd, _implicit_bwd)
