"""Bring your own model: the early checks, the code's journey, the data file, the
signature and exact gradients with a user's loss (no cluster needed)."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
import torch
from torch import nn

import deepedge
from deepedge.byo import TensorData, prepare
from deepedge.byo.code import code_spec, resolve
from deepedge.byo.data import as_tensor_data, is_tensor_file
from deepedge.byo.hooks import custom_memory_mb, job_loss, job_optimizer, synthetic_batch
from deepedge.errors import SpecError
from deepedge.spec import JobSpec, parse_spec
from deepedge.train.ddp import global_batch_loss
from deepedge.train.local import job_model


def make_mlp(seed: int = 0, hidden: int = 16) -> nn.Module:
    return nn.Sequential(nn.Linear(8, hidden), nn.ReLU(), nn.Linear(hidden, 3))


def make_wide() -> nn.Module:
    return make_mlp(hidden=32)


def make_tanh() -> nn.Module:
    return nn.Sequential(nn.Linear(8, 16), nn.Tanh(), nn.Linear(16, 3))


def make_regressor() -> nn.Module:
    return nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 1))


def mse(out: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    return nn.functional.mse_loss(out.squeeze(-1), target)


def _data(n: int = 96, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, 8)).astype(np.float32)
    return x, (x[:, 0] > 0).astype(np.int64) + (x[:, 1] > 1)


def _job(**kw) -> deepedge.Job:
    return deepedge.Job(**{"model": make_mlp, "data": _data(), "global_batch": 32, **kw})


def test_importing_deepedge_and_naming_its_api_imports_no_torch() -> None:
    code = "import sys, deepedge; deepedge.Job; deepedge.fit; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "False"


def test_a_prepared_job_describes_the_model_and_every_process_builds_the_same_one() -> None:
    prepared = prepare(_job(eval_data=_data(20, seed=1)))
    custom = prepared.spec.custom
    assert custom is not None and prepared.spec.model.arch == "custom"
    assert custom.model.ref == "tests.unit.test_byo:make_mlp"  # importable: sent by name
    assert custom.seeded and custom.input_shape == [8] and custom.target_high == 3
    assert custom.optimizer_name == "sgd" and custom.optimizer_slots == 1  # momentum
    assert prepared.spec.dataset.kind == "custom" and prepared.spec.dataset.train_size == 96
    again = job_model(JobSpec.model_validate_json(prepared.spec.model_dump_json()), None)
    for a, b in zip(prepared.model.state_dict().values(), again.state_dict().values(), strict=True):
        assert torch.equal(a, b)


def test_the_signature_is_stable_and_tells_models_apart() -> None:
    sig = prepare(_job()).spec.custom.signature
    assert prepare(_job(seed=5)).spec.custom.signature == sig  # weights do not matter
    wide = prepare(_job(model=make_wide)).spec.custom.signature
    tanh = prepare(_job(model=make_tanh)).spec.custom.signature
    # float64 inputs are stored as float32: the same model on the same kind of input
    x64 = (np.zeros((96, 8), np.float64), np.zeros(96, np.int64))
    assert prepare(_job(data=x64)).spec.custom.signature == sig
    assert len({sig, wide, tanh}) == 3


def test_closures_and_lambdas_travel_pickled_by_value() -> None:
    hidden = 12
    spec = code_spec(lambda: nn.Linear(8, hidden), "model factory")
    assert spec.pickled and spec.ref is None
    assert resolve(spec)().out_features == 12
    with pytest.raises(SpecError, match=r"cannot import the loss 'no\.such:fn'"):
        code_spec("no.such:fn", "loss")
    with pytest.raises(SpecError, match="not an import path"):
        code_spec("not a path:", "loss")


def test_a_users_loss_and_optimizer_reach_the_training_code() -> None:
    x = np.random.default_rng(0).normal(size=(64, 8)).astype(np.float32)
    job = _job(
        model=make_regressor,
        data=(x, x[:, 0] * 2),
        loss=mse,
        optimizer=lambda params: torch.optim.AdamW(params, lr=1e-3),
    )
    spec = prepare(job).spec
    assert spec.custom.optimizer_name == "adamw" and spec.custom.optimizer_slots == 2
    assert spec.custom.target_dtype == "float32" and spec.custom.target_high is None
    assert job_loss(spec) is mse
    assert isinstance(job_optimizer(spec, make_regressor().parameters()), torch.optim.AdamW)
    xb, yb = synthetic_batch(spec.custom, 5, seed=0)
    assert xb.shape == (5, 8) and yb.shape == (5,) and yb.dtype == torch.float32
    assert custom_memory_mb(spec.custom, 64) > custom_memory_mb(spec.custom, 1)


def bad_sum_loss(out, target):
    return nn.functional.cross_entropy(out, target, reduction="sum")


def make_batchnorm() -> nn.Module:
    return nn.Sequential(nn.Linear(8, 4), nn.BatchNorm1d(4), nn.Linear(4, 3))


def make_unused() -> nn.Module:
    class Two(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.used, self.spare = nn.Linear(8, 3), nn.Linear(8, 3)

        def forward(self, x):
            return self.used(x)

    return Two()


@pytest.mark.parametrize(
    ("kw", "match"),
    [
        ({"model": lambda: nn.Linear(5, 3)}, "fails on a batch of 8 samples of shape"),
        ({"model": lambda: "a model"}, "returned a str, not a torch.nn.Module"),
        ({"model": lambda size: nn.Linear(8, size)}, "cannot be called as"),
        ({"model": make_batchnorm}, "uses BatchNorm"),
        ({"model": make_unused}, "get no gradient from the loss"),
        ({"loss": bad_sum_loss}, "not the mean over the batch's samples"),
        ({"loss": lambda o, t: o.mean() * float("inf")}, "inf on the first 8 samples"),
        ({"loss": lambda o, t: o}, "not a scalar tensor"),
        ({"optimizer": lambda params: None}, "not a torch.optim.Optimizer"),
        ({"optimizer": "rmsprop"}, "field 'name'"),
        ({"global_batch": 1000}, "larger than dataset.train_size"),
        ({"epochs": 0}, "epochs"),
        ({"data": (np.zeros((4, 8)), np.zeros(3))}, "4 inputs but 3 targets"),
        ({"data": "digits"}, "expected \\(X, y\\) arrays or a torch Dataset"),
        ({"data": (np.array(["a"] * 96), np.zeros(96))}, "must be numbers"),
        ({"eval_data": (np.zeros((4, 7)), np.zeros(4))}, "eval_data samples are"),
    ],
)
def test_mistakes_are_one_line_spec_errors_with_a_hint(kw, match) -> None:
    with pytest.raises(SpecError, match=match) as info:
        prepare(_job(**kw))
    assert "\n" not in info.value.one_line() and info.value.hint


def test_a_torch_dataset_is_read_once_into_arrays(tmp_path) -> None:
    x, y = _data()
    ds = torch.utils.data.TensorDataset(torch.from_numpy(x), torch.from_numpy(y))
    data = as_tensor_data(ds)
    assert np.array_equal(data.x, x) and np.array_equal(data.y, y)
    path = data.save(tmp_path / "train.npz")
    assert is_tensor_file(path)
    back = TensorData.load(path)
    assert np.array_equal(back.x, x) and back.y.dtype == np.int64

    from deepedge.data import ArrayDataset
    from deepedge.train import agent
    from deepedge.train.pool import _dataset_size

    assert _dataset_size(path) == len(x)  # what the agent pool reads of it
    tx, _, loaded = agent._dataset(str(path))
    assert isinstance(loaded, TensorData) and torch.equal(tx, torch.from_numpy(x))
    image = ArrayDataset(np.zeros((2, 1, 8, 8), np.uint8), np.zeros(2, np.int64), 1, ("a",))
    assert not is_tensor_file(image.save(tmp_path / "images.npz"))


def test_a_mean_loss_gives_exact_gradients_however_the_batch_is_split() -> None:
    torch.manual_seed(0)
    model = make_regressor()
    x = torch.randn(30, 8)
    y = torch.randn(30)
    whole = torch.autograd.grad(mse(model(x), y), list(model.parameters()))
    for split in ([30], [1, 29], [7, 11, 12], [0, 30]):
        grads = [torch.zeros_like(p) for p in model.parameters()]
        lo = 0
        for b in split:
            if b == 0:
                continue
            part = global_batch_loss(model, x[lo : lo + b], y[lo : lo + b], 30, mse)
            for g, d in zip(
                grads, torch.autograd.grad(part, list(model.parameters())), strict=True
            ):
                g += d
            lo += b
        for g, w in zip(grads, whole, strict=True):
            torch.testing.assert_close(g, w)


def test_custom_specs_go_only_with_their_section() -> None:
    with pytest.raises(SpecError, match="go with a 'custom' section"):
        parse_spec(JobSpec, {"model": {"arch": "custom"}})
    from deepedge.data import build_dataset

    spec = prepare(_job()).spec
    with pytest.raises(SpecError, match="data given in Python"):
        build_dataset(spec.dataset, "train", drifted=True)


def test_the_interference_lab_keys_a_custom_job_by_its_signature() -> None:
    from deepedge.interference.campaign import train_resident

    spec = prepare(_job()).spec
    assert train_resident(spec) == f"train:{spec.custom.signature}/sgd/idle"
