"""Train-step throughput of the sparse architectures: TopK, BatchTopK, JumpReLU vs PyTorch.

One step = loss + gradients + clip at 1 + Adam, float32, batch 4096 by default. Compared in
one process, methods alternated in rounds (medians):

* ``jaxsae <arch>``: jaxsae's real train step (``make_sharded_step`` on a one-device mesh, as
  ``jaxsae train`` runs it: the architecture's loss from the registry, the sparse decoder and
  sparse ∂W_enc/∂W_dec of the TopK family, dead-feature counters, metrics, BatchTopK's
  threshold update). With ``dead 10%``, a tenth of the features are made truly dead (their
  encoder bias at −10³, their counters past ``dead_tokens``): they stay dead, so AuxK (TopK
  family) or the pre-activation loss (JumpReLU) runs at every step.
* ``torch TopK``: the dense PyTorch TopK step (codes scattered into ``(batch, d_sae)``, dense
  decoder matmul, autograd, Adam); ``torch TopK+AuxK 10%`` adds OpenAI's AuxK over the same dead
  features (dense too); ``torch BatchTopK`` keeps the top ``k·batch`` of the batch (SAELens'
  ``BatchTopK`` activation);
* ``torch JumpReLU``: SAELens' JumpReLU training step written out (the ``JumpReLU`` and ``Step``
  autograd functions with the rectangle kernel, L0 penalty, ``log_threshold``), with jaxsae's
  default ``ε`` and ``θ₀``.

Usage::

    python benchmarks/topk_step.py                               # 320x2560 and 1280x10240
    python benchmarks/topk_step.py --sizes 1280x10240 --rounds 3 --archs topk,batchtopk
"""

from __future__ import annotations

import argparse
import os
import sys

import numpy as np

sys.path.insert(0, os.path.dirname(__file__))

from _common import fmt_time, machine_line, time_rounds  # noqa: E402

LR = 1e-4
DEAD_TOKENS = 10_000_000


def jaxsae_step(arch: str, d_in: int, d_sae: int, k: int, x: np.ndarray, dead_frac: float, aux_k):
    """jaxsae's train step for ``arch`` on a one-device mesh, and a closure running it once."""
    import jax.numpy as jnp

    from jaxsae.training import parallel as par
    from jaxsae.training.config import TrainConfig
    from jaxsae.training.state import init_state

    cfg = TrainConfig(
        d_in=d_in,
        d_sae=d_sae,
        arch=arch,
        k=k,
        aux_k=aux_k,
        batch_size=x.shape[0],
        lr=LR,
        l1_coeff=1.0,
        total_steps=100_000,
        dead_tokens=DEAD_TOKENS,
    )
    state = init_state(cfg)
    n_dead = int(dead_frac * d_sae)
    if n_dead:
        dead = jnp.arange(d_sae) < n_dead
        params = state.params._replace(b_enc=jnp.where(dead, -1e3, state.params.b_enc))
        state = state._replace(
            params=params,
            tokens_since_fired=jnp.where(dead, DEAD_TOKENS, 0).astype(jnp.int32),
        )
    mesh = par.make_mesh(1, 1)
    step = par.make_sharded_step(cfg, mesh, check_inputs=False)
    box = {"state": par.shard_state(state, mesh, cfg)}
    xb = par.shard_batch(x, mesh)

    def run():
        box["state"], metrics = step(box["state"], xb)
        return metrics.loss

    return run


def torch_step(arch: str, d_in: int, d_sae: int, k: int, x: np.ndarray, dead_frac, aux_k):
    """A dense PyTorch step of the same maths, and a closure running it once."""
    import torch

    torch.set_num_threads(2)
    g = torch.Generator().manual_seed(0)
    W = torch.randn(d_sae, d_in, generator=g)
    W = 0.1 * W / W.norm(dim=1, keepdim=True)
    W_dec = torch.nn.Parameter(W.clone())
    W_enc = torch.nn.Parameter(W.T.clone().contiguous())
    b_enc = torch.nn.Parameter(torch.zeros(d_sae))
    b_dec = torch.nn.Parameter(torch.zeros(d_in))
    params = [W_enc, b_enc, W_dec, b_dec]
    from jaxsae.kernels.jumprelu import DEFAULT_BANDWIDTH, DEFAULT_INIT_THRESHOLD

    log_t = torch.nn.Parameter(torch.full((d_sae,), float(np.log(DEFAULT_INIT_THRESHOLD))))
    if arch == "jumprelu":
        params.append(log_t)
    dead = torch.arange(d_sae) < int(dead_frac * d_sae)
    with torch.no_grad():
        b_enc[dead] = -1e3
    opt = torch.optim.Adam(params, lr=LR)
    xt = torch.from_numpy(x)
    var = ((xt - xt.mean(0)) ** 2).sum()

    def topk_family():
        pre = (xt - b_dec) @ W_enc + b_enc
        if arch == "batchtopk":
            acts = pre.relu().flatten()
            v, i = acts.topk(k * xt.shape[0])
            f = torch.zeros_like(acts).scatter(-1, i, v).reshape(pre.shape)
        else:
            v, i = pre.topk(k, dim=-1, sorted=False)
            f = torch.zeros_like(pre).scatter(1, i, v.relu())
        err = xt - (f @ W_dec + b_dec)
        loss = (err**2).sum() / var
        if dead.any():
            e = err.detach()
            dp = pre.masked_fill(~dead, -float("inf"))
            av, ai = dp.topk(min(aux_k, d_sae), dim=-1, sorted=False)
            fa = torch.zeros_like(pre).scatter(1, ai, av.relu())
            loss = loss + ((e - fa @ W_dec) ** 2).sum() / ((e - e.mean(0)) ** 2).sum() / 32
        return loss

    def jumprelu():
        pre = xt @ W_enc + b_enc
        theta = log_t.exp()
        f = _JumpReLU.apply(pre, theta, DEFAULT_BANDWIDTH)
        err = xt - (f @ W_dec + b_dec)
        l0 = _Step.apply(pre, theta, DEFAULT_BANDWIDTH).sum(-1).mean()
        return (err**2).sum(-1).mean() + l0

    loss_fn = jumprelu if arch == "jumprelu" else topk_family

    def run():
        opt.zero_grad(set_to_none=True)
        loss = loss_fn()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        return loss.item()

    return run


def _torch_jumprelu_functions():
    import torch

    def rect(u):
        return ((u > -0.5) & (u < 0.5)).to(u)

    class JumpReLU(torch.autograd.Function):
        @staticmethod
        def forward(ctx, x, t, bw):
            ctx.save_for_backward(x, t)
            ctx.bw = bw
            return x * (x > t)

        @staticmethod
        def backward(ctx, g):
            x, t = ctx.saved_tensors
            return (x > t) * g, (-(t / ctx.bw) * rect((x - t) / ctx.bw) * g).sum(0), None

    class Step(torch.autograd.Function):
        @staticmethod
        def forward(ctx, x, t, bw):
            ctx.save_for_backward(x, t)
            ctx.bw = bw
            return (x > t).to(x)

        @staticmethod
        def backward(ctx, g):
            x, t = ctx.saved_tensors
            return None, (-(1.0 / ctx.bw) * rect((x - t) / ctx.bw) * g).sum(0), None

    return JumpReLU, Step


_JumpReLU = _Step = None


def main(argv: list[str] | None = None) -> int:
    global _JumpReLU, _Step
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", default="320x2560,1280x10240", help="comma-separated d_inxd_sae")
    ap.add_argument("--archs", default="topk,batchtopk,jumprelu")
    ap.add_argument("--k", type=int, default=64)
    ap.add_argument("--aux-k", type=int, default=512)
    ap.add_argument("--batch", type=int, default=4096)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--dead", default="0,0.1", help="dead fractions to time (default 0,0.1)")
    args = ap.parse_args(argv)
    _JumpReLU, _Step = _torch_jumprelu_functions()

    print(machine_line())
    print(
        f"train step, float32, k={args.k}, aux_k={args.aux_k}, batch={args.batch}, Adam; "
        f"tokens/s (median of {args.rounds} alternating rounds)"
    )
    archs = args.archs.split(",")
    deads = [float(d) for d in args.dead.split(",")]
    for size in args.sizes.split(","):
        d_in, d_sae = (int(s) for s in size.lower().split("x"))
        x = np.random.default_rng(1).standard_normal((args.batch, d_in)).astype(np.float32)
        common = (d_in, d_sae, args.k, x)
        fns = {}
        for arch in archs:
            for dead in deads:
                fns[f"jaxsae {arch} dead {dead:.0%}"] = jaxsae_step(arch, *common, dead, args.aux_k)
        fns["torch TopK"] = torch_step("topk", *common, 0.0, args.aux_k)
        for dead in deads:
            if dead:
                fns[f"torch TopK+AuxK {dead:.0%}"] = torch_step("topk", *common, dead, args.aux_k)
        if "batchtopk" in archs:
            fns["torch BatchTopK"] = torch_step("batchtopk", *common, 0.0, args.aux_k)
        if "jumprelu" in archs:
            fns["torch JumpReLU"] = torch_step("jumprelu", *common, 0.0, args.aux_k)
        times = time_rounds(fns, rounds=args.rounds)
        ref = times["torch TopK"]
        print(f"\nd_in={d_in} d_sae={d_sae}")
        print(f"  {'method':<28} {'time/step':>10} {'tokens/s':>10} {'vs torch TopK':>14}")
        for name, t in times.items():
            print(f"  {name:<28} {fmt_time(t):>10} {args.batch / t:>10.0f} {ref / t:>13.2f}×")
        if "torch JumpReLU" in times:
            for dead in deads:
                t = times[f"jaxsae jumprelu dead {dead:.0%}"]
                print(
                    f"  jaxsae JumpReLU dead {dead:.0%} vs torch JumpReLU: "
                    f"{times['torch JumpReLU'] / t:.2f}×"
                )
        for dead in deads:
            if dead and f"torch TopK+AuxK {dead:.0%}" in times:
                t_ref = times[f"torch TopK+AuxK {dead:.0%}"]
                for arch in ("topk", "batchtopk"):
                    if arch in archs:
                        t = times[f"jaxsae {arch} dead {dead:.0%}"]
                        print(
                            f"  jaxsae {arch} dead {dead:.0%} vs torch TopK+AuxK: {t_ref / t:.2f}×"
                        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
