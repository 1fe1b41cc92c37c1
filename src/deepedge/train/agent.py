"""The training agent: one long-lived process per device, inside the device's fence.

It imports torch once (seconds on a slow board) and then runs what the coordinator asks:
a throughput probe, or its rank of a DDP run. Messages are dicts over a
``multiprocessing.connection`` socket to the coordinator (loopback, or the bridge with
per-device network namespaces), authenticated with a per-session key.
On the Ray backend the same operations become methods of a per-node actor.

Run as ``python -m deepedge.train.agent --address HOST:PORT --device NAME`` with the key in
``DEEPEDGE_AGENT_KEY`` (hex).
"""

from __future__ import annotations

import argparse
import datetime
import math
import os
import resource
import statistics
import sys
import time
import traceback
from multiprocessing.connection import Client, Connection
from pathlib import Path
from typing import Any

import psutil
import torch
import torch.distributed as dist

from deepedge.data import ArrayDataset
from deepedge.errors import DeepEdgeError
from deepedge.spec import JobSpec
from deepedge.train.checkpoint import CheckpointManager
from deepedge.train.ddp import CpuPacer, build_optimizer, run_epochs, select_backend, wrap_ddp
from deepedge.train.local import job_model

__all__ = ["main"]

_datasets: dict[str, tuple[torch.Tensor, torch.Tensor, ArrayDataset]] = {}
_pacer: CpuPacer | None = None  # set by --pace-cores: the fallback emulation's CPU fence


def _dataset(path: str) -> tuple[torch.Tensor, torch.Tensor, ArrayDataset]:
    if path not in _datasets:
        ds = ArrayDataset.load(path)
        x, y = ds.to_tensors()
        _datasets[path] = (x, y, ds)
    return _datasets[path]


def _model(job: JobSpec, ds: ArrayDataset, state_path: str | None) -> torch.nn.Module:
    model = job_model(job, ds)
    if state_path:
        model.load_state_dict(torch.load(state_path, weights_only=True))
    return model


def probe(msg: dict[str, Any]) -> dict[str, Any]:
    """Time single-process training steps at one batch size, on this device as loaded now."""
    job = JobSpec.model_validate(msg["job"])
    x, y, ds = _dataset(msg["data"])
    model = _model(job, ds, msg.get("state"))
    opt = build_optimizer(model.parameters(), job.optimizer)
    batch, times = int(msg["batch"]), []
    gen = torch.Generator().manual_seed(0)
    for i in range(int(msg["warmup"]) + int(msg["steps"])):
        idx = torch.randint(0, len(x), (batch,), generator=gen)
        t0 = time.perf_counter()
        opt.zero_grad()
        torch.nn.functional.cross_entropy(model(x[idx]), y[idx]).backward()
        opt.step()
        if _pacer:  # the fallback's slowdown is part of the step
            _pacer()
        if i >= int(msg["warmup"]):
            times.append(time.perf_counter() - t0)
    return {
        "batch": batch,
        "step_times": times,
        "median_step_s": statistics.median(times),
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,  # KiB on Linux
    }


def train(msg: dict[str, Any], conn: Connection) -> dict[str, Any]:
    """Run this device's rank of a DDP job; rank 0 writes the per-epoch checkpoints."""
    job = JobSpec.model_validate(msg["job"])
    rank, world = int(msg["rank"]), int(msg["world"])
    x, y, ds = _dataset(msg["data"])
    store = dist.TCPStore(
        msg["store_host"],
        int(msg["store_port"]),
        is_master=False,
        timeout=datetime.timedelta(seconds=60),
    )
    backend, device = select_backend(rank, world)
    dist.init_process_group(
        backend,
        store=dist.PrefixStore(msg["run_id"], store),
        rank=rank,
        world_size=world,
        timeout=datetime.timedelta(seconds=120),
    )
    try:
        model = _model(job, ds, msg.get("state"))
        wrapped = wrap_ddp(model, device)
        x, y = x.to(device), y.to(device)
        optimizer = build_optimizer(wrapped.module.parameters(), job.optimizer)
        ckpts = CheckpointManager(Path(msg["checkpoint_dir"])) if rank == 0 else None

        def on_epoch_end(epoch: int) -> None:
            if ckpts is not None:
                ckpts.save(
                    epoch,
                    {
                        "model": model.state_dict(),
                        "optimizer": optimizer.state_dict(),
                        "epoch": epoch,
                        "local_batches": msg["local_batches"],
                        "job": msg["job"],
                    },
                )

        def on_step(rec: Any) -> None:
            if rank == 0:
                conn.send({"event": "step", "epoch": rec.epoch, "step": rec.step})

        records = run_epochs(
            wrapped,
            optimizer,
            x,
            y,
            rank=rank,
            local_batches=msg["local_batches"],
            seed=job.seed,
            epochs=range(job.epochs),
            on_step=on_step,
            on_epoch_end=on_epoch_end,
            pace=_pacer,
        )
        dist.barrier()
    finally:
        dist.destroy_process_group()
    return {"steps": [r.to_dict() for r in records]}


def _serve(conn: Connection) -> None:
    while True:
        try:
            msg = conn.recv()
        except (EOFError, ConnectionResetError):
            return
        op = msg.get("op")
        if op == "shutdown":
            return
        try:
            if op == "probe":
                result = probe(msg)
            elif op == "train":
                result = train(msg, conn)
            else:
                raise ValueError(f"unknown op {op!r}")
            conn.send({"event": "done", "ok": True, **result})
        except DeepEdgeError as err:
            conn.send({"event": "done", "ok": False, "error": err.one_line()})
        except Exception as err:  # report, then keep serving: the coordinator decides
            traceback.print_exc()  # into the agent's log, which the coordinator's error names
            conn.send(
                {
                    "event": "done",
                    "ok": False,
                    "error": f"{type(err).__name__}: {err}",
                    "traceback": traceback.format_exc(),
                }
            )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--address", required=True)
    parser.add_argument("--device", required=True)
    parser.add_argument("--cpu-cores", type=float, default=1.0)
    parser.add_argument("--pace-cores", type=float, default=None)
    args = parser.parse_args(argv)
    # One intra-op thread per emulated core: more threads than the quota only adds
    # contention inside the device's cgroup.
    torch.set_num_threads(max(1, math.ceil(args.cpu_cores)))
    if args.pace_cores:
        global _pacer
        _pacer = CpuPacer(args.pace_cores)
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
