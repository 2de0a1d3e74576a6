"""`photostudio serve` starts, answers over HTTP, and stops cleanly on Ctrl-C."""

from __future__ import annotations

import os
import signal
import subprocess
import sys

import httpx
import pytest

from tests.conftest import free_port, wait_until


def test_help_lists_commands():
    out = subprocess.run([sys.executable, "-m", "graphs.cli", "--help"], capture_output=True,
                         text=True, check=True).stdout
    assert "serve" in out and "zoo" in out


def test_zoo_build_reuses_the_cache(zoo_dir):
    out = subprocess.run([sys.executable, "-m", "graphs.cli", "zoo", "build", "tiny-sd",
                          "--zoo-dir", str(zoo_dir)], capture_output=True, text=True,
                         check=True)
    assert str(zoo_dir / "tiny-sd") in out.stderr + out.stdout


@pytest.mark.slow
def test_serve_starts_generates_and_stops_on_ctrl_c(tmp_path, zoo_dir):
    port = free_port()
    env = {**os.environ, "PHOTOSTUDIO_ZOO_DIR": str(zoo_dir)}
    env.pop("RAY_ADDRESS", None)
    proc = subprocess.Popen(
        [sys.executable, "-m", "graphs.cli", "serve", "--profile", "tiny", "--port", str(port),
         "--data-dir", str(tmp_path / "d"), "--no-dashboard"],
        env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        def up():
            try:
                return httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=2).status_code == 200
            except httpx.HTTPError:
                assert proc.poll() is None, proc.stdout.read()
                return False

        wait_until(up, timeout=180, interval=1, what="photostudio serve to answer")
        r = httpx.post(f"http://127.0.0.1:{port}/v1/images/generations",
                       json={"prompt": "a cat", "size": "64x64"}, timeout=120)
        assert r.status_code == 200 and r.json()["data"][0]["b64_json"]
        proc.send_signal(signal.SIGINT)
        output, _ = proc.communicate(timeout=120)
        assert proc.returncode == 0, output
        assert "Stopped." in output
    finally:
        if proc.poll() is None:
            proc.kill()
