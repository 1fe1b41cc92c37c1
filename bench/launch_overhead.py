"""Benchmark: what `deepedge launch` costs over torchrun on the same devices.

One emulated cluster (:data:`CLUSTER`: two devices, no LC apps, so nothing but the
launchers differ) is booted once. On its devices the equal-split torchrun-style script
(`examples/torchrun_train.py`, DistributedSampler + DDP over gloo) runs, alternately:

* ``deepedge``: the launcher's rank group (:class:`deepedge.launch.RankGroup`, what
  `deepedge launch` runs once it has planned and booted): one rank per device, spawned
  in it with torchrun's environment, at the trainer's CPU priority, logs per rank;
* ``torchrun``: one ``torchrun --nnodes N --node-rank i --nproc-per-node 1`` per device,
  each spawned inside its device (``DeviceHandle.spawn``), static rendezvous at the first
  device's address: the usual multi-node torchrun, node = device.

Both get the same extra environment (deepedge's steady malloc thresholds). The wall time
is from the first spawn to the last rank's exit; booting the cluster is not counted for
either (`deepedge launch` on the command line also boots and tears down the devices,
which torchrun on real boards does not do). Target: median ratio deepedge / torchrun
<= 1.05. The machine must be otherwise idle.

    .venv/bin/python bench/launch_overhead.py [--repeats 5] [--epochs 20]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from _common import machine, write_results
from deepedge.cluster import DeviceHandle, make_backend
from deepedge.cluster.workers import STEADY_MALLOC_ENV
from deepedge.errors import TrainingError
from deepedge.launch.plan import equal_plan, free_port, rank_plans
from deepedge.launch.runner import RankGroup
from deepedge.spec import ClusterSpec

ROOT = Path(__file__).resolve().parent.parent
SCRIPT = ROOT / "examples" / "torchrun_train.py"
CLUSTER = {
    "name": "launch-overhead",
    "devices": [
        {"name": "dev-0", "kind": "custom", "cpu_cores": 0.9, "memory_mb": 4096},
        {"name": "dev-1", "kind": "custom", "cpu_cores": 0.9, "memory_mb": 4096},
    ],
}
TARGET = 1.05


def _script_args(epochs: int, out: Path) -> list[str]:
    return [str(SCRIPT), "--epochs", str(epochs), "--out", str(out)]


def time_deepedge(devices: Mapping[str, DeviceHandle], epochs: int, work: Path) -> float:
    """The launcher's rank group on ``devices``: seconds from spawn to the last exit."""
    names = list(devices)
    plan = equal_plan(names, 64)
    ranks = rank_plans(plan, {n: devices[n].spec.cpu_cores for n in names})
    group = RankGroup(
        devices,
        ranks,
        [sys.executable, *_script_args(epochs, work / "snap-deepedge")],
        log_dir=work / "deepedge",
        env=dict(STEADY_MALLOC_ENV),
    )
    return group.run(timeout_s=600)


def time_torchrun(devices: Mapping[str, DeviceHandle], epochs: int, work: Path) -> float:
    """One torchrun per device (node rank = device), each inside its device."""
    names = list(devices)
    addr, port = devices[names[0]].address, free_port()
    (work / "torchrun").mkdir(parents=True, exist_ok=True)
    started = time.monotonic()
    procs = []
    for i, name in enumerate(names):
        dev = devices[name]
        argv = [
            sys.executable, "-m", "torch.distributed.run",
            "--nnodes", str(len(names)), "--node-rank", str(i), "--nproc-per-node", "1",
            "--master-addr", addr, "--master-port", str(port),
            *_script_args(epochs, work / "snap-torchrun"),
        ]  # fmt: skip
        env = dict(STEADY_MALLOC_ENV)
        if dev.interface:
            env["GLOO_SOCKET_IFNAME"] = dev.interface
        procs.append(dev.spawn(argv, env=env, log_path=work / "torchrun" / f"node-{i}.log"))
    codes = [p.wait(timeout=600) for p in procs]
    wall = time.monotonic() - started
    if any(codes):
        raise TrainingError(f"torchrun exited with {codes}", hint=f"see {work / 'torchrun'}")
    return wall


def run_launch_overhead(
    repeats: int = 5, *, epochs: int = 20, cluster: dict[str, Any] | None = None
) -> dict[str, Any]:
    """Alternate deepedge's launcher and torchrun on one booted cluster, ``repeats`` runs
    of each (the first of a pair swaps every repeat, so drift hits both alike)."""
    spec = ClusterSpec.model_validate(cluster or CLUSTER)
    backend = make_backend(spec)
    backend.start()
    runs: dict[str, list[float]] = {"deepedge": [], "torchrun": []}
    try:
        with tempfile.TemporaryDirectory(prefix="deepedge-launch-bench-") as tmp:
            work = Path(tmp)
            devices = backend.devices
            for r in range(repeats):
                order = ("deepedge", "torchrun") if r % 2 == 0 else ("torchrun", "deepedge")
                for which in order:
                    timer = time_deepedge if which == "deepedge" else time_torchrun
                    runs[which].append(timer(devices, epochs, work / f"{which}-{r}"))
        emulation = backend.emulation
    finally:
        backend.stop()
    med = {k: statistics.median(v) for k, v in runs.items()}
    ratio = med["deepedge"] / med["torchrun"]
    return {
        "machine": machine(emulation),
        "cluster": spec.model_dump(mode="json"),
        "epochs": epochs,
        "repeats": repeats,
        "runs_s": runs,
        "median_s": med,
        "ratio": ratio,
        "target": TARGET,
        "met": ratio <= TARGET,
    }


def markdown(result: dict[str, Any]) -> list[str]:
    med = result["median_s"]
    return [
        "# deepedge launch vs torchrun on the same devices",
        "",
        f"{len(result['cluster']['devices'])} devices, `examples/torchrun_train.py --epochs "
        f"{result['epochs']}`, {result['repeats']} alternated runs of each.",
        "",
        "| launcher | median wall (s) | runs (s) |",
        "| --- | ---: | --- |",
        *(
            f"| {k} | {med[k]:.2f} | {', '.join(f'{t:.2f}' for t in result['runs_s'][k])} |"
            for k in ("deepedge", "torchrun")
        ),
        "",
        f"ratio deepedge / torchrun: **{result['ratio']:.3f}** (target <= {result['target']}: "
        f"{'met' if result['met'] else 'missed'})",
    ]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--epochs", type=int, default=20)
    args = parser.parse_args()
    result = run_launch_overhead(args.repeats, epochs=args.epochs)
    lines = markdown(result)
    write_results("launch_overhead", result, lines)
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
