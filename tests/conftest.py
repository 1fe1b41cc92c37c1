"""Shared fixtures: small emulated clusters and the cgroup capability check."""

from __future__ import annotations

import socket

import pytest

from deepedge.apps.server import HEADER, REPLY
from deepedge.cluster import detect_cgroups
from deepedge.spec import ClusterSpec


def _cgroups_ok() -> bool:
    driver, _ = detect_cgroups()
    return driver is not None


needs_cgroups = pytest.mark.skipif(not _cgroups_ok(), reason="needs root and writable cgroups")


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
