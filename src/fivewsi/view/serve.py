"""A uvicorn server in a background thread, on a port that is known once it listens.

Used by ``fivewsi view`` (which then waits on it) and by the tests (real HTTP on loopback).

Example:
    >>> from starlette.applications import Starlette
    >>> server = Server(Starlette(), port=0).start()
    >>> server.url.startswith("http://127.0.0.1:")
    True
    >>> server.stop()
"""

from __future__ import annotations

import socket
import threading
import time
from typing import Any


class Server:
    """``uvicorn`` serving ``app`` on ``host:port`` (0: a free port) in a daemon thread."""

    def __init__(self, app: Any, *, host: str = "127.0.0.1", port: int = 0) -> None:
        import uvicorn

        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        # proto named: asyncio sets TCP_NODELAY only on sockets whose proto is TCP, and without
        # it each response (head and body written apart) waits ~40 ms for a delayed ACK.
        self.socket = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
        self.socket.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            self.socket.bind((host, port))
        except OSError:
            self.socket.close()
            raise
        self.host, self.port = host, self.socket.getsockname()[1]
        config = uvicorn.Config(app, log_level="warning", access_log=False, lifespan="off",
                                server_header=False)
        self._server = uvicorn.Server(config)
        self._thread = threading.Thread(target=self._server.run,
                                        kwargs={"sockets": [self.socket]}, daemon=True)

    @property
    def url(self) -> str:
        name = f"[{self.host}]" if ":" in self.host else self.host
        if self.host in ("0.0.0.0", "::"):
            name = socket.gethostname()
        return f"http://{name}:{self.port}"

    def start(self, timeout: float = 10.0) -> Server:
        self._thread.start()
        deadline = time.monotonic() + timeout
        while not self._server.started:
            if not self._thread.is_alive() or time.monotonic() > deadline:
                raise OSError(f"the server did not start on {self.host}:{self.port}")
            time.sleep(0.02)
        return self

    def wait(self) -> None:
        while self._thread.is_alive():
            self._thread.join(0.5)

    def stop(self) -> None:
        self._server.should_exit = True
        self._thread.join(10)
        self.socket.close()
