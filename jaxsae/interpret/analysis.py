"""The feature analysis of a trained SAE as a pipeline of named stages.

``analyse`` runs, in order (each stage a small function a caller can run alone):

1. ``build_featurizers``: the SAE, the model's neurons (InterPLM's baseline) and PCA components;
2. ``compute_statistics``: one streaming pass per featurizer for densities, maxima and top
   activations;
3. ``build_concept_sets``: every concept source the proteins support (residue identity from
   the sequence; DSSP, SCOPe and UniProt where present), with the sources that are absent;
4. ``score_concepts``: one streaming pass per featurizer counting feature ↔ concept agreement,
   scored with InterPLM's protocol (``jaxsae.interpret.association``);
5. ``fista_baseline``: optionally, FISTA codes on the SAE's decoder on a subset of proteins;
6. ``faithfulness_stage``: an optional hook (``faithfulness=``) that receives the model, the
   SAE and the store and returns a dict of numbers (e.g. reconstruction and spliced-model
   scores); it goes into ``summary.json`` and the report as it is;
7. ``write_outputs``: tables, feature cards, plots, ``report.html`` and ``summary.json``.

The options live in one frozen, validated ``AnalysisConfig``.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np

from jaxsae.data.store import atomic_save_text
from jaxsae.interpret.association import (
    MIN_INSTANCES,
    MIN_RESIDUES,
    THRESHOLDS,
    AssociationCounts,
    ConceptScores,
    associate,
    coverage_summary,
    feature_best_concepts,
    select_best,
)
from jaxsae.interpret.baselines import (
    fista_featurizer,
    fit_pca,
    neuron_featurizer,
    pca_featurizer,
    sample_rows,
)
from jaxsae.interpret.concepts import (
    CONCEPT_SOURCES,
    UNIPROT_TYPES,
    ConceptTable,
    build_concepts,
    concept_sources,
    split_codes,
)
from jaxsae.interpret.topk import FeatureStats, Featurizer, sae_featurizer, scan_features

__all__ = [
    "AnalysisConfig",
    "Analysis",
    "ConceptSets",
    "Scored",
    "FaithfulnessInputs",
    "analyse",
    "build_featurizers",
    "compute_statistics",
    "build_concept_sets",
    "score_concepts",
    "fista_baseline",
    "faithfulness_stage",
    "write_outputs",
    "bar_check",
]


@dataclasses.dataclass(frozen=True)
class AnalysisConfig:
    """Options of the analysis (validated on construction).

    Attributes:
      title, intro: the report's heading and first paragraph.
      pca_rows: training rows sampled for PCA.
      k: top activations kept per SAE feature.
      chunk_size: rows encoded at once.
      min_residues, min_instances: InterPLM's concept filter (validation and test pooled:
        more than 1,500 residues or more than 25 instances).
      scop_min_domains: SCOPe concepts are built when at least this many held-out domains
        carry them.
      min_description_count: UniProt descriptions (``"ZN_FING C2H2-type"``) are concepts when
        this many features carry them (InterPLM: 100).
      recall: ``"instance"`` (InterPLM: per instance for range concepts) or ``"residue"`` (a
        named variant: per residue for every concept).
      neurons: the neuron baseline: ``"interplm"`` (InterPLM's identity dictionary: raw
        activations, positive side only, ``d`` features) or ``"centred"`` (a named variant:
        mean-centred, both signs, ``2 d`` features).
      thresholds: on the max-scaled activation.
      max_cards: feature cards in the report.
      fista_proteins: score FISTA codes on this many validation and test proteins (0: skip).
      l1_coeff: the SAE's λ on raw inputs, for the FISTA baseline.
      progress: show progress bars.
    """

    title: str = "jaxsae feature report"
    intro: str = ""
    pca_rows: int = 20000
    k: int = 16
    chunk_size: int = 2048
    min_residues: int = MIN_RESIDUES
    min_instances: int = MIN_INSTANCES
    scop_min_domains: int = 5
    min_description_count: int = 100
    recall: str = "instance"
    neurons: str = "interplm"
    thresholds: tuple[float, ...] = THRESHOLDS
    max_cards: int = 40
    fista_proteins: int = 0
    l1_coeff: float | None = None
    progress: bool = True

    def __post_init__(self) -> None:
        for name in ("pca_rows", "k", "chunk_size"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name}: expected >= 1, found {getattr(self, name)}")
        for name in (
            "min_residues",
            "min_instances",
            "scop_min_domains",
            "min_description_count",
            "max_cards",
            "fista_proteins",
        ):
            if getattr(self, name) < 0:
                raise ValueError(f"{name}: expected >= 0, found {getattr(self, name)}")
        if self.recall not in ("instance", "residue"):
            raise ValueError(f"recall: expected 'instance' or 'residue', found {self.recall!r}")
        if self.neurons not in ("centred", "interplm"):
            raise ValueError(f"neurons: expected 'centred' or 'interplm', found {self.neurons!r}")
        thr = tuple(float(t) for t in self.thresholds)
        if not thr or any(not 0 <= t < 1 for t in thr):
            raise ValueError(f"thresholds: expected values in [0, 1), found {self.thresholds}")
        object.__setattr__(self, "thresholds", thr)
        if self.l1_coeff is not None and self.l1_coeff < 0:
            raise ValueError(f"l1_coeff: expected >= 0, found {self.l1_coeff}")


class Analysis(NamedTuple):
    """What ``analyse`` wrote and found.

    Attributes:
      report: path of ``report.html``.
      summary_path: path of ``summary.json`` (every number of the tables).
      headline: ``(rows, headers)`` of the coverage table.
      console: the console summary (plain text).
      coverage: ``{method: {category: {"eligible", "covered", "mean_f1"}}}``.
      images: ``{caption: png path}``.
    """

    report: Path
    summary_path: Path
    headline: tuple[list[list[Any]], list[str]]
    console: str
    coverage: dict[str, dict[str, dict[str, Any]]]
    images: dict[str, Path]


class ConceptSets(NamedTuple):
    """The concept tables of a store's proteins.

    Attributes:
      tables: ``{source: ConceptTable}`` of the sources present.
      splits: ``{source: (P,) split codes}`` used for each source (SCOPe: held-out proteins
        halved by a hash of their id; others: the proteins' own).
      absent: ``{source: how to add it}`` of the sources no protein carries.
    """

    tables: dict[str, ConceptTable]
    splits: dict[str, np.ndarray]
    absent: dict[str, str]


class Scored(NamedTuple):
    """Counts and scores of one featurizer: ``{source: AssociationCounts / ConceptScores}``."""

    counts: dict[str, AssociationCounts]
    scores: dict[str, ConceptScores]


class FaithfulnessInputs(NamedTuple):
    """What the optional faithfulness stage receives.

    Attributes:
      store: the activation store analysed (its ``meta`` names the model and layer).
      params: the SAE (``SAEParams`` on raw activations).
      proteins: the store's protein records (``"sequence"``, ``"split"``).
      model: ``(config, params)`` of the protein language model, or ``None`` when the caller
        has none (the hook then reports only what needs no model).
      layer: the hidden-state index the store holds (``None`` if unknown).
      out_dir: the analysis' output folder (for plots the hook may write).
      featurizer: the SAE's encoder as the analysis reads it (its architecture's inference
        encoder on raw activations).
    """

    store: Any
    params: Any
    proteins: list[dict]
    model: Any
    layer: int | None
    out_dir: Path
    featurizer: Featurizer


def _tqdm(desc: str, total: int | None, enabled: bool) -> Callable:
    from tqdm.auto import tqdm

    def wrap(it):
        return tqdm(it, desc=desc, total=total, unit="chunk", disable=not enabled, leave=False)

    return wrap


def with_splits(proteins: Sequence[Mapping[str, Any]]) -> list[dict]:
    """Proteins with a split each: stores without splits get valid/test by parity."""
    codes = split_codes(list(proteins))
    if (codes == 1).any() and (codes == 2).any():
        return [dict(p) for p in proteins]
    return [{**p, "split": "valid" if i % 2 == 0 else "test"} for i, p in enumerate(proteins)]


def domain_split(proteins: Sequence[Mapping[str, Any]], split: np.ndarray) -> np.ndarray:
    """Held-out proteins halved into valid/test by a hash of their id, for SCOPe concepts.

    A split by SCOPe superfamily (the default data's) never puts a superfamily or family in
    both validation and test; pooling the held-out proteins and halving them lets those
    concepts be chosen on one half and scored on the other.
    """
    out = np.asarray(split).copy()
    for i, p in enumerate(proteins):
        if out[i] in (1, 2):
            h = hashlib.sha256(str(p.get("id", i)).encode()).digest()[0]
            out[i] = 1 + (h & 1)
    return out


# -- stages -----------------------------------------------------------------------------------


def build_featurizers(
    store: Any,
    params: Any,
    proteins: list[dict],
    cfg: AnalysisConfig,
    pca_source: Any = None,
    architecture: Any = None,
) -> tuple[dict[str, Featurizer], Any]:
    """``({"SAE", "neurons", "PCA"}: Featurizer, PCAResult)``.

    The SAE is encoded by ``architecture`` (``None``: the L1 SAE; see ``sae_featurizer``). PCA
    is fitted on ``pca_source`` (e.g. the training store), else on the training proteins of
    ``store``, else on all its rows.
    """
    if pca_source is not None:
        sample = sample_rows(pca_source, None, split=None, max_rows=cfg.pca_rows)
    else:
        try:
            sample = sample_rows(store, proteins, split="train", max_rows=cfg.pca_rows)
        except ValueError:  # no training split: PCA on all rows
            sample = sample_rows(store, None, split=None, max_rows=cfg.pca_rows)
    pca = fit_pca(sample, min(store.d, sample.shape[0]))
    featurizers = {
        "SAE": sae_featurizer(params, architecture=architecture),
        "neurons": (
            neuron_featurizer(store.mean)
            if cfg.neurons == "centred"
            else neuron_featurizer(None, store.d, signs="positive")
        ),
        "PCA": pca_featurizer(pca),
    }
    return featurizers, pca


def compute_statistics(
    store: Any, featurizers: Mapping[str, Featurizer], cfg: AnalysisConfig, log: Callable = print
) -> dict[str, FeatureStats]:
    """One streaming pass per featurizer: density, maximum and top activations (SAE: ``k``)."""
    n_chunks = -(-store.num_rows // cfg.chunk_size)
    out = {}
    for name, feat in featurizers.items():
        log(f"[interpret] {name}: {feat.num_features} features, streaming {store.num_rows} rows")
        out[name] = scan_features(
            store,
            feat,
            k=cfg.k if name == "SAE" else 1,
            chunk_size=cfg.chunk_size,
            progress=_tqdm(f"{name} stats", n_chunks, cfg.progress),
        )
    return out


def build_concept_sets(proteins: list[dict], cfg: AnalysisConfig) -> ConceptSets:
    """Every concept source the proteins support, and how to add the absent ones."""
    split = split_codes(proteins)
    held = [p for p, s in zip(proteins, split, strict=True) if s in (1, 2)]
    have = concept_sources(held or proteins)
    tables = build_concepts(
        proteins,
        min_domains=cfg.scop_min_domains,
        min_description_count=cfg.min_description_count,
    )
    splits = {src: (domain_split(proteins, split) if src == "SCOPe" else split) for src in tables}
    absent = {src: how for src, how in CONCEPT_SOURCES.items() if not have.get(src)}
    return ConceptSets(tables, splits, absent)


def score_concepts(
    source: Any,
    proteins: list[dict],
    featurizers: Mapping[str, Featurizer],
    stats: Mapping[str, FeatureStats],
    concepts: ConceptSets,
    cfg: AnalysisConfig,
    log: Callable = print,
) -> dict[str, Scored]:
    """Per featurizer, the association counts and InterPLM scores of every concept source."""
    out = {}
    if not concepts.tables:
        return {name: Scored({}, {}) for name in featurizers}
    num_rows = getattr(source, "num_rows", None)
    n_chunks = -(-num_rows // cfg.chunk_size) if num_rows else None
    srcs = list(concepts.tables)
    for name, feat in featurizers.items():
        n_concepts = sum(len(t.names) for t in concepts.tables.values())
        log(f"[interpret] {name}: scoring {n_concepts} concepts")
        counts = associate(
            source,
            feat,
            stats[name].max_act,
            proteins,
            [concepts.tables[s] for s in srcs],
            splits=[concepts.splits[s] for s in srcs],
            thresholds=cfg.thresholds,
            chunk_size=cfg.chunk_size,
            progress=_tqdm(f"{name} concepts", n_chunks, cfg.progress),
        )
        by_src = dict(zip(srcs, counts, strict=True))
        out[name] = Scored(by_src, {s: _select(by_src[s], concepts.tables[s], cfg) for s in srcs})
    return out


def _select(
    counts: AssociationCounts, table: ConceptTable, cfg: AnalysisConfig, **kw
) -> ConceptScores:
    return select_best(
        counts,
        table.names,
        kinds=table.kinds,
        descriptions=table.descriptions,
        min_residues=cfg.min_residues,
        min_instances=cfg.min_instances,
        recall=kw.pop("recall", cfg.recall),
        **kw,
    )


def fista_baseline(
    store: Any,
    proteins: list[dict],
    params: Any,
    sae: Featurizer,
    concepts: ConceptSets,
    cfg: AnalysisConfig,
    log: Callable = print,
) -> dict[str, Scored]:
    """FISTA codes and the SAE scored on the same subset of validation/test proteins.

    Returns ``{}`` unless ``cfg.fista_proteins`` and ``cfg.l1_coeff`` are set.
    """
    if not cfg.fista_proteins or cfg.l1_coeff is None or not concepts.tables:
        return {}
    from jaxsae.interpret.report import row_positions

    split = split_codes(proteins)
    n = cfg.fista_proteins
    keep = np.concatenate([np.flatnonzero(split == 1)[:n], np.flatnonzero(split == 2)[:n]])
    per = [store.positions_of(int(p)) for p in keep]
    rows = np.concatenate(per)
    index = np.stack(
        [np.repeat(keep, [len(r) for r in per]), row_positions(store, rows)], 1
    ).astype(np.int32)
    sub = (store.take(rows), index)
    small = dataclasses.replace(cfg, chunk_size=min(cfg.chunk_size, 1024), progress=False)
    feats = {
        "SAE (FISTA subset)": sae,
        "FISTA": fista_featurizer(params, cfg.l1_coeff),
    }
    log(f"[interpret] FISTA baseline: {len(keep)} proteins, {len(rows)} residues")
    stats = {
        name: scan_features(sub, f, k=1, chunk_size=small.chunk_size) for name, f in feats.items()
    }
    return score_concepts(sub, proteins, feats, stats, concepts, small, log)


def faithfulness_stage(
    hook: Callable[[FaithfulnessInputs], Mapping[str, Any]] | None,
    inputs: FaithfulnessInputs,
    log: Callable = print,
) -> dict[str, Any]:
    """Run the faithfulness hook (``None``: skipped, ``{}``); its dict goes into the outputs.

    The hook receives ``FaithfulnessInputs`` and returns JSON-serialisable numbers, e.g.
    SAEBench's core reconstruction metrics and ESM-2 splicing scores. A flat
    ``{name: number}`` dict is shown as a table in the report; everything is kept in
    ``summary.json["faithfulness"]``.
    """
    if hook is None:
        return {}
    log("[interpret] faithfulness")
    return dict(hook(inputs))


# -- bar and tables -----------------------------------------------------------------------------


def _nontrivial(scores: Mapping[str, ConceptScores]) -> tuple[int, int, float]:
    """``(covered, eligible, mean F1)`` over every concept except residue identity."""
    f1s, covered = [], 0
    for src, sc in scores.items():
        if src == "sequence":
            continue
        e = sc.eligible
        f1s.extend(sc.test_f1[e].tolist())
        covered += int((sc.test_f1[e] > 0.5).sum())
    return covered, len(f1s), (float(np.mean(f1s)) if f1s else float("nan"))


def bar_check(scored: Mapping[str, Scored]) -> dict[str, Any]:
    """The headline comparison: non-trivial concepts covered and DSSP-3 helix/strand F1.

    Returns ``{"covered": {method: n}, "eligible": n, "sae_over_neurons": x,
    "sae_over_pca": x, "dssp3": {"H": {method: f1}, "E": {...}}}``.
    """
    out: dict[str, Any] = {"covered": {}, "mean_f1": {}}
    for m, sc in scored.items():
        c, e, f = _nontrivial(sc.scores)
        out["covered"][m] = c
        out["mean_f1"][m] = f
        out["eligible"] = e
    sae = out["covered"].get("SAE", 0)
    for base in ("neurons", "PCA"):
        b = out["covered"].get(base)
        if b is not None:
            out[f"sae_over_{base.lower()}"] = (sae / b) if b else (float("inf") if sae else 0.0)
    dssp3: dict[str, dict[str, float]] = {}
    for state in ("H", "E"):
        for m, sc in scored.items():
            s = sc.scores.get("DSSP")
            if s is not None and f"DSSP3 {state}" in s.names:
                j = s.names.index(f"DSSP3 {state}")
                dssp3.setdefault(state, {})[m] = float(s.test_f1[j])
    out["dssp3"] = dssp3
    return out


def _variants(scored: Mapping[str, Scored], concepts: ConceptSets, cfg: AnalysisConfig) -> dict:
    """Non-trivial coverage under the named variants (for the record, never for selection)."""
    out: dict[str, dict[str, Any]] = {}
    for m, sc in scored.items():
        res = {
            s: _select(sc.counts[s], concepts.tables[s], cfg, recall="residue") for s in sc.counts
        }
        thr = {
            s: sc.scores[s]._replace(test_f1=sc.scores[s].test_f1_best_threshold) for s in sc.scores
        }
        out[m] = {
            "recall per residue": _nontrivial(res)[0],
            "threshold chosen on test (InterPLM report_metrics)": _nontrivial(thr)[0],
        }
    return out


def _coverage(scored: Mapping[str, Scored]) -> dict[str, dict[str, dict[str, Any]]]:
    cov: dict[str, dict[str, dict[str, Any]]] = {}
    for m, sc in scored.items():
        cov[m] = {}
        for s in sc.scores.values():
            cov[m].update(coverage_summary(s)["by_category"])
    return cov


def _headline(scored: Mapping[str, Scored], featurizers, params) -> tuple[list, list]:
    sources = list(dict.fromkeys(s for sc in scored.values() for s in sc.scores))
    headers = ["features", "count", "concepts F1>0.5 (no residue identity)", "mean F1"]
    headers += [f"{'residue identity' if s == 'sequence' else s} F1>0.5" for s in sources]
    rows = []
    for m, sc in scored.items():
        c, e, f = _nontrivial(sc.scores)
        n_feat = featurizers[m].num_features if m in featurizers else params.d_sae
        row = [m, n_feat, f"{c}/{e}", f]
        for s in sources:
            summ = coverage_summary(sc.scores[s]) if s in sc.scores else None
            row.append(f"{summ['covered']}/{summ['eligible']}" if summ else "-")
        rows.append(row)
    return rows, headers


def _concept_rows(scored: Mapping[str, Scored], featurizers) -> tuple[list, list, list, list]:
    methods = list(scored)
    rows, good, console = [], [], []
    for src, base in scored["SAE"].scores.items():
        for j, cname in enumerate(base.names):
            if not base.eligible[j]:
                continue
            n_ex = int(base.n_test_instances[j] if base.kinds[j] == "range" else base.n_test[j])
            row = [cname, base.descriptions[j], base.kinds[j], n_ex]
            crow = [cname]
            for m in methods:
                s = scored[m].scores[src]
                label = _label(featurizers, m, int(s.feature[j]))
                row += [label, float(s.test_f1[j])]
                crow += [label, float(s.test_f1[j])]
            row += [
                float(base.threshold[j]),
                float(base.test_precision[j]),
                float(base.test_recall[j]),
            ]
            rows.append(row)
            good.append(bool(base.test_f1[j] > 0.5))
            console.append(crow)
    headers = ["concept", "description", "kind", "test examples"]
    for m in methods:
        headers += [f"{m} feature", f"{m} test F1"]
    headers += ["SAE threshold", "SAE precision", "SAE recall"]
    console_headers = ["concept"] + [h for m in methods for h in (m, "F1")]
    return rows, headers, good, [console, console_headers]


def _label(featurizers: Mapping[str, Any], method: str, feature: int) -> str:
    feat = featurizers.get(method)
    return f"f{feature}" if feat is None else feat.labels[feature]


# -- outputs ----------------------------------------------------------------------------------


class _Results(NamedTuple):
    """What the output stages of ``write_outputs`` read: the inputs and the stages' results."""

    store: Any
    proteins: list[dict]
    params: Any
    featurizers: Mapping[str, Featurizer]
    stats: Mapping[str, FeatureStats]
    scored: Mapping[str, Scored]
    concepts: ConceptSets
    cfg: AnalysisConfig


class _Tables(NamedTuple):
    """``(rows, headers)`` of the headline and per-concept tables, the concept rows to
    highlight, and the per-concept table's console form."""

    headline: tuple[list, list]
    concepts: tuple[list, list]
    concept_good: list
    console: tuple[list, list]


class _Digest(NamedTuple):
    """The report's numbers and texts derived from the results."""

    bar: dict[str, Any]
    n_dead: int
    duplicates: int
    faith: dict[str, Any]
    facts: str
    console: str
    sections: list[tuple[str, str]]


def _tables(res: _Results) -> _Tables:
    headline = _headline(res.scored, res.featurizers, res.params)
    rows, headers, good, console = _concept_rows(
        {m: res.scored[m] for m in res.featurizers}, res.featurizers
    )
    return _Tables(headline, (rows, headers), good, tuple(console))


def _cards(res: _Results, log: Callable) -> tuple[list, Any]:
    """Feature cards of the SAE's best feature per concept (and a few common ones), and the
    decoder neighbours (``None`` for a one-feature SAE)."""
    from jaxsae.interpret.report import build_feature_cards
    from jaxsae.interpret.stats import decoder_neighbours

    params, scored, stats = res.params, res.scored["SAE"], res.stats["SAE"]
    nb = decoder_neighbours(params.W_dec, n=min(5, params.d_sae - 1)) if params.d_sae > 1 else None
    features, chosen = _card_features(scored, stats, res.cfg.max_cards)
    best = _card_concepts(scored, res.concepts, features)
    notes = {f: "best SAE feature for " + "; ".join(v) for f, v in chosen.items()}
    log(f"[interpret] feature cards for {len(features)} features")
    cards = build_feature_cards(
        res.store,
        res.proteins,
        res.featurizers["SAE"],
        stats,
        features,
        best_concepts=best,
        neighbours=nb,
        notes=notes,
    )
    return cards, nb


def _card_features(
    scored: Scored, stats: FeatureStats, max_cards: int
) -> tuple[list[int], dict[int, list[str]]]:
    """The features to describe (best per concept first, then a few of the densest), and the
    concepts each is the best feature of."""
    chosen: dict[int, list[str]] = {}
    for scores in scored.scores.values():
        for j in np.argsort(-scores.test_f1, kind="stable"):
            if scores.eligible[j]:
                chosen.setdefault(int(scores.feature[j]), []).append(
                    f"{scores.names[j]} (test F1 {scores.test_f1[j]:.2f})"
                )
    alive = np.flatnonzero(stats.density > 0)
    by_density = alive[np.argsort(-stats.density[alive], kind="stable")]
    features = list(chosen)[:max_cards]
    for f in by_density[: max(0, max_cards - len(features)) // 4]:  # a few common ones
        if int(f) not in chosen:
            features.append(int(f))
    return features, chosen


def _card_concepts(scored: Scored, concepts: ConceptSets, features: list[int]) -> dict[int, list]:
    """Per feature, its four best concepts over all sources."""
    best: dict[int, list] = {f: [] for f in features}
    for src, counts in scored.counts.items():
        t = concepts.tables[src]
        if len(t.names):
            for f, lst in feature_best_concepts(
                counts, t.names, features, 3, kinds=t.kinds
            ).items():
                best[f] = sorted(best[f] + lst, key=lambda c: -c[1])[:4]
    return best


def _plots(
    out: Path, res: _Results, coverage: Mapping[str, Any], extras: Mapping[str, Any]
) -> dict[str, Path]:
    """The report's PNGs, ``{caption: path}``."""
    from jaxsae.interpret.plots import (
        plot_amortisation_gap,
        plot_coverage,
        plot_density_histogram,
        plot_feature_track,
        plot_training_curves,
    )

    stats, metrics, amortisation = (
        res.stats["SAE"],
        extras.get("metrics"),
        extras.get("amortisation"),
    )
    images: dict[str, Path] = {}
    images["Concept coverage: SAE vs baselines"] = plot_coverage(coverage, out / "coverage.png")
    images["SAE feature density"] = plot_density_histogram(
        stats.density, out / "density.png", title="SAE feature density"
    )
    if metrics:
        images["Training curves"] = plot_training_curves(metrics, out / "training.png")
    if amortisation:
        images["Amortisation gap (encoder vs FISTA on the same decoder)"] = plot_amortisation_gap(
            amortisation, out / "amortisation.png"
        )
    score_sets = list(res.scored["SAE"].scores.values())
    track = _feature_track(res.store, res.proteins, res.featurizers["SAE"], score_sets, stats)
    if track is not None:
        f, p, seq, vals, ss, cname = track
        pid = res.proteins[p].get("id", p)
        images[f"Feature {f} along {pid} (best SAE feature for {cname})"] = plot_feature_track(
            seq,
            vals,
            out / "feature_track.png",
            dssp=ss,
            title=f"SAE feature {f} (best for {cname}) on {pid}",
        )
    return images


def _digest(
    res: _Results, coverage: Mapping[str, Any], tables: _Tables, nb: Any, extras: Mapping
) -> _Digest:
    """The bar, dead and near-duplicate counts, facts, console summary and report sections."""
    from jaxsae.interpret.stats import dead_features

    scored, concepts = res.scored, res.concepts
    bar = bar_check({m: scored[m] for m in res.featurizers})
    absent = _absent_text(concepts.absent)
    console = _console(res.cfg, tables.headline, tables.console, absent)
    faith = dict(extras.get("faithfulness") or {})
    if faith.get("lines"):
        console += "\n\nFaithfulness (SAE spliced into the model):\n" + "\n".join(faith["lines"])
    n_dead = len(dead_features(res.stats["SAE"].density))
    facts = _facts(res.store, res.proteins, res.params, res.stats["SAE"], concepts, n_dead, extras)
    duplicates = int((nb.cosines[:, 0] > 0.95).sum()) if nb is not None else 0
    sections = [
        ("Method", _METHOD_TEXT),
        ("What came out", _findings(coverage, bar, duplicates, res.params.d_sae)),
        ("Concept sources not in this store", absent),
        ("Faithfulness", _faith_text(faith) if faith else ""),
        (
            "Decoder neighbourhoods of the best-covered features",
            _neighbourhoods(scored["SAE"], concepts, nb),
        ),
    ]
    sections = [(title, text) for title, text in sections if text]
    return _Digest(bar, n_dead, duplicates, faith, facts, console, sections)


def _summary(
    res: _Results,
    coverage: Mapping[str, Any],
    tables: _Tables,
    digest: _Digest,
    images: Mapping[str, Path],
    extras: Mapping[str, Any],
) -> dict[str, Any]:
    """The contents of ``summary.json``."""
    pca, concepts = extras.get("pca"), res.concepts
    return {
        "facts": digest.facts,
        "protocol": _protocol(res.cfg),
        "headline": {"headers": tables.headline[1], "rows": tables.headline[0]},
        "bar": digest.bar,
        "variants": _variants(res.scored, concepts, res.cfg),
        "coverage": coverage,
        "concepts": {"headers": tables.concepts[1], "rows": tables.concepts[0]},
        "concept_sources": {s: len(t.names) for s, t in concepts.tables.items()},
        "absent_sources": dict(concepts.absent),
        "dead_features": int(digest.n_dead),
        "near_duplicate_features": digest.duplicates,
        "d_sae": int(res.params.d_sae),
        "pca_explained_variance_ratio": (
            [float(v) for v in pca.explained_variance_ratio[:10]] if pca is not None else []
        ),
        "amortisation": dict(extras.get("amortisation") or {}),
        "faithfulness": digest.faith,
        "console": digest.console,
        "images": {k: str(v) for k, v in images.items()},
        "key": dict(extras.get("key") or {}),
    }


def write_outputs(
    out: Path,
    store: Any,
    proteins: list[dict],
    params: Any,
    featurizers: Mapping[str, Featurizer],
    stats: Mapping[str, FeatureStats],
    scored: Mapping[str, Scored],
    concepts: ConceptSets,
    cfg: AnalysisConfig,
    *,
    extras: Mapping[str, Any],
    log: Callable = print,
) -> Analysis:
    """Tables, feature cards, plots, ``report.html`` and ``summary.json``.

    ``extras``: ``pca`` (``PCAResult``), ``metrics``, ``amortisation``, ``faithfulness``,
    ``key``, ``seconds`` (the analysis time so far).
    """
    from jaxsae.interpret.report import ReportPage, write_report

    res = _Results(store, proteins, params, featurizers, stats, scored, concepts, cfg)
    coverage = _coverage(scored)
    tables = _tables(res)
    cards, nb = _cards(res, log)
    images = _plots(out, res, coverage, extras)
    digest = _digest(res, coverage, tables, nb, extras)
    page = ReportPage(
        title=cfg.title,
        intro=(cfg.intro + " " + digest.facts).strip(),
        summary=tables.headline,
        concept_table=tables.concepts,
        concept_good=tables.concept_good,
        cards=cards,
        images=images,
        sections=digest.sections,
        console=digest.console,
    )
    report = write_report(out / "report.html", page)
    summary = _summary(res, coverage, tables, digest, images, extras)
    summary_path = _write_json(out / "summary.json", summary)
    return Analysis(report, summary_path, tables.headline, digest.console, coverage, images)


def _protocol(cfg: AnalysisConfig) -> dict[str, Any]:
    return {
        "thresholds": list(cfg.thresholds),
        "recall": cfg.recall,
        "neurons": cfg.neurons,
        "min_residues": cfg.min_residues,
        "min_instances": cfg.min_instances,
        "selection": "feature and threshold chosen on valid, scored on test",
    }


def _console(cfg: AnalysisConfig, headline: tuple, concepts: tuple, absent: str) -> str:
    from jaxsae.interpret.report import format_table

    recall_txt = (
        "InterPLM's protocol: best feature per concept chosen on validation, recall per "
        "instance for range concepts"
        if cfg.recall == "instance"
        else "best feature per concept chosen on validation; variant: recall per residue"
    )
    return (
        f"Concepts covered at test F1 > 0.5 ({recall_txt}):\n"
        + format_table(*headline)
        + "\n\nBest feature per concept (test F1):\n"
        + format_table(*concepts)
        + (f"\n\n{absent}" if absent else "")
    )


def _facts(store, proteins, params, sae_stats, concepts: ConceptSets, n_dead: int, extras) -> str:
    split = split_codes(proteins)
    return (
        f"{store.num_rows} residues of {store.num_proteins} proteins (validation "
        f"{int((split == 1).sum())}, test {int((split == 2).sum())} proteins), d = {store.d}; "
        f"SAE with {params.d_sae} features, {n_dead} dead "
        f"({100 * n_dead / params.d_sae:.1f}%), mean density "
        f"{float(sae_stats.density.mean()):.4f}. Concept sources: "
        + ", ".join(f"{s} ({len(t.names)} concepts)" for s, t in concepts.tables.items())
        + f". Analysis took {extras.get('seconds', 0.0):.0f} s."
    )


def _write_json(path: Path, data: Mapping[str, Any]) -> Path:
    """Write ``data`` to ``path`` atomically (write, then rename)."""
    atomic_save_text(path, json.dumps(data, indent=1, default=_json_default))
    return path


def analyse(
    store: Any,
    params: Any,
    out_dir: str | os.PathLike,
    *,
    config: AnalysisConfig | None = None,
    pca_source: Any = None,
    metrics: Sequence[Mapping[str, Any]] | None = None,
    amortisation: Mapping[str, float] | None = None,
    model: Any = None,
    faithfulness: Callable[[FaithfulnessInputs], Mapping[str, Any]] | None = None,
    architecture: Any = None,
    log: Callable = print,
    key: Mapping[str, Any] | None = None,
    **options: Any,
) -> Analysis:
    """Interpret an SAE's features on a store and compare them with neurons and PCA.

    Args:
      store: an ``ActivationStore`` whose proteins carry ``"split"`` (valid/test are scored; a
        store without splits is halved into valid/test by protein parity), ``"sequence"``, and
        ``"dssp"``, ``"scop"``, ``"features"`` (UniProt) where known.
      params: the SAE (``SAEParams`` acting on the store's raw activations).
      out_dir: where ``report.html``, ``summary.json`` and the PNGs go.
      config: the options (``AnalysisConfig``); or give its fields as keywords (``options``).
      pca_source: the activations PCA is fitted on (e.g. the training store).
      metrics: records of the training's ``metrics.jsonl`` (for the training curves).
      amortisation: ``{"encoder_objective", "fista_objective", "encoder_l0", "fista_l0"}``.
      model: ``(config, params)`` of the protein language model, passed to ``faithfulness``.
      faithfulness: optional stage ``hook(FaithfulnessInputs) -> dict`` (see
        ``faithfulness_stage``).
      architecture: the SAE's ``Architecture`` (``saelens_architecture(cfg)`` of a loaded
        SAELens export, ``from_config(cfg)`` of a training run; ``None``: the L1 SAE).
      log: where stage messages go (``print`` or a no-op).
      key: JSON-serialisable description of the inputs, stored in ``summary.json``.

    Returns:
      ``Analysis``.
    """
    cfg = config if config is not None else AnalysisConfig(**options)
    if config is not None and options:
        cfg = dataclasses.replace(config, **options)
    if params.d_in != store.d:  # before anything is written
        raise ValueError(
            f"the SAE expects inputs of d_in={params.d_in}, the store {store.path} has "
            f"d={store.d}; give the store of the layer and model the SAE was trained on"
        )
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    proteins = with_splits(store.proteins)
    featurizers, pca = build_featurizers(store, params, proteins, cfg, pca_source, architecture)
    stats = compute_statistics(store, featurizers, cfg, log)
    concepts = build_concept_sets(proteins, cfg)
    scored = score_concepts(store, proteins, featurizers, stats, concepts, cfg, log)
    sae = featurizers["SAE"]
    scored.update(fista_baseline(store, proteins, params, sae, concepts, cfg, log))
    layer = dict(getattr(store, "meta", None) or {}).get("layer")
    faith = faithfulness_stage(
        faithfulness, FaithfulnessInputs(store, params, proteins, model, layer, out, sae), log
    )
    extras = {
        "pca": pca,
        "metrics": metrics,
        "amortisation": amortisation,
        "faithfulness": faith,
        "key": key,
        "seconds": time.perf_counter() - t0,
    }
    return write_outputs(
        out,
        store,
        proteins,
        params,
        featurizers,
        stats,
        scored,
        concepts,
        cfg,
        extras=extras,
        log=log,
    )


# -- text -------------------------------------------------------------------------------------

_METHOD_TEXT = (
    "InterPLM's protocol (Simon & Zou; their code's calc_metrics_sparse, calculate_metrics, "
    "make_eval_subset). Each feature's activation is divided by its maximum over the store and "
    "binarised at thresholds 0, 0.15, 0.5, 0.6 and 0.8. Every concept has a kind. A point "
    "concept is a residue (residue identity; UniProt active site, modified residue, "
    "glycosylation, metal binding, a disulfide's cysteines): precision and recall are counted "
    "per residue. A range concept is made of instances (a run of one DSSP state within a "
    "protein, a SCOPe domain, a UniProt domain, region, motif, zinc finger, transmembrane "
    "segment, binding region): precision is counted per residue and recall per instance — an "
    "instance is found when the feature fires on at least one of its residues. F1 = 2PR/(P+R). "
    "A concept is scored when the validation and test proteins together hold more than 1,500 of "
    "its residues or more than 25 of its instances. For every concept the (feature, threshold) "
    "with the best F1 on the validation proteins is chosen and scored on the test proteins. For "
    "SCOPe concepts the held-out proteins are pooled and halved by a hash of their id, because a "
    "split by SCOPe superfamily never puts a superfamily in both validation and test. Baselines "
    "go through the same protocol: the model's neurons as InterPLM takes them (the raw "
    "activation divided by its maximum, so only its positive side fires: d features) and the "
    "PCA components of the training activations, each signed direction split into two "
    "non-negative features (InterPLM has no PCA baseline). The named variant neurons='centred' "
    "mean-centres the neurons and keeps both signs (2d features)."
    "\n\n"
    "A concept counts as covered when its chosen feature reaches test F1 > 0.5. Residue "
    "identity is a sanity concept (InterPLM leaves amino acids out of its counts): the headline "
    "counts every other concept."
)

_GROUPS = (
    ("secondary structure (DSSP)", ("DSSP8", "DSSP3")),
    ("UniProt features", tuple(UNIPROT_TYPES)),
    ("SCOPe classification", ("class", "fold", "superfamily", "family")),
    ("residue identity", ("residue",)),
)


def _group(cov: Mapping[str, Mapping[str, Any]], cats: Sequence[str]) -> tuple[int, int, float]:
    """``(covered, eligible, mean best F1)`` over some concept categories of one method."""
    cov_n = sum(cov.get(c, {}).get("covered", 0) for c in cats)
    elig = sum(cov.get(c, {}).get("eligible", 0) for c in cats)
    tot = sum(
        cov.get(c, {}).get("eligible", 0) * (cov.get(c, {}).get("mean_f1") or 0.0)
        for c in cats
        if cov.get(c, {}).get("eligible", 0)
    )
    return cov_n, elig, (tot / elig if elig else float("nan"))


def _findings(coverage, bar: Mapping[str, Any], duplicates: int, d_sae: int) -> str:
    """Plain sentences comparing the SAE with the baselines, per group of concepts."""
    lines = []
    base = [m for m in ("neurons", "PCA") if m in coverage]
    for title, cats in _GROUPS:
        c, e, f = _group(coverage["SAE"], cats)
        if not e:
            lines.append(f"{title[0].upper() + title[1:]}: no concept passed the filter.")
            continue
        others = {m: _group(coverage[m], cats) for m in base}
        txt = ", ".join(f"{m} {o[0]}/{o[1]} (mean F1 {o[2]:.2f})" for m, o in others.items())
        verdict = (
            "the SAE is ahead"
            if all(f > o[2] for o in others.values())
            else "a single neuron or principal component does as well or better"
        )
        lines.append(
            f"{title[0].upper() + title[1:]}: SAE covers {c}/{e} concepts (mean best F1 "
            f"{f:.2f}); {txt}: {verdict}."
        )
    cov = bar.get("covered", {})
    if "SAE" in cov:
        ratios = ", ".join(
            f"{m} {cov[m]} ({bar.get(f'sae_over_{m.lower()}', float('nan')):.1f}×)"
            for m in base
            if m in cov
        )
        lines.append(
            f"Non-trivial concepts (residue identity excluded) covered at test F1 > 0.5: SAE "
            f"{cov['SAE']} of {bar.get('eligible', 0)}; {ratios}."
        )
    if duplicates:
        lines.append(
            f"{duplicates} of {d_sae} features have a near-duplicate (decoder cosine > 0.95): "
            "a short training run leaves redundant copies of common features (e.g. one amino "
            "acid); longer training, dead-feature resampling or a larger λ reduce it."
        )
    return "\n\n".join(lines)


def _absent_text(absent: Mapping[str, str]) -> str:
    if not absent:
        return ""
    return (
        "Concept sources absent from this store (not scored): "
        + "; ".join(f"{src} — add {how}" for src, how in absent.items())
        + "."
    )


def _faith_text(faith: Mapping[str, Any]) -> str:
    if faith.get("lines"):
        return "\n".join(faith["lines"])
    flat = {k: v for k, v in faith.items() if isinstance(v, (int, float))}
    if not flat:
        return json.dumps(faith, indent=1, default=_json_default)
    return "; ".join(f"{k}: {v:.4g}" for k, v in flat.items()) + "."


def _pick_feature(score_sets: Sequence[ConceptScores]) -> tuple[int, str] | None:
    """A well-covered SAE feature worth showing: ``(feature, "concept, test F1")``.

    Preference: a fold/superfamily/family or UniProt feature, then a secondary-structure
    state, then a SCOPe class, then residue identity, among concepts covered at test F1 > 0.5
    (else the best eligible concept).
    """
    tiers = (("fold", "superfamily", "family"), ("DSSP8", "DSSP3"), ("class",), ("residue",))
    cands = []
    for sc in score_sets:
        for j, name in enumerate(sc.names):
            if sc.eligible[j]:
                tier = next((t for t, cats in enumerate(tiers) if sc.categories[j] in cats), 0)
                desc = sc.descriptions[j].partition(": ")[2]
                label = f"{name} ({desc})" if desc and tier == 0 else name
                cands.append((tier, -float(sc.test_f1[j]), int(sc.feature[j]), label))
    if not cands:
        return None
    good = [c for c in cands if -c[1] > 0.5] or [min(cands, key=lambda c: c[1])]
    _, neg_f1, f, name = min(good)
    return f, f"{name}, test F1 {-neg_f1:.2f}"


def _feature_track(store, proteins, featurizer, score_sets, stats):
    """``(feature, protein, sequence, activations, dssp, label)`` for ``plot_feature_track``."""
    import jax

    from jaxsae.interpret.report import protein_rows

    picked = _pick_feature(score_sets)
    if picked is None:
        return None
    f, label = picked
    prots = [int(p) for p in stats.top_protein[f] if p >= 0]
    if not prots:
        return None
    p = prots[0]
    acts, _ = protein_rows(store, p)
    vals = np.asarray(jax.jit(featurizer.apply)(featurizer.params, acts))[:, f]
    seq = proteins[p].get("sequence") or "?" * len(vals)
    ss = proteins[p].get("dssp")
    if len(seq) != len(vals):
        seq, ss = "?" * len(vals), None
    return f, p, seq, vals, ss, label


def _neighbourhoods(scored: Scored, concepts: ConceptSets, nb, n_features: int = 3) -> str:
    """Text: the best-covered non-trivial features and their decoder neighbours' concepts."""
    if nb is None:
        return ""
    picks: list[tuple[float, int, str]] = []
    for src, sc in scored.scores.items():
        if src == "sequence":
            continue
        for j, name in enumerate(sc.names):
            if sc.eligible[j] and sc.test_f1[j] > 0.5:
                picks.append((-float(sc.test_f1[j]), int(sc.feature[j]), name))
    picks.sort()
    seen: set[int] = set()
    paras = []
    for neg_f1, f, name in picks:
        if f in seen or len(seen) >= n_features:
            continue
        seen.add(f)
        nbrs = [int(i) for i in nb.indices[f][:5]]
        best: dict[int, list] = {}
        for src, cnt in scored.counts.items():
            t = concepts.tables[src]
            if len(t.names):
                for g, lst in feature_best_concepts(cnt, t.names, nbrs, n=1, kinds=t.kinds).items():
                    best.setdefault(g, []).extend(lst)
        items = []
        for g, cos in zip(nbrs, nb.cosines[f][:5], strict=True):
            top = max(best.get(g, []), key=lambda c: c[1], default=None)
            desc = f"{top[0]} F1 {top[1]:.2f}" if top else "no concept"
            items.append(f"f{g} (cosine {cos:.2f}; {desc})")
        paras.append(
            f"Feature {f}, best for {name} (test F1 {-neg_f1:.2f}): its nearest decoder "
            f"directions are " + ", ".join(items) + "."
        )
    return "\n\n".join(paras)


def _json_default(o: Any) -> Any:
    if isinstance(o, np.generic):
        return o.item()
    if isinstance(o, np.ndarray):
        return o.tolist()
    if isinstance(o, Path):
        return str(o)
    raise TypeError(type(o).__name__)
