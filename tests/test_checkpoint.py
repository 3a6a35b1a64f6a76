import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxsae.data.loader import Normalisation
from jaxsae.training.checkpoint import (
    CHECKSUMS,
    CheckpointDamagedError,
    Checkpointer,
    CheckpointMismatchError,
    latest_checkpoint,
    list_checkpoints,
    load_checkpoint,
    save_checkpoint,
    verify_checksums,
)
from jaxsae.training.config import TrainConfig
from jaxsae.training.metrics_log import MetricsLog, read_metrics
from jaxsae.training.state import init_state


def _shape(cfg, **kw):
    """The template of a state: shapes and dtypes only (no compute)."""
    return jax.eval_shape(lambda: init_state(cfg, **kw))


def _cfg(**kw):
    return TrainConfig(d_in=6, d_sae=10, batch_size=8, total_steps=20, **kw)


def _perturbed(cfg):
    """A state whose every leaf differs from a fresh one (so a round trip proves something)."""
    state = init_state(cfg)
    leaves, treedef = jax.tree.flatten(state)
    rng = np.random.default_rng(0)
    new = [
        jnp.asarray(rng.integers(1, 100, np.shape(x)), x.dtype)
        if jnp.issubdtype(x.dtype, jnp.integer)
        else jnp.asarray(rng.standard_normal(np.shape(x)), x.dtype)
        for x in leaves
    ]
    return jax.tree.unflatten(treedef, new)


def test_round_trip(tmp_path):
    cfg = _cfg()
    state = _perturbed(cfg)
    norm = Normalisation(np.arange(6.0), 0.25)
    path = save_checkpoint(
        tmp_path,
        state,
        step=7,
        config=cfg.to_dict(),
        data_state={"position": 7, "seed": 1},
        normalisation=norm,
        extra={"note": "x"},
    )
    assert path.name == "ckpt_000000007.npz"
    ck = load_checkpoint(tmp_path, _shape(cfg), config=cfg.to_dict())
    assert (
        ck.step == 7 and ck.data_state == {"position": 7, "seed": 1} and ck.extra == {"note": "x"}
    )
    assert ck.config == cfg.to_dict() and ck.path == path
    np.testing.assert_array_equal(ck.normalisation.mean, norm.mean)
    assert ck.normalisation.scale == 0.25
    for a, b in zip(jax.tree.leaves(ck.state), jax.tree.leaves(state), strict=True):
        assert a.dtype == b.dtype
        np.testing.assert_array_equal(a, np.asarray(b))
    assert jax.tree.structure(ck.state) == jax.tree.structure(state)


def test_orbax_round_trip_keep_and_checksums(tmp_path):
    cfg = _cfg()
    state = _perturbed(cfg)
    norm = Normalisation(np.arange(6.0), 0.25)
    ckpts = Checkpointer(tmp_path, keep=2)
    for step in (5, 10, 15):  # asynchronous: each save returns before the files are written
        ckpts.save(step, state, config=cfg.to_dict(), data_state={"position": step},
                   normalisation=norm, extra={"note": "x"})  # fmt: skip
    ckpts.close()  # waits for the last one and its checksums
    assert [p.name for p in list_checkpoints(tmp_path)] == ["ckpt_000000010", "ckpt_000000015"]
    ck = load_checkpoint(tmp_path, _shape(cfg), config=cfg.to_dict())
    assert ck.step == 15 and ck.data_state == {"position": 15} and ck.extra == {"note": "x"}
    np.testing.assert_array_equal(ck.normalisation.mean, norm.mean)
    for a, b in zip(jax.tree.leaves(ck.state), jax.tree.leaves(state), strict=True):
        assert a.dtype == b.dtype
        np.testing.assert_array_equal(a, np.asarray(b))
    with pytest.raises(CheckpointMismatchError, match="config d_sae: checkpoint 10, now 12"):
        other = cfg.replace(d_sae=12)
        load_checkpoint(tmp_path, _shape(other), config=other.to_dict())
    newest = tmp_path / "ckpt_000000015"
    assert (newest / CHECKSUMS).is_file()
    verify_checksums(newest)
    (newest / "info" / "metadata").write_text("{}")
    with pytest.raises(CheckpointDamagedError, match="file info/metadata is changed"):
        verify_checksums(newest)


def test_keeps_the_last_ones_and_latest(tmp_path):
    cfg = _cfg()
    state = init_state(cfg)
    for step in (5, 10, 15):
        save_checkpoint(tmp_path, state, step=step, config=cfg.to_dict(), keep=2)
    assert [p.name for p in list_checkpoints(tmp_path)] == [
        "ckpt_000000010.npz",
        "ckpt_000000015.npz",
    ]
    assert latest_checkpoint(tmp_path).name == "ckpt_000000015.npz"
    assert latest_checkpoint(tmp_path / "none") is None


def test_interrupted_save_keeps_previous(tmp_path, monkeypatch):
    cfg = _cfg()
    save_checkpoint(tmp_path, init_state(cfg), step=5, config=cfg.to_dict())

    def boom(*a, **k):
        raise KeyboardInterrupt

    import jaxsae.training.checkpoint as ckmod

    monkeypatch.setattr(ckmod.os, "fsync", boom)
    with pytest.raises(KeyboardInterrupt):
        save_checkpoint(tmp_path, init_state(cfg), step=10, config=cfg.to_dict())
    monkeypatch.undo()
    assert [p.name for p in tmp_path.iterdir()] == ["ckpt_000000005.npz"]
    assert load_checkpoint(tmp_path, _shape(cfg)).step == 5


def test_wrong_shape_or_config_is_named(tmp_path):
    cfg = _cfg()
    save_checkpoint(tmp_path, init_state(cfg), step=3, config=cfg.to_dict())
    other = _cfg().replace(d_sae=12)
    with pytest.raises(CheckpointMismatchError) as err:
        load_checkpoint(tmp_path, _shape(other), config=other.to_dict())
    msg = str(err.value)
    assert "config d_sae: checkpoint 10, now 12" in msg
    assert "params.W_enc has shape (6, 10), expected (6, 12)" in msg
    with pytest.raises(
        CheckpointMismatchError, match="params.W_dec has dtype float32, expected float64"
    ):
        load_checkpoint(tmp_path, _shape(cfg, dtype=jnp.float64))
    with pytest.raises(CheckpointMismatchError, match="config l1_coeff: checkpoint 5.0, now 1.0"):
        load_checkpoint(tmp_path, _shape(cfg), config=cfg.replace(l1_coeff=1.0).to_dict())
    with pytest.raises(CheckpointMismatchError, match="missing"):
        load_checkpoint(tmp_path, {"other": jnp.zeros(3)})


def test_unreadable_or_absent(tmp_path):
    with pytest.raises(ValueError, match="no ckpt"):
        load_checkpoint(tmp_path, _shape(_cfg()))
    (tmp_path / "ckpt_000000001.npz").write_bytes(b"garbage")
    with pytest.raises(ValueError, match="unreadable"):
        load_checkpoint(tmp_path, _shape(_cfg()))


def test_typed_key_round_trip(tmp_path):
    tree = {"key": jax.random.key(3), "x": jnp.ones(2)}
    save_checkpoint(tmp_path, tree, step=1, config={})
    ck = load_checkpoint(tmp_path, tree)
    np.testing.assert_array_equal(
        jax.random.key_data(ck.state["key"]), jax.random.key_data(tree["key"])
    )
    assert jax.random.uniform(ck.state["key"]) == jax.random.uniform(tree["key"])


def test_metrics_log_resume_drops_later_records(tmp_path):
    path = tmp_path / "metrics.jsonl"
    with MetricsLog(path) as log:
        for s in (10, 20, 30):
            log.write(step=s, loss=np.float32(s / 10), bad=float("nan"))
    assert read_metrics(path)[0] == {"step": 10, "loss": 1.0, "bad": None}
    with open(path, "a") as f:
        f.write('{"step": 40, "lo')  # a torn last line
    assert [r["step"] for r in read_metrics(path)] == [10, 20, 30]
    with MetricsLog(path, resume_step=20) as log:
        log.write(step=30, loss=9.0)
    assert [(r["step"], r["loss"]) for r in read_metrics(tmp_path)] == [
        (10, 1.0),
        (20, 2.0),
        (30, 9.0),
    ]
    MetricsLog(path).close()
    assert read_metrics(path) == []
