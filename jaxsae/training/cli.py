"""``jaxsae train``: train a sparse autoencoder on stored activations."""

from __future__ import annotations

import argparse
import sys
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from jaxsae.training.config import TrainConfig
    from jaxsae.training.loop import LoopOptions

HELP = "train a sparse autoencoder on activations (a store directory or a .npy file)"


def configure(parser: argparse.ArgumentParser) -> None:
    """Add the ``train`` arguments (no heavy imports here)."""
    _add_io_arguments(parser)
    _add_architecture_arguments(parser)
    _add_optimiser_arguments(parser)
    _add_run_arguments(parser)
    add_process_arguments(parser)


def _add_io_arguments(parser: argparse.ArgumentParser) -> None:
    """The data, ``--out`` and ``--d-sae``."""
    parser.add_argument(
        "data",
        help="activations: a store directory (from `jaxsae extract`) or a (rows, d) .npy file",
    )
    parser.add_argument(
        "--out", required=True, help="output directory (checkpoints, metrics.jsonl, sae/)"
    )
    parser.add_argument(
        "--d-sae", type=int, default=None, help="number of features (default: 8 × the input width)"
    )


def _add_architecture_arguments(parser: argparse.ArgumentParser) -> None:
    """``--architecture`` and the options of each architecture."""
    parser.add_argument(
        "--architecture",
        "--arch",
        dest="arch",
        default="l1",
        help="l1 (ReLU + decoder-norm-weighted L1 penalty), topk (the k largest per token, AuxK), "
        "batchtopk (the k·batch largest of the batch), matryoshka_batchtopk (BatchTopK with "
        "nested prefix losses) or jumprelu (learned thresholds, L0 penalty) (default l1)",
    )
    parser.add_argument(
        "--k",
        type=int,
        default=32,
        help="active features per token, TopK family (default 32)",
    )
    parser.add_argument(
        "--aux-k", type=int, default=512, help="dead features used by AuxK (default 512)"
    )
    parser.add_argument(
        "--matryoshka-widths",
        default=None,
        help="comma-separated nested prefix widths for matryoshka_batchtopk, the last d_sae "
        "(default d_sae/8, d_sae/4, d_sae/2, d_sae)",
    )
    parser.add_argument(
        "--bandwidth",
        type=float,
        default=None,
        help="JumpReLU pseudo-derivative bandwidth ε, on inputs normalised to E‖x‖² = d_in "
        "(default 0.01: jaxsae.kernels.jumprelu.DEFAULT_BANDWIDTH)",
    )
    parser.add_argument(
        "--sparsity",
        choices=("l0", "tanh"),
        default="l0",
        help="JumpReLU sparsity penalty (default l0)",
    )


def _add_optimiser_arguments(parser: argparse.ArgumentParser) -> None:
    """The sparsity coefficient, steps, batch, learning rate, seed and dead features."""
    parser.add_argument(
        "--l1-coeff",
        type=float,
        default=5.0,
        help="sparsity coefficient λ (l1: L1 penalty; jumprelu: L0/tanh penalty), on inputs "
        "normalised to E‖x‖² = d_in (default 5)",
    )
    parser.add_argument("--steps", type=int, default=1000, help="optimiser steps (default 1000)")
    parser.add_argument(
        "--batch-size",
        type=int,
        default=4096,
        help="tokens per step, over all devices (default 4096)",
    )
    parser.add_argument(
        "--lr", type=float, default=1e-3, help="peak Adam learning rate (default 1e-3)"
    )
    parser.add_argument(
        "--seed",
        type=int,
        default=0,
        help="seed of the initialisation and the data order (default 0)",
    )
    parser.add_argument(
        "--dead-tokens",
        type=int,
        default=None,
        help="a feature is dead after this many tokens without firing (default: the config's 10M)",
    )
    parser.add_argument(
        "--resample-every",
        type=int,
        default=0,
        help="resample dead features every N steps (--arch l1; default 0: never)",
    )


def _add_run_arguments(parser: argparse.ArgumentParser) -> None:
    """Checkpoints, log, resumption, devices, normalisation and progress."""
    parser.add_argument(
        "--checkpoint-every", type=int, default=500, help="steps between checkpoints (default 500)"
    )
    parser.add_argument(
        "--log-every", type=int, default=10, help="steps between metrics.jsonl records (default 10)"
    )
    parser.add_argument(
        "--resume",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="continue from the latest checkpoint in --out if any (default); "
        "--no-resume starts afresh",
    )
    parser.add_argument(
        "--feature-shards",
        type=int,
        default=1,
        help="split the dictionary over this many devices (a (data, feature) mesh; default 1)",
    )
    parser.add_argument(
        "--pmap",
        action="store_true",
        help="run the step under jax.pmap instead of shard_map on a device mesh",
    )
    parser.add_argument(
        "--no-normalise",
        dest="normalise",
        action="store_false",
        help="train on raw inputs (default: centre and scale to E‖x‖² = d_in)",
    )
    parser.add_argument(
        "--no-progress", dest="progress", action="store_false", help="hide the progress bar"
    )


def add_process_arguments(parser: argparse.ArgumentParser) -> None:
    """``--coordinator``, ``--num-processes``, ``--process-id``, ``--heartbeat-timeout``."""
    group = parser.add_argument_group(
        "several processes (hosts)",
        "Run the same command in every process, with the same arguments but --process-id. "
        "Without these flags JAX's cluster detection is used (TPU pod slices, SLURM, Open MPI); "
        "outside a cluster the command runs as one process.",
    )
    group.add_argument("--coordinator", metavar="HOST:PORT", help="where process 0 listens")
    group.add_argument("--num-processes", type=int, metavar="N", help="processes taking part")
    group.add_argument("--process-id", type=int, metavar="I", help="this process, 0 .. N-1")
    group.add_argument(
        "--heartbeat-timeout",
        type=int,
        default=100,
        metavar="S",
        help="a process silent for S seconds counts as dead; the others then stop with an "
        "error (default 100)",
    )


def join_processes(args: argparse.Namespace) -> None:
    """Join the other processes of the run, as the flags of ``add_process_arguments`` say."""
    from jaxsae.training.distributed import initialize

    initialize(
        args.coordinator,
        args.num_processes,
        args.process_id,
        heartbeat_timeout_s=args.heartbeat_timeout,
    )


def run(args: argparse.Namespace) -> int:
    """Train, print where the outputs are and a final metrics line."""
    from pathlib import Path

    from jaxsae.data.loader import as_source
    from jaxsae.errors import JaxsaeError, check_output_dir
    from jaxsae.training.loop import TrainingDivergedError, train
    from jaxsae.training.parallel import make_mesh

    join_processes(args)
    try:
        check_output_dir(args.out, "--out")
        src = as_source(args.data)
        _warn_large_batch(args.batch_size, src.num_rows)
        cfg = _train_config(args, src.d)
        print(
            f"training {cfg.arch} SAE {cfg.d_in} → {cfg.d_sae} on {src.num_rows} rows "
            f"of {args.data}"
        )
        mesh = None if args.pmap else make_mesh(feature=args.feature_shards)
        _, history = train(cfg, src, args.out, _loop_options(args), mesh=mesh)
    except TrainingDivergedError as err:  # expected: reported in one line by jaxsae.cli
        raise JaxsaeError(str(err)) from err
    out = Path(args.out)
    print(f"outputs in {out}: sae/ (SAELens layout), metrics.jsonl, checkpoints/, config.json")
    last = next((r for r in reversed(history) if "loss" in r), None)
    if last is not None:
        print(
            f"step {last['step']}: loss {last['loss']:.4g}  mse {last['mse']:.4g}  "
            f"L0 {last['l0']:.1f}  FVU {last['fvu']:.4f}  dead {last['dead_frac']:.1%}  "
            f"{last['tokens_per_s']:.0f} tokens/s"
        )
    return 0


def _warn_large_batch(batch_size: int, num_rows: int) -> None:
    """Warn on stderr when a step's batch is larger than the data."""
    if batch_size > num_rows:
        print(
            f"jaxsae train: warning: --batch-size {batch_size} is larger than the data "
            f"({num_rows} rows): each step sees every row about "
            f"{batch_size / num_rows:.1f} times; a smaller --batch-size trains on "
            "distinct rows",
            file=sys.stderr,
        )


def _train_config(args: argparse.Namespace, d_in: int) -> TrainConfig:
    """The ``TrainConfig`` the flags ask for, on inputs of width ``d_in``."""
    from jaxsae.training.config import TrainConfig, default_matryoshka_widths

    extra = {} if args.dead_tokens is None else {"dead_tokens": args.dead_tokens}
    d_sae = args.d_sae if args.d_sae is not None else 8 * d_in
    if args.arch == "matryoshka_batchtopk":
        widths = args.matryoshka_widths
        extra["matryoshka_widths"] = (
            tuple(int(w) for w in widths.split(",")) if widths else default_matryoshka_widths(d_sae)
        )
    return TrainConfig(
        d_in=d_in,
        d_sae=d_sae,
        arch=args.arch,
        k=args.k,
        aux_k=args.aux_k,
        **({} if args.bandwidth is None else {"bandwidth": args.bandwidth}),
        sparsity=args.sparsity,
        l1_coeff=args.l1_coeff,
        lr=args.lr,
        total_steps=args.steps,
        batch_size=args.batch_size,
        seed=args.seed,
        **extra,
    )


def _loop_options(args: argparse.Namespace) -> LoopOptions:
    """The ``LoopOptions`` the flags ask for."""
    from jaxsae.training.loop import LoopOptions

    every = args.resample_every
    return LoopOptions(
        resume=args.resume,
        checkpoint_every=args.checkpoint_every,
        log_every=args.log_every,
        pmap=args.pmap,
        progress=args.progress,
        normalise=args.normalise,
        resample_steps=range(every, args.steps, every) if every > 0 else (),
    )
