"""The dashboard served by uvicorn: in the foreground for ``deepedge dashboard``, or on a
thread beside a running session, so the page shows it live."""

from __future__ import annotations

import socket
import threading
import time
from pathlib import Path

import uvicorn

from deepedge.dashboard.app import check_bind, create_app
from deepedge.dashboard.sources import Sources
from deepedge.errors import ClusterError

__all__ = ["DashboardServer"]


class DashboardServer:
    """Serve :func:`~deepedge.dashboard.app.create_app` over ``sources`` on ``host:port``
    (port 0: any free one). :attr:`token` is the one requests need, generated when
    ``host`` is not loopback and none was given (see
    :func:`~deepedge.dashboard.app.check_bind`); :attr:`url` carries it."""

    def __init__(
        self,
        sources: Sources,
        *,
        host: str = "127.0.0.1",
        port: int = 8050,
        token: str | None = None,
        allow_control: bool = False,
        spec: Path | None = None,
    ) -> None:
        self.sources = sources
        self.host = host
        self.token = check_bind(host, token)
        app = create_app(sources, token=self.token, allow_control=allow_control, spec=spec)
        config = uvicorn.Config(app, log_level="warning", access_log=False, lifespan="off")
        self._server = uvicorn.Server(config)
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        self._sock = socket.socket(family, socket.SOCK_STREAM)
        self._sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            self._sock.bind((host, port))
        except OSError as exc:
            self._sock.close()
            raise ClusterError(
                f"the dashboard cannot listen on {host}:{port}: {exc.strerror}",
                hint="pick another --port (0 takes any free one) or another --host",
            ) from None
        self.port = self._sock.getsockname()[1]
        self._thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}/" + (f"?token={self.token}" if self.token else "")

    def run(self) -> None:
        """Serve in this thread until interrupted."""
        try:
            self._server.run(sockets=[self._sock])
        finally:
            self.sources.close()

    def start(self, timeout_s: float = 30.0) -> DashboardServer:
        """Serve on a daemon thread; return once it accepts requests."""
        self._thread = threading.Thread(target=self.run, name="dashboard", daemon=True)
        self._thread.start()
        deadline = time.monotonic() + timeout_s
        while not self._server.started:
            if not self._thread.is_alive() or time.monotonic() > deadline:
                raise ClusterError("the dashboard server did not start", hint="see the log above")
            time.sleep(0.02)
        return self

    def stop(self) -> None:
        self._server.should_exit = True
        if self._thread is not None:
            self._thread.join(timeout=10)
            self._thread = None
        self._sock.close()

    def __enter__(self) -> DashboardServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
