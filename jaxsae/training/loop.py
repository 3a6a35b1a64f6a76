"""The training loop: data → normalisation → sharded train steps → checkpoints, log, export.

``train(cfg, data, out_dir)`` runs ``cfg.total_steps`` optimiser steps and leaves in ``out_dir``::

    config.json        the run's TrainConfig and loop options
    metrics.jsonl      one record every ``log_every`` steps (see ``metrics_log``)
    checkpoints/       ckpt_*/, the last ``keep_checkpoints`` (Orbax; see ``checkpoint``)
    sae/               the final SAE on raw inputs, in SAELens' layout (``save_saelens``)

What it guarantees:

* **Exact resumption.** Batch ``s`` is a pure function of the data, the seed and ``s``
  (``jaxsae.data.loader``); a checkpoint holds the whole train state (parameters, Adam moments,
  step, dead-feature counters, PRNG key), the data position and the normalisation. A run
  stopped at step ``N`` and resumed reaches the same parameters as an uninterrupted run.
* **Devices and processes.** By default the step is ``make_sharded_step`` on a mesh of all
  devices of all processes (batch split over ``"data"``); ``pmap=True`` uses ``make_pmap_step``
  on one process. Both give the same numbers. With several processes (``distributed``) every
  process calls ``train`` with the same arguments: each reads only its rows of each batch,
  writes its shards of each checkpoint, and process 0 writes the files that exist once
  (``config.json``, ``metrics.jsonl``, ``sae/``).
* **Shape of the code.** ``_set_up`` builds the run (data, placement, state fresh or
  restored), ``_step_loop`` runs the steps, and the periodic work is done by small hooks called
  after each step: ``_Metrics`` (log and progress), ``_Resampler`` and ``_Checkpoints``.
* **Failures.** Ctrl-C lets the current step finish, saves a checkpoint, then raises
  ``KeyboardInterrupt`` (a second Ctrl-C interrupts at once). A
  non-finite loss or parameter stops the run with ``TrainingDivergedError`` before anything
  non-finite reaches a checkpoint: the last good checkpoint stays on disk.
* **Normalised inputs.** The SAE is trained on ``(x − μ)·s`` with ``E‖(x − μ)·s‖² = d_in``
  (``compute_normalisation``); the returned and exported parameters act on raw inputs
  (``fold_normalisation``).
"""

from __future__ import annotations

import dataclasses
import json
import os
import signal
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from jaxsae.data.loader import Loader, Normalisation, as_source, compute_normalisation
from jaxsae.data.store import atomic_save_text
from jaxsae.kernels.architectures import from_config
from jaxsae.kernels.sae import SAEParams, fold_normalisation
from jaxsae.training.checkpoint import Checkpointer
from jaxsae.training.config import TrainConfig
from jaxsae.training.distributed import Placement, barrier, is_main
from jaxsae.training.metrics_log import MetricsLog, read_metrics
from jaxsae.training.resample import resample_dead_features
from jaxsae.training.state import StepMetrics, TrainState, dead_mask

__all__ = ["train", "LoopOptions", "TrainingDivergedError", "LOGGED"]

# StepMetrics fields averaged over the steps between two log records; the others are the
# value at the logged step.
_MEANS = ("loss", "mse", "l0", "fvu", "l1", "grad_norm", "aux_loss")
LOGGED = (*StepMetrics._fields, "tokens_per_s", "epoch")


class TrainingDivergedError(RuntimeError):
    """The loss or the parameters became non-finite; the last good checkpoint is kept."""


@dataclass(frozen=True)
class LoopOptions:
    """Options of the training loop (validated on construction); the sizes, architecture and
    optimiser live in ``TrainConfig``.

    Attributes:
      resume: continue from the latest intact checkpoint in ``out_dir/checkpoints`` if there is
        one (its configuration and data stream must match); ``False`` deletes old checkpoints
        and starts afresh.
      checkpoint_every: steps between checkpoints (one is also written at the end).
      keep_checkpoints: how many checkpoints to keep.
      log_every: steps between records of ``metrics.jsonl`` (and progress-bar updates).
      pmap: run the step under ``jax.pmap`` instead of ``shard_map`` on a mesh (one process).
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
    """

    resume: bool = True
    checkpoint_every: int = 1000
    keep_checkpoints: int = 2
    log_every: int = 10
    pmap: bool = False
    progress: bool = True
    normalise: bool = True
    center: bool = True
    data_seed: int | None = None
    resample_steps: tuple[int, ...] = ()
    resample_batches: int = 4
    until_step: int | None = None
    export: bool = True
    dtype: Any = jnp.float32

    def __post_init__(self) -> None:
        if self.checkpoint_every < 1 or self.log_every < 1 or self.keep_checkpoints < 1:
            raise ValueError(
                "train: expected checkpoint_every, log_every and keep_checkpoints >= 1, found "
                f"{self.checkpoint_every}, {self.log_every}, {self.keep_checkpoints}"
            )
        object.__setattr__(
            self, "resample_steps", tuple(sorted(int(s) for s in self.resample_steps))
        )

    def saved(self) -> dict[str, Any]:
        """The options a checkpoint must be resumed with (saved in it and in ``config.json``)."""
        return {
            "normalise": self.normalise,
            "center": self.center,
            "resample_steps": list(self.resample_steps),
            "resample_batches": self.resample_batches,
        }


def train(
    cfg: TrainConfig,
    data: Any,
    out_dir: str | os.PathLike,
    options: LoopOptions | None = None,
    *,
    mesh: jax.sharding.Mesh | None = None,
    devices: Sequence[jax.Device] | None = None,
    **changes: Any,
) -> tuple[SAEParams, list[dict]]:
    """Train an SAE on activations, with checkpoints, resumption, a metrics log and export.

    Args:
      cfg: the configuration (sizes, architecture, optimiser, ``total_steps``, ``batch_size``).
      data: an ``ActivationStore`` or its directory, a ``.npy`` file, a ``(rows, d_in)`` array,
        or a ``Loader`` (used as is; its batch size must be ``cfg.batch_size``; its
        normalisation is replaced by the run's).
      out_dir: output directory (created).
      options: the loop's ``LoopOptions`` (default: its defaults).
      mesh: a ``("data", "feature")`` mesh (``parallel.make_mesh``); default: all ``devices``
        on the data axis.
      devices: devices to use (default: all, of every process).
      **changes: fields of ``LoopOptions`` by name (``resume=``, ``checkpoint_every=``,
        ``progress=``, ``until_step=``, ...); they replace those of ``options``.

    Returns:
      ``(params, history)``: the SAE on raw inputs and the metrics records of the run
      (including those of the runs it resumed).

    Raises:
      ValueError: bad data (wrong ``d_in``, empty, NaN/inf), a batch that does not split over
        the devices, a checkpoint that does not fit, ``pmap`` with several processes.
      TrainingDivergedError: a non-finite loss or parameter (the last good checkpoint is kept).
      KeyboardInterrupt: after saving a checkpoint.
    """
    opts = dataclasses.replace(options or LoopOptions(), **changes)
    if opts.resample_steps and not from_config(cfg).resamples:
        raise ValueError(
            f"train: resampling is for arch='l1' (the others have their own dead-feature loss), "
            f"found arch={cfg.arch!r}"
        )
    end = cfg.total_steps if opts.until_step is None else min(int(opts.until_step), cfg.total_steps)
    loader = _loader(cfg, data, cfg.seed if opts.data_seed is None else opts.data_seed)
    placement = Placement(cfg, mesh=mesh, devices=devices, pmap=opts.pmap)
    run = _set_up(cfg, loader, Path(out_dir), placement, opts)
    metrics = _Metrics(run, opts.log_every, opts.progress, end)
    checkpoints = _Checkpoints(run, metrics, opts.checkpoint_every)
    hooks = [_Resampler(run, metrics, opts.resample_batches), metrics, checkpoints]
    state, done = _step_loop(run, hooks, metrics, checkpoints, end)
    raw = _raw_params(run, state)
    if opts.export and done == cfg.total_steps and is_main():
        from jaxsae.models.saelens import save_saelens

        save_saelens(run.out / "sae", raw, _saelens_cfg(cfg, loader.source, run.norm))
    barrier("jaxsae-train-exported")
    return raw, metrics.history


def _raw_params(run: _Run, state: TrainState) -> SAEParams:
    """The trained SAE gathered to the host, in its inference form, acting on raw inputs."""
    params = jax.tree.map(jnp.asarray, run.placement.gather(state.params))
    arch = from_config(run.cfg)  # the returned and exported SAE is the inference form
    return fold_normalisation(
        arch.to_inference(params),
        run.norm.mean,
        run.norm.scale,
        apply_b_dec_to_input=arch.apply_b_dec_to_input,
    )


@dataclass
class _Run:
    """What the pieces of a run share: set once by ``_set_up``, then read."""

    cfg: TrainConfig
    loader: Loader
    placement: Placement
    out: Path
    options: dict
    norm: Normalisation
    state: TrainState  # the state the run starts from (placed)
    start: int
    resumed: bool
    checkpointer: Checkpointer


def _loader(cfg: TrainConfig, data: Any, seed: int) -> Loader:
    if not isinstance(data, Loader):
        return Loader(data, cfg.batch_size, seed=seed, d_in=cfg.d_in)
    if data.d != cfg.d_in or data.batch_size != cfg.batch_size:
        raise ValueError(
            f"train: expected a Loader of width d_in={cfg.d_in} and batch_size="
            f"{cfg.batch_size}, found {data.d} and {data.batch_size}"
        )
    return data


def _set_up(
    cfg: TrainConfig, loader: Loader, out: Path, placement: Placement, opts: LoopOptions
) -> _Run:
    """The run's state: restored from the newest intact checkpoint, or fresh; ``config.json``."""
    options, dtype = opts.saved(), opts.dtype
    if is_main():
        out.mkdir(parents=True, exist_ok=True)
    barrier("jaxsae-train-out-dir")
    keep = opts.keep_checkpoints
    ckpts = Checkpointer(out / "checkpoints", keep=keep, primary=is_main(), barrier=barrier)
    if not opts.resume:
        ckpts.delete_all()
    ck = None
    if opts.resume:
        ck = ckpts.restore(placement.abstract_state(dtype), config=cfg.to_dict())
    if ck is not None:
        saved_opts = ck.extra.get("options", options)
        if saved_opts != options:
            raise ValueError(
                f"checkpoint {ck.path}: saved with loop options {saved_opts}, now {options}; "
                "use the same options to resume, or resume=False"
            )
        loader.load_state_dict(ck.data_state)
        norm = ck.normalisation or Normalisation.identity(cfg.d_in)
        state, start = placement.distribute(ck.state), ck.step
        if is_main():
            print(f"resuming from step {start} ({ck.path})")
    else:
        norm, b_dec = _normalisation(loader, options)
        state, start = placement.init_state(b_dec, dtype), 0
        loader.seek(0)
    loader.normalisation = norm
    if is_main():
        config = {"config": cfg.to_dict(), "options": options, "normalisation_scale": norm.scale}
        atomic_save_text(out / "config.json", json.dumps(config, indent=1))
    return _Run(cfg, loader, placement, out, options, norm, state, start, ck is not None, ckpts)


def _normalisation(loader: Loader, options: dict) -> tuple[Normalisation, np.ndarray | None]:
    """The input normalisation of a fresh run and the initial ``b_dec`` (``None``: default)."""
    d = loader.d
    if not options["normalise"]:
        return Normalisation.identity(d), None
    src = as_source(loader.source)
    stats = compute_normalisation(src, center=True)
    if options["center"]:
        return stats, None
    norm = compute_normalisation(src, center=False)
    return norm, stats.mean * norm.scale


def _step_loop(
    run: _Run, hooks: list, metrics: _Metrics, checkpoints: _Checkpoints, end: int
) -> tuple[TrainState, int]:
    """Run steps ``start .. end``, the hooks after each; on Ctrl-C save, then re-raise."""
    step_fn = run.placement.step_fn()
    state, done = run.state, run.start
    sigint = _DeferredInterrupt()
    try:
        with sigint:
            while done < end:
                batch = run.placement.batch(run.loader, done)
                state, step_metrics = step_fn(state, batch)
                done += 1
                metrics.record(step_metrics)
                sigint.check()
                for hook in hooks:
                    state = hook(done, state, end)
    except KeyboardInterrupt:
        try:
            metrics.flush(done)
            checkpoints.save(state, done)
            checkpoints.close()
            print(f"\ninterrupted: checkpoint saved at step {done} in {checkpoints.dir}")
        except (TrainingDivergedError, RuntimeError) as err:  # e.g. a state donated mid-step
            print(f"\ninterrupted: could not save step {done} ({err}); {checkpoints.kept()}")
        raise
    finally:
        metrics.close()
        checkpoints.close()
    return state, done


class _Metrics:
    """Collects each step's metrics; every ``every`` steps checks them and logs a record.

    Records go to ``metrics.jsonl`` (process 0) and to ``history``; the progress bar shows the
    last one. A non-finite loss raises ``TrainingDivergedError`` before it reaches a checkpoint.
    """

    def __init__(self, run: _Run, every: int, progress: bool, end: int):
        from tqdm.auto import tqdm

        self.run, self.every = run, every
        self.log = MetricsLog(
            run.out / "metrics.jsonl",
            resume_step=run.start if run.resumed else None,
            write_file=is_main(),
        )
        self.history = read_metrics(self.log.path) if run.resumed else []
        self.pending: list[StepMetrics] = []
        self.tick, self.tick_step = time.perf_counter(), run.start
        self.kept = lambda: "no checkpoint was written yet"  # replaced by _Checkpoints
        show = progress and is_main()
        self.bar = tqdm(total=end, initial=run.start, desc="train", unit="step", disable=not show)

    def record(self, metrics: StepMetrics) -> None:
        self.pending.append(metrics)
        self.bar.update(1)

    def __call__(self, done: int, state: TrainState, end: int) -> TrainState:
        if done % self.every == 0 or done == end:
            self.flush(done)
        return state

    def flush(self, done: int) -> None:
        """Check the pending metrics for non-finite losses, then log them as one record."""
        if not self.pending:
            return
        host = jax.device_get(self.pending)
        losses = np.array([float(m.loss) for m in host])
        if not np.isfinite(losses).all():
            bad = done - len(host) + int(np.argmin(np.isfinite(losses))) + 1
            raise TrainingDivergedError(
                f"the loss became {losses[~np.isfinite(losses)][0]} at step {bad}; " + self.kept()
            )
        now = time.perf_counter()
        rec = {f: float(np.mean([getattr(m, f) for m in host])) for f in _MEANS}
        last = host[-1]
        rec.update({f: float(getattr(last, f)) for f in StepMetrics._fields if f not in _MEANS})
        batch = self.run.cfg.batch_size
        rec["tokens_per_s"] = (done - self.tick_step) * batch / max(now - self.tick, 1e-9)
        rec["epoch"] = done * batch / self.run.loader.num_rows
        self.write(step=done, **rec)
        self.bar.set_postfix(
            loss=f"{rec['loss']:.4g}",
            L0=f"{rec['l0']:.1f}",
            FVU=f"{rec['fvu']:.3f}",
            dead=f"{rec['dead_frac']:.1%}",
            refresh=False,
        )
        self.pending, self.tick, self.tick_step = [], now, done

    def write(self, **record: Any) -> None:
        self.history.append(self.log.write(**record))

    def close(self) -> None:
        self.bar.close()
        self.log.close()


@jax.jit
def _all_finite(tree: Any) -> jax.Array:
    return jnp.all(jnp.stack([jnp.isfinite(x).all() for x in jax.tree.leaves(tree)]))


class _Checkpoints:
    """Saves the state every ``every`` steps and at the end (after the metrics are checked)."""

    def __init__(self, run: _Run, metrics: _Metrics, every: int):
        self.run, self.metrics, self.every = run, metrics, every
        self.dir = run.checkpointer.dir
        self.last_saved = run.start if run.resumed else None
        metrics.kept = self.kept

    def __call__(self, done: int, state: TrainState, end: int) -> TrainState:
        if done % self.every == 0 or done == end:
            self.metrics.flush(done)
            self.save(state, done)
        return state

    def save(self, state: TrainState, done: int) -> None:
        if not bool(_all_finite(state.params)):
            raise TrainingDivergedError(
                f"parameters became non-finite by step {done}; " + self.kept()
            )
        run = self.run
        if run.placement.pmap:
            state = jax.tree.map(lambda x: x[0], state)
        run.checkpointer.save(
            done,
            state,
            config=run.cfg.to_dict(),
            data_state={**run.loader.state_dict(), "position": done},
            normalisation=run.norm,
            extra={"options": run.options},
        )
        self.last_saved = done

    def kept(self) -> str:
        if self.last_saved is None:
            return "no checkpoint was written yet; lower the learning rate or check the data"
        return (
            f"the last good checkpoint (step {self.last_saved}) is kept in {self.dir}; lower the "
            "learning rate or check the data, then resume"
        )

    def close(self) -> None:
        self.run.checkpointer.close()


class _Resampler:
    """Resamples dead features after the steps in ``run.options["resample_steps"]``."""

    def __init__(self, run: _Run, metrics: _Metrics, n_batches: int):
        self.run, self.metrics, self.n_batches = run, metrics, n_batches
        self.at = set(run.options["resample_steps"])
        self.fn = jax.jit(resample_dead_features)

    def __call__(self, done: int, state: TrainState, end: int) -> TrainState:
        if done not in self.at:
            return state
        self.metrics.flush(done)
        run, cfg = self.run, self.run.cfg
        host = run.placement.gather(state)
        dead = dead_mask(jnp.asarray(host.tokens_since_fired), cfg)
        n_dead = int(jnp.sum(dead))
        if n_dead:
            steps = range(max(0, done - self.n_batches), done)
            candidates = jnp.asarray(np.concatenate([run.loader.batch_at(s) for s in steps]))
            key, use = jax.random.split(jnp.asarray(host.key))
            host = jax.tree.map(jnp.asarray, host)._replace(key=key)
            host, _ = self.fn(host, candidates, use, dead)
            state = run.placement.place(jax.device_get(host))
        self.metrics.write(step=done, resampled=n_dead)
        return state


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
