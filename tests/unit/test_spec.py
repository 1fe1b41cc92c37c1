"""Specs: valid files load, bad ones give one line naming the field and the value."""

from __future__ import annotations

import pytest

from deepedge.catalog import CATALOG, resolve_device
from deepedge.errors import SpecError
from deepedge.spec import ClusterSpec, DeviceSpec, JobSpec, Plan, load_spec, parse_spec


def test_example_files_load(tmp_path):
    from pathlib import Path

    examples = Path(__file__).parents[2] / "src" / "deepedge" / "examples"
    for name in ("demo-cluster.yaml", "small-cluster.yaml", "netns-cluster.yaml"):
        spec = load_spec(ClusterSpec, examples / name)
        assert all(resolve_device(d).cpu_cores for d in spec.devices if d.kind in CATALOG)
    for name in ("demo-job.yaml", "caltech-job.yaml", "meanet-job.yaml"):
        assert load_spec(JobSpec, examples / name).global_batch > 0


def test_bad_field_names_field_and_value(tmp_path):
    f = tmp_path / "c.yaml"
    f.write_text("devices:\n  - {name: a, kind: rpi4, cpu_cores: -2}\n")
    with pytest.raises(SpecError) as err:
        load_spec(ClusterSpec, f)
    msg = err.value.one_line()
    assert "devices.0.cpu_cores" in msg and "-2" in msg and "\n" not in msg


def test_unknown_key_is_rejected():
    with pytest.raises(SpecError, match="global_bach"):
        parse_spec(JobSpec, {"global_bach": 32})


def test_app_on_unknown_device_is_rejected():
    with pytest.raises(SpecError, match="unknown device 'ghost'"):
        parse_spec(
            ClusterSpec,
            {
                "devices": [{"name": "a", "kind": "rpi4"}],
                "apps": [{"name": "x", "device": "ghost", "rate_rps": 1, "deadline_ms": 10}],
            },
        )


def test_duplicate_device_names_are_rejected():
    with pytest.raises(SpecError, match="repeated"):
        parse_spec(
            ClusterSpec, {"devices": [{"name": "a", "kind": "rpi4"}, {"name": "a", "kind": "rpi4"}]}
        )


def test_yaml_syntax_error_names_line(tmp_path):
    f = tmp_path / "bad.yaml"
    f.write_text("devices:\n  - {name: a\n")
    with pytest.raises(SpecError, match="not valid YAML"):
        load_spec(ClusterSpec, f)


def test_missing_and_empty_files(tmp_path):
    with pytest.raises(SpecError, match="cannot read"):
        load_spec(JobSpec, tmp_path / "nope.yaml")
    (tmp_path / "empty.yaml").write_text("")
    with pytest.raises(SpecError, match="empty"):
        load_spec(JobSpec, tmp_path / "empty.yaml")


def test_plan_must_sum_to_global_batch():
    with pytest.raises(SpecError, match="sum to 10"):
        parse_spec(Plan, {"policy": "x", "global_batch": 12, "local_batches": {"a": 4, "b": 6}})


def test_catalog_fills_missing_fields_and_keeps_given_ones():
    d = resolve_device(DeviceSpec(name="n", kind="jetson-nano", memory_mb=1234))
    assert d.memory_mb == 1234 and d.cpu_cores == CATALOG["jetson-nano"].cpu_cores
    assert d.gpu is not None


def test_unknown_kind_needs_explicit_capacity():
    with pytest.raises(SpecError, match="unknown kind"):
        resolve_device(DeviceSpec(name="n", kind="toaster"))
    custom = resolve_device(DeviceSpec(name="n", kind="toaster", cpu_cores=0.1, memory_mb=512))
    assert custom.reserved_mb == 0


def test_catalog_keeps_board_speed_order():
    cores = {k: v.cpu_cores for k, v in CATALOG.items()}
    assert cores["jetson-nano"] < cores["xavier-nx"] < cores["orin-nano"] < cores["x86-mini"]
    assert all(v.source for v in CATALOG.values())
