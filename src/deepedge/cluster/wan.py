"""A wide-area link's round-trip time, added by a TCP relay.

The emulated cluster shapes each device's link with ``tbf`` (:mod:`deepedge.cluster.netns`),
which limits bandwidth but adds no propagation delay, and the ``netem`` qdisc that would is
not available on our machines. A WAN's delay is therefore added one level up, as
Toxiproxy's latency toxic does: :class:`DelayRelay` accepts TCP connections, opens one to
the real server for each, and forwards every chunk of bytes in either direction half the
round-trip time after it arrived, in order. Bytes still cross the shaped links, so a
transfer over the relay costs both the link's serialisation time and the RTT.

The relay runs on its own thread with its own event loop, so a busy caller does not add
to the delay; the delay is a deadline per chunk, not a sleep between chunks, so a stream
of chunks is delayed once, not once per chunk.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
import time

from deepedge.errors import ClusterError

__all__ = ["DelayRelay"]

_CHUNK = 64 * 1024


class DelayRelay:
    """Forward TCP connections on ``listen_host`` to ``target_host:target_port``, adding
    ``rtt_s`` to every round trip (half on the way there, half on the way back).

    Use as a context manager, or :meth:`start` and :meth:`close`; :attr:`port` is the
    port it listens on (ephemeral unless given).
    """

    def __init__(
        self,
        target_host: str,
        target_port: int,
        rtt_s: float,
        *,
        listen_host: str = "127.0.0.1",
        listen_port: int = 0,
    ) -> None:
        if not 0 <= rtt_s <= 10:
            raise ClusterError(f"a WAN round-trip time must be in [0, 10] s, got {rtt_s}")
        self.target = (target_host, target_port)
        self.one_way_s = rtt_s / 2
        self.listen = (listen_host, listen_port)
        self.port = 0
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._stop: asyncio.Event | None = None
        self._started = threading.Event()
        self._error: BaseException | None = None

    def start(self) -> DelayRelay:
        self._thread = threading.Thread(target=self._run, name="wan-relay", daemon=True)
        self._thread.start()
        self._started.wait()
        if self._error is not None:
            raise ClusterError(
                f"cannot listen on {self.listen[0]}:{self.listen[1]} for the WAN relay: "
                f"{self._error}",
                hint="pick a free port or an address of this host",
            )
        return self

    def close(self) -> None:
        """Stop accepting, drop every relayed connection and join the thread. Idempotent."""
        if self._loop is not None and self._stop is not None and not self._loop.is_closed():
            with contextlib.suppress(RuntimeError):  # loop already finished
                self._loop.call_soon_threadsafe(self._stop.set)
        if self._thread is not None:
            self._thread.join(timeout=5)
            self._thread = None

    def __enter__(self) -> DelayRelay:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _run(self) -> None:
        self._loop = asyncio.new_event_loop()
        try:
            self._loop.run_until_complete(self._serve())
        finally:
            self._loop.close()

    async def _serve(self) -> None:
        self._stop = asyncio.Event()
        tasks: set[asyncio.Task[None]] = set()

        def accepted(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            task = asyncio.ensure_future(self._relay(reader, writer))
            tasks.add(task)
            task.add_done_callback(tasks.discard)

        try:
            server = await asyncio.start_server(accepted, *self.listen)
        except OSError as exc:
            self._error = exc
            self._started.set()
            return
        self.port = server.sockets[0].getsockname()[1]
        self._started.set()
        await self._stop.wait()
        server.close()
        for task in list(tasks):
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    async def _relay(self, client_r: asyncio.StreamReader, client_w: asyncio.StreamWriter) -> None:
        try:
            server_r, server_w = await asyncio.open_connection(*self.target)
        except OSError:
            client_w.close()  # the client sees the connection close: the server is not there
            return
        try:
            await asyncio.gather(self._pipe(client_r, server_w), self._pipe(server_r, client_w))
        finally:
            for w in (client_w, server_w):
                w.close()

    async def _pipe(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        """Copy ``reader`` to ``writer``, each chunk ``one_way_s`` after it was read.

        A reader task stamps chunks into a queue and this task writes each at its
        deadline, so a long transfer is delayed once (as on a real link), and a half-close
        (EOF) reaches the other side after the same delay.
        """
        # bounded: a sender faster than the far side waits, as on a real link
        queue: asyncio.Queue[tuple[float, bytes]] = asyncio.Queue(maxsize=64)

        async def read() -> None:
            try:
                while chunk := await reader.read(_CHUNK):
                    await queue.put((time.monotonic() + self.one_way_s, chunk))
            except OSError:
                pass
            await queue.put((time.monotonic() + self.one_way_s, b""))

        reading = asyncio.ensure_future(read())
        try:
            while True:
                due, chunk = await queue.get()
                wait = due - time.monotonic()
                if wait > 0:
                    await asyncio.sleep(wait)
                if not chunk:
                    if writer.can_write_eof():
                        with contextlib.suppress(OSError):
                            writer.write_eof()
                    return
                writer.write(chunk)
                await writer.drain()
        except OSError:
            return
        finally:
            reading.cancel()
