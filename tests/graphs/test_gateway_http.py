"""The production graph (serve_config.yaml + tiny overrides) over real HTTP via the proxy."""

from __future__ import annotations

import base64
import io
import json
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest
from PIL import Image


def _png(b64: str) -> Image.Image:
    img = Image.open(io.BytesIO(base64.b64decode(b64)))
    img.load()
    return img


def test_every_gpu_replica_is_scheduled_on_the_one_logical_gpu(gateway, ray_cluster):
    app = gateway.config["applications"][0]
    fractions = {d["name"]: d["ray_actor_options"].get("num_gpus", 0)
                 for d in app["deployments"]}
    gpu_deployments = [name for name, f in fractions.items() if f > 0]
    assert gpu_deployments, "the production graph has GPU deployments"
    for name in gpu_deployments:
        info = gateway.handle(name).info.remote().result(timeout_s=60)
        assert info["gpu_ids"] == ["0"], (name, info)
        assert info["cuda_visible_devices"] == "0"
    used = sum(fractions[n] for n in gpu_deployments)  # one replica each (min_replicas)
    assert ray_cluster.available_resources().get("GPU", 0) == pytest.approx(1 - used)


def test_model_replicas_yield_the_cpu_to_the_request_path(gateway):
    # AppArgs.model_niceness (4): on a node whose cores are full, the Ingress runs first
    import os

    workers = int(os.environ.get("RAY_worker_niceness", "15"))  # Ray starts workers there
    for name in ("Generator", "Matting", "FaceSwap", "Upscaler"):
        info = gateway.handle(name).info.remote().result(timeout_s=60)
        assert info["niceness"] == min(19, workers + 4), (name, info["niceness"])


def test_generation_over_http(http):
    r = http.post("/v1/images/generations",
                  json={"prompt": "a cat wearing a crown", "n": 2, "size": "64x48", "seed": 5})
    assert r.status_code == 200, r.text
    body = r.json()
    assert len(body["data"]) == 2 and body["size"] == "64x48"
    for item, seed in zip(body["data"], (5, 6), strict=True):
        assert _png(item["b64_json"]).size == (64, 48)
        assert item["seed"] == seed
    meta = body["metadata"]
    assert meta["model"] == "tiny-sd" and meta["tiny"] is True and meta["fallback"] is False


def test_same_seed_same_bytes_over_http(http):
    payload = {"prompt": "a red fox", "seed": 42, "size": "64x64"}
    a = http.post("/v1/images/generations", json=payload).json()["data"][0]["b64_json"]
    b = http.post("/v1/images/generations", json=payload).json()["data"][0]["b64_json"]
    assert a == b


def test_url_response_and_asset_download(http, gateway):
    r = http.post("/v1/images/generations",
                  json={"prompt": "a boat", "response_format": "url", "size": "64x64"})
    assert r.status_code == 200, r.text
    item = r.json()["data"][0]
    assert item["b64_json"] is None
    assert item["url"].split("?")[0].endswith(f"/v1/assets/{item['id']}")  # signed
    asset = httpx.get(item["url"], timeout=30)
    assert asset.status_code == 200
    assert asset.headers["content-type"] == "image/png" and asset.headers["etag"]
    assert Image.open(io.BytesIO(asset.content)).size == (64, 64)
    part = httpx.get(item["url"], headers={"Range": "bytes=0-7"}, timeout=30)
    assert part.status_code == 206 and part.content == asset.content[:8]


def test_job_is_recorded(http, gateway):
    from storage.records import RecordStore

    body = http.post("/v1/images/generations",
                     json={"prompt": "a recorded job", "seed": 1, "size": "64x64"}).json()
    records = RecordStore(f"sqlite:///{gateway.data_dir / 'photostudio.db'}")
    job = records.get_job(job_id=body["metadata"]["job_id"], project="default")
    assert job.status == "succeeded" and job.prompt == "a recorded job"
    assert job.asset_ids == [body["data"][0]["id"]] and job.model == "tiny-sd"
    assert job.params["width"] == 64 and job.timings["total_s"] > 0


def test_concurrent_requests_are_batched(http, gateway):
    generator = gateway.handle("Generator")
    before = generator.stats.remote().result(timeout_s=30)["pipeline_batches"]

    def one(i):
        return httpx.post(f"{gateway.base_url}/v1/images/generations",
                          json={"prompt": f"image {i}", "size": "64x64", "seed": i},
                          timeout=120, headers=gateway.headers)

    with ThreadPoolExecutor(8) as pool:
        responses = list(pool.map(one, range(8)))
    assert all(r.status_code == 200 for r in responses), [r.text for r in responses]
    after = generator.stats.remote().result(timeout_s=30)["pipeline_batches"]
    new = {size: after.get(size, 0) - before.get(size, 0) for size in after}
    assert sum(size * count for size, count in new.items()) == 8
    assert max(size for size, count in new.items() if count) > 1, new
    assert max(r.json()["metadata"]["batch_size"] for r in responses) > 1


BAD_REQUESTS = [
    ("malformed json", b'{"prompt": "x",', "invalid_json", None),
    ("not an object", b"[1, 2]", "invalid_body", None),
    ("missing prompt", json.dumps({"n": 1}).encode(), "missing_parameter", "prompt"),
    ("prompt too long", json.dumps({"prompt": "x" * 20_000}).encode(), "prompt_too_long",
     "prompt"),
    ("prompt over 32k", json.dumps({"prompt": "x" * 33_000}).encode(), "string_too_long",
     "prompt"),
    ("n=0", json.dumps({"prompt": "x", "n": 0}).encode(), None, "n"),
    ("n=11", json.dumps({"prompt": "x", "n": 11}).encode(), None, "n"),
    ("size 13x7", json.dumps({"prompt": "x", "size": "13x7"}).encode(), "invalid_size", "size"),
    ("size words", json.dumps({"prompt": "x", "size": "big"}).encode(), None, "size"),
    ("wrong type", json.dumps({"prompt": "x", "steps": "many"}).encode(), None, "steps"),
    ("unknown param", json.dumps({"prompt": "x", "colour": "red"}).encode(),
     "unknown_parameter", "colour"),
    ("unknown model", json.dumps({"prompt": "x", "model": "dall-e-9"}).encode(),
     "model_not_found", "model"),
    ("too many steps", json.dumps({"prompt": "x", "steps": 120}).encode(), None, "steps"),
]


@pytest.mark.parametrize("label,body,code,param", BAD_REQUESTS, ids=[b[0] for b in BAD_REQUESTS])
def test_bad_input_gets_4xx_with_the_envelope(http, label, body, code, param):
    r = http.post("/v1/images/generations", content=body,
                  headers={"content-type": "application/json"})
    assert 400 <= r.status_code < 500, (r.status_code, r.text)
    error = r.json()["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert error["message"] and error["type"] == "invalid_request_error"
    if code:
        assert error["code"] == code
    if param:
        assert error["param"] == param
        assert param in error["message"]


def test_limits_are_named_in_messages(http):
    r = http.post("/v1/images/generations", json={"prompt": "x" * 20_000})
    assert "10000" in r.json()["error"]["message"]
    r = http.post("/v1/images/generations", json={"prompt": "x", "size": "13x7"})
    assert "between 32 and 512" in r.json()["error"]["message"]


def test_not_found_routes_and_assets_use_the_envelope(http):
    assert http.get("/nope").json()["error"]["type"] == "not_found_error"
    r = http.get("/v1/assets/img_missing")
    assert r.status_code == 404 and r.json()["error"]["param"] == "asset_id"


def test_health_capabilities_and_docs(http):
    assert http.get("/healthz").json() == {"status": "ok"}
    caps = http.get("/v1/capabilities").json()
    gen = caps["deployments"]["generator"]
    assert caps["profile"] == "production"
    assert gen["name"] == "tiny-sd" and gen["tiny"] is True and gen["fallback"] is False
    assert "/v1/images/generations" in caps["endpoints"]
    assert any("tiny" in w for w in caps["warnings"])
    assert http.get("/docs").status_code == 200
    spec = http.get("/openapi.json").json()
    assert "/v1/images/generations" in spec["paths"]
