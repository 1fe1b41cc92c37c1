"""Latency of each MEANet exit for one input, measured where it runs: started as
``python -m deepedge.meanet.timing`` inside an emulated device, so the device's CPU quota
applies (see ``bench/meanet.py``).

Per exit path, the median wall time of ``--repeats`` single-image passes after a warm-up,
one torch thread (an edge board's inference server does not get the whole host):

* ``main``: the main block;
* ``extension``: the main block, then the adaptive and extension blocks (what an input
  that does not exit at the main block costs the edge);
* ``cloud``: the cloud model alone (measured where the cloud runs).
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import torch

__all__ = ["time_exits"]


def time_exits(out: Path, repeats: int = 50, warmup: int = 5) -> dict[str, float]:
    """Median milliseconds per single-image pass of each exit path of the models in ``out``."""
    from deepedge.meanet.pipeline import load_models

    torch.set_num_threads(1)
    models = load_models(out)
    edge, cloud = models.edge.eval(), models.cloud.eval()
    channels = int(edge.main.stem[0].weight.shape[1])
    side = models.config.image_size
    x = torch.zeros(1, channels, side, side)

    def main_only() -> None:
        edge(x)

    def extension() -> None:
        features = edge.main_features(x)
        edge.main.head(edge.main.pool(features))
        edge.extension_logits(x, features)

    def cloud_only() -> None:
        cloud(x)

    result = {}
    with torch.no_grad():
        for name, fn in (("main", main_only), ("extension", extension), ("cloud", cloud_only)):
            for _ in range(warmup):
                fn()
            times = []
            for _ in range(repeats):
                t0 = time.perf_counter()
                fn()
                times.append(time.perf_counter() - t0)
            result[name] = 1e3 * statistics.median(times)
    return result


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--models", type=Path, required=True, help="folder meanet train wrote")
    ap.add_argument("--out", type=Path, required=True, help="JSON file for the results")
    ap.add_argument("--repeats", type=int, default=50)
    args = ap.parse_args()
    result = time_exits(args.models, args.repeats)
    tmp = args.out.with_suffix(".tmp")
    tmp.write_text(json.dumps(result))
    tmp.replace(args.out)


if __name__ == "__main__":
    main()
