"""Faithfulness: does the SAE preserve what the model computes?

Two families of measures, for any SAE given as functions on *raw* activations (so every
architecture — L1, TopK, BatchTopK, JumpReLU — is evaluated the same way):

* **Reconstruction** (``core_metrics``): SAEBench's core evaluation (``sae_bench/evals/core``)
  on activation rows ``x`` and their reconstructions ``x̂ = decode(encode(x))``:

  - ``explained_variance``: SAEBench's per-token form, the mean over tokens of
    ``1 − ‖x − x̂‖² / ‖x − x̄‖²`` (SAEBench centres on the mean of its evaluation batch; here ``x̄``
    is the mean of the rows evaluated, or the ``mean`` given). ``explained_variance_pooled``
    is ``1 − Σ‖x − x̂‖² / Σ‖x − x̄‖²`` (one minus the FVU that jaxsae's training reports).
  - ``mse``: mean over tokens of ``‖x − x̂‖²`` (SAELens 6's convention; SAEBench divides this by
    its batch's token count as well, a batch-size-dependent scale not reproduced here).
  - ``cossim``: mean cosine of ``x`` and ``x̂``; ``l2_ratio``: mean ``‖x̂‖ / ‖x‖`` (a norm
    below 1e-4 divides by 1, as SAEBench); ``relative_reconstruction_bias``:
    ``E‖x̂‖² / E⟨x, x̂⟩`` (Rajamanoharan et al. 2024, eq. 10; SAEBench averages it over batches).
  - ``l0``: mean number of non-zero codes; ``dead_fraction``: features that never fire
    (``1 − frac_alive``); ``dense_fraction``: features firing on more than 10 % of tokens
    (``freq_over_10_percent``).

* **Splicing** (``splice_scores``): ESM-2 is run with hidden state ``layer`` (the tensor the
  activation store holds: the output of block ``layer``) replaced, on the residue positions
  (the rows the SAE was trained on; ``<cls>``/``<eos>`` keep their activations), by the SAE's
  reconstruction, by zero, or by the mean activation. Scores, as SAELens defines them
  (``sae_lens/evals.py``):

  - ``ce_loss_score = (CE_zero − CE_sae) / (CE_zero − CE_clean)`` with the masked-LM
    cross-entropy of the true residues, and ``kl_div_score = (KL_zero − KL_sae) / KL_zero``
    with ``KL(clean ‖ spliced)`` per token; ``*_mean`` the same against mean-ablation. Both on
    unmasked tokens (every residue scored, what InterPLM and InterProt report) and with
    ``mask_fraction`` of the residues selected, BERT-style as ESM is trained
    (``mask_scheme="bert"``: 80 % ``<mask>``, 10 % a random amino acid, 10 % unchanged; or
    ``"mask"``: all ``<mask>``), scoring the selected ones. Needs a masked-LM head.
    SAELens zero-ablates every position, special tokens included; here zero and mean replace
    the same residue positions as the SAE, so that a reconstruction equal to the ablation
    scores exactly 0.
  - ``contact_score`` (for checkpoints with ESM-2's contact head, such as the embedded
    default): the fraction of the clean model's top-``L/5`` long-range (``|i − j| ≥ 24``)
    predicted contacts that are also among the spliced model's top-``L/5``, averaged over
    proteins, normalised against mean-ablation: ``(kept_sae − kept_mean) / (1 − kept_mean)``
    (``contact_score_zero`` against zero-ablation). Only layers after ``layer`` change their
    attention, so the contact head sees the splice through those layers' maps.

  All scores are 1 for a perfect reconstruction and 0 for one no better than the ablation.

``evaluate`` runs both and returns a JSON-serialisable dict; ``summary_lines`` formats it.

Example::

    from jaxsae.kernels import sae
    encode = lambda x: sae.encode(params, x)[0]
    decode = lambda f: sae.decode(params, f)
    result = evaluate(model, heads, encode, decode, X_heldout, test_sequences, layer=4,
                      mean=train_store.mean)
    print("\\n".join(summary_lines(result)))
"""

from __future__ import annotations

import dataclasses
import functools
import time
import warnings
from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from numpy.typing import ArrayLike

__all__ = [
    "SpliceOptions",
    "core_metrics",
    "splice_scores",
    "evaluate",
    "summary_lines",
    "analysis_hook",
    "recovered_score",
    "top_long_range_contacts",
    "kept_fraction",
    "bert_mask",
]

VARIANTS = ("clean", "sae", "zero", "mean")


# --------------------------------------------------------------------------------- kernels


def recovered_score(clean: float, spliced: float, ablated: float) -> float:
    """``(ablated − spliced) / (ablated − clean)``: 1 when the splice equals the clean model,
    0 when it is no better than the ablation (SAELens' CE-loss and KL scores; KL with
    ``clean = 0``). NaN when ``ablated == clean``."""
    den = ablated - clean
    return float((ablated - spliced) / den) if den != 0 else float("nan")


def top_long_range_contacts(
    probs: np.ndarray, *, min_separation: int = 24, top_fraction: float = 0.2
) -> np.ndarray:
    """The ``⌊top_fraction · L⌋`` most probable pairs ``i < j`` with ``j − i ≥ min_separation``.

    Args:
      probs: ``(L, L)`` contact probabilities of one protein.

    Returns:
      sorted flat indices ``i·L + j`` (empty when the protein has no such pair); ties are
      broken by index.
    """
    L = probs.shape[0]
    i, j = np.triu_indices(L, k=min_separation)
    k = min(int(top_fraction * L), len(i))
    if k <= 0:
        return np.zeros((0,), np.int64)
    order = np.argsort(-probs[i, j], kind="stable")[:k]
    return np.sort(i[order] * L + j[order])


def kept_fraction(reference: np.ndarray, other: np.ndarray) -> float:
    """``|reference ∩ other| / |reference|`` of two index sets (NaN when ``reference`` is empty)."""
    if len(reference) == 0:
        return float("nan")
    return float(len(np.intersect1d(reference, other, assume_unique=True)) / len(reference))


def bert_mask(
    tokens: np.ndarray, rng: np.random.Generator, fraction: float, scheme: str = "bert"
) -> tuple[np.ndarray, np.ndarray]:
    """Mask one protein's residue tokens as ESM's masked-LM training does.

    ``max(1, round(fraction · n))`` residues are selected; with ``scheme="bert"`` 80 % of them
    become ``<mask>``, 10 % a random standard amino acid and 10 % stay; with ``"mask"`` all
    become ``<mask>``.

    Args:
      tokens: ``(n,)`` residue token ids (no ``<cls>``/``<eos>``).

    Returns:
      ``(masked tokens (n,), selected (n,) bool)``.
    """
    from jaxsae.protein.alphabet import MASK_ID, STANDARD_AMINO_ACIDS, TOKEN_TO_ID

    n = len(tokens)
    sel = np.zeros(n, bool)
    sel[rng.choice(n, size=min(n, max(1, round(fraction * n))), replace=False)] = True
    out = tokens.copy()
    if scheme == "mask":
        out[sel] = MASK_ID
        return out, sel
    u = rng.random(n)
    out[sel & (u < 0.8)] = MASK_ID
    rand = sel & (u >= 0.8) & (u < 0.9)
    aa = np.array([TOKEN_TO_ID[a] for a in STANDARD_AMINO_ACIDS], tokens.dtype)
    out[rand] = aa[rng.integers(0, len(aa), size=int(rand.sum()))]
    return out, sel


@jax.jit
def _core_sums(x: jax.Array, codes: jax.Array, x_hat: jax.Array, mean: jax.Array) -> dict:
    """Sums over a chunk of rows of every quantity ``core_metrics`` averages."""
    r2 = jnp.sum((x - x_hat) ** 2, axis=-1)
    c2 = jnp.sum((x - mean[None, :]) ** 2, axis=-1)
    nx = jnp.linalg.norm(x, axis=-1)
    nh = jnp.linalg.norm(x_hat, axis=-1)
    dot = jnp.sum(x * x_hat, axis=-1)
    tiny = jnp.finfo(x.dtype).tiny
    return {
        "r2": jnp.sum(r2),
        "c2": jnp.sum(c2),
        "ev": jnp.sum(1.0 - r2 / jnp.maximum(c2, tiny)),
        "cos": jnp.sum(dot / jnp.maximum(nx * nh, tiny)),
        "l2_ratio": jnp.sum(nh / jnp.where(jnp.abs(nx) < 1e-4, 1.0, nx)),
        "h2": jnp.sum(nh**2),
        "dot": jnp.sum(dot),
        "l0": jnp.sum(codes != 0),
        "fired": jnp.sum(codes > 0, axis=0),
    }


@functools.partial(jax.jit, static_argnames=("eps",))
def _lm_token_sums(lm, h, clean_logp, targets, scored, eps):
    """``(Σ CE, Σ KL(clean ‖ this), log-probs)`` over the scored tokens of a batch."""
    from jaxsae.protein.esm2 import lm_logits

    logp = jax.nn.log_softmax(lm_logits(lm, h, eps).astype(jnp.float32), axis=-1)
    ref = logp if clean_logp is None else clean_logp
    ce = -jnp.take_along_axis(logp, targets[..., None], axis=-1)[..., 0]
    kl = jnp.sum(jnp.exp(ref) * (ref - logp), axis=-1)
    w = scored.astype(jnp.float32)
    return jnp.sum(ce * w), jnp.sum(kl * w), logp


@jax.jit
def _splice(h: jax.Array, new: jax.Array, where: jax.Array) -> jax.Array:
    """``h`` with its rows at ``where`` ``(B, T)`` replaced by ``new`` (same shape or ``(d,)``)."""
    return jnp.where(where[:, :, None], jnp.broadcast_to(new, h.shape).astype(h.dtype), h)


# ----------------------------------------------------------------------- reconstruction


def core_metrics(
    encode: Callable[[jax.Array], jax.Array],
    decode: Callable[[jax.Array], jax.Array],
    X: Any,
    *,
    mean: ArrayLike | None = None,
    chunk_rows: int = 4096,
    dense_threshold: float = 0.1,
) -> dict[str, float]:
    """SAEBench's core reconstruction and sparsity metrics (see the module docstring).

    Args:
      encode: raw activations ``(n, d_in)`` → codes ``(n, d_sae)`` (dense; non-zero = active).
      decode: codes → reconstructions ``(n, d_in)``.
      X: ``(N, d_in)`` activation rows (an array or memmap), or an ``ActivationStore``.
      mean: ``(d_in,)`` the centre of the explained variance; default the mean of ``X``.
      chunk_rows: rows per call of ``encode``/``decode``.
      dense_threshold: firing rate above which a feature counts as dense (SAEBench: 0.1).

    Returns:
      ``{"explained_variance", "explained_variance_pooled", "mse", "cossim", "l2_ratio",
      "relative_reconstruction_bias", "l0", "dead_fraction", "dense_fraction", "num_tokens",
      "d_sae"}``, floats.

    Raises:
      ValueError: no rows, ``X`` not 2-D, or codes/reconstructions of the wrong shape.
    """
    n, rows = _row_source(X)
    if n == 0:
        raise ValueError("core_metrics: expected at least one activation row, found none")
    if mean is None and hasattr(X, "rows"):
        mean = X.mean  # an ActivationStore's per-dimension mean
    if mean is None:
        total = sum(np.sum(rows(s, min(s + chunk_rows, n)), axis=0, dtype=np.float64)
                    for s in range(0, n, chunk_rows))  # fmt: skip
        mean = total / n
    mean = jnp.asarray(mean, jnp.float32)
    d = rows(0, 1).shape[-1]
    if mean.shape != (d,):
        raise ValueError(f"core_metrics: expected mean of shape ({d},), found {mean.shape}")
    sums: dict[str, Any] = {}
    for s in range(0, n, chunk_rows):
        x = jnp.asarray(rows(s, min(s + chunk_rows, n)), jnp.float32)
        codes = jnp.asarray(encode(x))
        x_hat = jnp.asarray(decode(codes), jnp.float32)
        if codes.ndim != 2 or codes.shape[0] != x.shape[0] or x_hat.shape != x.shape:
            raise ValueError(
                f"core_metrics: expected codes (n, d_sae) and reconstructions {x.shape} for "
                f"inputs {x.shape}, found {codes.shape} and {x_hat.shape}"
            )
        part = _core_sums(x, codes, x_hat, mean)
        sums = part if not sums else jax.tree.map(jnp.add, sums, part)
    s = {k: np.asarray(v, np.float64) for k, v in sums.items()}
    density = s["fired"] / n
    return {
        "explained_variance": float(s["ev"] / n),
        "explained_variance_pooled": float(1.0 - s["r2"] / max(float(s["c2"]), 1e-30)),
        "mse": float(s["r2"] / n),
        "cossim": float(s["cos"] / n),
        "l2_ratio": float(s["l2_ratio"] / n),
        "relative_reconstruction_bias": float(s["h2"] / s["dot"]) if s["dot"] else float("nan"),
        "l0": float(s["l0"] / n),
        "dead_fraction": float(np.mean(density == 0)),
        "dense_fraction": float(np.mean(density > dense_threshold)),
        "num_tokens": int(n),
        "d_sae": int(density.shape[0]),
    }


def _row_source(X: Any) -> tuple[int, Callable[[int, int], np.ndarray]]:
    """``(number of rows, rows(start, stop))`` of an array or an ``ActivationStore``."""
    if hasattr(X, "rows") and hasattr(X, "num_rows"):
        return int(X.num_rows), X.rows
    if not hasattr(X, "shape"):
        X = np.asarray(X)
    if len(X.shape) != 2:
        raise ValueError(f"core_metrics: expected X of shape (rows, d_in), found {X.shape}")
    return int(X.shape[0]), lambda a, b: np.asarray(X[a:b], np.float32)


# ------------------------------------------------------------------------------- splicing


@dataclasses.dataclass(frozen=True)
class SpliceOptions:
    """Options of ``splice_scores``.

    Attributes:
      mask_fraction: residues selected for the masked-LM scores (ESM's 0.15); 0 skips them.
      mask_scheme: ``"bert"`` (80 % ``<mask>``, 10 % random amino acid, 10 % unchanged, as ESM
        trains) or ``"mask"`` (all ``<mask>``).
      seed: seed of the masking (each protein's selection depends only on it and the
        protein's index).
      max_tokens_per_batch: padded tokens per forward call.
      buckets: padded row lengths (packing as ``jaxsae.protein.extract``); every batch of a
        bucket has the same shape, so the model compiles once per bucket used.
      min_separation: ``|i − j|`` of a long-range contact (24).
      top_fraction: contacts kept per protein, as a fraction of its length (``L/5``: 0.2).
    """

    mask_fraction: float = 0.15
    mask_scheme: str = "bert"
    seed: int = 0
    max_tokens_per_batch: int = 2048
    buckets: tuple[int, ...] = (256, 512, 1024)
    min_separation: int = 24
    top_fraction: float = 0.2

    def __post_init__(self) -> None:
        if not 0 <= self.mask_fraction < 1:
            raise ValueError(f"mask_fraction: expected in [0, 1), found {self.mask_fraction}")
        if self.mask_scheme not in ("bert", "mask"):
            raise ValueError(f"mask_scheme: expected 'bert' or 'mask', found {self.mask_scheme!r}")
        if self.max_tokens_per_batch < 1 or self.min_separation < 1:
            raise ValueError(
                "expected max_tokens_per_batch >= 1 and min_separation >= 1, found "
                f"{self.max_tokens_per_batch} and {self.min_separation}"
            )
        if not 0 < self.top_fraction <= 1:
            raise ValueError(f"top_fraction: expected in (0, 1], found {self.top_fraction}")


def _sequences(sequences: Sequence[Any], limit: int) -> list[dict]:
    """``[{"sequence": …}]`` from strings or records, cropped to ``limit`` residues (warned)."""
    from jaxsae.protein.alphabet import check_sequence

    out, cropped = [], 0
    for i, s in enumerate(sequences):
        seq = s if isinstance(s, str) else s["sequence"] if isinstance(s, dict) else s.sequence
        cropped += len(check_sequence(seq, name=f"sequence {i}")) > limit
        out.append({"sequence": seq[:limit]})
    if cropped:
        warnings.warn(
            f"{cropped} sequence(s) cropped to their first {limit} residues", stacklevel=3
        )
    if not out:
        raise ValueError("splice_scores: expected at least one sequence, found none")
    return out


def _batches(recs: list[dict], opts: SpliceOptions):
    """``(tokens, segments, positions, placed)`` for every packed batch of the proteins."""
    from jaxsae.protein.extract import batch_arrays, group_batches, pack_rows

    lengths = [len(r["sequence"]) for r in recs]
    rows = pack_rows(range(len(recs)), lengths, opts.buckets)
    for b, batch_rows in group_batches(rows, opts.max_tokens_per_batch):
        # every batch of a bucket padded to the same rows: one compilation per bucket
        yield batch_arrays(recs, batch_rows, max(1, opts.max_tokens_per_batch // b), b)


def _mean_activation(model, recs, layer, opts) -> np.ndarray:
    """``(d,)`` mean of hidden state ``layer`` over the residues of ``recs``."""
    from jaxsae.protein.esm2 import esm2_prefix, residue_mask

    config, params = model
    total, count = np.zeros(config.d_model), 0
    for tokens, seg, pos, _ in _batches(recs, opts):
        h, _ = esm2_prefix(params, tokens, seg, pos, config=config, layer=layer)
        res = residue_mask(tokens, seg)
        total += np.asarray(jnp.sum(h * jnp.asarray(res)[:, :, None], axis=(0, 1)), np.float64)
        count += int(res.sum())
    return total / count


def _variants(h, res, reconstruct, mean):
    """Hidden state ``layer`` of each variant: clean, SAE, zero, mean (on residues ``res``)."""
    B, T, d = h.shape
    recon = jnp.asarray(reconstruct(h.reshape(B * T, d))).reshape(B, T, d)
    where = jnp.asarray(res)
    return {
        "clean": h,
        "sae": _splice(h, recon, where),
        "zero": _splice(h, jnp.zeros((d,), h.dtype), where),
        "mean": _splice(h, jnp.asarray(mean, h.dtype), where),
    }


class _LMTally:
    """Σ CE and Σ KL per variant over scored tokens (one object per scoring mode)."""

    def __init__(self) -> None:
        self.ce = dict.fromkeys(VARIANTS, 0.0)
        self.kl = dict.fromkeys(VARIANTS, 0.0)
        self.tokens = 0

    def add(self, config, lm, outs, targets, scored) -> None:
        """Add a batch: ``outs`` the last hidden state of each variant, clean first."""
        clean = None
        for v in VARIANTS:
            ce, kl, logp = _lm_token_sums(
                lm, outs[v], clean, jnp.asarray(targets), jnp.asarray(scored),
                config.layer_norm_eps,
            )  # fmt: skip
            clean = logp if clean is None else clean
            self.ce[v] += float(ce)
            self.kl[v] += float(kl)
        self.tokens += int(np.sum(scored))

    def result(self) -> dict:
        n = max(self.tokens, 1)
        ce = {v: self.ce[v] / n for v in VARIANTS}
        kl = {v: self.kl[v] / n for v in VARIANTS}
        return {
            **{f"ce_{v}": ce[v] for v in VARIANTS},
            **{f"kl_{v}": kl[v] for v in VARIANTS if v != "clean"},
            "ce_loss_score": recovered_score(ce["clean"], ce["sae"], ce["zero"]),
            "kl_div_score": recovered_score(0.0, kl["sae"], kl["zero"]),
            "ce_loss_score_mean": recovered_score(ce["clean"], ce["sae"], ce["mean"]),
            "kl_div_score_mean": recovered_score(0.0, kl["sae"], kl["mean"]),
            "num_tokens": self.tokens,
        }


def _run_variants(model, hs, seg, pos, res, layer, contact):
    """``{variant: (hᴸ, contact-logit terms of the layers after ``layer`` or None)}``."""
    from jaxsae.protein.esm2 import esm2_suffix

    config, params = model
    return {
        v: esm2_suffix(
            params, hs[v], seg, pos, res, config=config, layer=layer, contact_head=contact
        )
        for v in VARIANTS
    }


def _contact_kept(head, runs, pre, seg, res, placed, lengths, opts) -> list[dict]:
    """Per protein with long-range pairs: the kept fraction of the clean top contacts, for
    each variant."""
    from jaxsae.protein.esm2 import contact_pair_mask, contact_probs

    pairs = contact_pair_mask(jnp.asarray(seg), jnp.asarray(res))
    tops: dict[str, list[np.ndarray]] = {}
    for v in VARIANTS:
        p = np.asarray(contact_probs(head, pre + runs[v][1], pairs))
        tops[v] = [
            top_long_range_contacts(
                p[j, c : c + lengths[i], c : c + lengths[i]],
                min_separation=opts.min_separation,
                top_fraction=opts.top_fraction,
            )
            for i, j, c in placed
        ]
    return [
        {v: kept_fraction(tops["clean"][k], tops[v][k]) for v in VARIANTS}
        for k in range(len(placed))
        if len(tops["clean"][k])
    ]


def _masked_batch(tokens, placed, lengths, opts):
    """Tokens with each placed protein BERT-masked, and the selected positions ``(B, T)``."""
    tokens = tokens.copy()
    scored = np.zeros(tokens.shape, bool)
    for i, j, c in placed:
        rng = np.random.default_rng([opts.seed, i])
        tokens[j, c : c + lengths[i]], scored[j, c : c + lengths[i]] = bert_mask(
            tokens[j, c : c + lengths[i]], rng, opts.mask_fraction, opts.mask_scheme
        )
    return tokens, scored


def splice_scores(
    model: tuple[Any, Any],
    reconstruct: Callable[[jax.Array], jax.Array],
    sequences: Sequence[Any],
    layer: int,
    *,
    heads: Any,
    mean: ArrayLike | None = None,
    options: SpliceOptions = SpliceOptions(),
) -> dict[str, Any]:
    """Splice ``reconstruct`` into ESM-2 at ``layer`` and score what the model keeps.

    Args:
      model: ``(config, params)`` (``load_esm2``, ``load_default_model``).
      reconstruct: raw activations ``(n, d)`` → reconstructions ``(n, d)`` (any JAX-traceable
        or NumPy function; called once per batch on every row of the batch).
      sequences: protein sequences (strings, or records/dicts with a ``sequence``).
      layer: the hidden state the SAE reads (``1 … L``; ``0`` the embeddings).
      heads: ``ESM2Heads`` (``load_esm2_heads``): its LM head gives the CE/KL scores, its
        contact head the contact score; at least one is needed.
      mean: ``(d,)`` the mean-ablation value, best the mean over the SAE's training
        activations; default the mean over the residues of ``sequences``.
      options: ``SpliceOptions``.

    Returns:
      ``{"layer", "num_proteins", "lm_unmasked", "lm_masked", "contacts", "seconds"}``; the
      ``lm_*`` entries (``None`` without an LM head) hold ``ce_{clean,sae,zero,mean}``,
      ``kl_{sae,zero,mean}``, ``ce_loss_score``, ``kl_div_score`` (against zero-ablation),
      ``ce_loss_score_mean``, ``kl_div_score_mean`` and ``num_tokens``; ``contacts`` (``None``
      without a contact head) holds ``kept_{sae,zero,mean}``, ``contact_score`` (against
      mean-ablation), ``contact_score_zero`` and ``num_proteins``.

    Raises:
      ValueError: no head, a bad layer, no sequences or an invalid one.
    """
    from jaxsae.protein.esm2 import resolve_layers

    t0 = time.perf_counter()
    config, params = model
    (layer,) = resolve_layers(config, [layer])
    lm, contact = getattr(heads, "lm", None), getattr(heads, "contact", None)
    if lm is None and contact is None:
        raise ValueError(
            "splice_scores: expected a model with a masked-LM head or a contact head "
            "(load_esm2_heads), found neither"
        )
    recs = _sequences(sequences, options.buckets[-1] - 2)
    params = jax.device_put(params)
    if mean is None:
        mean = _mean_activation((config, params), recs, layer, options)
    run = _SpliceRun(
        (config, params), reconstruct, mean, layer, lm, contact,
        [len(r["sequence"]) for r in recs], options,
    )  # fmt: skip
    unmasked, masked, kept = _LMTally(), _LMTally(), []
    for batch in _batches(recs, options):
        kept += _splice_batch(run, batch, unmasked, masked)
    out = _splice_result(run, unmasked, masked, kept)
    return {"layer": layer, "num_proteins": len(recs), **out, "seconds": time.perf_counter() - t0}


@dataclasses.dataclass(frozen=True)
class _SpliceRun:
    """What every batch of ``splice_scores`` shares: the model (parameters on the device), the
    SAE's ``reconstruct``, the mean-ablation value, the layer, the heads, the proteins' lengths
    and the options."""

    model: tuple[Any, Any]
    reconstruct: Callable[[jax.Array], jax.Array]
    mean: Any
    layer: int
    lm: Any
    contact: Any
    lengths: list[int]
    options: SpliceOptions

    def variants(self, tokens, seg, pos, res, contact) -> tuple[dict, Any]:
        """Every variant (clean, SAE, zero, mean) run from ``layer`` on: ``(runs, pre)``."""
        from jaxsae.protein.esm2 import esm2_prefix

        config, params = self.model
        h, pre = esm2_prefix(
            params, tokens, seg, pos, config=config, layer=self.layer, contact_head=contact
        )
        hs = _variants(h, res, self.reconstruct, self.mean)
        return _run_variants(self.model, hs, seg, pos, res, self.layer, contact), pre


def _splice_batch(run: _SpliceRun, batch, unmasked: _LMTally, masked: _LMTally) -> list[dict]:
    """One batch: the LM tallies updated (unmasked, then masked), the contacts kept returned."""
    from jaxsae.protein.esm2 import residue_mask

    tokens, seg, pos, placed = batch
    config = run.model[0]
    res = residue_mask(tokens, seg)
    runs, pre = run.variants(tokens, seg, pos, res, run.contact)
    kept = []
    if run.contact is not None:
        kept = _contact_kept(run.contact, runs, pre, seg, res, placed, run.lengths, run.options)
    if run.lm is None:
        return kept
    unmasked.add(config, run.lm, {v: r[0] for v, r in runs.items()}, tokens, res)
    if run.options.mask_fraction > 0:
        mtok, scored = _masked_batch(tokens, placed, run.lengths, run.options)
        runs, _ = run.variants(mtok, seg, pos, res, None)
        masked.add(config, run.lm, {v: r[0] for v, r in runs.items()}, tokens, scored)
    return kept


def _splice_result(run: _SpliceRun, unmasked: _LMTally, masked: _LMTally, kept: list) -> dict:
    """``{"lm_unmasked", "lm_masked", "contacts"}`` (``None`` where a head or masking is off)."""
    opts, lm = run.options, run.lm
    lm_masked = None
    if lm is not None and opts.mask_fraction > 0:
        lm_masked = {
            **masked.result(),
            "mask_fraction": opts.mask_fraction,
            "mask_scheme": opts.mask_scheme,
        }
    return {
        "lm_unmasked": unmasked.result() if lm is not None else None,
        "lm_masked": lm_masked,
        "contacts": _contact_result(kept, opts) if run.contact is not None else None,
    }


def _contact_result(kept: list[dict], opts: SpliceOptions) -> dict:
    k = {v: float(np.mean([p[v] for p in kept])) if kept else float("nan") for v in VARIANTS}
    return {
        **{f"kept_{v}": k[v] for v in VARIANTS if v != "clean"},
        "contact_score": recovered_score(k["clean"], k["sae"], k["mean"]),
        "contact_score_zero": recovered_score(k["clean"], k["sae"], k["zero"]),
        "num_proteins": len(kept),
        "min_separation": opts.min_separation,
        "top_fraction": opts.top_fraction,
    }


# ------------------------------------------------------------------------------ pipeline


def evaluate(
    model: tuple[Any, Any],
    heads: Any,
    encode: Callable[[jax.Array], jax.Array],
    decode: Callable[[jax.Array], jax.Array],
    X: Any,
    sequences: Sequence[Any],
    layer: int,
    *,
    mean: ArrayLike | None = None,
    options: SpliceOptions = SpliceOptions(),
) -> dict[str, Any]:
    """``core_metrics`` on ``X`` and ``splice_scores`` on ``sequences``, as one JSON-ready dict.

    Args:
      model, heads: ESM-2 and its heads (``load_esm2`` + ``load_esm2_heads``).
      encode, decode: the SAE on raw activations (see ``core_metrics``).
      X: held-out activation rows of ``layer`` (array or ``ActivationStore``).
      sequences: the proteins to splice (e.g. the test split).
      layer: the hidden state the SAE reads.
      mean: ``(d,)`` the mean activation for mean-ablation (the training store's ``mean``).
      options: ``SpliceOptions``.

    Returns:
      ``{"core": core_metrics(…), "splice": splice_scores(…), "seconds": …}``; ``"splice"`` is
      ``None`` when the model has no head.
    """
    t0 = time.perf_counter()
    core = core_metrics(encode, decode, X)
    has_head = getattr(heads, "lm", None) is not None or getattr(heads, "contact", None) is not None
    splice = None
    if has_head:
        splice = splice_scores(
            model, lambda x: decode(encode(x)), sequences, layer,
            heads=heads, mean=mean, options=options,
        )  # fmt: skip
    return {"core": core, "splice": splice, "seconds": time.perf_counter() - t0}


def summary_lines(result: dict[str, Any]) -> list[str]:
    """The printed summary of ``evaluate``'s result, one metric family per line."""
    c = result["core"]
    lines = [
        f"reconstruction: explained variance {c['explained_variance']:.3f} (pooled "
        f"{c['explained_variance_pooled']:.3f}), MSE {c['mse']:.4g}, cosine {c['cossim']:.3f}, "
        f"L2 ratio {c['l2_ratio']:.3f}, relative bias {c['relative_reconstruction_bias']:.3f}",
        f"sparsity: L0 {c['l0']:.1f}, dead {c['dead_fraction']:.1%}, dense (>10 %) "
        f"{c['dense_fraction']:.1%} of {c['d_sae']} features on {c['num_tokens']} residues",
    ]
    s = result.get("splice")
    if not s:
        return lines + ["splicing: skipped (the model has no LM or contact head)"]
    for key, name in (("lm_unmasked", "unmasked"), ("lm_masked", "15 % masked")):
        m = s.get(key)
        if m:
            if key == "lm_masked":
                name = f"{m['mask_fraction']:.0%} masked ({m['mask_scheme']})"
            lines.append(
                f"splicing, LM {name}: CE-loss score {m['ce_loss_score']:.3f} (CE clean "
                f"{m['ce_clean']:.3f}, SAE {m['ce_sae']:.3f}, zero {m['ce_zero']:.3f}, mean "
                f"{m['ce_mean']:.3f}), KL score {m['kl_div_score']:.3f} (KL SAE "
                f"{m['kl_sae']:.3g}, zero {m['kl_zero']:.3g})"
            )
    k = s.get("contacts")
    if k:
        lines.append(
            f"splicing, contacts: contact score {k['contact_score']:.3f} (top-L/5 long-range "
            f"contacts kept: SAE {k['kept_sae']:.1%}, mean-ablation {k['kept_mean']:.1%}, "
            f"zero-ablation {k['kept_zero']:.1%}; {k['num_proteins']} proteins, layer "
            f"{s['layer']})"
        )
    lines.append(f"faithfulness took {result['seconds']:.1f} s")
    return lines


def analysis_hook(
    heads: Any,
    *,
    mean: ArrayLike | None = None,
    max_proteins: int = 50,
    options: SpliceOptions = SpliceOptions(),
) -> Callable[[Any], dict[str, Any]]:
    """The faithfulness stage of ``jaxsae.interpret.analyse`` (its ``faithfulness=`` hook).

    The hook receives the analysis' ``FaithfulnessInputs`` and runs ``evaluate`` on the first
    ``max_proteins`` test proteins of the store (all proteins if it has no test split): core
    metrics on their rows, splicing on their sequences at the store's layer (skipped when the
    analysis has no model or the store names no layer). The SAE is read through the analysis'
    SAE featurizer (so every architecture it knows is evaluated the same way) and decoded by
    ``W_dec``, ``b_dec``.

    Args:
      heads: ``ESM2Heads`` of the model (``jaxsae.protein.weights.load_esm2_heads``).
      mean: ``(d,)`` the activation mean for mean-ablation, e.g. the training store's
        ``mean`` (default: the mean of the analysed store).
      max_proteins: proteins evaluated (``> 0``).
      options: ``SpliceOptions``.

    Returns:
      ``hook(inputs) -> dict``: ``evaluate``'s result with its ``summary_lines`` under
      ``"lines"``.
    """
    if max_proteins <= 0:
        raise ValueError(f"max_proteins: expected > 0, found {max_proteins}")

    def hook(inputs: Any) -> dict[str, Any]:
        from jaxsae.kernels.sae import decode

        store, params = inputs.store, inputs.params
        test = [i for i, p in enumerate(inputs.proteins) if p.get("split") == "test"]
        chosen = (test or list(range(store.num_proteins)))[:max_proteins]
        X = store.take(np.concatenate([store.positions_of(i) for i in chosen]))
        feat = inputs.featurizer
        encode = jax.jit(functools.partial(feat.apply, feat.params))
        dec = jax.jit(functools.partial(decode, params))
        mu = store.mean if mean is None else mean
        if inputs.model is None or inputs.layer is None:
            result = {"core": core_metrics(encode, dec, X), "splice": None, "seconds": 0.0}
        else:
            recs = [inputs.proteins[i] for i in chosen]
            result = evaluate(
                inputs.model, heads, encode, dec, X, recs, int(inputs.layer),
                mean=mu, options=options,
            )  # fmt: skip
        return {**result, "lines": summary_lines(result)}

    return hook
