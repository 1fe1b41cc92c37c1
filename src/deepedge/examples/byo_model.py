"""Bring your own model: an MLP of your own on scikit-learn's digits, re-trained with
``deepedge.fit`` on a two-device emulated cluster whose slow board serves an LC app (the planner
leaves that board out when it cannot shorten a step of so small a model).

    .venv/bin/python examples/byo_model.py            # about a minute on a 2-core box
    .venv/bin/python examples/byo_model.py --policy deep-edge   # + interference profile

The model factory, the loss and the optimiser below are plain functions in this script:
deepedge pickles them by value (cloudpickle) into the job it sends every training agent,
so nothing has to be installed. The run is the same as ``deepedge train``: devices
profiled for this model, a plan that splits each batch unevenly, DDP with exact
gradients, the SLO guard watching the LC app, and recovery if a worker is lost. The
default policy here is ``proportional`` because ``deep-edge`` first measures how this
model slows the LC app (a few minutes, once; then reused from the knowledge base).
Needs root for the devices' cgroups (without, it falls back to paced processes).
"""

from __future__ import annotations

import argparse
import sys

import numpy as np
import torch
from sklearn.datasets import load_digits
from torch import nn

import deepedge
from deepedge.errors import DeepEdgeError
from deepedge.profile import ProfileSettings

CLUSTER = deepedge.ClusterSpec(
    name="byo",
    cpu_period_us=5000,
    devices=[
        deepedge.DeviceSpec(name="orin", kind="orin-nano"),
        deepedge.DeviceSpec(name="nano", kind="jetson-nano"),
    ],
    apps=[deepedge.AppSpec(name="cam", device="nano", rate_rps=10, deadline_ms=200)],
)


def make_model(seed: int = 0) -> nn.Module:
    """Called in every process, after torch.manual_seed(seed)."""
    return nn.Sequential(
        nn.Linear(64, 512),
        nn.LayerNorm(512),  # no BatchNorm: uneven local batches would normalise unevenly
        nn.ReLU(),
        nn.Dropout(0.1),
        nn.Linear(512, 512),
        nn.ReLU(),
        nn.Linear(512, 10),
    )


def loss(outputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Mean over the batch (the contract that keeps uneven batches exact)."""
    return nn.functional.cross_entropy(outputs, targets, label_smoothing=0.05)


def optimizer(params) -> torch.optim.Optimizer:
    return torch.optim.AdamW(params, lr=3e-3, weight_decay=1e-4)


def data() -> tuple[tuple[np.ndarray, np.ndarray], tuple[np.ndarray, np.ndarray]]:
    x, y = load_digits(return_X_y=True)  # 1,797 8x8 images, shipped with scikit-learn
    x = (x / 16.0 - 0.5).astype(np.float32)
    order = np.random.default_rng(0).permutation(len(x))
    x, y = x[order], y[order]
    return (x[:1400], y[:1400]), (x[1400:], y[1400:])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--policy", default="proportional")
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--out", default="runs/byo")
    parser.add_argument("--cluster", help="a cluster spec file (default: two devices)")
    args = parser.parse_args(argv)
    train, test = data()
    job = deepedge.Job(
        model=make_model,
        data=train,
        eval_data=test,
        loss=loss,
        optimizer=optimizer,
        epochs=args.epochs,
        global_batch=128,
    )
    try:
        result = deepedge.fit(
            job,
            args.cluster or CLUSTER,
            policy=args.policy,
            out=args.out,
            status=print,
            profile_settings=ProfileSettings(steps=4, warmup=1),  # quick, rougher profiles
        )
    except DeepEdgeError as err:
        print(f"error: {err.one_line()}", file=sys.stderr)
        return err.exit_code
    print(result.summary())
    torch.save(result.state_dict, f"{args.out}/byo-model.pt")
    print(f"weights in {args.out}/byo-model.pt; report in {args.out}/report.json")
    return 0


if __name__ == "__main__":
    sys.exit(main())
