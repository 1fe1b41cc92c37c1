"""`backend: ray` cluster specs and the commands that set a Ray cluster up: the `ray start`
lines, which devices are present, and one-line errors for every wrong input."""

from __future__ import annotations

import json
import socket
from pathlib import Path

import pytest
import yaml

from deepedge.cluster import LocalCluster, make_backend
from deepedge.cluster.ray_backend import RayBackend, device_resource, ray_start_lines
from deepedge.errors import SpecError
from deepedge.spec import ClusterSpec, load_spec
from tests.cli import run_cli

SPEC = {
    "name": "lab",
    "backend": "ray",
    "address": "10.1.2.3:6380",
    "devices": [{"name": "orin-1", "kind": "orin-nano"}, {"name": "pi-1", "kind": "rpi4"}],
}


def _write(tmp_path: Path, spec: dict) -> Path:
    path = tmp_path / "cluster.yaml"
    path.write_text(yaml.safe_dump(spec))
    return path


def test_the_spec_picks_the_backend_and_an_address_needs_ray(tmp_path):
    spec = load_spec(ClusterSpec, _write(tmp_path, SPEC))
    assert isinstance(make_backend(spec), RayBackend)
    assert isinstance(make_backend(spec.model_copy(update={"backend": "local"})), LocalCluster)
    with pytest.raises(SpecError, match="address is the Ray head's; it needs backend: ray"):
        load_spec(ClusterSpec, _write(tmp_path, {**SPEC, "backend": "local"}))


def test_start_lines_name_each_device_by_its_resources():
    spec = ClusterSpec.model_validate(SPEC)
    (head_where, head), *devices = ray_start_lines(spec)
    assert "head" in head_where and head.startswith("ray start --head --port 6380 --num-cpus 0")
    assert [where for where, _ in devices] == ["device orin-1 (orin-nano)", "device pi-1 (rpi4)"]
    for (_, line), d in zip(devices, spec.devices, strict=True):
        assert line.startswith("ray start --address 10.1.2.3:6380 --num-cpus 0 --resources ")
        resources = json.loads(line.split("--resources ", 1)[1].strip("'"))
        assert resources == {device_resource(d.name): 1, f"deepedge/kind/{d.kind}": 1}
    # without an address the head is a placeholder; --head overrides both
    unset = spec.model_copy(update={"address": None})
    assert "--address HEAD_IP:6379" in ray_start_lines(unset)[1][1]
    assert "--address 192.168.0.9:7000" in ray_start_lines(spec, "192.168.0.9:7000")[1][1]


def test_cluster_up_prints_a_line_per_device(tmp_path):
    r = run_cli("cluster", "up", str(_write(tmp_path, SPEC)))
    assert r.code == 0, r.text
    assert r.out.count("ray start --address 10.1.2.3:6380") == 2
    assert '"deepedge/device/pi-1": 1' in r.out


def test_ray_commands_refuse_a_local_spec_in_one_line(tmp_path):
    path = _write(tmp_path, {k: v for k, v in SPEC.items() if k not in ("backend", "address")})
    for command in ("up", "status"):
        r = run_cli("cluster", command, str(path))
        assert r.code == 2
        (line,) = r.err.strip().splitlines()
        assert "uses backend local" in line and "backend: ray" in line


def test_status_without_an_address_explains_the_emulated_cluster(tmp_path):
    path = _write(tmp_path, {k: v for k, v in SPEC.items() if k != "address"})
    r = run_cli("cluster", "status", str(path))
    assert r.code == 0 and "emulated Ray cluster" in r.out


def test_status_of_a_head_that_does_not_answer_is_one_line(tmp_path):
    with socket.socket() as s:  # a port that was free a moment ago: nothing listens there
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    path = _write(tmp_path, {**SPEC, "address": f"127.0.0.1:{port}"})
    r = run_cli("cluster", "status", str(path))
    assert r.code == 1
    (line,) = r.err.strip().splitlines()
    assert f"cannot reach the Ray head at 127.0.0.1:{port}" in line and "ray start --head" in line
