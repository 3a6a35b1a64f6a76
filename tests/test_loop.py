import functools
import os
import shutil
import signal

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxsae import cli
from jaxsae.data.loader import Loader
from jaxsae.kernels.sae import encode, forward
from jaxsae.kernels.topk import topk_forward
from jaxsae.models.saelens import load_saelens
from jaxsae.training.checkpoint import (
    latest_checkpoint,
    list_checkpoints,
    load_checkpoint,
    save_checkpoint,
)
from jaxsae.training.config import TrainConfig
from jaxsae.training.loop import TrainingDivergedError, train
from jaxsae.training.metrics_log import read_metrics
from jaxsae.training.parallel import make_mesh
from jaxsae.training.resample import resample_dead_features
from jaxsae.training.state import init_state

_resample = jax.jit(resample_dead_features)


D_IN, D_SAE = 5, 2000  # one shape for every resampling test: one compilation


@functools.cache
def _state(d_in=D_IN, d_sae=D_SAE):
    """A float64 state with non-zero Adam moments, a non-zero b_dec and varied norms."""
    cfg = TrainConfig(d_in=d_in, d_sae=d_sae, batch_size=4)
    state = jax.jit(lambda: init_state(cfg, dtype=jnp.float64))()
    rng = np.random.default_rng(0)
    params = jax.tree.map(lambda x: jnp.asarray(rng.standard_normal(x.shape)), state.params)
    opt = jax.tree.map(
        lambda x: (
            jnp.asarray(rng.standard_normal(x.shape), x.dtype)
            if jnp.issubdtype(x.dtype, jnp.floating)
            else x
        ),
        state.opt_state,
    )
    counters = jnp.asarray(rng.integers(1, 1000, d_sae), jnp.int32)
    return state._replace(params=params, opt_state=opt, tokens_since_fired=counters)


def _moments(opt_state):
    adam = opt_state[1][0]
    return adam.mu, adam.nu


def test_dead_features_revived_alive_untouched():
    state = _state()
    dead = jnp.zeros(D_SAE, bool).at[jnp.array([1, 4])].set(True)
    X = jnp.asarray(np.random.default_rng(1).standard_normal((32, D_IN)))
    new, info = _resample(state, X, jax.random.PRNGKey(0), dead)
    assert int(info.num_resampled) == 2
    p, q = state.params, new.params
    alive = np.flatnonzero(~np.asarray(dead))
    np.testing.assert_array_equal(q.W_enc[:, alive], p.W_enc[:, alive])
    np.testing.assert_array_equal(q.W_dec[alive], p.W_dec[alive])
    np.testing.assert_array_equal(q.b_enc[alive], p.b_enc[alive])
    np.testing.assert_array_equal(q.b_dec, p.b_dec)
    np.testing.assert_array_equal(new.tokens_since_fired[alive], state.tokens_since_fired[alive])
    for old_m, new_m in zip(_moments(state.opt_state), _moments(new.opt_state), strict=True):
        np.testing.assert_array_equal(new_m.W_enc[:, alive], old_m.W_enc[:, alive])
        np.testing.assert_array_equal(new_m.W_dec[alive], old_m.W_dec[alive])
        np.testing.assert_array_equal(new_m.b_dec, old_m.b_dec)
        for i in (1, 4):
            assert (
                not np.any(new_m.W_enc[:, i]) and not np.any(new_m.W_dec[i]) and new_m.b_enc[i] == 0
            )
    assert new.opt_state[1][0].count == state.opt_state[1][0].count
    enc_alive = np.linalg.norm(p.W_enc[:, alive], axis=0).mean()
    dec_alive = np.linalg.norm(p.W_dec[alive], axis=1).mean()
    for i in (1, 4):
        x = X[int(info.chosen[i])]
        u = (x - p.b_dec) / np.linalg.norm(x - p.b_dec)
        np.testing.assert_allclose(q.W_dec[i], dec_alive * u, rtol=1e-12)
        np.testing.assert_allclose(q.W_enc[:, i], 0.2 * enc_alive * u, rtol=1e-12)
        assert q.b_enc[i] == 0 and new.tokens_since_fired[i] == 0
        codes, _ = encode(q._replace(b_dec=jnp.zeros(D_IN)), (x - p.b_dec)[None, :])
        assert codes[0, i] > 0  # the revived feature fires on the input it came from


def test_no_dead_features_is_identity():
    state = _state()
    X = jnp.ones((32, D_IN))
    new, info = _resample(state, X, jax.random.PRNGKey(0), jnp.zeros(D_SAE, bool))
    assert int(info.num_resampled) == 0
    for a, b in zip(jax.tree.leaves(new), jax.tree.leaves(state), strict=True):
        np.testing.assert_array_equal(a, b)


def test_inputs_drawn_in_proportion_to_squared_error():
    state = _state()
    zero = jax.tree.map(jnp.zeros_like, state.params)  # x̂ = 0: the error is ‖x‖²
    state = state._replace(params=zero._replace(W_enc=state.params.W_enc))
    X = np.zeros((32, D_IN))
    X[1, 0], X[3, 1] = 1.0, np.sqrt(3.0)  # squared errors 1 and 3, the others 0
    _, info = _resample(state, jnp.asarray(X), jax.random.PRNGKey(3), jnp.ones(D_SAE, bool))
    counts = np.bincount(np.asarray(info.chosen), minlength=32)
    assert counts[1] + counts[3] == D_SAE
    np.testing.assert_allclose(counts[3] / D_SAE, 0.75, atol=0.04)


# -- the training loop ---------------------------------------------------------------------


def _data(n=256, d=8, seed=0):
    rng = np.random.default_rng(seed)
    scales = np.ones(d)
    scales[0] = 20.0  # an outlier dimension, as in protein language models
    return (rng.standard_normal((n, d)) * scales[None, :] + 5.0).astype(np.float32)


CFG = TrainConfig(d_in=8, d_sae=16, batch_size=32, total_steps=12, l1_coeff=1.0, lr=1e-2)


def _leaves_close(a, b, tol):
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True):
        np.testing.assert_allclose(np.asarray(x), np.asarray(y), rtol=tol, atol=tol)


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory):
    """12 steps in one go on a 2-device mesh."""
    out = tmp_path_factory.mktemp("full")
    mesh = make_mesh(devices=jax.devices()[:2])
    params, history = train(
        CFG, _data(), out, mesh=mesh, checkpoint_every=6, log_every=3, progress=False
    )
    return out, params, history


def test_run_writes_log_checkpoints_and_export(uninterrupted):
    out, params, history = uninterrupted
    assert [r["step"] for r in history] == [3, 6, 9, 12]
    assert history == read_metrics(out / "metrics.jsonl")
    for key in ("loss", "mse", "l0", "fvu", "dead_frac", "tokens_per_s", "lr", "l1_coeff"):
        assert all(np.isfinite(r[key]) for r in history), key
    assert history[-1]["loss"] < history[0]["loss"]
    assert [p.name for p in list_checkpoints(out / "checkpoints")] == [
        "ckpt_000000006",
        "ckpt_000000012",
    ]
    assert (out / "config.json").is_file()
    exported, sae_cfg = load_saelens(out / "sae")
    _leaves_close(exported, params, 0)
    assert sae_cfg["architecture"] == "standard"
    assert sae_cfg["metadata"]["jaxsae_train_config"] == CFG.to_dict()
    # the returned parameters act on raw inputs: they equal the trained (normalised) SAE
    template = jax.eval_shape(lambda: init_state(CFG))
    ck = load_checkpoint(out / "checkpoints", template)
    norm = ck.normalisation
    X = _data()[:16]
    Z = norm.apply(X)
    recon_norm = forward(jax.tree.map(jnp.asarray, ck.state.params), jnp.asarray(Z)).recon
    recon_raw = forward(params, jnp.asarray(X)).recon
    np.testing.assert_allclose(
        recon_raw, np.asarray(recon_norm) / norm.scale + norm.mean[None, :], rtol=1e-4, atol=1e-3
    )


def test_resume_equals_uninterrupted(uninterrupted, tmp_path):
    _, full, full_history = uninterrupted
    mesh = make_mesh(devices=jax.devices()[:2])
    kw = dict(mesh=mesh, checkpoint_every=6, log_every=3, progress=False)
    train(CFG, _data(), tmp_path, until_step=6, **kw)
    assert latest_checkpoint(tmp_path / "checkpoints").name == "ckpt_000000006"
    assert not (tmp_path / "sae").exists()  # not finished: nothing exported
    params, history = train(CFG, _data(), tmp_path, **kw)
    _leaves_close(params, full, 1e-6)
    drop = ("tokens_per_s",)
    strip = lambda h: [{k: v for k, v in r.items() if k not in drop} for r in h]  # noqa: E731
    assert strip(history) == strip(full_history)


def _damage(ckpts, how):
    """Damage the newest of the uninterrupted run's checkpoints (copied to ``ckpts``)."""
    if how.startswith("npz"):  # the same checkpoints in the single-file format of old versions
        like = jax.eval_shape(lambda: init_state(CFG))
        for path in list_checkpoints(ckpts):
            ck = load_checkpoint(path, like)
            shutil.rmtree(path)
            kw = dict(data_state=ck.data_state, normalisation=ck.normalisation, extra=ck.extra)
            save_checkpoint(ckpts, ck.state, step=ck.step, config=ck.config, keep=5, **kw)
    newest = list_checkpoints(ckpts)[-1]
    if how == "npz truncated":
        newest.write_bytes(newest.read_bytes()[: newest.stat().st_size // 2])
    elif how == "npz empty":
        newest.write_bytes(b"")
    else:  # one array file of the Orbax checkpoint garbled, or emptied
        victim = max((f for f in (newest / "state").rglob("*") if f.is_file()), key=os.path.getsize)
        size = victim.stat().st_size
        victim.write_bytes(b"" if how == "orbax empty file" else bytes(size))
    return newest


@pytest.mark.parametrize(
    "how", ["orbax garbled file", "orbax empty file", "npz truncated", "npz empty"]
)
def test_damaged_newest_checkpoint_resumes_from_the_previous(uninterrupted, tmp_path, how):
    """A damaged newest checkpoint: a warning naming it, kept aside, the older one resumed."""
    out, full, _ = uninterrupted
    shutil.copytree(out, tmp_path / "run")
    shutil.rmtree(tmp_path / "run" / "sae")
    damaged = _damage(tmp_path / "run" / "checkpoints", how)
    mesh = make_mesh(devices=jax.devices()[:2])
    with pytest.warns(UserWarning, match=f"{damaged}.*kept as .*damaged_{damaged.name}"):
        params, _ = train(
            CFG, _data(), tmp_path / "run", mesh=mesh, checkpoint_every=6, log_every=3,
            progress=False,
        )  # fmt: skip
    _leaves_close(params, full, 1e-6)
    assert (damaged.parent / f"damaged_{damaged.name}").exists()  # never deleted
    assert latest_checkpoint(damaged.parent).name == "ckpt_000000012"  # written again


def test_resume_on_more_devices(uninterrupted, tmp_path):
    """Saved on 2 devices, resumed on 4: the uninterrupted parameters."""
    out, full, _ = uninterrupted
    shutil.copytree(out, tmp_path / "run")
    shutil.rmtree(tmp_path / "run" / "checkpoints" / "ckpt_000000012")
    shutil.rmtree(tmp_path / "run" / "sae")
    params, _ = train(CFG, _data(), tmp_path / "run", devices=jax.devices()[:4], progress=False)
    _leaves_close(params, full, 1e-5)


def test_one_device_and_pmap_match_the_mesh(uninterrupted, tmp_path):
    _, full, _ = uninterrupted
    one, _ = train(CFG, _data(), tmp_path / "one", devices=jax.devices()[:1], progress=False)
    _leaves_close(one, full, 1e-5)
    pm, _ = train(
        CFG, _data(), tmp_path / "pmap", pmap=True, devices=jax.devices()[:2], progress=False
    )
    _leaves_close(pm, full, 1e-5)


def test_topk_run_exports_a_topk_sae_on_raw_inputs(tmp_path):
    cfg = CFG.replace(arch="topk", k=3, aux_k=4)
    params, history = train(cfg, _data(), tmp_path, devices=jax.devices()[:1], progress=False)
    assert history[-1]["l0"] <= 3
    exported, sae_cfg = load_saelens(tmp_path / "sae")
    assert sae_cfg["architecture"] == "topk" and sae_cfg["k"] == 3
    assert sae_cfg["apply_b_dec_to_input"] is True
    _leaves_close(exported, params, 0)
    ck = load_checkpoint(tmp_path / "checkpoints", jax.eval_shape(lambda: init_state(cfg)))
    X = _data()[:16]
    trained = jax.tree.map(jnp.asarray, ck.state.params)
    norm_out = topk_forward(trained, jnp.asarray(ck.normalisation.apply(X)), 3)
    raw_out = topk_forward(params, jnp.asarray(X), 3)
    np.testing.assert_allclose(raw_out.codes, norm_out.codes, rtol=1e-4, atol=1e-4)
    expect = np.asarray(norm_out.recon) / ck.normalisation.scale + ck.normalisation.mean[None, :]
    np.testing.assert_allclose(raw_out.recon, expect, rtol=1e-4, atol=1e-3)


def test_resume_with_another_config_is_a_clear_error(uninterrupted):
    out, _, _ = uninterrupted
    with pytest.raises(ValueError, match="config d_sae: checkpoint 16, now 32"):
        train(CFG.replace(d_sae=32), _data(), out, progress=False)
    with pytest.raises(ValueError, match="num_rows: checkpoint 256, now 128"):
        train(CFG, _data(n=128), out, progress=False)


def test_bad_data_fails_before_compute(tmp_path):
    with pytest.raises(ValueError, match="width d_in=8, found 5"):
        train(CFG, _data(d=5), tmp_path, progress=False)
    with pytest.raises(ValueError, match="divisible by the 3"):
        train(
            CFG.replace(batch_size=32), _data(), tmp_path, devices=jax.devices()[:3], progress=False
        )


def test_nan_stops_with_last_good_checkpoint(tmp_path):
    X = _data()
    X[7 * 32 + 5] = 3e19  # finite, but its square overflows float32: the loss of step 8 is inf
    loader = Loader(X, 32, shuffle=False, check_finite=True)
    with pytest.raises(TrainingDivergedError, match=r"at step 8.*checkpoint \(step 4\)"):
        train(
            CFG,
            loader,
            tmp_path,
            normalise=False,
            devices=jax.devices()[:1],
            checkpoint_every=4,
            log_every=1,
            progress=False,
        )
    assert [p.name for p in list_checkpoints(tmp_path / "checkpoints")] == ["ckpt_000000004"]
    ck = load_checkpoint(tmp_path / "checkpoints", jax.eval_shape(lambda: init_state(CFG)))
    assert all(np.isfinite(x).all() for x in jax.tree.leaves(ck.state.params))
    assert [r["step"] for r in read_metrics(tmp_path)] == list(range(1, 8))


@pytest.mark.parametrize("how", ["exception", "sigint"])
def test_keyboard_interrupt_saves_a_checkpoint(uninterrupted, tmp_path, monkeypatch, how):
    loader = Loader(_data(), 32, seed=0)
    real = loader.batch_at

    def interrupt_at_5(step):
        if step == 5:
            if how == "exception":  # raised mid-step: the 5 completed steps are saved
                raise KeyboardInterrupt
            os.kill(os.getpid(), signal.SIGINT)  # Ctrl-C: step 5 finishes, then 6 are saved
        return real(step)

    monkeypatch.setattr(loader, "batch_at", interrupt_at_5)
    before = signal.getsignal(signal.SIGINT)  # SIG_IGN when the tests run as a background job
    with pytest.raises(KeyboardInterrupt):
        train(
            CFG, loader, tmp_path, devices=jax.devices()[:1], checkpoint_every=100, progress=False
        )
    want = 5 if how == "exception" else 6
    ck = load_checkpoint(tmp_path / "checkpoints", jax.eval_shape(lambda: init_state(CFG)))
    assert ck.step == want and ck.data_state["position"] == want and int(ck.state.step) == want
    assert signal.getsignal(signal.SIGINT) is before  # the caller's handler restored
    if how == "sigint":  # resuming finishes the run like an uninterrupted one (1 device here)
        loader = Loader(_data(), 32, seed=0)
        params, _ = train(CFG, loader, tmp_path, devices=jax.devices()[:1], progress=False)
        _leaves_close(params, uninterrupted[1], 1e-5)


def test_cli_train_with_resampling(tmp_path, capsys):
    np.save(tmp_path / "x.npy", _data())
    out = tmp_path / "run"
    argv = [
        "train",
        str(tmp_path / "x.npy"),
        "--out",
        str(out),
        "--d-sae",
        "16",
        "--steps",
        "12",
        "--batch-size",
        "32",
        "--lr",
        "0.1",
        "--l1-coeff",
        "50",
        "--dead-tokens",
        "32",
        "--resample-every",
        "6",
        "--log-every",
        "6",
        "--no-progress",
    ]  # a strong penalty and a large step kill features by step 6
    assert cli.main(argv) == 0
    text = capsys.readouterr().out
    assert f"outputs in {out}" in text and "step 12: loss" in text
    events = [r for r in read_metrics(out) if "resampled" in r]
    assert len(events) == 1 and events[0]["step"] == 6 and events[0]["resampled"] > 0
    assert (out / "sae").is_dir()
    assert cli.main([*argv[:-1], "--d-sae", "32"]) == 2  # resuming with another size
    assert "config d_sae: checkpoint 16, now 32" in capsys.readouterr().err


def test_loop_options_are_validated_and_given_whole_or_by_keyword(tmp_path):
    from jaxsae.training.loop import LoopOptions

    with pytest.raises(ValueError, match="checkpoint_every, log_every and keep_checkpoints >= 1"):
        LoopOptions(log_every=0)
    opts = LoopOptions(resample_steps=[8, 4], progress=False)
    assert opts.resample_steps == (4, 8)
    assert opts.saved() == {
        "normalise": True,
        "center": True,
        "resample_steps": [4, 8],
        "resample_batches": 4,
    }
    with pytest.raises(ValueError, match="keep_checkpoints >= 1"):  # keywords change `options`
        train(CFG, _data(), tmp_path, opts, keep_checkpoints=0)
    with pytest.raises(ValueError, match="resampling is for arch='l1'"):
        train(CFG.replace(arch="topk", k=4), _data(), tmp_path, opts)
    assert not (tmp_path / "config.json").exists()  # both refused before anything is written


def test_train_command_takes_the_jumprelu_defaults_of_the_kernels():
    from jaxsae import cli
    from jaxsae.kernels.jumprelu import DEFAULT_BANDWIDTH
    from jaxsae.training.cli import _train_config

    base = ["train", "acts.npy", "--out", "run", "--arch", "jumprelu"]
    assert _train_config(cli.build_parser().parse_args(base), 8).bandwidth == DEFAULT_BANDWIDTH
    given = cli.build_parser().parse_args([*base, "--bandwidth", "0.05"])
    assert _train_config(given, 8).bandwidth == 0.05
