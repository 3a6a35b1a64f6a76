"""Feature recovery at a larger size: train an SAE on synthetic data with a known dictionary.

Data: ``n_features`` random unit directions in ``R^{d_in}`` (superposition: ``n_features > d_in``),
each datum a sparse non-negative combination of ``avg_active`` of them on average
(``jaxsae.data.synthetic.make_sparse_data``). The SAE is trained with the full training loop
(normalisation, sharded step, checkpoints) and scored by the fraction of true features whose
best decoder row has cosine ≥ 0.9 (``jaxsae.kernels.recovery.feature_recovery``).

Every architecture of the registry can be trained (``--archs``); the TopK family gets
``k = round(avg_active)`` (the true L0), L1 and JumpReLU their sparsity coefficients
(``--l1-coeff``, ``--l0-coeff``), and a table compares L0, FVU and recovery (matched L0 means
the architectures' L0 is reported next to their recovery). Matryoshka gets the prefixes
``d_sae / 2`` and ``d_sae`` by default (``--matryoshka-widths``): a prefix narrower than the true
dictionary must reconstruct every true feature with too few latents on its own and learns blends
of them (77.7 % recovered with the prefixes 128, 256, 512, 1,024 at the default sizes).

    python benchmarks/recovery.py                     # d_in=64, 512 features, 1024 latents
    python benchmarks/recovery.py --d-in 128 --n-features 1024 --steps 4000
    python benchmarks/recovery.py --archs l1,topk,batchtopk,matryoshka_batchtopk,jumprelu
    python benchmarks/recovery.py --archs matryoshka_batchtopk --matryoshka-widths 128,256,512,1024
"""

from __future__ import annotations

import argparse
import tempfile
import time

import jax
import numpy as np
from _common import machine_line

from jaxsae.data.synthetic import make_sparse_data
from jaxsae.kernels.recovery import feature_recovery
from jaxsae.training.config import TrainConfig
from jaxsae.training.loop import train


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--d-in", type=int, default=64)
    p.add_argument("--n-features", type=int, default=512)
    p.add_argument("--expansion", type=int, default=2, help="d_sae = expansion × n_features")
    p.add_argument("--avg-active", type=float, default=5.0)
    p.add_argument("--rows", type=int, default=200_000)
    p.add_argument("--steps", type=int, default=2000)
    p.add_argument("--batch-size", type=int, default=1024)
    p.add_argument("--l1-coeff", type=float, default=3.0)
    p.add_argument("--lr", type=float, default=3e-3)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--archs", default="l1", help="comma-separated architectures (default l1)")
    p.add_argument("--l0-coeff", type=float, default=1.0, help="JumpReLU's λ (default 1)")
    p.add_argument("--init-threshold", type=float, default=0.1, help="JumpReLU's initial θ")
    p.add_argument("--bandwidth", type=float, default=0.01, help="JumpReLU's ε")
    p.add_argument(
        "--matryoshka-widths",
        default="",
        help="Matryoshka prefix widths, comma-separated, the last d_sae (default d_sae/2,d_sae)",
    )
    args = p.parse_args()

    print(machine_line())
    data = make_sparse_data(
        jax.random.PRNGKey(args.seed),
        args.rows,
        args.d_in,
        args.n_features,
        avg_active=args.avg_active,
    )
    X = np.asarray(data.X)
    rows = []
    for arch in args.archs.split(","):
        rows.append((arch, *run_one(args, arch, X, data.true_features)))
    print(f"\n{'architecture':<22}{'L0':>7}{'FVU':>8}{'recovered@0.9':>15}{'mean max cos':>14}")
    for arch, l0, fvu, frac, cos in rows:
        print(f"{arch:<22}{l0:>7.1f}{fvu:>8.3f}{frac:>15.1%}{cos:>14.4f}")


def run_one(args: argparse.Namespace, arch: str, X: np.ndarray, true_features) -> tuple:
    """Train one architecture; return ``(L0, FVU, recovered fraction, mean max cosine)``."""
    d_sae = args.expansion * args.n_features
    extra = {}
    if arch == "matryoshka_batchtopk":
        widths = args.matryoshka_widths
        extra["matryoshka_widths"] = (
            tuple(int(w) for w in widths.split(",")) if widths else (d_sae // 2, d_sae)
        )
    cfg = TrainConfig(
        d_in=args.d_in,
        d_sae=d_sae,
        arch=arch,
        k=max(1, round(args.avg_active)),
        total_steps=args.steps,
        batch_size=args.batch_size,
        l1_coeff=args.l0_coeff if arch == "jumprelu" else args.l1_coeff,
        lr=args.lr,
        seed=args.seed,
        init_threshold=args.init_threshold,
        bandwidth=args.bandwidth,
        **extra,
    )
    print(
        f"{arch}: d_in={cfg.d_in} n_features={args.n_features} d_sae={cfg.d_sae} "
        f"avg_active={args.avg_active} rows={args.rows} steps={cfg.total_steps} "
        f"batch={cfg.batch_size} coeff={cfg.l1_coeff} k={cfg.k} lr={cfg.lr}"
        + (f" widths={cfg.matryoshka_widths}" if cfg.matryoshka_widths else "")
    )
    with tempfile.TemporaryDirectory() as out:
        t0 = time.perf_counter()
        params, history = train(
            cfg,
            X,
            out,
            log_every=max(1, cfg.total_steps // 10),
            checkpoint_every=cfg.total_steps,
            export=False,
            progress=False,
        )
        seconds = time.perf_counter() - t0
    last = history[-1]
    print(
        f"  trained in {seconds:.1f} s ({cfg.total_steps * cfg.batch_size / seconds:,.0f} "
        f"tokens/s incl. compilation): L0 {last['l0']:.1f}  FVU {last['fvu']:.3f}  "
        f"dead {last['dead_frac']:.1%}"
    )
    for thr in (0.7, 0.8, 0.9, 0.95, 0.99):
        rec = feature_recovery(true_features, params.W_dec, threshold=thr)
        print(f"  cos >= {thr:<5} {float(rec.fraction):.1%}")
    rec = feature_recovery(true_features, params.W_dec, threshold=0.9)
    return last["l0"], last["fvu"], float(rec.fraction), float(rec.mean_max_cosine)


if __name__ == "__main__":
    main()
