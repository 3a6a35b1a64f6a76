"""jaxsae.training: configuration, optimiser, train state, the per-device train step and its
data- and feature-parallel drivers."""

from jaxsae.training.checkpoint import (
    Checkpoint,
    CheckpointDamagedError,
    Checkpointer,
    CheckpointMismatchError,
    latest_checkpoint,
    latest_step,
    load_checkpoint,
    save_checkpoint,
)
from jaxsae.training.config import TrainConfig
from jaxsae.training.distributed import DistributedSetupError, Placement, initialize
from jaxsae.training.loop import TrainingDivergedError, train
from jaxsae.training.metrics_log import MetricsLog, read_metrics
from jaxsae.training.optim import (
    clip_by_global_norm,
    global_norm,
    l1_schedule,
    lr_schedule,
    make_optimizer,
)
from jaxsae.training.parallel import (
    make_mesh,
    make_pmap_step,
    make_sharded_step,
    max_d_sae,
    memory_per_device,
    replicate_for_pmap,
    shard_batch,
    shard_state,
    split_for_pmap,
    state_specs,
    unreplicate,
)
from jaxsae.training.resample import resample_dead_features, reset_feature_moments
from jaxsae.training.state import StepMetrics, TrainState, dead_mask, init_state
from jaxsae.training.step import train_step

__all__ = [
    "TrainConfig",
    "TrainState",
    "StepMetrics",
    "init_state",
    "dead_mask",
    "train_step",
    "make_optimizer",
    "lr_schedule",
    "l1_schedule",
    "global_norm",
    "clip_by_global_norm",
    "make_mesh",
    "make_sharded_step",
    "make_pmap_step",
    "shard_state",
    "shard_batch",
    "state_specs",
    "replicate_for_pmap",
    "unreplicate",
    "split_for_pmap",
    "memory_per_device",
    "max_d_sae",
    "train",
    "TrainingDivergedError",
    "Checkpoint",
    "Checkpointer",
    "CheckpointMismatchError",
    "CheckpointDamagedError",
    "save_checkpoint",
    "load_checkpoint",
    "latest_checkpoint",
    "latest_step",
    "initialize",
    "Placement",
    "DistributedSetupError",
    "MetricsLog",
    "read_metrics",
    "resample_dead_features",
    "reset_feature_moments",
]
