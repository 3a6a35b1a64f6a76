"""A trained SAE recovers a known sparse dictionary in superposition (the whole training stack)."""

import jax
import numpy as np

from jaxsae.data.synthetic import make_sparse_data
from jaxsae.kernels.recovery import feature_recovery
from jaxsae.training.config import TrainConfig
from jaxsae.training.loop import train


def test_sae_recovers_true_features_in_superposition(tmp_path):
    d_in, n_features = 32, 128  # 4× more features than dimensions
    data = make_sparse_data(jax.random.PRNGKey(0), 20_000, d_in, n_features, avg_active=4)
    X = np.asarray(data.X)
    cfg = TrainConfig(
        d_in=d_in, d_sae=2 * n_features, total_steps=400, batch_size=256, l1_coeff=3.0, lr=3e-3
    )
    params, history = train(
        cfg,
        X,
        tmp_path,
        devices=jax.devices()[:1],
        log_every=100,
        checkpoint_every=400,
        progress=False,
        export=False,
    )
    rec = feature_recovery(data.true_features, params.W_dec, threshold=0.9)
    assert float(rec.fraction) >= 0.9, (float(rec.fraction), float(rec.mean_max_cosine))
    assert history[-1]["fvu"] < history[0]["fvu"]
    # the metric can fail: a random dictionary of the same size recovers almost nothing
    random = jax.random.normal(jax.random.PRNGKey(1), (2 * n_features, d_in))
    assert float(feature_recovery(data.true_features, random).fraction) < 0.1
