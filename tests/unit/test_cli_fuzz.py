"""Property: no file makes the CLI crash. Random and mutated specs and reports (wrong types,
huge and negative numbers, unicode, binary, deep nesting, missing and extra keys) go
through `deepedge validate`, `deepedge plan --dry-run` (which stops before booting) and
`deepedge report`; every run ends in exit 0, 1 or 2 with no traceback and no "internal
error". A fixed seed and example budget keep it deterministic and small for CI."""

from __future__ import annotations

import json
import tempfile
from pathlib import Path
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from deepedge.spec import read_spec_file
from tests.cli import run_cli

EXAMPLES = Path(__file__).parents[2] / "src" / "deepedge" / "examples"
CLUSTER = read_spec_file(EXAMPLES / "demo-cluster.yaml")
JOB = read_spec_file(EXAMPLES / "demo-job.yaml")
REPORT = {
    "accuracy_before": 0.4,
    "accuracy_source": 0.8,
    "accuracy_after_by_policy": {"deep-edge": 0.7, "equal": 0.7},
    "lower_bound_s": 10.0,
    "feasible_lower_bound_s": 12.0,
    "makespan_s": {"deep-edge": 13.0, "equal": 15.0},
    "apps": {
        "cam": {
            "deadline_ms": 100.0,
            "phases": {
                "equal": {
                    "requests": 30,
                    "p95_ms": 80.0,
                    "miss_rate": 0.01,
                    "slo_window_violations": 0,
                    "windows": 3,
                }
            },
        }
    },
}

FUZZ = settings(
    max_examples=60,
    deadline=None,
    derandomize=True,  # the same examples on every run: CI never flakes on a new one
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)

nasty_scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**70), max_value=2**70),
    st.sampled_from([0, -1, 2**63, 10**30]),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=30),
    st.sampled_from(["", "é", "\u202e", "名前", "a" * 500, "../../etc", "\x00"]),
)
nasty_values = st.recursive(
    nasty_scalars,
    lambda inner: st.one_of(
        st.lists(inner, max_size=4), st.dictionaries(st.text(max_size=8), inner, max_size=4)
    ),
    max_leaves=12,
)


def _paths(value: Any, prefix: tuple = ()) -> list[tuple]:
    """Every path to a value inside nested dicts and lists (the root too)."""
    out = [prefix]
    if isinstance(value, dict):
        for k, v in value.items():
            out += _paths(v, (*prefix, k))
    elif isinstance(value, list):
        for i, v in enumerate(value):
            out += _paths(v, (*prefix, i))
    return out


@st.composite
def mutated(draw: st.DrawFn, base: Any) -> Any:
    """``base`` with a few values replaced, keys deleted or keys added."""
    doc = json.loads(json.dumps(base))
    for _ in range(draw(st.integers(1, 3))):
        paths = _paths(doc)
        path = draw(st.sampled_from(paths))
        action = draw(st.sampled_from(["replace", "delete", "add"]))
        if not path:
            if action == "replace":
                doc = draw(nasty_values)
            continue
        parent = doc
        for p in path[:-1]:
            parent = parent[p]
        if action == "replace":
            parent[path[-1]] = draw(nasty_values)
        elif action == "delete":
            del parent[path[-1]]
        elif isinstance(parent, dict):
            parent[draw(st.text(min_size=1, max_size=10))] = draw(nasty_values)
    return doc


def _encoded(doc: Any, fmt: str) -> bytes:
    if fmt == "json":
        return json.dumps(doc, allow_nan=True).encode()
    return json.dumps(doc, ensure_ascii=False).encode()  # JSON is YAML 1.2 too


raw_files = st.one_of(
    st.binary(max_size=200),
    st.text(max_size=200).map(str.encode),
    st.integers(1, 50_000).map(lambda n: b"[" * n),
    st.integers(1, 50_000).map(lambda n: b"a:\n" + b"  " * n + b"b: 1\n"),
    st.sampled_from([b"", b"\xff\xfe", b"devices: [", b"{{{", b"- - -", b"key: : :"]),
)


def _file(data: st.DataObject, base: Any, name: str, directory: Path) -> Path:
    suffix = data.draw(st.sampled_from([".yaml", ".json"]))
    if data.draw(st.booleans()):
        content = _encoded(data.draw(mutated(base)), suffix[1:])
    else:
        content = data.draw(raw_files)
    path = directory / f"{name}{suffix}"
    path.write_bytes(content)
    return path


def _assert_clean(args: tuple[str, ...]) -> None:
    r = run_cli(*args)
    assert r.code in (0, 1, 2), (args, r.code, r.text)
    assert "Traceback" not in r.text, (args, r.text)
    assert "internal error" not in r.text, (args, r.text)


@FUZZ
@given(data=st.data())
def test_validate_never_crashes(data):
    with tempfile.TemporaryDirectory() as d:
        base = data.draw(st.sampled_from([CLUSTER, JOB]))
        _assert_clean(("validate", str(_file(data, base, "spec", Path(d)))))


@FUZZ
@given(data=st.data())
def test_plan_dry_run_never_crashes(data):
    with tempfile.TemporaryDirectory() as d:
        cluster = _file(data, CLUSTER, "cluster", Path(d))
        job = _file(data, JOB, "job", Path(d))
        args = (cluster, job) if data.draw(st.booleans()) else (job, cluster)
        _assert_clean(("plan", *map(str, args), "--dry-run", "--out", str(Path(d) / "out")))


@FUZZ
@given(data=st.data())
def test_report_never_crashes(data):
    with tempfile.TemporaryDirectory() as d:
        _assert_clean(("report", str(_file(data, REPORT, "report", Path(d)))))
