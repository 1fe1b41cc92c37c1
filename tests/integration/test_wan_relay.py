"""The WAN relay: every round trip pays its RTT once, bytes arrive whole and in order, and
a server that is gone or a client that leaves closes the other side."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator

import pytest

from deepedge.cluster.wan import DelayRelay
from deepedge.errors import ClusterError

RTT_S = 0.1


@pytest.fixture
def echo_port() -> Iterator[int]:
    server = socket.create_server(("127.0.0.1", 0))

    def serve() -> None:
        while True:
            try:
                conn, _ = server.accept()
            except OSError:
                return
            with conn:
                while data := conn.recv(65536):
                    conn.sendall(data)

    threading.Thread(target=serve, daemon=True).start()
    yield server.getsockname()[1]
    server.close()


def recv_exactly(sock: socket.socket, n: int) -> bytes:
    buf = bytearray()
    while len(buf) < n:
        chunk = sock.recv(n - len(buf))
        assert chunk, "connection closed early"
        buf += chunk
    return bytes(buf)


def test_round_trips_pay_the_rtt_once_and_bytes_arrive_intact(echo_port: int) -> None:
    with (
        DelayRelay("127.0.0.1", echo_port, RTT_S) as relay,
        socket.create_connection(("127.0.0.1", relay.port), timeout=10) as sock,
    ):
        t0 = time.perf_counter()
        sock.sendall(b"x")
        assert recv_exactly(sock, 1) == b"x"
        assert time.perf_counter() - t0 >= RTT_S
        # 4 MiB in many chunks: the delay is per chunk's arrival, not added per chunk
        data = bytes(range(256)) * (16 * 1024)
        t0 = time.perf_counter()
        sender = threading.Thread(target=sock.sendall, args=(data,))
        sender.start()
        assert recv_exactly(sock, len(data)) == data
        sender.join()
        took = time.perf_counter() - t0
        assert RTT_S <= took < 20 * RTT_S  # 64 chunks each delayed by an RTT would be 6.4 s
        sock.shutdown(socket.SHUT_WR)
        assert sock.recv(1) == b""  # the half-close crossed to the server and back


def test_a_missing_server_closes_the_client_and_a_bad_rtt_is_refused() -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with (
        DelayRelay("127.0.0.1", port, RTT_S) as relay,
        socket.create_connection(("127.0.0.1", relay.port), timeout=10) as sock,
    ):
        assert sock.recv(1) == b""
    with pytest.raises(ClusterError, match="round-trip"):
        DelayRelay("127.0.0.1", port, -1.0)
