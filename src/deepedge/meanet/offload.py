"""MEANet deployed: one input at a time on an edge device, the hard ones sent to the cloud.

:class:`EdgeCloudClassifier` applies the exit rule of :mod:`deepedge.meanet.exits` to a
single image as a deployed edge does: it runs the main block, stops there when the input
exits, runs the adaptive and extension blocks only when it does not, and sends the image
to the cloud model over the network when the edge's answer is too uncertain. The cloud
is any server of the LC apps' wire protocol (:mod:`deepedge.apps.server`); in the
emulated cluster it is a :mod:`deepedge.serving.replica` of the cloud checkpoint on a
cloud device, reached through a shaped link and a :class:`~deepedge.cluster.wan.DelayRelay`.

Run on a device as ``python -m deepedge.meanet.offload`` to classify a saved test set
input by input (what ``bench/meanet.py`` measures); the serving replica uses the same
classifier for a MEANet checkpoint (``--cloud``).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from deepedge.apps.server import HEADER, REPLY
from deepedge.errors import ClusterError, DeepEdgeError
from deepedge.meanet.exits import EXITS, ExitRule, edge_distribution, normalised_entropy
from deepedge.models.meanet import MEANet

__all__ = ["CloudClient", "Decision", "EdgeCloudClassifier", "parse_address"]


def parse_address(text: str) -> tuple[str, int]:
    """``HOST:PORT`` as a pair; a malformed one is a one-line error."""
    host, sep, port = text.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ClusterError(f"bad cloud address {text!r}", hint="give it as HOST:PORT")
    return host, int(port)


class CloudClient:
    """Connections to the cloud model's server, one request on each at a time (as the
    serving front end keeps them), so that a replica can wait on several cloud answers at
    once while it goes on serving the edge's inputs. A cloud that does not answer is a
    :class:`~deepedge.errors.ClusterError` naming it (see :meth:`classify`).
    """

    def __init__(self, host: str, port: int, *, timeout_s: float = 30.0) -> None:
        self.address = (host, port)
        self.timeout_s = timeout_s
        self._idle: list[tuple[asyncio.StreamReader, asyncio.StreamWriter]] = []

    async def classify(self, payload: bytes) -> tuple[int, float, float]:
        """(class, round trip in s, the cloud's own service time in s) for one image.

        A pooled connection that turns out broken (the cloud restarted) is retried once
        on a new one, and the other pooled ones are dropped with it; a timeout is not
        retried (the cloud is slow, not gone: sending the image again would add load).
        """
        for attempt in (1, 2):
            t0 = time.perf_counter()
            writer = None
            try:
                async with asyncio.timeout(self.timeout_s):
                    if attempt == 1 and self._idle:
                        reader, writer = self._idle.pop()
                    else:
                        reader, writer = await asyncio.open_connection(*self.address)
                    writer.write(HEADER.pack(len(payload)) + payload)
                    await writer.drain()
                    reply = await reader.readexactly(REPLY.size)
            except (OSError, TimeoutError, asyncio.IncompleteReadError) as exc:
                if writer is not None:
                    writer.close()
                self.close()
                if attempt == 2 or isinstance(exc, TimeoutError):
                    raise ClusterError(
                        f"the cloud at {self.address[0]}:{self.address[1]} did not answer: "
                        f"{exc or type(exc).__name__}",
                        hint="check that the cloud replica runs and its address is right",
                    ) from None
                continue
            self._idle.append((reader, writer))
            label, service_us = REPLY.unpack(reply)
            return label, time.perf_counter() - t0, service_us / 1e6
        raise AssertionError("unreachable")

    def close(self) -> None:
        while self._idle:
            self._idle.pop()[1].close()


@dataclass(frozen=True)
class Decision:
    """Where one input left, its class, and (for the cloud) the round trip and the cloud's
    service time, in seconds."""

    label: int
    exit: str
    cloud_rtt_s: float = 0.0
    cloud_service_s: float = 0.0


class EdgeCloudClassifier:
    """MEANet's exit rule for one input at a time; the cloud exit needs ``cloud``.

    Without a cloud client an input the rule would send to the cloud keeps the edge's
    answer (it exits at the extension block), as :func:`deepedge.meanet.exits.route` does
    without cloud outputs.
    """

    def __init__(self, edge: MEANet, rule: ExitRule, cloud: CloudClient | None = None) -> None:
        self.edge = edge.eval()
        self.rule = rule
        self.cloud = cloud
        self._hard = edge.hard_classes.clone()

    @torch.inference_mode()
    def at_edge(self, x: torch.Tensor) -> Decision:
        """The edge's part for ``x``, a normalised ``(1, C, S, S)`` batch: a decision at the
        main or extension block, or ``exit == "cloud"`` with the edge's own answer when
        the cloud should decide."""
        features = self.edge.main_features(x)
        main = self.edge.main.head(self.edge.main.pool(features))
        probs = torch.softmax(main, 1)
        top = probs.argmax(1)
        if self.rule.exits_at_main(~torch.isin(top, self._hard), normalised_entropy(probs)):
            return Decision(int(top), "main")
        dist = edge_distribution(main, self.edge.extension_logits(x, features), self._hard)
        label = int(dist.argmax(1))
        if self.cloud is None or not self.rule.goes_to_cloud(normalised_entropy(dist)):
            return Decision(label, "extension")
        return Decision(label, "cloud")

    async def classify(self, x: torch.Tensor, payload: bytes) -> Decision:
        """Where ``x`` leaves and its class; ``payload`` (its raw bytes) is what the cloud
        is sent."""
        decision = self.at_edge(x)
        if decision.exit != "cloud" or self.cloud is None:
            return decision
        label, rtt, service = await self.cloud.classify(payload)
        return Decision(label, "cloud", rtt, service)


async def classify_test_set(
    models_dir: Path,
    test_file: Path,
    rule: ExitRule,
    cloud: CloudClient | None,
    *,
    cloud_only: bool = False,
) -> dict[str, object]:
    """Classify every image of ``test_file`` (an :class:`~deepedge.data.ArrayDataset` file)
    one at a time, back to back, as the device it runs on would; per input: exit, class,
    latency."""
    from deepedge.data import ArrayDataset
    from deepedge.serving.model import load_served_model

    torch.set_num_threads(1)
    served = load_served_model(models_dir / "meanet-edge.ckpt")
    assert isinstance(served.model, MEANet)
    classifier = EdgeCloudClassifier(served.model, rule, cloud)
    test = ArrayDataset.load(test_file)
    images = test.images.reshape(len(test), -1)
    blank = served.to_input(bytes(images.shape[1]))
    for _ in range(3):  # warm-up: the first passes allocate
        classifier.at_edge(blank)
    decisions, latency = [], []
    for row in images:
        payload = row.tobytes()
        t0 = time.perf_counter()
        if cloud_only and cloud is not None:
            label, rtt, service = await cloud.classify(payload)
            decision = Decision(label, "cloud", rtt, service)
        else:
            decision = await classifier.classify(served.to_input(payload), payload)
        latency.append(time.perf_counter() - t0)
        decisions.append(decision)
    return {
        "rule": asdict(rule),
        "cloud_only": cloud_only,
        "labels": test.labels.tolist(),
        "predictions": [d.label for d in decisions],
        "exits": [EXITS.index(d.exit) for d in decisions],
        "latency_s": latency,
        "cloud_rtt_s": [d.cloud_rtt_s for d in decisions if d.exit == "cloud"],
        "cloud_service_s": [d.cloud_service_s for d in decisions if d.exit == "cloud"],
    }


async def _run(args: argparse.Namespace) -> dict[str, object]:
    rule = ExitRule(args.main_threshold, args.cloud_threshold)
    if args.cloud_only and not args.cloud:
        raise ClusterError("--cloud-only needs --cloud HOST:PORT")
    cloud = CloudClient(*parse_address(args.cloud)) if args.cloud else None
    try:
        return await classify_test_set(
            args.models, args.test, rule, cloud, cloud_only=args.cloud_only
        )
    finally:
        if cloud is not None:
            cloud.close()


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m deepedge.meanet.offload", description=__doc__)
    ap.add_argument("--models", type=Path, required=True, help="folder meanet train wrote")
    ap.add_argument("--test", type=Path, required=True, help="an ArrayDataset .npz file")
    ap.add_argument("--out", type=Path, required=True, help="JSON file for the results")
    ap.add_argument("--cloud", help="HOST:PORT of the cloud model's server")
    ap.add_argument("--main-threshold", type=float, default=ExitRule.main_threshold)
    ap.add_argument("--cloud-threshold", type=float, default=ExitRule.cloud_threshold)
    ap.add_argument("--cloud-only", action="store_true", help="send every input to the cloud")
    args = ap.parse_args(argv)
    try:
        result = asyncio.run(_run(args))
    except DeepEdgeError as exc:
        print(f"meanet offload: {exc.one_line()}", file=sys.stderr, flush=True)
        return exc.exit_code
    except ValueError as exc:  # a threshold out of [0, 1]
        print(f"meanet offload: {exc}", file=sys.stderr, flush=True)
        return 2
    tmp = args.out.with_suffix(".tmp")
    tmp.write_text(json.dumps(result))
    tmp.replace(args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
