"""BatchTopK (Bussmann et al. 2024) and Matryoshka BatchTopK (Bussmann et al. 2025) SAEs.

BatchTopK keeps the ``k · B`` largest ReLU'd pre-activations of a batch of ``B`` inputs, so the
number of active features per input varies while its mean is ``k``; the encoder, decoder, loss
(``fvu``) and AuxK are those of the TopK SAE (``jaxsae.kernels.topk.topk_family_loss``, with the
decoder bias subtracted from the input). Since the codes of an input then depend on the rest of
its batch, inference uses a global threshold ``τ`` instead: ``f = z · H(z − τ)``, a JumpReLU with
the same ``τ`` for every feature. ``τ`` is estimated during training as SAELens does: after each
step, ``τ ← (1 − η) τ + η · m`` with ``m`` the smallest non-zero code of the batch (all devices)
and ``η = threshold_lr`` (SAELens' ``topk_threshold_lr``, 0.01), starting from 0. The training
form keeps ``τ`` in every entry of ``SAEParams.threshold`` (the optimiser sees a zero gradient
for it); the inference form is SAELens' JumpReLU (``architecture = "jumprelu"``, ``threshold``
``τ`` per feature), with ``b_dec`` folded into ``b_enc`` so that the encoder reads ``x``.

Matryoshka BatchTopK nests prefixes ``[0, w_1) ⊂ [0, w_2) ⊂ … ⊂ [0, d_sae)`` of the dictionary:
the batch's active codes are selected once, each prefix's features reconstruct the input on
their own (``x̂_w = Σ_{i < w} f_i W_dec[i] + b_dec``), and the loss is the sum of the prefixes'
``fvu`` (Bussmann et al. 2025's nested losses with the codes shared by the levels; SAELens sums
the prefix losses likewise).

The sparse path keeps the batch's active codes as a flat list of ``k · B`` (input, feature)
pairs (work ``k`` per input on average). Candidates are each input's top ``2k``, the batch's cut
is found by bisection over them, and when an input has all its candidates above the cut the
selection is redone over every feature, so the codes are exactly the batch's top ``k · B``.
``max_per_row = m`` is a named variant that caps an input at ``m`` codes instead.

References:
  Bussmann, Leask, Nanda, "BatchTopK Sparse Autoencoders", 2024 (arXiv:2412.06410).
  Bussmann, Nabeshima, Karvonen, Nanda, "Learning Multi-Level Features with Matryoshka Sparse
  Autoencoders", 2025 (arXiv:2503.17547).
"""

from __future__ import annotations

import jax.numpy as jnp

from jaxsae.kernels.architectures import (
    Architecture,
    LossOutput,
    family_loss,
    register,
)
from jaxsae.kernels.axes import pmin
from jaxsae.kernels.jumprelu import jumprelu_encode, jumprelu_forward
from jaxsae.kernels.sae import SAEParams, init_params
from jaxsae.kernels.topk import TopKFamily, check_k

__all__ = [
    "update_threshold",
    "batchtopk_inference_params",
    "batchtopk_architecture",
    "matryoshka_batchtopk_architecture",
    "check_levels",
]


def update_threshold(
    params: SAEParams, out: LossOutput, axes: tuple[str | None, str | None], lr: float
) -> SAEParams:
    """``τ ← (1 − lr) τ + lr · m``, ``m`` the smallest non-zero code over all devices.

    Unchanged when the batch had no non-zero code.
    """
    data_axis, feature_axis = axes
    m = pmin(pmin(out.min_active, feature_axis), data_axis).astype(params.threshold.dtype)
    new = (1 - lr) * params.threshold + lr * m
    return params._replace(threshold=jnp.where(jnp.isfinite(m), new, params.threshold))


def batchtopk_inference_params(params: SAEParams) -> SAEParams:
    """Training form → SAELens' JumpReLU form: ``b_enc − b_dec W_enc``, threshold ``τ``."""
    return params._replace(b_enc=params.b_enc - params.b_dec @ params.W_enc)


def _from_inference(params: SAEParams) -> SAEParams:
    return params._replace(b_enc=params.b_enc + params.b_dec @ params.W_enc)


def _init(key, d_in, d_sae, *, dec_norm=0.1, b_dec=None, dtype=jnp.float32) -> SAEParams:
    p = init_params(key, d_in, d_sae, dec_norm=dec_norm, b_dec=b_dec, dtype=dtype)
    return p._replace(threshold=jnp.zeros((d_sae,), dtype))


def check_levels(levels: tuple[int, ...], k: int) -> tuple[int, ...]:
    """Raise unless the Matryoshka widths are strictly increasing ints ``≥ k``."""
    levels = tuple(levels)
    if not levels or any(not isinstance(w, int) or isinstance(w, bool) for w in levels):
        raise ValueError(f"matryoshka widths: expected a non-empty tuple of ints, found {levels}")
    if any(b <= a for a, b in zip(levels, levels[1:], strict=False)) or levels[0] < k:
        raise ValueError(
            f"matryoshka widths: expected strictly increasing widths, the first >= k={k}, "
            f"found {levels}"
        )
    return levels


def _batch_family(
    name: str, k: int, aux_k: int, aux_coeff: float, threshold_lr: float, opts: TopKFamily
) -> Architecture:
    check_k(k, 2**62)
    if not 0 < threshold_lr <= 1:
        raise ValueError(f"{name}: expected 0 < threshold_lr <= 1, found {threshold_lr}")
    return Architecture(
        name=name,
        saelens_name="jumprelu",
        apply_b_dec_to_input=False,
        uses_coeff=False,
        resamples=False,
        init=_init,
        loss=family_loss(opts, aux_coeff),
        update=lambda p, out, axes: update_threshold(p, out, axes, threshold_lr),
        to_inference=batchtopk_inference_params,
        from_inference=_from_inference,
        encode=jumprelu_encode,
        forward=jumprelu_forward,
    )


def batchtopk_architecture(
    k: int = 32,
    aux_k: int = 512,
    aux_coeff: float = 1 / 32,
    threshold_lr: float = 0.01,
    max_per_row: int = 0,
) -> Architecture:
    """BatchTopK SAE with AuxK and a running inference threshold (module docstring)."""
    opts = TopKFamily(k=k, batch=True, max_per_row=max_per_row, aux_k=aux_k)
    return _batch_family("batchtopk", k, aux_k, aux_coeff, threshold_lr, opts)


def matryoshka_batchtopk_architecture(
    k: int = 32,
    aux_k: int = 512,
    aux_coeff: float = 1 / 32,
    threshold_lr: float = 0.01,
    max_per_row: int = 0,
    matryoshka_widths: tuple[int, ...] = (),
) -> Architecture:
    """Matryoshka BatchTopK SAE: nested prefixes ``matryoshka_widths`` (the last ``d_sae``)."""
    levels = check_levels(matryoshka_widths, k)
    opts = TopKFamily(k=k, batch=True, max_per_row=max_per_row, levels=levels, aux_k=aux_k)
    arch = _batch_family("matryoshka_batchtopk", k, aux_k, aux_coeff, threshold_lr, opts)

    def init(key, d_in, d_sae, **kw) -> SAEParams:
        if levels[-1] != d_sae:
            raise ValueError(
                f"matryoshka widths: expected the last width to be d_sae={d_sae}, found {levels}"
            )
        return _init(key, d_in, d_sae, **kw)

    return arch._replace(init=init)


_OPTIONS = ("k", "aux_k", "aux_coeff", "threshold_lr", "max_per_row")
register("batchtopk", batchtopk_architecture, _OPTIONS)
register(
    "matryoshka_batchtopk", matryoshka_batchtopk_architecture, (*_OPTIONS, "matryoshka_widths")
)
