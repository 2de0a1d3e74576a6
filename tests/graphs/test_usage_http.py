"""Usage accounting over real HTTP on the production graph: a scripted sequence of requests
across two ingress replicas is summed exactly by GET /v1/usage, the totals survive the
ingress replicas being killed and restarted, image responses carry the real counts, and
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

        expected = {GEN: {"requests": 7, "images": 8, "pixels": 8 * 64 * 64,
                          "statuses": {"200": 6, "400": 1}},
                    TOOL: {"requests": 1, "images": 1, "pixels": 48 * 64,
                           "statuses": {"200": 1}}}

        def matches() -> bool:
            by_route = totals(c, "route")
            return all(by_route.get(route, {}).get(name) == value
                       for route, want in expected.items() for name, value in want.items())

        # each replica writes its sums every 2 s: both replicas' requests show up
        wait_until(matches, timeout=30, interval=0.5, what="usage to add up")
        by_route = totals(c, "route")
        assert by_route[GEN]["model_seconds_by_deployment"].keys() == {"generator"}
        assert by_route[TOOL]["model_seconds_by_deployment"].keys() == {"matting"}
        assert list(totals(c, "project")) == ["usage-script"]  # own project only
        assert list(totals(c, "key")) == [next(iter(totals(c, "key")))]  # one key: this one
        day = next(iter(totals(c, "day").values()))  # + this test's GET /v1/usage calls
        assert day["images"] == 9 and day["pixels"] == 8 * 64 * 64 + 48 * 64
        assert day["requests"] >= 8  # the 8 scripted ones and the GET /v1/usage calls

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
        wait_until(matches, timeout=30, interval=0.5, what="usage after the restart")
    # the admin key sees every project
    admin = httpx.get(f"{gateway.base_url}/v1/usage", params={"group_by": "project"},
                      headers=gateway.headers, timeout=60).json()
    assert "usage-script" in {g["group"] for g in admin["data"]}


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
