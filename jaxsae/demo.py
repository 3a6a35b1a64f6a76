"""``jaxsae demo``: the whole pipeline on the embedded default model and proteins.

1. load ESM-2 t6 8M and the SCOPe/DSSP proteins that the installed packages carry (no downloads);
2. extract one layer's per-residue activations of the training proteins and of the held-out
   (validation + test) proteins into two activation stores; the held-out set can be larger
   than the training draw (``--n-heldout``: by default every held-out protein ≤ 256 residues, so
   that many SCOPe and DSSP concepts pass InterPLM's concept filter and scores are less noisy);
3. train an L1 sparse autoencoder (the seed's loss; ``--architecture`` picks another) on the
   training store;
4. measure the amortisation gap: the SAE's encoder vs FISTA on the same decoder;
5. score the SAE's features, the model's neurons and PCA components against secondary
   structure, residue identity and SCOPe classes; write ``report.html``, the PNG plots and
   ``summary.json``, and print the headline table.

``--full`` is InterPLM's ESM-2 8M setting: every protein of the embedded dataset, an SAE with
10,240 features (32 × 320), about 10⁸ training tokens (the loss has flattened well before); it
prints the plan and its expected duration on this machine (from a measured ESM-2 forward rate
and matmul rate) before it starts, takes batches of 16,384 residues on a GPU/TPU (4,096 on a
CPU) and checkpoints every 500 steps. ``--plan`` prints the plan and stops.

Every stage keeps its result on disk and a re-run reuses it (the stores, a finished training
run) unless ``--force``; the directory names carry the settings, so a run with other settings
never reuses a stale result. Writes are atomic, so Ctrl-C leaves nothing corrupt: run the same
command again to resume.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import time
from pathlib import Path
from typing import Any, NamedTuple

HELP = (
    "Run the whole pipeline on the embedded default ESM-2 and proteins: extract activations, "
    "train an SAE, measure the amortisation gap, interpret features (HTML report)."
)

# the defaults finish in about 10 minutes on a 2-core CPU; --quick in about 2; --full in hours
# (a day on a 2-core CPU; see --plan). "steps": None = tokens / batch_size; "batch_size": None =
# FULL_BATCH by backend; "n_proteins": None = all; "n_heldout": None = the held-out proteins among
# the n_proteins drawn, a number = that many of all held-out proteins (same training set).
FULL_TOKENS = 100_000_000
FULL_BATCH = {"cpu": 4096, "accelerator": 16384}
PRESETS: dict[str, dict[str, Any]] = {
    "default": {
        "layer": 4,
        "n_proteins": 3000,
        "n_heldout": 4096,
        "max_len": 256,
        "d_sae": 1280,
        "steps": 1000,
        "batch_size": 1024,
        "l1_coeff": 4.0,
        "max_cards": 40,
    },
    "quick": {
        "layer": 4,
        "n_proteins": 300,
        "n_heldout": 600,
        "max_len": 128,
        "d_sae": 512,
        "steps": 300,
        "batch_size": 512,
        "l1_coeff": 4.0,
        "max_cards": 16,
    },
    "full": {
        "layer": 4,
        "n_proteins": None,
        "n_heldout": None,
        "max_len": 1022,
        "d_sae": 10240,
        "steps": None,
        "batch_size": None,
        "l1_coeff": 1.0,
        "max_cards": 60,
    },
}


# options whose default comes from the preset: (flag, preset key, type, help)
_PRESET_OPTIONS = (
    ("--layer", "layer", int, "ESM-2 layer whose activations are used, 0..6"),
    ("--n-proteins", "n_proteins", int, "proteins taken from the default dataset"),
    (
        "--n-heldout",
        "n_heldout",
        int,
        "validation + test proteins scored, drawn from the held-out superfamilies",
    ),
    ("--max-len", "max_len", int, "longest protein kept, in residues"),
    ("--d-sae", "d_sae", int, "number of SAE features"),
    ("--steps", "steps", int, "SAE training steps"),
    ("--batch-size", "batch_size", int, "residues per training step"),
    ("--l1-coeff", "l1_coeff", float, "L1 coefficient λ on inputs normalised to E‖x‖² = d"),
)


def configure(parser: argparse.ArgumentParser) -> None:
    """Arguments of ``jaxsae demo`` (the defaults depend on ``--quick``)."""
    d, q = PRESETS["default"], PRESETS["quick"]
    parser.add_argument("--out", default="jaxsae-out", help="output folder (default jaxsae-out)")
    for flag, text in (
        ("--quick", "a small run (fewer proteins, a smaller SAE, fewer steps)"),
        (
            "--full",
            "InterPLM's ESM-2 8M setting: all embedded proteins, 10,240 features, ~10^8 "
            "tokens (hours; prints its expected duration first; resumable)",
        ),
        ("--plan", "print the run's plan and expected duration on this machine, then stop"),
        ("--force", "recompute every stage instead of reusing what is on disk"),
    ):
        parser.add_argument(flag, action="store_true", help=text)
    for flag, key, kind, text in _PRESET_OPTIONS:
        parser.add_argument(
            flag, type=kind, default=None, help=f"{text} (default {d[key]}; --quick: {q[key]})"
        )
    parser.add_argument(
        "--architecture",
        "--arch",
        default="l1",
        help="SAE architecture: l1, topk, batchtopk, matryoshka_batchtopk or jumprelu "
        "(default l1: the seed's loss, trained with λ = --l1-coeff; the TopK family uses --k; "
        "jumprelu uses --l1-coeff as its L0 coefficient); the amortisation gap is measured for "
        "l1 only",
    )
    parser.add_argument(
        "--k", type=int, default=32, help="active features per residue, TopK family (default 32)"
    )
    parser.add_argument(
        "--fista-proteins",
        type=int,
        default=0,
        help="also score FISTA codes on the SAE's decoder, on this many "
        "validation and test proteins (slow; default 0: skip)",
    )
    parser.add_argument(
        "--no-progress", dest="progress", action="store_false", help="hide progress bars"
    )


def _architectures() -> tuple[str, ...]:
    from jaxsae.kernels.architectures import architecture_names

    return tuple(architecture_names())


def _accelerator() -> bool:
    import jax

    return jax.default_backend() in ("gpu", "tpu", "cuda", "rocm")


def _settings(args: argparse.Namespace) -> dict[str, Any]:
    full = getattr(args, "full", False)
    if full and args.quick:
        raise ValueError("--full and --quick: expected one of them, found both")
    s = dict(PRESETS["full" if full else "quick" if args.quick else "default"])
    for _, key, _, _ in _PRESET_OPTIONS:
        value = getattr(args, key, None)
        if value is not None:
            s[key] = value
    if s["batch_size"] is None:
        s["batch_size"] = FULL_BATCH["accelerator" if _accelerator() else "cpu"]
    if s["steps"] is None:
        s["steps"] = -(-FULL_TOKENS // max(1, s["batch_size"]))
    s["checkpoint_every"] = 500 if full else max(50, s["steps"] // 4)
    for key in ("n_proteins", "n_heldout", "max_len", "d_sae", "steps", "batch_size"):
        if key in ("n_proteins", "n_heldout") and s[key] is None:
            continue
        if s[key] <= 0:
            raise ValueError(f"--{key.replace('_', '-')}: expected a value > 0, found {s[key]}")
    if s["l1_coeff"] < 0:
        raise ValueError(f"--l1-coeff: expected a value >= 0, found {s['l1_coeff']}")
    s["architecture"] = getattr(args, "architecture", "l1")
    s["k"] = getattr(args, "k", 32)
    if s["architecture"] not in _architectures():
        raise ValueError(
            f"--architecture: expected one of {', '.join(_architectures())}, "
            f"found {s['architecture']!r}"
        )
    if s["k"] <= 0:
        raise ValueError(f"--k: expected a value > 0, found {s['k']}")
    if s["architecture"] != "l1" and getattr(args, "fista_proteins", 0):
        raise ValueError(
            "--fista-proteins: the FISTA baseline solves the L1 SAE's lasso; expected "
            f"--architecture l1, found {s['architecture']}"
        )
    return s


def _heldout(records: list, settings: dict) -> list:
    """The held-out (validation + test) proteins scored: those among ``records``, or the first
    ``n_heldout`` of the held-out superfamilies in the dataset's fixed order (a superset of those
    among ``records`` when larger; the training proteins are unchanged)."""
    from jaxsae.protein.default import load_default_dataset

    if settings["n_heldout"] is None:
        return [r for r in records if r.split != "train"]
    pool = load_default_dataset(None, max_len=settings["max_len"], min_len=20)
    return [r for r in pool if r.split != "train"][: settings["n_heldout"]]


def _say(msg: str) -> None:
    print(f"[demo] {msg}", flush=True)


def _store_ready(path: Path) -> bool:
    from jaxsae.data.store import open_store

    if not (path / "meta.json").is_file():
        return False
    try:
        open_store(path)
    except ValueError:
        return False
    return True


def _extract(records: list, model: Any, layer: int, path: Path, force: bool, progress: bool):
    """The store of ``records`` at ``layer`` (in ``path/layer_{layer}``): reused when complete,
    else built (an interrupted extraction resumes from its last complete shard)."""
    from jaxsae.data.store import open_store
    from jaxsae.protein.extract import extract_activations

    if force and path.exists():
        shutil.rmtree(path)
    store_dir = path / f"layer_{layer}"
    if _store_ready(store_dir):
        store = open_store(store_dir)
        _say(f"activation store: reusing {store_dir} ({store.num_rows} residues)")
        return store
    _say(f"extracting layer {layer} of {len(records)} proteins into {store_dir}")
    return extract_activations(records, model, [layer], path, progress=progress)[layer]


def _train(settings: dict, store: Any, run_dir: Path, force: bool, progress: bool):
    """Train the SAE (or reuse the finished run); returns ``(params, history, scale)``."""
    from jaxsae.training.config import TrainConfig, default_matryoshka_widths
    from jaxsae.training.loop import train
    from jaxsae.training.metrics_log import read_metrics

    d_sae, arch = settings["d_sae"], settings.get("architecture", "l1")
    extra = {"k": settings.get("k", 32)} if arch != "l1" else {}
    if arch == "matryoshka_batchtopk":  # jaxsae train's default prefixes
        extra["matryoshka_widths"] = default_matryoshka_widths(d_sae)
    cfg = TrainConfig(
        d_in=store.d,
        d_sae=d_sae,
        arch=arch,
        **extra,
        l1_coeff=settings["l1_coeff"],
        total_steps=settings["steps"],
        batch_size=settings["batch_size"],
        dead_tokens=max(1, min(10_000_000, settings["steps"] * settings["batch_size"] // 5)),
    )
    if force and run_dir.exists():
        shutil.rmtree(run_dir)
    done = _finished_step(run_dir)
    finished = done == cfg.total_steps
    if finished:
        _say(f"SAE: reusing the finished run in {run_dir}")
    elif done:
        _say(f"SAE: resuming the interrupted run in {run_dir} from step {done}")
    else:
        _say(
            f"training {_describe(cfg)} for "
            f"{cfg.total_steps} steps of {cfg.batch_size} residues on {store.num_rows} "
            f"training residues; run in {run_dir}"
        )
    params, history = train(
        cfg,
        store,
        run_dir,
        resume=True,
        progress=progress and not finished,
        checkpoint_every=settings.get("checkpoint_every", max(50, cfg.total_steps // 4)),
        log_every=10,
    )
    if not history:
        history = read_metrics(run_dir / "metrics.jsonl")
    scale = json.loads((run_dir / "config.json").read_text()).get("normalisation_scale", 1.0)
    return params, history, float(scale), cfg


def _describe(cfg: Any) -> str:
    """``"an L1 SAE 320 → 1280 (λ = 4)"``, ``"a topk SAE 320 → 1280 (k = 32)"``."""
    if cfg.arch == "l1":
        return f"an L1 SAE {cfg.d_in} → {cfg.d_sae} (λ = {cfg.l1_coeff:g})"
    if cfg.arch == "jumprelu":
        return f"a jumprelu SAE {cfg.d_in} → {cfg.d_sae} (L0 coefficient {cfg.l1_coeff:g})"
    return f"a {cfg.arch} SAE {cfg.d_in} → {cfg.d_sae} (k = {cfg.k})"


def _sae_dir(out: Path, s: dict) -> Path:
    """The training run's folder: its name carries the settings (L1 runs keep their old name)."""
    arch = s.get("architecture", "l1")
    from jaxsae.kernels.architectures import architecture_options

    topk_family = "k" in architecture_options(arch)
    sparsity = f"{arch}-k{s['k']}" if topk_family else f"{arch}-{s['l1_coeff']:g}"
    return out / f"sae_{_run_tag(s)}_d{s['d_sae']}_{sparsity}_s{s['steps']}_b{s['batch_size']}"


def _finished_step(run_dir: Path) -> int | None:
    from jaxsae.training.checkpoint import latest_checkpoint

    ckpt = latest_checkpoint(run_dir / "checkpoints") if run_dir.exists() else None
    if ckpt is None:
        return None
    digits = "".join(c for c in ckpt.stem if c.isdigit())
    return int(digits) if digits else None


def _amortisation(params: Any, store: Any, l1_raw: float, scale: float, rows: int) -> dict:
    """Encoder vs the exact codes on the SAE's decoder, on a sample of held-out residues.

    The exact codes come from the default solver started from zero (the exact lasso path, then
    FISTA for any row it does not certify), so the gap is certified: ``fista_converged`` says
    every row's relative duality gap reached the solver's tolerance, bounded by
    ``max_relative_duality_gap``. Objectives are reported on the training scale (inputs
    normalised to ``E‖x‖² = d``): the raw objective times ``scale²``.
    """
    import numpy as np

    from jaxsae.kernels.amortisation import amortisation_gap

    rng = np.random.default_rng(0)
    take = np.sort(rng.choice(store.num_rows, size=min(rows, store.num_rows), replace=False))
    res = amortisation_gap(params, store.take(take), l1_raw, warm_start=False, max_steps=20000)
    s2 = scale**2
    return {
        "rows": int(take.size),
        "encoder_objective": float(res.objective_encoder) * s2,
        "fista_objective": float(res.objective_optimal) * s2,
        "relative_gap": float(res.relative_gap),
        "encoder_l0": float(res.l0_encoder),
        "fista_l0": float(res.l0_optimal),
        "encoder_mse": float(res.mse_encoder) * s2,
        "fista_mse": float(res.mse_optimal) * s2,
        "code_cosine": float(res.cosine),
        "fista_steps": int(res.num_steps),
        "fista_converged": bool(res.converged),
        "max_relative_duality_gap": float(res.max_relative_duality_gap),
    }


def _measure_rates(model: Any, settings: dict) -> dict[str, float]:
    """Rates measured on this machine: ESM-2 extraction (residues/s) and SAE gradient (FLOP/s).

    The extraction rate is timed on a second pass over 24 proteins (the first one compiles);
    the SAE rate on the loss gradient at the run's sizes (``10 · batch · d · d_sae`` FLOPs).
    """
    import tempfile

    import jax
    import jax.numpy as jnp

    from jaxsae.protein.default import load_default_dataset
    from jaxsae.protein.extract import extract_activations

    probe = load_default_dataset(24, max_len=256, min_len=100)
    with tempfile.TemporaryDirectory() as tmp:
        extract_activations(probe, model, [settings["layer"]], Path(tmp) / "a", progress=False)
        t = time.perf_counter()
        extract_activations(probe, model, [settings["layer"]], Path(tmp) / "b", progress=False)
        extract_rate = sum(len(r.sequence) for r in probe) / (time.perf_counter() - t)
    from jaxsae.kernels.sae import init_params, sae_loss

    d = model[0].d_model
    b, f = min(settings["batch_size"], 4096), settings["d_sae"]
    sae = init_params(jax.random.key(0), d, f)
    x = jax.random.normal(jax.random.key(1), (b, d), jnp.float32)
    grad = jax.jit(jax.grad(lambda p, x: sae_loss(p, x, 1.0)[0]))
    jax.block_until_ready(grad(sae, x))
    t, reps = time.perf_counter(), 2
    for _ in range(reps):
        jax.block_until_ready(grad(sae, x))
    flops = reps * 10 * b * d * f / (time.perf_counter() - t)
    return {"extract_residues_per_s": extract_rate, "sae_flops_per_s": flops, "d": d}


def plan_full_run(settings: dict, records: list, rates: dict[str, float]) -> dict[str, Any]:
    """Sizes and expected seconds of each stage, from measured rates.

    Training: ``10 · batch · d · d_sae`` FLOPs per step (encoder, decoder and their gradients)
    at the measured SAE-gradient rate. Interpretation: per held-out residue, the three
    featurizers' encodings and InterPLM counting (five thresholds, residue and instance counts
    against ``K`` concepts, two splits) at the same rate.
    """
    from jaxsae.interpret.concepts import domain_concepts

    d, f = int(rates["d"]), int(settings["d_sae"])
    train_res = sum(len(r.sequence) for r in records if r.split == "train")
    eval_recs = [r._asdict() for r in records if r.split != "train"]
    eval_res = sum(len(r["sequence"]) for r in eval_recs)
    k = 11 + 20 + len(domain_concepts(eval_recs, descriptions=False).names)
    tokens = settings["steps"] * settings["batch_size"]
    flops = rates["sae_flops_per_s"]
    seconds = {
        "extract": (train_res + eval_res) / rates["extract_residues_per_s"],
        "train": settings["steps"] * 10 * settings["batch_size"] * d * f / flops,
        "interpret": eval_res * (f + 4 * d) * (4 * d + 24 * 2 * k) / flops,
    }
    return {
        "proteins": len(records),
        "train_residues": train_res,
        "heldout_residues": eval_res,
        "concepts": k,
        "tokens": tokens,
        "epochs": tokens / max(1, train_res),
        "seconds": seconds,
    }


def _plan_text(settings: dict, records: list, rates: dict[str, float]) -> str:
    plan = plan_full_run(settings, records, rates)
    sec = plan["seconds"]
    hours = ", ".join(f"{k} {v / 3600:.1f} h" for k, v in sec.items())
    return (
        f"plan: {plan['proteins']} proteins ({plan['train_residues']} training and "
        f"{plan['heldout_residues']} held-out residues), SAE {int(rates['d'])} → "
        f"{settings['d_sae']}, {settings['steps']} steps × {settings['batch_size']} residues = "
        f"{plan['tokens'] / 1e6:.0f} M tokens ({plan['epochs']:.1f} epochs), ~{plan['concepts']} "
        f"concepts. Measured here: ESM-2 {rates['extract_residues_per_s']:.0f} residues/s, "
        f"SAE step {rates['sae_flops_per_s'] / 1e9:.0f} GFLOP/s. Expected: {hours}; total "
        f"{sum(sec.values()) / 3600:.1f} h (interrupt any time: the same command resumes)."
    )


def _previous_analysis(out: Path, key: dict) -> dict | None:
    """The ``summary.json`` of an earlier analysis of the same run and options, if complete."""
    path = out / "summary.json"
    if not (path.is_file() and (out / "report.html").is_file()):
        return None
    try:
        summary = json.loads(path.read_text())
    except json.JSONDecodeError:
        return None
    same = summary.get("key") == json.loads(json.dumps(key))
    images_ok = all(Path(p).is_file() for p in summary.get("images", {}).values())
    return summary if same and images_ok and "console" in summary else None


def _faithfulness_hook(model: Any, train_store: Any) -> Any:
    """SAEBench core metrics and splicing scores on test proteins (the embedded contact head)."""
    from jaxsae.interpret.faithfulness import analysis_hook
    from jaxsae.protein.default import default_model_path
    from jaxsae.protein.weights import load_esm2_heads

    heads = load_esm2_heads(default_model_path(), model[1], model[0])
    return analysis_hook(heads, mean=train_store.mean)


class _Data(NamedTuple):
    model: Any
    train_recs: list
    eval_recs: list


def _load(s: dict, args: argparse.Namespace) -> _Data | int:
    """Stage 1: the embedded model and proteins (or an exit code: the plan printed, an error)."""
    from jaxsae.protein.default import DEFAULT_MODEL_NAME, load_default_dataset, load_default_model

    try:
        model = load_default_model()
        records = load_default_dataset(s["n_proteins"], max_len=s["max_len"], min_len=20)
        if getattr(args, "plan", False) or getattr(args, "full", False):
            _say(_plan_text(s, records, _measure_rates(model, s)))
            if getattr(args, "plan", False):
                return 0
    except (ModuleNotFoundError, FileNotFoundError) as err:
        print(f"jaxsae demo: error: {err}", file=sys.stderr)
        return 1
    train_recs = [r for r in records if r.split == "train"]
    eval_recs = _heldout(records, s)
    if not train_recs or not eval_recs:
        print(
            f"jaxsae demo: error: {len(records)} proteins give {len(train_recs)} training and "
            f"{len(eval_recs)} held-out proteins; raise --n-proteins",
            file=sys.stderr,
        )
        return 2
    _say(
        f"model {DEFAULT_MODEL_NAME}; {len(train_recs) + len(eval_recs)} proteins "
        f"({len(train_recs)} train, {sum(r.split == 'valid' for r in eval_recs)} validation, "
        f"{sum(r.split == 'test' for r in eval_recs)} test; split by SCOPe superfamily)"
    )
    return _Data(model, train_recs, eval_recs)


def _run_tag(s: dict) -> str:
    return f"L{s['layer']}_n{s['n_proteins'] or 'all'}_len{s['max_len']}"


def _stores(s: dict, data: _Data, out: Path, args: argparse.Namespace, progress: bool):
    """Stage 2: the training and held-out activation stores."""
    tag = _run_tag(s)
    train_store = _extract(
        data.train_recs, data.model, s["layer"], out / f"store_{tag}_train", args.force, progress
    )
    held_tag = "" if s["n_heldout"] is None else f"_h{s['n_heldout']}"
    eval_store = _extract(
        data.eval_recs,
        data.model,
        s["layer"],
        out / f"store_{tag}{held_tag}_heldout",
        args.force,
        progress,
    )
    return train_store, eval_store


def _say_training(history: list) -> None:
    last = next((r for r in reversed(history) if "l0" in r), {})
    if last:
        _say(
            f"SAE at step {last.get('step')} (training batch): L0 "
            f"{last.get('l0', float('nan')):.1f}, explained variance "
            f"{1 - last.get('fvu', float('nan')):.3f}, dead {last.get('dead_frac', 0.0):.1%}"
        )


def _amortisation_stage(
    params: Any, eval_store: Any, l1_raw: float, scale: float, run_dir: Path, rows: int
) -> dict | None:
    """Stage 4: the certified amortisation gap on ``rows`` held-out residues (cached)."""
    from jaxsae.data.store import atomic_save_text

    try:
        _say("amortisation gap: SAE encoder vs FISTA on the same decoder (held-out residues)")
        cache = run_dir / "amortisation.json"
        amort = json.loads(cache.read_text()) if cache.is_file() else None
        if amort is not None and amort.get("rows") == min(rows, eval_store.num_rows):
            _say(f"amortisation gap: reusing {cache}")
        else:
            amort = _amortisation(params, eval_store, l1_raw, scale, rows=rows)
            atomic_save_text(cache, json.dumps(amort, indent=1))
    except ImportError as err:  # the kernel is optional for the report
        _say(f"amortisation gap skipped ({err})")
        return None
    if "encoder_objective" in amort and "fista_objective" in amort:
        _say(
            f"objective encoder {amort['encoder_objective']:.4g} vs FISTA "
            f"{amort['fista_objective']:.4g}; L0 {amort.get('encoder_l0', float('nan')):.1f}"
            f" vs {amort.get('fista_l0', float('nan')):.1f} "
            f"(gap {100 * amort['relative_gap']:.1f}%, FISTA {amort['fista_steps']} steps)"
        )
    return amort


class _Trained(NamedTuple):
    params: Any
    history: list
    scale: float
    cfg: Any
    run_dir: Path
    amortisation: dict | None


def _interpret_stage(
    s: dict, data: _Data, stores: tuple, trained: _Trained, out: Path, args: argparse.Namespace
) -> tuple[str, dict[str, str]]:
    """Stage 5: the analysis (reused when an identical one is on disk); ``(console, images)``."""
    from jaxsae.interpret.analysis import AnalysisConfig, analyse
    from jaxsae.kernels.architectures import from_config

    train_store, eval_store = stores
    cfg = trained.cfg
    key = {
        "run": trained.run_dir.name,
        "fista_proteins": args.fista_proteins,
        "max_cards": s["max_cards"],
        "amortisation": trained.amortisation,
    }
    previous = None if args.force else _previous_analysis(out, key)
    if previous is not None:
        _say(f"analysis: reusing {out / 'report.html'}")
        return previous["console"], previous["images"]
    _say(f"interpreting {cfg.d_sae} features on {eval_store.num_rows} held-out residues")
    n_proteins = len(data.train_recs) + len(data.eval_recs)
    config = AnalysisConfig(
        title=f"Features of ESM-2 t6 8M layer {s['layer']}: {_describe(cfg)}",
        intro=(
            f"jaxsae demo: {n_proteins} SCOPe domains (≤ {s['max_len']} residues), "
            f"{_describe(cfg)} trained {cfg.total_steps} steps × {cfg.batch_size} residues on "
            "normalised inputs."
        ),
        l1_coeff=cfg.l1_coeff / trained.scale if cfg.arch == "l1" else None,
        fista_proteins=args.fista_proteins,
        max_cards=s["max_cards"],
        progress=getattr(args, "progress", True),
    )
    result = analyse(
        eval_store,
        trained.params,
        out,
        config=config,
        pca_source=train_store,
        metrics=trained.history,
        amortisation=trained.amortisation,
        model=data.model,
        faithfulness=_faithfulness_hook(data.model, train_store),
        architecture=from_config(cfg),
        log=_say,
        key=key,
    )
    return result.console, {k: str(v) for k, v in result.images.items()}


def _finish(s: dict, out: Path, timings: dict, console: str, images: dict, run_dir: Path) -> None:
    """Stage 6: ``timings.json`` (atomic) and the closing lines."""
    from jaxsae.data.store import atomic_save_text

    record = {"settings": s, "timings_s": timings}
    atomic_save_text(out / "timings.json", json.dumps(record, indent=1))
    print()
    print(console)
    print()
    print("stage times: " + ", ".join(f"{k} {v:.0f} s" for k, v in timings.items()))
    print(f"report:  {out / 'report.html'}")
    print(f"plots:   {', '.join(images.values())}")
    print(f"numbers: {out / 'summary.json'}")
    print(f"SAE:     {run_dir / 'sae'} (SAELens layout)")


def run(args: argparse.Namespace) -> int:
    """Run ``jaxsae demo``: load → extract → train → amortisation gap → interpret → report."""
    t_start = time.perf_counter()
    try:
        s = _settings(args)
    except ValueError as err:
        print(f"jaxsae demo: error: {err}", file=sys.stderr)
        return 2
    from jaxsae.errors import check_output_dir

    out = check_output_dir(args.out, "--out")
    out.mkdir(parents=True, exist_ok=True)
    progress = getattr(args, "progress", True)
    timings: dict[str, float] = {}

    t = time.perf_counter()
    data = _load(s, args)
    if isinstance(data, int):
        return data
    timings["load"] = time.perf_counter() - t

    t = time.perf_counter()
    stores = _stores(s, data, out, args, progress)
    timings["extract"] = time.perf_counter() - t

    t = time.perf_counter()
    run_dir = _sae_dir(out, s)
    params, history, scale, cfg = _train(s, stores[0], run_dir, args.force, progress)
    timings["train"] = time.perf_counter() - t
    _say_training(history)

    t = time.perf_counter()
    l1_raw = s["l1_coeff"] / scale  # λ on raw inputs: the loss scales by s² and the L1 term by s
    amort = None
    if cfg.arch == "l1":
        amort = _amortisation_stage(
            params, stores[1], l1_raw, scale, run_dir, rows=128 if args.quick else 256
        )
    else:
        _say(f"amortisation gap: skipped (it is the L1 SAE's lasso; this is {cfg.arch})")
    timings["amortisation"] = time.perf_counter() - t

    t = time.perf_counter()
    trained = _Trained(params, history, scale, cfg, run_dir, amort)
    console, images = _interpret_stage(s, data, stores, trained, out, args)
    timings["interpret"] = time.perf_counter() - t
    timings["total"] = time.perf_counter() - t_start
    _finish(s, out, timings, console, images, run_dir)
    return 0
