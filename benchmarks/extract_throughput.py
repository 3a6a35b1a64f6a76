"""Residues/s of ESM-2 8M activation extraction: jaxsae (JAX) against transformers (PyTorch).

Same proteins (the embedded SCOPe set), same weights (the embedded ESM-2 t6 8M), float32,
2 threads, in one process, methods alternated round by round (``_common.time_rounds``).
Each method runs the model over all proteins and copies every residue's last-layer hidden state
into one NumPy array (what extraction keeps):

* ``torch padded``: ``EsmModel`` under ``torch.no_grad``, proteins sorted by length, batches of
  at most ``--tokens`` padded tokens, each padded to its longest protein (dynamic padding);
* ``jaxsae padded``: the same batches, padded to the bucket lengths (jit: one compile per
  shape; compile excluded by the warm-up);
* ``jaxsae packed``: what ``extract_activations`` does: proteins packed into rows of bucket
  lengths (block-diagonal attention), ``--tokens`` tokens per batch.

Then ``extract_activations`` end to end (packing, forward, writing the store) once, warm.

Usage: ``python benchmarks/extract_throughput.py [--n 192] [--max-len 400] [--rounds 3]``.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(__file__))

import numpy as np  # noqa: E402
from _common import fmt_time, machine_line, time_rounds  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=192, help="proteins")
    ap.add_argument("--max-len", type=int, default=400)
    ap.add_argument("--tokens", type=int, default=4096, help="padded tokens per batch")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()

    import jax
    import torch
    import transformers

    from jaxsae.protein.alphabet import batch_tokenize
    from jaxsae.protein.default import default_model_path, load_default_dataset, load_default_model
    from jaxsae.protein.esm2 import esm2_hidden_states
    from jaxsae.protein.extract import (
        DEFAULT_BUCKETS,
        ExtractConfig,
        batch_arrays,
        bucket_length,
        extract_activations,
        group_batches,
        pack_rows,
    )

    torch.set_num_threads(args.threads)
    recs = load_default_dataset(args.n, max_len=args.max_len)
    seqs = [r.sequence for r in recs]
    lengths = [len(s) for s in seqs]
    total = sum(lengths)
    config, params_np = load_default_model()
    params = jax.device_put(params_np)
    last = config.num_layers

    # the same length-sorted batches for torch and jaxsae-padded
    order = sorted(range(len(seqs)), key=lambda i: lengths[i])
    batches, cur = [], []
    for i in order:
        b = bucket_length(lengths[i] + 2, DEFAULT_BUCKETS)
        if cur and (len(cur) + 1) * b > args.tokens:
            batches.append(cur)
            cur = []
        cur.append(i)
    batches.append(cur)

    model = transformers.EsmModel.from_pretrained(default_model_path(), add_pooling_layer=False)
    model = model.eval().float()
    torch_inputs = []
    for bt in batches:
        t, m = batch_tokenize([seqs[i] for i in bt])
        torch_inputs.append(
            (bt, torch.from_numpy(t.astype(np.int64)), torch.from_numpy(m.astype(np.int64)))
        )
    jax_padded = []
    for bt in batches:
        b = bucket_length(max(lengths[i] for i in bt) + 2, DEFAULT_BUCKETS)
        jax_padded.append((bt, *batch_tokenize([seqs[i] for i in bt], length=b)))
    packed = []
    batching = ExtractConfig(max_tokens_per_batch=args.tokens)
    for b, rows in group_batches(
        pack_rows(range(len(seqs)), lengths, DEFAULT_BUCKETS), args.tokens
    ):
        n_rows = batching.batch_rows(b, len(rows))
        packed.append(batch_arrays([{"sequence": s} for s in seqs], rows, n_rows, b))
    offsets = np.concatenate([[0], np.cumsum(lengths)])
    out = np.empty((total, config.d_model), np.float32)

    def run_torch():
        with torch.no_grad():
            for bt, t, m in torch_inputs:
                h = model(input_ids=t, attention_mask=m).last_hidden_state.numpy()
                for j, i in enumerate(bt):
                    out[offsets[i] : offsets[i + 1]] = h[j, 1 : 1 + lengths[i]]
        return out

    def run_jax_padded():
        pend = None
        for bt, t, m in jax_padded:
            h = esm2_hidden_states(params, t, m, config=config, layers=(last,))
            if pend is not None:
                _copy_padded(*pend)
            pend = (bt, h)
        _copy_padded(*pend)
        return out

    def _copy_padded(bt, h):
        h = np.asarray(h)[0]
        for j, i in enumerate(bt):
            out[offsets[i] : offsets[i + 1]] = h[j, 1 : 1 + lengths[i]]

    def run_jax_packed():
        pend = None
        for tokens, seg, pos, placed in packed:
            h = esm2_hidden_states(
                params, tokens, config=config, layers=(last,), segments=seg, positions=pos
            )
            if pend is not None:
                _copy_packed(*pend)
            pend = (placed, h)
        _copy_packed(*pend)
        return out

    def _copy_packed(placed, h):
        h = np.asarray(h)[0]
        for i, j, c in placed:
            out[offsets[i] : offsets[i + 1]] = h[j, c : c + lengths[i]]

    padded_tokens = sum(len(bt) * (max(lengths[i] for i in bt) + 2) for bt in batches)
    bucket_tokens = sum(t.size for _, t, _ in jax_padded)
    packed_tokens = sum(t.size for t, *_ in packed)
    print(f"# {machine_line()}; torch {torch.__version__}, {args.threads} threads")
    print(
        f"# {len(seqs)} proteins, {total} residues (max {max(lengths)}); tokens computed: "
        f"torch padded {padded_tokens}, jaxsae bucket-padded {bucket_tokens}, "
        f"jaxsae packed {packed_tokens}; {len(batches)} / {len(packed)} batches"
    )
    t0 = time.perf_counter()
    run_jax_padded(), run_jax_packed()
    print(f"# jax compile + first run: {time.perf_counter() - t0:.1f} s")
    times = time_rounds(
        {
            "torch padded": run_torch,
            "jaxsae padded": run_jax_padded,
            "jaxsae packed": run_jax_packed,
        },
        rounds=args.rounds,
    )
    print("\n| method | time | residues/s | vs torch |")
    print("| --- | --- | --- | --- |")
    for name, t in times.items():
        print(f"| {name} | {fmt_time(t)} | {total / t:,.0f} | {times['torch padded'] / t:.2f}x |")

    with tempfile.TemporaryDirectory() as tmp:
        kw = dict(max_tokens_per_batch=args.tokens, progress=False)
        extract_activations(recs, (config, params_np), [last], os.path.join(tmp, "warm"), **kw)
        t0 = time.perf_counter()
        extract_activations(recs, (config, params_np), [last], os.path.join(tmp, "run"), **kw)
        t = time.perf_counter() - t0
    print(
        f"\nextract_activations end to end (layer {last}, warm): {fmt_time(t)}, "
        f"{total / t:,.0f} residues/s, {times['torch padded'] / t:.2f}x torch"
    )


if __name__ == "__main__":
    main()
