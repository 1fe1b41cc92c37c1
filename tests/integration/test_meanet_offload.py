"""MEANet deployed input by input: exits at the main block, the extension block and the
cloud, the cloud a real replica process behind a relay that adds a WAN's round trip."""

from __future__ import annotations

import asyncio
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

from deepedge.apps import wait_ready
from deepedge.apps.loadgen import LoadGenerator, LoadTarget
from deepedge.apps.server import HEADER, REPLY
from deepedge.cluster.wan import DelayRelay
from deepedge.launch.plan import free_port
from deepedge.meanet import (
    ExitRule,
    MeanetConfig,
    Routing,
    exit_outputs,
    load_data,
    load_models,
    route,
    train_models,
)
from deepedge.meanet.offload import CloudClient, classify_test_set

RTT_S = 0.2  # long enough that no stall of an edge pass on a loaded machine reaches it


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("meanet")
    cfg = MeanetConfig(classes=6, image_size=8, train_size=240, test_size=60, width=4, epochs=2)
    cfg = MeanetConfig(**{**cfg.__dict__, "cloud_width": 8, "cloud_depth": 1})
    train, test = load_data(cfg)
    train_models(cfg, train).save(out)
    test.save(out / "test.npz")
    return out


def replica(
    checkpoint: Path, name: str, workdir: Path, *extra: str
) -> tuple[subprocess.Popen, int]:
    ready = workdir / f"{name}.json"
    proc = subprocess.Popen(
        [sys.executable, "-m", "deepedge.serving.replica", "--checkpoint", str(checkpoint),
         "--name", name, "--ready-file", str(ready), "--warmup", "2", *extra],
        stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        return proc, wait_ready(ready, proc, timeout_s=120)
    except BaseException:
        proc.kill()
        proc.wait()
        raise


def edge_replica(
    trained: Path, name: str, cloud: str, rule: ExitRule
) -> tuple[subprocess.Popen, int]:
    """A replica of the trained edge checkpoint applying ``rule``, its cloud at ``cloud``."""
    return replica(
        trained / "meanet-edge.ckpt", name, trained, "--cloud", cloud,
        "--main-threshold", str(rule.main_threshold),
        "--cloud-threshold", str(rule.cloud_threshold),
    )  # fmt: skip


@pytest.fixture(scope="module")
def cloud(trained: Path) -> Iterator[DelayRelay]:
    proc, port = replica(trained / "meanet-cloud.ckpt", "cloud", trained)
    try:
        with DelayRelay("127.0.0.1", port, RTT_S) as relay:
            yield relay
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def between(values: torch.Tensor) -> float:
    """A threshold halfway between the two middle values: half fall on each side, and
    none so near it that batched and one-at-a-time float results could differ."""
    v = values.sort().values
    return float(v[len(v) // 2 - 1] + v[len(v) // 2]) / 2


def rule_with_every_exit(trained: Path) -> tuple[ExitRule, Routing]:
    """Thresholds in the middle of the test set's entropies, so each exit gets inputs."""
    models = load_models(trained)
    x, y = load_data(models.config)[1].to_tensors()
    outputs = exit_outputs(models.edge, models.cloud, x, y)
    main_t = between(outputs.main_entropy[outputs.main_settles])
    rest = ~(outputs.main_settles & (outputs.main_entropy < main_t))
    rule = ExitRule(main_t, between(outputs.edge_entropy[rest]))
    return rule, route(outputs, rule)


def test_each_input_exits_where_the_offline_rule_says_and_the_cloud_costs_a_round_trip(
    trained: Path, cloud: DelayRelay
) -> None:
    rule, offline = rule_with_every_exit(trained)

    async def run() -> dict:
        client = CloudClient("127.0.0.1", cloud.port)
        try:
            return await classify_test_set(trained, trained / "test.npz", rule, client)
        finally:
            client.close()

    result = asyncio.run(run())
    exits = torch.tensor(result["exits"])
    assert {0, 1, 2} <= set(exits.tolist())
    assert torch.equal(exits, offline.exit)
    assert torch.equal(torch.tensor(result["predictions"]), offline.prediction)
    # every cloud input paid the relay's round trip; edge exits never did
    latency = torch.tensor(result["latency_s"])
    assert min(result["cloud_rtt_s"]) >= RTT_S
    assert float(latency[exits < 2].max()) < RTT_S <= float(latency[exits == 2].min())


def test_an_edge_replica_serves_meanet_and_sends_uncertain_inputs_to_the_cloud(
    trained: Path, cloud: DelayRelay
) -> None:
    rule, offline = rule_with_every_exit(trained)
    edge, port = edge_replica(trained, "edge", f"127.0.0.1:{cloud.port}", rule)
    try:
        from deepedge.data import ArrayDataset

        images = ArrayDataset.load(trained / "test.npz").images
        first = {e: offline.exit.tolist().index(e) for e in (0, 1, 2)}
        to_cloud, at_edge = (
            socket.create_connection(("127.0.0.1", port), timeout=30) for _ in range(2)
        )
        with to_cloud, at_edge:
            for sock, i in ((to_cloud, first[2]), (at_edge, first[0]), (at_edge, first[1])):
                payload = images[i].tobytes()
                sock.sendall(HEADER.pack(len(payload)) + payload)
                if sock is at_edge:  # answered while the cloud input still waits
                    label, _ = REPLY.unpack(sock.recv(REPLY.size, socket.MSG_WAITALL))
                    assert label == int(offline.prediction[i])
            at_edge.setblocking(True)
            to_cloud.setblocking(False)
            with pytest.raises(BlockingIOError):
                to_cloud.recv(REPLY.size)  # not yet: the relay holds it for an RTT
            to_cloud.setblocking(True)
            label, service_us = REPLY.unpack(to_cloud.recv(REPLY.size, socket.MSG_WAITALL))
            assert label == int(offline.prediction[first[2]])
            assert service_us >= RTT_S * 1e6  # the replica's time includes the wait
        # the load generator's requests carry the test images in turn: request k, image k
        gen = LoadGenerator(
            [LoadTarget("edge", "127.0.0.1", port, 30.0, images=str(trained / "test.npz"),
                        payload_bytes=images[0].size)],
            seed=1, duration_s=2.0,
        )  # fmt: skip
        with gen:
            deadline = time.monotonic() + 60
            while gen.running() and time.monotonic() < deadline:  # it stops by itself
                time.sleep(0.1)
            records = gen.stop()
        assert len(records) > 20 and all(r.ok for r in records)
        for k, r in enumerate(records):
            assert (r.service_ms >= RTT_S * 1e3) == (int(offline.exit[k % len(images)]) == 2)
    finally:
        edge.terminate()
        assert edge.wait(timeout=30) == 0


def test_a_cloud_that_is_gone_is_a_one_line_error(trained: Path, tmp_path: Path) -> None:
    port = free_port()  # nothing listens there
    out = tmp_path / "r.json"
    proc = subprocess.run(
        [sys.executable, "-m", "deepedge.meanet.offload", "--models", str(trained),
         "--test", str(trained / "test.npz"), "--out", str(out), "--cloud-only",
         "--cloud", f"127.0.0.1:{port}"],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode != 0 and not out.exists()
    assert len(lines) == 1 and "did not answer" in lines[0], proc.stderr


def test_a_replica_whose_cloud_is_gone_answers_at_the_edge(trained: Path) -> None:
    from deepedge.data import ArrayDataset

    models = load_models(trained)
    x, y = load_data(models.config)[1].to_tensors()
    rule, offline = rule_with_every_exit(trained)
    edge_only = route(exit_outputs(models.edge, None, x, y), rule)  # no cloud: its answer
    edge, port = edge_replica(trained, "edge-alone", f"127.0.0.1:{free_port()}", rule)
    try:
        i = offline.exit.tolist().index(2)  # an input the rule sends to the cloud
        payload = ArrayDataset.load(trained / "test.npz").images[i].tobytes()
        with socket.create_connection(("127.0.0.1", port), timeout=30) as sock:
            sock.sendall(HEADER.pack(len(payload)) + payload)
            label, _ = REPLY.unpack(sock.recv(REPLY.size, socket.MSG_WAITALL))
        assert label == int(edge_only.prediction[i])
    finally:
        edge.terminate()
        assert edge.wait(timeout=30) == 0
