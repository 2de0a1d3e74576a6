"""Usage accounting without Ray: requests are summed in memory (no write per request), one
transaction per flush, failed flushes keep the sums; model-seconds and project quotas."""

from __future__ import annotations

import asyncio
from datetime import datetime, timedelta, timezone

import pytest

from graphs import auth, usage
from graphs.errors import ApiError
from graphs.quotas import QuotaConfig, Quotas


class FakeRecords:
    def __init__(self):
        self.calls: list[list[dict]] = []
        self.fail = False

    def add_usage(self, *, rows):
        if self.fail:
            raise ConnectionError("database down")
        self.calls.append(list(rows))


def principal(key="key_1", project="p1", **kw):
    return auth.Principal(key_id=key, project=project, scopes=frozenset({"generate"}), **kw)


def record_request(recorder, *, route="POST /v1/images/generations", status=200, images=1,
                   seconds=0.5, who=None):
    token = auth.acting_as(who or principal())
    try:
        req = usage.RequestUsage()
        t = usage._current.set(req)
        usage.note_output("generations", model="tiny-sd", provider="local", images=images,
                          pixels=images * 4096, seconds=seconds)
        usage._current.reset(t)
        recorder.record(req, route=route, status=status)
        return req
    finally:
        auth._principal.reset(token)


def test_many_requests_one_write_per_flush():
    records = FakeRecords()
    recorder = usage.UsageRecorder(records, flush_s=3600)
    for _ in range(100):
        record_request(recorder)
    record_request(recorder, status=429, images=0, seconds=0)
    assert records.calls == []  # nothing written on the request path
    assert recorder.flush() == 3 and len(records.calls) == 1
    rows = {(r["status"], r["deployment"]): r for r in records.calls[0]}
    assert rows[(200, "")]["requests"] == 100 and rows[(200, "")]["images"] == 100
    assert rows[(200, "")]["pixels"] == 100 * 4096 and rows[(429, "")]["requests"] == 1
    assert rows[(200, "generator")]["model_seconds"] == pytest.approx(50.0)
    assert rows[(200, "")]["project"] == "p1" and rows[(200, "")]["key_id"] == "key_1"
    assert recorder.flush() == 0  # nothing new


def test_a_failed_flush_keeps_the_sums_for_the_next():
    records = FakeRecords()
    recorder = usage.UsageRecorder(records, flush_s=3600)
    record_request(recorder)
    records.fail = True
    assert recorder.flush() == 0
    record_request(recorder)
    records.fail = False
    recorder.flush()
    [rows] = records.calls
    assert next(r for r in rows if r["deployment"] == "")["requests"] == 2


def test_an_async_jobs_images_after_its_request_are_recorded_apart():
    records = FakeRecords()
    recorder = usage.UsageRecorder(records, flush_s=3600)
    req = record_request(recorder, images=0, seconds=0)  # the 202: nothing made yet
    t = usage._current.set(req)
    usage.note_output("generations", model="tiny-sd", provider=None, images=3, pixels=300,
                      seconds=2.0)
    usage._current.reset(t)
    recorder.flush()
    main = [r for r in records.calls[0] if r["deployment"] == ""]
    assert sum(r["requests"] for r in main) == 1 and sum(r["images"] for r in main) == 3


def test_chat_model_seconds_are_split_by_step_deployment():
    req = usage.RequestUsage()
    t = usage._current.set(req)
    usage.note_output("chat", model="a+b", provider=None, images=1, pixels=1, seconds=9,
                      timings={"step0_image_generation": 1.0, "step1_background_removal": 0.5})
    usage._current.reset(t)
    assert req.model_seconds == {"generator": 1.0, "matting": 0.5}


def test_model_seconds_quota_and_project_image_quota():
    quotas = Quotas(QuotaConfig(storage_url="memory://"))

    async def scenario():
        await quotas.check_model_seconds("key_1", per_day=3, quota="key.model_seconds_per_day")
        await quotas.add_model_seconds("key_1", 2.2, per_day=3)  # rounds up to 3
        with pytest.raises(ApiError) as err:
            await quotas.check_model_seconds("key_1", per_day=3,
                                             quota="key.model_seconds_per_day")
        assert err.value.status == 429 and err.value.param == "key.model_seconds_per_day"
        await quotas.charge_window("project:p1", 2, per_day=3, quota="project.images_per_day")
        with pytest.raises(ApiError) as err:
            await quotas.charge_window("project:p1", 2, per_day=3,
                                       quota="project.images_per_day")
        assert err.value.param == "project.images_per_day"
        assert "project.images_per_day quota of 3 images" in err.value.message

    asyncio.run(scenario())


def test_a_video_after_its_request_counts_and_charges_its_model_seconds():
    records = FakeRecords()
    recorder = usage.UsageRecorder(records, flush_s=3600)
    req = record_request(recorder, route="POST /v1/videos", images=0, seconds=0)
    charged: list[float] = []

    async def count(seconds: float) -> None:
        charged.append(seconds)

    req.count_seconds = count

    async def job_ends():  # the video job, after the 202, in the request's context copy
        t = usage._current.set(req)
        usage.note_videos(1, model="tiny-ltx", seconds={"video": 1.5, "upscaler": 0.0})
        usage._current.reset(t)
        await asyncio.gather(*usage._pending)

    asyncio.run(job_ends())
    recorder.flush()
    rows = records.calls[0]
    main = [r for r in rows if r["deployment"] == ""]
    assert sum(r["requests"] for r in main) == 1 and sum(r["videos"] for r in main) == 1
    assert [(r["deployment"], r["model_seconds"]) for r in rows if r["deployment"]] == [
        ("video", 1.5)]
    assert charged == [1.5]  # the key's model-seconds window gets the late seconds too


def refused_app(records, recorder, request_path: bool = False):
    """The gate and usage layers alone, or (`request_path`) with the ingress's request path
    outside them, which notes the status for usage itself (`errors.Exchange`)."""
    from fastapi import FastAPI

    from graphs import errors, middleware

    app = FastAPI()
    errors.install(app)
    app.add_middleware(usage.UsageMiddleware)
    app.add_middleware(auth.AuthMiddleware)
    if request_path:
        middleware.install(app)

    @app.get("/v1/jobs/{job_id}")
    async def job(job_id: str):
        return {"id": job_id}

    @app.post("/v1/images/upscale")
    async def upscale():
        return {}

    app.state.usage_recorder = recorder
    return app


@pytest.mark.parametrize("request_path", [False, True],
                         ids=["layers-alone", "with-request-path"])
def test_refused_requests_are_counted_under_the_key_or_anonymous(tmp_path, request_path):
    import httpx

    from graphs.auth import AuthConfig
    from storage.records import RecordStore

    store = RecordStore(f"sqlite:///{tmp_path / 'u.db'}")
    try:
        store.create_project(project_id="p1")
        key, token = store.create_api_key(project="p1", name="k", scopes=["generate"],
                                          requests_per_minute=1)
        recorder = usage.UsageRecorder(store, flush_s=3600)
        app = refused_app(store, recorder, request_path)
        auth.configure(app, records=store, config=AuthConfig())

        async def calls():
            async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app),
                                         base_url="http://t") as c:
                bearer = {"Authorization": f"Bearer {token}"}
                codes = [(await c.get("/v1/jobs/job_1")).status_code,  # no key: 401
                         (await c.get("/v1/jobs/job_2", headers={
                             "Authorization": "Bearer psk_nope"})).status_code,  # 401
                         (await c.post("/v1/images/upscale", headers=bearer)).status_code,
                         (await c.get("/v1/jobs/job_3", headers=bearer)).status_code,
                         (await c.get("/v1/jobs/job_4", headers=bearer)).status_code]
                return codes

        assert asyncio.run(calls()) == [401, 401, 403, 200, 429]
        recorder.flush()
        end = datetime.now(timezone.utc) + timedelta(hours=1)
        start = end - timedelta(days=1)
        by_project = {g["group"]: g for g in store.usage_report(
            start=start, end=end, group_by="project")}
        assert by_project[usage.ANONYMOUS]["statuses"] == {"401": 2}
        assert by_project["p1"]["statuses"] == {"403": 1, "200": 1, "429": 1}
        by_route = {g["group"]: g for g in store.usage_report(
            start=start, end=end, group_by="route", project="p1")}
        # the route template, never the raw path (ids would make a row per request)
        assert by_route["GET /v1/jobs/{job_id}"]["statuses"] == {"200": 1, "429": 1}
        assert by_route["POST /v1/images/upscale"]["statuses"] == {"403": 1}
        by_key = {g["group"]: g["requests"] for g in store.usage_report(
            start=start, end=end, group_by="key", project="p1")}
        assert by_key == {key.id: 3}
    finally:
        store.close()


def test_requests_refused_before_the_gate_are_counted_once_as_anonymous(tmp_path):
    """413 (body too large) and a bad Content-Length are answered by the request path before
    the key is checked: counted under ``(anonymous)``; a request the gate saw is counted once,
    by the gate or the usage layer, never a second time."""
    import httpx

    from graphs.auth import AuthConfig
    from graphs.middleware import HardeningConfig, RequestPath
    from storage.records import RecordStore

    store = RecordStore(f"sqlite:///{tmp_path / 'u.db'}")
    try:
        store.create_project(project_id="p1")
        _, token = store.create_api_key(project="p1", name="k", scopes=["generate", "tools"])
        recorder = usage.UsageRecorder(store, flush_s=3600)
        app = refused_app(store, recorder)
        app.add_middleware(RequestPath, config=HardeningConfig(max_request_bytes=64))
        auth.configure(app, records=store, config=AuthConfig())

        async def calls():
            async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app),
                                         base_url="http://t") as c:
                bearer = {"Authorization": f"Bearer {token}"}
                return [(await c.post("/v1/images/upscale", headers=bearer,
                                      content=b"x" * 100)).status_code,  # 413, key unseen
                        (await c.post("/v1/images/upscale", headers={
                            **bearer, "Content-Length": "-1"})).status_code,  # 400
                        (await c.get("/v1/jobs/job_1")).status_code,  # 401 at the gate
                        (await c.get("/v1/nope", headers=bearer)).status_code,  # 404, app
                        (await c.post("/v1/images/upscale", headers=bearer)).status_code]

        assert asyncio.run(calls()) == [413, 400, 401, 404, 200]
        recorder.flush()
        end = datetime.now(timezone.utc) + timedelta(hours=1)
        by_project = {g["group"]: g for g in store.usage_report(
            start=end - timedelta(days=1), end=end, group_by="project")}
        assert by_project[usage.ANONYMOUS]["statuses"] == {"413": 1, "400": 1, "401": 1}
        assert by_project["p1"]["statuses"] == {"404": 1, "200": 1}
    finally:
        store.close()


@pytest.mark.parametrize("method,path,template", [
    ("POST", "/v1/projects", "/v1/projects"),
    ("GET", "/v1/jobs/job_1", "/v1/jobs/{job_id}"),  # the template, never the id
    ("DELETE", "/v1/usage", "/v1/usage"),  # path known, method not: still its route
    ("GET", "/nope", "(unmatched)"),
])
def test_refused_requests_are_named_by_the_gateways_route_templates(method, path, template):
    # the real ingress app: Serve's class-based ingress puts its routes in an included router
    from graphs.ingress import app

    scope = {"type": "http", "method": method, "path": path, "root_path": "", "app": app}
    assert usage.route_template(scope) == template
