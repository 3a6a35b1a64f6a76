"""Faithfulness of a demo SAE on the embedded ESM-2 t6 8M: core metrics, contact score, time.

Loads the SAE that ``jaxsae demo`` exported (``<out>/sae_*/sae``, SAELens layout, acting on raw
activations), the embedded model and its contact head (it has no masked-LM head), takes ``--n``
test-split proteins of the embedded dataset (at most ``--max-len`` residues), extracts their
activations at the SAE's layer, and runs ``jaxsae.interpret.faithfulness.evaluate``: SAEBench
core metrics on those residues, then the splice (SAE / zero / mean, the mean being the SAE's
training store mean when ``--train-store`` is given). Prints the summary lines and the time of
each part; a second, warm run gives the time without compilation.

Usage: ``python benchmarks/faithfulness.py --sae OUT/sae_…/sae [--train-store
OUT/store_…_train/layer_4] [--n 50] [--max-len 256]``.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--sae", required=True, help="SAELens-layout SAE directory")
    ap.add_argument("--train-store", default=None, help="activation store for the mean")
    ap.add_argument("--n", type=int, default=50)
    ap.add_argument("--max-len", type=int, default=256)
    ap.add_argument("--json", default=None, help="write the result here")
    args = ap.parse_args()

    import jax

    from jaxsae.data.store import open_store
    from jaxsae.interpret.faithfulness import evaluate, summary_lines
    from jaxsae.kernels import sae
    from jaxsae.models.saelens import load_saelens
    from jaxsae.protein.default import default_model_path, load_default_dataset, load_default_model
    from jaxsae.protein.extract import extract_activations
    from jaxsae.protein.weights import load_esm2_heads

    params, cfg = load_saelens(args.sae)
    if cfg.get("architecture", "standard") != "standard":
        raise SystemExit(f"this script evaluates standard SAEs, found {cfg['architecture']!r}")
    layer = int(cfg["metadata"].get("hook_layer", 4))
    config, esm = load_default_model()
    heads = load_esm2_heads(default_model_path(), esm, config)
    recs = load_default_dataset(args.n, max_len=args.max_len, min_len=20, split="test")
    mean = open_store(args.train_store).mean if args.train_store else None

    encode = jax.jit(lambda x: sae.encode(params, x)[0])
    decode = jax.jit(lambda f: sae.decode(params, f))
    with tempfile.TemporaryDirectory() as tmp:
        t = time.perf_counter()
        store = extract_activations(recs, (config, esm), [layer], tmp, progress=False)[layer]
        t_extract = time.perf_counter() - t
        print(f"{len(recs)} test proteins, {store.num_rows} residues, layer {layer}; "
              f"activations extracted in {t_extract:.1f} s")  # fmt: skip
        for run in ("cold", "warm"):
            t = time.perf_counter()
            result = evaluate((config, esm), heads, encode, decode, store, recs, layer, mean=mean)
            print(f"[{run}] evaluate: {time.perf_counter() - t:.1f} s (splice "
                  f"{result['splice']['seconds']:.1f} s)")  # fmt: skip
    print("\n".join(summary_lines(result)))
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(result, fh, indent=1)


if __name__ == "__main__":
    main()
