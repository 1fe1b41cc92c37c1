"""One model-server replica: a trained checkpoint served over the LC apps' wire protocol.

Run inside an emulated edge device (the serving pool launches it in the device's
cgroup)::

    python -m deepedge.serving.replica --checkpoint model.ckpt --name r1 --ready-file r1.json

It speaks exactly the protocol of :mod:`deepedge.apps.server` (a 4-byte big-endian
length :data:`~deepedge.apps.server.HEADER`, then ``C×S×S`` uint8 image bytes; the reply
is :data:`~deepedge.apps.server.REPLY` = (class ``int32``, service µs ``uint32``)) and
reuses that module's serving loop, so the front end, the load generator and the latency
statistics treat a replica like any LC app. Requests are served one at a time on the
event-loop thread: the queueing a replica shows is the queueing a single-instance edge
model server has.

Once the model is loaded and warm and the socket bound, the ready file gets
``{"port", "pid", "name", "payload_bytes", "input_shape", "num_classes", "job"}``
atomically. A bad checkpoint exits with its error's code (1; 2 for a bad job spec in it)
and one line on stderr. SIGTERM exits 0
promptly, also during the slow torch import (seconds under a small CPU quota); with
``--parent-pid`` the replica also exits once that process is gone.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import signal
import sys
import time
from typing import TYPE_CHECKING, Any

from deepedge.apps.server import _Handler, _serve, service_us_since
from deepedge.errors import ClusterError, DeepEdgeError, SpecError

if TYPE_CHECKING:
    from deepedge.meanet.offload import EdgeCloudClassifier
    from deepedge.serving.model import ServedModel

__all__ = ["main"]


class _ModelReplica(_Handler):
    """One forward pass of the checkpoint's model per request, on ``--threads`` threads."""

    kind = "model_replica"

    def __init__(self, args: argparse.Namespace) -> None:
        # No super().__init__: the payload size comes from the checkpoint, not --image-size.
        import torch

        from deepedge.serving.model import load_served_model

        torch.set_num_threads(args.threads)
        with contextlib.suppress(RuntimeError):  # only settable before first parallel work
            torch.set_num_interop_threads(1)
        self.served: ServedModel = load_served_model(args.checkpoint)
        self.nbytes = self.served.payload_bytes
        self.meanet: EdgeCloudClassifier | None = None
        from deepedge.models.meanet import MEANet

        if isinstance(self.served.model, MEANet):
            from deepedge.meanet.exits import ExitRule
            from deepedge.meanet.offload import CloudClient, EdgeCloudClassifier, parse_address

            try:
                rule = ExitRule(args.main_threshold, args.cloud_threshold)
            except ValueError as exc:
                raise SpecError(str(exc), hint="thresholds are normalised entropies") from None
            self._cloud = CloudClient(*parse_address(args.cloud)) if args.cloud else None
            # the cloud is attached after the warm-up: blank images must not reach it
            self.meanet = EdgeCloudClassifier(self.served.model, rule)
        elif args.cloud:
            raise SpecError(
                f"--cloud needs a MEANet edge checkpoint; {args.checkpoint} holds "
                f"{type(self.served.model).__name__}",
                hint="serve the meanet-edge.ckpt deepedge meanet train wrote",
            )

    def process(self, payload: bytes) -> int:
        if self.meanet is not None:  # the edge's answer (the warm-up has no cloud)
            return self.meanet.at_edge(self.served.to_input(payload)).label
        return self.served.predict(payload)  # eval mode, inference_mode, training's scaling

    async def serve(self, payload: bytes) -> tuple[int, int]:
        if self.meanet is None or self.meanet.cloud is None:
            return self.handle(payload)
        # exits at the main or extension block, or awaits the cloud without blocking
        # the edge's other requests; the service time includes the wait
        t0 = time.perf_counter()
        x = self.served.to_input(payload)
        try:
            label = (await self.meanet.classify(x, payload)).label
        except ClusterError as err:  # the cloud is down: the edge's own answer, not none
            print(f"replica: {err.one_line()}; answering at the edge", file=sys.stderr)
            label = self.meanet.at_edge(x).label
        return label, service_us_since(t0)

    def warm_up(self, n: int) -> None:
        super().warm_up(n)
        if self.meanet is not None:
            self.meanet.cloud = self._cloud

    def close(self) -> None:
        if self.meanet is not None and self.meanet.cloud is not None:
            self.meanet.cloud.close()

    def info(self) -> dict[str, Any]:
        return {
            "payload_bytes": self.nbytes,
            "input_shape": list(self.served.input_shape),
            "num_classes": self.served.num_classes,
            "job": self.served.job_name,
        }


def _parse(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="python -m deepedge.serving.replica",
        description="Serve a trained deepedge checkpoint over the LC apps' TCP protocol.",
    )
    p.add_argument("--checkpoint", required=True, help="a checkpoint written by deepedge")
    p.add_argument("--name", required=True, help="replica name (ready file and messages)")
    p.add_argument("--ready-file", required=True, help="where to write {port, pid, ...}")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=0, help="0 picks a free ephemeral port")
    p.add_argument("--threads", type=int, default=1, help="torch intra-op threads")
    p.add_argument("--warmup", type=int, default=20, help="requests served before ready")
    p.add_argument("--parent-pid", type=int, default=None, help="exit when this pid is gone")
    meanet = p.add_argument_group("MEANet edge checkpoints: exits by normalised entropy")
    meanet.add_argument("--main-threshold", type=float, default=0.3, help="exit at the main block")
    meanet.add_argument("--cloud-threshold", type=float, default=1.0, help="send to the cloud")
    meanet.add_argument("--cloud", help="HOST:PORT of the cloud model's replica")
    args = p.parse_args(argv)
    if args.threads < 1 or not 0 <= args.port < 65536 or args.warmup < 0:
        p.error("need --threads >= 1, --warmup >= 0 and 0 <= --port < 65536")
    return args


async def _serve_then_close(
    args: argparse.Namespace, handler: _ModelReplica, ready: dict[str, Any]
) -> None:
    """Serve, then close the handler while its loop still runs (its cloud connections
    belong to that loop)."""
    try:
        await _serve(args, handler, ready)
    finally:
        handler.close()


def main(argv: list[str] | None = None) -> int:
    """Entry point; returns the exit code (0 on SIGTERM/SIGINT; for a checkpoint that cannot
    be served, the error's code: 1, or 2 when its job spec is invalid)."""
    # Until the event loop takes over, a SIGTERM (a pool giving up during the slow torch
    # import, or scaling in) must still exit 0 without a traceback.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    signal.signal(signal.SIGINT, lambda *_: sys.exit(0))
    args = _parse(argv)
    try:
        handler = _ModelReplica(args)
    except DeepEdgeError as exc:
        print(f"replica {args.name}: {exc.one_line()}", file=sys.stderr, flush=True)
        return exc.exit_code
    try:
        handler.warm_up(args.warmup)
        ready = {"name": args.name, "kind": handler.kind, **handler.info()}
        asyncio.run(_serve_then_close(args, handler, ready))
    finally:
        handler.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
