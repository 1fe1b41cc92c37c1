"""The agent's side of elastic training: a run outlives its process group.

When a device fails, torchrun and Ray Train restart every worker from the last checkpoint.
Here the survivors keep their processes, their data and the model and optimiser in memory
(:class:`RunContext`); only the process group is re-formed, under a new rendezvous
generation, over the devices of a new plan. The run then continues from the last step
any survivor completed: a survivor that finished a step's all-reduce holds the complete
gradient of that step (every rank, the lost one too, had contributed to it), and one
that did not finish it takes that survivor's state (:func:`export_state`,
:func:`import_state`), so each step's samples are used exactly once.

While it trains, an agent sends a heartbeat every :data:`HEARTBEAT_S` from a thread of its
own, so the coordinator tells a hung (stopped, or cut off) agent from a slow one.
"""

from __future__ import annotations

import contextlib
import datetime
import io
import os
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from torch import nn

from deepedge.byo.hooks import job_loss, job_optimizer
from deepedge.spec import JobSpec
from deepedge.train.checkpoint import CheckpointManager, load_checkpoint
from deepedge.train.ddp import (
    StepRecord,
    run_dynamic_epochs,
    run_epochs,
    select_backend,
    wrap_ddp,
)

__all__ = [
    "HEARTBEAT_S",
    "Heartbeat",
    "RunContext",
    "SharedConnection",
    "export_state",
    "import_state",
    "new_run",
    "process_group",
    "run_segment",
]

HEARTBEAT_S = 0.25
"""Seconds between an agent's heartbeats while it trains."""


class SharedConnection:
    """A connection the training loop and the heartbeat thread both send on."""

    def __init__(self, conn: Connection) -> None:
        self.conn = conn
        self._lock = threading.Lock()

    def send(self, msg: dict[str, Any]) -> None:
        with self._lock:
            self.conn.send(msg)


class Heartbeat:
    """Sends ``{"event": "heartbeat"}`` every :data:`HEARTBEAT_S` until closed."""

    def __init__(self, conn: SharedConnection, interval_s: float = HEARTBEAT_S) -> None:
        self._conn, self._interval = conn, interval_s
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._beat, name="heartbeat", daemon=True)

    def _beat(self) -> None:
        # The trainer yields the CPU to the device's LC apps (SCHED_IDLE), and this thread
        # inherited that: under a busy co-runner it would fall silent for seconds and the
        # coordinator would take a slow device for a hung one. A heartbeat costs nothing,
        # so it runs at the normal priority (per thread on Linux).
        with contextlib.suppress(AttributeError, OSError):
            os.sched_setscheduler(0, os.SCHED_OTHER, os.sched_param(0))
        while not self._stop.wait(self._interval):
            try:
                self._conn.send({"event": "heartbeat"})
            except (OSError, ValueError):  # the coordinator is gone: nothing to tell
                return

    def __enter__(self) -> Heartbeat:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


@dataclass
class RunContext:
    """One training run on this agent, kept across process-group generations."""

    run_id: str
    job: JobSpec
    model: nn.Module
    optimizer: torch.optim.Optimizer
    x: torch.Tensor
    y: torch.Tensor
    device: torch.device
    steps_per_epoch: int
    ckpts: CheckpointManager | None = None
    records: list[StepRecord] = field(default_factory=list)
    completed: int = 0
    """Global steps this rank completed (its optimiser step included), counted from the
    start of the job: epoch × steps_per_epoch + step + 1 for its last record."""

    def global_step(self, epoch: int, step: int) -> int:
        return epoch * self.steps_per_epoch + step

    def position(self, completed: int) -> tuple[int, int]:
        """(epoch, step) of the first step not yet completed."""
        return divmod(completed, self.steps_per_epoch)

    def record(self, rec: StepRecord) -> None:
        self.records.append(rec)
        self.completed = self.global_step(rec.epoch, rec.step) + 1


def export_state(ctx: RunContext) -> bytes:
    """The run's model and optimiser state, for a survivor that is a step behind."""
    buf = io.BytesIO()
    torch.save({"model": ctx.model.state_dict(), "optimizer": ctx.optimizer.state_dict()}, buf)
    return buf.getvalue()


def import_state(ctx: RunContext, blob: bytes, completed: int) -> None:
    """Take another survivor's state, as of ``completed`` global steps."""
    state = torch.load(io.BytesIO(blob), weights_only=True)
    ctx.model.load_state_dict(state["model"])
    ctx.optimizer.load_state_dict(state["optimizer"])
    ctx.completed = completed


@contextlib.contextmanager
def process_group(msg: dict[str, Any]) -> Iterator[tuple[int, torch.device, dist.Store]]:
    """Join the run's process group through the coordinator's store; leave it on exit.

    Yields the rank, its torch device and the run's view of the store (prefixed by the
    run id and the rendezvous generation, so a re-formed group never meets the keys of
    the one before), which dynamic dispatch uses for its chunk counters.
    """
    rank, world = int(msg["rank"]), int(msg["world"])
    # how long a rank waits for a missing peer (rendezvous or collective) before failing
    timeout = datetime.timedelta(seconds=float(msg.get("peer_timeout_s") or 120))
    store = dist.TCPStore(
        msg["store_host"],
        int(msg["store_port"]),
        is_master=False,
        timeout=min(timeout, datetime.timedelta(seconds=60)),
    )
    backend, device = select_backend(rank, world)
    run_store = dist.PrefixStore(f"{msg['run_id']}/g{int(msg.get('generation', 0))}", store)
    dist.init_process_group(backend, store=run_store, rank=rank, world_size=world, timeout=timeout)
    try:
        yield rank, device, run_store
    finally:
        dist.destroy_process_group()


def run_segment(
    ctx: RunContext,
    msg: dict[str, Any],
    conn: SharedConnection,
    *,
    pace: Callable[[], None] | None,
    pacer_for: Callable[[float], Callable[[], None] | None] | None = None,
    reset_peak: Callable[[torch.device], None],
    peak_memory: Callable[[torch.device], float],
) -> dict[str, Any]:
    """Train ``ctx`` from the step it completed last to the end of the job, in the process
    group ``msg`` names (its rank, world, local batches and generation).

    ``pace`` runs between steps (the plan's intensity). The coordinator can change this
    rank's intensity mid-segment by setting the store key ``intensity/<rank>`` (the SLO
    guard's fast path: no re-formed group); ``pacer_for`` makes the new pacing.

    In an elastic run (``msg["elastic"]``) a failed step ends the segment with
    ``{"interrupted": True, "completed": ...}`` and the run stays in memory for the next
    generation; otherwise the error propagates.
    """
    micro_batch = msg.get("micro_batch")
    with process_group(msg) as (rank, device, store):
        ctx.device = device
        model = ctx.model.to(device)
        wrapped = None if micro_batch else wrap_ddp(model, device)
        ckpt_dir = msg.get("checkpoint_dir")
        ckpts = CheckpointManager(Path(ckpt_dir)) if rank == 0 and ckpt_dir else None

        def on_epoch_end(epoch: int) -> None:
            if ckpts is not None:
                ckpts.save(
                    epoch,
                    {
                        "model": model.state_dict(),
                        "optimizer": ctx.optimizer.state_dict(),
                        "epoch": epoch,
                        "local_batches": msg["local_batches"],
                        "micro_batch": micro_batch,
                        "job": msg["job"],
                    },
                )

        def on_step(rec: StepRecord) -> None:
            ctx.record(rec)
            if rank == 0 or msg.get("elastic"):  # elastic: the coordinator watches each rank
                conn.send(
                    {
                        "event": "step",
                        "epoch": rec.epoch,
                        "step": rec.step,
                        "rank": rank,
                        "compute_s": rec.compute_s,
                    }
                )

        paused = torch.zeros(1)

        def pause_asked() -> bool:
            """Collective: has the coordinator asked this generation to pause? (It sets
            the store key ``pause`` to change the plan at the next step boundary.)"""
            paused.fill_(1.0 if rank == 0 and store.check(["pause"]) else 0.0)
            dist.all_reduce(paused, op=dist.ReduceOp.MAX)
            return bool(paused.item())

        pacing: dict[str, Any] = {"pace": pace, "value": None}

        def paced() -> None:
            key = f"intensity/{rank}"
            if pacer_for is not None and store.check([key]):
                value = store.get(key)
                if value != pacing["value"]:
                    pacing["pace"], pacing["value"] = pacer_for(float(value)), value
            if pacing["pace"] is not None:
                pacing["pace"]()

        def on_samples(epoch: int, step: int, idx: Any) -> None:
            conn.send({"event": "samples", "epoch": epoch, "step": step, "ids": idx.tolist()})

        epoch, step = ctx.position(ctx.completed)
        common: dict[str, Any] = {
            "seed": ctx.job.seed,
            "epochs": range(epoch, ctx.job.epochs),
            "start_step": step,
            "on_step": on_step,
            "on_epoch_end": on_epoch_end,
            "pace": paced,
            "max_steps": msg.get("max_steps"),
            "should_stop": pause_asked if msg.get("elastic") else None,
            "loss": job_loss(ctx.job),  # None: cross-entropy (a user's loss: deepedge.fit)
        }
        x, y = ctx.x.to(device), ctx.y.to(device)
        reset_peak(device)
        try:
            if micro_batch:
                run_dynamic_epochs(
                    model,
                    ctx.optimizer,
                    x,
                    y,
                    store=store,  # prefixed by run and generation: fresh counters
                    run_key="dispatch",
                    global_batch=sum(msg["local_batches"]),
                    micro_batch=int(micro_batch),
                    **common,
                )
            else:
                assert wrapped is not None
                run_epochs(
                    wrapped,
                    ctx.optimizer,
                    x,
                    y,
                    rank=rank,
                    local_batches=msg["local_batches"],
                    on_samples=on_samples if msg.get("log_samples") else None,
                    **common,
                )
            if paused.item():  # every rank stopped at the same step boundary
                return {"interrupted": True, "paused": True, "completed": ctx.completed}
            peak_mb = peak_memory(device)
            dist.barrier()
        except Exception as err:
            if not msg.get("elastic"):
                raise
            return {
                "interrupted": True,
                "completed": ctx.completed,
                "error": f"{type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''}",
            }
        finally:
            del wrapped  # its hooks go with it, before a next generation wraps the model
    return {"steps": [r.to_dict() for r in ctx.records], "peak_memory_mb": peak_mb}


def new_run(
    msg: dict[str, Any],
    job: JobSpec,
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    steps_per_epoch: int,
) -> RunContext:
    """A run's context from its first ``train`` message (``resume_from``: a checkpoint
    whose model, optimiser and epoch it continues from)."""
    optimizer = job_optimizer(job, model.parameters())
    ctx = RunContext(
        str(msg["run_id"]), job, model, optimizer, x, y, torch.device("cpu"), steps_per_epoch
    )
    if msg.get("resume_from"):
        saved = load_checkpoint(Path(msg["resume_from"]))
        model.load_state_dict(saved["model"])
        optimizer.load_state_dict(saved["optimizer"])
        ctx.completed = (int(saved["epoch"]) + 1) * steps_per_epoch
    return ctx
