"""Feature ↔ concept association: precision, recall and F1 (InterPLM's protocol).

For a featurizer with ``F`` features and a set of ``K`` binary concepts:

1. scale each feature by its maximum activation (over the whole store), ``a_i = f_i / max f_i``;
2. binarise at each threshold ``t ∈ {0, 0.15, 0.5, 0.6, 0.8}``: ``b_i = [a_i > t]``;
3. count, per split (validation, test), threshold, feature and concept,
   ``TP = Σ_rows b_i · c_k`` (a matrix product of the binarised activations with the concept
   indicators, chunk by chunk), the rows where the feature fires (``TP + FP``) and the rows
   where the concept holds (``TP + FN``);
4. per concept, choose the (feature, threshold) with the best F1 on the **validation** split and
   report its precision, recall and F1 on the **test** split.

Per-residue concepts count residues; per-domain concepts count domains, a domain being *hit*
when the feature fires on any of its residues (the per-protein maximum of ``a_i`` exceeds
``t``). Concepts with fewer than ``min_positives`` examples in either split are not scored.

Reference: Simon & Zou, "InterPLM: discovering interpretable features in protein language
models via sparse autoencoders" (2024).
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from jaxsae.interpret.concepts import DomainConcepts, ResidueConcepts, split_codes
from jaxsae.interpret.topk import Featurizer, iter_chunks, pad_chunk

__all__ = [
    "THRESHOLDS",
    "AssociationCounts",
    "ConceptScores",
    "count_concepts",
    "association_metrics",
    "select_best",
    "associate",
    "coverage_summary",
    "feature_best_concepts",
]

THRESHOLDS = (0.0, 0.15, 0.5, 0.6, 0.8)
EVAL_SPLITS = ("validation", "test")  # split axis of the counts


class AssociationCounts(NamedTuple):
    """Confusion counts, NumPy int64.

    Attributes:
      tp: ``(S, T, F, K)`` rows where feature ``f`` fires at threshold ``t`` and concept ``k``
        holds.
      active: ``(S, T, F)`` rows where the feature fires (``TP + FP`` for every concept).
      positives: ``(S, K)`` rows where the concept holds (``TP + FN`` for every feature).
      total: ``(S,)`` rows counted.
      thresholds: ``(T,)`` thresholds on the max-scaled activation.
    """

    tp: np.ndarray
    active: np.ndarray
    positives: np.ndarray
    total: np.ndarray
    thresholds: np.ndarray

    def __add__(self, other: AssociationCounts) -> AssociationCounts:  # type: ignore[override]
        return AssociationCounts(
            self.tp + other.tp,
            self.active + other.active,
            self.positives + other.positives,
            self.total + other.total,
            self.thresholds,
        )


def _zero_counts(num_splits: int, thresholds: np.ndarray, num_f: int, num_k: int):
    t = len(thresholds)
    return AssociationCounts(
        np.zeros((num_splits, t, num_f, num_k), np.int64),
        np.zeros((num_splits, t, num_f), np.int64),
        np.zeros((num_splits, num_k), np.int64),
        np.zeros((num_splits,), np.int64),
        np.asarray(thresholds, np.float64),
    )


def _count_terms(a, concepts, split_mask, thresholds):
    """``(tp (T, F, S·K), active (T, F, S))`` for scaled activations ``a (n, F)``."""
    dtype = jnp.float32
    cm = (concepts.astype(dtype)[:, None, :] * split_mask.astype(dtype)[:, :, None]).reshape(
        concepts.shape[0], -1
    )  # (n, S*K)
    m = split_mask.astype(dtype)
    tps, acts = [], []
    for i in range(thresholds.shape[0]):  # T is small and static: unrolled
        b = (a > thresholds[i]).astype(dtype)  # (n, F)
        tps.append(b.T @ cm)
        acts.append(b.T @ m)
    return jnp.stack(tps), jnp.stack(acts)


_count_jit = jax.jit(_count_terms)


def _accumulate(counts: AssociationCounts, tp, active, concepts, split_mask) -> AssociationCounts:
    s, k = counts.positives.shape
    tp = np.rint(np.asarray(tp)).astype(np.int64)  # (T, F, S*K), exact: each sum <= chunk rows
    t, f = tp.shape[:2]
    tp = tp.reshape(t, f, s, k).transpose(2, 0, 1, 3)
    act = np.rint(np.asarray(active)).astype(np.int64).transpose(2, 0, 1)
    mask = np.asarray(split_mask, np.int64)
    pos = mask.T @ np.asarray(concepts, np.int64)
    return AssociationCounts(
        counts.tp + tp,
        counts.active + act,
        counts.positives + pos,
        counts.total + mask.sum(axis=0),
        counts.thresholds,
    )


def count_concepts(
    scaled: Any,
    concepts: Any,
    split_mask: Any,
    *,
    thresholds: Iterable[float] = THRESHOLDS,
    chunk_size: int = 4096,
) -> AssociationCounts:
    """Confusion counts of binarised activations against concepts (in-memory arrays).

    Args:
      scaled: ``(n, F)`` activations already divided by each feature's maximum.
      concepts: ``(n, K)`` 0/1 concept indicators.
      split_mask: ``(n, S)`` 0/1: which split each row counts in (rows of no split: all zeros).
      thresholds: ``T`` thresholds; a feature fires where ``scaled > t``.
      chunk_size: rows per matrix product.

    Returns:
      ``AssociationCounts``.
    """
    scaled = np.asarray(scaled, np.float32)
    concepts = np.asarray(concepts)
    split_mask = np.asarray(split_mask)
    if scaled.ndim != 2 or concepts.ndim != 2 or split_mask.ndim != 2:
        raise ValueError(
            "count_concepts: expected scaled (n, F), concepts (n, K), split_mask (n, S), found "
            f"{scaled.shape}, {concepts.shape}, {split_mask.shape}"
        )
    if not scaled.shape[0] == concepts.shape[0] == split_mask.shape[0]:
        raise ValueError(
            "count_concepts: expected the same number of rows, found "
            f"{scaled.shape[0]}, {concepts.shape[0]}, {split_mask.shape[0]}"
        )
    thr = np.asarray(tuple(thresholds), np.float32)
    counts = _zero_counts(split_mask.shape[1], thr, scaled.shape[1], concepts.shape[1])
    for start in range(0, scaled.shape[0], chunk_size):
        sl = slice(start, start + chunk_size)
        tp, act = _count_jit(scaled[sl], concepts[sl], split_mask[sl], thr)
        counts = _accumulate(counts, tp, act, concepts[sl], split_mask[sl])
    return counts


def association_metrics(counts: AssociationCounts) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(precision, recall, f1)``, each ``(S, T, F, K)`` (0 where undefined).

    ``precision = TP / (TP + FP)``, ``recall = TP / (TP + FN)``,
    ``F1 = 2 TP / (2 TP + FP + FN) = 2 TP / (active + positives)``.
    """
    tp = counts.tp.astype(np.float64)
    active = counts.active[..., None].astype(np.float64)
    pos = counts.positives[:, None, None, :].astype(np.float64)
    with np.errstate(divide="ignore", invalid="ignore"):
        precision = np.where(active > 0, tp / active, 0.0)
        recall = np.where(pos > 0, tp / pos, 0.0)
        f1 = np.where(active + pos > 0, 2 * tp / (active + pos), 0.0)
    return precision, recall, f1


class ConceptScores(NamedTuple):
    """Best feature per concept, chosen on validation and scored on test.

    Attributes:
      names: ``(K,)`` concept names.
      descriptions: ``(K,)`` descriptions.
      categories: ``(K,)`` concept family (``"DSSP8"``, ``"residue"``, ``"superfamily"``, ...).
      eligible: ``(K,)`` bool: enough examples in both splits to be scored.
      feature: ``(K,)`` int: the chosen feature.
      threshold: ``(K,)`` the chosen threshold.
      val_f1: ``(K,)`` its F1 on the validation split.
      test_f1, test_precision, test_recall: ``(K,)`` its scores on the test split.
      n_val, n_test: ``(K,)`` examples of the concept in each split.
    """

    names: tuple[str, ...]
    descriptions: tuple[str, ...]
    categories: tuple[str, ...]
    eligible: np.ndarray
    feature: np.ndarray
    threshold: np.ndarray
    val_f1: np.ndarray
    test_f1: np.ndarray
    test_precision: np.ndarray
    test_recall: np.ndarray
    n_val: np.ndarray
    n_test: np.ndarray


def select_best(
    counts: AssociationCounts,
    names: Iterable[str],
    *,
    descriptions: Iterable[str] | None = None,
    min_positives: int = 10,
    val: int = 0,
    test: int = 1,
) -> ConceptScores:
    """Per concept, the (feature, threshold) with the best validation F1, scored on test.

    Args:
      counts: from ``count_concepts`` or ``associate``.
      names: ``K`` concept names (the category is the first word: ``"DSSP8 H"`` → ``"DSSP8"``).
      descriptions: ``K`` descriptions (default: the names).
      min_positives: a concept is eligible when it has at least this many examples in both the
        validation and the test split.
      val, test: indices of the validation and test splits on the counts' split axis.

    Returns:
      ``ConceptScores`` (ties: the lowest threshold, then the lowest feature index).
    """
    names = tuple(names)
    descriptions = tuple(descriptions) if descriptions is not None else names
    precision, recall, f1 = association_metrics(counts)
    s, t, f, k = counts.tp.shape
    if len(names) != k:
        raise ValueError(f"names: expected {k} concept names, found {len(names)}")
    flat_val = f1[val].reshape(t * f, k)
    best = np.argmax(flat_val, axis=0)  # (K,), first maximum: lowest threshold, then feature
    ti, fi = np.unravel_index(best, (t, f))
    cols = np.arange(k)
    n_val = counts.positives[val]
    n_test = counts.positives[test]
    return ConceptScores(
        names=names,
        descriptions=descriptions,
        categories=tuple(n.split()[0] for n in names),
        eligible=(n_val >= min_positives) & (n_test >= min_positives),
        feature=fi.astype(np.int64),
        threshold=counts.thresholds[ti],
        val_f1=flat_val[best, cols],
        test_f1=f1[test][ti, fi, cols],
        test_precision=precision[test][ti, fi, cols],
        test_recall=recall[test][ti, fi, cols],
        n_val=n_val,
        n_test=n_test,
    )


def feature_best_concepts(
    counts: AssociationCounts, names: Iterable[str], features: Iterable[int], n: int = 3
) -> dict[int, list[tuple[str, float, float]]]:
    """Best concepts of given features, on validation and test pooled.

    Returns:
      ``{feature: [(concept, F1, threshold), ...]}``, best first, F1 maximised over thresholds.
    """
    names = tuple(names)
    pooled = AssociationCounts(
        counts.tp.sum(0, keepdims=True),
        counts.active.sum(0, keepdims=True),
        counts.positives.sum(0, keepdims=True),
        counts.total.sum(0, keepdims=True),
        counts.thresholds,
    )
    _, _, f1 = association_metrics(pooled)
    f1 = f1[0]  # (T, F, K)
    out = {}
    for feat in features:
        per = f1[:, feat, :]  # (T, K)
        best_t = per.argmax(0)
        best = per.max(0)
        order = np.argsort(-best, kind="stable")[:n]
        out[int(feat)] = [
            (names[j], float(best[j]), float(counts.thresholds[best_t[j]]))
            for j in order
            if best[j] > 0
        ]
    return out


@functools.cache
def _residue_step(apply: Callable) -> Callable:
    def step(params, x, inv_scale, concepts, split_mask, thresholds, segments):
        a = apply(params, x).astype(jnp.float32) * inv_scale[None, :]
        tp, act = _count_terms(a, concepts, split_mask, thresholds)
        seg_max = jax.ops.segment_max(a, segments, num_segments=x.shape[0])
        return tp, act, jnp.maximum(seg_max, 0)

    return jax.jit(step)


def _rows_per_protein(source: Any, num_proteins: int) -> np.ndarray:
    if hasattr(source, "index") and hasattr(source, "num_shards"):
        parts = [np.asarray(source.index(i))[:, 0] for i in range(source.num_shards)]
        prot = np.concatenate(parts) if parts else np.zeros((0,), np.int64)
    else:
        prot = np.asarray(source[1])[:, 0]
    return np.bincount(prot, minlength=num_proteins).astype(np.int64)


def associate(
    source: Any,
    featurizer: Featurizer,
    max_act: Any,
    proteins: list[dict],
    *,
    residue: ResidueConcepts | None = None,
    domain: DomainConcepts | None = None,
    domain_split: Any = None,
    thresholds: Iterable[float] = THRESHOLDS,
    chunk_size: int = 2048,
    progress: Callable[[Iterable], Iterable] | None = None,
) -> tuple[AssociationCounts | None, AssociationCounts | None]:
    """Stream over a store once and count feature ↔ concept agreement on validation and test.

    Rows of training proteins (and of proteins without a split) are skipped; chunks that hold
    none of the evaluation rows are not encoded. Memory: ``O(F · (chunk_size + K·T))`` plus the
    per-protein maxima of proteins cut by a chunk boundary.

    Args:
      source: an ``ActivationStore`` or ``(acts (N, d), index (N, 2))``.
      featurizer: the features to score.
      max_act: ``(F,)`` maximum activation of each feature (``FeatureStats.max_act``); features
        with maximum 0 never fire.
      proteins: the store's protein records (their ``"split"`` field picks validation/test).
      residue: per-residue concepts (or ``None``).
      domain: per-domain concepts (or ``None``).
      domain_split: ``(P,)`` split codes (``split_codes``: 1 validation, 2 test) used for the
        domain concepts instead of the proteins' own (e.g. when the data are split by SCOPe
        superfamily, no superfamily is in both validation and test).
      thresholds: on the max-scaled activation.
      chunk_size: rows per step.
      progress: optional wrapper of the chunk iterator (e.g. ``tqdm``).

    Returns:
      ``(residue_counts, domain_counts)``, split axis ``(validation, test)``; ``None`` for a
      concept set not given.
    """
    thr = np.asarray(tuple(thresholds), np.float32)
    num_f = featurizer.num_features
    max_act = np.asarray(max_act, np.float32)
    if max_act.shape != (num_f,):
        raise ValueError(f"max_act: expected shape ({num_f},), found {max_act.shape}")
    inv_scale = np.where(max_act > 0, 1.0 / np.where(max_act > 0, max_act, 1.0), 0.0)
    inv_scale = inv_scale.astype(np.float32)
    split = split_codes(proteins)
    eval_split = np.where(split == 1, 0, np.where(split == 2, 1, -1))  # (P,): 0 val, 1 test
    dsplit = split if domain_split is None else np.asarray(domain_split)
    if dsplit.shape != split.shape:
        raise ValueError(f"domain_split: expected shape {split.shape}, found {dsplit.shape}")
    dom_eval = np.where(dsplit == 1, 0, np.where(dsplit == 2, 1, -1))
    num_s = 2
    if residue is None and domain is None:
        raise ValueError("associate: expected residue or domain concepts, found neither")
    num_kr = len(residue.names) if residue is not None else 0
    res_counts = _zero_counts(num_s, thr, num_f, num_kr)
    step = _residue_step(featurizer.apply)

    dom_counts = None
    if domain is not None:
        num_kd = len(domain.names)
        dom_counts = _zero_counts(num_s, thr, num_f, num_kd)
        expected = _rows_per_protein(source, len(proteins))
        seen = np.zeros_like(expected)
        pending: dict[int, np.ndarray] = {}
        done_max: list[np.ndarray] = []
        done_prot: list[int] = []

    def flush(final: bool = False):
        nonlocal dom_counts
        while done_prot and (final or len(done_prot) >= chunk_size):
            prot = np.asarray(done_prot[:chunk_size])
            maxes = np.stack(done_max[:chunk_size])
            del done_prot[:chunk_size], done_max[:chunk_size]
            conc = domain.matrix[prot]
            mask = np.zeros((len(prot), num_s), np.uint8)
            ok = domain.annotated[prot]
            mask[ok, dom_eval[prot][ok]] = 1
            maxes_p, _, _ = pad_chunk(maxes, np.zeros((len(prot), 2), np.int32), chunk_size)
            conc_p = np.zeros((chunk_size, conc.shape[1]), np.uint8)
            conc_p[: len(prot)] = conc
            mask_p = np.zeros((chunk_size, num_s), np.uint8)
            mask_p[: len(prot)] = mask
            tp, act = _count_jit(maxes_p, conc_p, mask_p, thr)
            dom_counts = _accumulate(dom_counts, tp, act, conc_p, mask_p)

    chunks = iter_chunks(source, chunk_size)
    if progress is not None:
        chunks = progress(chunks)
    for acts, index in chunks:
        n = acts.shape[0]
        prot = np.asarray(index[:, 0], np.int64)
        row_split = eval_split[prot]
        if not ((row_split >= 0).any() or (domain is not None and (dom_eval[prot] >= 0).any())):
            continue
        if residue is not None:
            conc, ok = residue.lookup(index)
        else:
            conc, ok = np.zeros((n, 0), np.uint8), np.zeros((n,), bool)
        mask = np.zeros((n, num_s), np.uint8)
        sel = ok & (row_split >= 0)
        mask[sel, row_split[sel]] = 1
        uniq, local = np.unique(prot, return_inverse=True)
        acts_p, _, _ = pad_chunk(acts, np.asarray(index, np.int32), chunk_size)
        conc_p = np.zeros((chunk_size, conc.shape[1]), np.uint8)
        conc_p[:n] = conc
        mask_p = np.zeros((chunk_size, num_s), np.uint8)
        mask_p[:n] = mask
        seg = np.full((chunk_size,), chunk_size - 1, np.int32)
        seg[:n] = local
        if n < chunk_size and len(uniq) >= chunk_size:  # pragma: no cover - needs 1-row proteins
            raise ValueError("associate: too many proteins in one chunk; raise chunk_size")
        tp, act, seg_max = step(featurizer.params, acts_p, inv_scale, conc_p, mask_p, thr, seg)
        if residue is not None:
            res_counts = _accumulate(res_counts, tp, act, conc_p, mask_p)
        if domain is not None:
            seg_max = np.asarray(seg_max)
            rows = np.bincount(local, minlength=len(uniq))
            for j, p in enumerate(uniq):
                if dom_eval[p] < 0:
                    continue
                m = seg_max[j]
                pending[p] = np.maximum(pending[p], m) if p in pending else m.copy()
                seen[p] += rows[j]
                if seen[p] >= expected[p]:
                    done_max.append(pending.pop(p))
                    done_prot.append(int(p))
            flush()
    if domain is not None:
        for p in list(pending):  # proteins whose rows did not all arrive (not expected)
            done_max.append(pending.pop(p))
            done_prot.append(int(p))
        flush(final=True)
    return (res_counts if residue is not None else None), dom_counts


def coverage_summary(scores: ConceptScores, *, f1_min: float = 0.5) -> dict[str, Any]:
    """Concepts covered (test F1 > ``f1_min``) and the mean best test F1, over eligible concepts.

    Returns:
      ``{"eligible": int, "covered": int, "mean_f1": float, "by_category": {cat: {...}}}``.
    """

    def summ(mask: np.ndarray) -> dict[str, Any]:
        e = scores.eligible & mask
        return {
            "eligible": int(e.sum()),
            "covered": int((scores.test_f1[e] > f1_min).sum()),
            "mean_f1": float(scores.test_f1[e].mean()) if e.any() else float("nan"),
        }

    cats = np.asarray(scores.categories)
    out = summ(np.ones(len(cats), bool))
    out["by_category"] = {c: summ(cats == c) for c in dict.fromkeys(scores.categories)}
    return out
