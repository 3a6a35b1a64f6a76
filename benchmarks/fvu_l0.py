"""FVU against L0 for every SAE architecture on the embedded protein activations (SAEBench view).

ESM-2 8M (the embedded default model) layer-4 activations are extracted for proteins of the
default dataset: ``--train-proteins`` of the ``train`` split to train on, and
``--eval-proteins`` of the ``valid`` and ``test`` splits held out. Each architecture is trained
at a few sparsity levels (TopK family: ``k``; L1 and JumpReLU: their coefficient ``λ``) with the
full training loop, and the SAE it returns (the inference form, on raw activations: BatchTopK
and Matryoshka with their global threshold, so codes do not depend on the batch) is scored on
the held-out residues:

    FVU = Σ ‖x − x̂‖² / Σ ‖x − x̄‖²  (x̄ the held-out mean),  L0 = mean number of non-zero codes.

The table is printed and a plot (FVU against L0, one line per architecture) is written to
``benchmarks/results/fvu_l0.png``; the activations are cached under ``benchmarks/results/``.

    python benchmarks/fvu_l0.py                                   # d_sae 1,280, 600 steps
    python benchmarks/fvu_l0.py --archs topk,batchtopk --ks 8,16,32 --steps 1000
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
from _common import machine_line

from jaxsae.data.store import open_store
from jaxsae.kernels.architectures import from_config
from jaxsae.protein.default import load_default_dataset, load_default_model
from jaxsae.protein.extract import extract_activations
from jaxsae.training.config import TrainConfig
from jaxsae.training.loop import train

RESULTS = Path(__file__).parent / "results"
TOPK_FAMILY = ("topk", "batchtopk", "matryoshka_batchtopk")


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--archs", default="l1,topk,batchtopk,matryoshka_batchtopk,jumprelu")
    p.add_argument("--layer", type=int, default=4)
    p.add_argument("--train-proteins", type=int, default=300)
    p.add_argument("--eval-proteins", type=int, default=60, help="from each of valid and test")
    p.add_argument("--max-len", type=int, default=300)
    p.add_argument("--d-sae", type=int, default=1280)
    p.add_argument("--steps", type=int, default=600)
    p.add_argument("--batch-size", type=int, default=512)
    p.add_argument("--lr", type=float, default=3e-3)
    p.add_argument("--ks", default="8,16,32", help="k of the TopK family")
    p.add_argument("--l1-coeffs", default="4,8,14", help="λ of L1")
    p.add_argument("--l0-coeffs", default="2,8,30", help="λ of JumpReLU")
    p.add_argument("--init-threshold", type=float, default=0.5, help="JumpReLU's initial θ")
    p.add_argument("--bandwidth", type=float, default=0.05, help="JumpReLU's ε")
    p.add_argument(
        "--matryoshka-widths",
        default="",
        help="comma-separated, the last d_sae (default d_sae/4, d_sae/2, d_sae)",
    )
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--plot", default=str(RESULTS / "fvu_l0.png"))
    return p.parse_args()


def activations(args: argparse.Namespace) -> tuple[np.ndarray, np.ndarray]:
    """``(train rows, held-out rows)`` of layer ``args.layer`` (extracted once, then cached)."""
    model = load_default_model()
    sets = {
        "train": load_default_dataset(args.train_proteins, max_len=args.max_len, split="train"),
        "heldout": load_default_dataset(args.eval_proteins, max_len=args.max_len, split="valid")
        + load_default_dataset(args.eval_proteins, max_len=args.max_len, split="test"),
    }
    out = []
    for name, proteins in sets.items():
        where = RESULTS / f"fvu_l0_{name}_{len(proteins)}_{args.max_len}"
        t0 = time.perf_counter()
        store = extract_activations(proteins, model, args.layer, where, progress=False)
        store = open_store(where / f"layer_{args.layer}")
        rows = np.asarray(store.rows(0, len(store)), np.float32)
        print(
            f"{name}: {len(proteins)} proteins, {rows.shape[0]:,} residues × {rows.shape[1]} "
            f"({time.perf_counter() - t0:.1f} s, extracted or read from the cache)"
        )
        out.append(rows)
    return out[0], out[1]


def runs(args: argparse.Namespace) -> list[tuple[str, dict]]:
    """``(architecture, TrainConfig options)`` for every architecture and sparsity level."""
    floats = lambda s: [float(v) for v in s.split(",")]  # noqa: E731
    d = args.d_sae
    widths = (
        tuple(int(w) for w in args.matryoshka_widths.split(","))
        if args.matryoshka_widths
        else (d // 4, d // 2, d)
    )
    out = []
    for arch in args.archs.split(","):
        if arch in TOPK_FAMILY:
            extra = {"matryoshka_widths": widths} if arch == "matryoshka_batchtopk" else {}
            out += [(arch, {"k": int(k), **extra}) for k in floats(args.ks)]
        elif arch == "l1":
            out += [(arch, {"l1_coeff": c}) for c in floats(args.l1_coeffs)]
        elif arch == "jumprelu":
            out += [
                (
                    arch,
                    {
                        "l1_coeff": c,
                        "init_threshold": args.init_threshold,
                        "bandwidth": args.bandwidth,
                    },
                )
                for c in floats(args.l0_coeffs)
            ]
        else:
            raise ValueError(f"--archs: expected {(*TOPK_FAMILY, 'l1', 'jumprelu')}, found {arch}")
    return out


def held_out_metrics(cfg: TrainConfig, params, X: np.ndarray, chunk: int = 4096) -> tuple:
    """``(L0, FVU)`` of the inference form on held-out rows ``X (n, d_in)``."""
    forward = jax.jit(from_config(cfg).forward)
    err = l0 = 0.0
    for i in range(0, X.shape[0], chunk):
        x = jnp.asarray(X[i : i + chunk])
        out = forward(params, x)
        err += float(jnp.sum((x - out.recon) ** 2))
        l0 += float(jnp.sum(out.codes != 0))
    total = float(np.sum((X - X.mean(0)) ** 2))
    return l0 / X.shape[0], err / total


def train_one(args, arch: str, opts: dict, X: np.ndarray, H: np.ndarray) -> tuple:
    """Train one SAE; return ``(L0, FVU, train L0, seconds)`` (held-out L0 and FVU)."""
    cfg = TrainConfig(
        d_in=X.shape[1],
        d_sae=args.d_sae,
        arch=arch,
        total_steps=args.steps,
        batch_size=args.batch_size,
        lr=args.lr,
        seed=args.seed,
        **opts,
    )
    with tempfile.TemporaryDirectory() as out:
        t0 = time.perf_counter()
        params, history = train(
            cfg, X, out, log_every=max(1, args.steps // 5), export=False, progress=False
        )
        seconds = time.perf_counter() - t0
    l0, fvu = held_out_metrics(cfg, params, H)
    return l0, fvu, history[-1]["l0"], seconds


def plot(rows: list[tuple], path: str, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5.5, 3.8))
    for arch in dict.fromkeys(r[0] for r in rows):
        pts = sorted((r[2], r[3]) for r in rows if r[0] == arch)
        ax.plot(*zip(*pts, strict=True), marker="o", label=arch)
    ax.set_xlabel("L0 (held-out residues)")
    ax.set_ylabel("FVU (held-out residues)")
    ax.set_xscale("log")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="upper right")  # (not "best": a timed search that may warn)
    fig.tight_layout()
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    print(f"plot: {path}")


def main() -> None:
    args = parse_args()
    print(machine_line())
    X, H = activations(args)
    rows = []
    for arch, opts in runs(args):
        l0, fvu, train_l0, seconds = train_one(args, arch, opts, X, H)
        level = ", ".join(f"{k}={v}" for k, v in opts.items() if k in ("k", "l1_coeff"))
        rows.append((arch, level, l0, fvu))
        print(
            f"{arch} {level}: held-out L0 {l0:.1f} FVU {fvu:.3f} (train L0 {train_l0:.1f}; "
            f"{seconds:.0f} s incl. compilation)",
            flush=True,
        )
    print("\n| architecture | level | L0 | FVU |\n| --- | --- | --- | --- |")
    for arch, level, l0, fvu in rows:
        print(f"| `{arch}` | {level} | {l0:.1f} | {fvu:.3f} |")
    plot(rows, args.plot, f"ESM-2 8M layer {args.layer}, d_sae {args.d_sae:,}")


if __name__ == "__main__":
    main()
