"""Bring your own script: run a torchrun-style training script on planned edge devices.

``deepedge launch CLUSTER SCRIPT [ARGS...]`` starts one rank per device of a Deep-Edge
plan, inside that device, with torchrun's environment (``RANK``, ``WORLD_SIZE``,
``MASTER_ADDR``, ...) plus the plan itself in ``DEEPEDGE_PLAN``. An unmodified script
(``DistributedSampler``, DDP) runs as it would under torchrun, with an equal share per
rank; swapping in :class:`PlannedBatchSampler` and :func:`planned_loss` gives each rank
its planned share of every global batch with exactly the single-process gradients.

Names are loaded lazily (PEP 562): the sampler and the loss helper import torch, the
launcher imports the cluster and the planner; ``import deepedge.launch`` imports none of
them, so the CLI's ``--help`` and a rank's start stay fast.
"""

from deepedge.lazy import lazy_exports

_LAZY = {
    "LaunchFailed": "deepedge.launch.runner",
    "LaunchOptions": "deepedge.launch.runner",
    "RankFailure": "deepedge.launch.runner",
    "RankGroup": "deepedge.launch.runner",
    "launch": "deepedge.launch.runner",
    "PlannedBatchSampler": "deepedge.launch.sampler",
    "planned_loss": "deepedge.launch.sampler",
    "RankPlan": "deepedge.launch.plan",
    "rank_plan": "deepedge.launch.plan",
}

__all__ = sorted(_LAZY)

__getattr__, __dir__ = lazy_exports(globals(), _LAZY)
