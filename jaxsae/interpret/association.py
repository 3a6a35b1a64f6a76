"""Feature ↔ concept association: precision, recall and F1, exactly as InterPLM scores them.

For a featurizer with ``F`` features and ``K`` concepts (``jaxsae.interpret.concepts``):

1. scale each feature by its maximum activation (over the whole store), ``a_i = f_i / max f_i``;
2. binarise at each threshold ``t ∈ {0, 0.15, 0.5, 0.6, 0.8}``: ``b_i = [a_i > t]``;
3. count, per split (valid, test), threshold, feature and concept: ``TP`` = residues where the
   feature fires and the concept holds, the residues where the feature fires (``TP + FP``), the
   residues where the concept holds, and, for *range* concepts, ``TP_inst`` = the instances
   (a helix, a domain, a motif …) on at least one residue of which the feature fires, and the
   number of instances;
4. precision ``= TP / (TP + FP)`` (per residue, every concept); recall ``= TP / residues`` for a
   *point* concept and ``TP_inst / instances`` for a *range* concept; ``F1 = 2PR / (P + R)``;
5. keep the concepts with more than ``min_residues`` residues **or** more than
   ``min_instances`` instances in validation and test pooled (InterPLM's ``make_eval_subset``:
   1,500 and 25);
6. per concept, choose the (feature, threshold) with the best F1 on the **valid** split (ties:
   the better per-residue F1, then the lowest threshold, then the lowest feature) and report
   its precision, recall and F1 on the **test** split.

References: Simon & Zou, "InterPLM: discovering interpretable features in protein language
models via sparse autoencoders", Nature Methods (2025); its code: ``calc_metrics_sparse``
(``tp``, ``fp``, ``tp_per_domain`` = unique instance ids hit), ``calculate_metrics``
(``recall_per_domain``, ``f1_per_domain``; recall per residue for ``is_aa_level_concept``),
``make_eval_subset`` (the concept filter) and ``report_metrics`` (selection on valid).

Named variants (not InterPLM's protocol): ``recall="residue"`` counts recall per residue for
every concept (earlier jaxsae releases); ``threshold="test"`` keeps the feature chosen on
validation but takes its best threshold on test, which is what InterPLM's ``report_metrics``
script does after merging on (feature, concept) — ``ConceptScores.test_f1_best_threshold``
reports it beside the held-out number.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterable, Sequence
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from jaxsae.interpret.concepts import ConceptTable, split_codes
from jaxsae.interpret.topk import Featurizer, iter_chunks, pad_chunk

__all__ = [
    "THRESHOLDS",
    "MIN_RESIDUES",
    "MIN_INSTANCES",
    "EVAL_SPLITS",
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
MIN_RESIDUES = 1500  # InterPLM's min_aa_per_concept
MIN_INSTANCES = 25  # InterPLM's min_domains_per_concept
EVAL_SPLITS = ("valid", "test")  # split axis of the counts


class AssociationCounts(NamedTuple):
    """Confusion counts, NumPy int64.

    Attributes:
      tp: ``(S, T, F, K)`` residues where feature ``f`` fires at threshold ``t`` and concept
        ``k`` holds.
      active: ``(S, T, F)`` residues where the feature fires (``TP + FP`` for every concept).
      positives: ``(S, K)`` residues where the concept holds.
      total: ``(S,)`` residues counted.
      thresholds: ``(T,)`` thresholds on the max-scaled activation.
      tp_instances: ``(S, T, F, K)`` instances of a range concept hit by the feature (at least
        one residue fires); 0 for point concepts.
      instances: ``(S, K)`` instances of each range concept; 0 for point concepts.
    """

    tp: np.ndarray
    active: np.ndarray
    positives: np.ndarray
    total: np.ndarray
    thresholds: np.ndarray
    tp_instances: np.ndarray
    instances: np.ndarray

    def __add__(self, other: AssociationCounts) -> AssociationCounts:  # type: ignore[override]
        return AssociationCounts(
            self.tp + other.tp,
            self.active + other.active,
            self.positives + other.positives,
            self.total + other.total,
            self.thresholds,
            self.tp_instances + other.tp_instances,
            self.instances + other.instances,
        )

    def take(self, cols: np.ndarray) -> AssociationCounts:
        """The counts of some concepts (columns ``cols`` of the concept axis)."""
        return self._replace(
            tp=self.tp[..., cols],
            positives=self.positives[:, cols],
            tp_instances=self.tp_instances[..., cols],
            instances=self.instances[:, cols],
        )


def _zeros(num_s: int, thresholds: np.ndarray, num_f: int, num_k: int) -> AssociationCounts:
    t = len(thresholds)
    return AssociationCounts(
        np.zeros((num_s, t, num_f, num_k), np.int64),
        np.zeros((num_s, t, num_f), np.int64),
        np.zeros((num_s, num_k), np.int64),
        np.zeros((num_s,), np.int64),
        np.asarray(thresholds, np.float64),
        np.zeros((num_s, t, num_f, num_k), np.int64),
        np.zeros((num_s, num_k), np.int64),
    )


def count_concepts(
    scaled: Any,
    concepts: Any,
    split_mask: Any,
    *,
    instance_ids: Any = None,
    thresholds: Iterable[float] = THRESHOLDS,
) -> AssociationCounts:
    """Confusion counts of in-memory arrays (the plain reference of ``associate``).

    Args:
      scaled: ``(n, F)`` activations already divided by each feature's maximum.
      concepts: ``(n, K)`` 0/1 concept indicators.
      split_mask: ``(n, S)`` 0/1: which split each row counts in (rows of no split: all zeros).
      instance_ids: ``(n, K)`` int: each residue's instance number (0 = none) for the range
        concepts, InterPLM's label matrix (``ConceptTable.instance_ids``); ``None``: no range
        concepts. Instance numbers must not be shared across splits.
      thresholds: ``T`` thresholds; a feature fires where ``scaled > t``.

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
    thr = np.asarray(tuple(thresholds), np.float64)
    num_s, num_k, num_f = split_mask.shape[1], concepts.shape[1], scaled.shape[1]
    out = _zeros(num_s, thr, num_f, num_k)
    ids = None if instance_ids is None else np.asarray(instance_ids, np.int64)
    for s in range(num_s):
        rows = split_mask[:, s] > 0
        c = concepts[rows].astype(np.int64)
        out.positives[s] = c.sum(0)
        out.total[s] = rows.sum()
        for ti, t in enumerate(thr):
            b = (scaled[rows] > t).astype(np.int64)
            out.tp[s, ti] = b.T @ c
            out.active[s, ti] = b.sum(0)
            if ids is None:
                continue
            for k in range(num_k):
                col = ids[rows, k]
                for f in range(num_f):
                    hit = col[(b[:, f] > 0) & (col > 0)]
                    out.tp_instances[s, ti, f, k] = len(np.unique(hit))
        if ids is not None:
            out.instances[s] = [
                len(np.unique(ids[rows, k][ids[rows, k] > 0])) for k in range(num_k)
            ]
    return out


def association_metrics(
    counts: AssociationCounts, kinds: Sequence[str] | None = None, *, recall: str = "instance"
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(precision, recall, f1)``, each ``(S, T, F, K)`` (0 where undefined).

    Args:
      counts: the counts.
      kinds: ``K`` concept kinds (``"point"`` / ``"range"``); ``None``: every concept a point.
      recall: ``"instance"`` (InterPLM: per instance for ranges, per residue for points) or
        ``"residue"`` (per residue for every concept; a named variant).
    """
    if recall not in ("instance", "residue"):
        raise ValueError(f"recall: expected 'instance' or 'residue', found {recall!r}")
    tp = counts.tp.astype(np.float64)
    active = counts.active[..., None].astype(np.float64)
    pos = counts.positives[:, None, None, :].astype(np.float64)
    with np.errstate(divide="ignore", invalid="ignore"):
        precision = np.where(active > 0, tp / active, 0.0)
        rec = np.where(pos > 0, tp / pos, 0.0)
        if recall == "instance" and kinds is not None:
            is_range = np.array([k == "range" for k in kinds], bool)
            if len(is_range) != tp.shape[-1]:
                raise ValueError(f"kinds: expected {tp.shape[-1]} kinds, found {len(is_range)}")
            tpi = counts.tp_instances.astype(np.float64)
            n_inst = counts.instances[:, None, None, :].astype(np.float64)
            rec_inst = np.where(n_inst > 0, tpi / n_inst, 0.0)
            rec = np.where(is_range, rec_inst, rec)
        s = precision + rec
        f1 = np.where(s > 0, 2 * precision * rec / np.where(s > 0, s, 1.0), 0.0)
    return precision, rec, f1


class ConceptScores(NamedTuple):
    """Best feature per concept, chosen on validation and scored on test.

    Attributes:
      names: ``(K,)`` concept names.
      descriptions: ``(K,)`` descriptions.
      categories: ``(K,)`` concept family (``"DSSP8"``, ``"residue"``, ``"superfamily"``, ...).
      kinds: ``(K,)`` ``"point"`` or ``"range"``.
      eligible: ``(K,)`` bool: passes the concept filter.
      feature: ``(K,)`` int: the chosen feature.
      threshold: ``(K,)`` the chosen threshold.
      val_f1: ``(K,)`` its F1 on the validation split.
      test_f1, test_precision, test_recall: ``(K,)`` its scores on the test split.
      n_val, n_test: ``(K,)`` residues of the concept in each split.
      n_val_instances, n_test_instances: ``(K,)`` instances (range concepts; residues for points).
      test_f1_best_threshold: ``(K,)`` test F1 of the chosen feature at its best test threshold
        (InterPLM's ``report_metrics``; a named variant, never used for selection).
    """

    names: tuple[str, ...]
    descriptions: tuple[str, ...]
    categories: tuple[str, ...]
    kinds: tuple[str, ...]
    eligible: np.ndarray
    feature: np.ndarray
    threshold: np.ndarray
    val_f1: np.ndarray
    test_f1: np.ndarray
    test_precision: np.ndarray
    test_recall: np.ndarray
    n_val: np.ndarray
    n_test: np.ndarray
    n_val_instances: np.ndarray
    n_test_instances: np.ndarray
    test_f1_best_threshold: np.ndarray


def _instances_or_residues(counts: AssociationCounts, kinds: Sequence[str]) -> np.ndarray:
    is_range = np.array([k == "range" for k in kinds], bool)
    return np.where(is_range[None, :], counts.instances, counts.positives)


def select_best(
    counts: AssociationCounts,
    names: Iterable[str],
    *,
    kinds: Sequence[str] | None = None,
    descriptions: Iterable[str] | None = None,
    min_residues: int = MIN_RESIDUES,
    min_instances: int = MIN_INSTANCES,
    recall: str = "instance",
    threshold: str = "valid",
    val: int = 0,
    test: int = 1,
) -> ConceptScores:
    """Per concept, the (feature, threshold) with the best validation F1, scored on test.

    Args:
      counts: from ``count_concepts`` or ``associate``.
      names: ``K`` concept names (the category is the first word: ``"DSSP8 H"`` → ``"DSSP8"``).
      kinds: ``K`` kinds; default: every concept a point.
      descriptions: ``K`` descriptions (default: the names).
      min_residues, min_instances: a concept is eligible when validation and test together hold
        more than ``min_residues`` of its residues or more than ``min_instances`` of its
        instances (residues for point concepts) — InterPLM's filter.
      recall: ``"instance"`` (InterPLM) or ``"residue"`` (named variant).
      threshold: ``"valid"``: the threshold is chosen with the feature on validation;
        ``"test"``: the chosen feature's best threshold on test (named variant).
      val, test: indices of the validation and test splits on the counts' split axis.

    Returns:
      ``ConceptScores`` (ties: the better per-residue F1, then the lowest threshold, then the
      lowest feature index).
    """
    names = tuple(names)
    s, t, f, k = counts.tp.shape
    if len(names) != k:
        raise ValueError(f"names: expected {k} concept names, found {len(names)}")
    kinds = tuple(kinds) if kinds is not None else ("point",) * k
    if len(kinds) != k:
        raise ValueError(f"kinds: expected {k} concept kinds, found {len(kinds)}")
    if threshold not in ("valid", "test"):
        raise ValueError(f"threshold: expected 'valid' or 'test', found {threshold!r}")
    descriptions = tuple(descriptions) if descriptions is not None else names
    precision, rec, f1 = association_metrics(counts, kinds, recall=recall)
    _, _, f1_res = association_metrics(counts, kinds, recall="residue")
    flat_val = f1[val].reshape(t * f, k)
    flat_res = f1_res[val].reshape(t * f, k)
    top = flat_val.max(axis=0, keepdims=True)
    best = np.argmax(np.where(flat_val == top, flat_res, -1.0), axis=0)  # first: lowest t, f
    ti, fi = np.unravel_index(best, (t, f))
    cols = np.arange(k)
    test_f1_best = f1[test][:, fi, cols].max(axis=0)
    if threshold == "test":
        ti = f1[test][:, fi, cols].argmax(axis=0)
    inst = _instances_or_residues(counts, kinds)
    pooled_res = counts.positives[val] + counts.positives[test]
    pooled_inst = inst[val] + inst[test]
    return ConceptScores(
        names=names,
        descriptions=descriptions,
        categories=tuple(n.split()[0] for n in names),
        kinds=kinds,
        eligible=(pooled_res > min_residues) | (pooled_inst > min_instances),
        feature=fi.astype(np.int64),
        threshold=counts.thresholds[ti],
        val_f1=f1[val][ti, fi, cols],
        test_f1=f1[test][ti, fi, cols],
        test_precision=precision[test][ti, fi, cols],
        test_recall=rec[test][ti, fi, cols],
        n_val=counts.positives[val],
        n_test=counts.positives[test],
        n_val_instances=inst[val],
        n_test_instances=inst[test],
        test_f1_best_threshold=test_f1_best,
    )


def feature_best_concepts(
    counts: AssociationCounts,
    names: Iterable[str],
    features: Iterable[int],
    n: int = 3,
    *,
    kinds: Sequence[str] | None = None,
) -> dict[int, list[tuple[str, float, float]]]:
    """Best concepts of given features, on validation and test pooled.

    Returns:
      ``{feature: [(concept, F1, threshold), ...]}``, best first, F1 maximised over thresholds.
    """
    names = tuple(names)
    pooled = AssociationCounts(
        *(a.sum(0, keepdims=True) if i != 4 else a for i, a in enumerate(counts))
    )
    _, _, f1 = association_metrics(pooled, kinds)
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


# -- streaming --------------------------------------------------------------------------------


class _ChunkTerms(NamedTuple):
    """The device inputs of one chunk (``_chunk_inputs``): residue concept columns ``cm (n,
    S·K)`` and evaluation masks ``masks (n, G·S)``, the instances' row spans ``starts``/``ends
    (M,)`` and concept columns ``ic (M, S·K)``, and the rows ``bidx`` of the partial ones."""

    cm: np.ndarray
    masks: np.ndarray
    starts: np.ndarray
    ends: np.ndarray
    ic: np.ndarray
    bidx: np.ndarray


def _count_terms(a, chunk: _ChunkTerms, thresholds):
    """Per threshold: residue TP ``(F, S·K)``, active ``(F, G·S)``, instance TP ``(F, S·K)``
    of the instances complete in the chunk, and the hits ``(B, F)`` of the partial ones."""
    cm, masks, starts, ends, ic, bidx = chunk
    dtype = jnp.float32
    zero = jnp.zeros((1, a.shape[1]), dtype)
    tps, acts, tpis, bhits = [], [], [], []
    for i in range(thresholds.shape[0]):  # T is small and static: unrolled
        b = (a > thresholds[i]).astype(dtype)  # (n, F)
        tps.append(b.T @ cm)
        acts.append(b.T @ masks)
        c = jnp.concatenate([zero, jnp.cumsum(b, axis=0)])  # (n + 1, F), exact in float32
        hit = ((c[ends] - c[starts]) > 0.5).astype(dtype)  # (M, F)
        tpis.append(hit.T @ ic)
        bhits.append(hit[bidx] > 0)
    return jnp.stack(tps), jnp.stack(acts), jnp.stack(tpis), jnp.stack(bhits)


@functools.cache
def _step(apply: Callable) -> Callable:
    def step(params, x, inv_scale, chunk: _ChunkTerms, thresholds, acc):
        a = apply(params, x).astype(jnp.float32) * inv_scale[None, :]
        tp, act, tpi, bhit = _count_terms(a, chunk, thresholds)
        return (acc[0] + tp, acc[1] + act, acc[2] + tpi), bhit

    return jax.jit(step, donate_argnums=(5,))


def _pow2(n: int, lo: int) -> int:
    return max(lo, 1 << max(0, int(n) - 1).bit_length())


class _Layout(NamedTuple):
    """Where each concept set's columns sit in the concatenated concept axis."""

    tables: tuple[ConceptTable, ...]
    evals: tuple[np.ndarray, ...]  # (P,) per set: 0 valid, 1 test, -1 not counted
    col0: tuple[int, ...]
    num_k: int


def _chunk_inputs(layout: _Layout, index: np.ndarray, size: int, num_s: int):
    """Host arrays of one chunk: ``(_ChunkTerms, partial instances)``."""
    n = len(index)
    prot, pos = index[:, 0].astype(np.int64), index[:, 1].astype(np.int64)
    cm = np.zeros((size, num_s, layout.num_k), np.uint8)
    masks = np.zeros((size, len(layout.tables) * num_s), np.uint8)
    uniq, first, counts = np.unique(prot, return_index=True, return_counts=True)
    # rows of one protein must be contiguous with consecutive positions (store order)
    local = np.searchsorted(uniq, prot)
    if not np.array_equal(pos - pos[first[local]], np.arange(n) - first[local]):
        raise ValueError("associate: expected each protein's rows in order within a chunk")
    inst_rows = []  # (start row, end row, concept col, split, gid, length, piece)
    for g, (tab, ev, c0) in enumerate(zip(layout.tables, layout.evals, layout.col0, strict=True)):
        conc, ok = tab.lookup(index)
        sp = ev[np.clip(prot, 0, len(ev) - 1)]
        sel = ok & (sp >= 0)
        rows = np.flatnonzero(sel)
        cm[rows, sp[rows], c0 : c0 + conc.shape[1]] = conc[rows]
        masks[rows, g * num_s + sp[rows]] = 1
        for u, p in enumerate(uniq):
            if p < 0 or p >= len(ev) or ev[p] < 0 or not tab.annotated[p]:
                continue
            lo_i, hi_i = tab.inst_offsets[p], tab.inst_offsets[p + 1]
            if hi_i == lo_i:
                continue
            inst = tab.instances[lo_i:hi_i]
            p0, r0, cnt = pos[first[u]], first[u], counts[u]
            lo = np.maximum(inst[:, 1], p0)
            hi = np.minimum(inst[:, 2], p0 + cnt)
            for j in np.flatnonzero(hi > lo):
                s_, e_ = int(inst[j, 1]), int(inst[j, 2])
                inst_rows.append(
                    (
                        r0 + lo[j] - p0,
                        r0 + hi[j] - p0,
                        c0 + int(inst[j, 3]),
                        int(ev[p]),
                        (g, int(lo_i + j)),
                        e_ - s_,
                        int(hi[j] - lo[j]),
                    )
                )
    m = _pow2(len(inst_rows), 8)
    starts = np.zeros((m,), np.int32)
    ends = np.zeros((m,), np.int32)
    ic = np.zeros((m, num_s * layout.num_k), np.uint8)
    partial = []
    for i, (a, b, col, s, gid, length, piece) in enumerate(inst_rows):
        starts[i], ends[i] = a, b
        if piece == length:
            ic[i, s * layout.num_k + col] = 1
        else:
            partial.append((i, col, s, gid, length, piece))
    bidx = np.zeros((_pow2(len(partial), 4),), np.int32)
    bidx[: len(partial)] = [q[0] for q in partial]
    return _ChunkTerms(cm.reshape(size, -1), masks, starts, ends, ic, bidx), partial


def associate(
    source: Any,
    featurizer: Featurizer,
    max_act: Any,
    proteins: Sequence[dict],
    concept_sets: Sequence[ConceptTable],
    *,
    splits: Sequence[Any] | None = None,
    thresholds: Iterable[float] = THRESHOLDS,
    chunk_size: int = 2048,
    progress: Callable[[Iterable], Iterable] | None = None,
) -> list[AssociationCounts]:
    """Stream over a store once and count feature ↔ concept agreement on valid and test.

    Rows of training proteins (and of proteins without a split) are skipped; chunks that hold
    none of the evaluation rows are not encoded. Counts are accumulated on the device in
    float32 (exact below 2²⁴ rows) and moved to the host as int64 every 4,096 chunks. An
    instance cut by a chunk boundary is counted once, when all its residues have been seen.

    Args:
      source: an ``ActivationStore`` or ``(acts (N, d), index (N, 2))`` (each protein's rows
        contiguous and in order).
      featurizer: the features to score.
      max_act: ``(F,)`` maximum activation of each feature (``FeatureStats.max_act``); features
        with maximum 0 never fire.
      proteins: the store's protein records (their ``"split"`` picks valid/test).
      concept_sets: one ``ConceptTable`` per concept source.
      splits: per set, ``(P,)`` split codes (``split_codes``: 1 valid, 2 test) used instead of
        the proteins' own (e.g. SCOPe concepts under a split by SCOPe superfamily); ``None``
        entries (or ``splits=None``) use the proteins' splits.
      thresholds: on the max-scaled activation.
      chunk_size: rows per step.
      progress: optional wrapper of the chunk iterator (e.g. ``tqdm``).

    Returns:
      One ``AssociationCounts`` per concept set, split axis ``EVAL_SPLITS``.
    """
    if not concept_sets:
        raise ValueError("associate: expected at least one concept set, found none")
    thr = np.asarray(tuple(thresholds), np.float32)
    num_f = featurizer.num_features
    inv_scale = _inverse_scale(max_act, num_f)
    layout, any_eval = _eval_layout(proteins, concept_sets, splits)
    num_s, num_k, num_g = 2, layout.num_k, len(concept_sets)

    tally = _Tally(thr, num_f, num_k, num_g)
    step = _step(featurizer.apply)
    chunks = iter_chunks(source, chunk_size)
    if progress is not None:
        chunks = progress(chunks)
    for n_chunk, (acts, index) in enumerate(chunks):
        prot = np.asarray(index[:, 0], np.int64)
        if not any_eval[np.clip(prot, 0, len(any_eval) - 1)].any():
            continue
        chunk, partial = _chunk_inputs(layout, np.asarray(index), chunk_size, num_s)
        tally.add_host(chunk.cm, chunk.masks, chunk.ic)
        acts_p, _, _ = pad_chunk(acts, np.asarray(index, np.int32), chunk_size)
        tally.acc, bhit = step(featurizer.params, acts_p, inv_scale, chunk, thr, tally.acc)
        if partial:
            tally.add_partial(np.asarray(bhit), partial)
        if (n_chunk + 1) % 4096 == 0:  # float32 sums stay exact below 2^24 rows
            tally.drain()
    return tally.result([len(t.names) for t in concept_sets], layout.col0)


def _inverse_scale(max_act: Any, num_f: int) -> np.ndarray:
    """``(F,)`` float32 ``1 / max_act`` (0 for features that never fire), after a shape check."""
    max_act = np.asarray(max_act, np.float32)
    if max_act.shape != (num_f,):
        raise ValueError(f"max_act: expected shape ({num_f},), found {max_act.shape}")
    inv_scale = np.where(max_act > 0, 1.0 / np.where(max_act > 0, max_act, 1.0), 0.0)
    return inv_scale.astype(np.float32)


def _eval_layout(
    proteins: Sequence[dict], concept_sets: Sequence[ConceptTable], splits: Sequence[Any] | None
) -> tuple[_Layout, np.ndarray]:
    """The concept sets' ``_Layout`` (each set's evaluation split per protein: 0 valid, 1 test,
    −1 not counted) and ``(P,)`` bool: the protein counts for some set."""
    base = split_codes(proteins)
    splits = list(splits) if splits is not None else [None] * len(concept_sets)
    if len(splits) != len(concept_sets):
        raise ValueError(f"splits: expected {len(concept_sets)} entries, found {len(splits)}")
    evals = []
    for sp in splits:
        code = base if sp is None else np.asarray(sp)
        if code.shape != base.shape:
            raise ValueError(f"splits: expected shape {base.shape}, found {code.shape}")
        evals.append(np.where(code == 1, 0, np.where(code == 2, 1, -1)))
    sizes = [len(t.names) for t in concept_sets]
    col0 = tuple(int(c) for c in np.concatenate([[0], np.cumsum(sizes)[:-1]]))
    layout = _Layout(tuple(concept_sets), tuple(evals), col0, int(sum(sizes)))
    any_eval = np.zeros_like(base, dtype=bool)
    for ev in evals:
        any_eval |= ev >= 0
    return layout, any_eval


class _Tally:
    """Running counts of ``associate``: float32 sums on the device, int64 on the host, and the
    instances cut by a chunk boundary until all their residues have been seen."""

    def __init__(self, thr: np.ndarray, num_f: int, num_k: int, num_g: int, num_s: int = 2):
        self.shape = (len(thr), num_f, num_k, num_g, num_s)
        self.host = _zeros(num_s, thr, num_f, num_k)
        self.active = np.zeros((num_g, num_s, len(thr), num_f), np.int64)
        self.total = np.zeros((num_g, num_s), np.int64)
        self.pending: dict[tuple[int, int], list] = {}  # -> [hits (T, F), seen, col, split]
        self.acc = self._fresh()

    def _fresh(self) -> tuple[jax.Array, jax.Array, jax.Array]:
        t, f, k, g, s = self.shape
        return (
            jnp.zeros((t, f, s * k), jnp.float32),
            jnp.zeros((t, f, g * s), jnp.float32),
            jnp.zeros((t, f, s * k), jnp.float32),
        )

    def add_host(self, cm: np.ndarray, masks: np.ndarray, ic: np.ndarray) -> None:
        t, f, k, g, s = self.shape
        n = cm.shape[0]
        self.host.positives[...] += cm.reshape(n, s, k).sum(0, dtype=np.int64)
        self.host.instances[...] += ic.sum(0, dtype=np.int64).reshape(s, k)
        self.total[...] += masks.reshape(n, g, s).sum(0, dtype=np.int64)

    def add_partial(self, bhit: np.ndarray, partial: list) -> None:
        """Merge the hits ``(T, B, F)`` of instances cut by the chunk's boundaries."""
        t, f = self.shape[:2]
        for q, (_, col, s, gid, length, piece) in enumerate(partial):
            entry = self.pending.setdefault(gid, [np.zeros((t, f), bool), 0, col, s])
            entry[0] |= bhit[:, q]
            entry[1] += piece
            if entry[1] >= length:
                self._finish(self.pending.pop(gid))

    def _finish(self, entry: list) -> None:
        hits, _, col, s = entry
        self.host.tp_instances[s, :, :, col] += hits
        self.host.instances[s, col] += 1

    def drain(self) -> None:
        t, f, k, g, s = self.shape
        tp, act, tpi = (np.rint(np.asarray(x)).astype(np.int64) for x in self.acc)
        self.host.tp[...] += tp.reshape(t, f, s, k).transpose(2, 0, 1, 3)
        self.host.tp_instances[...] += tpi.reshape(t, f, s, k).transpose(2, 0, 1, 3)
        self.active[...] += act.reshape(t, f, g, s).transpose(2, 3, 0, 1)
        self.acc = self._fresh()

    def result(self, sizes: Sequence[int], col0: Sequence[int]) -> list[AssociationCounts]:
        """One ``AssociationCounts`` per concept set (instances still pending are counted)."""
        self.drain()
        for gid in list(self.pending):  # instances whose residues were not all in the source
            self._finish(self.pending.pop(gid))
        out = []
        for g, size in enumerate(sizes):
            cols = np.arange(col0[g], col0[g] + size)
            out.append(self.host.take(cols)._replace(active=self.active[g], total=self.total[g]))
        return out


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
