"""What each rank of a launched script is told: torchrun's environment and its plan.

Pure Python (no torch, no cluster): the launcher builds these on the coordinator, the
ranks read them back (:func:`rank_plan`) and tests check them without booting anything.

The plan travels as JSON in ``DEEPEDGE_PLAN`` rather than as more ``DEEPEDGE_*``
variables so that a rank reads one consistent snapshot: its own share, every rank's share
(the sampler cuts each global batch at the same offsets on every rank) and its intensity.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import sys
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from deepedge.errors import SpecError, UsageError
from deepedge.spec import ExcludedDevice, Plan, parse_spec, read_spec_file

__all__ = [
    "PLAN_ENV",
    "RankPlan",
    "equal_plan",
    "free_port",
    "load_plan_file",
    "rank_plan",
    "rank_plans",
    "script_argv",
    "torchrun_env",
]

PLAN_ENV = "DEEPEDGE_PLAN"


@dataclass(frozen=True)
class RankPlan:
    """One rank's view of the plan (``DEEPEDGE_PLAN``); ranks are in the plan's order."""

    policy: str
    rank: int
    device: str
    devices: tuple[str, ...]
    global_batch: int
    local_batches: tuple[int, ...]
    intensities: tuple[float, ...]
    cpu_cores: float | None = None
    """The device's capacity in host cores (what the intensity is a share of)."""
    pace_cores: float | None = None
    """Cores this rank should average between batches (intensity × capacity); None: no
    pacing. Without cgroups the backend's duty cycle fences every rank anyway."""

    @property
    def world_size(self) -> int:
        return len(self.devices)

    @property
    def local_batch(self) -> int:
        return self.local_batches[self.rank]

    @property
    def intensity(self) -> float:
        return self.intensities[self.rank]

    def to_json(self) -> str:
        data = asdict(self)
        data.update(world_size=self.world_size, local_batch=self.local_batch)
        data["intensity"] = self.intensity
        return json.dumps(data, separators=(",", ":"))

    @classmethod
    def from_json(cls, text: str) -> RankPlan:
        """Parse ``DEEPEDGE_PLAN``; a malformed value is a one-line SpecError, not a
        KeyError deep inside a user's script."""
        try:
            d = json.loads(text)
            plan = cls(
                policy=str(d["policy"]),
                rank=int(d["rank"]),
                device=str(d["device"]),
                devices=tuple(str(n) for n in d["devices"]),
                global_batch=int(d["global_batch"]),
                local_batches=tuple(int(b) for b in d["local_batches"]),
                intensities=tuple(float(c) for c in d["intensities"]),
                cpu_cores=None if d.get("cpu_cores") is None else float(d["cpu_cores"]),
                pace_cores=None if d.get("pace_cores") is None else float(d["pace_cores"]),
            )
        except (ValueError, TypeError, KeyError) as err:
            raise SpecError(
                f"{PLAN_ENV} is not a deepedge rank plan: {err}",
                hint="it is set by `deepedge launch`; unset it to run without a plan",
            ) from None
        n = len(plan.devices)
        if not (
            0 <= plan.rank < n
            and len(plan.local_batches) == n
            and len(plan.intensities) == n
            and sum(plan.local_batches) == plan.global_batch
            and all(b > 0 for b in plan.local_batches)
        ):
            raise SpecError(
                f"{PLAN_ENV} is inconsistent (rank {plan.rank} of {n} devices, local batches "
                f"{list(plan.local_batches)} for a global batch of {plan.global_batch})",
                hint="it is set by `deepedge launch`; do not edit it",
            )
        return plan


def rank_plan(environ: Mapping[str, str] | None = None) -> RankPlan | None:
    """This rank's plan when it was started by ``deepedge launch``; None otherwise (plain
    torchrun, a single process)."""
    text = (os.environ if environ is None else environ).get(PLAN_ENV)
    return RankPlan.from_json(text) if text else None


def _pace_cores(intensity: float, cores: float | None) -> float | None:
    """Below full intensity a rank paces to its share of the device's cores."""
    return intensity * cores if intensity < 1.0 and cores else None


def rank_plans(plan: Plan, cores: Mapping[str, float | None]) -> list[RankPlan]:
    """One :class:`RankPlan` per device of ``plan``, rank ``i`` for its ``i``-th device."""
    if plan.dynamic:
        raise UsageError(
            "a dynamic (micro-batch dispatch) plan cannot be launched: a script's steps "
            "need a fixed local batch",
            hint="use --policy deep-edge, proportional or equal",
        )
    devices = tuple(plan.local_batches)
    batches = tuple(plan.local_batches[n] for n in devices)
    intensities = tuple(float(plan.intensities.get(n, 1.0)) for n in devices)
    return [
        RankPlan(
            policy=plan.policy,
            rank=rank,
            device=name,
            devices=devices,
            global_batch=plan.global_batch,
            local_batches=batches,
            intensities=intensities,
            cpu_cores=cores.get(name),
            pace_cores=_pace_cores(intensities[rank], cores.get(name)),
        )
        for rank, name in enumerate(devices)
    ]


def torchrun_env(
    rp: RankPlan, *, master_addr: str, master_port: int, run_id: str
) -> dict[str, str]:
    """What torchrun sets for a rank, one node per device with one process each, plus
    the plan (``DEEPEDGE_PLAN``) and the device's name (``DEEPEDGE_DEVICE``)."""
    world, rank = str(rp.world_size), str(rp.rank)
    return {
        "RANK": rank,
        "WORLD_SIZE": world,
        "LOCAL_RANK": "0",
        "LOCAL_WORLD_SIZE": "1",
        "GROUP_RANK": rank,  # the node's rank: one node per device
        "GROUP_WORLD_SIZE": world,
        "ROLE_NAME": "default",
        "ROLE_RANK": rank,
        "ROLE_WORLD_SIZE": world,
        "MASTER_ADDR": master_addr,
        "MASTER_PORT": str(master_port),
        "TORCHELASTIC_RUN_ID": run_id,
        "TORCHELASTIC_RESTART_COUNT": "0",
        "TORCHELASTIC_MAX_RESTARTS": "0",
        "TORCHELASTIC_USE_AGENT_STORE": "False",
        PLAN_ENV: rp.to_json(),
        "DEEPEDGE_DEVICE": rp.device,
    }


def equal_plan(
    names: Sequence[str], global_batch: int, excluded: Sequence[ExcludedDevice] = ()
) -> Plan:
    """The same share on every usable device (plain DDP), planned without profiling."""
    from deepedge.plan import equal_split

    return equal_split(list(names), global_batch, excluded=excluded)


def load_plan_file(path: Path) -> Plan:
    """A saved plan: a :class:`~deepedge.spec.Plan` in JSON or YAML, or a report (``deepedge
    train``'s report.json, a launch's plan.json) that holds one under ``plan``."""
    data: Any = read_spec_file(path, expect="plan")
    if isinstance(data, dict) and isinstance(data.get("plan"), dict):
        data = data["plan"]
    return parse_spec(Plan, data, source=str(path))


def script_argv(script: str, args: Sequence[str], *, python: str = sys.executable) -> list[str]:
    """The command a rank runs: a ``.py`` file under this Python (as torchrun does), any
    other file or command as it is (torchrun's ``--no-python``)."""
    path = Path(script)
    if path.suffix == ".py":
        if not path.is_file():
            raise UsageError(
                f"script {script} not found", hint="give the path of a Python training script"
            )
        return [python, str(path), *args]
    if path.is_file():
        if not os.access(path, os.X_OK):
            raise UsageError(
                f"{script} is neither a .py script nor executable",
                hint=f"chmod +x {script}, or name a Python script",
            )
        return [str(path.resolve()), *args]
    found = shutil.which(script)
    if found is None:
        raise UsageError(
            f"script {script} not found", hint="give the path of a Python training script"
        )
    return [found, *args]


def free_port(host: str = "127.0.0.1") -> int:
    """A port free on ``host`` now (bound to 0 and released), as torchrun picks one."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])
