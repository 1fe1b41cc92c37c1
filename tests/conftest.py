"""Shared fixtures: small emulated clusters and the cgroup capability check."""

from __future__ import annotations

import datetime
import socket
from pathlib import Path

import psutil
import pytest
import torch
import torch.distributed as dist
from torch import nn

from deepedge.apps.server import HEADER, REPLY
from deepedge.cluster import detect_cgroups
from deepedge.errors import DeepEdgeError
from deepedge.spec import ClusterSpec


def _cgroups_ok() -> bool:
    driver, _ = detect_cgroups()
    return driver is not None


needs_cgroups = pytest.mark.skipif(not _cgroups_ok(), reason="needs root and writable cgroups")
STORE_TIMEOUT = datetime.timedelta(seconds=90)  # ranks import torch slowly on a loaded host


BACKENDS = ("local", "ray")
"""The cluster backends the end-to-end tests run on: devices as cgroups of this machine,
and devices as nodes of an emulated Ray cluster (each node fenced the same way)."""


@pytest.fixture(scope="module", params=BACKENDS)
def backend(request) -> str:
    """The backend a module's end-to-end tests run on: they run once on each."""
    return request.param


def assert_nothing_left(cluster, pids: set[int]) -> None:
    """After a backend stopped: none of its device processes runs and no device cgroup of
    a dead owner is left (the local backend's or a Ray node host's)."""
    from deepedge.cluster.cgroups import PARENT, owner_alive

    assert not [p for p in pids if psutil.pid_exists(p) and psutil.Process(p).status() != "zombie"]
    driver, _ = detect_cgroups()
    if driver is not None:
        assert all(owner_alive(tag) for tag in driver.children(PARENT))


@pytest.fixture
def two_device_spec() -> ClusterSpec:
    return ClusterSpec.model_validate(
        {
            "name": "t",
            "devices": [
                {"name": "fast", "kind": "orin-nano"},
                {"name": "slow", "kind": "jetson-nano"},
            ],
        }
    )


@pytest.fixture(autouse=True)
def _private_knowledge_base(tmp_path, monkeypatch):
    """Commands run by tests profile into a throw-away knowledge base, not the user's."""
    monkeypatch.setenv("DEEPEDGE_KB", str(tmp_path / "kb.sqlite"))


def lc_request(sock: socket.socket, payload: bytes) -> tuple[int, int]:
    """One request to an LC app server over ``sock``: (class, service µs) of its reply."""
    sock.sendall(HEADER.pack(len(payload)) + payload)
    buf = b""
    while len(buf) < REPLY.size:
        chunk = sock.recv(REPLY.size - len(buf))
        assert chunk, "server closed the connection"
        buf += chunk
    return REPLY.unpack(buf)


def host_store() -> dist.TCPStore:
    """The rendezvous store for a test's spawned ranks, served by the test process itself.

    The OS picks the port and the store keeps it (a port probed free and then released can
    be taken by anything before a rank binds it), and the store outlives every rank, as
    the coordinator's does: no rank's exit can take it away from the others.
    """
    return dist.TCPStore(
        "127.0.0.1", 0, is_master=True, wait_for_workers=False, timeout=STORE_TIMEOUT
    )


def join_store(port: int) -> dist.TCPStore:
    """A spawned rank's client of :func:`host_store`."""
    return dist.TCPStore("127.0.0.1", port, is_master=False, timeout=STORE_TIMEOUT)


def leave_group(store: dist.Store, rank: int, world: int) -> None:
    """Destroy the process group once every rank is past its last collective, so that no
    rank closes its gloo connections while a peer still reads from them."""
    store.set(f"left/{rank}", "1")
    store.wait([f"left/{r}" for r in range(world)])
    dist.destroy_process_group()


def tiny_groupnorm_cnn() -> nn.Module:
    """A seeded CNN without batch statistics, for gradient-equality tests of data
    parallelism (GroupNorm keeps each sample's output independent of its batch)."""
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1),
        nn.GroupNorm(2, 8),
        nn.ReLU(),
        nn.AdaptiveAvgPool2d(2),
        nn.Flatten(),
        nn.Linear(32, 10),
    )


def file_snapshot(path: Path) -> tuple[bytes, int, list[str]]:
    """Bytes, mtime and the -wal/-shm/-journal files beside ``path``: what "untouched"
    means for an input file a command must only read."""
    side = sorted(p.name for p in path.parent.glob(f"{path.name}-*"))
    return path.read_bytes(), path.stat().st_mtime_ns, side


def assert_one_line(err: DeepEdgeError, path: Path) -> str:
    """``err`` reads as one line naming ``path``, with a hint; returns that line."""
    line = err.one_line()
    assert "\n" not in line and str(path) in line and err.hint, line
    return line


@pytest.fixture(scope="module")
def tiny_checkpoint(tmp_path_factory) -> Path:
    """A checkpoint of a tiny CNN (8 classes, 16×16 images) for the serving tests: its
    replicas boot fast and serve a request in well under a millisecond."""
    from deepedge.models import build_model
    from deepedge.spec import JobSpec
    from deepedge.train.checkpoint import save_checkpoint

    job = JobSpec.model_validate(
        {
            "name": "tiny",
            "model": {"arch": "small_cnn", "width": 8},
            "dataset": {"kind": "synthetic", "num_classes": 8, "image_size": 16},
        }
    )
    torch.manual_seed(0)
    model = build_model(job.model, in_channels=3, num_classes=8, image_size=16)
    path = tmp_path_factory.mktemp("ckpt") / "tiny.ckpt"
    save_checkpoint(path, {"model": model.state_dict(), "job": job.model_dump(mode="json")})
    return path
