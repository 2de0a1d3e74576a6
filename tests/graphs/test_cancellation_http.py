"""Client disconnects cancel in-flight work, through the real Serve proxy: the generator's
own record shows the denoising loop stopped early, and the gateway answers the next request.
"""

from __future__ import annotations

import json
import socket
import time
from urllib.parse import urlparse

import pytest

from tests.conftest import wait_until


def _stats(gateway) -> dict:
    return gateway.handle("Generator").stats.remote().result(timeout_s=30)


def _send_and_hang_up_later(base_url: str, path: str, body: dict,
                            api_key: str = "") -> socket.socket:
    """A raw HTTP/1.1 request whose connection the test closes by hand (no response read)."""
    url = urlparse(base_url)
    payload = json.dumps(body).encode()
    sock = socket.create_connection((url.hostname, url.port), timeout=30)
    sock.sendall(f"POST {path} HTTP/1.1\r\nHost: {url.netloc}\r\n"
                 f"Authorization: Bearer {api_key}\r\n"
                 f"Content-Type: application/json\r\nContent-Length: {len(payload)}\r\n"
                 "\r\n".encode() + payload)
    return sock


@pytest.mark.slow  # a 50-step generation to walk away from
def test_client_disconnect_stops_the_generation_at_the_next_step(gateway, http):
    before = _stats(gateway)["cancelled"]
    # 50 steps at 256x256 take ~50 s on the tiny model on 2 CPU cores: long enough to leave.
    sock = _send_and_hang_up_later(gateway.base_url, "/v1/images/generations", {
        "prompt": "a generation whose client leaves", "size": "256x256", "steps": 50},
        api_key=gateway.api_key)
    try:
        busy = wait_until(lambda: (s := _stats(gateway))["model_busy"] and s, timeout=60,
                          interval=0.1, what="the generator to start denoising")
        wait_until(lambda: _stats(gateway)["denoising_steps"] >= busy["denoising_steps"] + 2,
                   timeout=60, interval=0.1, what="a step or two")
    finally:
        sock.close()  # the client disconnects
    left = time.monotonic()

    def interrupted():
        stats = _stats(gateway)
        return stats if stats["cancelled"]["interrupted_calls"] > \
            before["interrupted_calls"] else None

    stats = wait_until(interrupted, timeout=40, interval=0.2,
                       what="the generator to record the interrupted call")
    cancelled = stats["cancelled"]
    assert cancelled["requests"] > before["requests"]  # the replica saw its caller leave
    last = cancelled["last_interrupt"]
    assert last["total_steps"] == 50 and 1 <= last["steps_run"] < 50, last
    assert cancelled["steps_skipped"] - before["steps_skipped"] >= 50 - last["steps_run"]
    wait_until(lambda: not _stats(gateway)["model_busy"], timeout=20,
               what="the model to be free again")
    stopped_after = time.monotonic() - left
    # the job of the abandoned request ends (cancelled), never stays running
    wait_until(lambda: not http.get("/v1/jobs", params={"status": "running"}).json()["data"],
               timeout=30, what="no job left running")
    # the server answers the next request
    r = http.post("/v1/images/generations", json={"prompt": "next", "size": "64x64",
                                                  "steps": 2})
    assert r.status_code == 200, r.text
    print(f"\nstopped after {last['steps_run']}/{last['total_steps']} steps, model free "
          f"{stopped_after:.1f}s after the disconnect")
