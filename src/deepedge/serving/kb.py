"""Fitted latency models in the knowledge base, so a serving run reuses the measurements.

Measuring p95 per flavour, replica count and rate costs minutes of the devices' time; the
fit is kept under a key the caller builds from what it depends on (the model signature and
the emulation), in the knowledge base's generic fitted-model table ``kb_models`` (the one
the interference surrogates use), so no schema change was needed. The blob is JSON, not a
pickle: the models are four numbers each, and JSON cannot run code when read.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from dataclasses import asdict
from pathlib import Path
from typing import Any

from deepedge.interference.kb import InterferenceStore
from deepedge.knowledge import default_kb_path
from deepedge.serving.latency import LatencyModel, LatencyPoint

__all__ = ["load_latency_models", "load_latency_points", "save_latency_models"]

_FORMAT = "deepedge.serving.latency/1"
_PREFIX = "serving.latency:"


def _name(key: str) -> str:
    return _PREFIX + key


def save_latency_models(
    kb_path: Path | str | None,
    key: str,
    models: Mapping[str, LatencyModel],
    points: Iterable[LatencyPoint],
) -> None:
    """Store (replace) the models fitted under ``key`` with the points they were fitted
    on, so a later reader can refit or plot without measuring again. ``kb_path=None`` is
    the default knowledge base."""
    pts = [asdict(p) for p in points]
    blob = {
        "format": _FORMAT,
        "models": {name: m.to_dict() for name, m in sorted(models.items())},
        "points": pts,
    }
    meta = {
        "kind": "serving latency",
        "key": key,
        "flavours": sorted(models),
        "n_points": len(pts),
        "rmse_log": {name: round(m.rmse_log, 6) for name, m in sorted(models.items())},
    }
    with InterferenceStore(kb_path) as kb:
        kb.save_model(_name(key), json.dumps(blob, sort_keys=True).encode(), meta)


def _load(kb_path: Path | str | None, key: str) -> dict[str, Any] | None:
    path = Path(kb_path).expanduser() if kb_path is not None else default_kb_path()
    if not path.exists():
        return None  # nothing measured yet: not an error, the caller measures
    with InterferenceStore(path, create=False) as kb:
        stored = kb.load_model(_name(key))
    if stored is None:
        return None
    try:
        data = json.loads(stored[0])
    except (UnicodeDecodeError, json.JSONDecodeError):
        return None
    if not isinstance(data, dict) or data.get("format") != _FORMAT:
        return None  # written by another version: refit rather than guess
    return data


def load_latency_models(kb_path: Path | str | None, key: str) -> dict[str, LatencyModel] | None:
    """The models stored under ``key``; None when there are none (or they are of another
    format), which tells the caller to measure and fit."""
    data = _load(kb_path, key)
    if data is None:
        return None
    return {name: LatencyModel.from_dict(m) for name, m in data["models"].items()}


def load_latency_points(kb_path: Path | str | None, key: str) -> list[LatencyPoint] | None:
    """The measurements the models under ``key`` were fitted on, or None."""
    data = _load(kb_path, key)
    if data is None:
        return None
    return [LatencyPoint(**p) for p in data["points"]]
