"""All-reduce cost: measure it on the cluster's devices, fit a model, store it.

DDP synchronises gradients with one SUM all-reduce per step (one bucket for the small
models here). Gloo's ring all-reduce moves ``2(k−1)/k`` times the buffer through every
rank and takes ``2(k−1)`` hops, so the cost is modelled as

    C(k, n) = α + β·(k − 1) + γ·n·2(k − 1)/k / w_k

with non-negative coefficients fitted to measurements, where w_k is the slowest link's
Mbit/s among the k devices (with ``network: netns``; 1 on loopback). On the emulated
cluster the gloo threads run inside each device's CPU quota, so on loopback γ reflects
the slow devices' CPU rather than a wire.

Measurements use the k fastest devices (by catalog capacity) for k = 2..n: the prefixes a
planner that drops slow devices first will use. The key names the network, the emulation
and every candidate device, so a changed cluster gets a new model.
"""

from __future__ import annotations

import json
import statistics
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING

import numpy as np
from scipy import optimize

from deepedge.profile.kb import CommPoint, KnowledgeBase
from deepedge.spec import ClusterSpec

if TYPE_CHECKING:  # the agents import torch; the knowledge base alone must not
    from deepedge.train.pool import AgentPool

__all__ = ["CommModel", "bottleneck_mbps", "fabric_key", "measure_comm", "message_sizes"]


def fabric_key(cluster: ClusterSpec, names: Sequence[str], emulation: str) -> str:
    """Canonical JSON naming the network, the emulation and the candidate devices in order."""
    by_name = {d.name: d for d in cluster.devices}
    devices = [[by_name[n].kind, by_name[n].cpu_cores, by_name[n].link_mbps] for n in names]
    payload = {
        "network": cluster.network,
        "emulation": emulation,
        "cpu_period_us": cluster.cpu_period_us,
        "devices": devices,
    }
    return json.dumps(payload, sort_keys=True, separators=(",", ":"))


def message_sizes(grad_bytes: int) -> list[int]:
    """Sizes around the model's gradient: a quarter, the gradient itself, four times it."""
    return sorted({max(4, grad_bytes // 4), grad_bytes, grad_bytes * 4})


def bottleneck_mbps(fabric: str) -> tuple[float, ...]:
    """Per k = 2..n, the slowest shaped link among the k first devices of ``fabric``.

    A ring all-reduce moves every byte through every link, so the slowest one sets the
    pace. Without shaping (loopback) every entry is 1: the per-byte coefficient is then
    plain seconds per byte (in practice the devices' CPU, not a wire).
    """
    spec = json.loads(fabric)
    n = len(spec["devices"])
    if spec["network"] != "netns":
        return (1.0,) * max(0, n - 1)
    links = [d[2] or 1000.0 for d in spec["devices"]]  # netns links default to 1 Gbit/s
    return tuple(min(links[:k]) for k in range(2, n + 1))


def _features(workers: float, nbytes: float, bottleneck: float) -> list[float]:
    return [1.0, workers - 1.0, nbytes * 2.0 * (workers - 1.0) / workers / bottleneck]


@dataclass(frozen=True)
class CommModel:
    """Fitted ``C(k, n)`` (see the module doc); ``points`` is how many medians it saw.

    ``per_byte_s`` is seconds per byte at a 1 Mbit/s bottleneck (divided by the
    bottleneck's Mbit/s for k workers), or seconds per byte without shaping.
    """

    alpha_s: float
    per_worker_s: float
    per_byte_s: float
    bottleneck_mbps: tuple[float, ...]  # for k = 2, 3, ...
    points: int
    max_rel_residual: float

    @classmethod
    def fit(cls, points: Sequence[CommPoint], bottleneck: Sequence[float]) -> CommModel:
        if not points:
            raise ValueError("CommModel.fit needs at least one measurement")
        bw = tuple(bottleneck)
        rows = [_features(p.workers, p.nbytes, bw[min(p.workers, len(bw) + 1) - 2]) for p in points]
        medians = np.array([statistics.median(p.times_s) for p in points])
        # relative errors weigh equally: scale every row by its own time
        design = np.array(rows) / medians[:, None]
        coef, _ = optimize.nnls(design, np.ones(len(points)))
        predicted = np.array(rows) @ coef
        worst = float(np.max(np.abs(predicted - medians) / medians))
        return cls(float(coef[0]), float(coef[1]), float(coef[2]), bw, len(points), worst)

    def predict(self, workers: int, nbytes: int) -> float:
        """Seconds for one all-reduce over the ``workers`` first devices of the fabric."""
        if workers <= 1:
            return 0.0
        bw = self.bottleneck_mbps[min(workers, len(self.bottleneck_mbps) + 1) - 2]
        a, b, c = _features(workers, nbytes, bw)
        return a * self.alpha_s + b * self.per_worker_s + c * self.per_byte_s

    def to_dict(self) -> dict[str, object]:
        return asdict(self)


def measure_comm(
    agents: AgentPool,
    kb: KnowledgeBase,
    fabric: str,
    fastest_first: Sequence[str],
    grad_bytes: int,
    *,
    refresh: bool = False,
    repeats: int = 7,
) -> tuple[CommModel | None, bool]:
    """The all-reduce model for ``fabric``: from the knowledge base, or measured now.

    Returns ``(model, reused)``; the model is None with fewer than two devices.
    """
    if len(fastest_first) < 2:
        return None, False
    stored = [] if refresh else kb.comm_points(fabric)
    if stored and {p.workers for p in stored} >= set(range(2, len(fastest_first) + 1)):
        return CommModel.fit(stored, bottleneck_mbps(fabric)), True
    if refresh:
        kb.invalidate_comm(fabric)
    sizes = message_sizes(grad_bytes)
    for k in range(2, len(fastest_first) + 1):
        for nbytes, times in agents.allreduce(fastest_first[:k], sizes, repeats=repeats).items():
            kb.add_comm_point(fabric, k, nbytes, times)
    return CommModel.fit(kb.comm_points(fabric), bottleneck_mbps(fabric)), False
