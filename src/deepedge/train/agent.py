"""The training agent: one long-lived process per device, inside the device's fence.

It imports torch once (seconds on a slow board) and then runs what the coordinator asks:
an all-reduce timing, or its rank of a DDP run (training, or profiling with a step
limit). Messages are dicts over a ``multiprocessing.connection`` socket to the
coordinator (loopback, or the bridge with per-device network namespaces), authenticated
with a per-session key.
On the Ray backend the same operations become methods of a per-node actor.

Run as ``python -m deepedge.train.agent --address HOST:PORT --device NAME`` with the key in
``DEEPEDGE_AGENT_KEY`` (hex).
"""

from __future__ import annotations

import argparse
import contextlib
import math
import os
import resource
import sys
import time
import traceback
from multiprocessing.connection import Client, Connection
from pathlib import Path
from typing import Any

import psutil
import torch
import torch.distributed as dist

from deepedge.byo.data import TensorData, is_tensor_file
from deepedge.data import ArrayDataset
from deepedge.errors import DeepEdgeError
from deepedge.spec import JobSpec, OptimizerSpec
from deepedge.train.ddp import CpuPacer, build_optimizer
from deepedge.train.elastic import (
    Heartbeat,
    RunContext,
    SharedConnection,
    export_state,
    import_state,
    new_run,
    process_group,
    run_segment,
)
from deepedge.train.local import job_model
from deepedge.train.priority import yield_cpu_to_lc_apps

__all__ = ["main"]

_datasets: dict[str, tuple[torch.Tensor, torch.Tensor, ArrayDataset | TensorData]] = {}
_runs: dict[str, RunContext] = {}  # elastic runs kept in memory across group generations
_pacer: CpuPacer | None = None  # set by --pace-cores: the fallback emulation's CPU fence
_cpu_cores = 1.0  # the device's CPU capacity (--cpu-cores), which intensities are shares of


def _dataset(path: str) -> tuple[torch.Tensor, torch.Tensor, ArrayDataset | TensorData]:
    if path not in _datasets:
        # a user's tensors (deepedge.fit) or an image data set
        ds = TensorData.load(path) if is_tensor_file(path) else ArrayDataset.load(path)
        x, y = ds.to_tensors()
        _datasets[path] = (x, y, ds)
    return _datasets[path]


def _model(job: JobSpec, ds: ArrayDataset | TensorData, state_path: str | None) -> torch.nn.Module:
    model = job_model(job, ds)
    if state_path:
        model.load_state_dict(torch.load(state_path, weights_only=True))
    return model


def _peak_memory_reset(device: torch.device) -> None:
    """Start a fresh peak-memory window: CUDA's allocator peak, or the kernel's VmHWM."""
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
        return
    # "5" resets the peak RSS (Linux >= 4.0); without it the peak is the lifetime one
    with contextlib.suppress(OSError):
        Path("/proc/self/clear_refs").write_text("5")


def _peak_memory_mb(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024  # kB
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def allreduce(msg: dict[str, Any]) -> dict[str, Any]:
    """Time SUM all-reduces of float32 buffers of each size, as DDP's gradient sync does.

    A barrier precedes every timed call, so each duration runs from this rank's release
    to the end of the collective; the coordinator takes the shortest across ranks (the
    last rank released), which is the collective's own cost once everyone has arrived.
    """
    with process_group(msg) as (_, device, _):
        result = {}
        for nbytes in (int(n) for n in msg["sizes"]):
            buf = torch.ones(max(1, nbytes // 4), dtype=torch.float32, device=device)
            times = []
            for i in range(int(msg["warmup"]) + int(msg["repeats"])):
                dist.barrier()
                t0 = time.perf_counter()
                dist.all_reduce(buf, op=dist.ReduceOp.SUM)
                if device.type == "cuda":
                    torch.cuda.synchronize(device)
                if i >= int(msg["warmup"]):
                    times.append(time.perf_counter() - t0)
            result[str(nbytes)] = times
    return {"times": result}


def train(msg: dict[str, Any], conn: SharedConnection) -> dict[str, Any]:
    """Run this device's rank of a DDP job (or of a dynamically dispatched one).

    An elastic run (``msg["elastic"]``) stays in memory after a failed step, so a
    ``resume`` can take it on in a re-formed group; profiling runs are not kept.
    """
    # Paced from the request on: the set-up (data, model, rendezvous) runs unpaced, and
    # its CPU time is slept off before the first step instead of adding to its burst.
    pace = _pacer_for(float(msg.get("intensity", 1.0)))
    ctx = _start_run(msg)
    return _segment(ctx, msg, conn, pace)


def _start_run(msg: dict[str, Any]) -> RunContext:
    """A run's context from the job, data and weights ``msg`` names (kept in memory when
    the run is elastic)."""
    job = JobSpec.model_validate(msg["job"])
    x, y, ds = _dataset(msg["data"])
    steps_per_epoch = math.ceil(len(ds) / sum(msg["local_batches"]))
    ctx = new_run(msg, job, _model(job, ds, msg.get("state")), x, y, steps_per_epoch)
    _runs.clear()  # one run at a time: an earlier run's state is of no more use
    if msg.get("elastic"):
        _runs[ctx.run_id] = ctx
    return ctx


def resume(msg: dict[str, Any], conn: SharedConnection) -> dict[str, Any]:
    """Go on with a run kept in memory, in the re-formed group ``msg`` describes, from
    ``msg["completed"]`` global steps (with another survivor's state if this one is
    behind; a device joining the run starts it from that state)."""
    ctx = _runs.get(msg["run_id"])
    if ctx is None and msg.get("state_blob") is not None:  # joining a running job
        ctx = _start_run(msg)
    if ctx is None:
        raise DeepEdgeError(
            f"run {msg['run_id']} is not in memory on this agent",
            hint="start the run again, or resume it from its checkpoint",
        )
    if msg.get("state_blob") is not None:
        import_state(ctx, msg["state_blob"], int(msg["completed"]))
    return _segment(ctx, msg, conn, _pacer_for(float(msg.get("intensity", 1.0))))


def export(msg: dict[str, Any]) -> dict[str, Any]:
    """A kept run's model and optimiser state, for survivors that are a step behind."""
    ctx = _runs[msg["run_id"]]
    return {"state_blob": export_state(ctx), "completed": ctx.completed}


def _segment(
    ctx: RunContext, msg: dict[str, Any], conn: SharedConnection, pace: CpuPacer | None
) -> dict[str, Any]:
    return run_segment(
        ctx,
        msg,
        conn,
        pace=pace,
        pacer_for=_pacer_for,
        reset_peak=_peak_memory_reset,
        peak_memory=_peak_memory_mb,
    )


def _pacer_for(intensity: float) -> CpuPacer | None:
    """The pacing for a training intensity (a share of the device's CPU, from the plan).

    Below 1 the trainer sleeps between steps so it uses at most that share on average,
    leaving the rest to the device's LC apps; the fallback emulation's own fence (if any)
    still applies when it is tighter.
    """
    if intensity >= 1.0:
        return _pacer
    cores = intensity * _cpu_cores
    if _pacer is not None:
        cores = min(cores, _pacer.cores)
    return CpuPacer(cores)


def _serve(conn: Connection) -> None:
    shared = SharedConnection(conn)  # the training loop's heartbeats share it
    while True:
        try:
            msg = conn.recv()
        except (EOFError, ConnectionResetError):
            return
        op = msg.get("op")
        if op == "shutdown":
            return
        try:
            if op == "allreduce":
                result = allreduce(msg)
            elif op in ("train", "resume"):
                # an elastic run's liveness: beats from the request on, through the data,
                # the rendezvous and the model's broadcast, which a starved peer can hold
                # up for seconds, not only while steps run
                with Heartbeat(shared) if msg.get("elastic") else contextlib.nullcontext():
                    result = (train if op == "train" else resume)(msg, shared)
            elif op == "export":
                result = export(msg)
            else:
                raise ValueError(f"unknown op {op!r}")
            # an interrupted elastic run is not done: the coordinator re-forms the group
            shared.send({"event": "done", "ok": not result.get("interrupted"), **result})
        except DeepEdgeError as err:
            shared.send({"event": "done", "ok": False, "error": err.one_line()})
        except Exception as err:  # report, then keep serving: the coordinator decides
            traceback.print_exc()  # into the agent's log, which the coordinator's error names
            shared.send(
                {
                    "event": "done",
                    "ok": False,
                    "error": f"{type(err).__name__}: {err}",
                    "traceback": traceback.format_exc(),
                }
            )


def _warm_up() -> None:
    """Pay torch's one-off lazy imports (the optimisers pull in torch._dynamo: about a
    CPU-second) now, while the device boots without its CPU limit, instead of inside the
    first profile or training run on a throttled board."""
    model = torch.nn.Linear(4, 2)
    for name in ("sgd", "adam"):
        opt = build_optimizer(model.parameters(), OptimizerSpec(name=name))
        torch.nn.functional.cross_entropy(
            model(torch.ones(2, 4)), torch.zeros(2, dtype=torch.long)
        ).backward()
        opt.step()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--address", required=True)
    parser.add_argument("--device", required=True)
    parser.add_argument("--cpu-cores", type=float, default=1.0)
    parser.add_argument("--pace-cores", type=float, default=None)
    args = parser.parse_args(argv)
    priority = yield_cpu_to_lc_apps()
    print(f"training CPU priority: {priority}", file=sys.stderr, flush=True)
    # One intra-op thread per emulated core: more threads than the quota only adds
    # contention inside the device's cgroup.
    torch.set_num_threads(max(1, math.ceil(args.cpu_cores)))
    global _cpu_cores
    _cpu_cores = args.cpu_cores
    if args.pace_cores:
        global _pacer
        _pacer = CpuPacer(args.pace_cores)
    _warm_up()
    host, port = args.address.rsplit(":", 1)
    key = bytes.fromhex(os.environ["DEEPEDGE_AGENT_KEY"])
    with Client((host, int(port)), authkey=key) as conn:
        conn.send(
            {
                "event": "hello",
                "device": args.device,
                "pid": os.getpid(),
                "rss_mb": psutil.Process().memory_info().rss / 2**20,
            }
        )
        _serve(conn)
    return 0


if __name__ == "__main__":
    sys.exit(main())
