"""Checkpoints: atomic writes, verified loads, clear errors, and a manager that falls back
to the newest checkpoint that is still good."""

from __future__ import annotations

import errno
import hashlib
import io
import logging
import os
import pickle
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from deepedge.errors import CheckpointError, SpecError
from deepedge.train import checkpoint as ckpt
from deepedge.train.checkpoint import (
    MAGIC,
    CheckpointManager,
    load_checkpoint,
    save_checkpoint,
    verify_checkpoint,
)


def _state(seed: int = 0) -> dict[str, Any]:
    torch.manual_seed(seed)
    model = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.ReLU(), torch.nn.Linear(8, 2))
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    model(torch.randn(3, 4)).sum().backward()
    opt.step()
    return {
        "epoch": seed,
        "model": model.state_dict(),
        "optimizer": opt.state_dict(),
        "rng": torch.get_rng_state(),
        "numpy_rng": np.random.default_rng(seed).bit_generator.state,
        "meta": {"plan": [3, 5, 2], "loss": 0.25, "name": "mlp"},
    }


def _assert_same(a: Any, b: Any) -> None:
    if isinstance(a, torch.Tensor):
        assert isinstance(b, torch.Tensor) and torch.equal(a, b)
    elif isinstance(a, dict):
        assert a.keys() == b.keys()
        for key in a:
            _assert_same(a[key], b[key])
    elif isinstance(a, list | tuple):
        assert len(a) == len(b)
        for x, y in zip(a, b, strict=True):
            _assert_same(x, y)
    else:
        assert a == b


def _temps(directory: Path) -> list[str]:
    return [name for name in os.listdir(directory) if name.endswith(".tmp")]


def test_round_trip(tmp_path: Path) -> None:
    state = _state(1)
    path = tmp_path / "run.ckpt"
    info = save_checkpoint(path, state)
    assert info.path == path and info.size_bytes == path.stat().st_size
    assert path.read_bytes().startswith(MAGIC)
    assert verify_checkpoint(path).sha256 == info.sha256
    loaded = load_checkpoint(path)
    _assert_same(state, loaded)
    # The loaded optimizer state must be usable as such.
    model = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.ReLU(), torch.nn.Linear(8, 2))
    model.load_state_dict(loaded["model"])
    torch.optim.AdamW(model.parameters()).load_state_dict(loaded["optimizer"])
    assert _temps(tmp_path) == []


def test_overwrite_replaces(tmp_path: Path) -> None:
    path = tmp_path / "c.ckpt"
    save_checkpoint(path, {"v": 1})
    save_checkpoint(path, {"v": 2})
    assert load_checkpoint(path) == {"v": 2}


def test_flipped_byte_fails_checksum(tmp_path: Path) -> None:
    path = tmp_path / "c.ckpt"
    save_checkpoint(path, _state())
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0x01
    path.write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match="checksum") as err:
        load_checkpoint(path)
    assert str(path) in str(err.value) and err.value.hint


@pytest.mark.parametrize("keep", [0, 10, 40, -1])
def test_truncated_file(tmp_path: Path, keep: int) -> None:
    path = tmp_path / "c.ckpt"
    save_checkpoint(path, _state())
    data = path.read_bytes()
    path.write_bytes(data[:keep])
    with pytest.raises(CheckpointError, match="truncated") as err:
        load_checkpoint(path)
    assert str(path) in str(err.value) and err.value.hint


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(CheckpointError, match="does not exist") as err:
        load_checkpoint(tmp_path / "nope.ckpt")
    assert err.value.hint


def test_foreign_file(tmp_path: Path) -> None:
    plain = tmp_path / "plain.pt"
    torch.save({"x": 1}, plain)
    with pytest.raises(CheckpointError, match=r"not a deepedge checkpoint.*torch\.save"):
        load_checkpoint(plain)
    junk = tmp_path / "junk.ckpt"
    junk.write_bytes(b"hello world, this is not a checkpoint at all")
    with pytest.raises(CheckpointError, match="not a deepedge checkpoint"):
        load_checkpoint(junk)


def test_state_that_would_not_load_is_rejected_at_save(tmp_path: Path) -> None:
    with pytest.raises(CheckpointError, match=r"\['meta'\]\['arr'\]: numpy") as err:
        save_checkpoint(tmp_path / "c.ckpt", {"meta": {"arr": np.zeros(3)}})
    assert "tensor" in (err.value.hint or "")
    assert os.listdir(tmp_path) == []


def _enospc(*_: object, **__: object) -> None:
    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))


@pytest.mark.parametrize("target", ["replace", "fsync", "torch_save"])
def test_failed_save_keeps_previous(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, target: str
) -> None:
    path = tmp_path / "c.ckpt"
    save_checkpoint(path, {"v": 1})
    if target == "torch_save":
        monkeypatch.setattr(ckpt.torch, "save", _enospc)
    else:
        monkeypatch.setattr(ckpt.os, target, _enospc)
    with pytest.raises(CheckpointError, match=os.strerror(errno.ENOSPC)) as err:
        save_checkpoint(path, {"v": 2})
    assert "disk space" in (err.value.hint or "")
    monkeypatch.undo()
    assert load_checkpoint(path) == {"v": 1}
    assert _temps(tmp_path) == []


def test_unwritable_directory(tmp_path: Path) -> None:
    with pytest.raises(CheckpointError, match="could not write"):
        save_checkpoint(tmp_path / "missing-dir" / "c.ckpt", {"v": 1})


@pytest.mark.parametrize("keep", [1, 2, 3])
def test_manager_keeps_and_prunes(tmp_path: Path, keep: int) -> None:
    manager = CheckpointManager(tmp_path / "ckpts", keep=keep)
    assert manager.list() == [] and manager.latest() is None
    for epoch in range(5):
        info = manager.save(epoch, {"epoch": epoch})
        assert info.path.name == f"epoch-{epoch:04d}.ckpt"
    assert [e for e, _ in manager.list()] == list(range(5 - keep, 5))
    assert manager.latest() == (4, {"epoch": 4})
    assert manager.load(5 - keep) == {"epoch": 5 - keep}
    assert _temps(manager.directory) == []


def test_manager_latest_skips_corrupt(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    manager = CheckpointManager(tmp_path, keep=3)
    for epoch in range(3):
        manager.save(epoch, {"epoch": epoch})
    newest = manager.path_for(2)
    newest.write_bytes(newest.read_bytes()[:-7])
    with caplog.at_level(logging.WARNING, logger=ckpt.__name__):
        assert manager.latest() == (1, {"epoch": 1})
    assert "epoch 2" in caplog.text
    for _, path in manager.list():
        path.write_bytes(b"garbage")
    assert manager.latest() is None


def test_prune_never_trades_a_good_fallback_for_a_corrupt_file(tmp_path: Path) -> None:
    manager = CheckpointManager(tmp_path, keep=2)
    manager.save(1, {"epoch": 1})
    manager.save(2, {"epoch": 2})
    manager.path_for(2).write_bytes(b"corrupt")
    manager.save(3, {"epoch": 3})
    assert [e for e, _ in manager.list()] == [1, 3]


def test_manager_removes_stale_temps_and_ignores_foreign_names(tmp_path: Path) -> None:
    manager = CheckpointManager(tmp_path, keep=1)
    stale = tmp_path / ".epoch-0001.ckpt.1234.deadbeef.tmp"
    stale.write_bytes(b"half a checkpoint")
    (tmp_path / "epoch-1.ckpt").write_bytes(b"not canonical")
    (tmp_path / "notes.txt").write_text("keep me")
    manager.save(1, {"epoch": 1})
    assert not stale.exists()
    assert [e for e, _ in manager.list()] == [1]
    assert (tmp_path / "notes.txt").exists()


def test_manager_validates(tmp_path: Path) -> None:
    with pytest.raises(SpecError, match="0"):
        CheckpointManager(tmp_path, keep=0)
    with pytest.raises(SpecError, match="-1"):
        CheckpointManager(tmp_path).path_for(-1)


# ---------------------------------------------------------------------------------------
# files that are not (whole) checkpoints: one line naming the file and what to do


def _ours(payload: bytes) -> bytes:
    """A header with a valid checksum around ``payload``: it passes verification."""
    return ckpt._HEADER.pack(MAGIC, len(payload), hashlib.sha256(payload).digest()) + payload


def _torch_bytes(obj: object) -> bytes:
    buffer = io.BytesIO()
    torch.save(obj, buffer)
    return buffer.getvalue()


@pytest.mark.parametrize(
    ("content", "message", "hint"),
    [
        (lambda good: b"", r"is empty \(0 bytes", "previous epoch"),
        (lambda good: MAGIC[:7], "truncated to 7 bytes", "previous epoch"),
        (lambda good: good[: len(good) // 2], "is truncated: header promises", "previous epoch"),
        (lambda good: good + b"!", "has trailing bytes", "previous epoch"),
        (
            lambda good: b"name: lab\ndevices: []\n",
            r"not a deepedge checkpoint \(it starts",
            "deepedge",
        ),
        (
            lambda good: _torch_bytes({"w": torch.ones(2)}),
            "plain torch.save file",
            "save_checkpoint",
        ),
        (lambda good: pickle.dumps({"w": 1}), "plain pickle file", "save_checkpoint"),
        (lambda good: b"DEEPEDGE-CKPT-v9" + good[16:], "format 'DEEPEDGE-CKPT-v9'", "version"),
        (lambda good: _ours(b"not a torch payload"), "weights-only loader refused it", "older"),
        (lambda good: _ours(_torch_bytes({"a": np.zeros(2)})), "holds a numpy", "non-tensor"),
        (lambda good: _ours(_torch_bytes({"w": 1})[:-40]), "not a valid archive", "older"),
        (lambda good: _ours(b""), "payload ends before", "older"),
        (lambda good: _ours(_torch_bytes(torch.ones(2))), "holds a Tensor, not a dict", "older"),
    ],
    ids=[
        "empty",
        "inside-magic",
        "half",
        "trailing",
        "yaml",
        "plain-torch-save",
        "pickle",
        "other-format-version",
        "garbage-payload",
        "numpy-payload",
        "broken-zip-payload",
        "empty-payload",
        "not-a-dict",
    ],
)
def test_bad_files_give_one_line_naming_the_file_and_what_to_do(
    tmp_path: Path, content, message: str, hint: str
) -> None:
    good = tmp_path / "good.ckpt"
    save_checkpoint(good, {"w": torch.ones(3)})
    path = tmp_path / "bad.ckpt"
    path.write_bytes(content(good.read_bytes()))
    with pytest.raises(CheckpointError, match=message) as err:
        load_checkpoint(path)
    line = err.value.one_line()
    assert "\n" not in line and "\x1b" not in line and len(line) < 400, line
    assert str(path) in str(err.value)
    assert err.value.hint and hint in err.value.hint


def test_a_directory_is_one_line(tmp_path: Path) -> None:
    with pytest.raises(CheckpointError, match="is a directory") as err:
        load_checkpoint(tmp_path)
    assert str(tmp_path) in str(err.value) and "epoch-" in (err.value.hint or "")


def test_a_non_dict_state_is_refused_at_save_with_a_hint(tmp_path: Path) -> None:
    with pytest.raises(CheckpointError, match="must be a dict, got list") as err:
        save_checkpoint(tmp_path / "c.ckpt", [1, 2])  # type: ignore[arg-type]
    assert "state_dict" in (err.value.hint or "")
