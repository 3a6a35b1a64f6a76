"""``jaxsae interpret STORE SAE_DIR --out DIR``: the feature analysis of a trained SAE.

This module only parses arguments; the analysis is the pipeline of
``jaxsae.interpret.analysis`` (``analyse``, re-exported here for earlier callers).
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

HELP = "Interpret an SAE's features on an activation store: concepts, baselines, HTML report."

__all__ = ["HELP", "configure", "run"]


def __getattr__(name: str) -> Any:  # ``analyse`` and ``Analysis`` lived here before
    if name in ("analyse", "Analysis"):
        from jaxsae.interpret import analysis

        return getattr(analysis, name)
    raise AttributeError(f"module 'jaxsae.interpret.cli' has no attribute {name!r}")


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


def _faithfulness(args: argparse.Namespace, store: Any) -> tuple[Any, Any]:
    """``(model, hook)`` for the faithfulness stage: the model named by ``--model`` or the
    embedded one when the store was extracted with it; no model: core metrics only."""
    if args.faithfulness_proteins <= 0:
        return None, None
    from jaxsae.interpret.faithfulness import analysis_hook
    from jaxsae.protein.default import DEFAULT_MODEL_NAME, default_model_path, load_default_model
    from jaxsae.protein.weights import load_esm2, load_esm2_heads

    if args.model:
        path, model = args.model, load_esm2(args.model)
    elif dict(store.meta).get("model") == DEFAULT_MODEL_NAME:
        path, model = default_model_path(), load_default_model()
    else:
        print(
            "jaxsae interpret: the store's model is not the embedded one; pass --model to add "
            "splicing scores (core reconstruction metrics only)"
        )
        return None, analysis_hook(None, max_proteins=args.faithfulness_proteins)
    heads = load_esm2_heads(path, model[1], model[0])
    return model, analysis_hook(heads, max_proteins=args.faithfulness_proteins)


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
    parser.add_argument(
        "--model",
        default=None,
        help="the ESM-2 checkpoint the store was extracted with, for the splicing scores "
        "(default: the embedded model when the store names it; otherwise splicing is skipped)",
    )
    parser.add_argument(
        "--faithfulness-proteins",
        type=int,
        default=50,
        help="test proteins for the faithfulness stage: SAEBench core metrics and ESM-2 "
        "splicing scores (0: skip the stage)",
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
    parser.add_argument(
        "--recall",
        choices=("instance", "residue"),
        default="instance",
        help="recall of range concepts (helices, domains, motifs): per instance, as InterPLM "
        "(default), or per residue (a variant)",
    )
    parser.add_argument(
        "--neurons",
        choices=("interplm", "centred"),
        default="interplm",
        help="neuron baseline: raw with the positive side only, InterPLM's identity dictionary "
        "(default), or mean-centred with both signs (a variant)",
    )
    parser.add_argument(
        "--min-residues",
        type=int,
        default=1500,
        help="score a concept when validation + test hold more than this many of its residues "
        "or more than --min-instances of its instances (defaults 1500 and 25, InterPLM's)",
    )
    parser.add_argument(
        "--min-instances",
        type=int,
        default=25,
        help="see --min-residues (instances: helices, domains, motifs …; residues for points)",
    )


def run(args: argparse.Namespace) -> int:
    """Run ``jaxsae interpret``."""
    from jaxsae.data.store import open_store
    from jaxsae.errors import check_output_dir
    from jaxsae.interpret.analysis import AnalysisConfig, analyse
    from jaxsae.models.saelens import load_saelens, saelens_architecture
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
    config = AnalysisConfig(
        title=f"Features of {Path(args.sae_dir).name} on {Path(args.store).name}",
        l1_coeff=l1,
        fista_proteins=args.fista_proteins,
        k=args.k,
        chunk_size=args.chunk_size,
        max_cards=args.max_cards,
        recall=args.recall,
        neurons=args.neurons,
        min_residues=args.min_residues,
        min_instances=args.min_instances,
    )
    model, hook = _faithfulness(args, store)
    result = analyse(
        store,
        params,
        args.out,
        config=config,
        metrics=metrics,
        model=model,
        faithfulness=hook,
        architecture=saelens_architecture(loaded[1]),
    )
    print(result.console)
    print(f"\nreport: {result.report}\nsummary: {result.summary_path}")
    return 0
