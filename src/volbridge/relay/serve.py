"""Running the relay under uvicorn: in the foreground (``volbridge serve``) or in a thread
(``volbridge view``, tests, notebooks)."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Callable

from .app import create_app
from .config import RelayConfig
from .state import Relay


def _bind(host: str, port: int) -> socket.socket:
    """The listening socket, bound before uvicorn starts, so ``port=0`` yields a known free port."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    # proto=IPPROTO_TCP matters: asyncio sets TCP_NODELAY on accepted sockets only when the
    # protocol says TCP, and without it every keep-alive response waits 40 ms for a delayed ACK.
    sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as e:
        sock.close()
        from ..errors import InvalidArgumentError

        raise InvalidArgumentError(f"cannot listen on {host}:{port}: {e.strerror or e}") from e
    sock.listen(2048)
    return sock


def channel_urls(relay: Relay, base: str) -> list[tuple[str, str, str]]:
    """(channel, bossdb URL, precomputed URL) of every channel, for the start-up banner."""
    return [(n, f"bossdb://{base}/{n}", f"precomputed://{base}/{n}") for n in relay.sources]


class RelayServer:
    """A relay on a socket: ``run()`` blocks; ``start()`` runs it in a daemon thread."""

    def __init__(self, config: RelayConfig, *, log_level: str = "info", access_log: bool = True):
        import uvicorn

        self.relay = Relay(config)
        self.sock = _bind(config.host, config.port)
        host, port = self.sock.getsockname()[:2]
        shown = f"[{host}]" if ":" in host else host
        self.url = f"http://{shown}:{port}"
        app = create_app(self.relay)
        self.server = uvicorn.Server(uvicorn.Config(
            app, log_level=log_level, access_log=access_log, timeout_keep_alive=30, lifespan="off",
        ))
        self._thread: threading.Thread | None = None

    def run(self) -> None:
        self.server.run(sockets=[self.sock])

    def start(self, timeout: float = 30.0) -> RelayServer:
        self._thread = threading.Thread(target=self.run, name="volbridge-relay", daemon=True)
        self._thread.start()
        deadline = time.monotonic() + timeout
        while not self.server.started:
            if time.monotonic() > deadline or not self._thread.is_alive():
                raise RuntimeError("the relay did not start")
            time.sleep(0.02)
        return self

    def stop(self) -> None:
        self.server.should_exit = True
        if self._thread is not None:
            self._thread.join(10)


def serve(config: RelayConfig, *, log_level: str = "info", announce: Callable[[str], None] = print) -> None:
    """Run the relay in the foreground until interrupted."""
    server = RelayServer(config, log_level=log_level)
    announce(f"volbridge relay listening on {server.url}")
    for name, boss_url, pre_url in channel_urls(server.relay, server.url):
        announce(f"  {name}: {boss_url}  {pre_url}")
    server.run()
