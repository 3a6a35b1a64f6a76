"""TopK SAE train step throughput: jaxsae's sparse path vs a dense PyTorch TopK step.

One step = TopK loss (fraction of variance unexplained) + gradients + Adam update, float32.
Compared in one process, alternating in rounds:

* ``jaxsae sparse``: ``topk_loss(..., sparse=True)`` (dense encoder matmul only; sparse decoder
  and sparse ∂W_enc/∂W_dec by custom VJPs), ``optax.adam``, jitted, buffers donated;
* ``jaxsae dense``: the same loss with ``sparse=False`` (dense TopK reference, autodiff);
* ``torch dense``: the same maths in PyTorch: dense decode by a full matmul, autograd,
  ``torch.optim.Adam``, ``torch.set_num_threads(2)``.
* with ``--auxk``: the sparse step with AuxK (``--aux-k``, default 512) and a dead mask flagging 0 %
  (the auxiliary branch is skipped by ``lax.cond``) or 10 % of the features.

Usage::

    python benchmarks/topk_step.py                      # d_in × d_sae = 320 × 2560 and 1280 × 10240
    python benchmarks/topk_step.py --sizes 320x2560 --batch 1024 --rounds 3
"""

from __future__ import annotations

import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(__file__))

from _common import fmt_time, machine_line, time_rounds  # noqa: E402


def jax_step(
    d_in: int,
    d_sae: int,
    k: int,
    batch: int,
    *,
    sparse: bool,
    dead_frac: float | None,
    aux_k: int = 512,
):
    """A jitted TopK train step in JAX and a closure that runs it once on fixed data."""
    import jax
    import jax.numpy as jnp
    import optax

    from jaxsae.kernels.sae import init_params
    from jaxsae.kernels.topk import topk_loss

    key = jax.random.PRNGKey(0)
    params = init_params(key, d_in, d_sae)
    x = jax.random.normal(jax.random.PRNGKey(1), (batch, d_in), jnp.float32)
    dead = None if dead_frac is None else jnp.arange(d_sae) < int(dead_frac * d_sae)
    opt = optax.adam(1e-4)
    state = {"params": params, "opt": opt.init(params)}

    def loss_fn(p, xb):
        return topk_loss(p, xb, k, dead_mask=dead, aux_k=aux_k, sparse=sparse)

    def step(p, o, xb):
        (loss, _), g = jax.value_and_grad(loss_fn, has_aux=True)(p, xb)
        upd, o = opt.update(g, o, p)
        return optax.apply_updates(p, upd), o, loss

    step = jax.jit(step, donate_argnums=(0, 1))

    def run():
        state["params"], state["opt"], loss = step(state["params"], state["opt"], x)
        return loss

    return run


def torch_step(d_in: int, d_sae: int, k: int, batch: int):
    """A dense PyTorch TopK train step (same maths) and a closure that runs it once."""
    import torch

    torch.set_num_threads(2)
    g = torch.Generator().manual_seed(0)
    W = torch.randn(d_sae, d_in, generator=g)
    W = 0.1 * W / W.norm(dim=1, keepdim=True)
    W_dec = torch.nn.Parameter(W.clone())
    W_enc = torch.nn.Parameter(W.T.clone().contiguous())
    b_enc = torch.nn.Parameter(torch.zeros(d_sae))
    b_dec = torch.nn.Parameter(torch.zeros(d_in))
    opt = torch.optim.Adam([W_enc, b_enc, W_dec, b_dec], lr=1e-4)
    x = torch.randn(batch, d_in, generator=g)
    total_var = ((x - x.mean(0)) ** 2).sum()

    def run():
        pre = (x - b_dec) @ W_enc + b_enc
        vals, idx = pre.topk(k, dim=-1, sorted=False)
        codes = torch.zeros_like(pre).scatter(1, idx, torch.relu(vals))
        recon = codes @ W_dec + b_dec
        loss = ((x - recon) ** 2).sum() / total_var
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        return loss.detach()

    return run


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", default="320x2560,1280x10240", help="comma-separated d_inxd_sae")
    ap.add_argument("--k", type=int, default=64)
    ap.add_argument("--batch", type=int, default=4096)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--auxk", action="store_true", help="also time the sparse step with AuxK")
    ap.add_argument("--aux-k", type=int, default=512, help="aux_k of the AuxK steps (512)")
    ap.add_argument("--no-dense-jax", action="store_true", help="skip the dense JAX step")
    args = ap.parse_args(argv)

    print(machine_line())
    print(
        f"TopK train step, float32, k={args.k}, batch={args.batch}, Adam; tokens/s (median of "
        f"{args.rounds} alternating rounds)"
    )
    for size in args.sizes.split(","):
        d_in, d_sae = (int(s) for s in size.lower().split("x"))

        def step(d_in=d_in, d_sae=d_sae, **kw):
            return jax_step(d_in, d_sae, args.k, args.batch, **kw)

        fns = {"jaxsae sparse": step(sparse=True, dead_frac=None)}
        if args.auxk:
            fns["sparse+auxk 0% dead"] = step(sparse=True, dead_frac=0.0, aux_k=args.aux_k)
            fns["sparse+auxk 10% dead"] = step(sparse=True, dead_frac=0.1, aux_k=args.aux_k)
        if not args.no_dense_jax:
            fns["jaxsae dense"] = step(sparse=False, dead_frac=None)
        fns["torch dense"] = torch_step(d_in, d_sae, args.k, args.batch)
        times = time_rounds(fns, rounds=args.rounds)
        ref = times["torch dense"]
        print(f"\nd_in={d_in} d_sae={d_sae}")
        print(f"  {'method':<22} {'time/step':>10} {'tokens/s':>10} {'vs torch':>9}")
        for name, t in times.items():
            print(f"  {name:<22} {fmt_time(t):>10} {args.batch / t:>10.0f} {ref / t:>8.2f}×")
    return 0


if __name__ == "__main__":
    sys.exit(main())
