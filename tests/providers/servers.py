"""Real HTTP servers for the provider tests: an ASGI app under uvicorn on 127.0.0.1 in a
background thread (the providers talk to it over real sockets, websockets included)."""

from __future__ import annotations

import io
import socket
import threading
import time

import numpy as np


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class LiveServer:
    """`with LiveServer(app) as server: server.url`; `stop(force=True)` kills it mid-run
    (open connections are dropped, new ones refused)."""

    def __init__(self, app, *, port: int | None = None, log_level: str = "warning"):
        import uvicorn

        self.port = port or free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        config = uvicorn.Config(app, host="127.0.0.1", port=self.port, log_level=log_level,
                                access_log=False, lifespan="off", ws="websockets-sansio",
                                timeout_graceful_shutdown=0)
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, daemon=True)

    def start(self) -> LiveServer:
        self.thread.start()
        deadline = time.monotonic() + 20
        while not self.server.started:
            if not self.thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError("test server did not start")
            time.sleep(0.01)
        return self

    def stop(self, *, force: bool = False) -> None:
        self.server.should_exit = True
        if force:
            self.server.force_exit = True
        self.thread.join(timeout=20)

    def __enter__(self) -> LiveServer:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop(force=True)


def png_bytes(array: np.ndarray | None = None, *, size=(16, 12), color=(200, 30, 30),
              fmt: str = "PNG") -> bytes:
    from PIL import Image

    if array is None:
        array = np.zeros((size[1], size[0], 3), np.uint8)
        array[...] = color
    buf = io.BytesIO()
    Image.fromarray(array).save(buf, format=fmt)
    return buf.getvalue()


def decode(data: bytes) -> np.ndarray:
    from PIL import Image

    with Image.open(io.BytesIO(data)) as img:
        return np.asarray(img)


def pattern(seed: int, width: int, height: int, text: str = "") -> np.ndarray:
    """A deterministic stand-in image: depends on seed, size and text only."""
    rng = np.random.default_rng([seed & 0xFFFFFFFF, sum(map(ord, text)) & 0xFFFF])
    return rng.integers(0, 256, size=(height, width, 3), dtype=np.uint8)
