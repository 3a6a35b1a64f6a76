"""Interpreting features: top activations, density, neighbours, concept association, baselines.

Names are imported lazily (on first use), so that ``jaxsae interpret --help`` stays fast.

* streaming statistics: ``scan_features``, ``FeatureStats``, ``Featurizer``, ``sae_featurizer``;
* ``activation_density``, ``dead_features``, ``decoder_neighbours``, ``decoder_cosine``;
* concepts with a kind (point/range) and instances: ``build_concepts`` (every source the
  proteins support), ``sequence_concepts``, ``dssp_concepts``, ``domain_concepts`` (SCOPe),
  ``uniprot_concepts``, ``ConceptTable``, ``split_codes``;
* association (InterPLM's protocol): ``associate``, ``count_concepts``, ``select_best``,
  ``association_metrics``, ``coverage_summary``, ``feature_best_concepts``, ``THRESHOLDS``;
* baselines: ``neuron_featurizer``, ``fit_pca``, ``pca_featurizer``, ``fista_featurizer``;
* outputs: ``analyse`` (the whole analysis, a pipeline in ``jaxsae.interpret.analysis``),
  ``write_report``, ``build_feature_cards``, the ``plot_*`` functions.
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "topk": ("Featurizer", "FeatureStats", "sae_featurizer", "scan_features", "merge_topk"),
    "stats": (
        "Neighbours",
        "activation_density",
        "dead_features",
        "decoder_cosine",
        "decoder_neighbours",
    ),
    "concepts": (
        "ConceptTable",
        "ResidueConcepts",
        "DomainConcepts",
        "build_concepts",
        "residue_concepts",
        "sequence_concepts",
        "dssp_concepts",
        "domain_concepts",
        "uniprot_concepts",
        "concept_sources",
        "split_codes",
    ),
    "association": (
        "THRESHOLDS",
        "AssociationCounts",
        "ConceptScores",
        "associate",
        "count_concepts",
        "select_best",
        "association_metrics",
        "coverage_summary",
        "feature_best_concepts",
    ),
    "baselines": (
        "PCAResult",
        "fit_pca",
        "pca_featurizer",
        "neuron_featurizer",
        "fista_featurizer",
        "sample_rows",
    ),
    "report": ("Example", "FeatureCard", "build_feature_cards", "format_table", "write_report"),
    "plots": (
        "plot_density_histogram",
        "plot_training_curves",
        "plot_coverage",
        "plot_amortisation_gap",
        "plot_feature_track",
    ),
    "analysis": ("analyse", "Analysis", "AnalysisConfig", "FaithfulnessInputs", "bar_check"),
}
_WHERE = {name: mod for mod, names in _EXPORTS.items() for name in names}

__all__ = sorted(_WHERE)


def __getattr__(name: str) -> Any:
    if name not in _WHERE:
        raise AttributeError(f"module 'jaxsae.interpret' has no attribute {name!r}")
    value = getattr(importlib.import_module(f"jaxsae.interpret.{_WHERE[name]}"), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
