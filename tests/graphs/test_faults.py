"""Faults on a deployed graph. A generator replica killed mid-job leaves the job `failed`
with a reason, never `running`; Serve brings a new replica up and generations work again
(the recovery time is printed).

The replica killed is the package's `local_gateway`'s (tests/graphs/conftest.py), never the
shared `gateway`'s: no other test sees the kill, so this one runs in any order."""

from __future__ import annotations

import time

import httpx
import pytest

from tests.conftest import wait_until


@pytest.mark.slow
def test_killed_generator_replica_fails_the_job_and_recovers(local_gateway):
    import ray

    http = httpx.Client(base_url=local_gateway.base_url, timeout=120)  # auth is off there
    try:
        r = http.post("/v1/images/generations?async=true",
                      json={"prompt": "a job that will lose its replica", "size": "256x256",
                            "steps": 50})
        assert r.status_code == 202, r.text
        job_id = r.json()["id"]
        wait_until(lambda: http.get(f"/v1/jobs/{job_id}").json()["progress"] > 0,
                   timeout=60, what="the job to make progress")
        generator = local_gateway.handle("Generator")
        name = generator.info.remote().result(timeout_s=30)["actor_name"]
        ray.kill(ray.get_actor(name, namespace="serve"), no_restart=True)
        killed = time.monotonic()

        def ended():
            job = http.get(f"/v1/jobs/{job_id}").json()
            return job if job["status"] not in ("queued", "running") else None

        job = wait_until(ended, timeout=120, what="the job to end")
        assert job["status"] == "failed" and job["error"], job

        def generates():
            try:
                return http.post("/v1/images/generations",
                                 json={"prompt": "back", "size": "64x64"},
                                 timeout=60).status_code == 200
            except httpx.HTTPError:
                return False

        wait_until(generates, timeout=240, interval=1, what="a new generator replica")
        # a new replica, not the killed one answering late
        assert generator.info.remote().result(timeout_s=30)["actor_name"] != name
        print(f"\nrecovered {time.monotonic() - killed:.1f}s after the kill; job error: "
              f"{job['error']}")
    finally:
        http.close()
