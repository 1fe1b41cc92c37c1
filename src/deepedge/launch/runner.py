"""``deepedge launch``: plan, boot the devices with their LC apps, run a script's ranks.

The launcher does what torchrun's agent does for one process per node, with the nodes
being planned devices: it gives each rank torchrun's environment, starts it *inside* its
device (``DeviceHandle.spawn``, so the device's CPU and memory fence and its network
namespace hold from the first instruction) at the trainer's low CPU priority, writes each
rank's output to ``logs/rank-N.log`` (and to the console with a ``[rankN]:`` prefix),
and when one rank fails stops the others and reports the first failure the way
torchrun's ``ChildFailedError`` does.

How the devices are chosen (a foreign script is never profiled):

* ``--plan FILE``: a saved plan, as it is;
* ``--policy equal`` or ``--devices a,b``: the same share on every (named) device that
  can hold a rank beside its LC apps; nothing is measured;
* any other policy (default ``deep-edge``): the run controller profiles and plans a
  *comparable job* (``--job``, default the built-in demo job) exactly as ``deepedge
  plan``/``train`` would, with the cluster's LC apps under load; the script's ranks then
  take the devices, shares and intensities of that plan.
"""

from __future__ import annotations

import contextlib
import datetime
import json
import os
import signal
import sys
import threading
import time
import uuid
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from deepedge.cluster.api import DeviceHandle, DeviceProcess, signal_group
from deepedge.cluster.workers import log_lines
from deepedge.errors import SpecError, TrainingError, UsageError
from deepedge.launch.plan import (
    RankPlan,
    equal_plan,
    free_port,
    load_plan_file,
    rank_plans,
    script_argv,
    torchrun_env,
)
from deepedge.spec import ClusterSpec, JobSpec, Plan

__all__ = [
    "DEFAULT_JOB",
    "LaunchFailed",
    "LaunchOptions",
    "LaunchResult",
    "RankFailure",
    "RankGroup",
    "launch",
]

DEFAULT_JOB = Path(__file__).resolve().parent.parent / "examples" / "demo-job.yaml"
"""The comparable job a foreign script is planned as when ``--job`` is not given."""
RANK_WRAPPER = Path(__file__).resolve().parent / "_rank.py"
_POLL_S = 0.05


class LaunchFailed(TrainingError):
    """A rank failed; the launch exits with its exit code (1 for a signal)."""

    def __init__(self, message: str, *, exit_code: int, hint: str | None = None) -> None:
        super().__init__(message, hint=hint)
        self.exit_code = exit_code


@dataclass(frozen=True)
class RankFailure:
    """One rank that ended other than with exit code 0."""

    rank: int
    device: str
    address: str
    returncode: int
    pid: int
    log_path: Path
    when: float  # time.time() when the launcher saw it end
    stopped: bool = False  # stopped by the launcher after another rank failed

    @property
    def exit_code(self) -> int:
        """What the launch exits with for it: the rank's code, 1 for a signal."""
        return self.returncode if 0 < self.returncode < 256 else 1

    def describe_exit(self) -> str:
        if self.returncode < 0:
            try:
                name = signal.Signals(-self.returncode).name
            except ValueError:
                name = f"signal {-self.returncode}"
            return f"{self.returncode} (signal: {name})"
        return str(self.returncode)


@dataclass(frozen=True)
class LaunchResult:
    plan: Plan
    ranks: list[RankPlan]
    wall_s: float
    log_dir: Path


class _Tee(threading.Thread):
    """Follows every rank's log file and echoes new complete lines as ``[rankN]: line``.

    Following the files (rather than piping each rank's output through the launcher)
    leaves the ranks writing to a plain file, as any backend's ``spawn`` can, and a
    launcher that is slow to print never blocks a rank.
    """

    def __init__(self, logs: Sequence[Path], echo: Callable[[str], None]) -> None:
        super().__init__(name="deepedge-launch-tee", daemon=True)
        self._logs = list(logs)
        self._echo = echo
        self._offsets = [0] * len(logs)
        self._partial = [b""] * len(logs)
        self._done = threading.Event()

    def _drain(self, final: bool = False) -> None:
        for rank, path in enumerate(self._logs):
            try:
                with open(path, "rb") as f:
                    f.seek(self._offsets[rank])
                    chunk = f.read()
            except OSError:
                continue
            self._offsets[rank] += len(chunk)
            data = self._partial[rank] + chunk
            *lines, rest = data.split(b"\n")
            if final and rest:
                lines, rest = [*lines, rest], b""
            self._partial[rank] = rest
            for line in lines:
                self._echo(f"[rank{rank}]: {line.decode(errors='replace')}")

    def run(self) -> None:
        while not self._done.wait(0.1):
            self._drain()

    def close(self) -> None:
        self._done.set()
        if self.is_alive():
            self.join(timeout=2)
        self._drain(final=True)


class RankGroup:
    """The ranks of one launch, one per device: start, watch, stop, summarise.

    ``devices`` maps device names to handles of a started backend; ``ranks[i]`` is rank
    ``i``'s plan. Usable on its own (the benchmark times it against torchrun on the same
    booted devices), without planning or a session.
    """

    def __init__(
        self,
        devices: Mapping[str, DeviceHandle],
        ranks: Sequence[RankPlan],
        argv: Sequence[str],
        *,
        log_dir: Path,
        master_port: int | None = None,
        echo: Callable[[str], None] | None = None,
        env: Mapping[str, str] | None = None,
        stop_grace_s: float = 5.0,
        run_id: str | None = None,
    ) -> None:
        missing = [r.device for r in ranks if r.device not in devices]
        if missing:
            raise UsageError(
                f"the plan names devices the cluster does not have: {missing}",
                hint=f"devices: {sorted(devices)}",
            )
        self.devices = devices
        self.ranks = list(ranks)
        self.argv = list(argv)
        self.log_dir = log_dir
        self.master_addr = devices[self.ranks[0].device].address
        self.master_port = master_port if master_port is not None else free_port()
        self.echo = echo
        self.env = dict(env or {})
        self.stop_grace_s = stop_grace_s
        self.run_id = run_id or uuid.uuid4().hex[:12]
        self.procs: list[DeviceProcess] = []
        self.log_paths = [log_dir / f"rank-{r.rank}.log" for r in self.ranks]
        self._tee: _Tee | None = None

    def rank_env(self, rp: RankPlan) -> dict[str, str]:
        env = {
            **self.env,
            **torchrun_env(
                rp, master_addr=self.master_addr, master_port=self.master_port, run_id=self.run_id
            ),
        }
        interface = self.devices[rp.device].interface
        if interface:  # gloo must use the device's link, not resolve the hostname
            env["GLOO_SOCKET_IFNAME"] = interface
        return env

    def start(self) -> None:
        """Start every rank in its device (rank 0 first: it serves the rendezvous)."""
        self.log_dir.mkdir(parents=True, exist_ok=True)
        for path in self.log_paths:
            path.unlink(missing_ok=True)  # spawn appends; a rerun must not show old lines
            path.touch()
        argv = [sys.executable, "-S", str(RANK_WRAPPER), *self.argv]
        try:
            for rp, path in zip(self.ranks, self.log_paths, strict=True):
                proc = self.devices[rp.device].spawn(argv, env=self.rank_env(rp), log_path=path)
                self.procs.append(proc)
        except BaseException:
            self.stop()
            raise
        if self.echo is not None:
            self._tee = _Tee(self.log_paths, self.echo)
            self._tee.start()

    def wait(self, timeout_s: float | None = None) -> None:
        """Until every rank exits 0; on the first failure stop the others and raise
        :class:`LaunchFailed` after printing torchrun's kind of summary."""
        deadline = None if timeout_s is None else time.monotonic() + timeout_s
        try:
            while True:
                codes = [p.poll() for p in self.procs]
                failed = [
                    self._failure(r, c) for r, c in enumerate(codes) if c is not None and c != 0
                ]
                if failed:
                    break
                if all(c == 0 for c in codes):
                    return
                if deadline is not None and time.monotonic() > deadline:
                    raise LaunchFailed(
                        f"the ranks did not finish within {timeout_s:g} s",
                        exit_code=1,
                        hint=f"see {self.log_dir}",
                    )
                time.sleep(_POLL_S)
            stopped = self._stop_rest({f.rank for f in failed})
        finally:
            if self._tee is not None:
                self._tee.close()
                self._tee = None
        self._raise(failed, stopped)

    def _failure(self, rank: int, code: int, *, stopped: bool = False) -> RankFailure:
        rp = self.ranks[rank]
        return RankFailure(
            rank=rank,
            device=rp.device,
            address=self.devices[rp.device].address,
            returncode=code,
            pid=self.procs[rank].pid,
            log_path=self.log_paths[rank],
            when=time.time(),
            stopped=stopped,
        )

    def _stop_rest(self, failed: set[int]) -> list[RankFailure]:
        """SIGTERM the ranks still running, SIGKILL them after the grace period; the
        ones that failed on their own meanwhile are failures, not stopped ones."""
        running = [r for r, p in enumerate(self.procs) if r not in failed and p.poll() is None]
        for r in running:
            signal_group(self.procs[r], signal.SIGTERM)
        deadline = time.monotonic() + self.stop_grace_s
        while any(self.procs[r].poll() is None for r in running):
            if time.monotonic() > deadline:
                for r in running:
                    if self.procs[r].poll() is None:
                        signal_group(self.procs[r], signal.SIGKILL)
                        with contextlib.suppress(OSError):
                            self.procs[r].kill()
                break
            time.sleep(_POLL_S)
        out = []
        for r in running:
            with contextlib.suppress(Exception):
                self.procs[r].wait(timeout=10)
            code = self.procs[r].poll()
            out.append(
                self._failure(r, code if code is not None else -signal.SIGKILL, stopped=True)
            )
        return out

    def _raise(self, failed: list[RankFailure], stopped: list[RankFailure]) -> None:
        root = failed[0]
        script = self.argv[1] if len(self.argv) > 1 else self.argv[0]
        if self.echo is not None:
            for line in summary(script, root, failed[1:], stopped):
                self.echo(line)
        raise LaunchFailed(
            f"rank {root.rank} (device {root.device}) exited with {root.describe_exit()}"
            + (f"; stopped ranks {', '.join(str(s.rank) for s in stopped)}" if stopped else ""),
            exit_code=root.exit_code,
            hint=f"see {root.log_path}",
        )

    def stop(self) -> None:
        """Kill every rank still running (Ctrl-C, a failed start). Idempotent."""
        for p in self.procs:
            if p.poll() is None:
                signal_group(p, signal.SIGKILL)
                with contextlib.suppress(OSError):
                    p.kill()
        for p in self.procs:
            with contextlib.suppress(Exception):
                p.wait(timeout=10)
        if self._tee is not None:
            self._tee.close()
            self._tee = None

    def run(self, timeout_s: float | None = None) -> float:
        """Start, wait; the wall time of the ranks. Stops them whatever happens."""
        started = time.monotonic()
        self.start()
        try:
            self.wait(timeout_s)
        finally:
            self.stop()
        return time.monotonic() - started


def summary(
    script: str,
    root: RankFailure,
    others: Sequence[RankFailure],
    stopped: Sequence[RankFailure],
    tail_lines: int = 10,
) -> list[str]:
    """torchrun's failure report (``ChildFailedError``): the root cause with its device,
    exit code and the tail of its log, the other failures, the ranks that were stopped."""
    bar, rule = "=" * 60, "-" * 60

    def block(i: int, f: RankFailure, tail: bool) -> list[str]:
        when = datetime.datetime.fromtimestamp(f.when).strftime("%Y-%m-%d_%H:%M:%S")
        lines = [
            f"[{i}]:",
            f"  time      : {when}",
            f"  device    : {f.device} ({f.address})",
            f"  rank      : {f.rank} (local_rank: 0)",
            f"  exitcode  : {f.describe_exit()} (pid: {f.pid})",
            f"  log       : {f.log_path}",
        ]
        if tail:
            lines.append("  log tail  :")
            lines += [f"    {line}" for line in log_lines(f.log_path, tail_lines)]
        return lines

    out = [bar, f"{script} FAILED", rule, "Failures:"]
    if others:
        for i, f in enumerate(others, 1):
            out += block(i, f, tail=True)
    else:
        out.append("  <NO_OTHER_FAILURES>")
    if stopped:
        out += [rule, "Stopped by deepedge after the failure:"]
        out += [f"  rank {s.rank} on {s.device}: exitcode {s.describe_exit()}" for s in stopped]
    out += [rule, "Root Cause (first observed failure):", *block(0, root, tail=True), bar]
    return out


@dataclass(frozen=True)
class LaunchOptions:
    """Everything ``deepedge launch`` takes besides the cluster spec."""

    script: str
    args: tuple[str, ...] = ()
    workdir: Path = Path("runs/launch")
    policy: str | None = None
    """Default ``deep-edge``; ``--devices`` and ``--plan`` go without one."""
    job: Path | None = None
    """The comparable job the script is planned as (default: :data:`DEFAULT_JOB`)."""
    global_batch: int | None = None
    """The global batch to plan for (default: the job's)."""
    devices: tuple[str, ...] = ()
    """Force an equal split over these devices (no profiling)."""
    plan_file: Path | None = None
    apps: bool = True
    """Run the cluster's LC apps under their load while the script trains."""
    tee: bool = True
    master_port: int | None = None
    rank_memory_mb: float = 400.0
    """What one rank needs, for the equal split's memory check (a foreign script's
    footprint is not measured; the planned policies use the comparable job's)."""
    kb: Path | None = None
    stop_grace_s: float = 5.0
    force_fallback: bool = False
    env: Mapping[str, str] = field(default_factory=dict)
    """Extra environment for every rank."""


PLANNED = ("deep-edge", "proportional", "fastest-single")


def _check_options(o: LaunchOptions) -> None:
    if o.global_batch is not None and o.global_batch <= 0:
        raise UsageError(f"--global-batch must be positive, got {o.global_batch}")
    if o.plan_file is not None and (o.devices or o.policy is not None):
        raise UsageError(
            "--plan runs a saved plan: it goes without --devices and --policy",
            hint="drop one of them",
        )
    if o.devices and o.policy not in (None, "equal"):
        raise UsageError(
            f"--devices forces an equal split; it does not go with --policy {o.policy}",
            hint="drop --policy, or --devices to let the planner choose",
        )
    if o.policy is not None and o.policy not in (*PLANNED, "equal"):
        from deepedge.control.policies import get_policy

        get_policy(o.policy)  # an unknown name: one line listing the known ones
        raise UsageError(
            f"policy {o.policy} cannot be launched: a script's steps need a fixed share",
            hint=f"use one of {', '.join((*PLANNED, 'equal'))}",
        )


def _load_job(path: Path | None, global_batch: int | None) -> JobSpec:
    from deepedge.spec import load_spec
    from deepedge.validation import require_usable

    job = load_spec(JobSpec, path or DEFAULT_JOB)
    require_usable(job, source=str(path or DEFAULT_JOB))
    if global_batch is not None:
        job = job.model_copy(update={"global_batch": global_batch})
    return job


def _equal_over(spec: ClusterSpec, o: LaunchOptions, global_batch: int) -> Plan:
    """The equal split over ``--devices`` (default all) that fit a rank beside their apps."""
    from deepedge.plan import memory_exclusions

    known = [d.name for d in spec.devices]
    unknown = [n for n in o.devices if n not in known]
    if unknown:
        raise UsageError(
            f"--devices names unknown device(s) {unknown}", hint=f"devices: {', '.join(known)}"
        )
    chosen = [d for d in spec.devices if not o.devices or d.name in o.devices]
    excluded = memory_exclusions(chosen, spec.apps, {d.name: o.rank_memory_mb for d in chosen})
    out = {e.device for e in excluded}
    names = [d.name for d in chosen if d.name not in out]
    if not names:
        from deepedge.errors import PlanInfeasible

        raise PlanInfeasible(
            "no device can hold a rank: " + "; ".join(f"{e.device}: {e.reason}" for e in excluded),
            hint="name other --devices, or lower --rank-memory-mb if the script needs less",
        )
    return equal_plan(names, global_batch, excluded)


def _rescaled(plan: Plan, global_batch: int | None) -> Plan:
    """``plan``'s proportions at ``global_batch`` (a saved plan run at another batch)."""
    from deepedge.plan.shares import split_batch

    if global_batch is None or global_batch == plan.global_batch:
        return plan
    names = list(plan.local_batches)
    if global_batch < len(names):
        raise SpecError(
            f"--global-batch {global_batch} is smaller than the plan's {len(names)} devices"
        )
    shares = split_batch(global_batch, [plan.local_batches[n] for n in names], min_each=1)
    return plan.model_copy(
        update={
            "global_batch": global_batch,
            "local_batches": dict(zip(names, shares, strict=True)),
        }
    )


def _rank_env_defaults(tee: bool) -> dict[str, str]:
    from deepedge.cluster.workers import STEADY_MALLOC_ENV

    env = dict(STEADY_MALLOC_ENV)  # as deepedge's own trainers run
    if tee and "PYTHONUNBUFFERED" not in os.environ:
        env["PYTHONUNBUFFERED"] = "1"  # lines reach the console as they are printed
    return env


def launch(
    cluster: ClusterSpec,
    options: LaunchOptions,
    *,
    status: Callable[[str], None] = print,
    echo: Callable[[str], None] | None = print,
    timeout_s: float | None = None,
) -> LaunchResult:
    """Plan, boot the cluster (its LC apps under load unless ``apps=False``), run one rank
    of the script per planned device, tear everything down. Raises :class:`LaunchFailed`
    (after the summary) when a rank fails; usage problems are found before anything
    boots."""
    o = options
    _check_options(o)
    argv = script_argv(o.script, o.args)
    spec = cluster if o.apps else cluster.model_copy(update={"apps": []})
    saved = load_plan_file(o.plan_file) if o.plan_file is not None else None
    equal = saved is None and (bool(o.devices) or o.policy == "equal")
    workdir = o.workdir
    workdir.mkdir(parents=True, exist_ok=True)
    if saved is not None or equal:
        from deepedge.session import EdgeSession

        session = EdgeSession(
            spec, workdir, status=status, agents_enabled=False, force_fallback=o.force_fallback
        )
        if saved is not None:
            plan = _rescaled(saved, o.global_batch)
        else:
            batch = o.global_batch or _load_job(o.job, None).global_batch
            plan = _equal_over(session.spec, o, batch)
        with session:
            return _run(
                session.cluster.devices, session.spec, plan, argv, o, status, echo, timeout_s
            )
    from deepedge.control import RunController, RunOptions

    policy = o.policy or "deep-edge"
    job = _load_job(o.job, o.global_batch)
    run_options = RunOptions(
        out=workdir,
        policies=(policy,),
        kb=o.kb,
        slo_guard=None,  # it cuts agents' intensity; a foreign script has no agent
        rebalance=False,
        force_fallback=o.force_fallback,
    )
    with RunController(spec, job, run_options, status=status) as ctl:
        plan = ctl.plan().plans[policy]
        assert ctl.session is not None
        ctl.session.agents.close()  # the devices' memory and CPU go to the script's ranks
        return _run(
            ctl.session.cluster.devices, ctl.session.spec, plan, argv, o, status, echo, timeout_s
        )


def _run(
    devices: Mapping[str, DeviceHandle],
    spec: ClusterSpec,
    plan: Plan,
    argv: list[str],
    o: LaunchOptions,
    status: Callable[[str], None],
    echo: Callable[[str], None] | None,
    timeout_s: float | None,
) -> LaunchResult:
    for e in plan.excluded:
        status(f"left out {e.device}: {e.reason}")
    cores = {d.name: d.cpu_cores for d in spec.devices}
    ranks = rank_plans(plan, cores)
    (o.workdir / "plan.json").write_text(
        json.dumps({"plan": plan.model_dump(mode="json"), "argv": argv}, indent=2)
    )
    group = RankGroup(
        devices,
        ranks,
        argv,
        log_dir=o.workdir / "logs",
        master_port=o.master_port,
        echo=echo if o.tee else None,
        env={**_rank_env_defaults(o.tee), **o.env},
        stop_grace_s=o.stop_grace_s,
    )
    status(
        f"launching {len(ranks)} rank(s) of {' '.join(argv[1:]) or argv[0]} "
        f"({plan.policy}: {plan.describe()}); MASTER_ADDR={group.master_addr}:"
        f"{group.master_port}; logs in {group.log_dir}"
    )
    wall = group.run(timeout_s)
    status(f"all {len(ranks)} rank(s) finished in {wall:.1f} s")
    return LaunchResult(plan=plan, ranks=ranks, wall_s=wall, log_dir=group.log_dir)
