"""One process of the two-process runs of ``test_distributed.py`` (2 fake CPU devices each).

Usage: ``python tests/distributed_worker.py PORT PROCESS_ID DIR``. Joins the other process
through ``jaxsae.training.distributed.initialize``, then, in ``DIR``:

* extracts the activations of ``extract_proteins()`` with the tiny ESM-2 into ``DIR/extract``;
* trains ``CFG`` on ``DIR/x.npy`` uninterrupted on a 4 × 1 data-parallel mesh (``DIR/dp``) and
  on a 2 × 2 data × feature mesh (``DIR/fs``), resampling dead features after step 6;
* resumes the run in ``DIR/from1`` (a checkpoint written by one process) to the end;

and saves each run's parameters to ``DIR/{run}_p{PROCESS_ID}.npz``.
"""

import os
import sys

if __name__ == "__main__":  # before JAX is imported; the tests import this file for its data
    os.environ["XLA_FLAGS"] = "--xla_force_host_platform_device_count=2"
    os.environ["JAX_PLATFORMS"] = "cpu"

import jax  # noqa: E402
import numpy as np  # noqa: E402

from jaxsae.protein.alphabet import STANDARD_AMINO_ACIDS  # noqa: E402
from jaxsae.protein.esm2 import ESM2Config, init_esm2_params  # noqa: E402
from jaxsae.training.config import TrainConfig  # noqa: E402

# features die by step 6 (dead after 32 tokens without firing) and are resampled then
CFG = TrainConfig(
    d_in=8, d_sae=16, batch_size=32, total_steps=12, l1_coeff=5.0, lr=0.05, dead_tokens=32
)
TINY = ESM2Config(num_layers=2, d_model=16, num_heads=2, d_ff=32, name="tiny")
EXTRACT_KW = dict(buckets=(32, 64), max_tokens_per_batch=64, rows_per_shard=60, progress=False)
TRAIN_KW = dict(checkpoint_every=6, log_every=3, resample_steps=(6,), progress=False)


def data(n=256, d=8, seed=0):
    """The activations every run trains on (an outlier dimension, a non-zero mean)."""
    rng = np.random.default_rng(seed)
    scales = np.ones(d)
    scales[0] = 20.0
    return (rng.standard_normal((n, d)) * scales[None, :] + 5.0).astype(np.float32)


def extract_proteins():
    rng = np.random.default_rng(0)
    return [
        {"id": f"p{i}", "sequence": "".join(rng.choice(list(STANDARD_AMINO_ACIDS), size=n))}
        for i, n in enumerate(rng.integers(3, 60, size=14))
    ]


def tiny_model():
    return TINY, init_esm2_params(jax.random.key(0), TINY)


def main(port: str, pid: int, base: str) -> None:
    from jaxsae.protein.extract import extract_activations
    from jaxsae.training.distributed import initialize
    from jaxsae.training.loop import train
    from jaxsae.training.parallel import make_mesh

    assert initialize(f"localhost:{port}", 2, pid, heartbeat_timeout_s=10, init_timeout_s=60)
    jax.config.update("jax_enable_x64", True)  # as tests/conftest.py
    jax.config.update("jax_numpy_rank_promotion", "raise")
    assert jax.device_count() == 4 and jax.local_device_count() == 2

    extract_activations(extract_proteins(), tiny_model(), [1], f"{base}/extract", **EXTRACT_KW)
    X = np.load(f"{base}/x.npy")
    for run, mesh in (
        ("dp", make_mesh()),
        ("fs", make_mesh(feature=2)),
        ("from1", make_mesh()),
    ):
        params, _ = train(CFG, X, f"{base}/{run}", mesh=mesh, **TRAIN_KW)
        np.savez(f"{base}/{run}_p{pid}.npz", **params._asdict())


if __name__ == "__main__":
    main(sys.argv[1], int(sys.argv[2]), sys.argv[3])
