"""Coordinator side of the training agents: start one per device, profile, run DDP jobs.

The coordinator hosts the torch.distributed TCPStore, so the rendezvous outlives any one
worker (the fault-tolerance work builds on this), and watches every agent process while it
waits: a worker that dies turns into a :class:`TrainingError` naming its device, never a
hang.
"""

from __future__ import annotations

import contextlib
import datetime
import math
import sys
import time
import uuid
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from multiprocessing.connection import Connection, wait
from pathlib import Path
from typing import Any

import numpy as np
import torch.distributed as dist

from deepedge.cluster.api import DeviceHandle, DeviceProcess
from deepedge.cluster.workers import STEADY_MALLOC_ENV, Worker, WorkerListener, stop_workers
from deepedge.errors import CheckpointError, ClusterError, TrainingError
from deepedge.spec import JobSpec, Plan
from deepedge.train.checkpoint import CheckpointManager
from deepedge.train.ddp import StepRecord
from deepedge.train.recovery import Failure, Liveness, Recovery, resume_point

__all__ = ["AgentPool", "ProfilePointResult", "ProfileResults", "TrainRun"]


@dataclass(frozen=True)
class ProfilePointResult:
    """One device's timed steps at one local batch size (see :meth:`AgentPool.profile`)."""

    batch: int
    step_times: list[float]  # per-step compute, without the wait for the all-reduce
    peak_memory_mb: float  # peak RSS (or CUDA allocation) during the run
    cost_s: float  # wall time of the profiling run, warm-up and start-up included


@dataclass(frozen=True)
class ProfileResults:
    points: dict[str, ProfilePointResult]  # per device; empty when the run failed
    failures: dict[str, str]  # device -> why it failed or died


def _dataset_size(path: Path) -> int:
    """Number of samples in a saved :class:`ArrayDataset` (reads only the labels)."""
    with np.load(path, allow_pickle=False) as z:
        return len(z["labels"])


@dataclass(frozen=True)
class TrainRun:
    plan: Plan
    started: float
    finished: float
    steps: dict[str, list[StepRecord]]  # per device (a lost device's are lost with it)
    checkpoint_dir: Path
    recoveries: list[Recovery] = field(default_factory=list)
    """Each lost worker the run survived: when, where it went on from, with which plan."""
    samples: list[dict[str, Any]] = field(default_factory=list)
    """With ``log_samples``: every (device, epoch, step, sample ids) the run used, steps
    redone after a failure counted once."""

    @property
    def wall_s(self) -> float:
        return self.finished - self.started

    def final_state(self) -> dict[str, Any]:
        """The last epoch's checkpoint of this run (model and optimiser state)."""
        latest = CheckpointManager(self.checkpoint_dir).latest()
        if latest is None:
            raise CheckpointError(f"run wrote no checkpoint in {self.checkpoint_dir}")
        return latest[1]

    @property
    def startup_s(self) -> float:
        """From the request to the first step: group rendezvous, model build, data on device."""
        return min(recs[0].start for recs in self.steps.values() if recs) - self.started

    def step_durations_s(self) -> list[float]:
        """Wall time of each global step, first rank's start to last rank's update."""
        by_step: dict[tuple[int, int], list[StepRecord]] = {}
        for recs in self.steps.values():
            for r in recs:
                by_step.setdefault((r.epoch, r.step), []).append(r)
        return [
            max(r.end for r in rs) - min(r.start for r in rs) for _, rs in sorted(by_step.items())
        ]


# A killed agent's sockets close (its peers see a reset, its coordinator link an EOF)
# before the kernel reports its exit, and on a loaded host or under a small CPU quota the
# dying process can wait a while for the CPU in between. How long to wait for that exit
# before blaming a failure on something else; only failures ever wait.
_DEATH_GRACE_S = 5.0


class AgentPool:
    """One training agent per device, reached over authenticated sockets (loopback or bridge)."""

    def __init__(
        self, devices: Mapping[str, DeviceHandle], log_dir: Path, *, host: str = "127.0.0.1"
    ) -> None:
        # a copy of its own: add() extends it, whatever mapping the caller passed
        self._devices: dict[str, DeviceHandle] = dict(devices)
        self._host = host  # the coordinator's address as the devices see it
        self._log_dir = log_dir
        self._workers: dict[str, Worker] = {}
        self._store: dist.TCPStore | None = None
        self._segment_store: dist.Store | None = None  # the running elastic segment's
        self._segment_ranks: dict[str, int] = {}
        self.runtime_mb: dict[str, float] = {}
        """Each agent's resident memory once torch is imported: the per-worker runtime cost."""

    @property
    def processes(self) -> dict[str, DeviceProcess]:
        """Each device's agent process (to signal it: fault injection in tests, benchmarks
        and ``deepedge demo --chaos``)."""
        return {name: w.proc for name, w in self._workers.items()}

    def _listener(self, count: int) -> WorkerListener:
        return WorkerListener(self._host, count, key_env="DEEPEDGE_AGENT_KEY", what="agent")

    def _spawn(self, listener: WorkerListener, name: str, dev: DeviceHandle) -> Worker:
        """Start the training agent of device ``name``, told to connect to ``listener``."""
        argv = [
            sys.executable,
            "-m",
            "deepedge.train.agent",
            "--device",
            name,
            "--cpu-cores",
            str(dev.spec.cpu_cores or 1.0),
        ]
        if dev.pace_cores is not None:
            argv += ["--pace-cores", str(dev.pace_cores)]
        env = dict(STEADY_MALLOC_ENV)
        if dev.interface:  # gloo must use the device's link, not resolve the hostname
            env["GLOO_SOCKET_IFNAME"] = dev.interface
        return listener.spawn(
            name,
            dev,
            argv,
            env=env,
            self_paced=dev.pace_cores is not None,
            log_path=self._log_dir / f"agent-{name}.log",
        )

    def _await_hellos(
        self, listener: WorkerListener, workers: list[Worker], timeout_s: float
    ) -> None:
        """Wait for the hellos of ``workers``; a death or the deadline names the devices."""

        def timed_out(waiting: list[Worker]) -> ClusterError:
            missing = sorted(w.name for w in waiting)
            return ClusterError(
                f"training agents on {missing} did not start in {timeout_s:.0f} s",
                hint=f"see {self._log_dir}",
            )

        listener.await_hellos(
            workers,
            deadline=time.monotonic() + timeout_s,
            died=lambda worker, code, _when: self._died(worker, code),
            timed_out=timed_out,
            identify=lambda hello: hello["device"],
        )

    def start(self, timeout_s: float = 180.0) -> None:
        self._log_dir.mkdir(parents=True, exist_ok=True)
        with self._listener(len(self._devices)) as listener:
            for name, dev in self._devices.items():
                self._workers[name] = self._spawn(listener, name, dev)
            self._await_hellos(listener, list(self._workers.values()), timeout_s)
        for name, worker in self._workers.items():
            assert worker.hello is not None
            self.runtime_mb[name] = worker.hello["rss_mb"]
        self._store = dist.TCPStore(
            self._host,
            0,
            is_master=True,
            wait_for_workers=False,
            timeout=datetime.timedelta(seconds=60),
        )

    def add(self, name: str, device: DeviceHandle, timeout_s: float = 180.0) -> None:
        """Start one more agent, in ``device`` (one that joined the running cluster).

        Returns once it has said hello, with :attr:`runtime_mb` recorded; from then on
        ``name`` can be profiled and given a share of a plan like any device. Safe while
        another thread runs a job on the other agents: the new agent is added to the
        pool's tables (replaced, not changed in place) only once it is ready, and the
        pool's rendezvous store, which every run shares, stays as it is. An agent that
        dies or does not say hello by ``timeout_s`` is killed and raises (TrainingError,
        ClusterError), leaving the pool as it was.
        """
        if self._store is None:
            raise ClusterError(
                f"cannot add an agent on {name!r} to a pool that is not started",
                hint="start() the pool first",
            )
        if name in self._workers:
            raise ClusterError(
                f"device {name!r} already has a training agent",
                hint="give the new device another name",
            )
        self._log_dir.mkdir(parents=True, exist_ok=True)
        with self._listener(1) as listener:
            worker = self._spawn(listener, name, device)
            try:
                self._await_hellos(listener, [worker], timeout_s)
            except BaseException:
                worker.hang_up()
                worker.kill()
                raise
        assert worker.hello is not None
        self.runtime_mb[name] = worker.hello["rss_mb"]
        self._devices = {**self._devices, name: device}
        self._workers = {**self._workers, name: worker}

    def dead_devices(self) -> dict[str, int]:
        """Devices whose agent process has exited, with its exit code (-N: killed by N)."""
        codes = {name: w.exit_code() for name, w in self._workers.items()}
        return {name: code for name, code in codes.items() if code is not None}

    def _death(self, name: str, wait_s: float = 0.0) -> TrainingError | None:
        """The error naming how ``name``'s agent died, or None while it runs (after waiting
        up to ``wait_s`` for it to exit)."""
        worker = self._workers[name]
        code = worker.exit_code(wait_s)
        return None if code is None else self._died(worker, code)

    @staticmethod
    def _died(worker: Worker, code: int | None) -> TrainingError:
        if code is None:  # closed its connection, still running
            return TrainingError(f"lost the connection to the worker on {worker.name!r}")
        return TrainingError(
            f"worker on device {worker.name!r} died (exit code {code}): {worker.tail(2)}",
            hint=f"full log: {worker.log_path}; a negative code is the signal that killed it",
        )

    def _peer_death(self, names: list[str]) -> TrainingError | None:
        """The death of one of ``names`` that shows within :data:`_DEATH_GRACE_S`, else None.

        A rank's failure in a collective ("connection reset by peer") is usually the echo
        of a peer that died: that death is the error to report, and its exit status can
        come a moment after the survivor's failure reply.
        """
        deadline = time.monotonic() + _DEATH_GRACE_S
        while True:
            for name in names:
                if (err := self._death(name)) is not None:
                    return err
            if time.monotonic() >= deadline:
                return None
            time.sleep(0.05)

    def _conn(self, name: str) -> Connection:
        conn = self._workers[name].conn
        if conn is None:
            raise TrainingError(f"the worker on {name!r} is not running", hint="start() first")
        return conn

    def _check_alive(self, names: list[str] | None = None) -> None:
        for name in names or list(self._workers):
            if (err := self._death(name)) is not None:
                raise err

    def _request(
        self,
        messages: dict[str, dict[str, Any]],
        *,
        timeout_s: float,
        on_event: Callable[[str, dict[str, Any]], None] | None = None,
        failures: dict[str, str] | None = None,
    ) -> dict[str, dict]:
        """Send one message per device, wait for every 'done' reply, watching liveness.

        A worker that fails, dies or disconnects raises :class:`TrainingError`; with
        ``failures`` given, its one-line reason goes there instead and the others go on
        (independent work such as profiling, where one dead device must not void the rest).
        """
        conns = {name: self._conn(name) for name in messages}
        for name, msg in messages.items():
            conns[name].send(msg)
        pending = {conns[n]: n for n in messages}
        results: dict[str, dict[str, Any]] = {}

        def fail(conn: Connection, err: TrainingError, *, died: bool = False) -> None:
            if failures is None:
                # one run: a peer's death, if any, caused the others' failures: report it
                raise err if died else self._peer_death(list(messages)) or err
            failures[pending.pop(conn)] = err.one_line()

        deadline = time.monotonic() + timeout_s
        while pending:
            for conn in wait(list(pending), timeout=0.5):
                name = pending[conn]
                try:
                    reply = conn.recv()
                except (EOFError, ConnectionResetError):
                    death = self._death(name, wait_s=_DEATH_GRACE_S)  # closed, then exits
                    lost = self._died(self._workers[name], None)
                    fail(conn, death or lost, died=death is not None)
                    continue
                if reply.get("event") != "done":
                    if on_event:
                        on_event(name, reply)
                    continue
                if not reply["ok"]:
                    fail(
                        conn,
                        TrainingError(
                            f"worker on {name!r} failed: {reply['error']}",
                            hint=f"see {self._log_dir / f'agent-{name}.log'}",
                        ),
                    )
                    continue
                results[name] = reply
                del pending[conn]
            for conn, name in list(pending.items()):
                if (err := self._death(name)) is not None:
                    fail(conn, err, died=True)
            if time.monotonic() > deadline and pending:
                raise TrainingError(
                    f"workers {sorted(pending.values())} did not finish in {timeout_s:.0f} s"
                )
        return results

    def profile(
        self,
        job: JobSpec,
        data_path: Path,
        local_batches: Mapping[str, int],
        *,
        steps: int = 8,
        warmup: int = 2,
        state: Path | None = None,
        timeout_s: float = 600.0,
    ) -> ProfileResults:
        """Time ``warmup + steps`` real DDP steps with these local batches, all devices at once.

        Profiling inside a real DDP group measures each device in the regime it will
        train in: computing its share while its LC app runs, then waiting for the
        all-reduce while the LC app catches up. (Timing steps back to back in one process
        overstated step times by 20-40 % under LC load on the demo cluster.) Per device
        and timed step the compute is forward + backward + optimiser step, without the
        wait. A device that dies or fails goes to ``failures``; the run is lost for all.
        """
        names = list(local_batches)
        samples = sum(local_batches.values()) * (steps + warmup)
        epochs = -(-samples // max(1, _dataset_size(data_path))) + 1
        msgs = self._train_messages(
            job.model_copy(update={"epochs": epochs}),
            data_path,
            names,
            [local_batches[n] for n in names],
            state=state,
            checkpoint_dir=None,
            max_steps=steps + warmup,
            peer_timeout_s=30.0,  # steps take seconds: a silent peer has died
        )
        failures: dict[str, str] = {}
        started = time.monotonic()
        replies = self._request(msgs, timeout_s=timeout_s, failures=failures)
        cost = time.monotonic() - started
        points = {}
        for name, reply in replies.items():
            recs = [StepRecord(**s) for s in reply["steps"]][warmup:]
            # an epoch's last step can be partial: only full steps time this batch size
            recs = [r for r in recs if r.batch == local_batches[name]] or recs
            points[name] = ProfilePointResult(
                local_batches[name],
                [r.compute_s for r in recs],
                reply["peak_memory_mb"],
                cost,
            )
        return ProfileResults(points if not failures else {}, failures)

    def allreduce(
        self,
        names: Sequence[str],
        sizes: Sequence[int],
        *,
        warmup: int = 2,
        repeats: int = 7,
        timeout_s: float = 300.0,
    ) -> dict[int, list[float]]:
        """Seconds per SUM all-reduce of each byte size among ``names`` (one list per size).

        Each repetition's cost is the shortest duration over the ranks: from the last
        rank's arrival to the end of the collective (see the agent's ``allreduce``).
        """
        assert self._store is not None, "start() first"
        base = {
            "op": "allreduce",
            "world": len(names),
            "sizes": list(sizes),
            "warmup": warmup,
            "repeats": repeats,
            "store_host": self._host,
            "store_port": self._store.port,
            "run_id": uuid.uuid4().hex[:12],
        }
        replies = self._request(
            {n: {**base, "rank": r} for r, n in enumerate(names)}, timeout_s=timeout_s
        )
        return {
            size: [
                min(rs) for rs in zip(*(replies[n]["times"][str(size)] for n in names), strict=True)
            ]
            for size in sizes
        }

    def _train_messages(
        self,
        job: JobSpec,
        data_path: Path,
        names: Sequence[str],
        batches: Sequence[int],
        *,
        state: Path | None,
        checkpoint_dir: Path | None,
        max_steps: int | None = None,
        peer_timeout_s: float | None = None,
        intensities: Mapping[str, float] | None = None,
        micro_batch: int | None = None,
        **extra: Any,
    ) -> dict[str, dict[str, Any]]:
        """One 'train' message per device; rank = position in ``names``.

        ``intensities`` caps each device's trainer to that share of its CPU (default 1).
        ``micro_batch`` switches to dynamic dispatch: ``batches`` are then only expected
        shares (their sum is the global batch) and the devices claim chunks of that size.
        """
        assert self._store is not None, "start() first"
        base = {
            "op": "train",
            "job": job.model_dump(mode="json"),
            "data": str(data_path),
            "world": len(names),
            "local_batches": list(batches),
            "store_host": self._host,
            "store_port": self._store.port,
            "run_id": uuid.uuid4().hex[:12],
            "checkpoint_dir": str(checkpoint_dir) if checkpoint_dir else None,
            "state": str(state) if state else None,
            "max_steps": max_steps,
            "peer_timeout_s": peer_timeout_s,
            "micro_batch": micro_batch,
            **extra,
        }
        shares = intensities or {}
        return {
            n: {**base, "rank": r, "intensity": float(shares.get(n, 1.0))}
            for r, n in enumerate(names)
        }

    def train(
        self,
        job: JobSpec,
        data_path: Path,
        plan: Plan,
        *,
        checkpoint_dir: Path,
        state: Path | None = None,
        timeout_s: float = 3600.0,
        on_step: Callable[[int, int], None] | None = None,
        on_failure: Callable[[Failure], Plan | None] | None = None,
        watch: Callable[[str, dict[str, Any]], Plan | None] | None = None,
        resume_from: Path | None = None,
        log_samples: bool = False,
    ) -> TrainRun:
        """Run a DDP job on the plan's devices with their local batches; rank = plan order.

        A dynamic plan (``plan.micro_batch``) runs on all its devices, which claim
        micro-batches of each step at run time; its step records' ``batch`` is then what
        each device actually processed, which varies per step.

        With ``on_failure`` the run is elastic: when a worker is lost (it died, stopped or
        fell silent; a stopped or silent one is killed), the survivors keep their
        processes and the model in memory, ``on_failure`` gets the :class:`Failure` and
        returns the plan to go on with (None: give up, raising the loss), and the run
        goes on in a re-formed process group from the last step any survivor completed.
        ``watch(device, step_event)`` sees each rank's steps of an elastic run (its
        ``compute_s``); a plan it returns replaces the running one at the next step
        boundary, in a re-formed group, from the same step (a rebalance: no restart).
        ``resume_from``: a checkpoint to continue from (its model, optimiser and epoch).
        ``log_samples`` records every sample id each step used (tests of the accounting).
        """
        names = plan.devices
        msgs = self._train_messages(
            job,
            data_path,
            names,
            [plan.local_batches[n] for n in names],
            state=state,
            checkpoint_dir=checkpoint_dir,
            intensities=plan.intensities,
            micro_batch=plan.micro_batch,
            elastic=on_failure is not None,
            # a backstop only: a lost worker is fenced, which fails its peers' collectives
            peer_timeout_s=30.0 if on_failure is not None else None,
            resume_from=str(resume_from) if resume_from else None,
            log_samples=log_samples,
        )
        samples: list[dict[str, Any]] = []

        def forward(name: str, event: dict[str, Any]) -> None:
            if on_step and event.get("event") == "step" and event.get("rank", 0) == 0:
                on_step(event["epoch"], event["step"])
            elif event.get("event") == "samples":
                samples.append({"device": name, **event})

        started = time.time()
        recoveries: list[Recovery] = []
        if on_failure is None:
            replies = self._request(msgs, timeout_s=timeout_s, on_event=forward)
        else:
            per_epoch = math.ceil(_dataset_size(data_path) / job.global_batch)
            replies = self._elastic(
                msgs, timeout_s, forward, on_failure, watch, recoveries, samples, per_epoch
            )
        finished = time.time()
        steps = {n: [StepRecord(**s) for s in r["steps"]] for n, r in replies.items()}
        return TrainRun(plan, started, finished, steps, checkpoint_dir, recoveries, samples)

    def _elastic(
        self,
        msgs: dict[str, dict[str, Any]],
        timeout_s: float,
        on_event: Callable[[str, dict[str, Any]], None],
        on_failure: Callable[[Failure], Plan | None],
        watch: Callable[[str, dict[str, Any]], Plan | None] | None,
        recoveries: list[Recovery],
        samples: list[dict[str, Any]],
        steps_per_epoch: int,
    ) -> dict[str, dict[str, Any]]:
        """Run segments of an elastic job until one ends with every worker done."""
        deadline = time.monotonic() + timeout_s
        active, generation = msgs, 0
        first = next(iter(msgs.values()))
        run_id, total = first["run_id"], steps_per_epoch * int(first["job"]["epochs"])
        while True:
            store = dist.PrefixStore(f"{run_id}/g{generation}", self._store)
            done, interrupted, lost, lost_at, switch = self._segment(
                active, deadline, on_event, watch, store
            )
            paused = bool(interrupted) and all(r.get("paused") for r in interrupted.values())
            if switch is not None and paused and not lost:  # a new plan at a step boundary
                steps = int(next(iter(interrupted.values()))["completed"])
                # a device back in the plan (or new to the run) takes a current state
                behind = {n for n in switch.devices if n not in interrupted}
                blob = self._export(run_id, next(iter(interrupted))) if behind else None
                generation += 1
                active = self._resume_messages(first, switch, generation, steps, behind, blob)
                continue
            if not lost:
                if interrupted:  # a step failed with every worker alive: a real error
                    name, reply = next(iter(interrupted.items()))
                    raise TrainingError(
                        f"worker on {name!r} failed: {reply['error']}",
                        hint=f"see {self._log_dir / f'agent-{name}.log'}",
                    )
                return done
            detected = time.time()
            survivors = tuple(n for n in active if n not in lost)
            completed = {n: int(interrupted[n]["completed"]) for n in interrupted}
            completed |= dict.fromkeys((n for n in survivors if n in done), total)
            victim, why = next(iter(lost.items()))
            gone = TrainingError(f"lost the worker on {victim!r}: {why}")
            if not completed:
                raise TrainingError(
                    f"every worker of the run was lost ({'; '.join(lost.values())})",
                    hint="resume from the last checkpoint: `deepedge train ... --resume`",
                )
            if len(done) == len(survivors):  # lost after the run's last step: nothing to redo
                return done
            steps, source = resume_point(completed)
            failure = Failure(lost, survivors, steps, detected, lost_at)
            plan = on_failure(failure)
            if plan is None:
                raise gone
            # survivors, and devices with an agent that were out of the segment (joiners)
            usable = set(survivors) | (set(self._workers) - set(active) - set(self.dead_devices()))
            if not set(plan.devices) <= usable:
                raise TrainingError(
                    f"the plan after losing {sorted(lost)} uses devices that are not "
                    f"survivors: {sorted(set(plan.devices) - usable)}"
                )
            behind = [n for n in plan.devices if completed.get(n, -1) < steps]
            blob = self._export(run_id, source) if behind else None
            # the step in progress when the worker was lost is run again: its sample ids
            # count once, from the run that completes it
            samples[:] = [e for e in samples if e["epoch"] * steps_per_epoch + e["step"] < steps]
            generation += 1
            active = self._resume_messages(first, plan, generation, steps, set(behind), blob)
            recoveries.append(Recovery(failure, plan, generation, time.time()))

    def _export(self, run_id: str, source: str) -> bytes:
        """The model and optimiser state of ``run_id`` that ``source`` holds."""
        reply = self._request({source: {"op": "export", "run_id": run_id}}, timeout_s=60.0)
        return reply[source]["state_blob"]

    @staticmethod
    def _resume_messages(
        first: dict[str, Any],
        plan: Plan,
        generation: int,
        completed: int,
        behind: set[str],
        blob: bytes | None,
    ) -> dict[str, dict[str, Any]]:
        """'resume' messages of a re-formed group running ``plan`` from ``completed``
        steps; the devices ``behind`` first take the state in ``blob``."""
        base = {
            **first,
            "op": "resume",
            "generation": generation,
            "world": len(plan.devices),
            "local_batches": [plan.local_batches[n] for n in plan.devices],
            "micro_batch": plan.micro_batch,
            "completed": completed,
        }
        return {
            n: {
                **base,
                "rank": r,
                "intensity": float(plan.intensities.get(n, 1.0)),
                "state_blob": blob if n in behind else None,
            }
            for r, n in enumerate(plan.devices)
        }

    def _segment(
        self,
        messages: dict[str, dict[str, Any]],
        deadline: float,
        on_event: Callable[[str, dict[str, Any]], None],
        watch: Callable[[str, dict[str, Any]], Plan | None] | None,
        store: dist.Store,
    ) -> tuple[dict[str, dict], dict[str, dict], dict[str, str], float, Plan | None]:
        """Send one segment's messages and wait until each worker is done, interrupted
        (its step failed, or it paused) or lost (dead, stopped, silent: fenced). Returns
        those three, when the first lost worker was last heard of, and the plan ``watch``
        asked to switch to (the workers were asked to pause for it, through ``store``)."""
        switch: Plan | None = None
        self._segment_store = store
        self._segment_ranks = {name: int(msg["rank"]) for name, msg in messages.items()}
        conns = {name: self._conn(name) for name in messages}
        for name, msg in messages.items():
            conns[name].send(msg)
        live = Liveness()
        live.start(messages)
        pending = {conns[n]: n for n in messages}
        done: dict[str, dict] = {}
        interrupted: dict[str, dict] = {}
        lost: dict[str, str] = {}
        lost_at = math.inf
        quiet_since: float | None = None  # first interruption with no worker lost yet

        def lose(name: str, why: str) -> None:
            nonlocal lost_at
            lost_at = min(lost_at, time.time() - live.silence_s(name))
            lost[name] = why
            if pending.pop(conns[name], None) is not None:
                drain(name)
            live.last_seen.pop(name, None)

        def drain(name: str) -> None:
            """Forward what a lost worker sent before it went: its death can be noticed
            (its node gone, its process dead) while its last events wait unread, and a
            step's sample ids must not vanish with it."""
            conn = conns[name]
            with contextlib.suppress(EOFError, OSError):
                while conn.poll(0):
                    reply = conn.recv()
                    if reply.get("event") not in (None, "done", "heartbeat"):
                        on_event(name, reply)

        while pending:
            if time.monotonic() > deadline:
                raise TrainingError(f"workers {sorted(pending.values())} did not finish in time")
            listened = time.monotonic()
            for conn in wait(list(pending), timeout=0.1):
                name = pending[conn]
                try:
                    reply = conn.recv()
                except (EOFError, OSError):
                    err = self._death(name, wait_s=_DEATH_GRACE_S)
                    lose(name, str(err or self._died(self._workers[name], None)))
                    self._workers[name].kill()  # closed its link: fence it all the same
                    continue
                live.heard(name)
                event = reply.get("event")
                if event != "done":
                    if event != "heartbeat":
                        on_event(name, reply)
                    if watch and switch is None and event in ("step", "heartbeat"):
                        switch = watch(name, reply)
                        if switch is not None:
                            store.set("pause", "1")  # all ranks stop at one step boundary
                    continue
                del pending[conn]
                live.last_seen.pop(name, None)
                if reply["ok"]:
                    done[name] = reply
                elif reply.get("interrupted"):
                    interrupted[name] = reply
                else:
                    raise self._peer_death(list(messages)) or TrainingError(
                        f"worker on {name!r} failed: {reply['error']}",
                        hint=f"see {self._log_dir / f'agent-{name}.log'}",
                    )
            for name in list(pending.values()):
                if (err := self._death(name)) is not None:
                    lose(name, str(err))
            if (stall := time.monotonic() - listened - 0.1) > 0.25:
                live.excuse(stall)  # a slow callback kept us from reading their heartbeats
            pids = {n: self._workers[n].pid for n in pending.values()}
            for name, why in live.lost(pids).items():
                self._workers[name].kill()  # fenced: its sockets close, its peers fail fast
                lose(name, why)
            if interrupted and not lost and not all(r.get("paused") for r in interrupted.values()):
                # a peer's failure shows a moment after the echo
                quiet_since = quiet_since or time.monotonic()
                if time.monotonic() - quiet_since > _DEATH_GRACE_S:
                    break
        self._segment_store, self._segment_ranks = None, {}
        return done, interrupted, lost, lost_at, switch

    def in_segment(self, device: str) -> bool:
        """Whether ``device`` trains in the running segment of an elastic run (its link is
        in use: another thread must not send it work)."""
        return device in self._segment_ranks

    def throttle(self, device: str, intensity: float) -> bool:
        """Change ``device``'s training intensity in the running segment of an elastic run,
        from its next step on, without re-forming the group (the SLO guard's fast path).
        False when ``device`` trains in no running segment."""
        if self._segment_store is None or device not in self._segment_ranks:
            return False
        if not 0 < intensity <= 1:
            raise ValueError(f"intensity must be in (0, 1], got {intensity}")
        self._segment_store.set(f"intensity/{self._segment_ranks[device]}", str(intensity))
        return True

    def close(self, grace_s: float = 2.0) -> None:
        """Ask agents to exit; kill those still busy after ``grace_s`` (e.g. on Ctrl-C)."""
        stop_workers(self._workers.values(), {"op": "shutdown"}, grace_s=grace_s)
        self._workers.clear()
        self._store = None
