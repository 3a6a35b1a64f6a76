"""Tokens per second of one SAE train step: jaxsae (L1 and TopK) against PyTorch and SAELens.

Every method does the same work per step on the same float32 batch: forward, the loss, its
gradient, gradient-norm clipping at 1 and an Adam update.

* ``jaxsae L1``: ``jaxsae.training.parallel.make_sharded_step`` on a one-device mesh (donated
  state, batch already on the device), ``arch="l1"``; it also updates the dead-feature counters
  and computes the step metrics.
* ``jax+optax L1``: the minimal JAX step: ``jit(grad(sae_loss))`` + ``optax`` clip + Adam.
* ``torch L1``: the same L1 SAE in plain PyTorch (autograd, ``clip_grad_norm_``,
  ``torch.optim.Adam``), ``torch.set_num_threads(2)``; ``torch.compile`` of it with
  ``--torch-compile``.
* ``SAELens L1``: one step of SAELens' own trainer, ``SAETrainer.step`` (what ``SAETrainer.fit``
  runs per batch: ``StandardTrainingSAE.training_forward_pass`` with ``apply_b_dec_to_input=False``,
  its dead-feature and firing-frequency bookkeeping, backward, clip, Adam, the LR and coefficient
  schedulers) — when ``sae_lens`` is installed. ``SAELens fwd/bwd`` times the bare
  ``training_forward_pass`` + backward + clip + Adam without the trainer's bookkeeping, which is
  less than the jaxsae step does (that one also updates dead-feature counters and metrics).
* ``jaxsae TopK`` (k = 64, AuxK over the dead mask of the state) and ``torch TopK`` (dense
  decode through the full ``(batch, d_sae)`` codes, autograd, Adam).

The FLOP ceiling of a dense step is ``10·batch·d_in·d_sae`` (encoder forward, decoder forward,
∂codes, ∂W_dec, ∂W_enc) at the matmul rate measured in the same process
(``_common.matmul_gflops``, the better of NumPy and JAX): ``ceiling tokens/s = rate /
(10·d_in·d_sae)``. TopK's sparse path does less work than that, so its fraction of the dense
ceiling can exceed 1.

Usage::

    python benchmarks/train_throughput.py --quick  # d_in 320, d_sae 2560 only
    python benchmarks/train_throughput.py          # d_in ∈ {320, 1280} × d_sae ∈ {8, 32}·d_in
    python benchmarks/train_throughput.py --sizes 1280x10240 --rounds 5
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import fmt_time, machine_line, matmul_gflops, time_rounds  # noqa: E402

BATCH = 4096
TOPK_K = 64
L1_COEFF = 5.0
LR = 1e-4


def jaxsae_step(d_in: int, d_sae: int, x: np.ndarray, arch: str) -> Callable[[], object]:
    from jaxsae.training import parallel as par
    from jaxsae.training.config import TrainConfig
    from jaxsae.training.state import init_state

    cfg = TrainConfig(
        d_in=d_in,
        d_sae=d_sae,
        arch=arch,
        k=TOPK_K,
        batch_size=BATCH,
        lr=LR,
        l1_coeff=L1_COEFF,
        total_steps=10_000,
    )
    mesh = par.make_mesh(1, 1)
    step = par.make_sharded_step(cfg, mesh, check_inputs=False)
    box = {"state": par.shard_state(init_state(cfg), mesh, cfg)}
    xb = par.shard_batch(x, mesh)

    def run():
        box["state"], metrics = step(box["state"], xb)
        return metrics.loss

    return run


def plain_jax_step(d_in: int, d_sae: int, x: np.ndarray) -> Callable[[], object]:
    import jax
    import jax.numpy as jnp
    import optax

    from jaxsae.kernels.sae import init_params, sae_loss

    params = init_params(jax.random.PRNGKey(0), d_in, d_sae)
    opt = optax.chain(optax.clip_by_global_norm(1.0), optax.adam(LR))

    @partial_jit_donate
    def step(params, opt_state, x):
        loss, grads = jax.value_and_grad(lambda p: sae_loss(p, x, L1_COEFF)[0])(params)
        updates, opt_state = opt.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state, loss

    box = {"p": params, "o": opt.init(params)}
    xb = jnp.asarray(x)

    def run():
        box["p"], box["o"], loss = step(box["p"], box["o"], xb)
        return loss

    return run


def partial_jit_donate(f):
    import jax

    return jax.jit(f, donate_argnums=(0, 1))


def _torch_params(d_in: int, d_sae: int):
    import torch

    g = torch.Generator().manual_seed(0)
    W = torch.randn(d_sae, d_in, generator=g)
    W = 0.1 * W / W.norm(dim=1, keepdim=True)
    return [
        torch.nn.Parameter(W.T.contiguous()),
        torch.nn.Parameter(torch.zeros(d_sae)),
        torch.nn.Parameter(W.clone()),
        torch.nn.Parameter(torch.zeros(d_in)),
    ]


def torch_step(d_in: int, d_sae: int, x: np.ndarray, arch: str, compile_: bool = False):
    import torch

    torch.set_num_threads(2)
    W_enc, b_enc, W_dec, b_dec = params = _torch_params(d_in, d_sae)
    opt = torch.optim.Adam(params, lr=LR, betas=(0.9, 0.999), eps=1e-8)
    xt = torch.from_numpy(x)

    def loss_l1(x):
        f = torch.relu(x @ W_enc + b_enc)
        err = x - (f @ W_dec + b_dec)
        return (err**2).sum(-1).mean() + L1_COEFF * (f @ W_dec.norm(dim=1)).mean()

    def loss_topk(x):
        pre = (x - b_dec) @ W_enc + b_enc
        vals, idx = pre.topk(TOPK_K, dim=-1)
        f = torch.zeros_like(pre).scatter(-1, idx, torch.relu(vals))
        err = x - (f @ W_dec + b_dec)
        return (err**2).sum() / ((x - x.mean(0)) ** 2).sum()

    loss_fn = loss_l1 if arch == "l1" else loss_topk
    if compile_:
        loss_fn = torch.compile(loss_fn)

    def run():
        opt.zero_grad(set_to_none=True)
        loss = loss_fn(xt)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        return loss.item()

    return run


def _saelens_sae(d_in: int, d_sae: int):
    import torch
    from sae_lens.saes.standard_sae import StandardTrainingSAE, StandardTrainingSAEConfig

    torch.set_num_threads(2)
    cfg = StandardTrainingSAEConfig(
        d_in=d_in,
        d_sae=d_sae,
        dtype="float32",
        device="cpu",
        l1_coefficient=L1_COEFF,
        apply_b_dec_to_input=False,
    )
    return StandardTrainingSAE(cfg)


def saelens_trainer_step(d_in: int, d_sae: int, x: np.ndarray):
    """One ``SAETrainer.step`` of SAELens (its own train step, as ``fit`` calls it)."""
    import torch
    from sae_lens.config import SAETrainerConfig
    from sae_lens.training.sae_trainer import SAETrainer

    sae = _saelens_sae(d_in, d_sae)
    cfg = SAETrainerConfig(
        total_training_samples=10_000 * BATCH,
        train_batch_size_samples=BATCH,
        lr=LR,
        lr_end=LR,
        device="cpu",
    )
    trainer = SAETrainer(cfg, sae, data_provider=iter(()))
    xt = torch.from_numpy(x)

    def run():
        out = trainer.step(xt)
        trainer.n_training_steps += 1
        return out.loss.item()

    return run


def saelens_step(d_in: int, d_sae: int, x: np.ndarray):
    """SAELens' ``training_forward_pass`` + backward + clip + Adam, without its trainer."""
    import torch
    from sae_lens.saes.sae import TrainStepInput

    sae = _saelens_sae(d_in, d_sae)
    opt = torch.optim.Adam(sae.parameters(), lr=LR, betas=(0.9, 0.999), eps=1e-8)
    xt = torch.from_numpy(x)
    box = {"t": 0}

    def run():
        inp = TrainStepInput(
            sae_in=xt,
            coefficients={"l1": L1_COEFF},
            dead_neuron_mask=None,
            n_training_steps=box["t"],
            is_logging_step=False,
        )
        opt.zero_grad(set_to_none=True)
        out = sae.training_forward_pass(inp)
        out.loss.backward()
        torch.nn.utils.clip_grad_norm_(sae.parameters(), 1.0)
        opt.step()
        box["t"] += 1
        return out.loss.item()

    return run


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="only d_in 320, d_sae 2560")
    parser.add_argument("--sizes", nargs="*", default=None, help="e.g. 1280x10240")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument(
        "--budget",
        type=float,
        default=120.0,
        help="skip a method whose warm-up step takes longer (seconds)",
    )
    parser.add_argument("--torch-compile", action="store_true", help="also torch.compile")
    parser.add_argument("--no-topk", action="store_true")
    args = parser.parse_args(argv)

    if args.sizes:
        sizes = [tuple(int(v) for v in s.split("x")) for s in args.sizes]
    elif args.quick:
        sizes = [(320, 2560)]
    else:
        sizes = [(d, m * d) for d in (320, 1280) for m in (8, 32)]

    try:
        import sae_lens  # noqa: F401

        have_saelens = True
    except ImportError:
        have_saelens = False

    print(machine_line(), f"| batch {BATCH}, float32, threads 2 | pid {os.getpid()}")
    rate = matmul_gflops(n=1024)
    gflops = max(rate.values())
    print(
        f"matmul GFLOP/s: numpy {rate['numpy']:.1f}, jax {rate['jax']:.1f} -> ceiling uses "
        f"{gflops:.1f}"
    )
    rows = []
    for d_in, d_sae in sizes:
        x = np.random.default_rng(0).standard_normal((BATCH, d_in)).astype(np.float32)
        x *= np.sqrt(d_in / np.mean(np.sum(x**2, axis=1)))
        fns: dict[str, Callable[[], object]] = {
            "jaxsae L1": jaxsae_step(d_in, d_sae, x, "l1"),
            "jax+optax L1": plain_jax_step(d_in, d_sae, x),
            "torch L1": torch_step(d_in, d_sae, x, "l1"),
        }
        if args.torch_compile:
            fns["torch.compile L1"] = torch_step(d_in, d_sae, x, "l1", compile_=True)
        if have_saelens:
            fns["SAELens L1"] = saelens_trainer_step(d_in, d_sae, x)
            fns["SAELens fwd/bwd"] = saelens_step(d_in, d_sae, x)
        if not args.no_topk:
            fns["jaxsae TopK"] = jaxsae_step(d_in, d_sae, x, "topk")
            fns["torch TopK"] = torch_step(d_in, d_sae, x, "topk")
        times = time_rounds(fns, rounds=args.rounds, warmup=1, budget_s=args.budget)
        ceiling = gflops * 1e9 / (10.0 * d_in * d_sae)
        base = {"L1": times["torch L1"], "TopK": times.get("torch TopK", float("nan"))}
        print(f"\nd_in {d_in}, d_sae {d_sae}: dense ceiling {ceiling:,.0f} tokens/s")
        print(f"{'method':<18}{'step':>10}{'tokens/s':>11}{'of ceiling':>12}{'vs torch':>10}")
        for name, t in times.items():
            tps = BATCH / t
            vs = base["TopK" if "TopK" in name else "L1"] / t
            print(
                f"{name:<18}{fmt_time(t, args.budget):>10}{tps:>11,.0f}{tps / ceiling:>12.2f}"
                f"{vs:>9.2f}x"
            )
            rows.append((d_in, d_sae, name, t, tps, tps / ceiling, vs))
        if have_saelens and "SAELens L1" in times:
            for name in ("SAELens L1", "SAELens fwd/bwd"):
                if name in times:
                    print(f"jaxsae L1 vs {name}: {times[name] / times['jaxsae L1']:.2f}x")

    out = Path(__file__).resolve().parent / "results"
    out.mkdir(exist_ok=True)
    with open(out / "train_throughput.csv", "w") as fh:
        fh.write("d_in,d_sae,method,step_s,tokens_per_s,frac_ceiling,vs_torch\n")
        for r in rows:
            fh.write(",".join(str(v) for v in r) + "\n")
    print(f"\nwrote {out / 'train_throughput.csv'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
