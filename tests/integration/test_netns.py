"""Per-device network namespaces: addresses, tbf-shaped links, DDP across them, teardown."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import pytest

from deepedge.cluster import LocalCluster
from deepedge.cluster.netns import NETNS_DIR, netns_available
from deepedge.spec import ClusterSpec
from tests.conftest import needs_cgroups

pytestmark = [
    needs_cgroups,
    pytest.mark.root,
    pytest.mark.skipif(not netns_available()[0], reason=netns_available()[1]),
    pytest.mark.timeout(300),
]

SINK = """
import json, os, socket, sys, time
srv = socket.create_server((sys.argv[1], 0))
with open(sys.argv[2] + ".part", "w") as f:  # renamed when complete: never read half-written
    f.write(str(srv.getsockname()[1]))
os.replace(sys.argv[2] + ".part", sys.argv[2] + ".port")
conn, _ = srv.accept()
start, total = None, 0
while chunk := conn.recv(65536):
    start = start or time.monotonic()
    total += len(chunk)
open(sys.argv[2], "w").write(json.dumps({"bytes": total, "seconds": time.monotonic() - start}))
"""

SOURCE = """
import socket, sys
with socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=30) as s:
    s.sendall(b"x" * int(sys.argv[3]))
"""


def _spec(mbps: float) -> ClusterSpec:
    return ClusterSpec.model_validate(
        {
            "network": "netns",
            "devices": [
                {"name": "a", "kind": "orin-nano", "link_mbps": mbps},
                {"name": "b", "kind": "orin-nano", "link_mbps": mbps},
            ],
        }
    )


def _transfer(cluster: LocalCluster, tmp_path: Path, nbytes: int) -> dict:
    a, b = cluster.devices["a"], cluster.devices["b"]
    result = tmp_path / "sink.json"
    sink = a.spawn([sys.executable, "-c", SINK, a.address, str(result)])
    port_file = Path(str(result) + ".port")
    deadline = time.monotonic() + 60
    while not port_file.exists():
        assert sink.poll() is None and time.monotonic() < deadline
        time.sleep(0.05)
    src = b.spawn([sys.executable, "-c", SOURCE, a.address, port_file.read_text(), str(nbytes)])
    assert src.wait(timeout=60) == 0
    assert sink.wait(timeout=60) == 0
    return json.loads(result.read_text())


def test_devices_get_own_namespace_and_shaped_link(tmp_path):
    cluster = LocalCluster(_spec(8))
    with cluster:
        a = cluster.devices["a"]
        assert a.address != "127.0.0.1" and a.address != cluster.devices["b"].address
        qdisc = subprocess.run(
            ["tc", "-n", a.link.netns, "qdisc", "show", "dev", "eth0"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout
        assert "tbf" in qdisc and "8Mbit" in qdisc
        got = _transfer(cluster, tmp_path, 2_000_000)
        assert got["bytes"] == 2_000_000
        # 16 Mbit over an 8 Mbit/s link cannot take less than ~2 s (loopback: milliseconds)
        assert got["seconds"] > 1.0, got
        netns = [link.netns for link in cluster.fabric.links.values()]
        bridge = cluster.fabric.bridge
    assert not any((NETNS_DIR / ns).exists() for ns in netns)
    links = subprocess.run(["ip", "-o", "link"], capture_output=True, text=True).stdout
    assert bridge not in links


def test_ddp_and_lc_traffic_cross_the_namespaces(tmp_path):
    from deepedge.control import Retraining
    from deepedge.data import build_dataset
    from deepedge.session import EdgeSession
    from deepedge.spec import JobSpec
    from deepedge.train import job_model

    spec = ClusterSpec.model_validate(
        {
            "network": "netns",
            "devices": [{"name": "a", "kind": "orin-nano"}, {"name": "b", "kind": "xavier-nx"}],
            "apps": [{"name": "cam", "device": "b", "rate_rps": 10, "deadline_ms": 500}],
        }
    )
    job = JobSpec.model_validate(
        {
            "model": {"arch": "small_cnn", "width": 8},
            "dataset": {"train_size": 96, "test_size": 16, "image_size": 16},
            "epochs": 1,
            "global_batch": 32,
        }
    )
    train_set = build_dataset(job.dataset, "train", drifted=False)
    with EdgeSession(spec, tmp_path) as session:
        assert session.cluster.coordinator_address != "127.0.0.1"
        retrain = Retraining(session, job, train_set, job_model(job, train_set).state_dict())
        run = retrain.run(retrain.plan(("proportional",)).plans["proportional"])
        assert all(len(recs) == 3 for recs in run.steps.values())
    served = [r for r in session.records if r.app == "cam"]
    assert served and all(r.ok for r in served)
