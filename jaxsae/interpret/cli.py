"""``jaxsae interpret STORE SAE_DIR --out DIR``: the feature analysis of a trained SAE.

``analyse`` is the library entry point (the ``demo`` command calls it too): one streaming pass
per featurizer for densities, maxima and top activations, one for the concept association on
the validation and test proteins, then tables, plots and the HTML report.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, NamedTuple

HELP = "Interpret an SAE's features on an activation store: concepts, baselines, HTML report."

__all__ = ["HELP", "configure", "run", "analyse", "Analysis"]


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


def _with_splits(proteins: Sequence[Mapping[str, Any]]) -> list[dict]:
    """Proteins with a split each: stores without splits get validation/test by parity."""
    from jaxsae.interpret.concepts import split_codes

    codes = split_codes(list(proteins))
    if (codes == 1).any() and (codes == 2).any():
        return [dict(p) for p in proteins]
    return [{**p, "split": "validation" if i % 2 == 0 else "test"} for i, p in enumerate(proteins)]


def _domain_split(proteins: Sequence[Mapping[str, Any]], split: Any) -> Any:
    """Held-out proteins halved into validation/test by a hash of their id, for domain concepts.

    A split by SCOPe superfamily (the default data's) never puts a superfamily or family in
    both validation and test; pooling the held-out proteins and halving them lets those
    concepts be chosen on one half and scored on the other.
    """
    import hashlib

    import numpy as np

    out = np.asarray(split).copy()
    for i, p in enumerate(proteins):
        if out[i] in (1, 2):
            h = hashlib.sha256(str(p.get("id", i)).encode()).digest()[0]
            out[i] = 1 + (h & 1)
    return out


def _tqdm(desc: str, total: int | None, enabled: bool):
    from tqdm.auto import tqdm

    def wrap(it):
        return tqdm(it, desc=desc, total=total, unit="chunk", disable=not enabled, leave=False)

    return wrap


def analyse(
    store: Any,
    params: Any,
    out_dir: str | os.PathLike,
    *,
    pca_source: Any = None,
    l1_coeff: float | None = None,
    fista_proteins: int = 0,
    metrics: Sequence[Mapping[str, Any]] | None = None,
    amortisation: Mapping[str, float] | None = None,
    title: str = "jaxsae feature report",
    intro: str = "",
    pca_rows: int = 20000,
    k: int = 16,
    chunk_size: int = 2048,
    min_residues: int = 10,
    min_domains: int = 3,
    max_cards: int = 40,
    progress: bool = True,
    log: Any = print,
    key: Mapping[str, Any] | None = None,
) -> Analysis:
    """Interpret an SAE's features on a store and compare them with neurons and PCA.

    Args:
      store: an ``ActivationStore`` whose proteins carry ``"split"`` (validation/test are
        scored; a store without splits is halved into validation/test by protein parity),
        ``"sequence"``, ``"dssp"`` and ``"scop"`` where known.
      params: the SAE (``SAEParams`` acting on the store's raw activations).
      out_dir: where ``report.html``, ``summary.json`` and the PNGs go.
      pca_source: the activations PCA is fitted on (e.g. the training store); default: the
        training proteins of ``store`` (all its rows if it has none).
      l1_coeff: the SAE's ``λ`` on raw inputs, for the FISTA-codes baseline.
      fista_proteins: score FISTA codes (on the SAE's decoder) too, restricted to this many
        validation and this many test proteins, against the SAE on the same proteins
        (0: skip; FISTA costs ~100× the encoder).
      metrics: records of the training's ``metrics.jsonl`` (for the training curves).
      amortisation: ``{"encoder_objective", "fista_objective", "encoder_l0", "fista_l0"}``.
      title, intro: the report's heading and first paragraph.
      pca_rows: training rows sampled for PCA.
      k: top activations kept per feature.
      chunk_size: rows encoded at once.
      min_residues: per-residue concepts need this many residues in validation and in test.
      min_domains: per-domain concepts need this many domains in validation and in test.
      max_cards: feature cards in the report.
      progress: show progress bars.
      log: where stage messages go (``print`` or a no-op).
      key: JSON-serialisable description of the inputs, stored in ``summary.json`` (lets a
        caller recognise an analysis it already ran).

    Returns:
      ``Analysis``.
    """
    import numpy as np

    from jaxsae.interpret.association import (
        associate,
        coverage_summary,
        feature_best_concepts,
        select_best,
    )
    from jaxsae.interpret.baselines import (
        fit_pca,
        neuron_featurizer,
        pca_featurizer,
        sample_rows,
    )
    from jaxsae.interpret.concepts import domain_concepts, residue_concepts, split_codes
    from jaxsae.interpret.plots import (
        plot_amortisation_gap,
        plot_coverage,
        plot_density_histogram,
        plot_feature_track,
        plot_training_curves,
    )
    from jaxsae.interpret.report import build_feature_cards, format_table, write_report
    from jaxsae.interpret.stats import dead_features, decoder_neighbours
    from jaxsae.interpret.topk import sae_featurizer, scan_features

    if params.d_in != store.d:  # before anything is written
        raise ValueError(
            f"the SAE expects inputs of d_in={params.d_in}, the store {store.path} has "
            f"d={store.d}; give the store of the layer and model the SAE was trained on"
        )
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    proteins = _with_splits(store.proteins)
    split = split_codes(proteins)
    n_chunks = -(-store.num_rows // chunk_size)
    rc = residue_concepts(proteins)
    dc = domain_concepts(proteins, min_count=2 * min_domains)
    dom_split = _domain_split(proteins, split)

    # -- featurizers ------------------------------------------------------------------------
    if pca_source is not None:
        sample = sample_rows(pca_source, None, split=None, max_rows=pca_rows)
    else:
        try:
            sample = sample_rows(store, proteins, split="train", max_rows=pca_rows)
        except ValueError:  # no training split: PCA on all rows
            sample = sample_rows(store, None, split=None, max_rows=pca_rows)
    pca = fit_pca(sample, min(store.d, sample.shape[0]))
    featurizers = {
        "SAE": sae_featurizer(params),
        "neurons": neuron_featurizer(store.mean),
        "PCA": pca_featurizer(pca),
    }

    # -- passes -----------------------------------------------------------------------------
    stats, res_scores, dom_scores, counts = {}, {}, {}, {}
    for name, feat in featurizers.items():
        log(f"[interpret] {name}: {feat.num_features} features, streaming {store.num_rows} rows")
        stats[name] = scan_features(
            store,
            feat,
            k=k if name == "SAE" else 1,
            chunk_size=chunk_size,
            progress=_tqdm(f"{name} stats", n_chunks, progress),
        )
        rcounts, dcounts = associate(
            store,
            feat,
            stats[name].max_act,
            proteins,
            residue=rc,
            domain=dc,
            domain_split=dom_split,
            chunk_size=chunk_size,
            progress=_tqdm(f"{name} concepts", n_chunks, progress),
        )
        counts[name] = (rcounts, dcounts)
        res_scores[name] = select_best(
            rcounts, rc.names, descriptions=rc.descriptions, min_positives=min_residues
        )
        dom_scores[name] = select_best(
            dcounts, dc.names, descriptions=dc.descriptions, min_positives=min_domains
        )

    if fista_proteins and l1_coeff is not None:
        _fista_comparison(
            store,
            proteins,
            params,
            l1_coeff,
            fista_proteins,
            rc,
            dc,
            stats,
            res_scores,
            dom_scores,
            chunk_size,
            min_residues,
            min_domains,
            progress,
            log,
        )

    # -- tables -----------------------------------------------------------------------------
    coverage: dict[str, dict[str, dict[str, Any]]] = {}
    headline_rows = []
    for name in res_scores:
        r = coverage_summary(res_scores[name])
        d = coverage_summary(dom_scores[name])
        coverage[name] = {**r["by_category"], **d["by_category"]}
        n_feat = featurizers[name].num_features if name in featurizers else params.d_sae
        headline_rows.append(
            [
                name,
                n_feat,
                f"{r['covered']}/{r['eligible']}",
                r["mean_f1"],
                f"{d['covered']}/{d['eligible']}",
                d["mean_f1"],
            ]
        )
    headline_headers = [
        "features",
        "count",
        "residue concepts F1>0.5",
        "mean F1",
        "domain concepts F1>0.5",
        "mean F1",
    ]
    methods = list(res_scores)
    concept_rows, concept_good = [], []
    console_rows = []
    for scores in (res_scores, dom_scores):
        base = scores["SAE"]
        for j, cname in enumerate(base.names):
            if not base.eligible[j]:
                continue
            row = [cname, base.descriptions[j], int(base.n_test[j])]
            crow = [cname]
            for m in methods:
                s = scores[m]
                label = _label(featurizers, m, int(s.feature[j]))
                row += [label, float(s.test_f1[j])]
                crow += [label, float(s.test_f1[j])]
            row += [
                float(base.threshold[j]),
                float(base.test_precision[j]),
                float(base.test_recall[j]),
            ]
            concept_rows.append(row)
            concept_good.append(bool(base.test_f1[j] > 0.5))
            console_rows.append(crow)
    concept_headers = ["concept", "description", "test examples"]
    for m in methods:
        concept_headers += [f"{m} feature", f"{m} test F1"]
    concept_headers += ["SAE threshold", "SAE precision", "SAE recall"]
    console_headers = ["concept"] + [h for m in methods for h in (m, "F1")]

    # -- feature cards ----------------------------------------------------------------------
    sae_stats = stats["SAE"]
    nb = decoder_neighbours(params.W_dec, n=min(5, params.d_sae - 1)) if params.d_sae > 1 else None
    chosen: dict[int, list[str]] = {}
    for scores in (res_scores["SAE"], dom_scores["SAE"]):
        order = np.argsort(-scores.test_f1, kind="stable")
        for j in order:
            if scores.eligible[j]:
                chosen.setdefault(int(scores.feature[j]), []).append(
                    f"{scores.names[j]} (test F1 {scores.test_f1[j]:.2f})"
                )
    alive = np.flatnonzero(sae_stats.density > 0)
    by_density = alive[np.argsort(-sae_stats.density[alive], kind="stable")]
    features = list(chosen)[:max_cards]
    for f in by_density[: max(0, max_cards - len(features)) // 4]:  # a few common features too
        if int(f) not in chosen:
            features.append(int(f))
    rcounts, dcounts = counts["SAE"]
    best = feature_best_concepts(rcounts, rc.names, features, n=3)
    if len(dc.names):
        dbest = feature_best_concepts(dcounts, dc.names, features, n=2)
        best = {f: sorted(best[f] + dbest[f], key=lambda c: -c[1]) for f in features}
    notes = {f: "best SAE feature for " + "; ".join(v) for f, v in chosen.items()}
    log(f"[interpret] feature cards for {len(features)} features")
    cards = build_feature_cards(
        store,
        proteins,
        featurizers["SAE"],
        sae_stats,
        features,
        best_concepts=best,
        neighbours=nb,
        notes=notes,
    )

    # -- plots ------------------------------------------------------------------------------
    images: dict[str, Path] = {}
    images["Concept coverage: SAE vs baselines"] = plot_coverage(coverage, out / "coverage.png")
    images["SAE feature density"] = plot_density_histogram(
        sae_stats.density, out / "density.png", title="SAE feature density"
    )
    if metrics:
        images["Training curves"] = plot_training_curves(metrics, out / "training.png")
    if amortisation:
        images["Amortisation gap (encoder vs FISTA on the same decoder)"] = plot_amortisation_gap(
            amortisation, out / "amortisation.png"
        )
    sae_scores = (res_scores["SAE"], dom_scores["SAE"])
    track = _feature_track(store, proteins, featurizers["SAE"], sae_scores, sae_stats)
    if track is not None:
        f, p, seq, vals, ss, cname = track
        images[f"Feature {f} along {proteins[p]['id']} (best SAE feature for {cname})"] = (
            plot_feature_track(
                seq,
                vals,
                out / "feature_track.png",
                dssp=ss,
                title=f"SAE feature {f} (best for {cname}) on {proteins[p]['id']}",
            )
        )

    # -- text -------------------------------------------------------------------------------
    dead = dead_features(sae_stats.density)
    headline_txt = format_table(headline_rows, headline_headers)
    console = (
        "Concepts covered at test F1 > 0.5 (best feature per concept chosen on validation):\n"
        + headline_txt
        + "\n\nBest feature per concept (test F1):\n"
        + format_table(console_rows, console_headers)
    )
    n_val, n_test = int((split == 1).sum()), int((split == 2).sum())
    facts = (
        f"{store.num_rows} residues of {store.num_proteins} proteins (validation {n_val}, test "
        f"{n_test} proteins), d = {store.d}; SAE with {params.d_sae} features, "
        f"{len(dead)} dead ({100 * len(dead) / params.d_sae:.1f}%), mean density "
        f"{float(sae_stats.density.mean()):.4f}. Analysis took {time.perf_counter() - t0:.0f} s."
    )
    duplicates = int((nb.cosines[:, 0] > 0.95).sum()) if nb is not None else 0
    sections = [
        ("Method", _METHOD_TEXT),
        ("What came out", _findings(coverage, duplicates, params.d_sae)),
    ]
    hoods = _neighbourhoods(sae_scores, counts["SAE"], (rc.names, dc.names), nb)
    if hoods:
        sections.append(("Decoder neighbourhoods of the best-covered features", hoods))
    report = write_report(
        out / "report.html",
        title=title,
        intro=(intro + " " + facts).strip(),
        summary=(headline_rows, headline_headers),
        concept_table=(concept_rows, concept_headers),
        concept_good=concept_good,
        cards=cards,
        images=images,
        sections=sections,
        console=console,
    )
    summary = {
        "facts": facts,
        "headline": {"headers": headline_headers, "rows": headline_rows},
        "coverage": coverage,
        "concepts": {"headers": concept_headers, "rows": concept_rows},
        "dead_features": int(len(dead)),
        "near_duplicate_features": duplicates,
        "d_sae": int(params.d_sae),
        "pca_explained_variance_ratio": [float(v) for v in pca.explained_variance_ratio[:10]],
        "amortisation": dict(amortisation or {}),
        "console": console,
        "images": {k: str(v) for k, v in images.items()},
        "key": dict(key or {}),
    }
    summary_path = out / "summary.json"
    tmp = summary_path.with_name(f".summary.json.tmp-{os.getpid()}")
    tmp.write_text(json.dumps(summary, indent=1, default=_json_default))
    os.replace(tmp, summary_path)
    return Analysis(
        report, summary_path, (headline_rows, headline_headers), console, coverage, images
    )


_METHOD_TEXT = (
    "Each feature's activation is divided by its maximum over the store and binarised at "
    "thresholds 0, 0.15, 0.5, 0.6 and 0.8. Precision, recall and F1 against each concept are "
    "counted per residue (the 8 DSSP states, their 3-state grouping, and residue identity as a "
    "sanity check) and per domain (SCOPe class, fold, superfamily, family; a domain is hit when "
    "the feature fires on any of its residues). For every concept the (feature, threshold) "
    "with the best F1 on the validation proteins is chosen and scored on the test proteins "
    "(InterPLM's protocol). For the domain concepts the held-out proteins are pooled and "
    "halved by a hash of their id (validation half, test half), because a split by SCOPe "
    "superfamily never puts a superfamily in both validation and test. Baselines go through "
    "the same protocol: the model's neurons "
    "(mean-centred) and the PCA components of the training activations, each signed direction "
    "split into two non-negative features (ReLU of + and of −)."
    "\n\n"
    "A concept counts as covered when its chosen feature reaches test F1 > 0.5; only concepts "
    "with enough examples in both validation and test are scored."
)


_GROUPS = (
    ("secondary structure (DSSP)", ("DSSP8", "DSSP3")),
    ("residue identity", ("residue",)),
    ("SCOPe classification", ("class", "fold", "superfamily", "family")),
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


def _findings(
    coverage: Mapping[str, Mapping[str, Mapping[str, Any]]], duplicates: int, d_sae: int
) -> str:
    """Plain sentences comparing the SAE with the baselines, per group of concepts."""
    lines = []
    base = [m for m in ("neurons", "PCA") if m in coverage]
    for title, cats in _GROUPS:
        c, e, f = _group(coverage["SAE"], cats)
        if not e:
            lines.append(
                f"{title[0].upper() + title[1:]}: no concept had enough examples to be scored."
            )
            continue
        others = {m: _group(coverage[m], cats) for m in base}
        txt = ", ".join(f"{m} {o[0]}/{o[1]} (mean F1 {o[2]:.2f})" for m, o in others.items())
        verdict = (
            "the SAE is ahead"
            if all(f > o[2] for o in others.values())
            else "a single neuron or principal component does as well or better"
        )
        lines.append(
            f"{title[0].upper() + title[1:]}: SAE covers {c}/{e} concepts "
            f"(mean best F1 {f:.2f}); {txt}: "
            f"{verdict}."
        )
    dssp = _group(coverage["SAE"], ("DSSP8", "DSSP3"))
    if dssp[1] and any(dssp[2] <= _group(coverage[m], ("DSSP8", "DSSP3"))[2] for m in base):
        lines.append(
            "Why the SAE loses on secondary structure: helix, strand and coil are dense "
            "concepts (each covers 20–40% of residues), while the SAE's features are sparse "
            "(most fire on a few per cent of residues). The SAE splits a helix into many "
            "context-specific features (e.g. 'middle of a long helix'), each with high "
            "precision but low recall, so no single feature reaches a high F1; a dense neuron "
            "or principal component that correlates with helicity covers it with one "
            "threshold. Feature cards show such features (precision is high where they fire)."
        )
    if duplicates:
        lines.append(
            f"{duplicates} of {d_sae} features have a near-duplicate (decoder cosine > 0.95): "
            "a short training run leaves redundant copies of common features (e.g. one amino "
            "acid), which wastes dictionary capacity; longer training, dead-feature resampling "
            "or a larger λ reduce it."
        )
    return "\n\n".join(lines)


def _label(featurizers: Mapping[str, Any], method: str, feature: int) -> str:
    feat = featurizers.get(method)
    if feat is None:
        return f"f{feature}"
    return feat.labels[feature]


def _pick_feature(score_sets: Sequence[Any]) -> tuple[int, str] | None:
    """A well-covered SAE feature worth showing: ``(feature, "concept, test F1")``.

    Preference: a fold/superfamily/family, then a secondary-structure state, then a SCOPe
    class, then residue identity, among concepts covered at test F1 > 0.5 (else the best
    eligible concept).
    """
    tiers = (("fold", "superfamily", "family"), ("DSSP8", "DSSP3"), ("class",), ("residue",))
    cands = []
    for sc in score_sets:
        for j, name in enumerate(sc.names):
            if sc.eligible[j]:
                tier = next((t for t, cats in enumerate(tiers) if sc.categories[j] in cats), 4)
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
    import numpy as np

    from jaxsae.interpret.report import _protein_rows

    picked = _pick_feature(score_sets)
    if picked is None:
        return None
    f, label = picked
    prots = [int(p) for p in stats.top_protein[f] if p >= 0]
    if not prots:
        return None
    p = prots[0]
    acts, _ = _protein_rows(store, p)
    vals = np.asarray(jax.jit(featurizer.apply)(featurizer.params, acts))[:, f]
    seq = proteins[p].get("sequence") or "?" * len(vals)
    ss = proteins[p].get("dssp")
    if len(seq) != len(vals):
        seq, ss = "?" * len(vals), None
    return f, p, seq, vals, ss, label


def _neighbourhoods(score_sets, counts, names, nb, n_features: int = 3) -> str:
    """Text: the best-covered domain/structure features and their decoder neighbours' concepts."""
    from jaxsae.interpret.association import feature_best_concepts

    if nb is None:
        return ""
    picks: list[tuple[float, int, str]] = []
    for sc in score_sets:
        for j, name in enumerate(sc.names):
            if sc.eligible[j] and sc.test_f1[j] > 0.5 and not name.startswith("residue "):
                picks.append((-float(sc.test_f1[j]), int(sc.feature[j]), name))
    picks.sort()
    seen: set[int] = set()
    paras = []
    for neg_f1, f, name in picks:
        if f in seen or len(seen) >= n_features:
            continue
        seen.add(f)
        nbrs = [int(i) for i in nb.indices[f][:5]]
        best = {}
        for cnt, cnames in zip(counts, names, strict=True):
            if cnt is not None and len(cnames):
                for g, lst in feature_best_concepts(cnt, cnames, nbrs, n=1).items():
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
    import numpy as np

    if isinstance(o, np.generic):
        return o.item()
    if isinstance(o, np.ndarray):
        return o.tolist()
    if isinstance(o, Path):
        return str(o)
    raise TypeError(type(o).__name__)


def _fista_comparison(
    store,
    proteins,
    params,
    l1_coeff,
    n_proteins,
    rc,
    dc,
    stats,
    res_scores,
    dom_scores,
    chunk_size,
    min_residues,
    min_domains,
    progress,
    log,
) -> None:
    """Score FISTA codes and the SAE on the same subset of validation/test proteins."""
    import numpy as np

    from jaxsae.interpret.association import associate, select_best
    from jaxsae.interpret.baselines import fista_featurizer
    from jaxsae.interpret.concepts import split_codes
    from jaxsae.interpret.topk import sae_featurizer, scan_features

    split = split_codes(proteins)
    keep = np.concatenate(
        [np.flatnonzero(split == 1)[:n_proteins], np.flatnonzero(split == 2)[:n_proteins]]
    )
    rows = np.concatenate([store.positions_of(int(p)) for p in keep])
    acts = store.take(rows)
    index = np.stack(
        [
            np.repeat(keep, [len(store.positions_of(int(p))) for p in keep]),
            _rows_positions(store, rows),
        ],
        1,
    ).astype(np.int32)
    sub = (acts, index)
    for name, feat in (
        ("SAE (FISTA subset)", sae_featurizer(params)),
        ("FISTA", fista_featurizer(params, l1_coeff)),
    ):
        log(f"[interpret] {name}: {len(keep)} proteins, {len(rows)} residues")
        st = scan_features(sub, feat, k=1, chunk_size=min(chunk_size, 1024))
        r, d = associate(
            sub,
            feat,
            st.max_act,
            proteins,
            residue=rc,
            domain=dc,
            domain_split=_domain_split(proteins, split),
            chunk_size=min(chunk_size, 1024),
        )
        res_scores[name] = select_best(r, rc.names, min_positives=min_residues)
        dom_scores[name] = select_best(d, dc.names, min_positives=min_domains)
        stats[name] = st


def _rows_positions(store, rows):
    from jaxsae.interpret.report import _positions

    return _positions(store, rows)


def _raw_l1_coeff(cfg: Mapping[str, Any], sae_dir: Path) -> float | None:
    """λ on raw activations: the training λ (on normalised inputs) over the input scale ``s``.

    The SAE is exported on raw activations (``x ↦ (x − μ)·s`` folded into its weights); its
    objective on raw inputs is the training objective over ``s²``, so λ becomes ``λ / s``.
    """
    meta = dict(cfg.get("metadata", {}))
    train_cfg = dict(meta.get("jaxsae_train_config", {}))
    l1 = train_cfg.get("l1_coeff", meta.get("l1_coeff", cfg.get("l1_coeff")))
    if l1 is None:
        return None
    scale = dict(meta.get("jaxsae_input_normalisation", {})).get("scale")
    run_cfg = sae_dir.parent / "config.json"
    if scale is None and run_cfg.is_file():
        scale = json.loads(run_cfg.read_text()).get("normalisation_scale")
    return float(l1) / float(scale or 1.0)


def configure(parser: argparse.ArgumentParser) -> None:
    """Arguments of ``jaxsae interpret``."""
    parser.add_argument("store", help="activation store directory (jaxsae extract)")
    parser.add_argument("sae_dir", help="trained SAE directory in SAELens layout (jaxsae train)")
    parser.add_argument("--out", default="jaxsae-out/interpret", help="output directory")
    parser.add_argument(
        "--metrics",
        default=None,
        help="metrics.jsonl of the training run, for the training curves "
        "(default: SAE_DIR/../metrics.jsonl when present)",
    )
    parser.add_argument("--k", type=int, default=16, help="top activations kept per feature")
    parser.add_argument("--chunk-size", type=int, default=2048, help="rows encoded at once")
    parser.add_argument("--max-cards", type=int, default=40, help="feature cards in the report")
    parser.add_argument(
        "--fista-proteins",
        type=int,
        default=0,
        help="also score FISTA codes on this many validation and test proteins",
    )
    parser.add_argument(
        "--l1-coeff",
        type=float,
        default=None,
        help="the SAE's λ on raw activations, for --fista-proteins (default: "
        "the training λ divided by the input scale, from the SAE's config and "
        "the training run's config.json)",
    )


def run(args: argparse.Namespace) -> int:
    """Run ``jaxsae interpret``."""
    from jaxsae.data.store import open_store
    from jaxsae.errors import check_output_dir
    from jaxsae.models.saelens import load_saelens
    from jaxsae.training.metrics_log import read_metrics

    check_output_dir(args.out, "--out")
    store = open_store(args.store)
    loaded = load_saelens(args.sae_dir)
    params = loaded[0]
    metrics_path = (
        Path(args.metrics) if args.metrics else Path(args.sae_dir).parent / "metrics.jsonl"
    )
    metrics = read_metrics(metrics_path) if metrics_path.is_file() else None
    l1 = args.l1_coeff
    if l1 is None and args.fista_proteins:
        l1 = _raw_l1_coeff(loaded[1], Path(args.sae_dir))
        if l1 is None:
            print(
                "jaxsae interpret: no λ found in the SAE's config; pass --l1-coeff for "
                "--fista-proteins"
            )
    result = analyse(
        store,
        params,
        args.out,
        l1_coeff=l1,
        fista_proteins=args.fista_proteins,
        metrics=metrics,
        k=args.k,
        chunk_size=args.chunk_size,
        max_cards=args.max_cards,
        title=f"Features of {Path(args.sae_dir).name} on {Path(args.store).name}",
    )
    print(result.console)
    print(f"\nreport: {result.report}\nsummary: {result.summary_path}")
    return 0
