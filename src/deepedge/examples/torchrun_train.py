"""Train a small MLP on scikit-learn's 8x8 digits, torchrun-style: gloo, DDP, rank-0 snapshots.

`examples/torchrun_train.py` is a plain torchrun script that knows nothing of deepedge
(DistributedSampler: an equal share per rank). `examples/torchrun_train_planned.py` is the
same file with three lines changed: deepedge.launch's PlannedBatchSampler and planned_loss
give each rank its planned share of every global batch, with the gradients of a single
process on the whole batch (`diff` the two). Either runs under

    torchrun --nproc-per-node 2 examples/torchrun_train.py --epochs 3
    deepedge launch examples/small-cluster.yaml examples/torchrun_train.py --epochs 3
"""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path

import torch
import torch.distributed as dist
from sklearn.datasets import load_digits
from torch import nn
from torch.nn.parallel import DistributedDataParallel as DDP
from torch.utils.data import DataLoader, TensorDataset
from torch.utils.data.distributed import DistributedSampler

SNAPSHOT = "snapshot.pt"  # rank 0 writes it after every epoch, in --out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--batch", type=int, default=64, help="global batch")
    parser.add_argument("--lr", type=float, default=0.05)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=Path("runs/torchrun_train"))
    args = parser.parse_args()

    dist.init_process_group("gloo")  # RANK, WORLD_SIZE, MASTER_ADDR/PORT from torchrun
    rank, world = dist.get_rank(), dist.get_world_size()
    print(f"rank {rank} of {world} on {os.environ.get('DEEPEDGE_DEVICE', 'this host')}")
    torch.manual_seed(args.seed)

    digits = load_digits()
    x = torch.tensor(digits.data, dtype=torch.float32) / 16.0
    y = torch.tensor(digits.target, dtype=torch.long)
    train_set = TensorDataset(x, y)
    model = DDP(nn.Sequential(nn.Linear(64, 128), nn.ReLU(), nn.Linear(128, 10)))
    optimizer = torch.optim.SGD(model.parameters(), lr=args.lr, momentum=0.9)
    criterion = nn.CrossEntropyLoss()

    sampler = DistributedSampler(train_set, seed=args.seed)
    loader = DataLoader(train_set, batch_size=args.batch // world, sampler=sampler)
    for epoch in range(args.epochs):
        sampler.set_epoch(epoch)
        started, seen, total = time.monotonic(), 0, 0.0
        for xb, yb in loader:
            optimizer.zero_grad()
            loss = criterion(model(xb), yb)
            loss.backward()
            optimizer.step()
            seen += len(yb)
            total += loss.item() * len(yb)
        print(
            f"rank {rank}: epoch {epoch} loss {total / seen:.4f} on {seen} samples "
            f"in {time.monotonic() - started:.2f} s",
            flush=True,
        )
        if rank == 0:  # the snapshot: written beside, then renamed, never half-written
            args.out.mkdir(parents=True, exist_ok=True)
            tmp = args.out / f"{SNAPSHOT}.tmp"
            torch.save({"epoch": epoch, "model": model.module.state_dict()}, tmp)
            os.replace(tmp, args.out / SNAPSHOT)
    with torch.no_grad():
        accuracy = (model.module(x).argmax(1) == y).float().mean().item()
    if rank == 0:
        print(f"rank 0: training accuracy {accuracy:.3f}; snapshot {args.out / SNAPSHOT}")
    dist.barrier()  # nobody leaves while a peer still talks to it
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
