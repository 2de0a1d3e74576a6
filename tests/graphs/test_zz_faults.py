"""Faults on the deployed graph (runs last: it kills a replica). A generator replica killed
mid-job leaves the job `failed` with a reason, never `running`; Serve brings a new replica
up and generations work again (the recovery time is printed)."""

from __future__ import annotations

import time

import httpx
import pytest

from tests.conftest import wait_until


@pytest.mark.slow
def test_killed_generator_replica_fails_the_job_and_recovers(http, gateway):
    import ray

    r = http.post("/v1/images/generations?async=true",
                  json={"prompt": "a job that will lose its replica", "size": "256x256",
                        "steps": 50})
    job_id = r.json()["id"]
    wait_until(lambda: http.get(f"/v1/jobs/{job_id}").json()["progress"] > 0, timeout=60,
               what="the job to make progress")
    name = gateway.handle("Generator").info.remote().result(timeout_s=30)["actor_name"]
    ray.kill(ray.get_actor(name, namespace="serve"), no_restart=True)
    killed = time.monotonic()

    def ended():
        job = http.get(f"/v1/jobs/{job_id}").json()
        return job if job["status"] not in ("queued", "running") else None

    job = wait_until(ended, timeout=120, what="the job to end")
    assert job["status"] == "failed" and job["error"], job

    def generates():
        try:
            return httpx.post(f"{gateway.base_url}/v1/images/generations",
                              json={"prompt": "back", "size": "64x64"},
                              timeout=60, headers=gateway.headers).status_code == 200
        except httpx.HTTPError:
            return False

    wait_until(generates, timeout=240, interval=1, what="a new generator replica")
    print(f"\nrecovered {time.monotonic() - killed:.1f}s after the kill; job error: "
          f"{job['error']}")
