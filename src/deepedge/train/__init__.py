"""Training: uneven-batch DDP workers, their agents, the sampler and checkpoints."""

from deepedge.train.checkpoint import (
    CheckpointManager,
    load_checkpoint,
    save_checkpoint,
    verify_checkpoint,
)
from deepedge.train.ddp import StepRecord, build_optimizer, global_batch_loss, wrap_ddp
from deepedge.train.local import evaluate, job_model, train_local
from deepedge.train.pool import AgentPool, ProfilePointResult, ProfileResults, TrainRun
from deepedge.train.sampler import UnevenBatchSampler, split_batch

__all__ = [
    "AgentPool",
    "CheckpointManager",
    "ProfilePointResult",
    "ProfileResults",
    "StepRecord",
    "TrainRun",
    "UnevenBatchSampler",
    "build_optimizer",
    "evaluate",
    "global_batch_loss",
    "job_model",
    "load_checkpoint",
    "save_checkpoint",
    "split_batch",
    "train_local",
    "verify_checkpoint",
    "wrap_ddp",
]
