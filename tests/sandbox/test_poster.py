"""The webhook poster (sandbox/poster.py): keep-alive reuse, a connection the server closed while idle is
replaced without losing the delivery, and no answer at all is a PostError naming the cause."""

from __future__ import annotations

import socket
import threading

import pytest

from sandbox.poster import PostError, Poster

ANSWER = b"HTTP/1.1 202 Accepted\r\nContent-Length: 0\r\n\r\n"


class OneShotServer:
    """Answers one request per connection, then closes it (while the client believes it is kept alive)."""

    def __init__(self) -> None:
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        self.connections = 0
        self.requests = 0
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            self.connections += 1
            with conn:
                data = b""
                while b"\r\n\r\n" not in data:
                    data += conn.recv(65536)
                head, _, rest = data.partition(b"\r\n\r\n")
                length = int(next(line.split(b":")[1] for line in head.split(b"\r\n")
                                  if line.lower().startswith(b"content-length")))
                while len(rest) < length:
                    rest += conn.recv(65536)
                self.requests += 1
                conn.sendall(ANSWER)


def test_a_connection_closed_while_idle_is_replaced() -> None:
    server = OneShotServer()
    poster = Poster(timeout=5)
    try:
        url = f"http://127.0.0.1:{server.port}/hook?code=k"
        assert [poster.post(url, b"{}", {"Content-Type": "application/json"}) for _ in range(3)] == [202] * 3
        assert server.requests == 3 and server.connections == 3
    finally:
        poster.close()
        server.sock.close()


def test_no_answer_is_a_post_error_naming_the_cause() -> None:
    with socket.create_server(("127.0.0.1", 0)) as sock:
        port = sock.getsockname()[1]
    with pytest.raises(PostError, match="ConnectionRefusedError"):
        Poster(timeout=2).post(f"http://127.0.0.1:{port}/hook", b"{}", {})
