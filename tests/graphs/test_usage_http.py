"""Usage accounting over real HTTP on the production graph: a scripted sequence of requests
across two ingress replicas (plain and streamed generations, a tool, image analysis, a
video, requests refused at the gate) is summed exactly by GET /v1/usage, the totals survive
the ingress replicas being killed and restarted, image responses carry the real counts, and
project quotas (images/day, model-seconds/day) answer 429 naming the quota."""

from __future__ import annotations

import concurrent.futures
import copy
import io
import uuid

import httpx
import numpy as np
import pytest
from PIL import Image

from tests.conftest import wait_until

pytestmark = pytest.mark.slow  # scales the shared gateway's Ingress to 2 replicas and back

GEN = "POST /v1/images/generations"
TOOL = "POST /v1/images/remove-background"


def png(array: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(array).save(buf, format="PNG")
    return buf.getvalue()


def ingress_replicas(app_name: str) -> int:
    from ray import serve

    status = serve.status().applications[app_name].deployments["Ingress"]
    return status.replica_states.get("RUNNING", 0) if status.status == "HEALTHY" else 0


def deploy(config: dict) -> None:
    from ray.serve.context import _get_global_client
    from ray.serve.schema import ServeDeploySchema

    _get_global_client().deploy_apps(ServeDeploySchema.model_validate(config))


@pytest.fixture(scope="module")
def two_ingresses(gateway):
    config = copy.deepcopy(gateway.config)
    [ingress] = [d for d in config["applications"][0]["deployments"]
                 if d["name"] == "Ingress"]
    ingress["autoscaling_config"].update(min_replicas=2, max_replicas=2)
    deploy(config)
    wait_until(lambda: ingress_replicas(gateway.app_name) == 2, timeout=300, interval=1,
               what="two Ingress replicas")
    yield gateway
    # back to ONE Ingress replica before the suite's configuration: its autoscaler would keep
    # the second one for its downscale delay (10 min), and later modules' in-memory state
    # (e.g. per-node workflow events) lives in one replica
    ingress["autoscaling_config"].update(min_replicas=1, max_replicas=1)
    deploy(config)
    wait_until(lambda: ingress_replicas(gateway.app_name) == 1, timeout=300, interval=1,
               what="one Ingress replica again")
    deploy(gateway.config)  # the suite's configuration
    wait_until(lambda: ingress_replicas(gateway.app_name) == 1, timeout=300, interval=1,
               what="the Ingress back")


def totals(c: httpx.Client, group_by: str) -> dict[str, dict]:
    r = c.get("/v1/usage", params={"group_by": group_by})
    assert r.status_code == 200, r.text
    return {g["group"]: g for g in r.json()["data"]}


def test_usage_sums_a_scripted_sequence_across_replicas_and_restarts(two_ingresses):
    gateway = two_ingresses
    token = gateway.create_key(project="usage-script", images_per_day=1000)
    photo = png(np.random.default_rng(1).integers(0, 255, (48, 64, 3), dtype=np.uint8))
    with httpx.Client(base_url=gateway.base_url, timeout=180,
                      headers={"Authorization": f"Bearer {token}"}) as c:
        def gen(n: int) -> httpx.Response:
            return c.post("/v1/images/generations",
                          json={"prompt": "a lighthouse", "size": "64x64", "steps": 1, "n": n})

        with concurrent.futures.ThreadPoolExecutor(4) as pool:  # both replicas get some
            made = list(pool.map(gen, [1, 2, 1, 1, 2, 1]))
        assert all(r.status_code == 200 for r in made), [r.text for r in made]
        usage = made[1].json()["usage"]  # the OpenAI-style object with real counts
        assert usage["images"] == 2 and usage["pixels"] == 2 * 64 * 64
        assert usage["model_seconds"] > 0 and usage["input_tokens_details"]["text_tokens"] == 2
        cut = c.post("/v1/images/remove-background",
                     files={"image": ("p.png", photo, "image/png")})
        assert cut.status_code == 200 and cut.json()["usage"]["pixels"] == 48 * 64
        bad = c.post("/v1/images/generations", json={"prompt": "x", "size": "63x64"})
        assert bad.status_code == 400
        # a streamed generation (SSE): its image counts like any other
        with c.stream("POST", "/v1/images/generations", json={
                "prompt": "a lighthouse", "size": "64x64", "steps": 1, "stream": True,
                "partial_images": 1}) as streamed:
            assert streamed.status_code == 200
            events = [line for line in streamed.iter_lines() if line.startswith("event:")]
        assert events[-1] == "event: image_generation.completed", events
        # refused at the gate: under this key (403: no admin scope) ...
        assert c.post("/v1/projects", json={"id": "not-mine"}).status_code == 403
        # ... and without a known key (401): project '(anonymous)', which only admins see
        assert httpx.post(f"{gateway.base_url}/v1/images/generations", timeout=60,
                          json={"prompt": "x"}, headers={"Authorization": "Bearer psk_no"}
                          ).status_code == 401
        # image analysis: the Vision model's and the face detector's seconds
        assert c.post("/v1/images/analyze", files={"image": ("p.png", photo, "image/png")}
                      ).status_code == 200
        # a video: counted when its job ends, after the request
        video = c.post("/v1/videos", json={"prompt": "a cat", "seconds": "1", "size": "64x64",
                                           "steps": 1, "seed": 1})
        assert video.status_code == 200, video.text
        wait_until(lambda: c.get(f"/v1/videos/{video.json()['id']}").json()["status"]
                   == "completed", timeout=120, interval=0.5, what="the video")

        expected = {GEN: {"requests": 8, "images": 9, "pixels": 9 * 64 * 64,
                          "statuses": {"200": 7, "400": 1}},
                    TOOL: {"requests": 1, "images": 1, "pixels": 48 * 64,
                           "statuses": {"200": 1}},
                    "POST /v1/projects": {"requests": 1, "statuses": {"403": 1}},
                    "POST /v1/images/analyze": {"requests": 1, "statuses": {"200": 1}},
                    "POST /v1/videos": {"requests": 1, "videos": 1, "images": 0,
                                        "statuses": {"200": 1}}}

        def seen() -> dict[str, dict]:
            by_route = totals(c, "route")
            return {route: {name: by_route.get(route, {}).get(name) for name in want}
                    for route, want in expected.items()}

        def matches() -> bool:
            return seen() == expected

        # each replica writes its sums every 2 s: both replicas' requests show up
        try:
            wait_until(matches, timeout=30, interval=0.5, what="usage to add up")
        except TimeoutError:
            assert seen() == expected  # (says what differs)
        by_route = totals(c, "route")
        assert by_route[GEN]["model_seconds_by_deployment"].keys() == {"generator"}
        assert by_route[TOOL]["model_seconds_by_deployment"].keys() == {"matting"}
        assert by_route["POST /v1/images/analyze"]["model_seconds_by_deployment"].keys() == {
            "vision", "faceswap"}
        assert by_route["POST /v1/videos"]["model_seconds_by_deployment"]["video"] > 0
        assert list(totals(c, "project")) == ["usage-script"]  # own project only
        assert list(totals(c, "key")) == [next(iter(totals(c, "key")))]  # one key: this one
        day = next(iter(totals(c, "day").values()))  # + this test's GET /v1/usage calls
        assert day["images"] == 10 and day["pixels"] == 9 * 64 * 64 + 48 * 64
        assert day["videos"] == 1
        assert day["requests"] >= 12  # the 12 scripted ones and the GET /v1/usage calls

        # restart: kill both ingress replicas; Serve starts new ones; the totals stay
        import ray

        for actor in ray.util.list_named_actors(all_namespaces=True):
            if "Ingress" in actor["name"] and gateway.app_name in actor["name"]:
                ray.kill(ray.get_actor(actor["name"], namespace=actor["namespace"]))
        wait_until(lambda: ingress_replicas(gateway.app_name) == 2, timeout=300, interval=1,
                   what="new Ingress replicas")

        def answers() -> bool:
            try:
                return c.get("/v1/usage").status_code == 200
            except httpx.HTTPError:
                return False

        wait_until(answers, timeout=120, interval=1, what="the gateway to answer again")
        try:
            wait_until(matches, timeout=30, interval=0.5, what="usage after the restart")
        except TimeoutError:
            assert seen() == expected
    # the admin key sees every project, the refused requests of unknown keys too
    admin = httpx.get(f"{gateway.base_url}/v1/usage", params={"group_by": "project"},
                      headers=gateway.headers, timeout=60).json()
    by_project = {g["group"]: g for g in admin["data"]}
    assert "usage-script" in by_project
    assert by_project["(anonymous)"]["statuses"].get("401", 0) >= 1


def test_the_rate_limit_refusals_count_under_the_key(gateway):
    token = gateway.create_key(project="usage-limited", requests_per_minute=1)
    with httpx.Client(base_url=gateway.base_url, timeout=60,
                      headers={"Authorization": f"Bearer {token}"}) as c:
        codes = [c.get("/v1/jobs/job_1").status_code for _ in range(3)]
    assert codes[0] == 404 and codes[1:] == [429, 429]
    admin = httpx.Client(base_url=gateway.base_url, headers=gateway.headers, timeout=60)

    def counted() -> dict:
        r = admin.get("/v1/usage", params={"group_by": "route"})
        assert r.status_code == 200, r.text
        return {g["group"]: g for g in r.json()["data"]}.get("GET /v1/jobs/{job_id}", {})

    # the route template, whatever the id; 429s of the requests/minute limit included
    wait_until(lambda: counted().get("statuses", {}).get("429", 0) >= 2, timeout=30,
               interval=0.5, what="the refused requests in the usage")
    key_rows = admin.get("/v1/usage", params={"group_by": "project"}).json()["data"]
    limited = next(g for g in key_rows if g["group"] == "usage-limited")
    assert limited["statuses"].get("429", 0) >= 2 and limited["statuses"].get("404") >= 1
    admin.close()


def test_project_quotas_answer_429_naming_the_quota(gateway):
    admin = httpx.Client(base_url=gateway.base_url, headers=gateway.headers, timeout=180)
    # a project id of its own per run: its day's window lives in the shared Redis for 24 h
    project = f"usage-quota-{uuid.uuid4().hex[:8]}"
    r = admin.post("/v1/projects", json={"id": project, "images_per_day": 2,
                                         "model_seconds_per_day": 100000})
    assert r.status_code == 201, r.text
    tokens = [gateway.create_key(project=project) for _ in range(2)]
    gen = {"prompt": "a fox", "size": "64x64", "steps": 1}
    first = httpx.post(f"{gateway.base_url}/v1/images/generations", json=gen, timeout=180,
                       headers={"Authorization": f"Bearer {tokens[0]}"})
    assert first.status_code == 200, first.text
    second = httpx.post(f"{gateway.base_url}/v1/images/generations", json={**gen, "n": 2},
                        timeout=180, headers={"Authorization": f"Bearer {tokens[1]}"})
    assert second.status_code == 429, second.text  # another key, the same project's day
    error = second.json()["error"]
    assert error["code"] == "quota_exceeded" and error["param"] == "project.images_per_day"
    assert "project.images_per_day" in error["message"]
    admin.close()


def test_model_seconds_quota_of_a_key(gateway):
    token = gateway.create_key(project="usage-seconds", model_seconds_per_day=1)
    headers = {"Authorization": f"Bearer {token}"}
    gen = {"prompt": "a fox", "size": "64x64", "steps": 2}
    first = httpx.post(f"{gateway.base_url}/v1/images/generations", json=gen, timeout=180,
                       headers=headers)
    assert first.status_code == 200, first.text  # it uses up the one second (rounded up)
    again = httpx.post(f"{gateway.base_url}/v1/images/generations", json=gen, timeout=180,
                       headers=headers)
    assert again.status_code == 429
    assert again.json()["error"]["param"] == "key.model_seconds_per_day"
    assert int(again.headers["Retry-After"]) >= 1
