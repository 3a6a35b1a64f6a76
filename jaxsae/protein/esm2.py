"""ESM-2 in JAX: pure functions on a parameter pytree.

The forward pass of ESM-2 (Lin et al., 2023), equal to Hugging Face's ``EsmModel`` and fair-esm's
``ESM2`` in evaluation mode:

    h⁰ = token_dropout(E[tokens]) · m                           embeddings, padding zeroed
    for l = 1 … L (pre-LayerNorm blocks):
        h ← h + Attn(LN(h))                                     rotary q/k, padded keys masked
        h ← h + W₂ GELU(W₁ LN(h) + b₁) + b₂                     GELU with erf
    hᴸ ← LN_after(hᴸ)                                           ``emb_layer_norm_after``

* **Token dropout** (ESM's MLM masking, ``token_dropout=True``): the embeddings of ``<mask>`` are
  zeroed and all embeddings scaled by ``(1 − 0.15·0.8) / (1 − r)``, ``r`` the fraction of
  ``<mask>`` tokens among the sequence's real tokens.
* **Attention**: the query is scaled by ``head_dim^{-1/2}`` *before* the rotary embedding (ESM's
  convention); rotary uses ``rotate_half`` (the two halves of each head, not interleaved pairs),
  ``θ = 10000``, positions ``0 … T−1``.
* **Hidden states** follow Hugging Face's ``output_hidden_states``: ``L + 1`` arrays, ``h⁰`` the
  embeddings (the input of block 1), ``hˡ`` the output of block ``l``, and the last one *with*
  the final LayerNorm applied (so ``hᴸ`` is ``last_hidden_state``).

Parameters are stored for ``x @ W`` (``(in, out)``) with the per-block arrays stacked on a leading
layer axis and q, k, v fused into one ``(d, 3d)`` matrix; ``jaxsae.protein.weights`` converts
checkpoints into this layout.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from collections.abc import Sequence
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from numpy.typing import ArrayLike

from jaxsae.protein.alphabet import CLS_ID, EOS_ID, MASK_ID, PAD_ID

__all__ = [
    "ESM2Config",
    "ESM2LayerParams",
    "ESM2Params",
    "ESM2_SIZES",
    "init_esm2_params",
    "default_inv_freq",
    "rotary_tables",
    "layer_norm",
    "apply_rotary",
    "attention",
    "embed",
    "transformer_layer",
    "esm2_hidden_states",
    "resolve_layers",
    "check_params",
    "attention_probs",
    "transformer_layer_with_probs",
    "LMHeadParams",
    "ContactHeadParams",
    "ESM2Heads",
    "lm_logits",
    "symmetrize",
    "average_product_correct",
    "residue_mask",
    "contact_pair_mask",
    "contact_logit_terms",
    "transformer_layer_contacts",
    "contact_probs",
    "esm2_prefix",
    "esm2_suffix",
    "esm2_contacts",
]

_MASK_RATIO_TRAIN = 0.15 * 0.8  # ESM's MLM: 15 % of tokens selected, 80 % of those masked


@dataclasses.dataclass(frozen=True)
class ESM2Config:
    """Sizes of an ESM-2 model (hashable: a static argument of the jitted forward).

    Attributes:
      num_layers: transformer blocks ``L``.
      d_model: hidden size ``d``.
      num_heads: attention heads (``d`` divisible by it).
      d_ff: feed-forward hidden size (``4 d`` in ESM-2).
      vocab_size: token vocabulary (33 for ESM-2).
      max_tokens: longest input the model was trained on, ``<cls>``/``<eos>`` included (1024).
      layer_norm_eps: LayerNorm epsilon.
      token_dropout: apply ESM's ``<mask>`` token-dropout rescaling.
      rope_theta: rotary base.
      name: a label (the checkpoint's name), kept in activation-store metadata.
    """

    num_layers: int
    d_model: int
    num_heads: int
    d_ff: int
    vocab_size: int = 33
    max_tokens: int = 1024
    layer_norm_eps: float = 1e-5
    token_dropout: bool = True
    rope_theta: float = 10000.0
    name: str = dataclasses.field(default="esm2", compare=False)  # a label: no recompilation

    def __post_init__(self) -> None:
        for f in ("num_layers", "d_model", "num_heads", "d_ff", "vocab_size", "max_tokens"):
            v = getattr(self, f)
            if not isinstance(v, int | np.integer) or v <= 0:
                raise ValueError(f"ESM2Config: expected {f} a positive integer, found {v!r}")
        if self.d_model % self.num_heads or (self.d_model // self.num_heads) % 2:
            raise ValueError(
                f"ESM2Config: expected d_model divisible by num_heads into an even head size, "
                f"found d_model={self.d_model}, num_heads={self.num_heads}"
            )

    @property
    def head_dim(self) -> int:
        return self.d_model // self.num_heads


#: Published ESM-2 sizes: name -> (num_layers, d_model, num_heads).
ESM2_SIZES: dict[str, tuple[int, int, int]] = {
    "esm2_t6_8M_UR50D": (6, 320, 20),
    "esm2_t12_35M_UR50D": (12, 480, 20),
    "esm2_t30_150M_UR50D": (30, 640, 20),
    "esm2_t33_650M_UR50D": (33, 1280, 20),
    "esm2_t36_3B_UR50D": (36, 2560, 40),
    "esm2_t48_15B_UR50D": (48, 5120, 40),
}


class ESM2LayerParams(NamedTuple):
    """Parameters of the transformer blocks, stacked on a leading layer axis ``L``.

    Attributes:
      attn_ln_scale, attn_ln_bias: ``(L, d)`` LayerNorm before attention.
      W_qkv: ``(L, d, 3d)`` fused query, key, value projections (in that order).
      b_qkv: ``(L, 3d)``.
      W_out: ``(L, d, d)`` attention output projection; ``b_out`` ``(L, d)``.
      mlp_ln_scale, mlp_ln_bias: ``(L, d)`` LayerNorm before the feed-forward block.
      W_fc1: ``(L, d, d_ff)``; ``b_fc1`` ``(L, d_ff)``.
      W_fc2: ``(L, d_ff, d)``; ``b_fc2`` ``(L, d)``.
    """

    attn_ln_scale: jax.Array
    attn_ln_bias: jax.Array
    W_qkv: jax.Array
    b_qkv: jax.Array
    W_out: jax.Array
    b_out: jax.Array
    mlp_ln_scale: jax.Array
    mlp_ln_bias: jax.Array
    W_fc1: jax.Array
    b_fc1: jax.Array
    W_fc2: jax.Array
    b_fc2: jax.Array


class ESM2Params(NamedTuple):
    """ESM-2 parameters (a pytree).

    Attributes:
      embed: ``(vocab_size, d)`` token embeddings.
      layers: the stacked blocks, ``ESM2LayerParams``.
      final_ln_scale, final_ln_bias: ``(d,)`` ``emb_layer_norm_after``.
      inv_freq: ``(head_dim // 2,)`` rotary frequencies ``θ^{−2i/head_dim}``. A buffer of the
        checkpoint, not recomputed: ESM-2's released weights hold them rounded to float16, and
        the model is only exact with those values.
    """

    embed: jax.Array
    layers: ESM2LayerParams
    final_ln_scale: jax.Array
    final_ln_bias: jax.Array
    inv_freq: jax.Array


def param_shapes(config: ESM2Config) -> ESM2Params:
    """The expected shape of every parameter, as an ``ESM2Params`` of tuples."""
    L, d, f = config.num_layers, config.d_model, config.d_ff
    return ESM2Params(
        embed=(config.vocab_size, d),
        layers=ESM2LayerParams(
            attn_ln_scale=(L, d), attn_ln_bias=(L, d), W_qkv=(L, d, 3 * d), b_qkv=(L, 3 * d),
            W_out=(L, d, d), b_out=(L, d), mlp_ln_scale=(L, d), mlp_ln_bias=(L, d),
            W_fc1=(L, d, f), b_fc1=(L, f), W_fc2=(L, f, d), b_fc2=(L, d),
        ),
        final_ln_scale=(d,),
        final_ln_bias=(d,),
        inv_freq=(config.head_dim // 2,),
    )  # fmt: skip


def _is_shape(x: object) -> bool:
    return isinstance(x, tuple) and all(isinstance(i, int) for i in x)


def check_params(params: ESM2Params, config: ESM2Config) -> ESM2Params:
    """Raise a ``ValueError`` listing every parameter whose shape does not match ``config``."""
    want = param_shapes(config)
    paths_want = jax.tree_util.tree_flatten_with_path(want, is_leaf=_is_shape)[0]
    got = jax.tree.leaves(params)
    if len(got) != len(paths_want):
        raise ValueError(f"ESM-2 params: expected {len(paths_want)} arrays, found {len(got)}")
    bad = [
        f"{jax.tree_util.keystr(p)}: expected {s}, found {tuple(x.shape)}"
        for (p, s), x in zip(paths_want, got, strict=True)
        if tuple(x.shape) != s
    ]
    if bad:
        raise ValueError(f"ESM-2 params do not match {config}:\n  " + "\n  ".join(bad))
    return params


def init_esm2_params(key: jax.Array, config: ESM2Config, dtype: type = jnp.float32) -> ESM2Params:
    """Random parameters (normal, std 0.02; LayerNorms at identity), for tests and examples."""
    shapes = param_shapes(config)
    flat, treedef = jax.tree_util.tree_flatten_with_path(shapes, is_leaf=_is_shape)
    names = [jax.tree_util.keystr(p) for p, _ in flat]
    sizes = [math.prod(s) for _, s in flat]
    noise = np.asarray(0.02 * jax.random.normal(key, (sum(sizes),), dtype))  # one draw, split
    out, start = [], 0
    for (_, s), n, size in zip(flat, names, sizes, strict=True):
        if "inv_freq" in n:
            out.append(jnp.asarray(default_inv_freq(config), dtype))
        elif "ln_scale" in n:
            out.append(jnp.ones(s, dtype))
        elif "ln_bias" in n:
            out.append(jnp.zeros(s, dtype))
        else:
            out.append(jnp.asarray(noise[start : start + size].reshape(s)))
        start += size
    return jax.tree.unflatten(treedef, out)


def layer_norm(x: jax.Array, scale: jax.Array, bias: jax.Array, eps: float) -> jax.Array:
    """LayerNorm over the last axis: ``(x − mean) / sqrt(var + eps) · scale + bias``."""
    mean = jnp.mean(x, axis=-1, keepdims=True)
    xc = x - mean
    var = jnp.mean(xc * xc, axis=-1, keepdims=True)
    return xc * jax.lax.rsqrt(var + eps) * _lead(scale, x.ndim) + _lead(bias, x.ndim)


def _lead(v: jax.Array, ndim: int) -> jax.Array:
    """``v`` ``(n,)`` reshaped to ``(1, …, 1, n)`` of rank ``ndim`` (explicit broadcasting)."""
    return v.reshape((1,) * (ndim - 1) + v.shape)


def _dense(x: jax.Array, W: jax.Array, b: jax.Array) -> jax.Array:
    """``x @ W + b`` over the last axis of ``x``."""
    return x @ W + _lead(b, x.ndim)


def default_inv_freq(config: ESM2Config) -> np.ndarray:
    """Rotary frequencies ``θ^{−2i/head_dim}``, ``i = 0 … head_dim/2 − 1``, float32."""
    hd = config.head_dim
    return (1.0 / (config.rope_theta ** (np.arange(0, hd, 2, dtype=np.float32) / hd))).astype(
        np.float32
    )


def rotary_tables(positions: jax.Array, inv_freq: jax.Array, dtype) -> tuple[jax.Array, jax.Array]:
    """``cos, sin`` of the rotary embedding at integer ``positions`` ``(B, T)``.

    Computed in float32, each frequency used for both halves of a head (``rotate_half``).

    Returns:
      two ``(B, T, head_dim)`` arrays.
    """
    freqs = positions.astype(jnp.float32)[:, :, None] * inv_freq.astype(jnp.float32)[None, None, :]
    emb = jnp.concatenate([freqs, freqs], axis=-1)
    return jnp.cos(emb).astype(dtype), jnp.sin(emb).astype(dtype)


def apply_rotary(x: jax.Array, cos: jax.Array, sin: jax.Array) -> jax.Array:
    """Rotary embedding with ESM's ``rotate_half``: ``x·cos + [−x₂, x₁]·sin``.

    Args:
      x: ``(B, T, H, head_dim)``.
      cos, sin: ``(B, T, head_dim)``.
    """
    half = x.shape[-1] // 2
    rotated = jnp.concatenate([-x[..., half:], x[..., :half]], axis=-1)
    return x * cos[:, :, None, :] + rotated * sin[:, :, None, :]


_BLOCK_SCORES = 1 << 19  # attention scores per block of the CPU path (2 MiB in float32)


def _attention_blocked(q: jax.Array, k: jax.Array, v: jax.Array, allowed: jax.Array) -> jax.Array:
    """``attention`` computed block by block of heads, for CPUs.

    XLA:CPU evaluates ``softmax(q kᵀ) v`` over a whole batch as a few passes over a
    ``(B, H, T, T)`` array that lives in memory, with small-contraction (``head_dim`` = 16)
    batched products; here a ``lax.map`` walks over blocks of ``g`` heads of one row whose
    ``g × T × T`` scores stay in cache (``g`` the largest divisor of ``H`` with
    ``g·T² ≤ 2¹⁹``), and the softmax normalisation is applied to the ``(T, head_dim)`` output
    instead of the ``(T, T)`` weights. Same maths as ``jax.nn.dot_product_attention``; 2.5–4×
    faster on a 2-core x86 CPU at ``T`` = 128 … 1024 for ESM-2 8M.
    """
    B, T, H, D = q.shape
    n, blocks = _head_blocks(q, k, v)

    def block(args):
        qb, kb, vb, row = args
        e, z = _block_weights(qb, kb, allowed[row])
        return jnp.einsum("gts,gsd->gtd", e, vb) / z

    rows = jnp.repeat(jnp.arange(B), n)
    out = jax.lax.map(block, (*blocks, rows))
    return jnp.transpose(out.reshape(B, H, T, D), (0, 2, 1, 3))


def _head_blocks(q: jax.Array, k: jax.Array, v: jax.Array) -> tuple[int, tuple[jax.Array, ...]]:
    """``(n, (q, k, v))`` regrouped into ``B·n`` blocks of ``g = H / n`` heads, each
    ``(B·n, g, T, head_dim)``: ``g`` the largest divisor of ``H`` with ``g·T² ≤ 2¹⁹``; block
    ``b·n + i`` holds heads ``i·g … (i+1)·g − 1`` of row ``b``."""
    B, T, H, D = q.shape
    g = max([c for c in range(1, H + 1) if H % c == 0 and c * T * T <= _BLOCK_SCORES] or [1])
    n = H // g

    def heads_first(x):  # (B, T, H, D) -> (B·n, g, T, D)
        return jnp.transpose(x, (0, 2, 1, 3)).reshape(B * n, g, T, D)

    return n, (heads_first(q), heads_first(k), heads_first(v))


def _block_weights(qb: jax.Array, kb: jax.Array, allowed: jax.Array) -> tuple[jax.Array, jax.Array]:
    """One block's unnormalised softmax weights ``e`` ``(g, T, T)`` and their row sums ``z``
    ``(g, T, 1)`` (``allowed``: ``(T, T)``)."""
    s = jnp.einsum("gtd,gsd->gts", qb, kb)
    s = jnp.where(allowed[None], s, jnp.finfo(s.dtype).min)
    e = jnp.exp(s - jnp.max(s, axis=-1, keepdims=True))
    return e, jnp.sum(e, axis=-1, keepdims=True)


def attention(
    q: jax.Array, k: jax.Array, v: jax.Array, allowed: jax.Array, impl: str | None = None
) -> jax.Array:
    """``softmax(q kᵀ + mask) v`` per head, the query already scaled (no further scaling).

    Args:
      q, k, v: ``(B, T, H, head_dim)``.
      allowed: ``(B, T, T)`` bool, true where query ``t`` may attend to key ``s``; a query with
        no allowed key (padding) gets a meaningless output.
      impl: ``"blocked"`` (cache-sized blocks of heads under ``lax.map``, the fast path on CPUs),
        ``"xla"`` (``jax.nn.dot_product_attention``, for GPUs and TPUs), or ``None``: blocked
        when JAX's default backend is the CPU, else xla.

    Returns:
      ``(B, T, H, head_dim)``.
    """
    if impl is None:
        impl = "blocked" if jax.default_backend() == "cpu" else "xla"
    if impl == "blocked":
        return _attention_blocked(q, k, v, allowed)
    if impl == "xla":
        return jax.nn.dot_product_attention(q, k, v, mask=allowed[:, None, :, :], scale=1.0)
    raise ValueError(f"impl: expected 'blocked', 'xla' or None, found {impl!r}")


def embed(
    params: ESM2Params, config: ESM2Config, tokens: jax.Array, segments: jax.Array
) -> jax.Array:
    """Token embeddings with ESM's token-dropout rescaling; padding rows zeroed.

    Args:
      tokens: ``(B, T)`` int token ids.
      segments: ``(B, T)`` int, ``0`` on padding and ``k ≥ 1`` on the tokens of the ``k``-th
        sequence packed in a row (one sequence per row: the padding mask as 0/1).

    Returns:
      ``h⁰``, ``(B, T, d)``.
    """
    x = params.embed[tokens]
    dtype = x.dtype
    valid = segments > 0
    if config.token_dropout:
        is_mask = tokens == MASK_ID
        x = jnp.where(is_mask[:, :, None], jnp.zeros((), dtype), x)
        # r = (<mask> tokens in the sequence) / (its length), for every token's sequence
        same = segments[:, :, None] == segments[:, None, :]
        length = jnp.sum(same, axis=-1).astype(jnp.float32)
        n_mask = jnp.sum(same & is_mask[:, None, :], axis=-1).astype(jnp.float32)
        x = x * ((1.0 - _MASK_RATIO_TRAIN) / (1.0 - n_mask / length)).astype(dtype)[:, :, None]
    return x * valid[:, :, None].astype(dtype)


def transformer_layer(
    lp: ESM2LayerParams,
    config: ESM2Config,
    h: jax.Array,
    allowed: jax.Array,
    cos: jax.Array,
    sin: jax.Array,
) -> jax.Array:
    """One pre-LayerNorm block (``lp`` holds one layer's arrays, no leading axis).

    Args:
      h: ``(B, T, d)``.
      allowed: ``(B, T, T)`` bool, true where query ``t`` may attend to key ``s``.
      cos, sin: ``(B, T, head_dim)`` rotary tables.

    Returns:
      ``(B, T, d)``.
    """
    q, k, v = _queries_keys_values(lp, config, h, cos, sin)
    # softmax(q kᵀ + mask) v; the query is already scaled, as in ESM
    return _finish_layer(lp, config, h, attention(q, k, v, allowed))


def _queries_keys_values(
    lp: ESM2LayerParams, config: ESM2Config, h: jax.Array, cos: jax.Array, sin: jax.Array
) -> tuple[jax.Array, jax.Array, jax.Array]:
    """``q`` (scaled, rotated), ``k`` (rotated), ``v`` of one block, each ``(B, T, H, hd)``."""
    B, T, _ = h.shape
    H, hd = config.num_heads, config.head_dim
    x = layer_norm(h, lp.attn_ln_scale, lp.attn_ln_bias, config.layer_norm_eps)
    qkv = _dense(x, lp.W_qkv, lp.b_qkv).reshape(B, T, 3, H, hd)
    q = apply_rotary(qkv[:, :, 0] * (hd**-0.5), cos, sin)
    return q, apply_rotary(qkv[:, :, 1], cos, sin), qkv[:, :, 2]


def _finish_layer(
    lp: ESM2LayerParams, config: ESM2Config, h: jax.Array, attn: jax.Array
) -> jax.Array:
    """Output projection, residual, then the feed-forward half of a block."""
    B, T, d = h.shape
    h = h + _dense(attn.reshape(B, T, d), lp.W_out, lp.b_out)
    x = layer_norm(h, lp.mlp_ln_scale, lp.mlp_ln_bias, config.layer_norm_eps)
    x = jax.nn.gelu(_dense(x, lp.W_fc1, lp.b_fc1), approximate=False)
    return h + _dense(x, lp.W_fc2, lp.b_fc2)


def attention_probs(q: jax.Array, k: jax.Array, allowed: jax.Array) -> jax.Array:
    """Attention probabilities ``softmax(q kᵀ)`` over allowed keys, exactly zero elsewhere.

    Args:
      q, k: ``(B, T, H, head_dim)``, the query already scaled.
      allowed: ``(B, T, T)`` bool.

    Returns:
      ``(B, H, T, T)``; a query with no allowed key gets an all-zero row.
    """
    s = jnp.einsum("bthd,bshd->bhts", q, k)
    ok = allowed[:, None, :, :]
    s = jnp.where(ok, s, jnp.finfo(s.dtype).min)
    e = jnp.where(ok, jnp.exp(s - jnp.max(s, axis=-1, keepdims=True)), jnp.zeros((), s.dtype))
    return e / jnp.maximum(jnp.sum(e, axis=-1, keepdims=True), jnp.finfo(s.dtype).tiny)


def transformer_layer_with_probs(
    lp: ESM2LayerParams,
    config: ESM2Config,
    h: jax.Array,
    allowed: jax.Array,
    cos: jax.Array,
    sin: jax.Array,
) -> tuple[jax.Array, jax.Array]:
    """``transformer_layer`` that also returns its attention probabilities ``(B, H, T, T)``.

    The simple path (the ``(B, H, T, T)`` probabilities are materialised), for the contact head;
    the hidden states equal ``transformer_layer``'s.
    """
    q, k, v = _queries_keys_values(lp, config, h, cos, sin)
    probs = attention_probs(q, k, allowed)
    return _finish_layer(lp, config, h, jnp.einsum("bhts,bshd->bthd", probs, v)), probs


def resolve_layers(config: ESM2Config, layers: Sequence[int] | None) -> tuple[int, ...]:
    """Hidden-state indices in ``0 … L`` (negative ones counted from ``L``); all when ``None``."""
    L = config.num_layers
    if layers is None:
        return tuple(range(L + 1))
    out = []
    for layer in layers:
        if not isinstance(layer, int | np.integer) or not -(L + 1) <= layer <= L:
            raise ValueError(
                f"layers: expected integers in 0..{L} (0 = embeddings, {L} = last block), "
                f"found {layer!r}"
            )
        out.append(int(layer) % (L + 1))
    return tuple(out)


@functools.partial(jax.jit, static_argnames=("config", "layers"))
def _hidden_states(params, tokens, segments, positions, config, layers):
    cos, sin = rotary_tables(positions, params.inv_freq, params.embed.dtype)
    allowed = (segments[:, :, None] == segments[:, None, :]) & (segments > 0)[:, None, :]
    h = embed(params, config, tokens, segments)

    def block(h, lp):
        return transformer_layer(lp, config, h, allowed, cos, sin), None

    kept = {0: h}
    done = 0
    for target in sorted(set(layers) - {0}):  # blocks done..target-1, compiled once as a scan
        h, _ = jax.lax.scan(
            block, h, jax.tree.map(lambda p, a=done, b=target: p[a:b], params.layers)
        )
        if target == config.num_layers:
            h = layer_norm(h, params.final_ln_scale, params.final_ln_bias, config.layer_norm_eps)
        kept[target] = h
        done = target
    return jnp.stack([kept[layer] for layer in layers])


def esm2_hidden_states(
    params: ESM2Params,
    tokens: jax.Array,
    mask: jax.Array | None = None,
    *,
    config: ESM2Config,
    layers: Sequence[int] | None = None,
    segments: jax.Array | None = None,
    positions: jax.Array | None = None,
) -> jax.Array:
    """Hidden states of ESM-2 for a padded (or packed) batch, jit-compiled once per shape.

    Only the blocks up to ``max(layers)`` run. Several sequences may be *packed* into one row
    (``segments``, ``positions``): attention then stays inside each sequence, rotary positions
    restart at each one, and the result equals running them one by one.

    Args:
      params: ``ESM2Params`` matching ``config``.
      tokens: ``(B, T)`` int token ids (``alphabet.batch_tokenize``), ``T ≤ config.max_tokens``.
      mask: ``(B, T)`` bool, true on real tokens; by default ``tokens != <pad>``. Ignored when
        ``segments`` is given.
      config: the model's sizes.
      layers: which hidden states, ``0`` (embeddings) … ``L`` (last block, final LayerNorm
        applied; negative indices count from it); default all ``L + 1``.
      segments: ``(B, T)`` int, ``0`` on padding, ``k ≥ 1`` on the ``k``-th sequence of a row.
      positions: ``(B, T)`` int rotary positions (``0`` at each sequence's ``<cls>``); by
        default ``0 … T − 1``.

    Returns:
      ``(len(layers), B, T, d)`` in the parameters' dtype. Rows at padded positions are
      meaningless.

    Raises:
      ValueError: wrong ranks or shapes, a batch longer than ``max_tokens``, a row with no
        real token, or a layer out of range.
    """
    layers = resolve_layers(config, layers)
    if not isinstance(tokens, np.ndarray | jax.Array):
        tokens = np.asarray(tokens)
    if tokens.ndim != 2 or not jnp.issubdtype(tokens.dtype, jnp.integer):
        raise ValueError(
            f"tokens: expected an integer array (batch, length), found {tokens.dtype} "
            f"{tuple(tokens.shape)}"
        )
    B, T = tokens.shape
    if config.max_tokens < T:
        raise ValueError(
            f"tokens: expected at most {config.max_tokens} positions (<cls> and <eos> "
            f"included), found {T}"
        )
    if segments is None:
        mask = tokens != PAD_ID if mask is None else mask
        segments = mask
    for name, a in (("segments", segments), ("positions", positions)):
        if a is not None and tuple(a.shape) != (B, T):
            raise ValueError(f"{name}: expected shape {(B, T)}, found {tuple(a.shape)}")
    if isinstance(segments, np.ndarray) and not (segments > 0).any(axis=-1).all():
        raise ValueError("mask/segments: expected at least one real token in every row")
    if positions is None:
        positions = np.broadcast_to(np.arange(T, dtype=np.int32)[None, :], (B, T))
    return _hidden_states(
        params,
        jnp.asarray(tokens, jnp.int32),
        jnp.asarray(segments, jnp.int32),
        jnp.asarray(positions, jnp.int32),
        config,
        layers,
    )


# ---------------------------------------------------------------------------------------- heads


class LMHeadParams(NamedTuple):
    """ESM-2's masked-language-model head (Hugging Face ``EsmForMaskedLM.lm_head``, fair-esm's
    ``RobertaLMHead``): ``logits = LN(GELU(h W_dense + b_dense)) W_decoder + bias``.

    Attributes:
      W_dense: ``(d, d)`` for ``x @ W``; ``b_dense`` ``(d,)``.
      ln_scale, ln_bias: ``(d,)`` the head's LayerNorm.
      W_decoder: ``(d, vocab_size)``, tied to the token embeddings in ESM-2 (``embed.T``).
      bias: ``(vocab_size,)``.
    """

    W_dense: jax.Array
    b_dense: jax.Array
    ln_scale: jax.Array
    ln_bias: jax.Array
    W_decoder: jax.Array
    bias: jax.Array


class ContactHeadParams(NamedTuple):
    """ESM-2's contact head (``contact_head.regression``): a logistic regression on the
    symmetrised, APC-corrected attention maps of every layer and head.

    Attributes:
      weight: ``(L, H)``, the regression weight of channel ``layer·H + head`` (the checkpoint's
        ``(1, L·H)`` reshaped).
      bias: ``()``.
    """

    weight: jax.Array
    bias: jax.Array


@dataclasses.dataclass(frozen=True)
class ESM2Heads:
    """The optional heads of a checkpoint: ``None`` where it has none."""

    lm: LMHeadParams | None = None
    contact: ContactHeadParams | None = None


def lm_logits(head: LMHeadParams, h: jax.Array, eps: float = 1e-5) -> jax.Array:
    """Masked-LM logits ``(..., vocab_size)`` from the last hidden state ``h`` ``(..., d)``
    (``hᴸ``, the final LayerNorm applied); GELU with erf, as ESM."""
    x = jax.nn.gelu(_dense(h, head.W_dense, head.b_dense), approximate=False)
    return _dense(layer_norm(x, head.ln_scale, head.ln_bias, eps), head.W_decoder, head.bias)


def symmetrize(x: jax.Array) -> jax.Array:
    """``x + xᵀ`` over the last two axes."""
    return x + jnp.swapaxes(x, -1, -2)


def average_product_correct(x: jax.Array, blocks: jax.Array | None = None) -> jax.Array:
    """Average product correction (APC, Dunn et al. 2008) over the last two axes.

    ``APC(x)ᵢⱼ = xᵢⱼ − aᵢ a'ⱼ / a``, with row sums ``aᵢ``, column sums ``a'ⱼ`` and total ``a``,
    as ESM's contact head. With ``blocks`` (several sequences packed in a row), the sums are
    taken within each sequence's block and entries outside the blocks are zero.

    Args:
      x: ``(..., T, T)``, zero outside ``blocks`` when given.
      blocks: ``(..., T, T)`` bool broadcastable to ``x``, true where ``i`` and ``j`` belong to
        the same sequence (block-diagonal up to a permutation), or ``None`` for one block.

    Returns:
      ``(..., T, T)``.
    """
    a1 = jnp.sum(x, axis=-1, keepdims=True)
    a2 = jnp.sum(x, axis=-2, keepdims=True)
    if blocks is None:
        return x - a1 * a2 / jnp.sum(x, axis=(-1, -2), keepdims=True)
    b = jnp.broadcast_to(blocks, x.shape).astype(x.dtype)
    a12 = jnp.sum(b * jnp.swapaxes(a1, -1, -2), axis=-1, keepdims=True)  # each row's block total
    safe = jnp.where(a12 == 0, jnp.ones((), x.dtype), a12)
    return (x - a1 * a2 / safe) * b


def residue_mask(tokens: ArrayLike, segments: ArrayLike) -> np.ndarray:
    """``(B, T)`` bool: the residues (real tokens other than ``<cls>``/``<eos>``/``<pad>``)."""
    tokens, segments = np.asarray(tokens), np.asarray(segments)
    return (segments > 0) & ~np.isin(tokens, (CLS_ID, EOS_ID, PAD_ID))


def contact_pair_mask(segments: jax.Array, residues: jax.Array) -> jax.Array:
    """``(B, T, T)`` bool: residue pairs of the same sequence (the contact head's inputs)."""
    same = segments[:, :, None] == segments[:, None, :]
    return same & residues[:, :, None] & residues[:, None, :]


def contact_logit_terms(probs: jax.Array, pairs: jax.Array, weight: jax.Array) -> jax.Array:
    """One layer's share of the contact logits: ``Σₕ wₕ · APC(sym(Aₕ))``.

    Attention to or from ``<cls>``, ``<eos>`` and padding is removed first (ESM drops the
    ``<cls>`` row/column and zeroes the ``<eos>`` ones), so each protein's map is its
    residue × residue block.

    Args:
      probs: ``(B, H, T, T)`` attention probabilities of the layer.
      pairs: ``(B, T, T)`` ``contact_pair_mask``.
      weight: ``(H,)`` the regression weights of the layer's heads.

    Returns:
      ``(B, T, T)``.
    """
    m = pairs.astype(probs.dtype)
    return jax.vmap(_head_block_terms, in_axes=(0, 0, None))(probs, m, weight.astype(probs.dtype))


def _head_block_terms(probs: jax.Array, m: jax.Array, w: jax.Array) -> jax.Array:
    """``Σₕ wₕ APC(sym(m ⊙ Aₕ))`` for the heads of one row: ``probs`` ``(G, T, T)``, ``m``
    ``(T, T)`` 0/1, ``w`` ``(G,)``; returns ``(T, T)``.

    By linearity, ``Σₕ wₕ APC(Sₕ) = sym(m ⊙ Σₕ wₕ Aₕ) − Σₕ wₕ aₕ aₕᵀ / (block total of aₕ)``,
    ``aₕ`` the row sums (= column sums) of ``Sₕ = sym(m ⊙ Aₕ)``: no ``(G, T, T)`` array is made
    beyond the probabilities.
    """
    masked = probs * m[None]
    mixed = symmetrize(m * jnp.einsum("gts,g->ts", probs, w))
    a = jnp.sum(masked, axis=-1) + jnp.sum(masked, axis=-2)  # (G, T)
    total = jnp.einsum("ts,gs->gt", m, a)  # each row's block total
    coef = w[:, None] / jnp.where(total == 0, jnp.ones((), a.dtype), total)
    return (mixed - jnp.einsum("gt,gs->ts", a * coef, a)) * m


def _attention_blocked_contacts(q, k, v, allowed, pairs, weight):
    """``_attention_blocked`` that also returns the layer's contact-logit terms ``(B, T, T)``,
    computed block by block of heads while their probabilities are in cache."""
    B, T, H, D = q.shape
    n, blocks = _head_blocks(q, k, v)

    def block(args):
        qb, kb, vb, row, wb = args
        e, z = _block_weights(qb, kb, allowed[row])
        out = jnp.einsum("gts,gsd->gtd", e, vb) / z
        return out, _head_block_terms(e / z, pairs[row].astype(e.dtype), wb.astype(e.dtype))

    rows = jnp.repeat(jnp.arange(B), n)
    w = jnp.tile(weight.reshape(n, H // n), (B, 1))  # block b·n + i holds heads i·g … (i+1)·g − 1
    out, terms = jax.lax.map(block, (*blocks, rows, w))
    out = jnp.transpose(out.reshape(B, H, T, D), (0, 2, 1, 3))
    return out, jnp.sum(terms.reshape(B, n, T, T), axis=1)


def transformer_layer_contacts(
    lp: ESM2LayerParams,
    config: ESM2Config,
    h: jax.Array,
    allowed: jax.Array,
    cos: jax.Array,
    sin: jax.Array,
    pairs: jax.Array,
    weight: jax.Array,
    impl: str | None = None,
) -> tuple[jax.Array, jax.Array]:
    """One block and its ``contact_logit_terms`` ``(B, T, T)`` (``weight`` ``(H,)``).

    ``impl``: ``"blocked"`` (terms computed per cache-sized block of heads, the fast path on
    CPUs), ``"xla"`` (the ``(B, H, T, T)`` probabilities materialised), or ``None``: blocked on
    the CPU backend, else xla.
    """
    if impl is None:
        impl = "blocked" if jax.default_backend() == "cpu" else "xla"
    if impl == "xla":
        h, probs = transformer_layer_with_probs(lp, config, h, allowed, cos, sin)
        return h, contact_logit_terms(probs, pairs, weight)
    if impl != "blocked":
        raise ValueError(f"impl: expected 'blocked', 'xla' or None, found {impl!r}")
    q, k, v = _queries_keys_values(lp, config, h, cos, sin)
    attn, terms = _attention_blocked_contacts(q, k, v, allowed, pairs, weight)
    return _finish_layer(lp, config, h, attn), terms


def contact_probs(head: ContactHeadParams, logits: jax.Array, pairs: jax.Array) -> jax.Array:
    """``sigmoid(Σ_layers contact_logit_terms + bias)`` on residue pairs, zero elsewhere."""
    p = jax.nn.sigmoid(logits + head.bias.astype(logits.dtype))
    return jnp.where(pairs, p, jnp.zeros((), p.dtype))


def _blocks(params, h, segments, positions, residues, contact_w, config, start, stop):
    """Blocks ``start … stop − 1`` (then the final LayerNorm when ``stop`` is the last), and the
    contact-logit terms of those layers when ``contact_w`` ``(L, H)`` is given."""
    cos, sin = rotary_tables(positions, params.inv_freq, params.embed.dtype)
    allowed = (segments[:, :, None] == segments[:, None, :]) & (segments > 0)[:, None, :]
    B, T = segments.shape
    layers = jax.tree.map(lambda p: p[start:stop], params.layers)
    if contact_w is None:
        acc = None
        if stop > start:
            h, _ = jax.lax.scan(
                lambda c, lp: (transformer_layer(lp, config, c, allowed, cos, sin), None), h, layers
            )
    else:
        pairs = contact_pair_mask(segments, residues)

        def block(carry, xs):
            c, acc = carry
            lp, w = xs
            c, terms = transformer_layer_contacts(lp, config, c, allowed, cos, sin, pairs, w)
            return (c, acc + terms), None

        acc = jnp.zeros((B, T, T), jnp.float32)
        if stop > start:
            (h, acc), _ = jax.lax.scan(block, (h, acc), (layers, contact_w[start:stop]))
    if stop == config.num_layers and stop > start:
        h = layer_norm(h, params.final_ln_scale, params.final_ln_bias, config.layer_norm_eps)
    return h, acc


@functools.partial(jax.jit, static_argnames=("config", "layer"))
def _prefix(params, tokens, segments, positions, residues, contact_w, config, layer):
    h = embed(params, config, tokens, segments)
    return _blocks(params, h, segments, positions, residues, contact_w, config, 0, layer)


@functools.partial(jax.jit, static_argnames=("config", "layer"))
def _suffix(params, h, segments, positions, residues, contact_w, config, layer):
    return _blocks(
        params, h, segments, positions, residues, contact_w, config, layer, config.num_layers
    )


def esm2_prefix(
    params: ESM2Params,
    tokens: ArrayLike,
    segments: ArrayLike,
    positions: ArrayLike,
    *,
    config: ESM2Config,
    layer: int,
    contact_head: ContactHeadParams | None = None,
) -> tuple[jax.Array, jax.Array | None]:
    """ESM-2 up to hidden state ``layer``, and the contact-logit terms of layers ``1 … layer``.

    Args:
      params: the model.
      tokens, segments, positions: ``(B, T)`` as ``esm2_hidden_states`` (packed rows allowed).
      config: the model's sizes.
      layer: ``0 … L``, the hidden state to stop at (``L``: final LayerNorm applied).
      contact_head: when given, attention probabilities are materialised (the simple path)
        and their contact-logit terms returned; else the fast attention path runs.

    Returns:
      ``(h, terms)``: ``h`` ``(B, T, d)`` equal to ``esm2_hidden_states(…)[layer]``, ``terms``
      ``(B, T, T)`` float32 or ``None``.
    """
    (layer,) = resolve_layers(config, [layer])
    seg = jnp.asarray(segments, jnp.int32)
    res = jnp.asarray(residue_mask(tokens, segments))
    w = None if contact_head is None else jnp.asarray(contact_head.weight)
    return _prefix(
        params, jnp.asarray(tokens, jnp.int32), seg, jnp.asarray(positions, jnp.int32), res, w,
        config, layer,
    )  # fmt: skip


def esm2_suffix(
    params: ESM2Params,
    h: jax.Array,
    segments: ArrayLike,
    positions: ArrayLike,
    residues: ArrayLike,
    *,
    config: ESM2Config,
    layer: int,
    contact_head: ContactHeadParams | None = None,
) -> tuple[jax.Array, jax.Array | None]:
    """ESM-2 from hidden state ``layer`` (possibly edited) to the last one, ``hᴸ``.

    ``esm2_suffix(esm2_prefix(…)[0], …)`` is the whole forward pass; editing ``h`` in between
    is how activations are spliced.

    Args:
      h: ``(B, T, d)`` hidden state ``layer``.
      segments, positions: ``(B, T)`` as in ``esm2_prefix``.
      residues: ``(B, T)`` bool ``residue_mask`` (used by the contact head only).
      layer: ``0 … L``; ``L`` returns ``h`` unchanged.
      contact_head: as in ``esm2_prefix``: the terms of layers ``layer + 1 … L``.

    Returns:
      ``(hᴸ, terms)``: ``(B, T, d)`` with the final LayerNorm applied, and ``(B, T, T)`` or
      ``None``.
    """
    (layer,) = resolve_layers(config, [layer])
    w = None if contact_head is None else jnp.asarray(contact_head.weight)
    return _suffix(
        params, h, jnp.asarray(segments, jnp.int32), jnp.asarray(positions, jnp.int32),
        jnp.asarray(residues, bool), w, config, layer,
    )  # fmt: skip


def esm2_contacts(
    params: ESM2Params,
    contact_head: ContactHeadParams,
    tokens: ArrayLike,
    mask: ArrayLike | None = None,
    *,
    config: ESM2Config,
    segments: ArrayLike | None = None,
    positions: ArrayLike | None = None,
) -> jax.Array:
    """Contact probabilities of ESM-2's contact head, as ``EsmModel.predict_contacts``.

    Args:
      params, contact_head: the model and its contact head.
      tokens: ``(B, T)`` token ids; ``mask``, ``segments``, ``positions`` as in
        ``esm2_hidden_states``.

    Returns:
      ``(B, T, T)`` in token coordinates: entry ``(i, j)`` for residue tokens ``i``, ``j`` of
      one sequence, zero elsewhere (Hugging Face's ``(B, T − 2, T − 2)`` map of one sequence per
      row is ``out[:, 1:-1, 1:-1]``).
    """
    tokens = np.asarray(tokens)
    B, T = tokens.shape
    if segments is None:
        segments = (tokens != PAD_ID) if mask is None else np.asarray(mask)
    segments = np.asarray(segments).astype(np.int32)
    if positions is None:
        positions = np.broadcast_to(np.arange(T, dtype=np.int32)[None, :], (B, T))
    L = config.num_layers
    _, pre = esm2_prefix(
        params, tokens, segments, positions, config=config, layer=L, contact_head=contact_head
    )
    res = jnp.asarray(residue_mask(tokens, segments))
    return contact_probs(contact_head, pre, contact_pair_mask(jnp.asarray(segments), res))
