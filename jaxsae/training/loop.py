"""The training loop: data → normalisation → sharded train steps → checkpoints, log, export.

``train(cfg, data, out_dir)`` runs ``cfg.total_steps`` optimiser steps and leaves in ``out_dir``::

    config.json        the run's TrainConfig and loop options
    metrics.jsonl      one record every ``log_every`` steps (see ``metrics_log``)
    checkpoints/       ckpt_*.npz, the last ``keep_checkpoints`` (see ``checkpoint``)
    sae/               the final SAE on raw inputs, in SAELens' layout (``save_saelens``)

What it guarantees:

* **Exact resumption.** Batch ``s`` is a pure function of the data, the seed and ``s``
  (``jaxsae.data.loader``); a checkpoint holds the whole train state (parameters, Adam moments,
  step, dead-feature counters, PRNG key), the data position and the normalisation. A run
  stopped at step ``N`` and resumed reaches the same parameters as an uninterrupted run.
* **Devices.** By default the step is ``make_sharded_step`` on a mesh of all devices (batch
  split over ``"data"``); ``pmap=True`` uses ``make_pmap_step``. Both give the same numbers.
* **Failures.** Ctrl-C lets the current step finish, saves a checkpoint, then raises
  ``KeyboardInterrupt`` (a second Ctrl-C interrupts at once). A
  non-finite loss or parameter stops the run with ``TrainingDivergedError`` before anything
  non-finite reaches a checkpoint: the last good checkpoint stays on disk.
* **Normalised inputs.** The SAE is trained on ``(x − μ)·s`` with ``E‖(x − μ)·s‖² = d_in``
  (``compute_normalisation``); the returned and exported parameters act on raw inputs
  (``fold_normalisation``).
"""

from __future__ import annotations

import json
import os
import signal
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from jaxsae.data.loader import Loader, Normalisation, as_source, compute_normalisation
from jaxsae.data.store import atomic_save_text
from jaxsae.kernels.architectures import from_config
from jaxsae.kernels.sae import SAEParams, fold_normalisation
from jaxsae.training.checkpoint import latest_checkpoint, list_checkpoints, load_checkpoint
from jaxsae.training.checkpoint import save_checkpoint as _save
from jaxsae.training.config import TrainConfig
from jaxsae.training.metrics_log import MetricsLog, read_metrics
from jaxsae.training.parallel import (
    DATA,
    make_mesh,
    make_pmap_step,
    make_sharded_step,
    replicate_for_pmap,
    shard_state,
    unreplicate,
)
from jaxsae.training.resample import resample_dead_features
from jaxsae.training.state import StepMetrics, TrainState, dead_mask, init_state

__all__ = ["train", "TrainingDivergedError", "LOGGED"]

# StepMetrics fields averaged over the steps between two log records; the others are the
# value at the logged step.
_MEANS = ("loss", "mse", "l0", "fvu", "l1", "grad_norm", "aux_loss")
LOGGED = (*StepMetrics._fields, "tokens_per_s", "epoch")


class TrainingDivergedError(RuntimeError):
    """The loss or the parameters became non-finite; the last good checkpoint is kept."""


def _host_state(state: TrainState, pmap: bool) -> TrainState:
    return unreplicate(state) if pmap else state


def _all_finite(tree: Any) -> bool:
    return all(bool(np.isfinite(x).all()) for x in jax.tree.leaves(tree))


def train(
    cfg: TrainConfig,
    data: Any,
    out_dir: str | os.PathLike,
    *,
    resume: bool = True,
    checkpoint_every: int = 1000,
    keep_checkpoints: int = 2,
    log_every: int = 10,
    mesh: jax.sharding.Mesh | None = None,
    devices: Sequence[jax.Device] | None = None,
    pmap: bool = False,
    progress: bool = True,
    normalise: bool = True,
    center: bool = True,
    data_seed: int | None = None,
    resample_steps: Sequence[int] = (),
    resample_batches: int = 4,
    until_step: int | None = None,
    export: bool = True,
    dtype: Any = jnp.float32,
) -> tuple[SAEParams, list[dict]]:
    """Train an SAE on activations, with checkpoints, resumption, a metrics log and export.

    Args:
      cfg: the configuration (sizes, architecture, optimiser, ``total_steps``, ``batch_size``).
      data: an ``ActivationStore`` or its directory, a ``.npy`` file, a ``(rows, d_in)`` array,
        or a ``Loader`` (used as is; its batch size must be ``cfg.batch_size``; its
        normalisation is replaced by the run's).
      out_dir: output directory (created).
      resume: continue from the latest checkpoint in ``out_dir/checkpoints`` if there is one
        (its configuration and data stream must match); ``False`` deletes old checkpoints and
        starts afresh.
      checkpoint_every: steps between checkpoints (one is also written at the end).
      keep_checkpoints: how many checkpoints to keep.
      log_every: steps between records of ``metrics.jsonl`` (and progress-bar updates).
      mesh: a ``("data", "feature")`` mesh (``parallel.make_mesh``); default: all ``devices``
        on the data axis.
      devices: devices to use (default: all).
      pmap: run the step under ``jax.pmap`` instead of ``shard_map`` on a mesh.
      progress: show a tqdm progress bar with loss, L0, FVU and the dead fraction.
      normalise: scale inputs so that ``E‖x‖² = d_in`` (``False``: train on raw inputs).
      center: subtract the data mean before scaling (the SAE's ``b_dec`` then starts at the
        mean); otherwise ``b_dec`` starts at the scaled mean.
      data_seed: shuffling seed (default ``cfg.seed``).
      resample_steps: steps after which dead features are resampled (``arch="l1"`` only;
        ``jaxsae.training.resample``); dead means not fired for ``cfg.dead_tokens`` tokens.
      resample_batches: recent batches used as resampling candidates.
      until_step: stop after this step (a checkpoint is written) instead of
        ``cfg.total_steps``; the schedules still follow ``cfg.total_steps``.
      export: write ``out_dir/sae`` (SAELens layout) when the run reaches ``total_steps``.
      dtype: parameter dtype.

    Returns:
      ``(params, history)``: the SAE on raw inputs and the metrics records of the run
      (including those of the runs it resumed).

    Raises:
      ValueError: bad data (wrong ``d_in``, empty, NaN/inf), a batch that does not split over
        the devices, a checkpoint that does not fit.
      TrainingDivergedError: a non-finite loss or parameter (the last good checkpoint is kept).
      KeyboardInterrupt: after saving a checkpoint.
    """
    from tqdm.auto import tqdm

    if checkpoint_every < 1 or log_every < 1 or keep_checkpoints < 1:
        raise ValueError(
            "train: expected checkpoint_every, log_every and keep_checkpoints >= 1, found "
            f"{checkpoint_every}, {log_every}, {keep_checkpoints}"
        )
    if resample_steps and not from_config(cfg).resamples:
        raise ValueError(
            f"train: resampling is for arch='l1' (the others have their own dead-feature loss), "
            f"found arch={cfg.arch!r}"
        )
    end = cfg.total_steps if until_step is None else min(int(until_step), cfg.total_steps)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    ckpt_dir = out / "checkpoints"

    # -- data -------------------------------------------------------------------------------
    if isinstance(data, Loader):
        loader = data
        if loader.d != cfg.d_in or loader.batch_size != cfg.batch_size:
            raise ValueError(
                f"train: expected a Loader of width d_in={cfg.d_in} and batch_size="
                f"{cfg.batch_size}, found {loader.d} and {loader.batch_size}"
            )
    else:
        seed = cfg.seed if data_seed is None else data_seed
        loader = Loader(data, cfg.batch_size, seed=seed, d_in=cfg.d_in)
    src = as_source(loader.source)

    # -- devices ----------------------------------------------------------------------------
    if pmap:
        devs = list(jax.local_devices() if devices is None else devices)
        n_data = len(devs)
    else:
        mesh = mesh if mesh is not None else make_mesh(devices=devices)
        n_data = mesh.shape[DATA]
    if cfg.batch_size % n_data:
        raise ValueError(
            f"train: expected batch_size={cfg.batch_size} divisible by the {n_data} data-parallel "
            "devices"
        )

    # -- state: fresh or from a checkpoint --------------------------------------------------
    options = {
        "normalise": normalise,
        "center": center,
        "resample_steps": sorted(int(s) for s in resample_steps),
        "resample_batches": resample_batches,
    }
    template = jax.eval_shape(lambda: init_state(cfg, dtype=dtype))
    ckpt = latest_checkpoint(ckpt_dir) if resume else None
    if not resume:
        for old in list_checkpoints(ckpt_dir):
            old.unlink()
    if ckpt is not None:
        loaded = load_checkpoint(ckpt, template, config=cfg.to_dict())
        saved_opts = loaded.extra.get("options", options)
        if saved_opts != options:
            raise ValueError(
                f"checkpoint {ckpt}: saved with loop options {saved_opts}, now {options}; "
                "use the same options to resume, or resume=False"
            )
        loader.load_state_dict(loaded.data_state)
        norm = loaded.normalisation or Normalisation.identity(cfg.d_in)
        state = jax.tree.map(jnp.asarray, loaded.state)
        start = loaded.step
    else:
        if normalise:
            stats = compute_normalisation(src, center=True)
            norm = stats if center else compute_normalisation(src, center=False)
            b_dec = None if center else stats.mean * norm.scale
        else:
            norm, b_dec = Normalisation.identity(cfg.d_in), None
        state = jax.jit(lambda: init_state(cfg, b_dec=b_dec, dtype=dtype))()
        loader.seek(0)
        start = 0
    loader.normalisation = norm
    atomic_save_text(
        out / "config.json",
        json.dumps(
            {"config": cfg.to_dict(), "options": options, "normalisation_scale": norm.scale},
            indent=1,
        ),
    )

    if pmap:
        step_fn = make_pmap_step(cfg, devices=devs, check_inputs=False)
        state = replicate_for_pmap(state, devs)
    else:
        step_fn = make_sharded_step(cfg, mesh, check_inputs=False)
        state = shard_state(state, mesh, cfg)

    def place(host: TrainState) -> TrainState:
        return replicate_for_pmap(host, devs) if pmap else shard_state(host, mesh, cfg)

    log = MetricsLog(out / "metrics.jsonl", resume_step=start if ckpt is not None else None)
    history = read_metrics(log.path)
    resample_at = set(options["resample_steps"])
    resample_fn = jax.jit(resample_dead_features)

    done = start  # steps completed by `state`
    last_saved = start if ckpt is not None else None
    pending: list[StepMetrics] = []  # device metrics not yet checked and logged
    tick, tick_step = time.perf_counter(), start

    def save(at_state: TrainState) -> None:
        nonlocal last_saved
        host = jax.device_get(_host_state(at_state, pmap))
        if not _all_finite(host.params):
            raise TrainingDivergedError(
                f"parameters became non-finite by step {done}; "
                + _kept_message(ckpt_dir, last_saved)
            )
        _save(
            ckpt_dir,
            host,
            step=done,
            config=cfg.to_dict(),
            data_state={**loader.state_dict(), "position": done},
            normalisation=norm,
            extra={"options": options},
            keep=keep_checkpoints,
        )
        last_saved = done

    def flush(bar: Any) -> None:
        """Check the pending metrics for non-finite losses, then log them."""
        nonlocal pending, tick, tick_step
        if not pending:
            return
        host = jax.device_get(pending)
        losses = np.array([float(m.loss) for m in host])
        if not np.isfinite(losses).all():
            bad = done - len(host) + int(np.argmin(np.isfinite(losses))) + 1
            raise TrainingDivergedError(
                f"the loss became {losses[~np.isfinite(losses)][0]} at step {bad}; "
                + _kept_message(ckpt_dir, last_saved)
            )
        now = time.perf_counter()
        rec = {f: float(np.mean([getattr(m, f) for m in host])) for f in _MEANS}
        last = host[-1]
        rec.update({f: float(getattr(last, f)) for f in StepMetrics._fields if f not in _MEANS})
        rec["tokens_per_s"] = (done - tick_step) * cfg.batch_size / max(now - tick, 1e-9)
        rec["epoch"] = done * cfg.batch_size / loader.num_rows
        history.append(log.write(step=done, **rec))
        if bar is not None:
            bar.set_postfix(
                loss=f"{rec['loss']:.4g}",
                L0=f"{rec['l0']:.1f}",
                FVU=f"{rec['fvu']:.3f}",
                dead=f"{rec['dead_frac']:.1%}",
                refresh=False,
            )
        pending, tick, tick_step = [], now, done

    bar = tqdm(total=end, initial=start, desc="train", unit="step", disable=not progress)
    sigint = _DeferredInterrupt()
    try:
        with sigint:
            while done < end:
                batch = loader.batch_at(done)
                state, metrics = step_fn(state, batch)
                done += 1
                pending.append(metrics)
                bar.update(1)
                sigint.check()
                if done in resample_at:
                    flush(bar)
                    state = _resample(
                        state, loader, done, cfg, resample_batches, pmap, resample_fn, place, log
                    )
                if done % log_every == 0 or done == end:
                    flush(bar)
                if done % checkpoint_every == 0 or done == end:
                    flush(bar)
                    save(state)
    except KeyboardInterrupt:
        bar.close()
        try:
            flush(None)
            save(state)
            print(f"\ninterrupted: checkpoint saved at step {done} in {ckpt_dir}")
        except (TrainingDivergedError, RuntimeError) as err:  # e.g. a state donated mid-step
            kept = _kept_message(ckpt_dir, last_saved)
            print(f"\ninterrupted: could not save step {done} ({err}); {kept}")
        log.close()
        raise
    except TrainingDivergedError:
        bar.close()
        log.close()
        raise
    bar.close()
    log.close()

    host = _host_state(state, pmap)
    params = jax.tree.map(jnp.asarray, jax.device_get(host.params))
    arch = from_config(cfg)  # the returned and exported SAE is the inference form
    raw = fold_normalisation(
        arch.to_inference(params),
        norm.mean,
        norm.scale,
        apply_b_dec_to_input=arch.apply_b_dec_to_input,
    )
    if export and done == cfg.total_steps:
        from jaxsae.models.saelens import save_saelens

        save_saelens(out / "sae", raw, _saelens_cfg(cfg, src, norm))
    return raw, history


def _saelens_cfg(cfg: TrainConfig, src: Any, norm: Normalisation) -> dict:
    """SAELens fields of the exported SAE; the store's metadata and the run's go to metadata."""
    meta = dict(getattr(getattr(src, "store", None), "meta", {}))
    for ours, theirs in (("model", "model_name"), ("layer", "hook_layer")):
        if ours in meta:
            meta.setdefault(theirs, meta[ours])
    meta.update(
        dataset_path=src.name,
        jaxsae_train_config=cfg.to_dict(),
        jaxsae_input_normalisation={"centred": bool(np.any(norm.mean)), "scale": norm.scale},
    )
    from jaxsae.models.saelens import saelens_fields

    return {**saelens_fields(from_config(cfg)), "metadata": meta}


class _DeferredInterrupt:
    """Turn Ctrl-C into a flag checked between steps, so the state saved is a whole step's.

    A second Ctrl-C interrupts at once. Outside the main thread (where signal handlers cannot be
    installed) this does nothing and a ``KeyboardInterrupt`` lands wherever it lands.
    """

    def __init__(self) -> None:
        self.requested = False
        self._previous: Any = None

    def _handler(self, signum: int, frame: Any) -> None:
        if self.requested:
            raise KeyboardInterrupt
        self.requested = True

    def __enter__(self) -> _DeferredInterrupt:
        if threading.current_thread() is threading.main_thread():
            self._previous = signal.signal(signal.SIGINT, self._handler)
        return self

    def __exit__(self, *exc: Any) -> None:
        if self._previous is not None:
            signal.signal(signal.SIGINT, self._previous)
            self._previous = None

    def check(self) -> None:
        """Raise ``KeyboardInterrupt`` if Ctrl-C was pressed since the last step began."""
        if self.requested:
            raise KeyboardInterrupt


def _kept_message(ckpt_dir: Path, last_saved: int | None) -> str:
    if last_saved is None:
        return "no checkpoint was written yet; lower the learning rate or check the data"
    return (
        f"the last good checkpoint (step {last_saved}) is kept in {ckpt_dir}; lower the learning "
        "rate or check the data, then resume"
    )


def _resample(
    state: TrainState,
    loader: Loader,
    done: int,
    cfg: TrainConfig,
    n_batches: int,
    pmap: bool,
    resample_fn: Any,
    place: Any,
    log: MetricsLog,
) -> TrainState:
    """Resample dead features after step ``done`` from the last ``n_batches`` batches."""
    host = jax.device_get(_host_state(state, pmap))
    dead = dead_mask(jnp.asarray(host.tokens_since_fired), cfg)
    n_dead = int(jnp.sum(dead))
    if n_dead:
        steps = range(max(0, done - n_batches), done)
        candidates = jnp.asarray(np.concatenate([loader.batch_at(s) for s in steps]))
        key, use = jax.random.split(jnp.asarray(host.key))
        host = jax.tree.map(jnp.asarray, host)._replace(key=key)
        host, _ = resample_fn(host, candidates, use, dead)
        state = place(host)
    log.write(step=done, resampled=n_dead)
    return state
