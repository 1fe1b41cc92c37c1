"""Latency of each MEANet exit for one input, measured where it runs: started as
``python -m deepedge.meanet.timing`` inside an emulated device, so the device's CPU quota
applies (see ``bench/meanet.py``).

Per exit path, the mean wall time per single-image pass over back-to-back passes lasting
at least ``--seconds`` (many CFS periods), after a warm-up, on one torch thread: the
device's sustained time per input. A median of isolated passes would not be: a pass
shorter than the quota left in a CFS period runs at the host core's full speed, whatever
the board.

* ``main``: the main block;
* ``extension``: the main block, then the adaptive and extension blocks (what an input
  that does not exit at the main block costs the edge);
* ``cloud``: the cloud model alone (measured where the cloud runs).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

__all__ = ["time_exits"]


def time_exits(out: Path, seconds: float = 2.0, warmup: int = 3) -> dict[str, float]:
    """Mean milliseconds per single-image pass of each exit path of the models in ``out``,
    sustained over at least ``seconds`` of back-to-back passes."""
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
        edge.exits(x)

    def cloud_only() -> None:
        cloud(x)

    result = {}
    with torch.no_grad():
        for name, fn in (("main", main_only), ("extension", extension), ("cloud", cloud_only)):
            for _ in range(warmup):
                fn()
            passes, t0 = 0, time.perf_counter()
            while passes < 3 or time.perf_counter() - t0 < seconds:
                fn()
                passes += 1
            result[name] = 1e3 * (time.perf_counter() - t0) / passes
    return result


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--models", type=Path, required=True, help="folder meanet train wrote")
    ap.add_argument("--out", type=Path, required=True, help="JSON file for the results")
    ap.add_argument("--seconds", type=float, default=2.0, help="per exit path, at least")
    args = ap.parse_args()
    result = time_exits(args.models, args.seconds)
    tmp = args.out.with_suffix(".tmp")
    tmp.write_text(json.dumps(result))
    tmp.replace(args.out)


if __name__ == "__main__":
    main()
