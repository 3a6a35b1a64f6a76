"""The architecture family: BatchTopK, Matryoshka BatchTopK and JumpReLU kernels against naive
references (values and gradients, the straight-through pseudo-derivatives included), the
registry, the wrappers, feature sharding (== one device), export and resume."""

from functools import cache, partial

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from jaxsae.interpret.topk import sae_featurizer
from jaxsae.kernels.architectures import (
    LossContext,
    architecture,
    architecture_names,
    batch_loss,
    from_config,
)
from jaxsae.kernels.jumprelu import jumprelu_loss
from jaxsae.kernels.sae import SAEParams
from jaxsae.kernels.topk import TopKFamily, topk_family_loss
from jaxsae.models import SparseAutoencoder as NnxSAE
from jaxsae.models.eqx import SparseAutoencoder as EqxSAE
from jaxsae.models.saelens import (
    load_saelens,
    saelens_architecture,
    saelens_fields,
    save_saelens,
)
from jaxsae.training import parallel as par
from jaxsae.training.config import TrainConfig
from jaxsae.training.loop import train
from jaxsae.training.state import init_state
from jaxsae.training.step import train_step

D, F, B, K = 6, 24, 10, 3
NAMES = ("W_enc", "b_enc", "W_dec", "b_dec")


@pytest.fixture(scope="module")
def params():
    rng = np.random.default_rng(0)
    W_dec = rng.standard_normal((F, D))
    return SAEParams(
        W_enc=jnp.asarray(W_dec.T + 0.1 * rng.standard_normal((D, F))),
        b_enc=jnp.asarray(0.05 * rng.standard_normal(F)),
        W_dec=jnp.asarray(W_dec),
        b_dec=jnp.asarray(0.1 * rng.standard_normal(D)),
    )


@pytest.fixture(scope="module")
def x():
    return jnp.asarray(np.random.default_rng(3).standard_normal((B, D)))


def _fvu(x, r):
    x, r = np.asarray(x), np.asarray(r)
    return np.sum((x - r) ** 2) / np.sum((x - x.mean(0)) ** 2)


def numpy_batchtopk(params, x, k, levels=()):
    """Naive BatchTopK (+ Matryoshka): the k·B largest ReLU'd pre-activations of the batch."""
    p = {n: np.asarray(getattr(params, n)) for n in NAMES}
    x = np.asarray(x)
    pre = np.maximum((x - p["b_dec"]) @ p["W_enc"] + p["b_enc"], 0)
    cut = np.sort(pre.ravel())[-k * x.shape[0]]
    codes = np.where(pre >= cut, pre, 0)
    loss = _fvu(x, codes @ p["W_dec"] + p["b_dec"])
    for w in levels[:-1]:
        loss += _fvu(x, codes[:, :w] @ p["W_dec"][:w] + p["b_dec"])
    return loss, codes


@pytest.mark.parametrize("levels", [(), (4, 12, F)])
def test_batchtopk_and_matryoshka_equal_naive_and_dense(params, x, levels):
    results = {}
    for sparse in (True, False):
        opts = TopKFamily(k=K, batch=True, max_per_row=F, levels=levels, sparse=sparse)

        def f(p, opts=opts):
            return topk_family_loss(p, x, opts)

        results[sparse] = jax.jit(jax.value_and_grad(f, has_aux=True))(params)
    ref, codes = numpy_batchtopk(params, x, K, levels)
    (l_s, out), g_s = results[True]
    (l_d, _), g_d = results[False]
    np.testing.assert_allclose(l_s, ref, rtol=1e-10)
    np.testing.assert_allclose(l_d, ref, rtol=1e-10)
    np.testing.assert_allclose(out.metrics.l0, (codes > 0).sum() / B, rtol=1e-12)
    np.testing.assert_array_equal(out.fired, (codes > 0).any(0))
    np.testing.assert_allclose(out.min_active, codes[codes > 0].min(), rtol=1e-12)
    for n in NAMES:
        np.testing.assert_allclose(getattr(g_s, n), getattr(g_d, n), rtol=1e-8, atol=1e-12)
    # the default: 2k candidates per input, exact by falling back to every feature when an
    # input fills them (the first input, scaled up, holds most of the batch's active codes)
    x_sat = x.at[0].multiply(30.0)
    for xs in (x, x_sat):
        default = TopKFamily(k=K, batch=True, levels=levels)
        loss, out = jax.jit(lambda p, xs=xs, o=default: topk_family_loss(p, xs, o))(params)
        ref, codes = numpy_batchtopk(params, xs, K, levels)
        np.testing.assert_allclose(loss, ref, rtol=1e-10)
    assert (codes > 0).sum(1).max() > 2 * K  # the fallback was needed


def numpy_jumprelu(params, x, lam, eps, sparsity="l0", c=4.0):
    """Loss and straight-through gradients in NumPy, written out from the paper's formulas."""
    p = {n: np.asarray(getattr(params, n)) for n in (*NAMES, "threshold")}
    x = np.asarray(x)
    theta = np.exp(p["threshold"])
    z = x @ p["W_enc"] + p["b_enc"]
    on = z > theta
    f = z * on
    err = x - (f @ p["W_dec"] + p["b_dec"])
    norms = np.linalg.norm(p["W_dec"], axis=1)
    pen = on.sum(1) if sparsity == "l0" else np.tanh(c * f * norms).sum(1)
    loss = np.mean((err**2).sum(1)) + lam * np.mean(pen)
    n = x.shape[0]
    d_f = -2 * err @ p["W_dec"].T / n  # ∂L/∂f (reconstruction)
    kern = (np.abs((z - theta) / eps) < 0.5).astype(float)
    if sparsity == "l0":
        d_theta_pen = lam * (-(1 / eps) * kern).sum(0) / n
    else:
        d_f = d_f + lam * c * norms * (1 - np.tanh(c * f * norms) ** 2) / n
        d_theta_pen = 0.0
    d_theta = (d_f * (-(theta / eps) * kern)).sum(0) + d_theta_pen
    d_z = d_f * on
    return loss, {"threshold": theta * d_theta, "b_enc": d_z.sum(0), "W_enc": x.T @ d_z}


@pytest.mark.parametrize("sparsity", ["l0", "tanh"])
def test_jumprelu_loss_and_pseudo_derivatives(params, x, sparsity):
    # thresholds at some pre-activations' values so that the rectangle kernel is non-zero
    z = np.asarray(x) @ np.asarray(params.W_enc) + np.asarray(params.b_enc)
    eps = 0.05
    theta = np.abs(z[0]) + np.where(np.arange(F) % 2 == 0, 0.01, 0.3)
    p = params._replace(threshold=jnp.asarray(np.log(theta)))
    lam = 0.7

    def f(q):
        return jumprelu_loss(q, x, jnp.asarray(lam), bandwidth=eps, sparsity=sparsity)

    (loss, out), g = jax.jit(jax.value_and_grad(f, has_aux=True))(p)
    ref, ref_g = numpy_jumprelu(p, x, lam, eps, sparsity)
    np.testing.assert_allclose(loss, ref, rtol=1e-10)
    assert np.abs(ref_g["threshold"]).max() > 0  # the kernel fired somewhere
    for n, v in ref_g.items():
        np.testing.assert_allclose(getattr(g, n), v, rtol=1e-8, atol=1e-12, err_msg=n)
    np.testing.assert_array_equal(out.fired, (z > theta).any(0))


def test_registry_and_config():
    assert set(architecture_names()) >= {
        "l1",
        "topk",
        "batchtopk",
        "matryoshka_batchtopk",
        "jumprelu",
    }
    cfg = TrainConfig(d_in=D, d_sae=F, arch="batchtopk", k=K, aux_k=7)
    assert from_config(cfg) is architecture(
        "batchtopk", k=K, aux_k=7, aux_coeff=1 / 32, threshold_lr=0.01, max_per_row=0
    )
    assert TrainConfig.from_dict(
        TrainConfig(
            d_in=D, d_sae=F, arch="matryoshka_batchtopk", k=K, matryoshka_widths=(6, F)
        ).to_dict()
    ).matryoshka_widths == (6, F)
    with pytest.raises(ValueError, match="expected one of"):
        TrainConfig(d_in=D, d_sae=F, arch="gated")
    with pytest.raises(ValueError, match="matryoshka_widths"):
        TrainConfig(d_in=D, d_sae=F, arch="matryoshka_batchtopk", k=K, matryoshka_widths=(6, 12))
    with pytest.raises(ValueError, match="sparsity"):
        TrainConfig(d_in=D, d_sae=F, arch="jumprelu", sparsity="l2")


ARCHS = [
    ("batchtopk", {"k": K, "aux_k": F}),
    ("matryoshka_batchtopk", {"k": K, "aux_k": F, "matryoshka_widths": (6, 12, F)}),
    ("jumprelu", {"pre_act_coeff": 0.1}),
]


@pytest.mark.parametrize("name, options", ARCHS)
def test_wrappers_equal_functional(x, name, options):
    dead = jnp.asarray(np.arange(F) % 4 == 0)
    m = NnxSAE(D, F, rngs=nnx.Rngs(params=1), architecture=name, dtype=jnp.float64, **options)
    p = m.to_params()
    assert p.threshold is not None
    fresh = EqxSAE(D, F, key=jax.random.PRNGKey(1), architecture=name, **options).to_params()
    assert fresh.threshold is not None and fresh.threshold.dtype == jnp.float32
    e = EqxSAE.from_params(p, architecture=name, **options)
    arch = architecture(name, **options)
    ref = arch.forward(arch.to_inference(p), x)
    for mod in (m, e):
        for a, b in zip(mod(x), ref, strict=True):
            np.testing.assert_array_equal(a, b)
    g_f = jax.jit(jax.grad(lambda q: batch_loss(arch, q, x, 0.5, dead)[0]))(p)
    g_m = nnx.jit(nnx.grad(lambda mod: mod.loss(x, 0.5, dead_mask=dead)[0]))(m)
    g_e = eqx.filter_jit(eqx.filter_grad(lambda mod: mod.loss(x, 0.5, dead_mask=dead)[0]))(e)
    for n in (*NAMES, "threshold"):
        np.testing.assert_allclose(g_m[n][...], getattr(g_f, n), rtol=1e-12, atol=1e-14)
        np.testing.assert_allclose(getattr(g_e, n), getattr(g_f, n), rtol=1e-12, atol=1e-14)


def _cfg(name, **kw):
    options = dict(ARCHS).get(name, {"k": K, "aux_k": 12})
    base = dict(
        d_in=D,
        d_sae=F,
        batch_size=8,
        total_steps=6,
        lr=1e-2,
        lr_warmup_steps=1,
        dead_tokens=8,
        l1_coeff=0.5,
        arch=name,
    )
    return TrainConfig(**{**base, **options, **kw})


STEP_X = np.random.default_rng(5).standard_normal((3, 8, D))


@cache
def _one_device_step(cfg):
    return jax.jit(partial(train_step, cfg=cfg, data_axis=None))


def _run(step, state):
    for xb in STEP_X:
        state, m = step(state, xb)
    return state, m


@pytest.mark.parametrize("name", ["topk", "batchtopk", "matryoshka_batchtopk", "jumprelu"])
def test_feature_sharding_equals_one_device(name):
    cfg = _cfg(name)
    ref, ref_m = _run(_one_device_step(cfg), init_state(cfg, dtype=jnp.float64))
    mesh = par.make_mesh(1, 4)
    got, got_m = _run(
        par.make_sharded_step(cfg, mesh),
        par.shard_state(init_state(cfg, dtype=jnp.float64), mesh, cfg),
    )
    for a, b in zip(jax.tree.leaves(got), jax.tree.leaves(ref), strict=True):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-9, atol=1e-12)
    for f in ("loss", "fvu", "l0", "l1", "aux_loss", "dead_frac"):
        np.testing.assert_allclose(getattr(got_m, f), getattr(ref_m, f), rtol=1e-9, atol=1e-12)
    assert float(ref_m.dead_frac) > 0 or name == "jumprelu"


def test_batchtopk_threshold_estimate(x):
    """After a step, τ = (1 − η) τ + η · (the smallest non-zero code of the batch)."""
    cfg = _cfg("matryoshka_batchtopk")
    state = init_state(cfg, dtype=jnp.float64)
    arch = from_config(cfg)
    xb = STEP_X[0]
    _, out = jax.jit(arch.loss)(state.params, jnp.asarray(xb), LossContext(jnp.zeros(())))
    new, _ = _one_device_step(cfg)(state, xb)
    np.testing.assert_allclose(new.params.threshold, 0.01 * float(out.min_active), rtol=1e-12)


def test_resume_and_export_round_trip(tmp_path):
    name = "matryoshka_batchtopk"
    cfg = _cfg(name)
    data = np.random.default_rng(1).standard_normal((64, D)).astype(np.float32)
    kw = dict(progress=False, checkpoint_every=2, dtype=jnp.float64)
    full, _ = train(cfg, data, tmp_path / "full", **kw)
    train(cfg, data, tmp_path / "part", until_step=3, **kw)
    resumed, _ = train(cfg, data, tmp_path / "part", **kw)
    for a, b in zip(jax.tree.leaves(resumed), jax.tree.leaves(full), strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-10)
    loaded, scfg = load_saelens(tmp_path / "full" / "sae")
    assert scfg["architecture"] == "jumprelu"
    arch = saelens_architecture(scfg)
    for n in (*NAMES, "threshold"):
        np.testing.assert_allclose(getattr(loaded, n), getattr(full, n), rtol=1e-6, atol=1e-7)
    np.testing.assert_allclose(
        arch.encode(loaded, jnp.asarray(data, loaded.W_enc.dtype)),
        from_config(cfg).encode(full, jnp.asarray(data, jnp.float64)),
        rtol=1e-5,
        atol=1e-6,
    )


def test_jumprelu_export_round_trip(tmp_path, x):
    """JumpReLU's training form (log θ) → SAELens' inference form (θ) → back, same codes."""
    arch = architecture("jumprelu")
    p = arch.init(jax.random.PRNGKey(0), D, F, dtype=jnp.float64)
    p = p._replace(threshold=p.threshold + jnp.linspace(0.0, 5.0, F))
    inference = arch.to_inference(p)
    save_saelens(tmp_path / "sae", inference, saelens_fields(arch))
    loaded, scfg = load_saelens(tmp_path / "sae")
    assert scfg["architecture"] == "jumprelu" and not scfg["apply_b_dec_to_input"]
    assert saelens_architecture(scfg) is arch
    for a, b in zip(jax.tree.leaves(loaded), jax.tree.leaves(inference), strict=True):
        np.testing.assert_array_equal(a, b)
    np.testing.assert_allclose(arch.from_inference(loaded).threshold, p.threshold, rtol=1e-12)
    np.testing.assert_array_equal(arch.encode(loaded, x), arch.forward(inference, x).codes)
    feat = sae_featurizer(loaded, architecture=saelens_architecture(scfg))
    np.testing.assert_array_equal(feat.apply(feat.params, x), arch.encode(loaded, x))


@pytest.mark.parametrize("name", ["l1", "topk", "batchtopk", "jumprelu"])
def test_saelens_own_loader_reads_our_exports(tmp_path, x, name):
    """SAELens' ``SAE.load_from_disk`` reads each export and encodes/decodes as jaxsae does;
    its own ``save_model`` output reads back here (skipped without sae-lens)."""
    sae_lens = pytest.importorskip("sae_lens")
    torch = pytest.importorskip("torch")
    arch = architecture(name, **({"k": K} if "topk" in name else {}))
    p = arch.init(jax.random.PRNGKey(2), D, F, dtype=jnp.float32)
    if p.threshold is not None:  # thresholds some pre-activations pass and some do not
        p = p._replace(threshold=jnp.full((F,), 0.05 if name == "batchtopk" else np.log(0.05)))
    inference = arch.to_inference(p)
    save_saelens(tmp_path / "ours", inference, saelens_fields(arch))
    sae = sae_lens.SAE.load_from_disk(str(tmp_path / "ours"), device="cpu")
    xs = np.asarray(x, np.float32) * 0.3
    inference_arch = saelens_architecture(load_saelens(tmp_path / "ours")[1])
    with torch.no_grad():
        codes = sae.encode(torch.from_numpy(xs)).numpy()
        recon = sae.decode(torch.from_numpy(codes)).numpy()
    np.testing.assert_allclose(codes, inference_arch.encode(inference, jnp.asarray(xs)), atol=1e-5)
    np.testing.assert_allclose(
        recon, inference_arch.forward(inference, jnp.asarray(xs)).recon, atol=1e-5
    )
    sae.save_model(str(tmp_path / "theirs"))
    back, _ = load_saelens(tmp_path / "theirs")
    np.testing.assert_allclose(inference_arch.encode(back, jnp.asarray(xs)), codes, atol=1e-5)
