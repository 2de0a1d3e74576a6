"""Async jobs over real HTTP: 202 + job, polling, SSE progress, cancel, listing, 404s."""

from __future__ import annotations

import io
import json

import httpx
import numpy as np
import pytest
from PIL import Image

from tests.conftest import wait_until


def _job(http, job_id):
    r = http.get(f"/v1/jobs/{job_id}")
    assert r.status_code == 200, r.text
    return r.json()


def _finished(http, job_id):
    job = _job(http, job_id)
    return job if job["status"] in ("succeeded", "failed", "cancelled") else None


def test_async_generation_returns_202_then_succeeds(http):
    r = http.post("/v1/images/generations?async=true",
                  json={"prompt": "a slow cat", "size": "64x64", "n": 2})
    assert r.status_code == 202, r.text
    job = r.json()
    assert job["status"] in ("queued", "running") and r.headers["location"].endswith(job["id"])
    done = wait_until(lambda: _finished(http, job["id"]), timeout=120, what="the job to end")
    assert done["status"] == "succeeded" and done["progress"] == 1.0
    assert len(done["result"]["data"]) == 2 and len(done["assets"]) == 2
    image = httpx.get(done["result"]["data"][0]["url"], timeout=30)
    assert Image.open(io.BytesIO(image.content)).size == (64, 64)


def test_prefer_respond_async_works_for_tools(http):
    buf = io.BytesIO()
    Image.fromarray(np.zeros((16, 16, 3), np.uint8)).save(buf, format="PNG")
    r = http.post("/v1/images/upscale", files={"image": ("a.png", buf.getvalue())},
                  data={"scale": "2"}, headers={"Prefer": "respond-async"})
    assert r.status_code == 202, r.text
    done = wait_until(lambda: _finished(http, r.json()["id"]), timeout=120, what="upscale")
    assert done["status"] == "succeeded" and done["kind"] == "upscale"


def test_events_stream_progress_in_order(http, gateway):
    r = http.post("/v1/images/generations?async=true",
                  json={"prompt": "a fox", "size": "128x128", "steps": 12})
    job_id = r.json()["id"]
    events = []
    with httpx.stream("GET", f"{gateway.base_url}/v1/jobs/{job_id}/events", timeout=120,
                      headers=gateway.headers) as s:
        name = None
        for line in s.iter_lines():
            if line.startswith("event:"):
                name = line.split(":", 1)[1].strip()
            elif line.startswith("data:"):
                events.append((name, json.loads(line.split(":", 1)[1])))
    names = [n for n, _ in events]
    assert names[-1] == "succeeded" and set(names[:-1]) <= {"progress"}
    progress = [e["progress"] for _, e in events]
    assert progress == sorted(progress) and progress[-1] == 1.0
    assert any(e["step"] and "denoising" in e["step"] for _, e in events), names


def test_cancel_a_running_job(http):
    r = http.post("/v1/images/generations?async=true",
                  json={"prompt": "a very long job", "size": "256x256", "steps": 50})
    job_id = r.json()["id"]
    wait_until(lambda: _job(http, job_id)["status"] == "running", timeout=60, what="running")
    cancelled = http.delete(f"/v1/jobs/{job_id}")
    assert cancelled.status_code == 200
    done = wait_until(lambda: _finished(http, job_id), timeout=60, what="the cancel")
    assert done["status"] == "cancelled" and done["error"]


def test_list_jobs_filters_and_pages(http):
    for i in range(3):
        assert http.post("/v1/images/generations",
                         json={"prompt": f"listed {i}", "size": "64x64"}).status_code == 200
    first = http.get("/v1/jobs", params={"status": "succeeded", "limit": 2}).json()
    assert len(first["data"]) == 2 and first["next_cursor"]
    assert all(j["status"] == "succeeded" for j in first["data"])
    second = http.get("/v1/jobs", params={"status": "succeeded", "limit": 2,
                                          "cursor": first["next_cursor"]}).json()
    assert not {j["id"] for j in first["data"]} & {j["id"] for j in second["data"]}
    created = [j["created_at"] for j in first["data"] + second["data"]]
    assert created == sorted(created, reverse=True)


@pytest.mark.parametrize("path,status", [
    ("/v1/jobs/job_missing", 404),
    ("/v1/jobs/job_missing/events", 404),
    ("/v1/jobs?cursor=not-a-cursor", 400),
    ("/v1/jobs?status=sleeping", 400),
    ("/v1/assets/..%2F..%2Fetc%2Fpasswd", 404),
    ("/v1/images/generations?async=maybe", 405),
])
def test_bad_ids_and_cursors(http, path, status):
    r = http.get(path)
    assert r.status_code == status, r.text
    assert r.json()["error"]["message"]


def test_delete_unknown_job_is_404(http):
    assert http.delete("/v1/jobs/job_missing").status_code == 404
